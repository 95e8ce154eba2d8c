/* test_pipe.c: the session pipeline (src/pipe.c) with a recording driver
 * and no handlers: runs of unhandled frames come out as one zero-copy
 * pass, unfinished frames wait, switches of framing and raw stretches
 * apply at frame boundaries, and the zlib stream codec and a body codec
 * transform the bytes on both ways byte-exactly. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <cmocka.h>

#include "pipe.h"

/* ---- a recording driver ---- */

typedef struct rec {
  gw_bytes out[GW_SIDES];       /* everything toward each side, in order */
  int passes, copies;
  const uint8_t *in_lo, *in_hi; /* the input given: passes must lie in it */
} rec;

static int d_pass(void *ud, gw_side to, const uint8_t *p, size_t len) {
  rec *r = ud;
  assert_true(p >= r->in_lo && p + len <= r->in_hi);
  r->passes++;
  return gw_bytes_append(&r->out[to], p, len);
}

static int d_copy(void *ud, gw_side to, const uint8_t *p, size_t len) {
  rec *r = ud;
  r->copies++;
  return gw_bytes_append(&r->out[to], p, len);
}

static const gw_pipe_driver drv = {d_pass, d_copy, NULL, NULL, NULL};

typedef struct fixture {
  gw_pipe p;
  gw_script_session ss;
  rec r;
} fixture;

static void setup_framing(fixture *f, const char *preset) {
  memset(f, 0, sizeof *f);
  gw_framing fr;
  assert_int_equal(gw_framing_preset(preset, &fr), 0);
  f->ss.id = 1;
  gw_pipe_init(&f->p, &fr, NULL, &f->ss, &drv, &f->r);
}

static void teardown(fixture *f) {
  gw_pipe_free(&f->p);
  for (int i = 0; i < GW_SIDES; i++) gw_bytes_free(&f->r.out[i]);
}

/* Feeds n bytes from side; returns gw_pipe_input's result, *left the bytes
 * it did not consume. */
static int feed(fixture *f, gw_side from, const void *data, size_t n, uint32_t *left) {
  uint8_t *copy = malloc(n ? n : 1);
  memcpy(copy, data, n);
  f->r.in_lo = copy;
  f->r.in_hi = copy + n;
  uint32_t start = 0;
  int rc = gw_pipe_input(&f->p, from, copy, &start, (uint32_t)n);
  if (left) *left = (uint32_t)n - start;
  free(copy);
  return rc;
}

static void assert_out(fixture *f, gw_side to, const void *want, size_t n) {
  assert_int_equal(f->r.out[to].len, n);
  assert_memory_equal(f->r.out[to].p, want, n);
}

/* u16be frames: length (2) counts the body only. */
static size_t u16(uint8_t *out, const char *body) {
  size_t n = strlen(body);
  out[0] = (uint8_t)(n >> 8);
  out[1] = (uint8_t)n;
  memcpy(out + 2, body, n);
  return n + 2;
}

/* ---- framing ---- */

static void test_unhandled_frames_are_one_pass(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u16be");
  uint8_t buf[64];
  size_t n = u16(buf, "hello");
  n += u16(buf + n, "world");
  buf[n++] = 0; /* half a length field */
  uint32_t left;
  assert_int_equal(feed(&f, GW_CLIENT, buf, n, &left), 0);
  assert_int_equal(left, 1);
  assert_int_equal(f.r.passes, 1);
  assert_int_equal(f.r.copies, 0);
  assert_out(&f, GW_SERVER, buf, n - 1);
  assert_int_equal(f.p.side[GW_CLIENT].frames, 2);
  assert_true(gw_pipe_partial(&f.p, GW_CLIENT, left));
  teardown(&f);
}

static void test_waits_for_the_rest_of_a_frame(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u16be");
  uint8_t buf[16];
  size_t n = u16(buf, "abcdef");
  uint32_t left;
  assert_int_equal(feed(&f, GW_SERVER, buf, 4, &left), 0);
  assert_int_equal(left, 4);
  assert_int_equal(f.p.side[GW_SERVER].need, 8);
  assert_int_equal(f.r.out[GW_CLIENT].len, 0);
  assert_int_equal(feed(&f, GW_SERVER, buf, n, &left), 0);
  assert_int_equal(left, 0);
  assert_out(&f, GW_CLIENT, buf, n);
  teardown(&f);
}

