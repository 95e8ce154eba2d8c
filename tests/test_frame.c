/* test_frame.c: unit tests for src/frame.c, the framing engine: every preset
 * against hand-made vectors (the Tales of Pirates ones from
 * shared/protocols/tales-of-pirates.md among them), every split point of a
 * stream, limits per side, varint edges, the encoders and validation. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "frame.h"

static gw_framing preset(const char *name)
{
  gw_framing f;
  assert_int_equal(gw_framing_preset(name, &f), 0);
  return f;
}

/* gw_frame_next, checking the return agrees with what info says. */
static int next(const gw_framing *f, gw_side side, const uint8_t *p, size_t n,
                gw_frame_info *info)
{
  memset(info, 0xa5, sizeof *info); /* stale values must not leak through */
  int rc = gw_frame_next(f, side, p, n, info);
  if (rc == 1) {
    assert_true(info->len > 0 && info->len <= n);
    assert_int_equal(info->error, GW_FRAME_OK);
  } else if (rc == -EAGAIN) {
    assert_int_equal(info->error, GW_FRAME_OK);
    assert_true(info->need == 0 || info->need > n);
  } else {
    assert_int_equal(rc, -EPROTO);
    assert_int_not_equal(info->error, GW_FRAME_OK);
  }
  return rc;
}

static void expect_frame(const gw_framing *f, gw_side side, const uint8_t *p,
                         size_t n, size_t len, int opcode)
{
  gw_frame_info info;
  assert_int_equal(next(f, side, p, n, &info), 1);
  assert_int_equal(info.len, len);
  if (opcode < 0) {
    assert_false(info.has_opcode);
  } else {
    assert_true(info.has_opcode);
    assert_int_equal(info.opcode, (uint32_t)opcode);
  }
}

static void expect_again(const gw_framing *f, gw_side side, const uint8_t *p,
                         size_t n, size_t need)
{
  gw_frame_info info;
  assert_int_equal(next(f, side, p, n, &info), -EAGAIN);
  assert_int_equal(info.need, need);
}

static void expect_error(const gw_framing *f, gw_side side, const uint8_t *p,
                         size_t n, gw_frame_error e)
{
  gw_frame_info info;
  assert_int_equal(next(f, side, p, n, &info), -EPROTO);
  assert_int_equal(info.error, e);
}

/* ---- Tales of Pirates vectors ------------------------------------------ */

/* The doc's 40-byte frame of command 1514. The doc elides the last 11
 * bytes; these are a u32 42, the string "hi" and a u16 1. */
static const uint8_t top_1514[40] = {
  0x00, 0x28, 0x80, 0x00, 0x00, 0x00, 0x05, 0xea,
  0x00, 0x07, 'k', 'i', 'l', 'l', 't', '1', 0x00,
  0x00, 0x06, 'L', 'o', 'c', 'a', 'l', 0x00,
  0x00, 0x02, 'a', 0x00,
  0x00, 0x00, 0x00, 0x2a, 0x00, 0x03, 'h', 'i', 0x00, 0x00, 0x01,
};
static const uint8_t top_keepalive[2] = {0x00, 0x02};
static const uint8_t top_say_hi[13] = {
  0x00, 0x0d, 0x80, 0x00, 0x00, 0x00, 0x00, 0x01,
  0x00, 0x03, 'h', 'i', 0x00,
};
static const uint8_t top_say_hello[16] = {
  0x00, 0x10, 0x80, 0x00, 0x00, 0x00, 0x00, 0x01,
  0x00, 0x06, 'h', 'e', 'l', 'l', 'o', 0x00,
};

static void test_presets(void **state)
{
  (void)state;
  size_t count = 0;
  for (const char *const *name = gw_framing_presets; *name; name++, count++) {
    gw_framing f;
    char msg[200] = "untouched";
    assert_int_equal(gw_framing_preset(*name, &f), 0);
    assert_string_equal(f.name, *name);
    assert_int_equal(gw_framing_validate(&f, msg, sizeof msg), 0);
    assert_string_equal(msg, "");
  }
  assert_int_equal(count, 8);
  gw_framing f;
  assert_int_equal(gw_framing_preset("tOP", &f), -ENOENT);
  assert_int_equal(gw_framing_preset("", &f), -ENOENT);
}

static void test_top_preset_fields(void **state)
{
  (void)state;
  gw_framing f = preset("top");
  static const uint8_t tmpl[8] = {0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00};
  assert_false(f.raw);
  assert_int_equal(f.length_offset, 0);
  assert_int_equal(f.length_size, 2);
  assert_true(f.big_endian);
  assert_int_equal(f.length_adjust, -2);
  assert_int_equal(f.opcode_offset, 6);
  assert_int_equal(f.opcode_size, 2);
  assert_true(f.keepalive);
  assert_int_equal(f.min_frame[GW_CLIENT], 8);
  assert_int_equal(f.min_frame[GW_SERVER], 8);
  assert_int_equal(f.max_frame[GW_CLIENT], 16384);
  assert_int_equal(f.max_frame[GW_SERVER], 65536);
  assert_int_equal(f.str_length_size, 2);
  assert_true(f.str_nul);
  assert_int_equal(f.header_len, 8);
  assert_memory_equal(f.header_template, tmpl, 8);
  assert_int_equal(gw_frame_body_offset(&f), 8);
  assert_int_equal(gw_frame_length_field_size(&f, 40), 2);
}

static void test_top_vectors(void **state)
{
  (void)state;
  gw_framing f = preset("top");
  for (int s = 0; s < GW_SIDES; s++) {
    expect_frame(&f, s, top_1514, sizeof top_1514, 40, 1514);
    expect_frame(&f, s, top_keepalive, sizeof top_keepalive, 2, -1);
    expect_frame(&f, s, top_say_hi, sizeof top_say_hi, 13, 1);
    expect_frame(&f, s, top_say_hello, sizeof top_say_hello, 16, 1);
    /* Back to back, and a frame is found whatever follows it. */
    uint8_t buf[sizeof top_1514 + sizeof top_keepalive + sizeof top_say_hi + 1];
    size_t n = 0;
    memcpy(buf + n, top_1514, sizeof top_1514), n += sizeof top_1514;
    memcpy(buf + n, top_keepalive, 2), n += 2;
    memcpy(buf + n, top_say_hi, sizeof top_say_hi), n += sizeof top_say_hi;
    buf[n++] = 0x00;
    expect_frame(&f, s, buf, n, 40, 1514);
    expect_frame(&f, s, buf + 40, n - 40, 2, -1);
    expect_frame(&f, s, buf + 42, n - 42, 13, 1);
    expect_again(&f, s, buf + 55, n - 55, 0);
    /* Once the length field is in, need says how much the frame needs. */
    expect_again(&f, s, top_1514, 2, 40);
    expect_again(&f, s, top_1514, 39, 40);
    expect_again(&f, s, top_say_hi, 1, 0);
    expect_again(&f, s, top_say_hi, 0, 0);
  }
}

