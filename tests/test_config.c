/* test_config.c: unit tests for src/config.c, the config loader. Each test
 * writes config files into a fresh temp directory (the working directory
 * while it runs, so messages name "config.lua" as an admin would see them)
 * and checks the struct it gives, or the one exact error message. */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lua.h>

#include "itest.h"

#include "config.h"

typedef struct fixture {
  char dir[128];      /* the temp dir, as made */
  char real[PATH_MAX];/* and as realpath() has it: resolved paths use it */
  char old_cwd[PATH_MAX];
  const void *param;  /* the bad_case of a test_bad */
} fixture;

static int setup(void **state) {
  fixture *fx = calloc(1, sizeof *fx);
  it_mkdtemp(fx->dir, sizeof fx->dir);
  assert_non_null(realpath(fx->dir, fx->real));
  assert_non_null(getcwd(fx->old_cwd, sizeof fx->old_cwd));
  assert_int_equal(chdir(fx->dir), 0);
  *state = fx;
  return 0;
}

static int setup_bad(void **state) {
  const void *param = *state;
  setup(state);
  ((fixture *)*state)->param = param;
  return 0;
}

static int teardown(void **state) {
  fixture *fx = *state;
  assert_int_equal(chdir(fx->old_cwd), 0);
  it_rmdir(fx->dir);
  free(fx);
  return 0;
}

/* A listener that is valid on its own, to build bad configs around. */
#define LISTENER1 "name = \"game\", listen = \"127.0.0.1:1973\", upstream = \"127.0.0.1:1974\""

static bool is_zero(const gw_config *cfg) {
  static const gw_config zero;
  return memcmp(cfg, &zero, sizeof zero) == 0;
}

/* Loads text as config.lua: must fail with exactly `want`, leaving the
 * struct zeroed. */
static void expect_error(const char *text, const char *want) {
  it_write(".", "config.lua", "%s", text);
  gw_config cfg;
  char err[512];
  memset(&cfg, 0xa5, sizeof cfg); /* the loader must zero it */
  int rc = gw_config_load("config.lua", &cfg, err, sizeof err);
  if (rc != -EINVAL)
    fail_msg("config loaded (rc %d) but should fail with: %s\n%s", rc, want, text);
  assert_string_equal(err, want);
  assert_true(is_zero(&cfg));
}

static void load_ok(const char *text, gw_config *cfg) {
  it_write(".", "config.lua", "%s", text);
  char err[512];
  int rc = gw_config_load("config.lua", cfg, err, sizeof err);
  if (rc != 0)
    fail_msg("config failed (rc %d): %s", rc, err);
}

static void assert_addr(const struct sockaddr_storage *a, const char *want) {
  char s[GW_ADDR_MAX];
  gw_format_addr((const struct sockaddr *)a, s, sizeof s);
  assert_string_equal(s, want);
}

/* Field by field: struct padding is not part of the contract. */
static void assert_framing(const gw_framing *a, const gw_framing *b) {
  assert_string_equal(a->name, b->name);
  assert_int_equal(a->raw, b->raw);
  assert_int_equal(a->length_offset, b->length_offset);
  assert_int_equal(a->length_size, b->length_size);
  assert_int_equal(a->big_endian, b->big_endian);
  assert_int_equal(a->length_adjust, b->length_adjust);
  assert_int_equal(a->opcode_offset, b->opcode_offset);
  assert_int_equal(a->opcode_size, b->opcode_size);
  assert_int_equal(a->keepalive, b->keepalive);
  for (int s = 0; s < GW_SIDES; s++) {
    assert_int_equal(a->min_frame[s], b->min_frame[s]);
    assert_int_equal(a->max_frame[s], b->max_frame[s]);
  }
  assert_int_equal(a->str_length_size, b->str_length_size);
  assert_int_equal(a->str_nul, b->str_nul);
  assert_memory_equal(a->header_template, b->header_template,
                      sizeof a->header_template);
  assert_int_equal(a->header_len, b->header_len);
}

/* The settings outside listeners. */
static void assert_settings(const gw_config *cfg, const gw_config *want) {
  assert_int_equal(cfg->connect_ms, want->connect_ms);
  assert_int_equal(cfg->idle_ms, want->idle_ms);
  assert_int_equal(cfg->drain_ms, want->drain_ms);
  assert_int_equal(cfg->max_sessions, want->max_sessions);
  assert_int_equal(cfg->handler_instructions, want->handler_instructions);
  assert_int_equal(cfg->lua_memory_mb, want->lua_memory_mb);
  assert_int_equal(cfg->write_high_water, want->write_high_water);
  assert_int_equal(cfg->write_low_water, want->write_low_water);
  assert_int_equal(cfg->log_level, want->log_level);
  assert_int_equal(cfg->log_format, want->log_format);
  assert_int_equal(cfg->watch, want->watch);
  assert_int_equal(cfg->frame_ms, want->frame_ms);
  assert_int_equal(cfg->first_frame_ms, want->first_frame_ms);
  assert_int_equal(cfg->write_max, want->write_max);
  assert_int_equal(cfg->sessions_per_ip, want->sessions_per_ip);
  assert_int_equal(cfg->new_sessions_per_ip_per_s, want->new_sessions_per_ip_per_s);
  assert_int_equal(cfg->log_session_lines_per_s, want->log_session_lines_per_s);
}

/* What docs/config.md promises. */
static const gw_config defaults = {
  .connect_ms = 5000, .idle_ms = 300000, .drain_ms = 10000,
  .max_sessions = 10000, .handler_instructions = 1000000, .lua_memory_mb = 64,
  .write_high_water = 262144, .write_low_water = 65536,
  .log_level = GW_LOG_INFO, .log_format = GW_LOG_TEXT, .watch = false,
  .frame_ms = 10000, .first_frame_ms = 30000, .write_max = 1048576,
  .sessions_per_ip = 0, .new_sessions_per_ip_per_s = 0,
  .log_session_lines_per_s = 100,
};

/* ---- good configs ---- */

