/* test_proto.c: unit tests for src/proto.c, the packet definitions loader.
 * Each test writes a packets.lua into a fresh temp directory (the working
 * directory while it runs, so messages name "packets.lua") and checks the
 * structures it gives, or the one exact error message. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "itest.h"

#include "proto.h"
#include "suggest.h"

/* One temp directory for the whole group, the working directory while the
 * tests run. */
static char tmpdir[128];
static char old_cwd[PATH_MAX];

static int group_setup(void **state) {
  (void)state;
  it_mkdtemp(tmpdir, sizeof tmpdir);
  if (!getcwd(old_cwd, sizeof old_cwd) || chdir(tmpdir) != 0)
    return -1;
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  if (chdir(old_cwd) != 0)
    return -1;
  it_rmdir(tmpdir);
  return 0;
}

static gw_framing top(void) {
  gw_framing f;
  assert_int_equal(gw_framing_preset("top", &f), 0);
  return f;
}

static void load_ok(const char *text, const gw_framing *f, gw_proto *p) {
  it_write(".", "packets.lua", "%s", text);
  char err[512];
  int rc = gw_proto_load("packets.lua", f, p, err, sizeof err);
  if (rc != 0)
    fail_msg("packets.lua failed (rc %d): %s\n%s", rc, err, text);
}

/* text must fail to load for f with exactly want, leaving *p zeroed. */
static void expect_error_f(const char *text, const gw_framing *f, const char *want) {
  it_write(".", "packets.lua", "%s", text);
  gw_proto p;
  char err[512];
  memset(&p, 0xa5, sizeof p);
  int rc = gw_proto_load("packets.lua", f, &p, err, sizeof err);
  if (rc == 0)
    fail_msg("packets.lua loaded but should fail with: %s\n%s", want, text);
  assert_string_equal(err, want);
  static const gw_proto zero;
  assert_memory_equal(&p, &zero, sizeof p);
}

static void expect_error(const char *text, const char *want) {
  gw_framing f = top();
  expect_error_f(text, &f, want);
}

/* The shipped Tales of Pirates definitions load for the top framing. */
static void test_shipped_top(void **state) {
  (void)state;
  gw_framing f = top();
  gw_proto p;
  char err[512];
  int rc = gw_proto_load(GW_SOURCE_DIR "/protocols/top/packets.lua", &f, &p, err,
                         sizeof err);
  if (rc)
    fail_msg("%s", err);
  const gw_packet_def *say = gw_proto_lookup(&p, GW_CLIENT, true, 1);
  assert_non_null(say);
  assert_string_equal(say->name, "CM_SAY");
  assert_ptr_equal(gw_proto_find(&p, "CM_SAY"), say);
  assert_int_equal(say->nfields, 1);
  assert_int_equal(say->fields[0].type, GW_PF_STR);
  assert_string_equal(say->fields[0].name, "text");
  /* sides are separate: opcode 1 from the server is nothing */
  assert_null(gw_proto_lookup(&p, GW_SERVER, true, 1));
  assert_string_equal(gw_proto_lookup(&p, GW_SERVER, true, 501)->name, "MC_SAY");
  assert_string_equal(gw_proto_lookup(&p, GW_CLIENT, false, 0)->name, "KEEPALIVE");
  assert_string_equal(gw_proto_lookup(&p, GW_SERVER, false, 0)->name, "KEEPALIVE");
  assert_null(gw_proto_lookup(&p, GW_CLIENT, true, 9999));
  const gw_packet_def *login = gw_proto_find(&p, "MC_LOGIN");
  assert_non_null(login);
  assert_int_equal(login->nfields, 2);
  assert_false(login->fields[0].optional);
  assert_true(login->fields[1].optional);
  assert_null(gw_proto_find(&p, "CM_SAYY"));
  assert_string_equal(gw_proto_suggest(&p, "CM_SAYY"), "CM_SAY");
  assert_string_equal(gw_proto_suggest(&p, "cm_say"), "CM_SAY");
  assert_string_equal(gw_proto_suggest(&p, "MC_LGOIN"), "MC_LOGIN");
  assert_null(gw_proto_suggest(&p, "SOMETHING_ELSE_ENTIRELY"));
  /* sorted by name */
  for (size_t i = 1; i < p.npackets; i++)
    assert_true(strcmp(p.packets[i - 1].name, p.packets[i].name) < 0);
  assert_string_equal(p.path, GW_SOURCE_DIR "/protocols/top/packets.lua");
  gw_proto_free(&p);
}