static void test_top_rewrite(void **state)
{
  (void)state;
  gw_framing f = preset("top");
  /* A handler turned "hi" into "hello": everything after the length field
   * is the session, the command and the new string. */
  uint8_t rest[14];
  memcpy(rest, top_say_hi + 2, 6);
  memcpy(rest + 6, "\x00\x06hello", 8);
  uint8_t out[32];
  memset(out, 0xee, sizeof out);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, sizeof out, NULL, rest,
                                   sizeof rest), 16);
  assert_memory_equal(out, top_say_hello, 16);
  assert_int_equal(out[16], 0xee); /* nothing written past the frame */
  expect_frame(&f, GW_CLIENT, out, 16, 16, 1);

  /* The same rewrite done in place on the frame's own buffer. */
  uint8_t inplace[32];
  memcpy(inplace, top_say_hi, sizeof top_say_hi);
  memcpy(inplace + 8, "\x00\x06hello", 8);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, inplace, sizeof inplace,
                                   NULL, inplace + 2, 14), 16);
  assert_memory_equal(inplace, top_say_hello, 16);
}

static void test_top_build(void **state)
{
  (void)state;
  gw_framing f = preset("top");
  uint8_t out[64];
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, sizeof out, 1,
                                  top_say_hi + 8, 5), 13);
  assert_memory_equal(out, top_say_hi, 13);
  assert_int_equal(gw_frame_build(&f, GW_SERVER, out, sizeof out, 1514,
                                  top_1514 + 8, 32), 40);
  assert_memory_equal(out, top_1514, 40);
  /* An empty body gives the bare 8-byte header. */
  static const uint8_t bare[8] = {0x00, 0x08, 0x80, 0x00, 0x00, 0x00, 0x01, 0xf7};
  assert_int_equal(gw_frame_build(&f, GW_SERVER, out, sizeof out, 503, NULL, 0), 8);
  assert_memory_equal(out, bare, 8);
  /* A keep-alive is encoded, not built: nothing follows its length. */
  assert_int_equal(gw_frame_encode(&f, GW_SERVER, out, sizeof out, NULL, NULL, 0), 2);
  assert_memory_equal(out, top_keepalive, 2);
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, sizeof out, 0x10000, NULL, 0),
                   -ERANGE);
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, 12, 1, top_say_hi + 8, 5),
                   -ENOBUFS);
}

/* Every value a top length field can hold below the minimum. */
static void test_top_short_lengths(void **state)
{
  (void)state;
  gw_framing f = preset("top");
  uint8_t buf[16] = {0};
  for (int s = 0; s < GW_SIDES; s++) {
    for (unsigned v = 0; v <= 9; v++) {
      buf[1] = (uint8_t)v;
      gw_frame_info info;
      int rc = next(&f, s, buf, 2, &info);
      if (v < 2) {
        assert_int_equal(rc, -EPROTO);
        assert_int_equal(info.error, GW_FRAME_SHORT_HEADER);
      } else if (v == 2) {
        assert_int_equal(rc, 1);
        assert_int_equal(info.len, 2);
        assert_false(info.has_opcode);
      } else if (v < 8) {
        assert_int_equal(rc, -EPROTO);
        assert_int_equal(info.error, GW_FRAME_TOO_SMALL);
      } else {
        assert_int_equal(rc, -EAGAIN);
        assert_int_equal(info.need, v);
        expect_frame(&f, s, buf, sizeof buf, v, 0);
      }
    }
  }
}

static void test_top_max_per_side(void **state)
{
  (void)state;
  gw_framing f = preset("top");
  const uint8_t at_client_max[2] = {0x40, 0x00};  /* 16384 */
  const uint8_t over_client_max[2] = {0x40, 0x01}; /* 16385 */
  const uint8_t field_max[2] = {0xff, 0xff};       /* 65535 */
  /* Fail fast: the header alone decides. */
  expect_again(&f, GW_CLIENT, at_client_max, 2, 16384);
  expect_error(&f, GW_CLIENT, over_client_max, 2, GW_FRAME_TOO_LARGE);
  expect_error(&f, GW_CLIENT, field_max, 2, GW_FRAME_TOO_LARGE);
  expect_again(&f, GW_SERVER, over_client_max, 2, 16385);
  expect_again(&f, GW_SERVER, field_max, 2, 65535);

  uint8_t *big = calloc(1, 65536);
  assert_non_null(big);
  /* The encoder refuses what the parser would. */
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, big, 65536, NULL, big + 2, 16382),
                   16384);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, big, 65536, NULL, big + 2, 16383),
                   -EMSGSIZE);
  assert_int_equal(gw_frame_encode(&f, GW_SERVER, big, 65536, NULL, big + 2, 16383),
                   16385);
  expect_frame(&f, GW_SERVER, big, 65536, 16385, 0);
  expect_error(&f, GW_CLIENT, big, 65536, GW_FRAME_TOO_LARGE);
  /* 65536 would be the server's limit but the u16 field stops at 65535. */
  assert_int_equal(gw_frame_encode(&f, GW_SERVER, big, 65536, NULL, big + 2, 65533),
                   65535);
  assert_int_equal(gw_frame_encode(&f, GW_SERVER, big, 65536, NULL, big + 2, 65534),
                   -ERANGE);
  /* Below min_frame (but not a keep-alive) is refused too. */
  assert_int_equal(gw_frame_encode(&f, GW_SERVER, big, 65536, NULL, big + 2, 5),
                   -EMSGSIZE);
  free(big);
}

