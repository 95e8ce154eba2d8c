/* test_top_cipher.c: unit tests for demo/top_cipher.c, the demo cipher, and
 * its frame hook in demo/top_conn.c.
 *
 * The known answers were computed apart from this code, in Python:
 *
 *   key = b"[11-26 07:25:00:000]"        # a chap string, 20 bytes
 *   i = 0                                # one counter per direction
 *   def enc(frame):                      # bytes 6.. of a whole frame
 *       global i
 *       out = bytearray(frame)
 *       for k in range(6, len(frame)):
 *           out[k] ^= key[i % len(key)] ^ ((i * 7 + 13) & 0xff)
 *           i += 1
 *       return bytes(out)
 *
 * applied to two CM_SAY frames in a row, "hi" then "this damn crab keeps
 * killing me": the second one starts at i = 7 and runs to i = 42, past the
 * key's length (20) and past i = 35, where i * 7 + 13 no longer fits a
 * byte. For example the first encrypted byte is 0x00 ^ '[' (0x5b) ^ 13 =
 * 0x56. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "top_cipher.h"
#include "top_conn.h"
#include "top_wire.h"

static const char KEY[] = "[11-26 07:25:00:000]";
#define KEYLEN (sizeof KEY - 1)

/* CM_SAY "hi", clear and encrypted with the counter from 0. */
static const uint8_t SAY_HI[] = {
  0x00, 0x0d, 0x80, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x03, 0x68, 0x69, 0x00,
};
static const uint8_t SAY_HI_ENC[] = {
  0x00, 0x0d, 0x80, 0x00, 0x00, 0x00, 0x56, 0x24, 0x2a, 0x0c, 0x73, 0x6f, 0x17,
};
/* CM_SAY "this damn crab keeps killing me", clear and encrypted with the
 * counter from 7 (after SAY_HI). */
static const uint8_t SAY_CRAB[] = {
  0x00, 0x2a, 0x80, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x20, 0x74, 0x68, 0x69, 0x73,
  0x20, 0x64, 0x61, 0x6d, 0x6e, 0x20, 0x63, 0x72, 0x61, 0x62, 0x20, 0x6b, 0x65, 0x65,
  0x70, 0x73, 0x20, 0x6b, 0x69, 0x6c, 0x6c, 0x69, 0x6e, 0x67, 0x20, 0x6d, 0x65, 0x00,
};
static const uint8_t SAY_CRAB_ENC[] = {
  0x00, 0x2a, 0x80, 0x00, 0x00, 0x00, 0x0e, 0x73, 0x76, 0x41, 0x1b, 0x33, 0x31, 0x2c,
  0x6c, 0x29, 0xd5, 0xd6, 0xa1, 0xe2, 0xf2, 0xe4, 0xe2, 0xe5, 0xaa, 0x88, 0x9f, 0x83,
  0x92, 0x9e, 0xf3, 0xbc, 0xad, 0xa7, 0x54, 0x50, 0x4e, 0x40, 0x63, 0x13, 0x78, 0x02,
};
static const uint8_t KEEPALIVE[] = {0x00, 0x02};

static void cipher(top_cipher *c)
{
  assert_int_equal(top_cipher_init(c, (const uint8_t *)KEY, KEYLEN), 0);
}

static void test_init(void **state)
{
  (void)state;
  top_cipher c;
  assert_int_equal(top_cipher_init(&c, (const uint8_t *)KEY, 0), -EINVAL);
  assert_int_equal(top_cipher_init(&c, NULL, 5), -EINVAL);
  cipher(&c);
  assert_int_equal(c.i, 0);
  assert_int_equal(c.keylen, 20);
}

/* The two frames in a row give the vectors; decrypting gives them back. */
static void test_known_answer(void **state)
{
  (void)state;
  top_cipher c;
  cipher(&c);
  uint8_t a[sizeof SAY_HI], b[sizeof SAY_CRAB];
  memcpy(a, SAY_HI, sizeof a);
  memcpy(b, SAY_CRAB, sizeof b);
  top_cipher_frame(&c, a, sizeof a);
  assert_memory_equal(a, SAY_HI_ENC, sizeof a);
  assert_int_equal(c.i, 7);
  top_cipher_frame(&c, b, sizeof b);
  assert_memory_equal(b, SAY_CRAB_ENC, sizeof b);
  assert_int_equal(c.i, 43);

  top_cipher d;
  cipher(&d);
  top_cipher_frame(&d, a, sizeof a);
  top_cipher_frame(&d, b, sizeof b);
  assert_memory_equal(a, SAY_HI, sizeof a);
  assert_memory_equal(b, SAY_CRAB, sizeof b);
}

/* The counter rolls on across frames: the same clear frame encrypts
 * differently as the second frame than as the first, and only a counter at
 * 7 decrypts the second. Cutting a body anywhere changes nothing. */