static void test_arrays_and_optional(void **state) {
  (void)state;
  gw_framing f = top();
  gw_proto p;
  load_ok("return {\n"
          "  MC_ITEMS = { side = 'server', opcode = 600,\n"
          "    'u16 count',\n"
          "    { 'items', count = 'count', 'u32 id', 'str name', 'bytes(4) flags',\n"
          "      { 'tags', count = 2, 'u8 tag' } },\n"
          "    { 'pairs', count = '*', 'i16 a', 'f32 b' },\n"
          "  },\n"
          "  BOTH = { side = 'both', opcode = 7, 'u64 a', 'i64 b?', 'f64 c?', 'bytes d?' },\n"
          "}\n", &f, &p);
  assert_int_equal(p.npackets, 2);
  const gw_packet_def *m = gw_proto_find(&p, "MC_ITEMS");
  assert_int_equal(m->nfields, 3);
  assert_int_equal(m->fields[0].counts, 1);
  assert_int_equal(m->fields[1].type, GW_PF_ARRAY);
  assert_int_equal(m->fields[1].count_kind, GW_COUNT_FIELD);
  assert_int_equal(m->fields[1].count_field, 0);
  assert_int_equal(m->fields[1].nfields, 4);
  assert_int_equal(m->fields[1].fields[2].type, GW_PF_BYTES);
  assert_int_equal(m->fields[1].fields[2].n, 4);
  assert_int_equal(m->fields[1].fields[3].count_kind, GW_COUNT_FIXED);
  assert_int_equal(m->fields[1].fields[3].n, 2);
  assert_int_equal(m->fields[2].count_kind, GW_COUNT_REST);
  assert_int_equal(m->fields[2].counts, -1);
  const gw_packet_def *b = gw_proto_find(&p, "BOTH");
  assert_ptr_equal(gw_proto_lookup(&p, GW_CLIENT, true, 7), b);
  assert_ptr_equal(gw_proto_lookup(&p, GW_SERVER, true, 7), b);
  assert_int_equal(b->fields[3].type, GW_PF_REST);
  assert_true(b->fields[3].optional);
  assert_null(gw_proto_lookup(&p, GW_CLIENT, false, 0));
  gw_proto_free(&p);
  gw_proto_free(&p); /* twice is harmless */
}

static void test_edit_distance(void **state) {
  (void)state;
  assert_int_equal(gw_edit_distance("CM_SAY", 6, "CM_SAY", 6), 0);
  assert_int_equal(gw_edit_distance("cm_say", 6, "CM_SAY", 6), 0);
  assert_int_equal(gw_edit_distance("CM_SAYY", 7, "CM_SAY", 6), 1);
  assert_int_equal(gw_edit_distance("CM_SYA", 6, "CM_SAY", 6), 1);
  assert_int_equal(gw_edit_distance("", 0, "abc", 3), 3);
}

static void test_bad_load(void **state) {
  (void)state;
  expect_error("return {", "packets.lua:1: unexpected symbol near <eof>");
  expect_error("print('x') return {}",
               "packets.lua:1: attempt to call a nil value (global 'print')");
  expect_error("while true do end", "packets.lua:1: packet definitions took too long to run");
  expect_error("local t = {} for i = 1, 1e9 do t[i] = i end",
               "packets.lua: not enough memory");
  expect_error("return 5", "packets.lua: must return a table of packets by name, got 5");
  expect_error("", "packets.lua: must return a table of packets by name, got nothing");
  gw_framing f = top();
  gw_proto p;
  char err[256];
  assert_int_equal(gw_proto_load("missing.lua", &f, &p, err, sizeof err), -EINVAL);
  assert_string_equal(err, "cannot open missing.lua: No such file or directory");
  /* binary chunks are refused: the file is text */
  it_write(".", "packets.lua", "\x1bLua");
  assert_int_equal(gw_proto_load("packets.lua", &f, &p, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "attempt to load a binary chunk"));
}