/* ---- the generic presets ------------------------------------------------ */

static void test_u16be_u32(void **state)
{
  (void)state;
  gw_framing u16 = preset("u16be"), be = preset("u32be"), le = preset("u32le");
  const uint8_t v16[] = {0x00, 0x03, 'a', 'b', 'c', 0x00, 0x00};
  const uint8_t vbe[] = {0x00, 0x00, 0x00, 0x03, 'a', 'b', 'c'};
  const uint8_t vle[] = {0x03, 0x00, 0x00, 0x00, 'a', 'b', 'c'};
  for (int s = 0; s < GW_SIDES; s++) {
    expect_frame(&u16, s, v16, sizeof v16, 5, -1);
    expect_frame(&u16, s, v16 + 5, 2, 2, -1); /* an empty body is a frame */
    expect_again(&u16, s, v16, 4, 5);
    expect_frame(&be, s, vbe, sizeof vbe, 7, -1);
    expect_again(&be, s, vbe, 3, 0);
    expect_frame(&le, s, vle, sizeof vle, 7, -1);
    expect_again(&le, s, vle, 6, 7);
    /* The other byte order reads 0x03000000: above 16 MiB, at once. */
    expect_error(&be, s, vle, 4, GW_FRAME_TOO_LARGE);
    expect_error(&le, s, vbe, 4, GW_FRAME_TOO_LARGE);
    /* The limits: u16be takes any u16, u32 16 MiB of body at most. */
    expect_again(&u16, s, (const uint8_t *)"\xff\xff", 2, 65537);
    expect_again(&be, s, (const uint8_t *)"\x00\xff\xff\xfc", 4, 16 << 20);
    expect_error(&be, s, (const uint8_t *)"\x00\xff\xff\xfd", 4, GW_FRAME_TOO_LARGE);
    expect_error(&le, s, (const uint8_t *)"\xff\xff\xff\xff", 4, GW_FRAME_TOO_LARGE);
    assert_int_equal(u16.max_frame[s], 65537);
    assert_int_equal(be.max_frame[s], 16 << 20);
    assert_int_equal(le.max_frame[s], 16 << 20);
  }
  assert_int_equal(gw_frame_body_offset(&u16), 2);
  assert_int_equal(gw_frame_body_offset(&le), 4);
  uint8_t out[8];
  assert_int_equal(gw_frame_build(&le, GW_CLIENT, out, sizeof out, 0,
                                  (const uint8_t *)"abc", 3), 7);
  assert_memory_equal(out, vle, 7);
  assert_int_equal(gw_frame_build(&le, GW_CLIENT, out, sizeof out, 1, NULL, 0),
                   -ERANGE); /* no opcode field to put it in */
  assert_int_equal(gw_frame_encode(&u16, GW_CLIENT, out, sizeof out, NULL, NULL,
                                   65536), -ERANGE);
}

static void test_mysql(void **state)
{
  (void)state;
  gw_framing f = preset("mysql");
  /* COM_QUERY "SELECT 1", sequence 0. */
  const uint8_t query[] = {0x09, 0x00, 0x00, 0x00, 0x03,
                           'S', 'E', 'L', 'E', 'C', 'T', ' ', '1'};
  const uint8_t empty[] = {0x00, 0x00, 0x00, 0x05};
  for (int s = 0; s < GW_SIDES; s++) {
    expect_frame(&f, s, query, sizeof query, 13, 0x03);
    expect_again(&f, s, query, 3, 13);
    expect_again(&f, s, query, 2, 0);
    expect_frame(&f, s, empty, sizeof empty, 4, -1);
    /* The largest payload the u24 holds is within the limit. */
    expect_again(&f, s, (const uint8_t *)"\xff\xff\xff\x01", 4, 0xffffff + 4);
  }
  assert_int_equal(gw_frame_body_offset(&f), 5);
  uint8_t out[32];
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, sizeof out, 0x03,
                                  query + 5, 8), 13);
  assert_memory_equal(out, query, 13);
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, sizeof out, 0x100, NULL, 0),
                   -ERANGE);
  /* The sequence byte travels in the rest, like any other byte. */
  assert_int_equal(gw_frame_encode(&f, GW_SERVER, out, sizeof out, NULL,
                                   empty + 3, 1), 4);
  assert_memory_equal(out, empty, 4);
  /* Nothing after the length field: not even the sequence byte. */
  assert_int_equal(gw_frame_encode(&f, GW_SERVER, out, sizeof out, NULL, NULL, 0),
                   -ERANGE);
}

/* MQTT: the packet type byte before a varint remaining length. Vectors
 * from the MQTT 3.1.1 specification's examples. */
static void test_mqtt(void **state)
{
  (void)state;
  gw_framing f = preset("mqtt");
  char msg[160];
  assert_int_equal(gw_framing_validate(&f, msg, sizeof msg), 0);
  /* CONNECT, protocol "MQTT" level 4, clean session, keep-alive 60,
   * client id "a": remaining length 13 */
  const uint8_t connect[] = {0x10, 0x0d, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02,
                             0x00, 0x3c, 0x00, 0x01, 'a'};
  for (int s = 0; s < GW_SIDES; s++) {
    expect_again(&f, s, connect, 1, 0);
    expect_again(&f, s, connect, 2, sizeof connect);
    expect_frame(&f, s, connect, sizeof connect, sizeof connect, 0x10);
  }
  /* PINGREQ: type 12, no remaining bytes */
  const uint8_t ping[] = {0xc0, 0x00};
  expect_frame(&f, GW_CLIENT, ping, sizeof ping, 2, 0xc0);
  /* PUBLISH QoS 1 with 200 bytes after the fixed header: a 2-byte length */
  uint8_t pub[203] = {0x32, 0xc8, 0x01};
  expect_frame(&f, GW_CLIENT, pub, sizeof pub, sizeof pub, 0x32);
  /* gw.packet: type byte, then the length computed */
  uint8_t out[256];
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, sizeof out, 0x32, pub + 3, 200), 203);
  assert_memory_equal(out, pub, 3);
  assert_int_equal(gw_frame_body_offset(&f) + gw_frame_length_field_size(&f, 203), 3);
}