static void test_protocol_error_says_where(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "top");
  /* a keep-alive, then a length of 1: malformed */
  const uint8_t buf[] = {0x00, 0x02, 0x00, 0x01, 0x80};
  assert_int_equal(feed(&f, GW_CLIENT, buf, sizeof buf, NULL), -EPROTO);
  assert_int_equal(f.p.error_offset, 2);
  assert_non_null(strstr(f.p.error_msg, "shorter"));
  assert_out(&f, GW_SERVER, buf, 2); /* what came before the error went on */
  teardown(&f);
}

/* ---- phases ---- */

static void test_expect_raw_then_frames(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u16be");
  /* A one-byte answer with no length field, then frames. */
  gw_pipe_expect_raw(&f.p, GW_SERVER, 1);
  uint8_t buf[32] = {'S'};
  size_t n = 1 + u16(buf + 1, "ok");
  uint32_t left;
  assert_int_equal(feed(&f, GW_SERVER, buf, n, &left), 0);
  assert_int_equal(left, 0);
  assert_out(&f, GW_CLIENT, buf, n);
  assert_int_equal(f.p.side[GW_SERVER].frames, 1);
  assert_int_equal(f.r.passes, 1); /* raw bytes and the frame in one run */
  teardown(&f);
}

static void test_raw_stretch_split_across_reads(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u16be");
  gw_pipe_expect_raw(&f.p, GW_CLIENT, 5);
  uint8_t buf[32] = {0xff, 0xff, 0xff};
  assert_int_equal(feed(&f, GW_CLIENT, buf, 3, NULL), 0);
  uint8_t rest[32] = {0xff, 0xff};
  size_t n = 2 + u16(rest + 2, "x");
  assert_int_equal(feed(&f, GW_CLIENT, rest, n, NULL), 0);
  assert_int_equal(f.r.out[GW_SERVER].len, 3 + n);
  assert_int_equal(f.p.side[GW_CLIENT].frames, 1);
  teardown(&f);
}

static void test_switch_to_raw_and_back(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u16be");
  gw_framing raw, u16f;
  gw_framing_preset("raw", &raw);
  gw_framing_preset("u16be", &u16f);
  gw_pipe_set_framing(&f.p, GW_CLIENT, &raw);
  const uint8_t tls[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01}; /* not u16be-shaped */
  assert_int_equal(feed(&f, GW_CLIENT, tls, sizeof tls, NULL), 0);
  assert_out(&f, GW_SERVER, tls, sizeof tls);
  gw_pipe_set_framing(&f.p, GW_CLIENT, &u16f);
  uint8_t buf[8];
  size_t n = u16(buf, "hi");
  uint32_t left;
  assert_int_equal(feed(&f, GW_CLIENT, buf, n - 1, &left), 0);
  assert_int_equal(left, n - 1); /* framed again: waits for the whole frame */
  teardown(&f);
}

/* ---- codecs ---- */

static size_t zcompress(z_stream *z, const uint8_t *in, size_t n, uint8_t *out, size_t cap) {
  z->next_in = (Bytef *)in;
  z->avail_in = (uInt)n;
  z->next_out = out;
  z->avail_out = (uInt)cap;
  assert_int_equal(deflate(z, Z_SYNC_FLUSH), Z_OK);
  return cap - z->avail_out;
}

