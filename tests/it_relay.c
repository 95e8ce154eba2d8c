/* it_relay.c: the relay through a real gangway process: bytes arrive intact
 * under concurrency, half-close both ways, upstream failures, backpressure
 * against a client that never reads, idle timeout, session limit, IPv6,
 * drain on SIGTERM. */
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

#include "itest.h"

#define CONFIG                                                                          \
  "return {\n"                                                                          \
  "  listeners = { { name = \"t\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\"," \
  " framing = \"%s\" } },\n"                                                            \
  "  timeouts = { connect_ms = 2000, idle_ms = %d, drain_ms = %d },\n"                  \
  "  limits = { max_sessions = %d },\n"                                                 \
  "  log = { session_lines_per_s = 0 }, -- every close reason is checked\n"               \
  "  control = \"\",\n"                                                                 \
  "}\n"

typedef struct {
  it_gangway g;
  it_server *up;
  int port, up_port;
} fixture;

static void start(fixture *f, it_server_kind kind, uint64_t param, const char *framing,
                  int idle_ms, int drain_ms, int max_sessions) {
  f->up = it_server_start(kind, param, &f->up_port);
  f->port = it_free_port();
  it_gangway_start(&f->g, f->port, CONFIG, f->port, f->up_port, framing, idle_ms, drain_ms,
                   max_sessions);
}

static void stop(fixture *f) {
  assert_int_equal(it_gangway_stop(&f->g, SIGTERM, 5000), 0);
  it_server_stop(f->up);
}

/* ---- 50 MB each way over 200 concurrent sessions ----------------------- */

#define NSESS 200
#define PER_SESSION (256 * 1024) /* 200 x 256 KiB = 50 MiB each way */

typedef struct {
  int fd;
  uint64_t seed;
  size_t sent, got;
  size_t first_bad; /* offset of the first wrong byte received, or SIZE_MAX */
  bool shut, eof;
} stream;

/* Byte `off` of session `seed`'s stream: any slice can be made or checked
 * on its own, whatever sizes send and recv happen to move. */
static inline uint8_t stream_byte(uint64_t seed, uint64_t off) {
  uint64_t x = (seed << 40) ^ off;
  x *= 0x9E3779B97F4A7C15ULL;
  return (uint8_t)(x >> 56);
}

static void run_streams(int port, const char *what) {
  static stream st[NSESS];
  static uint8_t buf[65536];
  for (int i = 0; i < NSESS; i++) {
    st[i] = (stream){.fd = it_connect(port), .seed = (uint64_t)i + 1, .first_bad = SIZE_MAX};
    assert_true(st[i].fd >= 0);
    fcntl(st[i].fd, F_SETFL, O_NONBLOCK);
  }
  struct pollfd pfd[NSESS];
  int done = 0;
  uint64_t deadline = it_now_ms() + 120000;
  while (done < NSESS && it_now_ms() < deadline) {
    for (int i = 0; i < NSESS; i++) {
      pfd[i] = (struct pollfd){.fd = st[i].eof ? -1 : st[i].fd, .events = POLLIN};
      if (st[i].sent < PER_SESSION) pfd[i].events |= POLLOUT;
    }
    if (poll(pfd, NSESS, 1000) <= 0) continue;
    for (int i = 0; i < NSESS; i++) {
      stream *s = &st[i];
      if (pfd[i].revents & POLLOUT) {
        size_t n = PER_SESSION - s->sent < sizeof buf ? PER_SESSION - s->sent : sizeof buf;
        for (size_t j = 0; j < n; j++) buf[j] = stream_byte(s->seed, s->sent + j);
        ssize_t k = send(s->fd, buf, n, MSG_NOSIGNAL);
        if (k > 0) s->sent += (size_t)k;
        else if (k < 0 && errno != EAGAIN) fail_msg("%s: send: %s", what, strerror(errno));
        if (s->sent == PER_SESSION && !s->shut) {
          shutdown(s->fd, SHUT_WR); /* half-close: the echo still flows back */
          s->shut = true;
        }
      }
      if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t k = recv(s->fd, buf, sizeof buf, 0);
        if (k > 0) {
          for (ssize_t j = 0; j < k && s->first_bad == SIZE_MAX; j++)
            if (buf[j] != stream_byte(s->seed, s->got + (size_t)j)) s->first_bad = s->got + (size_t)j;
          s->got += (size_t)k;
        } else if (k == 0) {
          s->eof = true;
          done++;
        } else if (errno != EAGAIN) {
          fail_msg("%s: session %d: recv: %s", what, i, strerror(errno));
        }
      }
    }
  }
  for (int i = 0; i < NSESS; i++) {
    if (st[i].got != PER_SESSION || st[i].first_bad != SIZE_MAX || !st[i].eof)
      fail_msg("%s: session %d: sent %zu, got %zu, first wrong byte at %zu, eof %d", what, i,
               st[i].sent, st[i].got, st[i].first_bad, st[i].eof);
    close(st[i].fd);
  }
}

