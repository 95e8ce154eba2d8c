/* it_admin.c: the admin HTTP endpoint of a real gangway (issue 13): GET
 * /metrics in Prometheus text that promtool accepts and whose counters
 * follow the traffic sent, the token on every change, 404/405, GET
 * /sessions and DELETE /sessions/{id} (that session only), GET
 * /upstreams (the pools' servers, up or down and why), POST /reload,
 * script endpoints, no endpoint without `admin`, and answers at the
 * open-files limit. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "itest.h"

#define TOKEN "it-admin-token-0123456789"

/* ---- a small HTTP client: one request per connection ---- */

typedef struct http_res {
  int status;
  char *head; /* status line and headers */
  char *body;
  char raw[256 * 1024];
} http_res;

/* Sends one request (token NULL: no Authorization) and reads the answer to
 * its end. Returns the status, -1 when nothing answered. */
static int http(int port, const char *method, const char *path, const char *token,
                const char *body, http_res *r) {
  memset(r, 0, sizeof *r - sizeof r->raw);
  r->raw[0] = '\0';
  int fd = it_connect(port);
  if (fd < 0) return r->status = -1;
  char req[2048];
  int n = snprintf(req, sizeof req,
                   "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s%s"
                   "Content-Length: %zu\r\n\r\n%s",
                   method, path, token ? "Authorization: Bearer " : "", token ? token : "",
                   token ? "\r\n" : "", body ? strlen(body) : 0, body ? body : "");
  size_t got = 0;
  if (it_send_all(fd, req, (size_t)n) == 0)
    got = it_recv_exact(fd, r->raw, sizeof r->raw - 1, 5000);
  close(fd);
  r->raw[got] = '\0';
  char *sep = strstr(r->raw, "\r\n\r\n");
  if (!got || !sep || sscanf(r->raw, "HTTP/1.%*d %d", &r->status) != 1) return r->status = -1;
  *sep = '\0';
  r->head = r->raw;
  r->body = sep + 4;
  return r->status;
}

static void expect_status(int port, const char *method, const char *path, const char *token,
                          const char *body, int want, const char *needle) {
  static http_res r;
  int st = http(port, method, path, token, body, &r);
  if (st != want || (needle && !strstr(r.body, needle) && !strstr(r.head, needle)))
    fail_msg("%s %s: status %d (want %d), want \"%s\" in:\n%s\n\n%s", method, path, st, want,
             needle ? needle : "", r.head ? r.head : "", r.body ? r.body : "");
}

/* The value of one series line ("name{labels} value") in a /metrics text,
 * -1 if absent. */
static long long metric(const char *text, const char *series) {
  size_t n = strlen(series);
  for (const char *p = text; (p = strstr(p, series)); p += n)
    if ((p == text || p[-1] == '\n') && p[n] == ' ') return strtoll(p + n + 1, NULL, 10);
  return -1;
}

/* ---- top frames ---- */

#define FRAME_LEN 20
static void top_frame(uint8_t *f, uint16_t opcode, uint32_t seq) {
  memset(f, 0, FRAME_LEN);
  f[0] = 0, f[1] = FRAME_LEN;
  f[2] = 0x80;
  f[6] = (uint8_t)(opcode >> 8), f[7] = (uint8_t)opcode;
  memcpy(f + 8, &seq, sizeof seq);
  memcpy(f + 12, "payload!", 8);
}

/* One frame through an echo upstream: sent, and back whole. */
static void round_trip(int fd, uint16_t opcode, uint32_t seq) {
  uint8_t f[FRAME_LEN], back[FRAME_LEN];
  top_frame(f, opcode, seq);
  assert_int_equal(it_send_all(fd, f, sizeof f), 0);
  assert_int_equal(it_recv_exact(fd, back, sizeof back, 3000), sizeof back);
  assert_memory_equal(f, back, sizeof f);
}

/* ---- fixture ---- */

typedef struct fx {
  it_gangway g;
  it_server *up;
  int port, admin;
} fx;