static void test_bad_packets(void **state) {
  (void)state;
  expect_error("return { [1] = {} }",
               "packets.lua: packets are named: NAME = { ... }, got the key 1");
  expect_error("return { ['1X'] = { side = 'client', opcode = 1 } }",
               "packets.lua: bad packet name \"1X\" (letters, digits and _, not "
               "starting with a digit, at most 64)");
  expect_error("return { A = 5 }",
               "packets.lua: A: a packet is a table { side = ..., opcode = ..., "
               "fields... }, got 5");
  expect_error("return { A = { opcode = 1 } }",
               "packets.lua: A: side must be \"client\", \"server\" or \"both\", got nothing");
  expect_error("return { A = { side = 'clients', opcode = 1 } }",
               "packets.lua: A: side must be \"client\", \"server\" or \"both\", got \"clients\"");
  expect_error("return { A = { side = 'client', opcod = 1 } }",
               "packets.lua: A: unknown key \"opcod\" in a packet (did you mean \"opcode\"?)");
  expect_error("return { A = { side = 'client', opcode = 1, colour = 1 } }",
               "packets.lua: A: unknown key \"colour\" in a packet");
  expect_error("return { A = { side = 'client', opcode = 1, [3] = 'u8 x' } }",
               "packets.lua: A: unknown key 3 in a packet");
  expect_error("return { A = { side = 'client' } }",
               "packets.lua: A: opcode missing (or keepalive = true)");
  expect_error("return { A = { side = 'client', opcode = -1 } }",
               "packets.lua: A: opcode must be an integer of 0 or more, got -1");
  expect_error("return { A = { side = 'client', opcode = 70000 } }",
               "packets.lua: A: opcode 70000 does not fit the framing's 2-byte "
               "opcode (at most 65535)");
  expect_error("return { A = { side = 'client', opcode = 1 }, B = { side = 'client', opcode = 1 } }",
               "packets.lua: B: client opcode 1 is A's too");
  expect_error("return { A = { side = 'server', opcode = 1 }, B = { side = 'both', opcode = 1 } }",
               "packets.lua: B: server opcode 1 is A's too");
  expect_error("return { A = { side = 'both', keepalive = true }, B = { side = 'client', keepalive = true } }",
               "packets.lua: B: client keep-alive is A's too");
  expect_error("return { A = { side = 'both', keepalive = true, opcode = 1 } }",
               "packets.lua: A: a keepalive packet has no opcode");
  expect_error("return { A = { side = 'both', keepalive = 1 } }",
               "packets.lua: A: keepalive must be true or absent");
  expect_error("return { A = { side = 'both', keepalive = true, 'u8 x' } }",
               "packets.lua: A: a keepalive packet has no fields (the frame is "
               "its length field alone)");
  gw_framing u16;
  assert_int_equal(gw_framing_preset("u16be", &u16), 0);
  expect_error_f("return { A = { side = 'both', keepalive = true } }", &u16,
                 "packets.lua: A: the framing \"u16be\" has no keep-alive frame");
  expect_error_f("return { A = { side = 'both', opcode = 1 } }", &u16,
                 "packets.lua: A: the framing \"u16be\" has no opcode");
  gw_framing mysql;
  assert_int_equal(gw_framing_preset("mysql", &mysql), 0);
  expect_error_f("return { A = { side = 'client', opcode = 256 } }", &mysql,
                 "packets.lua: A: opcode 256 does not fit the framing's 1-byte "
                 "opcode (at most 255)");
}