static void test_counter_rolls(void **state)
{
  (void)state;
  top_cipher fresh;
  cipher(&fresh);
  uint8_t b[sizeof SAY_CRAB];
  memcpy(b, SAY_CRAB, sizeof b);
  top_cipher_frame(&fresh, b, sizeof b);
  assert_memory_not_equal(b + TOP_CIPHER_CLEAR, SAY_CRAB_ENC + TOP_CIPHER_CLEAR,
                          sizeof b - TOP_CIPHER_CLEAR);

  for (size_t cut = 0; cut <= sizeof SAY_CRAB - TOP_CIPHER_CLEAR; cut++) {
    top_cipher c;
    cipher(&c);
    uint8_t skip[7] = {0};
    top_cipher_apply(&c, skip, sizeof skip); /* SAY_HI's 7 bytes */
    memcpy(b, SAY_CRAB_ENC, sizeof b);
    top_cipher_apply(&c, b + TOP_CIPHER_CLEAR, cut);
    top_cipher_apply(&c, b + TOP_CIPHER_CLEAR + cut, sizeof b - TOP_CIPHER_CLEAR - cut);
    assert_memory_equal(b, SAY_CRAB, sizeof b);
  }
}

/* A keep-alive has nothing past the clear header: it stays `00 02` and
 * does not move the counter, so the vectors hold with one in between. */
static void test_keepalive_untouched(void **state)
{
  (void)state;
  top_cipher c;
  cipher(&c);
  uint8_t a[sizeof SAY_HI], k[2], b[sizeof SAY_CRAB];
  memcpy(a, SAY_HI, sizeof a);
  memcpy(k, KEEPALIVE, sizeof k);
  memcpy(b, SAY_CRAB, sizeof b);
  top_cipher_frame(&c, k, sizeof k);
  top_cipher_frame(&c, a, sizeof a);
  top_cipher_frame(&c, k, sizeof k);
  assert_memory_equal(k, KEEPALIVE, sizeof k);
  top_cipher_frame(&c, b, sizeof b);
  assert_memory_equal(a, SAY_HI_ENC, sizeof a);
  assert_memory_equal(b, SAY_CRAB_ENC, sizeof b);
  assert_int_equal(c.i, 43);
}

static uint32_t rnd(uint32_t *s)
{
  uint32_t x = *s;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *s = x;
}

/* 1,000 random frames (a tenth keep-alives) through one sender's cipher
 * and one receiver's: the framer still reads every length, and the
 * receiver gets every frame back byte for byte. */
static void test_round_trip(void **state)
{
  (void)state;
  enum { FRAMES = 1000, MAX = 600 };
  const gw_framing *f = top_framing();
  uint8_t *clear = malloc((size_t)FRAMES * MAX), *wire = malloc((size_t)FRAMES * MAX);
  size_t lens[FRAMES], n = 0;
  assert_non_null(clear);
  assert_non_null(wire);
  uint32_t seed = 0x9e3779b9;
  for (int k = 0; k < FRAMES; k++) {
    uint8_t *p = clear + n;
    size_t len;
    if (rnd(&seed) % 10 == 0) {
      len = 2;
      memcpy(p, KEEPALIVE, 2);
    } else {
      uint8_t body[MAX];
      size_t blen = rnd(&seed) % (MAX - 8);
      for (size_t j = 0; j < blen; j++)
        body[j] = (uint8_t)rnd(&seed);
      long l = gw_frame_build(f, GW_CLIENT, p, MAX, rnd(&seed) & 0xffff, body, blen);
      assert_true(l >= 8);
      len = (size_t)l;
    }
    lens[k] = len;
    n += len;
  }

  top_cipher tx, rx;
  cipher(&tx);
  cipher(&rx);
  memcpy(wire, clear, n);
  size_t off = 0, changed = 0;
  for (int k = 0; k < FRAMES; k++) {
    top_cipher_frame(&tx, wire + off, lens[k]);
    changed += memcmp(wire + off, clear + off, lens[k]) != 0;
    off += lens[k];
  }
  /* Nearly every bodied frame reads differently on the wire. */
  assert_true(changed > FRAMES * 8 / 10);
  off = 0;
  for (int k = 0; k < FRAMES; k++) {
    gw_frame_info info;
    assert_int_equal(gw_frame_next(f, GW_CLIENT, wire + off, n - off, &info), 1);
    assert_int_equal(info.len, lens[k]);
    top_cipher_frame(&rx, wire + off, info.len);
    off += info.len;
  }
  assert_int_equal(off, n);
  assert_int_equal(tx.i, rx.i);
  assert_memory_equal(wire, clear, n);
  free(clear);
  free(wire);
}