#define SCRIPT                                                                          \
  "local gw = require \"gangway\"\n"                                                    \
  "gw.on(\"client\", 1, function() end)\n"                                              \
  "gw.on(\"client\", 2, function() return gw.DROP end)\n"                               \
  "gw.on(\"client\", 3, function(pkt, session)\n"                                       \
  "  session:send_to_client(gw.packet(7, gw.writer():u32(1):u32(2):u32(3)))\n"         \
  "end)\n"                                                                              \
  "local flags = {}\n"                                                                  \
  "gw.admin(\"flags\", function(req)\n"                                                 \
  "  if req.method == \"POST\" then flags[req.body.name] = req.body.value end\n"        \
  "  if req.method == \"DELETE\" then flags = {} end\n"                                 \
  "  return { flags = flags }\n"                                                        \
  "end)\n"

static void fx_start(fx *f, const char *admin_extra) {
  f->up = it_server_start(IT_ECHO, 0, &f->port);
  int up_port = f->port;
  f->port = it_free_port();
  f->admin = it_free_port();
  it_gangway_prepare(&f->g);
  it_write(f->g.dir, "admin.lua", SCRIPT);
  it_write(f->g.dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\", framing = \"top\", scripts = { \"admin.lua\" } } },\n"
           "  control = \"ctl.sock\", admin = { listen = \"127.0.0.1:%d\", token = \"" TOKEN
           "\"%s } }\n",
           f->port, up_port, f->admin, admin_extra);
  it_gangway_run(&f->g, f->port);
  assert_true(it_log_wait(&f->g, "admin: listening on http://127.0.0.1:", 2000));
}

static void fx_stop(fx *f) {
  assert_int_equal(it_gangway_stop(&f->g, SIGTERM, 10000), 0);
  it_server_stop(f->up);
}

/* ---- tests ---- */

/* Counters move with traffic, and every line passes promtool. */
static void test_metrics(void **state) {
  (void)state;
  fx f;
  fx_start(&f, "");
  int fd = it_connect(f.port);
  assert_true(fd >= 0);
  enum { N1 = 10, N2 = 4, N3 = 3 };
  for (uint32_t i = 0; i < N1; i++) round_trip(fd, 1, i);
  uint8_t fr[FRAME_LEN];
  for (uint32_t i = 0; i < N2; i++) { /* dropped: nothing comes back */
    top_frame(fr, 2, i);
    assert_int_equal(it_send_all(fd, fr, sizeof fr), 0);
  }
  /* opcode 3: echoed, and an injected frame of opcode 7 (8 + 12 bytes)
   * toward the client, in some order. */
  for (uint32_t i = 0; i < N3; i++) {
    top_frame(fr, 3, i);
    assert_int_equal(it_send_all(fd, fr, sizeof fr), 0);
    uint8_t two[2 * FRAME_LEN];
    assert_int_equal(it_recv_exact(fd, two, sizeof two, 3000), sizeof two);
  }
  http_res *r = calloc(1, sizeof *r);
  assert_int_equal(http(f.admin, "GET", "/metrics", NULL, NULL, r), 200);
  assert_non_null(strstr(r->head, "text/plain; version=0.0.4"));
  const char *m = r->body;
  const long long frames_in = N1 + N2 + N3;
  assert_int_equal(metric(m, "gangway_frames_total{listener=\"game\",side=\"client\"}"), frames_in);
  assert_int_equal(metric(m, "gangway_frames_total{listener=\"game\",side=\"server\"}"), N1 + N3);
  assert_int_equal(metric(m, "gangway_bytes_total{listener=\"game\",side=\"client\"}"),
                   frames_in * FRAME_LEN);
  assert_int_equal(metric(m, "gangway_bytes_total{listener=\"game\",side=\"server\"}"),
                   (N1 + N3) * FRAME_LEN);
  assert_int_equal(metric(m, "gangway_sessions_open{listener=\"game\"}"), 1);
  assert_int_equal(metric(m, "gangway_sessions_total{listener=\"game\"}"), 1);
  assert_int_equal(metric(m, "gangway_handler_frames_total{listener=\"game\"}"), frames_in);
  assert_int_equal(
      metric(m, "gangway_frames_dropped_total{listener=\"game\",side=\"client\",opcode=\"2\"}"), N2);
  assert_int_equal(
      metric(m, "gangway_frames_passed_total{listener=\"game\",side=\"client\",opcode=\"1\"}"), N1);
  assert_int_equal(
      metric(m, "gangway_frames_injected_total{listener=\"game\",side=\"server\",opcode=\"7\"}"), N3);
  assert_int_equal(metric(m, "gangway_handler_seconds_count{listener=\"game\"}"), frames_in);
  assert_int_equal(metric(m, "gangway_script_generation"), 1);
  assert_true(metric(m, "gangway_lua_memory_bytes") > 0);
  assert_true(metric(m, "process_open_fds") > 0);
  /* promtool, from Debian's prometheus package. */
  char path[256], cmd[600];
  snprintf(path, sizeof path, "%s/metrics.txt", f.g.dir);
  it_write(f.g.dir, "metrics.txt", "%s", m);
  if (system("command -v promtool >/dev/null 2>&1") != 0) {
    free(r);
    close(fd);
    fx_stop(&f);
    fail_msg("promtool is not installed (Debian's prometheus package)");
  }
  snprintf(cmd, sizeof cmd, "promtool check metrics < %s > %s/promtool.out 2>&1", path, f.g.dir);
  int rc = system(cmd);
  if (rc != 0) {
    snprintf(path, sizeof path, "%s/promtool.out", f.g.dir);
    char *why = it_slurp(path);
    fail_msg("promtool check metrics failed:\n%s", why ? why : "");
  }
  /* A protocol error is counted, and the session goes. */
  uint8_t bad[8] = {0, 1}; /* length 1: under top's min_frame */
  assert_int_equal(it_send_all(fd, bad, sizeof bad), 0);
  assert_int_equal(it_wait_eof(fd, 3000, NULL), 1);
  close(fd);
  assert_true(it_log_wait(&f.g, "protocol error", 2000));
  assert_int_equal(http(f.admin, "GET", "/metrics", NULL, NULL, r), 200);
  assert_int_equal(metric(r->body, "gangway_protocol_errors_total{listener=\"game\"}"), 1);
  assert_int_equal(metric(r->body, "gangway_sessions_open{listener=\"game\"}"), 0);
  free(r);
  fx_stop(&f);
}