static void test_bulk_200_sessions_raw(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_ECHO, 0, "raw", 0, 5000, 0);
  run_streams(f.port, "raw");
  assert_true(it_log_wait(&f.g, "reason=\"client closed\"", 2000));
  stop(&f);
}

/* ---- half-close ---------------------------------------------------------- */

static void test_half_close_client_first(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_ECHO, 0, "raw", 0, 5000, 0);
  int fd = it_connect(f.port);
  char msg[100000], back[100000];
  it_fill(msg, sizeof msg, 7);
  assert_int_equal(it_send_all(fd, msg, sizeof msg), 0);
  shutdown(fd, SHUT_WR);
  /* After our FIN the server side keeps talking: all of it arrives. */
  assert_int_equal(it_recv_exact(fd, back, sizeof back, 5000), sizeof back);
  assert_memory_equal(msg, back, sizeof msg);
  assert_int_equal(it_wait_eof(fd, 3000, NULL), 1);
  close(fd);
  stop(&f);
}

static void test_half_close_server_first(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_FLOOD, 300000, "raw", 0, 5000, 0); /* 300 KB then FIN */
  int fd = it_connect(f.port);
  static char buf[300000];
  assert_int_equal(it_recv_exact(fd, buf, sizeof buf, 5000), sizeof buf);
  for (size_t i = 0; i < sizeof buf; i += 4097) assert_int_equal((uint8_t)buf[i], (uint8_t)i);
  assert_int_equal(it_wait_eof(fd, 3000, NULL), 1);
  /* The client -> server direction still flows after the server's FIN. */
  char more[50000];
  it_fill(more, sizeof more, 3);
  assert_int_equal(it_send_all(fd, more, sizeof more), 0);
  uint64_t deadline = it_now_ms() + 3000;
  while (it_server_bytes_in(f.up) < sizeof more && it_now_ms() < deadline) usleep(5000);
  assert_int_equal(it_server_bytes_in(f.up), sizeof more);
  close(fd);
  assert_true(it_log_wait(&f.g, "reason=\"server closed\"", 3000));
  stop(&f);
}

/* ---- upstream failures -------------------------------------------------- */

static void test_upstream_refused(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_REFUSE, 0, "raw", 0, 5000, 0);
  int fd = it_connect(f.port);
  assert_true(fd >= 0);
  uint64_t t0 = it_now_ms();
  assert_int_equal(it_wait_eof(fd, 2000, NULL) != 0, 1); /* FIN or RST */
  assert_true(it_now_ms() - t0 < 1000);                  /* promptly */
  close(fd);
  assert_true(it_log_wait(&f.g, "connect failed: connection refused", 2000));
  assert_true(it_log_wait(&f.g, "reason=\"upstream connect failed: connection refused\"", 2000));
  stop(&f);
}

static void test_upstream_closes_mid_stream(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_CLOSE_AFTER, 1000, "raw", 0, 5000, 0);
  int fd = it_connect(f.port);
  char buf[4000] = {0};
  it_send_all(fd, buf, sizeof buf);
  assert_true(it_wait_eof(fd, 3000, NULL) != 0);
  close(fd);
  assert_true(it_log_wait(&f.g, "session 1 close", 3000));
  /* A second session still works: the listener is fine. */
  int fd2 = it_connect(f.port);
  assert_true(fd2 >= 0);
  close(fd2);
  stop(&f);
}

/* ---- backpressure -------------------------------------------------------- */

static void test_client_never_reads(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_FLOOD, 0, "raw", 0, 500, 0); /* floods forever */
  long rss0 = it_rss_kb(f.g.pid);
  int fd = it_connect(f.port);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  /* Let the upstream flood for 2 s while we never read. */
  usleep(2000 * 1000);
  long rss1 = it_rss_kb(f.g.pid);
  usleep(500 * 1000);
  long rss2 = it_rss_kb(f.g.pid);
  fprintf(stderr, "RSS before %ld KiB, after 2 s %ld KiB, after 2.5 s %ld KiB\n", rss0, rss1, rss2);
  /* Documented bound (docs/config.md): write_high_water (256 KiB) queued
   * plus two 64 KiB read buffers per direction; 1 MiB leaves room for
   * allocator slack. Measured here: about 330 KiB. */
  assert_true(rss2 - rss0 < 1024);
  assert_true(rss2 - rss1 < 256); /* and it is not growing */
  close(fd);
  stop(&f);
}

/* ---- timeouts and limits ---------------------------------------------- */