static void test_full_config(void **state) {
  fixture *fx = *state;
  it_write(".", "a.lua", "-- a\n");
  assert_int_equal(mkdir("sub", 0755), 0);
  it_write("sub", "b.lua", "-- b\n");
  char abs_script[PATH_MAX + 16];
  snprintf(abs_script, sizeof abs_script, "%s/a.lua", fx->real);
  char text[8192];
  snprintf(text, sizeof text,
    "local ms = 1000\n"
    "return {\n"
    "  listeners = {\n"
    "    { name = \"game\", listen = \"127.0.0.1:1973\", upstream = \"127.0.0.1:1974\",\n"
    "      framing = \"top\", scripts = { \"a.lua\", \"sub/b.lua\", \"%s\" },\n"
    "      on_error = \"close\", unsafe = true, unfinished_frame = \"pass\" },\n"
    "    { name = \"login.v6-2\", listen = \"[::1]:1975\", upstream = \"localhost:1976\",\n"
    "      framing = { preset = \"top\", max_frame = { client = 8192 }, min_frame = 2,\n"
    "                  keepalive = false } },\n"
    "    { name = \"custom\", listen = \"0.0.0.0:1977\", upstream = \"[::1]:1978\",\n"
    "      framing = { length_offset = 1, length_size = 3, byte_order = \"little\",\n"
    "                  length_adjust = -4, opcode_offset = 5, opcode_size = 4,\n"
    "                  min_frame = { client = 9, server = 10 }, max_frame = 4096,\n"
    "                  keepalive = true, string = { length_size = 1, nul = true } },\n"
    "      on_error = \"drop\", unsafe = false, unfinished_frame = \"drop\" },\n"
    "    { name = \"mc\", listen = \"localhost:1979\", upstream = \"127.0.0.1:1980\",\n"
    "      framing = { length_size = \"varint\", length_offset = 2 }, scripts = {} },\n"
    "  },\n"
    "  timeouts = { connect_ms = 3 * ms, idle_ms = 0, drain_ms = 500,\n"
    "               frame_ms = 0, first_frame_ms = 2 * ms },\n"
    "  limits = { max_sessions = 0, handler_instructions = 5000,\n"
    "             lua_memory_mb = 4096, write_high_water = 1 << 20,\n"
    "             write_low_water = 1 << 19, write_max = 1 << 20,\n"
    "             sessions_per_ip = 8, new_sessions_per_ip_per_s = 20 },\n"
    "  log = { level = \"debug\", format = \"json\", session_lines_per_s = 0 },\n"
    "  watch = true,\n"
    "  control = \"run/gw.sock\",\n"
    "}\n", abs_script);
  gw_config cfg;
  load_ok(text, &cfg);

  assert_string_equal(cfg.path, "config.lua");
  assert_int_equal(cfg.nlisteners, 4);
  char want[PATH_MAX + 32];

  gw_listener_config *l = &cfg.listeners[0];
  assert_string_equal(l->name, "game");
  assert_string_equal(l->listen, "127.0.0.1:1973");
  assert_addr(&l->listen_addr, "127.0.0.1:1973");
  assert_string_equal(l->upstream, "127.0.0.1:1974");
  assert_addr(&l->upstream_addr, "127.0.0.1:1974");
  gw_framing top;
  assert_int_equal(gw_framing_preset("top", &top), 0);
  assert_framing(&l->framing, &top);
  assert_int_equal(l->nscripts, 3);
  snprintf(want, sizeof want, "%s/a.lua", fx->real);
  assert_string_equal(l->scripts[0], want);
  snprintf(want, sizeof want, "%s/sub/b.lua", fx->real);
  assert_string_equal(l->scripts[1], want);
  assert_string_equal(l->scripts[2], abs_script);
  assert_int_equal(l->on_error, GW_ON_ERROR_CLOSE);
  assert_true(l->unsafe);
  assert_true(l->unfinished_frame_pass);

  l = &cfg.listeners[1];
  assert_string_equal(l->name, "login.v6-2");
  assert_string_equal(l->listen, "[::1]:1975");
  assert_int_equal(l->listen_addr.ss_family, AF_INET6);
  assert_addr(&l->listen_addr, "[::1]:1975");
  assert_string_equal(l->upstream, "localhost:1976");
  assert_int_equal(l->upstream_addr.ss_family, 0); /* a name: resolved by the pool */
  /* top with three fields overridden, the rest (template included) kept */
  gw_framing want_f = top;
  want_f.max_frame[GW_CLIENT] = 8192;
  want_f.min_frame[GW_CLIENT] = want_f.min_frame[GW_SERVER] = 2;
  want_f.keepalive = false;
  assert_framing(&l->framing, &want_f);
  assert_int_equal(l->nscripts, 0);
  assert_null(l->scripts);
  assert_int_equal(l->on_error, GW_ON_ERROR_PASS);
  assert_false(l->unsafe);
  assert_false(l->unfinished_frame_pass);

  l = &cfg.listeners[2];
  assert_addr(&l->listen_addr, "0.0.0.0:1977");
  assert_addr(&l->upstream_addr, "[::1]:1978");
  const gw_framing *f = &l->framing;
  assert_string_equal(f->name, "custom");
  assert_false(f->raw);
  assert_int_equal(f->length_offset, 1);
  assert_int_equal(f->length_size, 3);
  assert_false(f->big_endian);
  assert_int_equal(f->length_adjust, -4);
  assert_int_equal(f->opcode_offset, 5);
  assert_int_equal(f->opcode_size, 4);
  assert_int_equal(f->min_frame[GW_CLIENT], 9);
  assert_int_equal(f->min_frame[GW_SERVER], 10);
  assert_int_equal(f->max_frame[GW_CLIENT], 4096);
  assert_int_equal(f->max_frame[GW_SERVER], 4096);
  assert_true(f->keepalive);
  assert_int_equal(f->str_length_size, 1);
  assert_true(f->str_nul);
  assert_int_equal(f->header_len, 9); /* the opcode ends last */
  static const uint8_t zeros[GW_HEADER_TEMPLATE_MAX];
  assert_memory_equal(f->header_template, zeros, sizeof zeros);
  assert_int_equal(l->on_error, GW_ON_ERROR_DROP);
  assert_false(l->unfinished_frame_pass);

  l = &cfg.listeners[3];
  assert_addr(&l->listen_addr, "127.0.0.1:1979");
  f = &l->framing;
  assert_int_equal(f->length_size, GW_LENGTH_VARINT);
  assert_int_equal(f->length_offset, 2);
  assert_int_equal(f->header_len, 2); /* a varint's header ends where it starts */
  assert_true(f->big_endian);
  assert_int_equal(f->max_frame[GW_CLIENT], 16 * 1024 * 1024);
  assert_int_equal(l->nscripts, 0);

  assert_settings(&cfg, &(gw_config){
    .connect_ms = 3000, .idle_ms = 0, .drain_ms = 500, .max_sessions = 0,
    .handler_instructions = 5000, .lua_memory_mb = 4096,
    .write_high_water = 1 << 20, .write_low_water = 1 << 19,
    .log_level = GW_LOG_DEBUG, .log_format = GW_LOG_JSON, .watch = true,
    .frame_ms = 0, .first_frame_ms = 2000, .write_max = 1 << 20,
    .sessions_per_ip = 8, .new_sessions_per_ip_per_s = 20,
    .log_session_lines_per_s = 0,
  });
  snprintf(want, sizeof want, "%s/run/gw.sock", fx->real);
  assert_string_equal(cfg.control, want);

  gw_config_free(&cfg);
  assert_true(is_zero(&cfg));
  gw_config_free(&cfg); /* twice is harmless */
}

static void test_defaults(void **state) {
  fixture *fx = *state;
  gw_config cfg;
  load_ok("return { listeners = { { " LISTENER1 " } } }", &cfg);
  assert_int_equal(cfg.nlisteners, 1);
  const gw_listener_config *l = &cfg.listeners[0];
  gw_framing raw;
  assert_int_equal(gw_framing_preset("raw", &raw), 0);
  assert_framing(&l->framing, &raw);
  assert_true(l->framing.raw);
  assert_int_equal(l->nscripts, 0);
  assert_null(l->scripts);
  assert_int_equal(l->on_error, GW_ON_ERROR_PASS);
  assert_false(l->unsafe);
  assert_false(l->unfinished_frame_pass); /* drop */
  assert_settings(&cfg, &defaults);
  char want[PATH_MAX + 32];
  snprintf(want, sizeof want, "%s/gangway.sock", fx->real);
  assert_string_equal(cfg.control, want);
  gw_config_free(&cfg);

  /* Empty sections take the defaults too; "" turns the control socket off. */
  load_ok("return { listeners = { { " LISTENER1 " } }, timeouts = {},\n"
          "  limits = {}, log = {}, control = \"\" }", &cfg);
  assert_settings(&cfg, &defaults);
  assert_string_equal(cfg.control, "");
  gw_config_free(&cfg);

  /* A framing table without a preset starts from an empty custom framing. */
  load_ok("return { listeners = { { " LISTENER1 ", framing = { length_size = 2 } } } }",
          &cfg);
  const gw_framing *f = &cfg.listeners[0].framing;
  assert_string_equal(f->name, "custom");
  assert_false(f->raw);
  assert_true(f->big_endian);
  assert_int_equal(f->length_offset, 0);
  assert_int_equal(f->length_adjust, 0);
  assert_int_equal(f->opcode_size, 0);
  assert_false(f->keepalive);
  assert_int_equal(f->min_frame[GW_CLIENT], 0);
  assert_int_equal(f->max_frame[GW_SERVER], 16 * 1024 * 1024);
  assert_int_equal(f->str_length_size, 0);
  assert_int_equal(f->header_len, 2);
  gw_config_free(&cfg);
}