/* Changes need the token; reads do not (unless token_for_reads); 404 and
 * 405 with Allow. */
static void test_auth_and_routes(void **state) {
  (void)state;
  fx f;
  fx_start(&f, "");
  expect_status(f.admin, "POST", "/reload", NULL, NULL, 401, "Authorization: Bearer");
  expect_status(f.admin, "POST", "/reload", "wrong-token-0123456789", NULL, 401, NULL);
  expect_status(f.admin, "DELETE", "/sessions/1", NULL, NULL, 401, NULL);
  expect_status(f.admin, "POST", "/scripts/flags", NULL, "{\"name\":\"x\",\"value\":1}", 401, NULL);
  expect_status(f.admin, "GET", "/nothing", NULL, NULL, 404, NULL);
  expect_status(f.admin, "PUT", "/metrics", TOKEN, NULL, 405, "Allow: GET");
  expect_status(f.admin, "GET", "/reload", NULL, NULL, 405, "Allow: POST");
  expect_status(f.admin, "GET", "/metrics", NULL, NULL, 200, "gangway_sessions_open");
  expect_status(f.admin, "GET", "/sessions", NULL, NULL, 200, "[]");
  expect_status(f.admin, "DELETE", "/sessions/12345", TOKEN, NULL, 404, "no open session 12345");
  expect_status(f.admin, "DELETE", "/sessions/abc", TOKEN, NULL, 400, NULL);
  /* Script endpoints. */
  expect_status(f.admin, "POST", "/scripts/flags", TOKEN, "{\"name\":\"x\",\"value\":1}", 200,
                "{\"flags\":{\"x\":1}}");
  expect_status(f.admin, "GET", "/scripts/flags", NULL, NULL, 200, "{\"flags\":{\"x\":1}}");
  expect_status(f.admin, "POST", "/scripts/flags", TOKEN, "not json", 400, NULL);
  expect_status(f.admin, "GET", "/scripts/nope", NULL, NULL, 404, NULL);
  /* POST /reload answers what `gangway reload` prints. */
  expect_status(f.admin, "POST", "/reload", TOKEN, NULL, 200,
                "{\"ok\":true,\"result\":\"ok: generation 2 active after ");
  static http_res r;
  assert_int_equal(http(f.admin, "GET", "/metrics", NULL, NULL, &r), 200);
  assert_int_equal(metric(r.body, "gangway_reloads_total{result=\"ok\"}"), 1);
  assert_int_equal(metric(r.body, "gangway_script_generation"), 2);
  /* A broken script: the reload fails with the same words. */
  it_write(f.g.dir, "admin.lua", "local x = nil\nx.y = 1\n");
  expect_status(f.admin, "POST", "/reload", TOKEN, NULL, 422,
                "{\"ok\":false,\"result\":\"error: ");
  assert_int_equal(http(f.admin, "GET", "/metrics", NULL, NULL, &r), 200);
  assert_int_equal(metric(r.body, "gangway_reloads_total{result=\"failed\"}"), 1);
  assert_int_equal(metric(r.body, "gangway_admin_requests_total{code=\"401\"}"), 4);
  fx_stop(&f);
}