static void test_varint(void **state)
{
  (void)state;
  gw_framing f = preset("varint");
  struct {
    uint32_t value;
    uint8_t field[5];
    unsigned size;
  } edges[] = {
    {0, {0x00}, 1},
    {1, {0x01}, 1},
    {127, {0x7f}, 1},
    {128, {0x80, 0x01}, 2},
    {300, {0xac, 0x02}, 2},
    {16383, {0xff, 0x7f}, 2},
    {16384, {0x80, 0x80, 0x01}, 3},
    {(1u << 21) - 1, {0xff, 0xff, 0x7f}, 3},
  };
  size_t cap = 3 + (1u << 21);
  uint8_t *buf = calloc(1, cap);
  uint8_t *out = calloc(1, cap);
  assert_non_null(buf);
  assert_non_null(out);
  for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
    size_t len = edges[i].size + edges[i].value;
    memcpy(buf, edges[i].field, edges[i].size);
    for (int s = 0; s < GW_SIDES; s++) {
      for (unsigned k = 0; k < edges[i].size; k++)
        expect_again(&f, s, buf, k, 0);
      if (edges[i].value > 0)
        expect_again(&f, s, buf, len - 1, len);
      expect_frame(&f, s, buf, len, len, -1);
    }
    /* The encoder writes the same field, and the field's size is known from
     * the frame's length alone. */
    assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, cap, NULL,
                                     buf + edges[i].size, edges[i].value),
                     (long)len);
    assert_memory_equal(out, buf, len);
    assert_int_equal(gw_frame_length_field_size(&f, len), edges[i].size);
  }
  for (int s = 0; s < GW_SIDES; s++) {
    /* 2^21 needs a 4th byte and is past Minecraft's limit: refused as soon
     * as the field is complete. */
    expect_error(&f, s, (const uint8_t *)"\x80\x80\x80\x01", 4, GW_FRAME_TOO_LARGE);
    expect_again(&f, s, (const uint8_t *)"\x80\x80\x80", 3, 0);
    /* Six bytes: refused once the 5th still says "more". */
    const uint8_t six[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
    expect_error(&f, s, six, sizeof six, GW_FRAME_VARINT_TOO_LONG);
    expect_error(&f, s, six, 5, GW_FRAME_VARINT_TOO_LONG);
    expect_again(&f, s, six, 4, 0);
    /* Overlong encodings are read as what they say. */
    expect_frame(&f, s, (const uint8_t *)"\x80\x00", 2, 2, -1);
    expect_frame(&f, s, (const uint8_t *)"\x81\x80\x00x", 4, 4, -1);
  }
  /* 129 bytes has no shortest encoding (128 takes 2 bytes, 127 + 2 = 129):
   * the field size returned is the one that can describe it. */
  assert_int_equal(gw_frame_length_field_size(&f, 129), 2);
  assert_int_equal(gw_frame_length_field_size(&f, 130), 2);
  assert_int_equal(gw_frame_length_field_size(&f, 1), 1);
  assert_int_equal(gw_frame_length_field_size(&f, 0), 1);
  assert_int_equal(gw_frame_body_offset(&f), 0);

  /* The 5-byte limit, with max_frame opened up to the whole u32 range. */
  f.max_frame[GW_CLIENT] = f.max_frame[GW_SERVER] = UINT32_MAX;
  expect_again(&f, GW_CLIENT, (const uint8_t *)"\x80\x80\x80\x80\x01", 5,
               5 + (1u << 28));
  expect_again(&f, GW_CLIENT, (const uint8_t *)"\xfa\xff\xff\xff\x0f", 5,
               UINT32_MAX);
  expect_error(&f, GW_CLIENT, (const uint8_t *)"\xfb\xff\xff\xff\x0f", 5,
               GW_FRAME_TOO_LARGE);
  /* A 5th byte with bits past 32 encodes 2^32 or more: too large. */
  expect_error(&f, GW_CLIENT, (const uint8_t *)"\x80\x80\x80\x80\x10", 5,
               GW_FRAME_TOO_LARGE);
  expect_error(&f, GW_CLIENT, (const uint8_t *)"\xff\xff\xff\xff\x7f", 5,
               GW_FRAME_TOO_LARGE);
  /* ... even when a negative adjustment would bring the length back down. */
  f.length_adjust = INT32_MIN;
  expect_error(&f, GW_CLIENT, (const uint8_t *)"\x80\x80\x80\x80\x10", 5,
               GW_FRAME_TOO_LARGE);
  expect_again(&f, GW_CLIENT, (const uint8_t *)"\xff\xff\xff\xff\x0f", 5,
               5 + (size_t)UINT32_MAX - 0x80000000u);
  f.length_adjust = 0;
  assert_int_equal(gw_frame_length_field_size(&f, 5 + (1u << 28)), 5);
  /* A keep-alive is exempt from min_frame, not from max_frame. */
  gw_framing k = preset("varint");
  k.keepalive = true;
  k.min_frame[GW_SERVER] = k.max_frame[GW_SERVER] = 2;
  expect_frame(&k, GW_SERVER, (const uint8_t *)"\x00", 1, 1, -1);
  expect_frame(&k, GW_SERVER, (const uint8_t *)"\x80\x00", 2, 2, -1);
  expect_error(&k, GW_SERVER, (const uint8_t *)"\x80\x80\x00", 3, GW_FRAME_TOO_LARGE);
  expect_error(&k, GW_SERVER, (const uint8_t *)"\x02", 1, GW_FRAME_TOO_LARGE);
  /* The encoder's field is 32 bits; no memory is touched for -ERANGE. */
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, NULL, 0, NULL, NULL,
                                   (size_t)UINT32_MAX + 1), -ERANGE);
  free(buf);
  free(out);
}

