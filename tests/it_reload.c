/* it_reload.c: live reload under load. 100 sessions stream `top` frames
 * through a counting handler while gangway is reloaded 20 times, through
 * `gangway reload`, alternating two versions of the script with visibly
 * different behaviour and one broken version among them. Asserts: no session
 * dropped, no frame lost or duplicated (sequence numbers), session.state
 * survives (the handler's count matches the sequence), every good reload
 * switches behaviour, the broken one changes nothing. Prints the reload
 * latency and the worst frame round trip seen. Also: SIGHUP, a failed reload
 * keeps the old scripts, config reload adds and removes listeners, watch. */
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

#define NSESS 100
#define DEPTH 8         /* frames in flight per session */
#define NRELOADS 20
#define BROKEN_AT 9     /* reload number that ships a broken script */
#define OPCODE 1000
#define FRAME_LEN 64
#define MAX_FRAMES 20000

static uint64_t us_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Generation `gen` of the counting script. Variant A marks byte 18 with
 * 0xAA, variant B with 0xBB and also flips byte 19: visibly different. */
static void write_script(const char *dir, int gen, bool broken) {
  if (broken) {
    it_write(dir, "count.lua",
             "local gw = require \"gangway\"\n"
             "gw.on(\"client\", %d, function(pkt, session)\n"
             "  pkt:set_u16(16, %d)\n"
             "end\n", /* unclosed call: a syntax error on line 4 */
             OPCODE, gen);
    return;
  }
  bool b = gen % 2 == 0;
  it_write(dir, "count.lua",
           "local gw = require \"gangway\"\n"
           "gw.on(\"client\", %d, function(pkt, session)\n"
           "  local st = session.state\n"
           "  st.count = (st.count or 0) + 1\n"
           "  pkt:set_u32(12, st.count)\n"
           "  pkt:set_u16(16, %d)\n"
           "  pkt:set_u8(18, %s)\n"
           "%s"
           "end)\n"
           "gw.on_reload(function() gw.shared.reloads = (gw.shared.reloads or 0) + 1 end)\n",
           OPCODE, gen, b ? "0xBB" : "0xAA", b ? "  pkt:set_u8(19, 255 - pkt:u8(19))\n" : "");
}

typedef struct {
  int fd;
  uint32_t next_seq, got;
  uint64_t sent_at[MAX_FRAMES];
  uint16_t gen_of[MAX_FRAMES];
  uint8_t buf[FRAME_LEN];
  size_t have;
} sess;

static gw_framing top;

static void send_frame(sess *s) {
  uint8_t body[FRAME_LEN - 8] = {0};
  body[0] = (uint8_t)(s->next_seq >> 24), body[1] = (uint8_t)(s->next_seq >> 16);
  body[2] = (uint8_t)(s->next_seq >> 8), body[3] = (uint8_t)s->next_seq;
  body[11] = 0x11; /* byte 19 of the frame */
  uint8_t fr[FRAME_LEN];
  long n = gw_frame_build(&top, GW_CLIENT, fr, sizeof fr, OPCODE, body, sizeof body);
  assert_int_equal(n, FRAME_LEN);
  s->sent_at[s->next_seq] = us_now();
  assert_int_equal(it_send_all(s->fd, fr, FRAME_LEN), 0);
  s->next_seq++;
}

static uint32_t rd32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t worst_rtt_us;

/* Checks one echoed frame: in order, counted once, marked by a generation. */
static void check_frame(sess *s, int idx, const uint8_t *fr) {
  uint32_t seq = rd32(fr + 8), count = rd32(fr + 12);
  uint16_t gen = (uint16_t)(fr[16] << 8 | fr[17]);
  if (seq != s->got) fail_msg("session %d: expected frame %u, got %u (lost or duplicated)", idx, s->got, seq);
  if (count != seq + 1) fail_msg("session %d: frame %u counted as %u: session.state lost?", idx, seq, count);
  uint8_t mark = fr[18], flip = fr[19];
  bool b = gen % 2 == 0;
  if (mark != (b ? 0xBB : 0xAA) || flip != (b ? 0xEE : 0x11))
    fail_msg("session %d: frame %u of generation %u has marks %02x %02x", idx, seq, gen, mark, flip);
  s->gen_of[seq] = gen;
  uint64_t rtt = us_now() - s->sent_at[seq];
  if (rtt > worst_rtt_us) worst_rtt_us = rtt;
  s->got++;
}