/* admin: absent, no endpoint; {} the loopback default; a token makes any
 * address possible. */
static void test_admin(void **state) {
  (void)state;
  gw_config cfg;
  load_ok("return { listeners = { { " LISTENER1 " } } }", &cfg);
  assert_string_equal(cfg.admin_listen, "");
  assert_null(cfg.admin_token);
  assert_false(cfg.admin_token_for_reads);
  gw_config_free(&cfg);

  load_ok("return { listeners = { { " LISTENER1 " } }, admin = {} }", &cfg);
  assert_string_equal(cfg.admin_listen, "127.0.0.1:9973");
  assert_addr(&cfg.admin_addr, "127.0.0.1:9973");
  assert_null(cfg.admin_token);
  gw_config_free(&cfg);

  load_ok("return { listeners = { { " LISTENER1 " } },\n"
          "  admin = { listen = \"[::1]:9000\" } }", &cfg);
  assert_addr(&cfg.admin_addr, "[::1]:9000");
  gw_config_free(&cfg);

  load_ok("return { listeners = { { " LISTENER1 " } }, admin = { listen = \"0.0.0.0:9973\",\n"
          "  token = \"0123456789abcdef-ghij\", token_for_reads = true } }", &cfg);
  assert_string_equal(cfg.admin_listen, "0.0.0.0:9973");
  assert_string_equal(cfg.admin_token, "0123456789abcdef-ghij");
  assert_true(cfg.admin_token_for_reads);
  gw_config_free(&cfg);
}

/* protocol = "name" finds protocols/name/packets.lua next to the config;
 * a path names the directory itself; redis has defaults. */
static void test_protocol_and_redis(void **state) {
  (void)state;
  assert_int_equal(mkdir("protocols", 0755), 0);
  assert_int_equal(mkdir("protocols/top", 0755), 0);
  assert_int_equal(mkdir("mine", 0755), 0);
  it_write("protocols/top", "packets.lua", "return {}\n");
  it_write("mine", "packets.lua", "return {}\n");
  char cwd[1024], want[PATH_MAX + 256];
  assert_non_null(getcwd(cwd, sizeof cwd));
  gw_config cfg;
  load_ok("return { listeners = { { " LISTENER1 ", protocol = \"top\" } },\n"
          "  redis = { password = \"pw\" } }", &cfg);
  assert_string_equal(cfg.listeners[0].protocol, "top");
  snprintf(want, sizeof want, "%s/protocols/top", cwd);
  assert_string_equal(cfg.listeners[0].protocol_dir, want);
  assert_string_equal(cfg.redis_addr, "127.0.0.1:6379");
  assert_addr(&cfg.redis_sockaddr, "127.0.0.1:6379");
  assert_string_equal(cfg.redis_password, "pw");
  assert_null(cfg.redis_user);
  assert_int_equal(cfg.redis_db, 0);
  assert_int_equal(cfg.redis_timeout_ms, 1000);
  gw_config_free(&cfg);

  load_ok("return { listeners = { { " LISTENER1 ", protocol = \"./mine\" } },\n"
          "  redis = { addr = \"[::1]:6390\", db = 3, timeout_ms = 50 } }", &cfg);
  snprintf(want, sizeof want, "%s/./mine", cwd);
  assert_string_equal(cfg.listeners[0].protocol_dir, want);
  assert_addr(&cfg.redis_sockaddr, "[::1]:6390");
  assert_int_equal(cfg.redis_db, 3);
  assert_int_equal(cfg.redis_timeout_ms, 50);
  gw_config_free(&cfg);

  load_ok("return { listeners = { { " LISTENER1 " } } }", &cfg);
  assert_null(cfg.listeners[0].protocol);
  assert_string_equal(cfg.redis_addr, "");
  gw_config_free(&cfg);

  snprintf(want, sizeof want,
           "config.lua: listeners[1].protocol: no protocol \"tera\": cannot open "
           "%s/protocols/tera/packets.lua (nor " GW_PROTOCOLS_DIR
           "/tera/packets.lua): No such file or directory", cwd);
  expect_error("return { listeners = { { " LISTENER1 ", protocol = \"tera\" } } }", want);
  snprintf(want, sizeof want,
           "config.lua: listeners[1].protocol: cannot open %s/../x y/packets.lua: "
           "No such file or directory", cwd);
  expect_error("return { listeners = { { " LISTENER1 ", protocol = \"../x y\" } } }", want);
  expect_error("return { listeners = { { " LISTENER1 ", protocol = \"x y\" } } }",
               "config.lua: listeners[1].protocol: expected a protocol name of letters, "
               "digits, \"_\", \".\" or \"-\", or a directory path, got \"x y\"");
  expect_error("return { listeners = { { " LISTENER1 " } }, redis = { user = \"u\" } }",
               "config.lua: redis.user: needs redis.password");
  expect_error("return { listeners = { { " LISTENER1 " } }, redis = { db = -1 } }",
               "config.lua: redis.db: expected an integer from 0 to 65535, got -1");
  expect_error("return { listeners = { { " LISTENER1 " } }, redis = { adr = \"x\" } }",
               "config.lua: redis.adr: unknown key (did you mean \"addr\"?)");
  /* a NUL would cut the password short (AUTH with one never written) */
  expect_error("return { listeners = { { " LISTENER1 " } }, redis = { password = \"pass\\0word\" } }",
               "config.lua: redis.password: expected a string, got \"pass\\0word\"");
}

/* The file is found by the path as given; scripts resolve against its
 * directory, not the working directory. */