static void test_raw(void **state)
{
  (void)state;
  gw_framing f = preset("raw");
  const uint8_t chunk[] = {0x00, 0x00, 0xff, 0x01, 0x02};
  for (int s = 0; s < GW_SIDES; s++) {
    expect_frame(&f, s, chunk, sizeof chunk, sizeof chunk, -1);
    expect_frame(&f, s, chunk, 1, 1, -1);
    expect_again(&f, s, chunk, 0, 0);
  }
  assert_int_equal(gw_frame_body_offset(&f), 0);
  assert_int_equal(gw_frame_length_field_size(&f, 10), 0);
  uint8_t out[8];
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, sizeof out, NULL, chunk,
                                   sizeof chunk), (long)sizeof chunk);
  assert_memory_equal(out, chunk, sizeof chunk);
  memset(out, 0, sizeof out);
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, sizeof out, 0, chunk, 3), 3);
  assert_memory_equal(out, chunk, 3);
  assert_int_equal(gw_frame_build(&f, GW_CLIENT, out, 2, 0, chunk, 3), -ENOBUFS);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, sizeof out, NULL, NULL,
                                   (16u << 20) + 1), -EMSGSIZE);
}

/* ---- custom framings ---------------------------------------------------- */

/* A u16 BE field counting the whole frame, like top, without its extras. */
static gw_framing custom(void)
{
  gw_framing f = {
    .name = "custom",
    .length_size = 2,
    .big_endian = true,
    .length_adjust = -2,
    .opcode_offset = 2,
    .opcode_size = 1,
    .min_frame = {0, 0},
    .max_frame = {1000, 1000},
    .header_len = 3,
  };
  return f;
}

static void test_limits_per_side(void **state)
{
  (void)state;
  gw_framing f = custom();
  f.min_frame[GW_CLIENT] = 10;
  f.min_frame[GW_SERVER] = 20;
  f.max_frame[GW_CLIENT] = 100;
  f.max_frame[GW_SERVER] = 200;
  char msg[200];
  assert_int_equal(gw_framing_validate(&f, msg, sizeof msg), 0);
  uint8_t buf[2] = {0, 15};
  expect_again(&f, GW_CLIENT, buf, 2, 15);
  expect_error(&f, GW_SERVER, buf, 2, GW_FRAME_TOO_SMALL);
  buf[1] = 150;
  expect_error(&f, GW_CLIENT, buf, 2, GW_FRAME_TOO_LARGE);
  expect_again(&f, GW_SERVER, buf, 2, 150);
  buf[1] = 10;
  expect_again(&f, GW_CLIENT, buf, 2, 10);
  buf[1] = 9;
  expect_error(&f, GW_CLIENT, buf, 2, GW_FRAME_TOO_SMALL);
  buf[1] = 200;
  expect_again(&f, GW_SERVER, buf, 2, 200);
  buf[1] = 201;
  expect_error(&f, GW_SERVER, buf, 2, GW_FRAME_TOO_LARGE);
  /* Without keepalive, a bare length field is just too small. */
  buf[1] = 2;
  expect_error(&f, GW_CLIENT, buf, 2, GW_FRAME_TOO_SMALL);
  f.keepalive = true;
  expect_frame(&f, GW_CLIENT, buf, 2, 2, -1);
  /* And with min_frame 0 it is a frame without an opcode. */
  f = custom();
  expect_frame(&f, GW_SERVER, buf, 2, 2, -1);
  expect_frame(&f, GW_SERVER, (const uint8_t *)"\x00\x03\x07", 3, 3, 7);
  expect_error(&f, GW_SERVER, (const uint8_t *)"\x00\x01", 2, GW_FRAME_SHORT_HEADER);
}

/* Lengths near the ends of the 32-bit range, where 32-bit sums would wrap. */
static void test_wide_arithmetic(void **state)
{
  (void)state;
  gw_framing f = preset("u32be");
  f.max_frame[GW_CLIENT] = UINT32_MAX;
  const uint8_t all_ones[4] = {0xff, 0xff, 0xff, 0xff};
  expect_error(&f, GW_CLIENT, all_ones, 4, GW_FRAME_TOO_LARGE);
  f.length_adjust = -4; /* counts the whole frame */
  expect_again(&f, GW_CLIENT, all_ones, 4, UINT32_MAX);
  expect_error(&f, GW_CLIENT, (const uint8_t *)"\x00\x00\x00\x03", 4,
               GW_FRAME_SHORT_HEADER);
  f.length_adjust = INT32_MIN;
  expect_again(&f, GW_CLIENT, all_ones, 4, 4 + (size_t)UINT32_MAX - 0x80000000u);
  expect_error(&f, GW_CLIENT, (const uint8_t *)"\x7f\xff\xff\xff", 4,
               GW_FRAME_SHORT_HEADER);
  f.length_adjust = INT32_MAX;
  expect_error(&f, GW_CLIENT, all_ones, 4, GW_FRAME_TOO_LARGE);
  expect_error(&f, GW_CLIENT, (const uint8_t *)"\x80\x00\x00\x00", 4,
               GW_FRAME_TOO_LARGE);
  expect_again(&f, GW_CLIENT, (const uint8_t *)"\x00\x00\x00\x00", 4,
               4 + (size_t)INT32_MAX);
  /* A length field far into the frame. */
  f = preset("u32be");
  f.length_offset = UINT32_MAX - 4;
  f.max_frame[GW_CLIENT] = UINT32_MAX;
  expect_again(&f, GW_CLIENT, all_ones, 4, 0);
  /* The encoder: a value the adjustment would push below zero. */
  f = preset("u32be");
  f.length_adjust = 5;
  uint8_t out[16];
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, sizeof out, NULL,
                                   (const uint8_t *)"abcd", 4), -ERANGE);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, sizeof out, NULL,
                                   (const uint8_t *)"abcde", 5), 9);
  assert_memory_equal(out, "\x00\x00\x00\x00" "abcde", 9);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, NULL, 0, NULL, NULL, SIZE_MAX),
                   -ERANGE);
}

