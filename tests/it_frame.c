/* it_frame.c: framing through a real gangway: every preset relays frames of
 * every size intact whatever the read boundaries (frames bigger than a pool
 * buffer included), and a malformed frame closes only its own session, with
 * one log line naming the session, side, stream offset and reason, while 50
 * other sessions keep streaming intact. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "itest.h"

static void start(it_gangway *g, it_server **up, int *port, const char *framing) {
  int up_port;
  *up = it_server_start(IT_ECHO, 0, &up_port);
  *port = it_free_port();
  it_gangway_start(g, *port,
                   "return { listeners = { { name = \"f\", listen = \"127.0.0.1:%d\", "
                   "upstream = \"127.0.0.1:%d\", framing = %s } }, control = \"\" }\n",
                   *port, up_port, framing);
}

/* Appends one valid frame of total length about `len` to buf. */
static size_t put_frame(const gw_framing *f, uint8_t *buf, size_t cap, size_t body_len,
                        uint64_t seed) {
  static uint8_t body[1 << 20];
  it_fill(body, body_len, seed);
  uint32_t opcode = f->opcode_size ? (uint32_t)(seed & 0xff) : 0;
  long n = gw_frame_build(f, GW_CLIENT, buf, cap, opcode, body, body_len);
  if (n < 0) fail_msg("gw_frame_build(%s, %zu): %ld", f->name, body_len, n);
  return (size_t)n;
}

/* A stream of frames of mixed sizes for framing f, up to about total bytes. */
static size_t make_stream(const gw_framing *f, uint8_t *buf, size_t cap, size_t total,
                          uint64_t seed, size_t big) {
  size_t len = 0, i = 0;
  size_t max_body = f->max_frame[GW_CLIENT] - f->header_len - 8;
  while (len < total) {
    size_t body;
    switch (i % 5) {
    case 0: body = 0; break;
    case 1: body = 1 + (seed + i) % 50; break;
    case 2: body = 100 + (seed * 7 + i) % 1400; break;
    case 3: body = big; break; /* bigger than one 64 KiB read, if allowed */
    default: body = (seed + i * 13) % 9000; break;
    }
    if (body > max_body) body = max_body;
    if (len + body + 64 > cap) break;
    len += put_frame(f, buf + len, cap - len, body, seed * 1000 + i);
    i++;
  }
  return len;
}

/* Sends buf through port in random-sized chunks while reading the echo;
 * asserts the echo is identical. */
static void roundtrip(int port, const uint8_t *buf, size_t len, uint64_t seed) {
  int fd = it_connect(port);
  assert_true(fd >= 0);
  fcntl(fd, F_SETFL, O_NONBLOCK);
  uint8_t *back = malloc(len);
  size_t sent = 0, got = 0;
  uint64_t x = seed | 1, deadline = it_now_ms() + 30000;
  while (got < len && it_now_ms() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
    poll(&p, 1, 100);
    if (p.revents & POLLOUT) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      size_t n = 1 + x % 3000; /* cut frames anywhere */
      if (n > len - sent) n = len - sent;
      ssize_t k = send(fd, buf + sent, n, MSG_NOSIGNAL);
      if (k > 0) sent += (size_t)k;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t k = recv(fd, back + got, len - got, 0);
      if (k == 0 || (k < 0 && errno != EAGAIN)) break;
      if (k > 0) got += (size_t)k;
    }
  }
  assert_int_equal(got, len);
  assert_memory_equal(back, buf, len);
  free(back);
  close(fd);
}

static void preset_roundtrip(const char *name, const char *framing_lua, size_t big) {
  gw_framing f;
  assert_int_equal(gw_framing_preset(name, &f), 0);
  size_t cap = 4 << 20;
  uint8_t *buf = malloc(cap);
  size_t len = make_stream(&f, buf, cap, 2 << 20, 42, big);
  it_gangway g;
  it_server *up;
  int port;
  start(&g, &up, &port, framing_lua);
  roundtrip(port, buf, len, 1);
  roundtrip(port, buf, len, 2);
  assert_false(it_log_wait(&g, "protocol error", 0));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
  free(buf);
}

static void test_top(void **s) { (void)s; preset_roundtrip("top", "\"top\"", 16000); }
static void test_u16be(void **s) { (void)s; preset_roundtrip("u16be", "\"u16be\"", 60000); }
static void test_u32be(void **s) { (void)s; preset_roundtrip("u32be", "\"u32be\"", 300000); }
static void test_u32le(void **s) { (void)s; preset_roundtrip("u32le", "\"u32le\"", 200000); }
static void test_mysql(void **s) { (void)s; preset_roundtrip("mysql", "\"mysql\"", 100000); }
static void test_varint(void **s) { (void)s; preset_roundtrip("varint", "\"varint\"", 140000); }

/* ---- a malformed frame among 50 healthy sessions ------------------------- */

#define NHEALTHY 50