/* The hook in top_conn, over loopback: a top_conn with the cipher on both
 * ways against a raw socket. What the raw socket receives must be the
 * vectors; the encrypted vectors it sends, in pieces, must reach the
 * top_conn's frame callback clear, each frame decrypted once. */
typedef struct hook_test {
  uv_loop_t loop;
  uv_tcp_t listener, raw;
  uv_connect_t connect_req;
  uv_write_t writes[3];
  uv_timer_t pace, bound;
  int pieces_sent;
  top_conn conn;
  bool accepted, conn_closed, timed_out;
  uint8_t got_raw[256];  /* what the raw socket read */
  size_t raw_len;
  uint8_t frames[256];   /* what the top_conn handed over, frames in a row */
  size_t frames_len;
  unsigned nframes;
  uint32_t opcodes[8];
} hook_test;

static const uint8_t *hook_stream(size_t *n)
{
  static uint8_t s[sizeof SAY_HI + sizeof KEEPALIVE + sizeof SAY_CRAB];
  memcpy(s, SAY_HI_ENC, sizeof SAY_HI);
  memcpy(s + sizeof SAY_HI, KEEPALIVE, sizeof KEEPALIVE);
  memcpy(s + sizeof SAY_HI + sizeof KEEPALIVE, SAY_CRAB_ENC, sizeof SAY_CRAB);
  *n = sizeof s;
  return s;
}

static void hook_maybe_done(hook_test *t)
{
  size_t n;
  hook_stream(&n);
  if (t->raw_len < n || t->nframes < 3 || t->conn.state == TOP_CLOSED)
    return;
  top_conn_close(&t->conn, "done");
}

static void hook_frame(top_conn *c, const uint8_t *frame, const gw_frame_info *info)
{
  hook_test *t = TOP_CONTAINER_OF(c, hook_test, conn);
  if (t->frames_len + info->len <= sizeof t->frames) {
    memcpy(t->frames + t->frames_len, frame, info->len);
    t->frames_len += info->len;
  }
  if (t->nframes < 8)
    t->opcodes[t->nframes] = info->has_opcode ? info->opcode : UINT32_MAX;
  t->nframes++;
  hook_maybe_done(t);
}

static void hook_closed(top_conn *c)
{
  hook_test *t = TOP_CONTAINER_OF(c, hook_test, conn);
  t->conn_closed = true;
  uv_close((uv_handle_t *)&t->raw, NULL);
  uv_close((uv_handle_t *)&t->listener, NULL);
  uv_close((uv_handle_t *)&t->pace, NULL);
  uv_close((uv_handle_t *)&t->bound, NULL);
}

static const top_conn_cbs hook_cbs = {.frame = hook_frame, .closed = hook_closed};

static top_msg *msg_of(const uint8_t *p, size_t n)
{
  top_msg *m = malloc(sizeof *m + n);
  assert_non_null(m);
  m->refs = 1;
  m->len = n;
  memcpy(m->data, p, n);
  return m;
}

static void hook_send(hook_test *t, const uint8_t *p, size_t n)
{
  top_msg *m = msg_of(p, n);
  assert_int_equal(top_conn_send(&t->conn, m), 0);
  /* Shared messages stay clear: the connection encrypts its own copy. */
  assert_memory_equal(m->data, p, n);
  top_msg_unref(m);
}

static void hook_accept(uv_stream_t *listener, int status)
{
  hook_test *t = listener->data;
  assert_int_equal(status, 0);
  assert_false(t->accepted);
  t->accepted = true;
  assert_int_equal(top_conn_init(&t->loop, &t->conn, &hook_cbs, GW_CLIENT), 0);
  t->conn.ping_ms = t->conn.idle_ms = 0;
  assert_int_equal(top_conn_accept(&t->conn, listener), 0);
  /* Before the key, a bodied frame cannot go out encrypted. */
  top_conn_encrypt_sends(&t->conn);
  top_msg *m = msg_of(SAY_HI, sizeof SAY_HI);
  assert_int_equal(top_conn_send(&t->conn, m), UV_EINVAL);
  top_msg_unref(m);
  assert_int_equal(top_conn_set_key(&t->conn, (const uint8_t *)KEY, KEYLEN), 0);
  assert_int_equal(top_conn_set_key(&t->conn, (const uint8_t *)"x", 1), -EEXIST);
  top_conn_decrypt_reads(&t->conn);
  hook_send(t, SAY_HI, sizeof SAY_HI);
  hook_send(t, KEEPALIVE, sizeof KEEPALIVE);
  hook_send(t, SAY_CRAB, sizeof SAY_CRAB);
}

static void hook_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
  (void)hint;
  hook_test *t = h->data;
  *buf = uv_buf_init((char *)t->got_raw + t->raw_len,
                     (unsigned)(sizeof t->got_raw - t->raw_len));
}