static void test_idle_timeout(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_ECHO, 0, "raw", 300, 5000, 0);
  int fd = it_connect(f.port);
  uint64_t t0 = it_now_ms();
  /* Activity keeps it alive... */
  for (int i = 0; i < 4; i++) {
    it_echo_byte(fd, 'x');
    usleep(150 * 1000);
  }
  /* ...silence ends it. */
  assert_true(it_wait_eof(fd, 2000, NULL) != 0);
  assert_true(it_now_ms() - t0 >= 700); /* last activity at ~450 ms, + 300 */
  close(fd);
  assert_true(it_log_wait(&f.g, "reason=\"idle timeout after 300 ms\"", 1000));
  stop(&f);
}

static void test_session_limit(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_ECHO, 0, "raw", 0, 5000, 2);
  int a = it_connect(f.port), b = it_connect(f.port);
  it_echo_byte(a, 'x');
  it_echo_byte(b, 'x');
  int x = it_connect(f.port); /* the third is closed at once */
  assert_true(it_wait_eof(x, 2000, NULL) != 0);
  assert_true(it_log_wait(&f.g, "session limit 2 reached", 1000));
  close(x);
  it_echo_byte(a, 'x'); /* the first two are untouched */
  close(a);
  close(b);
  stop(&f);
}

static void test_ipv6_listener(void **state) {
  (void)state;
  it_server *up;
  int up_port, port = it_free_port();
  up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_start(&g, 0,
                   "return { listeners = { { name = \"v6\", listen = \"[::1]:%d\", "
                   "upstream = \"127.0.0.1:%d\" } }, control = \"\" }\n",
                   port, up_port);
  assert_true(it_log_wait(&g, "listening on [::1]", 5000));
  int fd = it_connect_addr("::1", port);
  assert_true(fd >= 0);
  char m[] = "over ipv6", back[sizeof m];
  it_send_all(fd, m, sizeof m);
  assert_int_equal(it_recv_exact(fd, back, sizeof back, 2000), sizeof back);
  assert_memory_equal(m, back, sizeof m);
  close(fd);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

/* ---- SIGTERM drain -------------------------------------------------------- */

static void test_drain_lets_sessions_finish(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_ECHO, 0, "raw", 0, 5000, 0);
  int fd = it_connect(f.port);
  it_echo_byte(fd, 'a');
  kill(f.g.pid, SIGTERM);
  assert_true(it_log_wait(&f.g, "draining", 2000));
  /* No new sessions... */
  assert_true(it_connect(f.port) < 0);
  /* ...but the open one still relays. */
  it_echo_byte(fd, 'b');
  close(fd); /* the last session ends: gangway exits 0 at once */
  assert_int_equal(it_gangway_stop(&f.g, 0, 3000), 0);
  it_server_stop(f.up);
}

static void test_drain_timeout_closes_the_rest(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_ECHO, 0, "raw", 0, 400, 0);
  int fd = it_connect(f.port);
  it_echo_byte(fd, 'a');
  uint64_t t0 = it_now_ms();
  kill(f.g.pid, SIGTERM);
  assert_true(it_wait_eof(fd, 3000, NULL) != 0);
  uint64_t took = it_now_ms() - t0;
  assert_true(took >= 350 && took < 2000);
  assert_int_equal(it_gangway_stop(&f.g, 0, 3000), 0);
  close(fd);
  it_server_stop(f.up);
}

/* A second SIGTERM while draining closes every session at once and exits 0
 * (the first drain's completion must not run again). */
static void test_second_signal_quits_now(void **state) {
  (void)state;
  fixture f;
  start(&f, IT_ECHO, 0, "raw", 0, 10000, 0);
  int fd = it_connect(f.port);
  it_echo_byte(fd, 'a');
  kill(f.g.pid, SIGTERM);
  assert_true(it_log_wait(&f.g, "draining", 2000));
  kill(f.g.pid, SIGTERM);
  assert_true(it_wait_eof(fd, 2000, NULL) != 0);
  assert_int_equal(it_gangway_stop(&f.g, 0, 3000), 0);
  close(fd);
  it_server_stop(f.up);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bulk_200_sessions_raw),
      cmocka_unit_test(test_half_close_client_first),
      cmocka_unit_test(test_half_close_server_first),
      cmocka_unit_test(test_upstream_refused),
      cmocka_unit_test(test_upstream_closes_mid_stream),
      cmocka_unit_test(test_client_never_reads),
      cmocka_unit_test(test_idle_timeout),
      cmocka_unit_test(test_session_limit),
      cmocka_unit_test(test_ipv6_listener),
      cmocka_unit_test(test_drain_lets_sessions_finish),
      cmocka_unit_test(test_drain_timeout_closes_the_rest),
      cmocka_unit_test(test_second_signal_quits_now),
  };
  return cmocka_run_group_tests_name("relay", tests, NULL, NULL);
}