static void test_token_for_reads(void **state) {
  (void)state;
  fx f;
  fx_start(&f, ", token_for_reads = true");
  expect_status(f.admin, "GET", "/metrics", NULL, NULL, 401, NULL);
  expect_status(f.admin, "GET", "/sessions", NULL, NULL, 401, NULL);
  expect_status(f.admin, "GET", "/metrics", TOKEN, NULL, 200, "gangway_info{version=");
  fx_stop(&f);
}

/* GET /sessions lists both; DELETE closes that one only. */
static void test_sessions(void **state) {
  (void)state;
  fx f;
  fx_start(&f, "");
  int victim = it_connect(f.port), bystander = it_connect(f.port);
  assert_true(victim >= 0 && bystander >= 0);
  round_trip(victim, 1, 1);
  round_trip(victim, 1, 2);
  round_trip(bystander, 1, 1);
  struct sockaddr_in me;
  socklen_t len = sizeof me;
  assert_int_equal(getsockname(victim, (struct sockaddr *)&me, &len), 0);
  char client[64];
  snprintf(client, sizeof client, "127.0.0.1:%d", ntohs(me.sin_port));
  static http_res r;
  assert_int_equal(http(f.admin, "GET", "/sessions", NULL, NULL, &r), 200);
  json_error_t jerr;
  json_t *list = json_loads(r.body, 0, &jerr);
  if (!list) fail_msg("GET /sessions is not JSON (%s): %s", jerr.text, r.body);
  assert_int_equal(json_array_size(list), 2);
  json_int_t id = 0;
  size_t i;
  json_t *s;
  json_array_foreach(list, i, s) {
    assert_string_equal(json_string_value(json_object_get(s, "listener")), "game");
    assert_true(json_is_null(json_object_get(s, "player")));
    assert_true(json_integer_value(json_object_get(s, "age_ms")) >= 0);
    if (strcmp(json_string_value(json_object_get(s, "client")), client) != 0) continue;
    id = json_integer_value(json_object_get(s, "id"));
    assert_int_equal(json_integer_value(json_object_get(s, "bytes_client")), 2 * FRAME_LEN);
    assert_int_equal(json_integer_value(json_object_get(s, "bytes_server")), 2 * FRAME_LEN);
    assert_int_equal(json_integer_value(json_object_get(s, "frames_client")), 2);
    assert_int_equal(json_integer_value(json_object_get(s, "frames_server")), 2);
    assert_int_equal(json_integer_value(json_object_get(s, "last_opcode_client")), 1);
    assert_true(json_is_null(json_object_get(s, "last_opcode_server"))); /* no handler there */
    assert_non_null(strstr(json_string_value(json_object_get(s, "upstream")), "127.0.0.1:"));
  }
  json_decref(list);
  if (!id) fail_msg("the victim %s is not in GET /sessions: %s", client, r.body);
  char path[64], want[64];
  snprintf(path, sizeof path, "/sessions/%lld", (long long)id);
  snprintf(want, sizeof want, "{\"closed\":%lld}", (long long)id);
  expect_status(f.admin, "DELETE", path, NULL, NULL, 401, NULL);
  expect_status(f.admin, "DELETE", path, TOKEN, NULL, 200, want);
  assert_int_equal(it_wait_eof(victim, 3000, NULL), 1);
  round_trip(bystander, 1, 2); /* the other session goes on */
  assert_true(it_log_wait(&f.g, "reason=\"closed by admin\"", 2000));
  expect_status(f.admin, "DELETE", path, TOKEN, NULL, 404, NULL);
  assert_int_equal(http(f.admin, "GET", "/sessions", NULL, NULL, &r), 200);
  list = json_loads(r.body, 0, &jerr);
  assert_int_equal(json_array_size(list), 1);
  json_decref(list);
  close(victim);
  close(bystander);
  fx_stop(&f);
}