static void test_malformed_frame_closes_only_its_session(void **state) {
  (void)state;
  gw_framing f;
  gw_framing_preset("top", &f);
  it_gangway g;
  it_server *up;
  int port;
  start(&g, &up, &port, "\"top\"");

  static uint8_t streams[NHEALTHY][200000];
  size_t len[NHEALTHY], sent[NHEALTHY] = {0}, got[NHEALTHY] = {0};
  static uint8_t back[NHEALTHY][200000];
  int fds[NHEALTHY];
  for (int i = 0; i < NHEALTHY; i++) {
    len[i] = make_stream(&f, streams[i], sizeof streams[i], 180000, (uint64_t)i + 7, 3000);
    fds[i] = it_connect(port);
    assert_true(fds[i] >= 0);
    fcntl(fds[i], F_SETFL, O_NONBLOCK);
  }
  int bad = it_connect(port);
  /* 3 good frames (a keep-alive among them), then a length of 1. */
  uint8_t good[64];
  size_t glen = put_frame(&f, good, sizeof good, 5, 1);
  good[glen++] = 0x00, good[glen++] = 0x02;
  glen += put_frame(&f, good + glen, sizeof good - glen, 0, 2);
  uint8_t evil[] = {0x00, 0x01, 0xde, 0xad};
  bool bad_sent = false;
  size_t total = 0, total_got = 0;
  for (int i = 0; i < NHEALTHY; i++) total += len[i];
  uint64_t deadline = it_now_ms() + 60000;
  while (total_got < total && it_now_ms() < deadline) {
    struct pollfd p[NHEALTHY];
    for (int i = 0; i < NHEALTHY; i++)
      p[i] = (struct pollfd){.fd = fds[i], .events = POLLIN | (sent[i] < len[i] ? POLLOUT : 0)};
    poll(p, NHEALTHY, 100);
    for (int i = 0; i < NHEALTHY; i++) {
      if (p[i].revents & POLLOUT) {
        size_t n = len[i] - sent[i] < 1500 ? len[i] - sent[i] : 1500;
        ssize_t k = send(fds[i], streams[i] + sent[i], n, MSG_NOSIGNAL);
        if (k > 0) sent[i] += (size_t)k;
      }
      if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t k = recv(fds[i], back[i] + got[i], len[i] - got[i], 0);
        if (k == 0 || (k < 0 && errno != EAGAIN))
          fail_msg("healthy session %d ended after %zu of %zu bytes", i, got[i], len[i]);
        if (k > 0) got[i] += (size_t)k, total_got += (size_t)k;
      }
    }
    if (!bad_sent && total_got > total / 2) {
      /* Halfway through everybody's streams, one session misbehaves. */
      assert_int_equal(it_send_all(bad, good, glen), 0);
      uint8_t echo[64];
      assert_int_equal(it_recv_exact(bad, echo, glen, 2000), glen);
      assert_memory_equal(echo, good, glen);
      assert_int_equal(it_send_all(bad, evil, sizeof evil), 0);
      bad_sent = true;
    }
  }
  assert_true(bad_sent);
  for (int i = 0; i < NHEALTHY; i++) {
    assert_int_equal(got[i], len[i]);
    assert_memory_equal(back[i], streams[i], len[i]);
    close(fds[i]);
  }
  /* The bad one was closed, nothing of the bad frame went upstream. */
  size_t extra = 0;
  assert_true(it_wait_eof(bad, 3000, &extra) != 0);
  assert_int_equal(extra, 0);
  close(bad);
  char expect[160];
  snprintf(expect, sizeof expect, "protocol error from client side at stream offset %zu: ", glen);
  assert_true(it_log_wait(&g, expect, 2000));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  char *log = it_slurp(g.log);
  free(log);
  it_server_stop(up);
}

/* A length over max_frame is refused as soon as the length field is read,
 * before any body arrives. */
static void test_too_large_fails_fast(void **state) {
  (void)state;
  it_gangway g;
  it_server *up;
  int port;
  start(&g, &up, &port, "\"top\"");
  int fd = it_connect(port);
  uint8_t hdr[] = {0x50, 0x00}; /* 20480 > 16384 from the client */
  assert_int_equal(it_send_all(fd, hdr, sizeof hdr), 0);
  assert_true(it_wait_eof(fd, 2000, NULL) != 0);
  close(fd);
  assert_true(it_log_wait(&g, "protocol error from client side at stream offset 0", 2000));
  assert_int_equal(it_server_bytes_in(up), 0);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

/* A custom framing table from config.lua reaches the relay. */
static void test_custom_framing_table(void **state) {
  (void)state;
  it_gangway g;
  it_server *up;
  int port;
  start(&g, &up, &port,
        "{ length_offset = 1, length_size = 2, byte_order = \"little\", "
        "length_adjust = 0, max_frame = 100 }");
  int fd = it_connect(port);
  /* [tag][len LE][body]: 1 + 2 + 3 bytes */
  uint8_t fr[] = {0x7f, 0x03, 0x00, 'a', 'b', 'c'}, back[sizeof fr];
  assert_int_equal(it_send_all(fd, fr, sizeof fr), 0);
  assert_int_equal(it_recv_exact(fd, back, sizeof back, 2000), sizeof back);
  assert_memory_equal(back, fr, sizeof fr);
  uint8_t big[] = {0x7f, 0xff, 0x00}; /* 258 > 100 */
  assert_int_equal(it_send_all(fd, big, sizeof big), 0);
  assert_true(it_wait_eof(fd, 2000, NULL) != 0);
  close(fd);
  assert_true(it_log_wait(&g, "at stream offset 6", 2000));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_top),
      cmocka_unit_test(test_u16be),
      cmocka_unit_test(test_u32be),
      cmocka_unit_test(test_u32le),
      cmocka_unit_test(test_mysql),
      cmocka_unit_test(test_varint),
      cmocka_unit_test(test_malformed_frame_closes_only_its_session),
      cmocka_unit_test(test_too_large_fails_fast),
      cmocka_unit_test(test_custom_framing_table),
  };
  return cmocka_run_group_tests_name("framing through gangway", tests, NULL, NULL);
}
