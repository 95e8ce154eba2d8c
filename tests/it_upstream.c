/* it_upstream.c: upstream pools through a real gangway: failover when the
 * first server refuses, round robin over three servers, least sessions,
 * hash stickiness per client address, health checks (down after fall, up
 * after rise), backups, session:route from on_connect, host names resolved
 * on the loop (localhost) and one that never resolves while a bystander
 * streams, and a reload that swaps the pool while sessions keep their
 * server.
 *
 * The echo servers here are the test's own (one thread each, on a port
 * below the ephemeral range that they can give up and take again), so a
 * server can be stopped and restarted where health checks look. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "frame.h"
#include "itest.h"

/* ---- ports and echo servers ------------------------------------------- */

/* A port below the ephemeral range (so no outgoing connection of another
 * test takes it) that nothing listens on now. */
static int low_port(void) {
  static int next;
  if (!next) next = 20000 + (int)(getpid() % 5000) * 2;
  for (int i = 0; i < 500; i++) {
    int port = next++;
    if (next >= 32000) next = 20000;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0) close(fd);
    if (ok) return port;
  }
  fail_msg("no free port below the ephemeral range");
  return -1;
}

#define ECHO_CONNS 64

typedef struct echo {
  int port;
  int lfd, wake[2];
  pthread_t thread;
  bool running;
  atomic_int accepted;
  atomic_ullong bytes;
} echo;

static void *echo_main(void *arg) {
  echo *e = arg;
  struct pollfd p[ECHO_CONNS + 2];
  int n = 0;
  int conns[ECHO_CONNS];
  for (;;) {
    p[0] = (struct pollfd){.fd = e->wake[0], .events = POLLIN};
    p[1] = (struct pollfd){.fd = e->lfd, .events = POLLIN};
    for (int i = 0; i < n; i++) p[i + 2] = (struct pollfd){.fd = conns[i], .events = POLLIN};
    if (poll(p, (nfds_t)n + 2, 1000) < 0) continue;
    if (p[0].revents) break;
    if (p[1].revents & POLLIN) {
      int fd = accept4(e->lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd >= 0 && n < ECHO_CONNS) {
        conns[n++] = fd;
        atomic_fetch_add(&e->accepted, 1);
      } else if (fd >= 0) {
        close(fd);
      }
    }
    for (int i = n - 1; i >= 0; i--) {
      if (!p[i + 2].revents) continue;
      char buf[8192];
      ssize_t k = recv(conns[i], buf, sizeof buf, 0);
      if (k > 0) {
        atomic_fetch_add(&e->bytes, (unsigned long long)k);
        if (it_send_all(conns[i], buf, (size_t)k) == 0) continue;
      }
      close(conns[i]);
      conns[i] = conns[--n];
    }
  }
  for (int i = 0; i < n; i++) close(conns[i]);
  return NULL;
}