/* A length field after a prefix, and a template to build from. */
static void test_prefix(void **state)
{
  (void)state;
  gw_framing f = {
    .name = "custom",
    .length_offset = 3,
    .length_size = 2,
    .big_endian = false,
    .length_adjust = 0,
    .opcode_offset = 5,
    .opcode_size = 4,
    .max_frame = {64, 64},
    .header_template = {'G', 'W', '1', 0xee, 0xee, 0xee, 0xee, 0xee, 0xee, 0x42},
    .header_len = 10,
  };
  char msg[200];
  assert_int_equal(gw_framing_validate(&f, msg, sizeof msg), 0);
  uint8_t out[64];
  long n = gw_frame_build(&f, GW_CLIENT, out, sizeof out, 0x01020304,
                          (const uint8_t *)"xy", 2);
  assert_int_equal(n, 12);
  assert_memory_equal(out, "GW1\x07\x00\x04\x03\x02\x01\x42xy", 12);
  expect_frame(&f, GW_SERVER, out, 12, 12, 0x01020304);
  expect_again(&f, GW_SERVER, out, 4, 0);
  expect_again(&f, GW_SERVER, out, 5, 12);
  /* encode takes the prefix as given. */
  n = gw_frame_encode(&f, GW_CLIENT, out, sizeof out, (const uint8_t *)"abc",
                      (const uint8_t *)"\x01\x00\x00\x00\x00", 5);
  assert_int_equal(n, 10);
  assert_memory_equal(out, "abc\x05\x00\x01\x00\x00\x00\x00", 10);
  expect_frame(&f, GW_CLIENT, out, 10, 10, 1);
  /* A frame that stops inside the opcode has none. */
  expect_frame(&f, GW_CLIENT, (const uint8_t *)"abc\x03\x00\x01\x02\x03", 8, 8, -1);
  /* And the varint version of a prefix. */
  gw_framing v = preset("varint");
  v.length_offset = 2;
  v.header_len = 2;
  memcpy(v.header_template, "MC", 2);
  assert_int_equal(gw_framing_validate(&v, msg, sizeof msg), 0);
  assert_int_equal(gw_frame_build(&v, GW_CLIENT, out, sizeof out, 0,
                                  (const uint8_t *)"hey", 3), 6);
  assert_memory_equal(out, "MC\x03hey", 6);
  expect_again(&v, GW_CLIENT, out, 2, 0);
  expect_frame(&v, GW_CLIENT, out, 6, 6, -1);
  assert_int_equal(gw_frame_length_field_size(&v, 6), 1);
}

/* ---- streams cut anywhere ----------------------------------------------- */

typedef struct {
  size_t start, len, field_end;
  int opcode; /* -1: none */
} expected_frame;

#define STREAM_MAX 4096
#define FRAMES_MAX 16

typedef struct {
  uint8_t bytes[STREAM_MAX];
  size_t n;
  expected_frame frames[FRAMES_MAX];
  size_t nframes;
} stream;

static void add_built(stream *st, const gw_framing *f, uint32_t opcode,
                      size_t body_len)
{
  uint8_t body[1024];
  assert_true(body_len <= sizeof body && st->nframes < FRAMES_MAX);
  for (size_t i = 0; i < body_len; i++)
    body[i] = (uint8_t)(i * 7 + 3);
  long len = gw_frame_build(f, GW_CLIENT, st->bytes + st->n,
                            STREAM_MAX - st->n, opcode, body, body_len);
  assert_true(len > 0);
  expected_frame *e = &st->frames[st->nframes++];
  e->start = st->n;
  e->len = (size_t)len;
  e->field_end = f->length_offset + gw_frame_length_field_size(f, (size_t)len);
  e->opcode = f->opcode_size &&
              f->opcode_offset + f->opcode_size <= (size_t)len ? (int)opcode : -1;
  st->n += (size_t)len;
}

static void add_encoded(stream *st, const gw_framing *f, size_t rest_len)
{
  uint8_t rest[64] = {0};
  long len = gw_frame_encode(f, GW_CLIENT, st->bytes + st->n, STREAM_MAX - st->n,
                             NULL, rest, rest_len);
  assert_true(len > 0);
  expected_frame *e = &st->frames[st->nframes++];
  *e = (expected_frame){st->n, (size_t)len, f->length_offset + f->length_size, -1};
  if (f->opcode_size && f->opcode_offset + f->opcode_size <= (size_t)len)
    e->opcode = (int)gw_get_uint(st->bytes + st->n + f->opcode_offset,
                                 f->opcode_size, f->big_endian);
  st->n += (size_t)len;
}

static void make_stream(const char *name, gw_framing *f, stream *st)
{
  *f = preset(name);
  memset(st, 0, sizeof *st);
  if (strcmp(name, "top") == 0) {
    add_built(st, f, 1514, 32);
    add_encoded(st, f, 0); /* keep-alive */
    add_built(st, f, 1, 5);
    add_built(st, f, 0, 0);
    add_encoded(st, f, 0);
    add_built(st, f, 0xffff, 300);
  } else if (strcmp(name, "mysql") == 0) {
    add_built(st, f, 3, 8);
    add_encoded(st, f, 1); /* empty payload: no opcode */
    add_built(st, f, 0xff, 0);
    add_built(st, f, 1, 300);
  } else if (strcmp(name, "mqtt") == 0) {
    add_built(st, f, 0xc0, 0);   /* PINGREQ */
    add_built(st, f, 0x30, 127); /* PUBLISH QoS 0 */
    add_built(st, f, 0x32, 128); /* QoS 1: two length bytes */
    add_built(st, f, 0x10, 300); /* CONNECT */
    add_built(st, f, 0xe0, 0);   /* DISCONNECT */
  } else if (strcmp(name, "varint") == 0) {
    add_built(st, f, 0, 0);
    add_built(st, f, 0, 127);
    add_built(st, f, 0, 128);
    add_built(st, f, 0, 1);
    add_built(st, f, 0, 300);
  } else {
    add_built(st, f, 0, 3);
    add_built(st, f, 0, 0);
    add_built(st, f, 0, 255);
    add_built(st, f, 0, 256);
    add_built(st, f, 0, 1);
  }
}

/* What the relay does with a read buffer: takes frames off its front while
 * there are whole ones. Returns the bytes consumed; *found counts frames. */
static size_t consume(const gw_framing *f, const stream *st, const uint8_t *p,
                      size_t n, size_t *found, gw_frame_info *last)
{
  size_t used = 0;
  for (size_t i = 0; i <= n; i++) {
    int rc = next(f, GW_CLIENT, p + used, n - used, last);
    if (rc != 1) {
      assert_int_equal(rc, -EAGAIN);
      return used;
    }
    assert_true(*found < st->nframes);
    const expected_frame *e = &st->frames[*found];
    assert_int_equal(last->len, e->len);
    assert_memory_equal(p + used, st->bytes + e->start, e->len);
    if (e->opcode < 0) {
      assert_false(last->has_opcode);
    } else {
      assert_true(last->has_opcode);
      assert_int_equal(last->opcode, (uint32_t)e->opcode);
    }
    used += last->len;
    (*found)++;
  }
  fail_msg("consume did not stop");
  return used;
}