static void test_bad_fields(void **state) {
  (void)state;
#define PKT(fields) "return { A = { side = 'client', opcode = 1, " fields " } }"
  expect_error(PKT("'string text'"),
               "packets.lua: A[1]: unknown type \"string\" (expected u8 u16 u32 "
               "u64 i8 i16 i32 i64 f32 f64 str bytes(N) bytes)");
  expect_error(PKT("'u8 a', 'bytes(x) b'"),
               "packets.lua: A[2]: unknown type \"bytes(x)\" (expected u8 u16 u32 "
               "u64 i8 i16 i32 i64 f32 f64 str bytes(N) bytes)");
  expect_error(PKT("'bytes(0) b'"),
               "packets.lua: A[1]: bytes(0): the size must be 1 to 16777216");
  expect_error(PKT("'u8'"), "packets.lua: A[1]: a field is \"type name\", got \"u8\"");
  expect_error(PKT("'u8 a-b'"),
               "packets.lua: A[1]: bad field name \"a-b\" (letters, digits and _, "
               "not starting with a digit, at most 64)");
  expect_error(PKT("5"),
               "packets.lua: A[1]: a field is \"type name\" or an array { \"name\", "
               "count = ..., fields... }, got 5");
  expect_error(PKT("'u8 a', 'u16 a'"),
               "packets.lua: A[2]: field a is defined twice (also [1])");
  expect_error(PKT("'bytes rest', 'u8 a'"),
               "packets.lua: A[1]: field rest takes the rest of the body: it must "
               "be the packet's last field");
  expect_error(PKT("{ 'xs', count = '*', 'u8 x' }, 'u8 a'"),
               "packets.lua: A[1]: field xs takes the rest of the body: it must be "
               "the packet's last field");
  expect_error(PKT("{ 'xs', count = 2, 'u8 x', 'bytes rest' }"),
               "packets.lua: A[1][3]: field rest takes the rest of the body: it "
               "must be the packet's last field, not inside an array");
  expect_error(PKT("'u8 a?', 'u8 b'"),
               "packets.lua: A[2]: field b must be optional (\"b?\"): it comes "
               "after an optional field");
  expect_error(PKT("'u8 n', { 'xs', count = 'n', 'u8 x?' }"),
               "packets.lua: A[2][2]: field x: optional fields are for the end of "
               "the body, not inside an array");
  expect_error(PKT("{ 'xs', count = 'n', 'u8 x' }, 'u8 n'"),
               "packets.lua: A[1]: array xs: count field \"n\" is not a field "
               "before it in the same struct");
  expect_error(PKT("{ 'xs', count = 'm', 'u8 x' }"),
               "packets.lua: A[1]: array xs: count field \"m\" is not a field "
               "before it in the same struct");
  expect_error(PKT("'str n', { 'xs', count = 'n', 'u8 x' }"),
               "packets.lua: A[2]: array xs: count field \"n\" is str, not an integer");
  expect_error(PKT("'u8 n', { 'xs', count = 'n', 'u8 x' }, { 'ys', count = 'n', 'u8 y' }"),
               "packets.lua: A[3]: array ys: count field \"n\" already counts array xs");
  expect_error(PKT("{ 'xs', count = true, 'u8 x' }"),
               "packets.lua: A[1]: array xs: count must be the name of an earlier "
               "integer field, a number of elements (0 to 65535) or \"*\", got a boolean");
  expect_error(PKT("{ 'xs', cout = 2, 'u8 x' }"),
               "packets.lua: A[1]: unknown key \"cout\" in an array (did you mean \"count\"?)");
  expect_error(PKT("{ count = 2, 'u8 x' }"),
               "packets.lua: A[1]: an array starts with its name: { \"items\", "
               "count = \"field\", fields... }");
  expect_error(PKT("{ 'xs', count = 2 }"), "packets.lua: A[1]: array xs has no fields");
  expect_error(PKT("'u8 a', { 'xs', count = 1, { 'ys', count = 1, 'u8 y', 'string z' } }"),
               "packets.lua: A[2][2][3]: unknown type \"string\" (expected u8 u16 "
               "u32 u64 i8 i16 i32 i64 f32 f64 str bytes(N) bytes)");
  gw_framing nostr = top();
  nostr.str_length_size = 0;
  nostr.str_nul = false;
  snprintf(nostr.name, sizeof nostr.name, "custom");
  expect_error_f(PKT("'u8 a', 'str b'"), &nostr,
                 "packets.lua: A[2]: field b: the framing \"custom\" has no string type");
#undef PKT
}

/* An element that takes no bytes (all its fields are arrays of no
 * elements) would let a 3-byte frame claim 65535 of them, or "*" loop: the
 * definition is refused. Sizes of nested fixed arrays saturate instead of
 * wrapping. */