/* Starts (or restarts, port already set) an echo server on 127.0.0.1. */
static void echo_start(echo *e) {
  if (!e->port) e->port = low_port();
  e->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(e->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e->port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(e->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(e->lfd, 128) < 0)
    fail_msg("echo server cannot listen on %d: %s", e->port, strerror(errno));
  if (pipe(e->wake) < 0) fail_msg("pipe");
  e->running = true;
  pthread_create(&e->thread, NULL, echo_main, e);
}

/* Stops it: the port refuses connections until echo_start again. */
static void echo_stop(echo *e) {
  if (!e->running) return;
  if (write(e->wake[1], "x", 1) != 1) fail_msg("wake");
  pthread_join(e->thread, NULL);
  close(e->lfd);
  close(e->wake[0]);
  close(e->wake[1]);
  e->running = false;
}

/* ---- sessions ------------------------------------------------------------ */

/* Opens a session from src through gangway's port, checks one byte comes
 * back, and returns which of the n servers took it (by their accept
 * counts), with its socket in *fd (closed when fd is NULL). */
static int session_on(echo *ups, int n, const char *src, int port, int *fd) {
  int before[8];
  for (int i = 0; i < n; i++) before[i] = atomic_load(&ups[i].accepted);
  int c = src ? it_connect_from(src, "127.0.0.1", port) : it_connect(port);
  assert_true(c >= 0);
  it_echo_byte(c, 'u');
  int which = -1;
  for (int i = 0; i < n; i++)
    if (atomic_load(&ups[i].accepted) != before[i]) {
      assert_int_equal(which, -1); /* one server only */
      which = i;
    }
  assert_int_not_equal(which, -1);
  if (fd) *fd = c;
  else close(c);
  return which;
}

/* A counter or gauge of the stats, for the series whose labels contain
 * "server":"<server>" (and "result":"<result>" when set); -1 if absent. */
static long long stat_of(it_gangway *g, const char *family, const char *server, const char *result) {
  char path[256], out[256 * 1024];
  snprintf(path, sizeof path, "%s/ctl.sock", g->dir);
  if (it_control(path, "stats", out, sizeof out, 3000) <= 0) fail_msg("gangway stats did not answer");
  char key[160];
  snprintf(key, sizeof key, "\"%s\":{", family);
  const char *f = strstr(out, key);
  if (!f) return -1;
  const char *end = strstr(f + strlen(key), "]}");
  char want[160];
  snprintf(want, sizeof want, "\"server\":\"%s\"", server);
  for (const char *p = strstr(f, want); p && (!end || p < end); p = strstr(p + 1, want)) {
    if (result) {
      char r[64];
      snprintf(r, sizeof r, "\"result\":\"%s\"", result);
      const char *close = strchr(p, '}');
      const char *rp = strstr(p, r);
      if (!rp || rp > close) continue;
    }
    const char *v = strstr(p, "\"value\":");
    if (v) return atoll(v + 8);
  }
  return -1;
}

static char *addr_of(const echo *e, char *buf, size_t len) {
  snprintf(buf, len, "127.0.0.1:%d", e->port);
  return buf;
}

#define HEAD                                                                        \
  "return {\n"                                                                      \
  "  timeouts = { connect_ms = 3000 },\n"                                           \
  "  log = { session_lines_per_s = 0 },\n"                                         \
  "  control = \"ctl.sock\",\n"

/* ---- failover -------------------------------------------------------------- */

static void test_failover(void **state) {
  (void)state;
  echo b = {0};
  echo_start(&b);
  int refused = low_port(), port = low_port();
  it_gangway g;
  it_gangway_start(&g, port,
                   HEAD "  listeners = { { name = \"game\", listen = \"127.0.0.1:%d\",\n"
                   "    upstream = { \"127.0.0.1:%d\", \"127.0.0.1:%d\" } } } }\n",
                   port, refused, b.port);
  for (int i = 0; i < 4; i++) assert_int_equal(session_on(&b, 1, NULL, port, NULL), 0);
  assert_int_equal(atomic_load(&b.accepted), 4);
  char a[64];
  snprintf(a, sizeof a, "127.0.0.1:%d", refused);
  /* round robin put every other session first on the refusing one */
  assert_int_equal(stat_of(&g, "gangway_upstream_connect_failures_total", a, NULL), 2);
  assert_int_equal(stat_of(&g, "gangway_upstream_connect_failures_total", addr_of(&b, a, sizeof a),
                           NULL), 0);
  assert_true(it_log_count(&g, "connect failed: connection refused", NULL) == 2);
  assert_int_equal(it_log_count(&g, "upstream connect failed", NULL), 0); /* no session lost */
  /* every server refuses: the session ends, once each was tried */
  echo_stop(&b);
  int c = it_connect(port);
  assert_true(c >= 0);
  assert_int_equal(it_wait_eof(c, 5000, NULL), 1);
  close(c);
  assert_true(it_log_wait(&g, "reason=\"upstream connect failed: connection refused\"", 3000));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

/* ---- policies --------------------------------------------------------------- */

#define THREE                                                                         \
  "  listeners = { { name = \"game\", listen = \"127.0.0.1:%d\",\n"                 \
  "    upstream = { servers = { \"127.0.0.1:%d\", \"127.0.0.1:%d\", \"127.0.0.1:%d\" },\n" \
  "                 balance = \"%s\" } } } }\n"

static void start_three(it_gangway *g, echo *ups, int *port, const char *balance) {
  for (int i = 0; i < 3; i++) echo_start(&ups[i]);
  *port = low_port();
  it_gangway_start(g, *port, HEAD THREE, *port, ups[0].port, ups[1].port, ups[2].port, balance);
}

static void stop_three(it_gangway *g, echo *ups) {
  assert_int_equal(it_gangway_stop(g, SIGTERM, 5000), 0);
  for (int i = 0; i < 3; i++) echo_stop(&ups[i]);
}

static void test_round_robin(void **state) {
  (void)state;
  echo ups[3] = {0};
  it_gangway g;
  int port, fds[9], count[3] = {0};
  start_three(&g, ups, &port, "round_robin");
  for (int i = 0; i < 9; i++) count[session_on(ups, 3, NULL, port, &fds[i])]++;
  for (int i = 0; i < 3; i++) assert_int_equal(count[i], 3);
  char a[64];
  for (int i = 0; i < 3; i++)
    assert_int_equal(stat_of(&g, "gangway_upstream_sessions", addr_of(&ups[i], a, sizeof a), NULL), 3);
  for (int i = 0; i < 9; i++) close(fds[i]);
  stop_three(&g, ups);
}

static void test_least_sessions(void **state) {
  (void)state;
  echo ups[3] = {0};
  it_gangway g;
  int port, fds[8], on[8], count[3] = {0};
  start_three(&g, ups, &port, "least_sessions");
  for (int i = 0; i < 6; i++) count[on[i] = session_on(ups, 3, NULL, port, &fds[i])]++;
  for (int i = 0; i < 3; i++) assert_int_equal(count[i], 2);
  /* the sessions on the second server end: the next two go there */
  for (int i = 0; i < 6; i++)
    if (on[i] == 1) close(fds[i]);
  char a[64];
  addr_of(&ups[1], a, sizeof a);
  uint64_t t0 = it_now_ms();
  while (stat_of(&g, "gangway_upstream_sessions", a, NULL) != 0 && it_now_ms() - t0 < 5000)
    usleep(20000);
  assert_int_equal(stat_of(&g, "gangway_upstream_sessions", a, NULL), 0);
  assert_int_equal(session_on(ups, 3, NULL, port, &fds[6]), 1);
  assert_int_equal(session_on(ups, 3, NULL, port, &fds[7]), 1);
  for (int i = 0; i < 8; i++)
    if (i >= 6 || on[i] != 1) close(fds[i]);
  stop_three(&g, ups);
}

static void test_hash_sticky(void **state) {
  (void)state;
  echo ups[3] = {0};
  it_gangway g;
  int port, seen[3] = {0};
  start_three(&g, ups, &port, "hash");
  for (int c = 2; c <= 13; c++) {
    char src[32];
    snprintf(src, sizeof src, "127.0.0.%d", c);
    int first = session_on(ups, 3, src, port, NULL);
    for (int k = 0; k < 3; k++) assert_int_equal(session_on(ups, 3, src, port, NULL), first);
    seen[first]++;
  }
  /* twelve addresses over three servers: more than one is used */
  assert_true((seen[0] > 0) + (seen[1] > 0) + (seen[2] > 0) >= 2);
  stop_three(&g, ups);
}

/* ---- health checks and backups ------------------------------------------ */

static bool wait_log(it_gangway *g, const char *needle, const char *needle2, int n, int ms) {
  uint64_t t0 = it_now_ms();
  while (it_log_count(g, needle, needle2) < n) {
    if (it_now_ms() - t0 > (uint64_t)ms) return false;
    usleep(20000);
  }
  return true;
}

static void test_health_and_backup(void **state) {
  (void)state;
  echo ups[3] = {0};
  for (int i = 0; i < 3; i++) echo_start(&ups[i]);
  int port = low_port();
  it_gangway g;
  it_gangway_start(&g, port,
                   HEAD "  listeners = { { name = \"game\", listen = \"127.0.0.1:%d\",\n"
                   "    upstream = { servers = { { name = \"a\", addr = \"127.0.0.1:%d\" },\n"
                   "                             { name = \"b\", addr = \"127.0.0.1:%d\" },\n"
                   "                             { name = \"spare\", addr = \"127.0.0.1:%d\", backup = true } },\n"
                   "      health = { interval_ms = 100, timeout_ms = 100, rise = 2, fall = 2 } } } } }\n",
                   port, ups[0].port, ups[1].port, ups[2].port);
  int count[3] = {0};
  for (int i = 0; i < 6; i++) count[session_on(ups, 3, NULL, port, NULL)]++;
  assert_int_equal(count[0], 3);
  assert_int_equal(count[1], 3);
  assert_int_equal(count[2], 0); /* the backup rests */

  echo_stop(&ups[0]);
  assert_true(wait_log(&g, "server a (", "is down: 2 failed checks in a row", 1, 3000));
  for (int i = 0; i < 4; i++) assert_int_equal(session_on(ups, 3, NULL, port, NULL), 1);
  /* a down server is not tried: no session failed on it */
  assert_int_equal(stat_of(&g, "gangway_upstream_connect_failures_total", "a", NULL), 0);
  assert_true(stat_of(&g, "gangway_upstream_checks_total", "a", "failed") >= 2);
  assert_int_equal(stat_of(&g, "gangway_upstream_up", "a", NULL), 0);

  echo_stop(&ups[1]);
  assert_true(wait_log(&g, "server b (", "is down", 1, 3000));
  for (int i = 0; i < 3; i++) assert_int_equal(session_on(ups, 3, NULL, port, NULL), 2);

  echo_start(&ups[0]); /* the same port again */
  assert_true(wait_log(&g, "server a (", "is up: 2 check(s) passed", 1, 3000));
  assert_int_equal(stat_of(&g, "gangway_upstream_up", "a", NULL), 1);
  for (int i = 0; i < 3; i++) assert_int_equal(session_on(ups, 3, NULL, port, NULL), 0);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  echo_stop(&ups[0]);
  echo_stop(&ups[2]);
}

/* ---- session:route ------------------------------------------------------------ */

static void test_route(void **state) {
  (void)state;
  echo ups[3] = {0};
  for (int i = 0; i < 3; i++) echo_start(&ups[i]);
  int port = low_port();
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "route.lua",
           "local gw = require \"gangway\"\n"
           "gw.on_connect(function(session)\n"
           "  local before = session.upstream\n"
           "  if session.client:match(\"^127%%.0%%.0%%.3:\") then session:route(\"eu-3\") end\n"
           "  if session.client:match(\"^127%%.0%%.0%%.4:\") then session:route(\"127.0.0.1:%d\") end\n"
           "  if session.client:match(\"^127%%.0%%.0%%.5:\") then\n"
           "    session:sleep(30) -- as a Redis lookup would: the connect waits for on_connect\n"
           "    session:route(\"eu-1\")\n"
           "  end\n"
           "  local ok, err = pcall(session.route, session, \"nope\")\n"
           "  gw.log.info(\"route\", before, session.upstream, ok, err)\n"
           "end)\n"
           "gw.on_close(function(session) gw.log.info(\"ended on\", session.upstream) end)\n",
           ups[1].port);
  it_write(g.dir, "config.lua",
           HEAD "  listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", scripts = { \"route.lua\" },\n"
           "    upstream = { { name = \"eu-1\", addr = \"127.0.0.1:%d\" },\n"
           "                 { name = \"eu-2\", addr = \"127.0.0.1:%d\" },\n"
           "                 { name = \"eu-3\", addr = \"127.0.0.1:%d\" } } } } }\n",
           port, ups[0].port, ups[1].port, ups[2].port);
  it_gangway_run(&g, port);
  for (int i = 0; i < 4; i++) assert_int_equal(session_on(ups, 3, "127.0.0.3", port, NULL), 2);
  for (int i = 0; i < 2; i++) assert_int_equal(session_on(ups, 3, "127.0.0.4", port, NULL), 1);
  for (int i = 0; i < 3; i++) assert_int_equal(session_on(ups, 3, "127.0.0.5", port, NULL), 0);
  assert_true(it_log_count(&g, "eu-3 false", "no server \"nope\" in listener game's upstream "
                           "(\"eu-1\", \"eu-2\", \"eu-3\")") == 4);
  assert_true(it_log_count(&g, "eu-2 false", "session:route") == 2);
  /* a route to a server that refuses fails over like any connect */
  echo_stop(&ups[2]);
  int which = session_on(ups, 3, "127.0.0.3", port, NULL);
  assert_true(which == 0 || which == 1);
  assert_int_equal(stat_of(&g, "gangway_upstream_connect_failures_total", "eu-3", NULL), 1);
  /* session.upstream names where the session went, after a failover too */
  const char *went = which == 0 ? "ended on eu-1" : "ended on eu-2";
  int want = which == 0 ? 4 : 3; /* 3 routed to eu-1 and 2 to eu-2 before */
  for (int i = 0; i < 60 && it_log_count(&g, went, NULL) < want; i++) usleep(50 * 1000);
  assert_int_equal(it_log_count(&g, went, NULL), want);
  assert_int_equal(it_log_count(&g, "ended on eu-3", NULL), 4);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  echo_stop(&ups[0]);
  echo_stop(&ups[1]);
}

/* ---- names ----------------------------------------------------------------------- */

static void test_names(void **state) {
  (void)state;
  echo up = {0};
  echo_start(&up);
  int good = low_port(), bad = low_port(), mixed = low_port();
  it_gangway g;
  it_gangway_start(&g, good,
                   HEAD "  listeners = {\n"
                   "    { name = \"good\", listen = \"127.0.0.1:%d\", upstream = \"localhost:%d\" },\n"
                   "    { name = \"bad\", listen = \"127.0.0.1:%d\", upstream = {\n"
                   "      servers = { { name = \"nowhere\", addr = \"nothing.invalid:%d\" } }, resolve_ms = 100 } },\n"
                   "    { name = \"mixed\", listen = \"127.0.0.1:%d\",\n"
                   "      upstream = { \"nothing.invalid:%d\", \"127.0.0.1:%d\" } } } }\n",
                   good, up.port, bad, up.port, mixed, up.port, up.port);
  gw_framing u16be;
  assert_int_equal(gw_framing_preset("u16be", &u16be), 0);
  it_bystander *by = it_bystander_start("127.0.0.2", good, &u16be, 0);
  assert_true(it_log_wait(&g, "resolved to 127.0.0.1", 3000));
  /* sessions toward a name that never resolves end, the others go on */
  uint64_t t0 = it_now_ms();
  int n = 0;
  for (; n < 10 || it_now_ms() - t0 < 1000; n++) {
    int c = it_connect(bad);
    assert_true(c >= 0);
    assert_int_equal(it_wait_eof(c, 10000, NULL), 1);
    close(c);
    assert_int_equal(session_on(&up, 1, NULL, mixed, NULL), 0);
    usleep(5000);
  }
  it_bystander_result res;
  it_bystander_stop(by, &res);
  char inputs[64];
  snprintf(inputs, sizeof inputs, "%d sessions to nothing.invalid", n);
  it_bystander_report("unresolvable upstream", inputs, -1, &res, 1000);
  assert_true(res.frames >= 20); /* it streamed all along */
  /* resolved again every resolve_ms, logged once while the error stays */
  assert_true(stat_of(&g, "gangway_upstream_resolve_failures_total", "nowhere", NULL) >= 5);
  assert_int_equal(it_log_count(&g, "server nowhere: cannot resolve \"nothing.invalid\"", NULL), 1);
  assert_int_equal(stat_of(&g, "gangway_upstream_up", "nowhere", NULL), 0);
  assert_true(it_log_count(&g, "reason=\"upstream connect failed", NULL) >= n);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  echo_stop(&up);
}

/* ---- reload ------------------------------------------------------------------------ */

static void test_reload(void **state) {
  (void)state;
  echo ups[2] = {0};
  for (int i = 0; i < 2; i++) echo_start(&ups[i]);
  int port = low_port();
  it_gangway g;
  const char *fmt = HEAD "  listeners = { { name = \"game\", listen = \"127.0.0.1:%d\",\n"
                         "    upstream = \"127.0.0.1:%d\" } } }\n";
  it_gangway_start(&g, port, fmt, port, ups[0].port);
  int s1;
  assert_int_equal(session_on(ups, 2, NULL, port, &s1), 0);
  it_write(g.dir, "config.lua", fmt, port, ups[1].port);
  char path[256], out[512];
  snprintf(path, sizeof path, "%s/ctl.sock", g.dir);
  assert_true(it_control(path, "reload", out, sizeof out, 3000) > 0 && strstr(out, "ok"));
  int s2;
  assert_int_equal(session_on(ups, 2, NULL, port, &s2), 1);
  /* the old session still talks to its server */
  unsigned long long b0 = atomic_load(&ups[0].bytes);
  it_echo_byte(s1, 'x');
  assert_int_equal(atomic_load(&ups[0].bytes), b0 + 1);
  it_echo_byte(s2, 'y');
  char a[64];
  assert_int_equal(stat_of(&g, "gangway_upstream_sessions", addr_of(&ups[0], a, sizeof a), NULL), 1);
  close(s1);
  close(s2);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  for (int i = 0; i < 2; i++) echo_stop(&ups[i]);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_failover),
    cmocka_unit_test(test_round_robin),
    cmocka_unit_test(test_least_sessions),
    cmocka_unit_test(test_hash_sticky),
    cmocka_unit_test(test_health_and_backup),
    cmocka_unit_test(test_route),
    cmocka_unit_test(test_names),
    cmocka_unit_test(test_reload),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