static void pump(sess *ss, int n, bool send_more, int timeout_ms) {
  struct pollfd p[NSESS];
  for (int i = 0; i < n; i++) p[i] = (struct pollfd){.fd = ss[i].fd, .events = POLLIN};
  if (poll(p, (nfds_t)n, timeout_ms) <= 0) return;
  for (int i = 0; i < n; i++) {
    sess *s = &ss[i];
    if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    uint8_t buf[8192];
    ssize_t k = recv(s->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (k == 0) fail_msg("session %d was dropped after %u frames", i, s->got);
    if (k < 0) {
      if (errno == EAGAIN) continue;
      fail_msg("session %d: %s", i, strerror(errno));
    }
    for (ssize_t j = 0; j < k; j++) {
      s->buf[s->have++] = buf[j];
      if (s->have == FRAME_LEN) {
        check_frame(s, i, s->buf);
        s->have = 0;
      }
    }
    while (send_more && s->next_seq - s->got < DEPTH && s->next_seq < MAX_FRAMES) send_frame(s);
  }
}

/* gangway on `top` with generation 1 of the counting script, in front of an
 * echo server; `tail` ends the config table. Returns the listen port. */
static int start_counting(it_gangway *g, it_server **up, const char *tail) {
  gw_framing_preset("top", &top);
  int up_port, port = it_free_port();
  *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway_prepare(g);
  write_script(g->dir, 1, false);
  it_write(g->dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", "
           "upstream = \"127.0.0.1:%d\", framing = \"top\", scripts = { \"count.lua\" } } },\n"
           "  %s }\n",
           port, up_port, tail);
  it_gangway_run(g, port);
  return port;
}

static void test_twenty_reloads_under_load(void **state) {
  (void)state;
  it_server *up;
  it_gangway g;
  int port = start_counting(&g, &up, "control = \"gangway.sock\"");

  static sess ss[NSESS];
  for (int i = 0; i < NSESS; i++) {
    memset(&ss[i], 0, sizeof ss[i]);
    ss[i].fd = it_connect(port);
    assert_true(ss[i].fd >= 0);
    while (ss[i].next_seq < DEPTH) send_frame(&ss[i]);
  }
  const char *args[] = {"reload", "-c", g.config, NULL};
  uint32_t first_after[NRELOADS + 2][NSESS]; /* next seq when reload k returned */
  int gen = 1;
  uint64_t reload_us_max = 0, reload_us_sum = 0;
  int good = 0;
  for (int k = 1; k <= NRELOADS; k++) {
    uint64_t until = us_now() + 100000;
    while (us_now() < until) pump(ss, NSESS, true, 10);
    bool broken = k == BROKEN_AT;
    write_script(g.dir, broken ? 999 : gen + 1, broken);
    char *out = NULL;
    uint64_t t0 = us_now();
    int rc = it_run_gangway(&out, args);
    uint64_t took = us_now() - t0;
    if (broken) {
      if (rc != 1 || !strstr(out, "count.lua:5:"))
        fail_msg("broken reload: exit %d, output: %s", rc, out);
    } else {
      if (rc != 0 || strncmp(out, "ok: generation", 14) != 0)
        fail_msg("reload %d: exit %d, output: %s", k, rc, out);
      gen++;
      good++;
      reload_us_sum += took;
      if (took > reload_us_max) reload_us_max = took;
    }
    free(out);
    for (int i = 0; i < NSESS; i++) first_after[gen][i] = ss[i].next_seq;
  }
  /* The last generation handles traffic too; then stop sending and collect
   * every echo. */
  uint64_t until = us_now() + 100000;
  while (us_now() < until) pump(ss, NSESS, true, 10);
  until = us_now() + 10000000;
  bool all = false;
  while (!all && us_now() < until) {
    pump(ss, NSESS, false, 50);
    all = true;
    for (int i = 0; i < NSESS; i++) all &= ss[i].got == ss[i].next_seq;
  }
  assert_true(all);

  /* Generations seen: only good ones, each of them, in order per session,
   * and every frame sent after reload k returned has generation >= k. */
  bool seen[NRELOADS + 2] = {0};
  uint64_t frames = 0;
  for (int i = 0; i < NSESS; i++) {
    uint16_t last = 0;
    for (uint32_t q = 0; q < ss[i].got; q++) {
      uint16_t gq = ss[i].gen_of[q];
      if (gq == 999) fail_msg("the broken script ran");
      if (gq < last) fail_msg("session %d: generation went back from %u to %u at frame %u", i, last, gq, q);
      last = gq;
      seen[gq] = true;
    }
    for (int k = 2; k <= gen; k++)
      for (uint32_t q = first_after[k][i]; q < ss[i].got; q++)
        if (ss[i].gen_of[q] < k) fail_msg("session %d: frame %u sent after generation %d was active ran generation %u", i, q, k, ss[i].gen_of[q]);
    frames += ss[i].got;
    close(ss[i].fd);
  }
  for (int k = 1; k <= gen; k++)
    if (!seen[k]) fail_msg("generation %d never handled a frame", k);
  assert_int_equal(good, NRELOADS - 1);
  /* gangway's own figure: from the command's arrival to the new handlers
   * being active (config and scripts loaded, swapped). */
  char *log = it_slurp(g.log);
  double inside_max = 0, inside_sum = 0;
  int inside_n = 0;
  for (char *p = log; (p = strstr(p, " active after ")); p++) {
    double ms = strtod(p + 14, NULL);
    inside_sum += ms;
    inside_n++;
    if (ms > inside_max) inside_max = ms;
  }
  free(log);
  assert_int_equal(inside_n, good);
  assert_true(it_log_wait(&g, "reload (control socket) failed, still running generation", 100));
  fprintf(stderr,
          "reload under load: %d sessions, %llu frames, %d good reloads + 1 broken; "
          "command to new handlers active (inside gangway) mean %.2f ms, max %.2f ms; "
          "`gangway reload` round trip mean %.1f ms, max %.1f ms; "
          "worst frame round trip %.1f ms\n",
          NSESS, (unsigned long long)frames, good, inside_sum / inside_n, inside_max,
          reload_us_sum / 1000.0 / good, reload_us_max / 1000.0, worst_rtt_us / 1000.0);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

/* SIGHUP reloads too; a config that fails keeps everything as it was, and a
 * good one adds and removes listeners. */
static void test_sighup_and_listeners(void **state) {
  (void)state;
  int up_port, p1 = it_free_port(), p2 = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"a\", listen = \"127.0.0.1:%d\", "
           "upstream = \"127.0.0.1:%d\" } }, control = \"\" }\n", p1, up_port);
  it_gangway_run(&g, p1);
  int a = it_connect(p1);
  assert_true(a >= 0);
  assert_true(it_connect(p2) < 0);

  /* A broken config: nothing changes. */
  it_write(g.dir, "config.lua", "return { listeners = { { name = \"a\", listen = 5 } } }\n");
  kill(g.pid, SIGHUP);
  assert_true(it_log_wait(&g, "reload (SIGHUP) failed, still running generation 1", 3000));
  it_echo_byte(a, 'x');

  /* Listener a moves out, b comes in; a's live session keeps working. */
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"b\", listen = \"127.0.0.1:%d\", "
           "upstream = \"127.0.0.1:%d\" } }, control = \"\" }\n", p2, up_port);
  kill(g.pid, SIGHUP);
  assert_true(it_log_wait(&g, "reload (SIGHUP): generation 2 active", 3000));
  int b = it_connect(p2);
  assert_true(b >= 0);
  assert_true(it_connect(p1) < 0);
  it_echo_byte(b, 'x');
  it_echo_byte(a, 'x');
  close(a);
  close(b);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

/* A config reload moves the upstream and the framing for new sessions;
 * live sessions keep theirs. */
static void test_upstream_and_framing_for_new_sessions(void **state) {
  (void)state;
  int pa, pb, port = it_free_port();
  it_server *a = it_server_start(IT_ECHO, 0, &pa), *b = it_server_start(IT_ECHO, 0, &pb);
  it_gangway g;
  it_gangway_prepare(&g);
  const char *cfg = "return { listeners = { { name = \"l\", listen = \"127.0.0.1:%d\", "
                    "upstream = \"127.0.0.1:%d\", framing = \"%s\" } }, control = \"\" }\n";
  it_write(g.dir, "config.lua", cfg, port, pa, "raw");
  it_gangway_run(&g, port);
  int old = it_connect(port);
  uint8_t bad[] = {0x00, 0x01, 0x02}, back[3];
  it_send_all(old, bad, sizeof bad);
  assert_int_equal(it_recv_exact(old, back, 3, 2000), 3); /* raw: anything goes */

  it_write(g.dir, "config.lua", cfg, port, pb, "top");
  kill(g.pid, SIGHUP);
  assert_true(it_log_wait(&g, "reload (SIGHUP): generation 2 active", 3000));

  /* The live session: still raw, still to upstream a. */
  uint64_t a_before = it_server_bytes_in(a);
  it_send_all(old, bad, sizeof bad);
  assert_int_equal(it_recv_exact(old, back, 3, 2000), 3);
  assert_int_equal(it_server_bytes_in(a), a_before + 3);
  /* A new session: top framing, upstream b. */
  int fresh = it_connect(port);
  uint8_t ka[] = {0x00, 0x02};
  it_send_all(fresh, ka, sizeof ka);
  assert_int_equal(it_recv_exact(fresh, back, 2, 2000), 2);
  assert_int_equal(it_server_bytes_in(b), 2);
  it_send_all(fresh, bad, sizeof bad); /* length 1: a protocol error now */
  assert_true(it_wait_eof(fresh, 2000, NULL) != 0);
  assert_int_equal(it_server_bytes_in(b), 2);
  close(fresh);
  close(old);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(a);
  it_server_stop(b);
}

/* Reloading idle_ms to 0 (no idle timeout) leaves live sessions alone: the
 * timer they armed under the old value must not close them. */
static void test_idle_timeout_turned_off(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  const char *cfg = "return { listeners = { { name = \"l\", listen = \"127.0.0.1:%d\", "
                    "upstream = \"127.0.0.1:%d\" } }, timeouts = { idle_ms = %d }, control = \"\" }\n";
  it_write(g.dir, "config.lua", cfg, port, up_port, 400);
  it_gangway_run(&g, port);
  int fd = it_connect(port);
  it_echo_byte(fd, 'x');
  it_write(g.dir, "config.lua", cfg, port, up_port, 0);
  kill(g.pid, SIGHUP);
  assert_true(it_log_wait(&g, "generation 2 active", 2000));
  assert_int_equal(it_wait_eof(fd, 1000, NULL), 0); /* still open after 2 x 400 ms */
  it_echo_byte(fd, 'x');
  close(fd);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

/* watch = true: saving a script reloads it. */
static void test_watch(void **state) {
  (void)state;
  it_server *up;
  it_gangway g;
  int port = start_counting(&g, &up, "control = \"\", watch = true");
  static sess s;
  memset(&s, 0, sizeof s);
  s.fd = it_connect(port);
  send_frame(&s);
  while (s.got < 1) pump(&s, 1, false, 1000);
  assert_int_equal(s.gen_of[0], 1);
  write_script(g.dir, 2, false);
  assert_true(it_log_wait(&g, "reload (file change): generation 2 active", 3000));
  send_frame(&s);
  while (s.got < 2) pump(&s, 1, false, 1000);
  assert_int_equal(s.gen_of[1], 2);
  close(s.fd);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_twenty_reloads_under_load),
      cmocka_unit_test(test_sighup_and_listeners),
      cmocka_unit_test(test_upstream_and_framing_for_new_sessions),
      cmocka_unit_test(test_idle_timeout_turned_off),
      cmocka_unit_test(test_watch),
  };
  return cmocka_run_group_tests_name("reload", tests, NULL, NULL);
}