/* Every preset but raw, which has no frames to cut. */
static const char *const stream_presets[] = {"top", "u16be", "u32be", "u32le",
                                             "mysql", "varint", "mqtt"};
#define NSTREAMS (sizeof stream_presets / sizeof stream_presets[0])
static stream st;             /* the stream under test */
static uint8_t acc[STREAM_MAX]; /* what the consumer holds of it */

/* The need a stream cut after fed bytes must report. */
static size_t expected_need(const stream *st, size_t fed, size_t found)
{
  if (found == st->nframes)
    return 0;
  const expected_frame *e = &st->frames[found];
  return fed - e->start >= e->field_end ? e->len : 0;
}

static void test_byte_by_byte(void **state)
{
  (void)state;
  for (size_t k = 0; k < NSTREAMS; k++) {
    gw_framing f;
    make_stream(stream_presets[k], &f, &st);
    size_t held = 0, found = 0, consumed = 0;
    for (size_t fed = 1; fed <= st.n; fed++) {
      acc[held++] = st.bytes[fed - 1];
      gw_frame_info last;
      size_t used = consume(&f, &st, acc, held, &found, &last);
      memmove(acc, acc + used, held - used);
      held -= used;
      consumed += used;
      /* Exactly the frames that are wholly in, no more, no fewer. */
      size_t whole = 0;
      while (whole < st.nframes && st.frames[whole].start + st.frames[whole].len <= fed)
        whole++;
      assert_int_equal(found, whole);
      assert_int_equal(consumed + held, fed);
      assert_int_equal(last.need, expected_need(&st, fed, found));
    }
    assert_int_equal(found, st.nframes);
    assert_int_equal(held, 0);
  }
}

static void test_every_split(void **state)
{
  (void)state;
  for (size_t k = 0; k < NSTREAMS; k++) {
    gw_framing f;
    make_stream(stream_presets[k], &f, &st);
    for (size_t cut = 0; cut <= st.n; cut++) {
      size_t found = 0;
      gw_frame_info last;
      memcpy(acc, st.bytes, cut);
      size_t used = consume(&f, &st, acc, cut, &found, &last);
      assert_int_equal(last.need, expected_need(&st, cut, found));
      size_t held = cut - used;
      memmove(acc, acc + used, held);
      memcpy(acc + held, st.bytes + cut, st.n - cut);
      held += st.n - cut;
      used = consume(&f, &st, acc, held, &found, &last);
      assert_int_equal(used, held);
      assert_int_equal(found, st.nframes);
      assert_int_equal(last.need, 0);
    }
  }
}

/* ---- round trips -------------------------------------------------------- */

/* encode, then parse, gives back the same frame, for every preset and a
 * range of sizes on both sides of each varint and limit boundary. */
static void test_round_trips(void **state)
{
  (void)state;
  static const size_t sizes[] = {0, 1, 2, 5, 6, 7, 126, 127, 128, 129, 255,
                                 256, 16381, 16382, 16383, 16384, 65533, 65534};
  size_t cap = 70000;
  uint8_t *rest = malloc(cap), *out = malloc(cap);
  assert_non_null(rest);
  assert_non_null(out);
  for (size_t i = 0; i < cap; i++)
    rest[i] = (uint8_t)(i * 31 + 1);
  for (const char *const *name = gw_framing_presets; *name; name++) {
    gw_framing f = preset(*name);
    for (int s = 0; s < GW_SIDES; s++) {
      for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        long len = gw_frame_encode(&f, s, out, cap, NULL, rest, sizes[i]);
        if (len < 0) {
          /* Only what the framing cannot carry is refused. */
          size_t whole = f.length_offset + (f.raw ? 0 : f.length_size ? f.length_size : 1) + sizes[i];
          assert_true(len == -ERANGE || len == -EMSGSIZE);
          if (len == -EMSGSIZE)
            assert_true(whole > f.max_frame[s] || whole < f.min_frame[s]);
          continue;
        }
        size_t field = gw_frame_length_field_size(&f, (size_t)len);
        assert_int_equal((size_t)len, f.length_offset + field + sizes[i]);
        assert_memory_equal(out + f.length_offset + field, rest, sizes[i]);
        gw_frame_info info;
        if (f.raw && len == 0) {
          assert_int_equal(next(&f, s, out, 0, &info), -EAGAIN);
          continue;
        }
        assert_int_equal(next(&f, s, out, (size_t)len, &info), 1);
        assert_int_equal(info.len, (size_t)len);
        if (len > 1 && !f.raw)
          assert_int_equal(next(&f, s, out, (size_t)len - 1, &info), -EAGAIN);
      }
    }
  }
  /* Encoding into a buffer one byte short never writes past it. */
  gw_framing f = preset("top");
  memset(out, 0x5a, 16);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, 15, NULL, rest, 14), -ENOBUFS);
  assert_int_equal(out[0], 0x5a);
  assert_int_equal(gw_frame_encode(&f, GW_CLIENT, out, 16, NULL, rest, 14), 16);
  free(rest);
  free(out);
}

/* ---- integers ----------------------------------------------------------- */

static void test_uint(void **state)
{
  (void)state;
  static const uint8_t bytes[8] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x88};
  static const struct {
    unsigned size;
    uint64_t be, le;
  } cases[] = {
    {1, 0x01, 0x01},
    {2, 0x0102, 0x0201},
    {3, 0x010203, 0x030201},
    {4, 0x01020304, 0x04030201},
    {8, 0x0102030405060788ull, 0x8807060504030201ull},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    unsigned size = cases[i].size;
    assert_true(gw_get_uint(bytes, size, true) == cases[i].be);
    assert_true(gw_get_uint(bytes, size, false) == cases[i].le);
    uint8_t out[10];
    memset(out, 0xcc, sizeof out);
    gw_put_uint(out, size, true, cases[i].be);
    assert_memory_equal(out, bytes, size);
    assert_int_equal(out[size], 0xcc);
    memset(out, 0xcc, sizeof out);
    gw_put_uint(out, size, false, cases[i].le);
    assert_memory_equal(out, bytes, size);
    assert_int_equal(out[size], 0xcc);
  }
  /* put keeps the low bytes of a value too wide for the field. */
  uint8_t out[2];
  gw_put_uint(out, 2, true, 0xabcdef);
  assert_memory_equal(out, "\xcd\xef", 2);
}