static void test_zlib_both_ways(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u16be");
  gw_pipe_set_stream_codec(&f.p, GW_CLIENT, gw_codec_zlib_new(), GW_CODEC_BOTH);
  gw_pipe_set_stream_codec(&f.p, GW_SERVER, gw_codec_zlib_new(), GW_CODEC_BOTH);
  /* the client compresses 300 frames; they arrive cut at odd places */
  gw_bytes plain = {0};
  uint8_t fr[64];
  for (int i = 0; i < 300; i++) {
    char body[32];
    snprintf(body, sizeof body, "frame %d", i);
    gw_bytes_append(&plain, fr, u16(fr, body));
  }
  z_stream zc = {0}, zs = {0};
  deflateInit(&zc, 6);
  static uint8_t wire[65536];
  size_t wn = zcompress(&zc, plain.p, plain.len, wire, sizeof wire);
  for (size_t off = 0; off < wn; off += 7) {
    size_t k = wn - off < 7 ? wn - off : 7;
    uint8_t chunk[8];
    memcpy(chunk, wire + off, k);
    /* undecoded input the pipeline cannot use yet stays with the caller */
    uint32_t left;
    assert_int_equal(feed(&f, GW_CLIENT, chunk, k, &left), 0);
    assert_int_equal(left, 0);
  }
  /* toward the server it goes compressed again: inflate and compare */
  inflateInit(&zs);
  static uint8_t back[65536];
  zs.next_in = f.r.out[GW_SERVER].p;
  zs.avail_in = (uInt)f.r.out[GW_SERVER].len;
  zs.next_out = back;
  zs.avail_out = sizeof back;
  assert_int_equal(inflate(&zs, Z_SYNC_FLUSH), Z_OK);
  assert_int_equal(sizeof back - zs.avail_out, plain.len);
  assert_memory_equal(back, plain.p, plain.len);
  assert_int_equal(f.p.side[GW_CLIENT].frames, 300);
  assert_int_equal(f.r.passes, 0);
  deflateEnd(&zc);
  inflateEnd(&zs);
  gw_bytes_free(&plain);
  teardown(&f);
}

static void test_zlib_garbage_is_a_protocol_error(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u16be");
  gw_pipe_set_stream_codec(&f.p, GW_CLIENT, gw_codec_zlib_new(), GW_CODEC_BOTH);
  const uint8_t junk[] = "this is not zlib";
  assert_int_equal(feed(&f, GW_CLIENT, junk, sizeof junk, NULL), -EPROTO);
  assert_non_null(strstr(f.p.error_msg, "stream codec zlib: inflate"));
  teardown(&f);
}

/* 8 MiB of zeros in about 8 KiB: inflated and framed a step at a time,
 * never held whole (the driver's queue, not the codec, holds the output). */
static void test_zlib_bomb_goes_in_steps(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "u32be");
  gw_pipe_set_stream_codec(&f.p, GW_CLIENT, gw_codec_zlib_new(), GW_CODEC_BOTH);
  size_t total = 8u << 20;
  uint8_t *zeros = calloc(1, total); /* frames of length 0: 4 bytes each */
  z_stream z = {0};
  deflateInit(&z, 9);
  size_t cap = deflateBound(&z, total) + 64;
  uint8_t *wire = malloc(cap);
  size_t wn = zcompress(&z, zeros, total, wire, cap);
  assert_true(wn < 65536);
  assert_int_equal(feed(&f, GW_CLIENT, wire, wn, NULL), 0);
  assert_int_equal(f.p.side[GW_CLIENT].frames, total / 4);
  assert_true(f.p.side[GW_CLIENT].dec.cap <= 2 * 65536);
  assert_int_equal(f.r.out[GW_SERVER].len, total);
  deflateEnd(&z);
  free(wire);
  free(zeros);
  teardown(&f);
}

/* The same bomb with a driver that holds past 1 MiB queued (the relay's
 * write_high_water): the pipeline stops between inflate steps, and goes on
 * from where it stopped when called again. */
static bool hold_past_1mib(void *ud, gw_side from) {
  (void)from;
  return ((rec *)ud)->out[GW_SERVER].len > (1u << 20);
}

static void test_zlib_bomb_is_held(void **state) {
  (void)state;
  static const gw_pipe_driver holding = {d_pass, d_copy, hold_past_1mib, NULL, NULL};
  fixture f;
  setup_framing(&f, "u32be");
  f.p.drv = &holding;
  gw_pipe_set_stream_codec(&f.p, GW_CLIENT, gw_codec_zlib_new(), GW_CODEC_IN);
  size_t total = 8u << 20;
  uint8_t *zeros = calloc(1, total);
  z_stream z = {0};
  deflateInit(&z, 9);
  size_t cap = deflateBound(&z, total) + 64;
  uint8_t *wire = malloc(cap);
  size_t wn = zcompress(&z, zeros, total, wire, cap);
  uint32_t start = 0;
  f.r.in_lo = wire;
  f.r.in_hi = wire + wn;
  int rounds = 0;
  for (;;) {
    int rc = gw_pipe_input(&f.p, GW_CLIENT, wire, &start, (uint32_t)wn);
    assert_true(f.r.out[GW_SERVER].len <= (1u << 20) + 65536 + 4);
    if (rc == 0) break;
    assert_int_equal(rc, GW_PIPE_HELD);
    f.r.out[GW_SERVER].len = 0; /* the peer read it all */
    assert_true(++rounds < 100);
  }
  assert_true(rounds >= 7); /* 8 MiB out in 1 MiB steps */
  assert_int_equal(f.p.side[GW_CLIENT].frames, total / 4);
  deflateEnd(&z);
  free(wire);
  free(zeros);
  teardown(&f);
}