static void test_paths_from_elsewhere(void **state) {
  fixture *fx = *state;
  assert_int_equal(mkdir("etc", 0755), 0);
  it_write("etc", "s.lua", "\n");
  it_write("etc", "config.lua",
           "return { listeners = { { " LISTENER1 ", scripts = { \"s.lua\" } } },\n"
           "  control = \"/tmp/gw-test.sock\" }");
  gw_config cfg;
  char err[512];
  char path[PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/etc/config.lua", fx->real);
  assert_int_equal(chdir("/"), 0);
  int rc = gw_config_load(path, &cfg, err, sizeof err);
  assert_int_equal(chdir(fx->dir), 0);
  if (rc)
    fail_msg("%s", err);
  char want[PATH_MAX + 32];
  snprintf(want, sizeof want, "%s/etc/s.lua", fx->real);
  assert_string_equal(cfg.listeners[0].scripts[0], want);
  assert_string_equal(cfg.control, "/tmp/gw-test.sock");
  assert_string_equal(cfg.path, path);
  gw_config_free(&cfg);
}

/* What the config may use, and that its own pcall cannot hide our limits. */
static void test_sandbox_allows(void **state) {
  (void)state;
  gw_config cfg;
  load_ok("assert(io == nil and os == nil and require == nil and load == nil)\n"
          "assert(loadfile == nil and dofile == nil and debug == nil)\n"
          "assert(package == nil and collectgarbage == nil and print == nil)\n"
          "assert(_VERSION == \"Lua 5.4\" and utf8.char(72) == \"H\")\n"
          "assert(math.type(1) == \"integer\" and select(\"#\", 1, 2) == 2)\n"
          "local ok, e = pcall(string.rep, \"x\", 1 << 28)\n"
          "assert(not ok and e == \"not enough memory\")\n"
          "local names = {}\n"
          "for _, n in ipairs({ \"a\", \"b\" }) do\n"
          "  names[#names + 1] = { name = n, listen = (\"127.0.0.1:%d\"):format(2000 + #names),\n"
          "                        upstream = \"127.0.0.1:3000\" }\n"
          "end\n"
          "table.sort(names, function(x, y) return x.name > y.name end)\n"
          "return setmetatable({ listeners = names }, { __index = function() error(\"no\") end })\n",
          &cfg);
  assert_int_equal(cfg.nlisteners, 2);
  assert_string_equal(cfg.listeners[0].name, "b");
  assert_string_equal(cfg.listeners[1].listen, "127.0.0.1:2000");
  gw_config_free(&cfg);
}

/* ---- bad configs: one exact message each ---- */

typedef struct bad_case {
  const char *name;
  const char *text;
  const char *want;
} bad_case;

static const bad_case bad_cases[] = {
  {"syntax error with line",
   "return {\n  listeners = {\n}\n",
   "config.lua:4: '}' expected (to close '{' at line 1) near <eof>"},
  {"runtime error with line",
   "local t = nil\nlocal x = 1\nreturn t.listeners\n",
   "config.lua:3: attempt to index a nil value (local 't')"},
  {"error() with line",
   "\n\nerror(\"no listeners today\")\n",
   "config.lua:3: no listeners today"},
  {"error() without position",
   "error(\"plain\", 0)\n",
   "config.lua: plain"},
  {"error() with a table",
   "error({ code = 1 })\n",
   "config.lua: error object is a table value"},
  {"binary chunk",
   "\x1bLua\x54\x00",
   "config.lua: attempt to load a binary chunk (mode is 't')"},
  {"returns a number",
   "return 42\n",
   "config.lua: expected the config to return a table, got number 42"},
  {"returns nothing",
   "local x = {}\n",
   "config.lua: expected the config to return a table, got nil"},
  {"os is not there",
   "os.execute(\"touch /tmp/gw-pwned\")\nreturn {}\n",
   "config.lua:1: attempt to index a nil value (global 'os')"},
  {"require is not there",
   "local x = 1\nrequire(\"socket\")\n",
   "config.lua:2: attempt to call a nil value (global 'require')"},
  {"io through string's metatable is not there either",
   "return getmetatable(\"\").__index.io.open(\"/etc/passwd\")\n",
   "config.lua:1: attempt to index a nil value (field 'io')"},
  {"infinite loop",
   "local n = 0\nwhile true do n = n + 1 end\n",
   "config.lua: config took too long to run"},
  {"infinite loop that catches the timeout",
   "while true do pcall(function() while true do end end) end\n",
   "config.lua: config took too long to run"},
  {"catastrophic pattern",
   "local s = (\"a\"):rep(30000)\nreturn { listeners = s:find(\".-.-.-.-.-x\") }\n",
   "config.lua: config took too long to run"},
  {"catastrophic pattern as a method, in gsub, gmatch and match",
   "local s = (\"a\"):rep(30000)\n"
   "pcall(s.gsub, s, \"(.-)(.-)(.-)z\", \"\")\n"
   "for _ in s:gmatch(\"(.-)(.-)(.-)y\") do end\n"
   "return s:match(\".-.-.-.-x\")\n",
   "config.lua: config took too long to run"},
  {"catastrophic pattern that catches the timeout",
   "while true do pcall(string.find, (\"a\"):rep(30000), \".-.-.-.-.-x\") end\n",
   "config.lua: config took too long to run"},
  {"sorting loop",
   "local t = {}\nfor i = 1, 100000 do t[i] = -i end\nwhile true do table.sort(t) end\n",
   "config.lua: config took too long to run"},
  {"allocation loop",
   "while true do local s = (\"x\"):rep(8 * 1024 * 1024) end\n",
   "config.lua: config took too long to run"},
  {"concatenation loop",
   "local t = {}\nfor i = 1, 1000 do t[i] = (\"x\"):rep(1000) end\n"
   "while true do local s = table.concat(t) end\n",
   "config.lua: config took too long to run"},
  {"repetition of nothing",
   "return { listeners = { { " LISTENER1 " } }, log = { format = string.rep(\"\", 1e15) } }\n",
   "config.lua: log.format: expected \"text\" or \"json\", got \"\""},
  {"bulk results loop",
   "local s = (\"x\"):rep(100000)\nwhile true do local n = select(\"#\", s:byte(1, -1)) end\n",
   "config.lua: config took too long to run"},
  {"memory bomb",
   "local t = {}\nfor i = 1, 1e9 do t[i] = (\"x\"):rep(100) .. i end\n",
   "config.lua: config used more than 64 MiB of memory"},
  {"one big string",
   "local s = string.rep(\"x\", 200 * 1024 * 1024)\n",
   "config.lua: config used more than 64 MiB of memory"},
  {"finalizer",
   "local t = setmetatable({}, { __gc = function() while true do end end })\n",
   "config.lua:1: __gc metamethods are not allowed in the config"},
  {"unknown top-level key",
   "return { listners = {} }\n",
   "config.lua: listners: unknown key (did you mean \"listeners\"?)"},
  {"unknown nested key with a suggestion",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstrem = \"x\" } } }\n",
   "config.lua: listeners[1].upstrem: unknown key (did you mean \"upstream\"?)"},
  {"unknown key without a suggestion",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { connect_ms = 1, foo = 2 } }\n",
   "config.lua: timeouts.foo: unknown key"},
  {"unknown keys are reported in order",
   "return { zeta = 1, [\"a b\"] = 2, beta = 3, listeners = { { " LISTENER1 " } } }\n",
   "config.lua: [\"a b\"]: unknown key"},
  {"a key that is not a string",
   "return { [true] = 1, listeners = { { " LISTENER1 " } } }\n",
   "config.lua: unexpected boolean key"},
  {"a list item at the top",
   "return { { " LISTENER1 " } }\n",
   "config.lua: [1]: unknown key"},
  {"listeners missing",
   "return { watch = true }\n",
   "config.lua: listeners: expected a non-empty list of listener tables, got nil"},
  {"listeners empty",
   "return { listeners = {} }\n",
   "config.lua: listeners: expected a non-empty list of listener tables, got an empty table"},
  {"listeners with a named key",
   "return { listeners = { { " LISTENER1 " }, game = {} } }\n",
   "config.lua: listeners.game: unexpected key in a list"},
  {"too many listeners",
   "local l = {}\nfor i = 1, 1025 do l[i] = { name = \"l\" .. i } end\nreturn { listeners = l }\n",
   "config.lua: listeners: expected at most 1024 items, got 1025"},
  {"listener not a table",
   "return { listeners = { { " LISTENER1 " }, \"login\" } }\n",
   "config.lua: listeners[2]: expected a table, got string \"login\""},
  {"upstream as a number",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = 1974 } } }\n",
   "config.lua: listeners[1].upstream: expected \"host:port\", got number 1974"},
  {"upstream list empty",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = {} } } }\n",
   "config.lua: listeners[1].upstream: expected a non-empty list of servers, got an empty table"},
  {"upstream server a number",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { \"10.0.0.1:1\", 2 } } } }\n",
   "config.lua: listeners[1].upstream[2]: expected \"host:port\" or { addr = \"host:port\", ... }, got number 2"},
  {"upstream record misspelt",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { servers = { \"10.0.0.1:1\" }, balanse = \"hash\" } } } }\n",
   "config.lua: listeners[1].upstream.balanse: unknown key (did you mean \"balance\"?)"},
  {"upstream record without servers",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { balance = \"hash\" } } } }\n",
   "config.lua: listeners[1].upstream.servers: missing (a list of \"host:port\" or { addr = ..., name = ..., weight = ..., backup = ... })"},
  {"upstream balance unknown",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { servers = { \"10.0.0.1:1\" }, balance = \"random\" } } } }\n",
   "config.lua: listeners[1].upstream.balance: expected \"round_robin\", \"least_sessions\" or \"hash\", got \"random\""},
  {"upstream server weight 0",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { { addr = \"10.0.0.1:1\", weight = 0 } } } } }\n",
   "config.lua: listeners[1].upstream[1].weight: expected an integer from 1 to 256, got 0"},
  {"upstream server without addr",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { { name = \"eu-1\" } } } } }\n",
   "config.lua: listeners[1].upstream[1].addr: expected \"host:port\", got nil"},
  {"upstream server bad name",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { { name = \"eu 1\", addr = \"10.0.0.1:1\" } } } } }\n",
   "config.lua: listeners[1].upstream[1].name: expected a name of 1 to 64 letters, digits, \"_\", \".\" or \"-\", got \"eu 1\""},
  {"upstream duplicate server",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { \"10.0.0.1:1\", \"10.0.0.2:1\", \"10.0.0.1:1\" } } } }\n",
   "config.lua: listeners[1].upstream[3]: \"10.0.0.1:1\" already names server 1 (give each server its own name)"},
  {"upstream only backups",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { { addr = \"10.0.0.1:1\", backup = true } } } } }\n",
   "config.lua: listeners[1].upstream: every server is a backup: at least one must not be"},
  {"upstream bad host",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { \"bad host!:1\" } } } }\n",
   "config.lua: listeners[1].upstream[1]: \"bad host!\" is neither a numeric address nor a host name"},
  {"upstream health timeout over interval",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { servers = { \"10.0.0.1:1\" }, health = { interval_ms = 100, timeout_ms = 200 } } } } }\n",
   "config.lua: listeners[1].upstream.health.timeout_ms: must be at most interval_ms (100), got 200"},
  {"upstream health a number",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { servers = { \"10.0.0.1:1\" }, health = 5 } } } }\n",
   "config.lua: listeners[1].upstream.health: expected true or { interval_ms, timeout_ms, rise, fall }, got number 5"},
  {"upstream health fall 0",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = { servers = { \"10.0.0.1:1\" }, health = { fall = 0 } } } } }\n",
   "config.lua: listeners[1].upstream.health.fall: expected an integer from 1 to 1000, got 0"},
  {"upstream too many servers",
   "local s = {}\nfor i = 1, 65 do s[i] = \"10.0.0.\" .. i .. \":1\" end\n"
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = s } } }\n",
   "config.lua: listeners[1].upstream: expected at most 64 items, got 65"},
  {"name missing",
   "return { listeners = { { listen = \"127.0.0.1:1973\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[1].name: expected a listener name, got nil"},
  {"name with a space",
   "return { listeners = { { name = \"my game\", listen = \"127.0.0.1:1973\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[1].name: expected a name of 1 to 64 letters, digits, \"_\", \".\" or \"-\", got \"my game\""},
  {"duplicate listener name",
   "return { listeners = { { " LISTENER1 " },\n"
   "  { name = \"game\", listen = \"127.0.0.1:1975\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[2].name: \"game\" is already the name of listeners[1]"},
  {"duplicate listen address",
   "return { listeners = { { " LISTENER1 " },\n"
   "  { name = \"login\", listen = \"localhost:1973\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[2].listen: \"localhost:1973\" conflicts with listeners[1].listen \"127.0.0.1:1973\""},
  {"listen address under a wildcard",
   "return { listeners = { { name = \"a\", listen = \"[::]:1973\", upstream = \"127.0.0.1:1974\" },\n"
   "  { name = \"b\", listen = \"127.0.0.1:1973\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[2].listen: \"127.0.0.1:1973\" conflicts with listeners[1].listen \"[::]:1973\""},
  {"port 0",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:0\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[1].listen: port must be 1 to 65535, got \"0\""},
  {"port too large",
   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\", upstream = \"127.0.0.1:65536\" } } }\n",
   "config.lua: listeners[1].upstream: port must be 1 to 65535, got \"65536\""},
  {"IPv6 without brackets",
   "return { listeners = { { name = \"game\", listen = \"::1:1973\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[1].listen: an IPv6 address needs brackets, as in \"[::1]:1973\", got \"::1:1973\""},
  {"listen on a host name",
   "return { listeners = { { name = \"game\", listen = \"game.example:1973\", upstream = \"127.0.0.1:1974\" } } }\n",
   "config.lua: listeners[1].listen: \"game.example\" is not a numeric address (expected an IPv4 address, [IPv6] or localhost)"},
  {"bad framing preset",
   "return { listeners = { { " LISTENER1 ", framing = \"tpo\" } } }\n",
   "config.lua: listeners[1].framing: unknown preset \"tpo\" (did you mean \"top\"? presets: "
   "\"top\", \"u16be\", \"u32be\", \"u32le\", \"mysql\", \"varint\", \"mqtt\", \"raw\")"},
  {"bad preset in a framing table",
   "return { listeners = { { " LISTENER1 ", framing = { preset = \"netty\" } } } }\n",
   "config.lua: listeners[1].framing.preset: unknown preset \"netty\" (presets: "
   "\"top\", \"u16be\", \"u32be\", \"u32le\", \"mysql\", \"varint\", \"mqtt\", \"raw\")"},
  {"framing of the wrong type",
   "return { listeners = { { " LISTENER1 ", framing = 2 } } }\n",
   "config.lua: listeners[1].framing: expected a preset name or a table, got number 2"},
  {"bad framing field",
   "return { listeners = { { " LISTENER1 ", framing = { length_size = 8 } } } }\n",
   "config.lua: listeners[1].framing.length_size: expected 1, 2, 3, 4 or \"varint\", got 8"},
  {"framing table without a length size",
   "return { listeners = { { " LISTENER1 ", framing = { max_frame = 100 } } } }\n",
   "config.lua: listeners[1].framing.length_size: expected 1, 2, 3, 4 or \"varint\", got nil"},
  {"a NUL byte in a choice",
   "return { listeners = { { " LISTENER1 ", framing = { length_size = 2, byte_order = \"big\\0\" } } } }\n",
   "config.lua: listeners[1].framing.byte_order: expected \"big\" or \"little\", got \"big\\0\""},
  {"bad framing byte order",
   "return { listeners = { { " LISTENER1 ", framing = { length_size = 2, byte_order = \"network\" } } } }\n",
   "config.lua: listeners[1].framing.byte_order: expected \"big\" or \"little\", got \"network\""},
  {"opcode over the length field",
   "return { listeners = { { " LISTENER1 ", framing = { length_size = 2, opcode_size = 2 } } } }\n",
   "config.lua: listeners[1].framing.opcode_offset: the opcode (bytes 0..1) overlaps the length field (bytes 0..1)"},
  {"opcode with a varint length",
   "return { listeners = { { " LISTENER1 ", framing = { length_size = \"varint\", opcode_offset = 1, opcode_size = 1 } } } }\n",
   "config.lua: listeners[1].framing.opcode_offset: with a varint length field the opcode must end before it (byte 0), got bytes 1..1"},
  {"header past the template",
   "return { listeners = { { " LISTENER1 ", framing = { length_offset = 14, length_size = 4 } } } }\n",
   "config.lua: listeners[1].framing.length_offset: the length field (bytes 14..17) must lie within the first 16 bytes"},
  {"min_frame above max_frame",
   "return { listeners = { { " LISTENER1 ", framing = { preset = \"top\", min_frame = 100, max_frame = { client = 50 } } } } }\n",
   "config.lua: listeners[1].framing.min_frame.client: must be at most max_frame.client (50), got 100"},
  {"max_frame of zero",
   "return { listeners = { { " LISTENER1 ", framing = { preset = \"top\", max_frame = { server = 0 } } } } }\n",
   "config.lua: listeners[1].framing.max_frame.server: expected a positive integer, got 0"},
  {"unknown side in max_frame",
   "return { listeners = { { " LISTENER1 ", framing = { preset = \"top\", max_frame = { clinet = 10 } } } } }\n",
   "config.lua: listeners[1].framing.max_frame.clinet: unknown key (did you mean \"client\"?)"},
  {"length field with the raw preset",
   "return { listeners = { { " LISTENER1 ", framing = { preset = \"raw\", length_size = 2 } } } }\n",
   "config.lua: listeners[1].framing.length_size: means nothing with the \"raw\" preset, which does no framing"},
  {"bad string length size",
   "return { listeners = { { " LISTENER1 ", framing = { preset = \"top\", string = { length_size = 3 } } } } }\n",
   "config.lua: listeners[1].framing.string.length_size: expected 0, 1, 2 or 4, got 3"},
  {"missing script file",
   "return { listeners = { { " LISTENER1 ", scripts = { \"config.lua\", \"x.lua\" } } } }\n",
   "config.lua: listeners[1].scripts[2]: cannot open \"x.lua\": No such file or directory"},
  {"script that is a directory",
   "return { listeners = { { " LISTENER1 ", scripts = { \".\" } } } }\n",
   "config.lua: listeners[1].scripts[1]: cannot open \".\": Is a directory"},
  {"scripts as a string",
   "return { listeners = { { " LISTENER1 ", scripts = \"a.lua\" } } }\n",
   "config.lua: listeners[1].scripts: expected a list of script paths, got string \"a.lua\""},
  {"too many scripts",
   "local s = {}\nfor i = 1, 257 do s[i] = \"config.lua\" end\n"
   "return { listeners = { { " LISTENER1 ", scripts = s } } }\n",
   "config.lua: listeners[1].scripts: expected at most 256 items, got 257"},
  {"bad on_error",
   "return { listeners = { { " LISTENER1 ", on_error = \"ignore\" } } }\n",
   "config.lua: listeners[1].on_error: expected \"pass\", \"drop\" or \"close\", got \"ignore\""},
  {"unsafe as a string",
   "return { listeners = { { " LISTENER1 ", unsafe = \"yes\" } } }\n",
   "config.lua: listeners[1].unsafe: expected a boolean, got string \"yes\""},
  {"negative timeout",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { connect_ms = -5 } }\n",
   "config.lua: timeouts.connect_ms: expected a positive integer, got -5"},
  {"timeout as a float",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { idle_ms = 1.5 } }\n",
   "config.lua: timeouts.idle_ms: expected a non-negative integer, got 1.5"},
  {"timeout as a float that looks whole",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { drain_ms = 1e3 } }\n",
   "config.lua: timeouts.drain_ms: expected a non-negative integer, got 1000.0"},
  {"timeout as a string",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { drain_ms = \"10s\" } }\n",
   "config.lua: timeouts.drain_ms: expected a non-negative integer, got string \"10s\""},
  {"timeout past 32 bits",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { idle_ms = 1 << 32 } }\n",
   "config.lua: timeouts.idle_ms: expected a non-negative integer up to 4294967295, got 4294967296"},
  {"timeouts not a table",
   "return { listeners = { { " LISTENER1 " } }, timeouts = 5000 }\n",
   "config.lua: timeouts: expected a table, got number 5000"},
  {"length_adjust past 32 bits",
   "return { listeners = { { " LISTENER1 ", framing = { length_size = 4, length_adjust = -(1 << 31) - 1 } } } }\n",
   "config.lua: listeners[1].framing.length_adjust: expected an integer from -2147483648 to 2147483647, got -2147483649"},
  {"too few handler instructions",
   "return { listeners = { { " LISTENER1 " } }, limits = { handler_instructions = 10 } }\n",
   "config.lua: limits.handler_instructions: expected an integer >= 1000, got 10"},
  {"too much Lua memory",
   "return { listeners = { { " LISTENER1 " } }, limits = { lua_memory_mb = 5000 } }\n",
   "config.lua: limits.lua_memory_mb: expected an integer from 1 to 4096, got 5000"},
  {"low water at high water",
   "return { listeners = { { " LISTENER1 " } }, limits = { write_high_water = 4096, write_low_water = 4096 } }\n",
   "config.lua: limits.write_low_water: must be below limits.write_high_water (4096), got 4096"},
  {"high water under the default low water",
   "return { listeners = { { " LISTENER1 " } }, limits = { write_high_water = 1024 } }\n",
   "config.lua: limits.write_high_water: must be above limits.write_low_water (65536), got 1024"},
  {"negative frame timeout",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { frame_ms = -1 } }\n",
   "config.lua: timeouts.frame_ms: expected a non-negative integer, got -1"},
  {"first frame timeout as a float",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { first_frame_ms = 1.5 } }\n",
   "config.lua: timeouts.first_frame_ms: expected a non-negative integer, got 1.5"},
  {"first frame timeout past 32 bits",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { first_frame_ms = 1 << 32 } }\n",
   "config.lua: timeouts.first_frame_ms: expected a non-negative integer up to 4294967295, got 4294967296"},
  {"misspelt frame timeout",
   "return { listeners = { { " LISTENER1 " } }, timeouts = { frame_sm = 5 } }\n",
   "config.lua: timeouts.frame_sm: unknown key (did you mean \"frame_ms\"?)"},
  {"write_max of zero",
   "return { listeners = { { " LISTENER1 " } }, limits = { write_max = 0 } }\n",
   "config.lua: limits.write_max: expected a positive integer, got 0"},
  {"write_max under the default high water",
   "return { listeners = { { " LISTENER1 " } }, limits = { write_max = 1000 } }\n",
   "config.lua: limits.write_max: must be at least limits.write_high_water (262144), got 1000"},
  {"write_max under high water",
   "return { listeners = { { " LISTENER1 " } }, limits = { write_high_water = 8192,\n"
   "  write_low_water = 4096, write_max = 8191 } }\n",
   "config.lua: limits.write_max: must be at least limits.write_high_water (8192), got 8191"},
  {"high water over the default write_max",
   "return { listeners = { { " LISTENER1 " } }, limits = { write_high_water = 2 << 20 } }\n",
   "config.lua: limits.write_high_water: must be at most limits.write_max (1048576), got 2097152"},
  {"negative sessions per address",
   "return { listeners = { { " LISTENER1 " } }, limits = { sessions_per_ip = -1 } }\n",
   "config.lua: limits.sessions_per_ip: expected a non-negative integer, got -1"},
  {"new sessions per address as a string",
   "return { listeners = { { " LISTENER1 " } }, limits = { new_sessions_per_ip_per_s = \"10\" } }\n",
   "config.lua: limits.new_sessions_per_ip_per_s: expected a non-negative integer, got string \"10\""},
  {"new sessions per address past 32 bits",
   "return { listeners = { { " LISTENER1 " } }, limits = { new_sessions_per_ip_per_s = 1 << 32 } }\n",
   "config.lua: limits.new_sessions_per_ip_per_s: expected a non-negative integer up to 4294967295, got 4294967296"},
  {"misspelt sessions per address",
   "return { listeners = { { " LISTENER1 " } }, limits = { session_per_ip = 2 } }\n",
   "config.lua: limits.session_per_ip: unknown key (did you mean \"sessions_per_ip\"?)"},
  {"bad unfinished_frame",
   "return { listeners = { { " LISTENER1 ", unfinished_frame = \"keep\" } } }\n",
   "config.lua: listeners[1].unfinished_frame: expected \"drop\" or \"pass\", got \"keep\""},
  {"unfinished_frame as a boolean",
   "return { listeners = { { " LISTENER1 ", unfinished_frame = true } } }\n",
   "config.lua: listeners[1].unfinished_frame: expected \"drop\" or \"pass\", got boolean true"},
  {"negative session log rate",
   "return { listeners = { { " LISTENER1 " } }, log = { session_lines_per_s = -1 } }\n",
   "config.lua: log.session_lines_per_s: expected a non-negative integer, got -1"},
  {"session log rate as a float",
   "return { listeners = { { " LISTENER1 " } }, log = { session_lines_per_s = 0.5 } }\n",
   "config.lua: log.session_lines_per_s: expected a non-negative integer, got 0.5"},
  {"misspelt session log rate",
   "return { listeners = { { " LISTENER1 " } }, log = { sessions_lines_per_s = 10 } }\n",
   "config.lua: log.sessions_lines_per_s: unknown key (did you mean \"session_lines_per_s\"?)"},
  {"bad log level",
   "return { listeners = { { " LISTENER1 " } }, log = { level = \"verbose\" } }\n",
   "config.lua: log.level: expected \"debug\", \"info\", \"warn\" or \"error\", got \"verbose\""},
  {"unknown key reported before a bad value",
   "return { listeners = { { " LISTENER1 " } }, log = { level = 1, fromat = \"json\" } }\n",
   "config.lua: log.fromat: unknown key (did you mean \"format\"?)"},
  {"watch as a number",
   "return { listeners = { { " LISTENER1 " } }, watch = 1 }\n",
   "config.lua: watch: expected a boolean, got number 1"},
  {"control as a boolean",
   "return { listeners = { { " LISTENER1 " } }, control = false }\n",
   "config.lua: control: expected a socket path (\"\" for none), got boolean false"},
  {"control path too long",
   "return { listeners = { { " LISTENER1 " } }, control = \"/\" .. (\"x\"):rep(120) }\n",
   "config.lua: control: socket path \"/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
   "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\" is longer than 107 bytes"},
  {"admin as a string",
   "return { listeners = { { " LISTENER1 " } }, admin = \"127.0.0.1:9973\" }\n",
   "config.lua: admin: expected a table, got string \"127.0.0.1:9973\""},
  {"misspelt admin key",
   "return { listeners = { { " LISTENER1 " } }, admin = { tokn = \"x\" } }\n",
   "config.lua: admin.tokn: unknown key (did you mean \"token\"?)"},
  {"admin listen not numeric",
   "return { listeners = { { " LISTENER1 " } }, admin = { listen = \"example.com:9973\" } }\n",
   "config.lua: admin.listen: \"example.com\" is not a numeric address (expected an IPv4 "
   "address, [IPv6] or localhost)"},
  {"admin on a listener's port",
   "return { listeners = { { " LISTENER1 " } }, admin = { listen = \"0.0.0.0:1973\",\n"
   "  token = \"0123456789abcdef\" } }\n",
   "config.lua: admin.listen: \"0.0.0.0:1973\" conflicts with listeners[1].listen \"127.0.0.1:1973\""},
  {"admin on every interface without a token",
   "return { listeners = { { " LISTENER1 " } }, admin = { listen = \"0.0.0.0:9973\" } }\n",
   "config.lua: admin.listen: \"0.0.0.0:9973\" is not a loopback address: set admin.token "
   "(requests from other hosts must prove who they are)"},
  {"admin on IPv6 without a token",
   "return { listeners = { { " LISTENER1 " } }, admin = { listen = \"[::]:9973\" } }\n",
   "config.lua: admin.listen: \"[::]:9973\" is not a loopback address: set admin.token "
   "(requests from other hosts must prove who they are)"},
  {"admin token too short",
   "return { listeners = { { " LISTENER1 " } }, admin = { token = \"secret\" } }\n",
   "config.lua: admin.token: expected 16 to 256 characters, got 6"},
  {"admin token with a space",
   "return { listeners = { { " LISTENER1 " } }, admin = { token = \"0123456789 abcdef\" } }\n",
   "config.lua: admin.token: must be visible ASCII without spaces (it goes in an HTTP header)"},
  {"admin token with a newline",
   "return { listeners = { { " LISTENER1 " } }, admin = { token = \"0123456789abcdef\\r\\nX: y\" } }\n",
   "config.lua: admin.token: must be visible ASCII without spaces (it goes in an HTTP header)"},
  {"admin token as a number",
   "return { listeners = { { " LISTENER1 " } }, admin = { token = 1234 } }\n",
   "config.lua: admin.token: expected a string, got number 1234"},
  {"admin token_for_reads without a token",
   "return { listeners = { { " LISTENER1 " } }, admin = { token_for_reads = true } }\n",
   "config.lua: admin.token_for_reads: needs admin.token"},
  {"admin token_for_reads as a string",
   "return { listeners = { { " LISTENER1 " } }, admin = { token_for_reads = \"yes\" } }\n",
   "config.lua: admin.token_for_reads: expected a boolean, got string \"yes\""},
  {"long string value is cut in the message",
   "return { listeners = { { " LISTENER1 " } }, log = { format = (\"y\"):rep(50) } }\n",
   "config.lua: log.format: expected \"text\" or \"json\", got \"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy...\""},
};

static void test_bad(void **state) {
  const bad_case *bc = ((fixture *)*state)->param;
  expect_error(bc->text, bc->want);
}

/* A host name is kept as a name: the pool resolves it on the loop, so a
 * name that does not resolve (or a slow DNS) never fails or stalls a load. */
static void test_upstream_name_kept(void **state) {
  (void)state;
  gw_config cfg;
  load_ok("return { listeners = { { name = \"game\", listen = \"127.0.0.1:1973\",\n"
          "  upstream = \"nothing.invalid:1974\" } } }\n", &cfg);
  const gw_listener_config *l = &cfg.listeners[0];
  assert_string_equal(l->upstream, "nothing.invalid:1974");
  assert_int_equal(l->upstream_addr.ss_family, 0);
  assert_int_equal(l->pool.nservers, 1);
  const gw_upstream_server_config *sv = &l->pool.servers[0];
  assert_string_equal(sv->name, "nothing.invalid:1974");
  assert_string_equal(sv->host, "nothing.invalid");
  assert_int_equal(sv->port, 1974);
  assert_int_equal(sv->sockaddr.ss_family, 0);
  assert_int_equal(sv->weight, 1);
  assert_false(l->pool.health);
  assert_int_equal(l->pool.balance, GW_BALANCE_ROUND_ROBIN);
  assert_int_equal(l->pool.resolve_ms, 30000);
  gw_config_free(&cfg);
}

/* The list form and the record form with every key. */
static void test_upstream_pool(void **state) {
  (void)state;
  gw_config cfg;
  load_ok("return { listeners = {\n"
          "  { name = \"a\", listen = \"127.0.0.1:1973\",\n"
          "    upstream = { \"10.0.0.5:1973\", \"localhost:1974\", \"[::1]:1975\" } },\n"
          "  { name = \"b\", listen = \"127.0.0.1:1976\",\n"
          "    upstream = { servers = {\n"
          "        { name = \"eu-1\", addr = \"eu1.example:1973\", weight = 2 },\n"
          "        \"10.0.0.6:1973\",\n"
          "        { addr = \"10.0.0.7:1973\", backup = true } },\n"
          "      balance = \"hash\", resolve_ms = 5000,\n"
          "      health = { interval_ms = 500, timeout_ms = 200, rise = 1, fall = 2 } } },\n"
          "  { name = \"c\", listen = \"127.0.0.1:1977\",\n"
          "    upstream = { servers = { \"10.0.0.8:1\" }, balance = \"least_sessions\", health = true } },\n"
          "} }\n", &cfg);
  const gw_upstream_config *u = &cfg.listeners[0].pool;
  assert_int_equal(u->nservers, 3);
  assert_string_equal(u->servers[0].name, "10.0.0.5:1973");
  assert_string_equal(u->servers[1].name, "localhost:1974");
  assert_int_equal(u->servers[1].sockaddr.ss_family, 0);
  assert_string_equal(u->servers[2].name, "[::1]:1975");
  assert_addr(&u->servers[2].sockaddr, "[::1]:1975");
  assert_string_equal(cfg.listeners[0].upstream, "10.0.0.5:1973");
  assert_addr(&cfg.listeners[0].upstream_addr, "10.0.0.5:1973");
  assert_false(u->health);

  u = &cfg.listeners[1].pool;
  assert_int_equal(u->nservers, 3);
  assert_string_equal(u->servers[0].name, "eu-1");
  assert_string_equal(u->servers[0].host, "eu1.example");
  assert_int_equal(u->servers[0].weight, 2);
  assert_int_equal(u->servers[0].sockaddr.ss_family, 0);
  assert_false(u->servers[1].backup);
  assert_true(u->servers[2].backup);
  assert_string_equal(u->servers[2].name, "10.0.0.7:1973");
  assert_int_equal(u->balance, GW_BALANCE_HASH);
  assert_int_equal(u->resolve_ms, 5000);
  assert_true(u->health);
  assert_int_equal(u->health_interval_ms, 500);
  assert_int_equal(u->health_timeout_ms, 200);
  assert_int_equal(u->health_rise, 1);
  assert_int_equal(u->health_fall, 2);
  assert_string_equal(cfg.listeners[1].upstream, "eu-1");

  u = &cfg.listeners[2].pool;
  assert_int_equal(u->balance, GW_BALANCE_LEAST_SESSIONS);
  assert_true(u->health);
  assert_int_equal(u->health_interval_ms, 2000);
  assert_int_equal(u->health_timeout_ms, 1000);
  assert_int_equal(u->health_rise, 2);
  assert_int_equal(u->health_fall, 3);
  gw_config_free(&cfg);
}

static void test_missing_file(void **state) {
  (void)state;
  gw_config cfg;
  char err[256];
  assert_int_equal(gw_config_load("nope.lua", &cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, "nope.lua: cannot open: No such file or directory");
  assert_true(is_zero(&cfg));
  assert_int_equal(gw_config_load(".", &cfg, err, sizeof err), -EINVAL);
  assert_string_equal(err, ".: cannot open: Is a directory");
}

/* Lua shortens long chunk names to "...tail"; messages still give the path
 * exactly as it was passed. */
static void test_long_path(void **state) {
  (void)state;
  const char *dir = "a-directory-with-a-rather-long-name-to-push-the-path-past-sixty";
  assert_int_equal(mkdir(dir, 0755), 0);
  it_write(dir, "config.lua", "\nerror(\"boom\")\n");
  char path[256];
  snprintf(path, sizeof path, "%s/config.lua", dir);
  assert_true(strlen(path) > LUA_IDSIZE);
  gw_config cfg;
  char err[512], want[512];
  assert_int_equal(gw_config_load(path, &cfg, err, sizeof err), -EINVAL);
  snprintf(want, sizeof want, "%s:2: boom", path);
  assert_string_equal(err, want);
}

/* A short error buffer gets a cut message, never an overflow. */
static void test_short_err_buffer(void **state) {
  (void)state;
  it_write(".", "config.lua", "return 42\n");
  gw_config cfg;
  char err[16];
  memset(err, 'z', sizeof err);
  assert_int_equal(gw_config_load("config.lua", &cfg, err, 12), -EINVAL);
  assert_string_equal(err, "config.lua:");
  assert_int_equal(err[12], 'z');
}

/* ---- addresses ---- */

static void test_parse_addr(void **state) {
  (void)state;
  static const struct { const char *in; bool resolve; const char *out; } good[] = {
    {"127.0.0.1:1974", false, "127.0.0.1:1974"},
    {"[::1]:1973", false, "[::1]:1973"},
    {"[2001:db8::7]:65535", false, "[2001:db8::7]:65535"},
    {"0.0.0.0:1", false, "0.0.0.0:1"},
    {"localhost:80", false, "127.0.0.1:80"},
    {"localhost:80", true, "127.0.0.1:80"},
  };
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    struct sockaddr_storage a;
    char err[256];
    if (gw_parse_addr(good[i].in, &a, good[i].resolve, err, sizeof err) != 0)
      fail_msg("%s: %s", good[i].in, err);
    assert_addr(&a, good[i].out);
  }
  static const struct { const char *in; const char *err; } bad[] = {
    {"1974", "expected \"host:port\", got \"1974\""},
    {":1974", "missing host in \":1974\""},
    {"127.0.0.1:", "port must be 1 to 65535, got \"\""},
    {"127.0.0.1:+80", "port must be 1 to 65535, got \"+80\""},
    {"127.0.0.1:080x", "port must be 1 to 65535, got \"080x\""},
    {"127.0.0.1:000001", "port must be 1 to 65535, got \"000001\""},
    {"[::1]1973", "expected \"[IPv6]:port\", got \"[::1]1973\""},
    {"[::1", "expected \"[IPv6]:port\", got \"[::1\""},
    {"[127.0.0.1]:80", "\"127.0.0.1\" is not an IPv6 address"},
    {"127.1:80", "\"127.1\" is not a numeric address (expected an IPv4 address, [IPv6] or localhost)"},
    {"fe80::1:80", "an IPv6 address needs brackets, as in \"[::1]:1973\", got \"fe80::1:80\""},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    struct sockaddr_storage a;
    char err[256];
    assert_int_equal(gw_parse_addr(bad[i].in, &a, false, err, sizeof err), -EINVAL);
    assert_string_equal(err, bad[i].err);
  }
  char longest[GW_ADDR_MAX + 8];
  memset(longest, '1', sizeof longest - 1);
  longest[sizeof longest - 1] = '\0';
  struct sockaddr_storage a;
  char err[256];
  assert_int_equal(gw_parse_addr(longest, &a, true, err, sizeof err), -EINVAL);
  assert_string_equal(err, "expected \"host:port\", got a string of 307 bytes (at most 299)");
}

static void test_format_addr(void **state) {
  (void)state;
  struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(1973)};
  in6.sin6_addr = in6addr_loopback;
  char s[GW_ADDR_MAX];
  gw_format_addr((struct sockaddr *)&in6, s, sizeof s);
  assert_string_equal(s, "[::1]:1973");
  struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(1974)};
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  gw_format_addr((struct sockaddr *)&in, s, sizeof s);
  assert_string_equal(s, "127.0.0.1:1974");
  gw_format_addr((struct sockaddr *)&in, s, 8); /* cut, still terminated */
  assert_string_equal(s, "127.0.0");
  struct sockaddr_storage none = {.ss_family = AF_UNIX};
  gw_format_addr((struct sockaddr *)&none, s, sizeof s);
  assert_string_equal(s, "(address family 1)");
}

int main(void) {
  static const struct CMUnitTest fixed[] = {
    cmocka_unit_test_setup_teardown(test_full_config, setup, teardown),
    cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
    cmocka_unit_test_setup_teardown(test_paths_from_elsewhere, setup, teardown),
    cmocka_unit_test_setup_teardown(test_admin, setup, teardown),
    cmocka_unit_test_setup_teardown(test_protocol_and_redis, setup, teardown),
    cmocka_unit_test_setup_teardown(test_sandbox_allows, setup, teardown),
    cmocka_unit_test_setup_teardown(test_upstream_name_kept, setup, teardown),
    cmocka_unit_test_setup_teardown(test_upstream_pool, setup, teardown),
    cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
    cmocka_unit_test_setup_teardown(test_long_path, setup, teardown),
    cmocka_unit_test_setup_teardown(test_short_err_buffer, setup, teardown),
    cmocka_unit_test(test_parse_addr),
    cmocka_unit_test(test_format_addr),
  };
  enum { NFIXED = sizeof fixed / sizeof fixed[0],
         NBAD = sizeof bad_cases / sizeof bad_cases[0] };
  /* One named test per bad config, each in its own temp dir. */
  struct CMUnitTest tests[NFIXED + NBAD];
  memcpy(tests, fixed, sizeof fixed);
  for (size_t i = 0; i < NBAD; i++) {
    tests[NFIXED + i] = (struct CMUnitTest){
      .name = bad_cases[i].name, .test_func = test_bad,
      .setup_func = setup_bad, .teardown_func = teardown,
      .initial_state = (void *)&bad_cases[i],
    };
  }
  return _cmocka_run_group_tests("config", tests, NFIXED + NBAD, NULL, NULL);
}