/* A reload re-keys the endpoint, moves it to a new address, and stops it
 * when admin goes from the config. */
static void test_reload_moves_and_stops(void **state) {
  (void)state;
  int up_port, port = it_free_port(), first = it_free_port(), second = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  const char *fmt = "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
                    "\"127.0.0.1:%d\" } }, control = \"ctl.sock\"%s }\n";
  char admin[160], sock[256], out[256];
  snprintf(admin, sizeof admin, ", admin = { listen = \"127.0.0.1:%d\", token = \"" TOKEN "\" }", first);
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua", fmt, port, up_port, admin);
  it_gangway_run(&g, port);
  snprintf(sock, sizeof sock, "%s/ctl.sock", g.dir);
  expect_status(first, "POST", "/reload", TOKEN, NULL, 200, "generation 2");
  /* A new token, same address. */
  snprintf(admin, sizeof admin,
           ", admin = { listen = \"127.0.0.1:%d\", token = \"another-token-0123456789\" }", first);
  it_write(g.dir, "config.lua", fmt, port, up_port, admin);
  assert_true(it_control(sock, "reload", out, sizeof out, 3000) > 0 && strstr(out, "ok: "));
  expect_status(first, "POST", "/reload", TOKEN, NULL, 401, NULL);
  expect_status(first, "POST", "/reload", "another-token-0123456789", NULL, 200, "generation 4");
  /* A new address. */
  snprintf(admin, sizeof admin, ", admin = { listen = \"127.0.0.1:%d\" }", second);
  it_write(g.dir, "config.lua", fmt, port, up_port, admin);
  assert_true(it_control(sock, "reload", out, sizeof out, 3000) > 0 && strstr(out, "ok: "));
  static http_res r;
  assert_int_equal(http(first, "GET", "/metrics", NULL, NULL, &r), -1);
  expect_status(second, "GET", "/metrics", NULL, NULL, 200, "gangway_script_generation 5");
  expect_status(second, "POST", "/reload", TOKEN, NULL, 403, NULL); /* no token: read-only */
  /* No admin at all. */
  it_write(g.dir, "config.lua", fmt, port, up_port, "");
  assert_true(it_control(sock, "reload", out, sizeof out, 3000) > 0 && strstr(out, "ok: "));
  assert_int_equal(http(second, "GET", "/metrics", NULL, NULL, &r), -1);
  assert_true(it_log_wait(&g, "admin: stopped listening on 127.0.0.1:", 1000));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
  it_server_stop(up);
}

/* An admin address gangway cannot bind: it does not start (exit 3). */
static void test_cannot_listen(void **state) {
  (void)state;
  int port = it_free_port();
  int taken = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  assert_int_equal(bind(taken, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(taken, 1), 0);
  assert_int_equal(getsockname(taken, (struct sockaddr *)&a, &len), 0);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:1\" } }, control = \"ctl.sock\", admin = { listen = \"127.0.0.1:%d\" } }\n",
           port, ntohs(a.sin_port));
  it_gangway_run(&g, 0);
  assert_true(it_log_wait(&g, "admin: cannot listen on 127.0.0.1:", 5000));
  assert_int_equal(it_gangway_stop(&g, 0, 5000), 3);
  close(taken);
}