/* A body codec for the test: XOR with a key that rolls per byte, state
 * kept across frames, as game ciphers do. */
typedef struct xcodec {
  gw_codec base;
  uint8_t dkey, ekey;
} xcodec;

static int x_dec(gw_codec *c, const uint8_t *in, size_t n, size_t *used, gw_bytes *out,
                 size_t max_out, char *err, size_t errlen) {
  (void)max_out, (void)err, (void)errlen;
  xcodec *x = (xcodec *)c;
  if (gw_bytes_reserve(out, n)) return -ENOMEM;
  for (size_t i = 0; i < n; i++) out->p[out->len++] = in[i] ^ x->dkey++;
  *used = n;
  return 0;
}

static int x_enc(gw_codec *c, const uint8_t *in, size_t n, gw_bytes *out, char *err,
                 size_t errlen) {
  (void)err, (void)errlen;
  xcodec *x = (xcodec *)c;
  if (gw_bytes_reserve(out, n)) return -ENOMEM;
  for (size_t i = 0; i < n; i++) out->p[out->len++] = in[i] ^ x->ekey++;
  return 0;
}

static void x_free(gw_codec *c) { free(c); }
static const gw_codec_type xor_type = {"xor", x_dec, x_enc, x_free};

static gw_codec *xcodec_new(uint8_t key, uint32_t offset) {
  xcodec *x = calloc(1, sizeof *x);
  x->base.type = &xor_type;
  x->base.offset = offset;
  x->dkey = x->ekey = key;
  return &x->base;
}

static void test_body_codec_decodes_and_encodes(void **state) {
  (void)state;
  fixture f;
  setup_framing(&f, "top");
  /* The client's bodies are encrypted with key 7 after the 6-byte header;
   * the server's wire is clear. */
  gw_pipe_set_body_codec(&f.p, GW_CLIENT, xcodec_new(7, 6), GW_CODEC_BOTH);
  uint8_t clear[] = {0x00, 0x0d, 0x80, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x03, 'h', 'i', 0x00};
  uint8_t wire[2][sizeof clear];
  uint8_t k = 7;
  for (int j = 0; j < 2; j++) {
    memcpy(wire[j], clear, sizeof clear);
    for (size_t i = 6; i < sizeof clear; i++) wire[j][i] ^= k++;
  }
  assert_memory_not_equal(wire[0], wire[1], sizeof clear); /* the key rolled */
  assert_int_equal(feed(&f, GW_CLIENT, wire, sizeof wire, NULL), 0);
  uint8_t both[2 * sizeof clear];
  memcpy(both, clear, sizeof clear);
  memcpy(both + sizeof clear, clear, sizeof clear);
  assert_out(&f, GW_SERVER, both, sizeof both);
  /* and toward the client, frames are encrypted with its key stream */
  assert_int_equal(feed(&f, GW_SERVER, clear, sizeof clear, NULL), 0);
  assert_out(&f, GW_CLIENT, wire[0], sizeof clear);
  teardown(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unhandled_frames_are_one_pass),
      cmocka_unit_test(test_waits_for_the_rest_of_a_frame),
      cmocka_unit_test(test_protocol_error_says_where),
      cmocka_unit_test(test_expect_raw_then_frames),
      cmocka_unit_test(test_raw_stretch_split_across_reads),
      cmocka_unit_test(test_switch_to_raw_and_back),
      cmocka_unit_test(test_zlib_both_ways),
      cmocka_unit_test(test_zlib_garbage_is_a_protocol_error),
      cmocka_unit_test(test_zlib_bomb_goes_in_steps),
      cmocka_unit_test(test_zlib_bomb_is_held),
      cmocka_unit_test(test_body_codec_decodes_and_encodes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