/* ---- validation --------------------------------------------------------- */

static void expect_invalid(const gw_framing *f, const char *want)
{
  char msg[200];
  assert_int_equal(gw_framing_validate(f, msg, sizeof msg), -EINVAL);
  assert_string_equal(msg, want);
}

static void test_validate(void **state)
{
  (void)state;
  gw_framing f = preset("top");
  f.length_size = 5;
  expect_invalid(&f, "length_size: must be 1, 2, 3, 4 or \"varint\", got 5");
  f = preset("top");
  f.opcode_size = 3;
  expect_invalid(&f, "opcode_size: must be 0, 1, 2 or 4, got 3");
  f.opcode_size = 8;
  expect_invalid(&f, "opcode_size: must be 0, 1, 2 or 4, got 8");
  f = preset("top");
  f.header_len = 17;
  expect_invalid(&f, "header_len: must be at most 16, got 17");
  f = preset("u32be");
  f.length_offset = 13;
  expect_invalid(&f, "header_len: must cover the length field (bytes 13..16), got 4");
  f = preset("top");
  f.opcode_offset = 1;
  expect_invalid(&f, "opcode_offset: the opcode (bytes 1..2) overlaps the length "
                     "field (bytes 0..1)");
  f = preset("top");
  f.opcode_offset = 7;
  expect_invalid(&f, "header_len: must cover the opcode (bytes 7..8), got 8");
  f = preset("top");
  f.min_frame[GW_SERVER] = 70000;
  expect_invalid(&f, "min_frame.server: must be at most max_frame.server (65536), "
                     "got 70000");
  f = preset("top");
  f.max_frame[GW_CLIENT] = 7;
  f.min_frame[GW_CLIENT] = 0;
  expect_invalid(&f, "max_frame.client: must be at least the header's size (8), got 7");
  f = preset("varint");
  f.opcode_size = 1;
  expect_invalid(&f, "opcode_offset: with a varint length field the opcode must end "
                     "before it (byte 0), got bytes 0..0");
  f = preset("mqtt");
  f.opcode_size = 2; /* would run into the length field at byte 1 */
  expect_invalid(&f, "opcode_offset: with a varint length field the opcode must end "
                     "before it (byte 1), got bytes 0..1");
  f = preset("mqtt");
  f.opcode_offset = 2;
  expect_invalid(&f, "opcode_offset: with a varint length field the opcode must end "
                     "before it (byte 1), got bytes 2..2");
  f = preset("varint");
  f.header_len = 2;
  expect_invalid(&f, "header_len: must equal length_offset (0) with a varint "
                     "length field, got 2");
  f = preset("varint");
  f.max_frame[GW_SERVER] = 0;
  expect_invalid(&f, "max_frame.server: must be at least the header's size (1), got 0");
  f = preset("top");
  f.str_length_size = 5;
  expect_invalid(&f, "str_length_size: must be 0, 1, 2, 3 or 4, got 5");
  f = preset("top");
  memset(f.name, 'x', sizeof f.name);
  expect_invalid(&f, "name: must be at most 31 bytes");
  f = preset("raw");
  f.min_frame[GW_CLIENT] = 1u << 30;
  expect_invalid(&f, "min_frame.client: must be at most max_frame.client "
                     "(16777216), got 1073741824");
  /* A raw framing's length fields mean nothing and are not checked. */
  f = preset("raw");
  f.length_size = 9;
  char msg[8];
  assert_int_equal(gw_framing_validate(&f, msg, sizeof msg), 0);
  /* A short message buffer gets a truncated, terminated message. */
  f = preset("top");
  f.length_size = 7;
  assert_int_equal(gw_framing_validate(&f, msg, sizeof msg), -EINVAL);
  assert_string_equal(msg, "length_");
  assert_int_equal(gw_framing_validate(&f, NULL, 0), -EINVAL);
  /* The custom framings used above are valid. */
  f = custom();
  assert_int_equal(gw_framing_validate(&f, NULL, 0), 0);
}

static void test_names(void **state)
{
  (void)state;
  assert_string_equal(gw_side_name(GW_CLIENT), "client");
  assert_string_equal(gw_side_name(GW_SERVER), "server");
  assert_string_equal(gw_frame_strerror(GW_FRAME_SHORT_HEADER),
                      "frame length shorter than its header");
  assert_string_equal(gw_frame_strerror(GW_FRAME_TOO_SMALL), "frame below min_frame");
  assert_string_equal(gw_frame_strerror(GW_FRAME_TOO_LARGE), "frame above max_frame");
  assert_string_equal(gw_frame_strerror(GW_FRAME_VARINT_TOO_LONG),
                      "varint length field longer than 5 bytes");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_presets),
    cmocka_unit_test(test_top_preset_fields),
    cmocka_unit_test(test_top_vectors),
    cmocka_unit_test(test_top_rewrite),
    cmocka_unit_test(test_top_build),
    cmocka_unit_test(test_top_short_lengths),
    cmocka_unit_test(test_top_max_per_side),
    cmocka_unit_test(test_u16be_u32),
    cmocka_unit_test(test_mysql),
    cmocka_unit_test(test_mqtt),
    cmocka_unit_test(test_varint),
    cmocka_unit_test(test_raw),
    cmocka_unit_test(test_limits_per_side),
    cmocka_unit_test(test_wide_arithmetic),
    cmocka_unit_test(test_prefix),
    cmocka_unit_test(test_byte_by_byte),
    cmocka_unit_test(test_every_split),
    cmocka_unit_test(test_round_trips),
    cmocka_unit_test(test_uint),
    cmocka_unit_test(test_validate),
    cmocka_unit_test(test_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