/* Without `admin` there is no endpoint: nothing listens on the default
 * address, and the log says nothing of one. */
static void test_absent(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_start(&g, port,
                   "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", "
                   "upstream = \"127.0.0.1:%d\" } }, control = \"ctl.sock\" }\n",
                   port, up_port);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(9973),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
  int e = errno;
  close(fd);
  assert_int_equal(rc, -1);
  assert_int_equal(e, ECONNREFUSED);
  assert_int_equal(it_log_count(&g, "admin:", NULL), 0);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
  it_server_stop(up);
}

/* 64 open files, filled with sessions: the endpoint keeps descriptors of
 * its own, so /metrics and /reload still answer, several times. */
static void test_at_the_fd_limit(void **state) {
  (void)state;
  int up_port, port = it_free_port(), admin = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\" } }, control = \"ctl.sock\",\n"
           "  admin = { listen = \"127.0.0.1:%d\", token = \"" TOKEN "\" } }\n",
           port, up_port, admin);
  g.pid = fork();
  assert_true(g.pid >= 0);
  if (g.pid == 0) {
    struct rlimit rl = {64, 64};
    int log = open(g.log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0 || setrlimit(RLIMIT_NOFILE, &rl) < 0 || chdir(g.dir) < 0) _exit(126);
    dup2(log, 2);
    close_range(3, ~0u, 0); /* nothing of the test's counts against the limit */
    execl(GW_BIN, GW_BIN, "-c", g.config, (char *)NULL);
    _exit(127);
  }
  assert_true(it_log_wait(&g, " running (config ", 5000));
  int fds[64], n = 0;
  for (; n < 64; n++) { /* sessions until one is refused */
    fds[n] = it_connect(port);
    assert_true(fds[n] >= 0);
    char c = 'a', back = 0;
    assert_int_equal(it_send_all(fds[n], &c, 1), 0);
    if (it_recv_exact(fds[n], &back, 1, 2000) != 1) break;
  }
  assert_true(n >= 1 && n < 64);
  close(fds[n]);
  assert_true(it_log_wait(&g, "connection refused", 2000));
  char want[96];
  snprintf(want, sizeof want, "gangway_sessions_open{listener=\"game\"} %d", n);
  for (int i = 0; i < 5; i++) expect_status(admin, "GET", "/metrics", NULL, NULL, 200, want);
  expect_status(admin, "POST", "/reload", TOKEN, NULL, 200, "ok: generation 2 active");
  expect_status(admin, "GET", "/sessions", NULL, NULL, 200, "\"listener\":\"game\"");
  static http_res r;
  assert_int_equal(http(admin, "GET", "/metrics", NULL, NULL, &r), 200);
  assert_true(metric(r.body, "gangway_sessions_refused_total{listener=\"game\",reason=\"max_sessions\"}") >= 1);
  for (int i = 0; i < n; i++) {
    it_echo_byte(fds[i], 'b');
    close(fds[i]);
  }
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
  it_server_stop(up);
}

/* A listener on port whose pool has "live" (up_port, weight 3) and the
 * backup "dead" (nothing listens), checked every 100 ms. */
static void write_pool_config(it_gangway *g, int port, int up_port, int dead, int admin) {
  it_write(g->dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", framing = \"top\",\n"
           "  upstream = { balance = \"least_sessions\",\n"
           "    health = { interval_ms = 100, timeout_ms = 100, rise = 1, fall = 1 },\n"
           "    servers = { { name = \"live\", addr = \"127.0.0.1:%d\", weight = 3 },\n"
           "                { name = \"dead\", addr = \"127.0.0.1:%d\", backup = true } } } } },\n"
           "  control = \"ctl.sock\", admin = { listen = \"127.0.0.1:%d\", token = \"" TOKEN "\" } }\n",
           port, up_port, dead, admin);
}

/* GET /upstreams: each listener's pool as it stands, the server that
 * answers up with its session, the one nothing listens on down with the
 * error that took it down; after a reload that moves the listener, still
 * one pool. */