static void hook_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  (void)buf;
  hook_test *t = s->data;
  if (nread > 0) {
    t->raw_len += (size_t)nread;
    hook_maybe_done(t);
  } else if (nread < 0) {
    uv_read_stop(s);
  }
}

static void hook_written(uv_write_t *req, int status)
{
  (void)req;
  /* Cancelled only by the close at the end, after everything arrived. */
  assert_true(status == 0 || status == UV_ECANCELED);
}

/* Sends the encrypted stream in three pieces, cut inside SAY_HI's body and
 * inside SAY_CRAB's, a pause apart, so frames arrive in parts. */
static void hook_pace(uv_timer_t *timer)
{
  hook_test *t = timer->data;
  static const size_t cuts[] = {0, 9, 20};
  size_t n;
  const uint8_t *s = hook_stream(&n);
  int k = t->pieces_sent;
  size_t from = cuts[k], to = k == 2 ? n : cuts[k + 1];
  uv_buf_t b = uv_buf_init((char *)s + from, (unsigned)(to - from));
  assert_int_equal(uv_write(&t->writes[k], (uv_stream_t *)&t->raw, &b, 1, hook_written), 0);
  if (++t->pieces_sent == 3)
    uv_timer_stop(timer);
}

static void hook_connected(uv_connect_t *req, int status)
{
  hook_test *t = req->data;
  assert_int_equal(status, 0);
  uv_tcp_nodelay(&t->raw, 1);
  assert_int_equal(uv_read_start((uv_stream_t *)&t->raw, hook_alloc, hook_read), 0);
  uv_timer_start(&t->pace, hook_pace, 0, 30);
}

static void hook_timeout(uv_timer_t *timer)
{
  hook_test *t = timer->data;
  t->timed_out = true;
  if (t->accepted)
    top_conn_close(&t->conn, "timeout");
  else
    hook_closed(&t->conn);
}

static void test_conn_hook(void **state)
{
  (void)state;
  hook_test *t = calloc(1, sizeof *t);
  assert_non_null(t);
  assert_int_equal(uv_loop_init(&t->loop), 0);
  uv_tcp_init(&t->loop, &t->listener);
  uv_tcp_init(&t->loop, &t->raw);
  uv_timer_init(&t->loop, &t->pace);
  uv_timer_init(&t->loop, &t->bound);
  t->listener.data = t->raw.data = t->pace.data = t->bound.data = t->connect_req.data = t;
  struct sockaddr_in sin;
  uv_ip4_addr("127.0.0.1", 0, &sin);
  assert_int_equal(uv_tcp_bind(&t->listener, (struct sockaddr *)&sin, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&t->listener, 4, hook_accept), 0);
  int len = sizeof sin;
  uv_tcp_getsockname(&t->listener, (struct sockaddr *)&sin, &len);
  assert_int_equal(uv_tcp_connect(&t->connect_req, &t->raw, (struct sockaddr *)&sin,
                                  hook_connected), 0);
  uv_timer_start(&t->bound, hook_timeout, 10000, 0);
  uv_run(&t->loop, UV_RUN_DEFAULT);
  assert_false(t->timed_out);
  assert_true(t->conn_closed);
  assert_int_equal(uv_loop_close(&t->loop), 0);

  /* The wire carried the vectors. */
  uint8_t want[sizeof SAY_HI + sizeof KEEPALIVE + sizeof SAY_CRAB];
  memcpy(want, SAY_HI_ENC, sizeof SAY_HI);
  memcpy(want + sizeof SAY_HI, KEEPALIVE, sizeof KEEPALIVE);
  memcpy(want + sizeof SAY_HI + sizeof KEEPALIVE, SAY_CRAB_ENC, sizeof SAY_CRAB);
  assert_int_equal(t->raw_len, sizeof want);
  assert_memory_equal(t->got_raw, want, sizeof want);
  /* The top_conn handed over the clear frames, with their commands. */
  memcpy(want, SAY_HI, sizeof SAY_HI);
  memcpy(want + sizeof SAY_HI + sizeof KEEPALIVE, SAY_CRAB, sizeof SAY_CRAB);
  assert_int_equal(t->nframes, 3);
  assert_int_equal(t->frames_len, sizeof want);
  assert_memory_equal(t->frames, want, sizeof want);
  assert_int_equal(t->opcodes[0], TOP_CM_SAY);
  assert_int_equal(t->opcodes[1], UINT32_MAX);
  assert_int_equal(t->opcodes[2], TOP_CM_SAY);
  free(t);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_init),
    cmocka_unit_test(test_known_answer),
    cmocka_unit_test(test_counter_rolls),
    cmocka_unit_test(test_keepalive_untouched),
    cmocka_unit_test(test_round_trip),
    cmocka_unit_test(test_conn_hook),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