static void test_empty_elements(void **state) {
  (void)state;
#define PKT(fields) "return { A = { side = 'client', opcode = 1, " fields " } }"
  expect_error(PKT("'u16 n', { 'xs', count = 'n', { 'zs', count = 0, 'u8 z' } }"),
               "packets.lua: A[2]: array xs: an element takes no bytes (its fields "
               "are arrays of no elements)");
  expect_error(PKT("'u8 k', { 'xs', count = '*', { 'ys', count = 3, { 'zs', count = 0, 'u8 z' } } }"),
               "packets.lua: A[2][2]: array ys: an element takes no bytes (its fields "
               "are arrays of no elements)");
  /* 8 levels of arrays load, a 9th is refused; a file nested deeper than
   * Lua's parser goes is its error, not a crash */
  char deep[1024] = "'u8 k'";
  for (int i = 0; i < 8; i++)
    snprintf(deep + strlen(deep), sizeof deep - strlen(deep), ", { 'a%d', count = 1", i);
  strcat(deep, ", 'u8 x' } } } } } } } }");
  char text[1200];
  snprintf(text, sizeof text, PKT("%s"), deep);
  gw_framing f = top();
  gw_proto p;
  load_ok(text, &f, &p);
  gw_proto_free(&p);
  snprintf(text, sizeof text, PKT("'u8 j', { 'top', count = 1, %s }"), deep);
  expect_error(text, "packets.lua: A[2][3][2][2][2][2][2][2][2]: arrays nest at most 8 deep");
  char *abyss = malloc(32768);
  assert_non_null(abyss);
  strcpy(abyss, "return { A = { side = 'client', opcode = 1, ");
  for (int i = 0; i < 1000; i++) strcat(abyss, "{ 'a', count = 1, ");
  strcat(abyss, "'u8 x'");
  for (int i = 0; i < 1000; i++) strcat(abyss, " }");
  strcat(abyss, " } }");
  it_write(".", "packets.lua", "%s", abyss);
  free(abyss);
  char err[512];
  assert_int_equal(gw_proto_load("packets.lua", &f, &p, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "packets.lua:1: "));
  load_ok(PKT("'u8 k', { 'a', count = 65535, { 'b', count = 65535, { 'c', count = 65535, "
              "{ 'd', count = 65535, { 'e', count = 65535, 'u8 x' } } } } }, "
              "{ 'none', count = 0, 'u8 y' }"), &f, &p);
  const gw_packet_def *a = gw_proto_find(&p, "A");
  assert_non_null(a);
  assert_int_equal(gw_pkt_fields_min_size(a->fields, a->nfields, &f), SIZE_MAX);
  assert_int_equal(gw_pkt_fields_min_size(a->fields[1].fields[0].fields[0].fields,
                                          1, &f), (size_t)65535 * 65535);
  assert_int_equal(gw_pkt_fields_min_size(&a->fields[2], 1, &f), 0);
  gw_proto_free(&p);
#undef PKT
}

/* A file of every opcode of both sides (a generated one, for the
 * dissector) loads and finds each; a clash in it is still the one error. */
static void test_every_opcode(void **state) {
  (void)state;
  gw_framing f = top();
  gw_proto p;
  load_ok("local t = {}\n"
          "for i = 0, 65535 do t['OP_' .. i] = { side = 'both', opcode = i, 'bytes data' } end\n"
          "return t", &f, &p);
  assert_int_equal(p.npackets, 65536);
  for (uint32_t op = 0; op <= 65535; op += 4369) {
    char name[16];
    snprintf(name, sizeof name, "OP_%u", (unsigned)op);
    assert_ptr_equal(gw_proto_lookup(&p, GW_CLIENT, true, op), gw_proto_find(&p, name));
    assert_ptr_equal(gw_proto_lookup(&p, GW_SERVER, true, op), gw_proto_find(&p, name));
  }
  gw_proto_free(&p);
  expect_error("local t = {}\n"
               "for i = 0, 65535 do t['OP_' .. i] = { side = 'both', opcode = i } end\n"
               "t.OP_X = { side = 'server', opcode = 7 } t.OP_W = { side = 'both', opcode = 9 }\n"
               "return t",
               "packets.lua: OP_W: client opcode 9 is OP_9's too");
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_shipped_top),
    cmocka_unit_test(test_arrays_and_optional),
    cmocka_unit_test(test_edit_distance),
    cmocka_unit_test(test_bad_load),
    cmocka_unit_test(test_bad_packets),
    cmocka_unit_test(test_bad_fields),
    cmocka_unit_test(test_empty_elements),
    cmocka_unit_test(test_every_opcode),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