static void test_upstreams(void **state) {
  (void)state;
  int up_port, dead = it_free_port(), port = it_free_port(), admin = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  write_pool_config(&g, port, up_port, dead, admin);
  it_gangway_run(&g, port);
  assert_true(it_log_wait(&g, "admin: listening on http://127.0.0.1:", 2000));
  assert_true(it_log_wait(&g, "server dead", 3000));
  assert_true(it_log_wait(&g, "is down", 3000));
  int fd = it_connect(port);
  assert_true(fd >= 0);
  round_trip(fd, 1, 1);
  static http_res r;
  assert_int_equal(http(admin, "GET", "/upstreams", NULL, NULL, &r), 200);
  json_error_t jerr;
  json_t *j = json_loads(r.body, 0, &jerr);
  if (!j) fail_msg("GET /upstreams: not JSON (%s): %s", jerr.text, r.body);
  printf("  GET /upstreams: %s\n", r.body);
  assert_int_equal(json_array_size(j), 1);
  json_t *pool = json_array_get(j, 0);
  assert_string_equal(json_string_value(json_object_get(pool, "listener")), "game");
  assert_string_equal(json_string_value(json_object_get(pool, "balance")), "least_sessions");
  assert_true(json_is_true(json_object_get(pool, "health_checks")));
  json_t *servers = json_object_get(pool, "servers");
  assert_int_equal(json_array_size(servers), 2);
  json_t *live = json_array_get(servers, 0), *down = json_array_get(servers, 1);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", up_port);
  assert_string_equal(json_string_value(json_object_get(live, "name")), "live");
  assert_string_equal(json_string_value(json_object_get(live, "address")), addr);
  assert_string_equal(json_string_value(json_array_get(json_object_get(live, "addresses"), 0)), addr);
  assert_true(json_is_true(json_object_get(live, "up")));
  assert_int_equal(json_integer_value(json_object_get(live, "sessions")), 1);
  assert_int_equal(json_integer_value(json_object_get(live, "weight")), 3);
  assert_true(json_is_false(json_object_get(live, "backup")));
  assert_true(json_is_null(json_object_get(live, "last_error")));
  assert_string_equal(json_string_value(json_object_get(down, "name")), "dead");
  assert_true(json_is_false(json_object_get(down, "up")));
  assert_true(json_is_true(json_object_get(down, "backup")));
  assert_int_equal(json_integer_value(json_object_get(down, "sessions")), 0);
  assert_string_equal(json_string_value(json_object_get(down, "last_error")), "connection refused");
  json_decref(j);
  /* A reload that moves the listener: the old one drains its session with
   * its old pool, listed once, the session counted once. */
  int port2 = it_free_port();
  write_pool_config(&g, port2, up_port, dead, admin);
  assert_int_equal(http(admin, "POST", "/reload", TOKEN, NULL, &r), 200);
  round_trip(fd, 1, 2); /* the old session goes on */
  assert_int_equal(http(admin, "GET", "/upstreams", NULL, NULL, &r), 200);
  assert_non_null(j = json_loads(r.body, 0, &jerr));
  if (json_array_size(j) != 1) fail_msg("after the move: %s", r.body);
  live = json_array_get(json_object_get(json_array_get(j, 0), "servers"), 0);
  assert_int_equal(json_integer_value(json_object_get(live, "sessions")), 1);
  json_decref(j);
  close(fd);
  /* The session's end shows too (the answer is compact JSON). */
  for (int i = 0; i < 100; i++) {
    assert_int_equal(http(admin, "GET", "/upstreams", NULL, NULL, &r), 200);
    if (!strstr(r.body, "\"sessions\":1")) break;
    usleep(20 * 1000);
  }
  assert_null(strstr(r.body, "\"sessions\":1"));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
  it_server_stop(up);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_metrics),
      cmocka_unit_test(test_auth_and_routes),
      cmocka_unit_test(test_token_for_reads),
      cmocka_unit_test(test_sessions),
      cmocka_unit_test(test_upstreams),
      cmocka_unit_test(test_reload_moves_and_stops),
      cmocka_unit_test(test_cannot_listen),
      cmocka_unit_test(test_absent),
      cmocka_unit_test(test_at_the_fd_limit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
