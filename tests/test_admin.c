/* test_admin.c: src/admin.c, the admin HTTP endpoint on a libuv loop.
 *
 * Each test runs the endpoint on a loop in the main thread and a client in
 * a second thread that speaks HTTP over plain sockets (a test client: the
 * endpoint's own parsing is libmicrohttpd's). The client records its first
 * failed check; the main thread asserts on it once the loop has ended. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "admin.h"

#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#endif

#define TOKEN "s3cret-token"

/* ---- the server side: fake routes ---- */

static int handled;             /* handler calls, read after the loop ends */

static void h_metrics(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)ud, (void)req;
  handled++;
  gw_admin_reply(res, 200, "text/plain; version=0.0.4", "gangway_up 1\n", 13);
}

static void h_sessions(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)ud, (void)req;
  handled++;
  gw_admin_reply_json(res, 200, json_pack("[{s:i}]", "id", 7));
}

static void h_session_delete(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)ud;
  handled++;
  const char *id = gw_admin_param(req, "id");
  if (strcmp(id, "7") != 0) {
    gw_admin_reply_error(res, 404, "no session %s", id);
    return;
  }
  gw_admin_reply_json(res, 200, json_pack("{s:s}", "closed", id));
}

/* Echoes what the handler saw, for the script endpoints and reload. */
static void h_echo(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)ud;
  handled++;
  const char *name = gw_admin_param(req, "name"), *q = gw_admin_query(req, "q");
  json_t *o = json_pack("{s:s,s:s,s:s%,s:I}", "method", req->method, "path", req->path,
                        "body", req->body, req->body_len, "len", (json_int_t)req->body_len);
  if (name) json_object_set_new(o, "name", json_string(name));
  if (q) json_object_set_new(o, "q", json_string(q));
  gw_admin_reply_json(res, 200, o);
  gw_admin_reply_header(res, "X-Gangway-Test", "echo");
}

static void h_silent(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)ud, (void)req, (void)res;
  handled++;
}

static gw_admin *g_admin;
static gw_metrics *g_metrics;

static void h_registry(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)ud, (void)req;
  handled++;
  if (g_metrics) gw_admin_reply_metrics(res, g_metrics);
  else gw_admin_reply_error(res, 503, "no registry");
}

static void h_stop(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)ud, (void)req;
  handled++;
  gw_admin_reply(res, 200, NULL, "bye\n", 4);
  gw_admin_stop(g_admin); /* inside MHD_run: deferred */
  g_admin = NULL;
}

static const gw_admin_route ROUTES[] = {
    {"GET", "/metrics", h_metrics},
    {"GET", "/sessions", h_sessions},
    {"DELETE", "/sessions/{id}", h_session_delete},
    {"POST", "/reload", h_echo},
    {"GET", "/scripts/{name}", h_echo},
    {"POST", "/scripts/{name}", h_echo},
    {"DELETE", "/scripts/{name}", h_echo},
    {"GET", "/silent", h_silent},
    {"POST", "/stop", h_stop},
    {"GET", "/registry", h_registry},
};
#define NROUTES (sizeof ROUTES / sizeof ROUTES[0])

/* ---- the harness ---- */

typedef void (*client_fn)(int port);

static char failure[512];
static uv_async_t done_async;
static client_fn g_client;
static int g_port;

#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    if (!(cond)) {                                                           \
      if (!failure[0]) {                                                     \
        int n_ = snprintf(failure, sizeof failure, "%s:%d: ", __FILE__, __LINE__); \
        snprintf(failure + n_, sizeof failure - (size_t)n_, __VA_ARGS__);   \
      }                                                                      \
      return;                                                                \
    }                                                                        \
  } while (0)

static void *client_main(void *arg) {
  (void)arg;
  g_client(g_port);
  uv_async_send(&done_async);
  return NULL;
}

static void on_done(uv_async_t *h) {
  if (g_admin) gw_admin_stop(g_admin);
  uv_close((uv_handle_t *)h, NULL);
}

/* Runs the endpoint with cfg and the client until the client returns. */
static void serve(gw_admin_config cfg, client_fn client) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  char err[256] = "";
  if (!cfg.listen) cfg.listen = "127.0.0.1:0";
  g_admin = gw_admin_start(&loop, &cfg, ROUTES, NROUTES, NULL, err, sizeof err);
  if (!g_admin) fail_msg("gw_admin_start: %s", err);
  g_port = gw_admin_port(g_admin);
  assert_true(g_port > 0);
  failure[0] = '\0';
  g_client = client;
  uv_async_init(&loop, &done_async, on_done);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, client_main, NULL), 0);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  pthread_join(th, NULL);
  assert_int_equal(uv_loop_close(&loop), 0);
  g_admin = NULL;
  if (failure[0]) fail_msg("%s", failure);
}

/* ---- the client side ---- */

static int dial(int port, int family) {
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  struct sockaddr_storage ss = {0};
  socklen_t len;
  if (family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  }
  if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static bool send_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
    if (w <= 0) return false;
    c += w, n -= (size_t)w;
  }
  return true;
}

/* Reads until the peer closes (or 5 s pass); returns the bytes read, or -1
 * on a reset before anything arrived. */
static ssize_t read_all(int fd, char *out, size_t outlen) {
  size_t got = 0;
  while (got + 1 < outlen) {
    ssize_t r = recv(fd, out + got, outlen - 1 - got, 0);
    if (r <= 0) {
      if (r < 0 && got == 0 && errno == ECONNRESET) return -1;
      break;
    }
    got += (size_t)r;
  }
  out[got] = '\0';
  return (ssize_t)got;
}

typedef struct reply {
  int status;                   /* 0: closed without an answer */
  char text[16384];             /* head and body */
  const char *body;
} reply;

/* Sends raw bytes on a new connection, then reads the answer to the end
 * (the requests say Connection: close, or half_close ends the sending). */
static void exchange_on(int family, int port, const char *raw, size_t n, bool half_close,
                        reply *r) {
  memset(r, 0, sizeof *r);
  r->body = "";
  int fd = dial(port, family);
  if (fd < 0) return;
  if (send_all(fd, raw, n)) {
    if (half_close) shutdown(fd, SHUT_WR);
    if (read_all(fd, r->text, sizeof r->text) > 0) {
      sscanf(r->text, "HTTP/1.%*d %d", &r->status);
      char *b = strstr(r->text, "\r\n\r\n");
      r->body = b ? b + 4 : "";
    }
  }
  close(fd);
}

static void exchange(int port, const char *raw, reply *r) {
  exchange_on(AF_INET, port, raw, strlen(raw), false, r);
}

/* method path, optional token and body, Connection: close. */
static void request(int port, const char *method, const char *path, const char *token,
                    const char *body, reply *r) {
  char raw[8192];
  int n = snprintf(raw, sizeof raw, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n",
                   method, path);
  if (token) n += snprintf(raw + n, sizeof raw - (size_t)n, "Authorization: Bearer %s\r\n", token);
  if (body)
    n += snprintf(raw + n, sizeof raw - (size_t)n,
                  "Content-Type: application/json\r\nContent-Length: %zu\r\n", strlen(body));
  snprintf(raw + n, sizeof raw - (size_t)n, "\r\n%s", body ? body : "");
  exchange(port, raw, r);
}

/* The value of a response header (case-insensitive name), "" if absent. */
static const char *header(const reply *r, const char *name, char *out, size_t outlen) {
  out[0] = '\0';
  size_t nl = strlen(name);
  for (const char *p = strstr(r->text, "\r\n"); p && p < r->body; p = strstr(p + 2, "\r\n")) {
    if (strncasecmp(p + 2, name, nl) == 0 && p[2 + nl] == ':') {
      const char *v = p + 3 + nl;
      v += strspn(v, " ");
      size_t vl = strcspn(v, "\r\n");
      snprintf(out, outlen, "%.*s", (int)(vl < outlen ? vl : outlen - 1), v);
      break;
    }
  }
  return out;
}

static bool good_get(int port) {
  reply r;
  request(port, "GET", "/metrics", NULL, NULL, &r);
  return r.status == 200 && strcmp(r.body, "gangway_up 1\n") == 0;
}

/* ---- the tests ---- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void c_reads_and_routing(int port) {
  reply r;
  char h[256];
  request(port, "GET", "/metrics", NULL, NULL, &r);
  CHECK(r.status == 200, "GET /metrics: %d", r.status);
  CHECK(strcmp(r.body, "gangway_up 1\n") == 0, "body '%s'", r.body);
  CHECK(strcmp(header(&r, "Content-Type", h, sizeof h), "text/plain; version=0.0.4") == 0, "%s", h);
  CHECK(strcmp(header(&r, "Cache-Control", h, sizeof h), "no-store") == 0, "%s", h);
  request(port, "GET", "/sessions", NULL, NULL, &r);
  CHECK(r.status == 200 && strcmp(r.body, "[{\"id\":7}]\n") == 0, "%d %s", r.status, r.body);
  CHECK(strcmp(header(&r, "Content-Type", h, sizeof h), "application/json") == 0, "%s", h);
  /* HEAD is GET without the body */
  request(port, "HEAD", "/sessions", NULL, NULL, &r);
  CHECK(r.status == 200 && r.body[0] == '\0', "HEAD: %d '%s'", r.status, r.body);
  /* path parameters and the query, percent-decoded */
  request(port, "GET", "/scripts/bans?q=a%20b&x", NULL, NULL, &r);
  CHECK(r.status == 200, "GET /scripts/bans: %d", r.status);
  CHECK(strcmp(r.body, "{\"method\":\"GET\",\"path\":\"/scripts/bans\",\"body\":\"\",\"len\":0,"
                       "\"name\":\"bans\",\"q\":\"a b\"}\n") == 0, "%s", r.body);
  CHECK(strcmp(header(&r, "X-Gangway-Test", h, sizeof h), "echo") == 0, "extra header '%s'", h);
  /* 404: no route, an empty parameter, a trailing segment */
  const char *missing[] = {"/nope", "/scripts/", "/scripts", "/metrics/x", "/", "/sessions/7/x"};
  for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
    request(port, "GET", missing[i], NULL, NULL, &r);
    CHECK(r.status == 404, "GET %s: %d", missing[i], r.status);
    CHECK(strstr(r.body, "\"error\":\"no such path"), "%s", r.body);
  }
  /* 405 with Allow: the methods of the routes of this path */
  request(port, "GET", "/reload", NULL, NULL, &r);
  CHECK(r.status == 405, "GET /reload: %d", r.status);
  CHECK(strcmp(header(&r, "Allow", h, sizeof h), "POST") == 0, "Allow '%s'", h);
  request(port, "PUT", "/scripts/bans", TOKEN, "{}", &r);
  CHECK(r.status == 405, "PUT /scripts/bans: %d", r.status);
  CHECK(strcmp(header(&r, "Allow", h, sizeof h), "GET, HEAD, POST, DELETE") == 0, "Allow '%s'", h);
  request(port, "POST", "/metrics", TOKEN, "", &r);
  CHECK(r.status == 405, "POST /metrics: %d", r.status);
  CHECK(strcmp(header(&r, "Allow", h, sizeof h), "GET, HEAD") == 0, "Allow '%s'", h);
  /* a handler that answers nothing: 500 */
  request(port, "GET", "/silent", NULL, NULL, &r);
  CHECK(r.status == 500, "GET /silent: %d", r.status);
}

static void test_reads_and_routing(void **state) {
  (void)state;
  serve((gw_admin_config){.token = TOKEN}, c_reads_and_routing);
}

static void c_token(int port) {
  reply r;
  char h[256];
  int before = handled;
  request(port, "POST", "/reload", NULL, "{}", &r);
  CHECK(r.status == 401, "POST without token: %d", r.status);
  CHECK(strcmp(header(&r, "WWW-Authenticate", h, sizeof h), "Bearer realm=\"gangway\"") == 0,
        "'%s'", h);
  request(port, "POST", "/reload", "s3cret-tokeN", "{}", &r);
  CHECK(r.status == 401, "wrong token: %d", r.status);
  CHECK(strstr(header(&r, "WWW-Authenticate", h, sizeof h), "invalid_token"), "'%s'", h);
  request(port, "POST", "/reload", "s3cret", "{}", &r);
  CHECK(r.status == 401, "a prefix of the token: %d", r.status);
  request(port, "POST", "/reload", TOKEN "x", "{}", &r);
  CHECK(r.status == 401, "the token and more: %d", r.status);
  request(port, "DELETE", "/sessions/7", NULL, NULL, &r);
  CHECK(r.status == 401, "DELETE without token: %d", r.status);
  /* unauthenticated clients learn nothing of the routes */
  request(port, "POST", "/nope", NULL, "{}", &r);
  CHECK(r.status == 401, "POST /nope without token: %d", r.status);
  exchange(port, "POST /reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 "Authorization: Basic czNjcmV0LXRva2Vu\r\nContent-Length: 0\r\n\r\n", &r);
  CHECK(r.status == 401, "Basic auth: %d", r.status);
  CHECK(handled == before, "a handler ran for a refused request");
  /* the right token: the handler runs with the body */
  request(port, "POST", "/reload", TOKEN, "{\"a\":1}", &r);
  CHECK(r.status == 200, "POST with token: %d", r.status);
  CHECK(strstr(r.body, "\"body\":\"{\\\"a\\\":1}\",\"len\":7"), "%s", r.body);
  exchange(port, "POST /scripts/bans HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 "authorization:   bearer   " TOKEN "  \r\nContent-Length: 2\r\n\r\n[]", &r);
  CHECK(r.status == 200, "scheme in lower case, spaces: %d", r.status);
  request(port, "DELETE", "/sessions/7", TOKEN, NULL, &r);
  CHECK(r.status == 200 && strcmp(r.body, "{\"closed\":\"7\"}\n") == 0, "%d %s", r.status, r.body);
  request(port, "DELETE", "/sessions/8", TOKEN, NULL, &r);
  CHECK(r.status == 404 && strstr(r.body, "no session 8"), "%d %s", r.status, r.body);
  /* reads are open */
  CHECK(good_get(port), "GET without token");
}

static void test_token_for_changes(void **state) {
  (void)state;
  serve((gw_admin_config){.token = TOKEN}, c_token);
}

static void c_token_for_reads(int port) {
  reply r;
  request(port, "GET", "/metrics", NULL, NULL, &r);
  CHECK(r.status == 401, "GET without token: %d", r.status);
  request(port, "GET", "/nope", NULL, NULL, &r);
  CHECK(r.status == 401, "GET /nope without token: %d", r.status);
  request(port, "GET", "/metrics", "wrong", NULL, &r);
  CHECK(r.status == 401, "GET wrong token: %d", r.status);
  request(port, "GET", "/metrics", TOKEN, NULL, &r);
  CHECK(r.status == 200, "GET with token: %d", r.status);
  /* a new token on reload, without rebinding */
  CHECK(gw_admin_set_token(g_admin, "other", true) == 0, "set_token");
  request(port, "GET", "/metrics", TOKEN, NULL, &r);
  CHECK(r.status == 401, "old token after set_token: %d", r.status);
  request(port, "GET", "/metrics", "other", NULL, &r);
  CHECK(r.status == 200, "new token: %d", r.status);
}

static void test_token_for_reads(void **state) {
  (void)state;
  serve((gw_admin_config){.token = TOKEN, .token_for_reads = true}, c_token_for_reads);
}

static void c_read_only(int port) {
  reply r;
  request(port, "POST", "/reload", NULL, "{}", &r);
  CHECK(r.status == 403 && strstr(r.body, "read-only"), "POST without a token set: %d %s",
        r.status, r.body);
  request(port, "POST", "/reload", "anything", "{}", &r);
  CHECK(r.status == 403, "POST with a token, none set: %d", r.status);
  CHECK(good_get(port), "GET");
}

static void test_without_token_read_only(void **state) {
  (void)state;
  serve((gw_admin_config){0}, c_read_only);
}

static void test_refuses_to_start(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  char err[256];
  const struct {
    gw_admin_config cfg;
    const char *want;
  } bad[] = {
      {{.listen = "0.0.0.0:0"}, "not a loopback address: set admin.token"},
      {{.listen = "[::]:0"}, "not a loopback address"},
      {{.listen = "10.1.2.3:0", .token = ""}, "not a loopback address"},
      {{.listen = "127.0.0.1:0", .token_for_reads = true}, "token_for_reads needs admin.token"},
      {{.listen = "127.0.0.1"}, "not an address and port"},
      {{.listen = "127.0.0.1:99999"}, "not an address and port"},
      {{.listen = "example.com:80"}, "not an address and port"},
      {{.listen = "[::1:80"}, "not an address and port"},
      {{.listen = NULL}, "not an address and port"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    err[0] = '\0';
    assert_null(gw_admin_start(&loop, &bad[i].cfg, ROUTES, NROUTES, NULL, err, sizeof err));
    if (!strstr(err, bad[i].want)) fail_msg("case %zu: '%s'", i, err);
  }
  gw_admin_config ok = {.listen = "127.0.0.1:0"};
  const gw_admin_route bad_routes[][1] = {
      {{"GET", "no-slash", h_metrics}},
      {{"GET", "/a/{", h_metrics}},
      {{"GET", "/a/{x}y", h_metrics}},
      {{"GET", "/{a}/{b}/{c}/{d}/{e}", h_metrics}},
      {{"FETCH", "/a", h_metrics}},
      {{"GET", "/a", NULL}},
  };
  for (size_t i = 0; i < sizeof bad_routes / sizeof bad_routes[0]; i++) {
    assert_null(gw_admin_start(&loop, &ok, bad_routes[i], 1, NULL, err, sizeof err));
    assert_non_null(strstr(err, "bad route"));
  }
  /* an address in use */
  gw_admin *a = gw_admin_start(&loop, &ok, ROUTES, NROUTES, NULL, err, sizeof err);
  assert_non_null(a);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", gw_admin_port(a));
  gw_admin_config same = {.listen = addr};
  assert_null(gw_admin_start(&loop, &same, ROUTES, NROUTES, NULL, err, sizeof err));
  assert_non_null(strstr(err, "cannot listen on"));
  /* a non-loopback endpoint keeps its token */
  gw_admin_config any = {.listen = "0.0.0.0:0", .token = TOKEN};
  gw_admin *b = gw_admin_start(&loop, &any, ROUTES, NROUTES, NULL, err, sizeof err);
  assert_non_null(b);
  assert_int_equal(gw_admin_set_token(b, NULL, false), -EINVAL);
  assert_int_equal(gw_admin_set_token(a, NULL, true), -EINVAL);
  assert_int_equal(gw_admin_set_token(a, NULL, false), 0);
  /* a reload that moves nothing: stop, then bind the same address at once */
  gw_admin_stop(a);
  a = gw_admin_start(&loop, &same, ROUTES, NROUTES, NULL, err, sizeof err);
  if (!a) fail_msg("the same address again: %s", err);
  gw_admin_stop(a);
  gw_admin_stop(b);
  gw_admin_config local = {.listen = "localhost:0"};
  a = gw_admin_start(&loop, &local, ROUTES, NROUTES, NULL, err, sizeof err);
  if (!a) fail_msg("localhost: %s", err);
  gw_admin_stop(a);
  assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
  assert_int_equal(uv_loop_close(&loop), 0);
}

static void c_body_limit(int port) {
  reply r;
  /* Content-Length over the limit: 413 before the body is read */
  exchange(port, "POST /reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 "Authorization: Bearer " TOKEN "\r\nContent-Length: 70000\r\n\r\nabc", &r);
  CHECK(r.status == 413, "Content-Length 70000: %d", r.status);
  /* exactly the limit (1 KiB here) passes */
  static char body[1025];
  memset(body, 'x', 1024);
  body[1024] = '\0';
  request(port, "POST", "/reload", TOKEN, body, &r);
  CHECK(r.status == 200 && strstr(r.body, "\"len\":1024"), "1024 bytes: %d", r.status);
  body[1023] = '\0';
  /* a chunked body: read, and refused once past the limit */
  char raw[4096];
  snprintf(raw, sizeof raw, "POST /reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           "Authorization: Bearer " TOKEN "\r\nTransfer-Encoding: chunked\r\n\r\n"
           "3ff\r\n%s\r\n1\r\ny\r\n0\r\n\r\n", body);
  exchange(port, raw, &r);
  CHECK(r.status == 200 && strstr(r.body, "\"len\":1024"), "chunked 1024: %d %s", r.status, r.body);
  snprintf(raw, sizeof raw, "POST /reload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           "Authorization: Bearer " TOKEN "\r\nTransfer-Encoding: chunked\r\n\r\n"
           "3ff\r\n%s\r\n2\r\nyz\r\n0\r\n\r\n", body);
  exchange(port, raw, &r);
  CHECK(r.status == 413, "chunked 1025: %d", r.status);
  CHECK(good_get(port), "GET after 413");
}

static void test_body_limit(void **state) {
  (void)state;
  serve((gw_admin_config){.token = TOKEN, .max_body = 1024}, c_body_limit);
}

static void c_malformed(int port) {
  const char *bad[] = {
      "GARBAGE\r\n\r\n",
      "GET\r\n\r\n",
      "GET /metrics HTTP/9.9\r\nHost: x\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
      "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "POST /reload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
      "Authorization: Bearer " TOKEN "\r\n\r\nzz\r\n",
      "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello */
      "GET /\x01\x02\x03 HTTP/1.1\r\n\r\n",
      "\r\n\r\n\r\n",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    reply r;
    exchange_on(AF_INET, port, bad[i], strlen(bad[i]), true, &r);
    CHECK(r.status == 0 || (r.status >= 400 && r.status < 500) || r.status == 505,
          "case %zu: %d", i, r.status);
    CHECK(good_get(port), "GET after case %zu", i);
  }
  /* a header block larger than MHD's memory limit */
  static char big[70000];
  int n = snprintf(big, sizeof big, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
  memset(big + n, 'a', sizeof big - (size_t)n - 5);
  memcpy(big + sizeof big - 5, "\r\n\r\n", 5);
  reply r;
  exchange_on(AF_INET, port, big, strlen(big), true, &r);
  CHECK(r.status == 0 || (r.status >= 400 && r.status < 500), "big header: %d", r.status);
  CHECK(good_get(port), "GET after a big header");
}

static void test_malformed(void **state) {
  (void)state;
  /* libmicrohttpd misses the end of some half-closed malformed requests
   * (a TLS ClientHello, two Content-Lengths): the request deadline cuts
   * them, 1 s here */
  serve((gw_admin_config){.token = TOKEN, .timeout_s = 1}, c_malformed);
}


/* 100 idle connections against a limit of 64 and a timeout of 1 s: a real
 * request is answered once the idle ones are cut, within a few timeouts. */
static void c_idle_connections(int port) {
  int idle[100];
  for (int i = 0; i < 100; i++) idle[i] = dial(port, AF_INET);
  double t0 = now_s();
  bool ok = false;
  while (!ok && now_s() - t0 < 20) {
    ok = good_get(port);
    if (!ok) usleep(100000);
  }
  double waited = now_s() - t0;
  /* and every idle connection is closed by the server within a few more
   * timeouts (those accepted late have deadlines of their own) */
  int open_ = 0;
  for (int i = 0; i < 100; i++) {
    if (idle[i] < 0) continue;
    char c;
    struct pollfd p = {idle[i], POLLIN, 0};
    int left = (int)((t0 + 20 - now_s()) * 1000);
    if (poll(&p, 1, left > 0 ? left : 0) != 1 || recv(idle[i], &c, 1, MSG_DONTWAIT) > 0) open_++;
    close(idle[i]);
  }
  CHECK(ok, "no answer within 20 s behind 100 idle connections");
  CHECK(open_ == 0, "%d idle connections still open after 20 s", open_);
  print_message("answered after %.1f s behind 100 idle connections\n", waited);
}

static void test_idle_connections_limit(void **state) {
  (void)state;
  serve((gw_admin_config){.token = TOKEN, .max_connections = 64, .timeout_s = 1},
        c_idle_connections);
}

/* A client sending its headers one byte every 200 ms (inside MHD's
 * inactivity timeout) is cut at the request deadline; others are served
 * meanwhile. */
static void c_slowloris(int port) {
  const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
  int fd = dial(port, AF_INET);
  CHECK(fd >= 0, "dial");
  double t0 = now_s();
  bool closed = false;
  for (size_t i = 0; req[i] && now_s() - t0 < 15; i++) {
    if (send(fd, req + i, 1, MSG_NOSIGNAL) != 1) {
      closed = true;
      break;
    }
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 200) > 0) {
      char buf[256];
      ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (r <= 0) {
        closed = true;
        break;
      }
    }
    if (i == 3) CHECK(good_get(port), "GET beside the slow client");
  }
  double took = now_s() - t0;
  close(fd);
  CHECK(closed, "slow client not cut after %.1f s", took);
  CHECK(took >= 0.9, "cut too early, at %.2f s", took);
  CHECK(good_get(port), "GET after the slow client");
}

static void test_slowloris(void **state) {
  (void)state;
  serve((gw_admin_config){.token = TOKEN, .timeout_s = 1}, c_slowloris);
}

/* 1,000 random byte strings, some starting like a request, sent 100 at a
 * time on parallel connections; a good GET is answered after each batch. */
static void c_fuzz(int port) {
  static const char *starts[] = {"", "GET ", "POST /reload HTTP/1.1\r\n", "GET /metrics HTTP/1.1\r\n",
                                 "DELETE /sessions/", "GET /scripts/"};
  unsigned seed = 12345;
  char buf[1024];
  int answered = 0, closed = 0;
  for (int batch = 0; batch < 10; batch++) {
    int fds[100];
    for (int i = 0; i < 100; i++) {
      const char *s = starts[rand_r(&seed) % 6];
      size_t n = strlen(s), len = n + (size_t)(rand_r(&seed) % 512);
      memcpy(buf, s, n);
      for (size_t k = n; k < len; k++) {
        int pick = rand_r(&seed) % 8;
        buf[k] = pick == 0 ? '\r' : pick == 1 ? '\n' : pick == 2 ? ':' : (char)rand_r(&seed);
      }
      fds[i] = dial(port, AF_INET);
      CHECK(fds[i] >= 0, "dial in batch %d", batch);
      send_all(fds[i], buf, len); /* the server may have closed already */
      shutdown(fds[i], SHUT_WR);
    }
    for (int i = 0; i < 100; i++) {
      char out[4096];
      int status = 0;
      if (read_all(fds[i], out, sizeof out) > 0) sscanf(out, "HTTP/1.%*d %d", &status);
      close(fds[i]);
      /* an answer (never a server error but 505) or a close */
      CHECK(status == 0 || (status >= 200 && status < 500) || status == 505,
            "batch %d input %d: %d", batch, i, status);
      if (status) answered++;
      else closed++;
    }
    CHECK(good_get(port), "GET after batch %d", batch);
  }
  print_message("fuzz: 1000 inputs, %d answered, %d closed\n", answered, closed);
}

static void test_fuzz(void **state) {
  (void)state;
  serve((gw_admin_config){.token = TOKEN, .timeout_s = 1, .max_connections = 128}, c_fuzz);
}

static void c_ipv6(int port) {
  reply r;
  const char *raw = "GET /metrics HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n";
  exchange_on(AF_INET6, port, raw, strlen(raw), false, &r);
  CHECK(r.status == 200, "GET over IPv6: %d", r.status);
}

static void test_ipv6(void **state) {
  (void)state;
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  bool have = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
  if (fd >= 0) close(fd);
  if (!have) skip();
  serve((gw_admin_config){.listen = "[::1]:0"}, c_ipv6);
}

static void c_stop_from_handler(int port) {
  reply r;
  request(port, "POST", "/stop", TOKEN, "", &r);
  CHECK(r.status == 200 && strcmp(r.body, "bye\n") == 0, "POST /stop: %d", r.status);
  int fd = -1;
  for (int i = 0; i < 50 && (fd = dial(port, AF_INET)) >= 0; i++) {
    close(fd);
    usleep(20000);
  }
  CHECK(fd < 0, "still listening after the stop");
}

static void test_stop_from_handler(void **state) {
  (void)state;
  /* the client's end stops nothing more: the handler did */
  serve((gw_admin_config){.token = TOKEN}, c_stop_from_handler);
}

static void c_counted(int port) {
  reply r;
  char h[128];
  request(port, "GET", "/registry", NULL, NULL, &r);
  CHECK(r.status == 200, "GET /registry: %d", r.status);
  CHECK(strcmp(header(&r, "Content-Type", h, sizeof h), GW_METRICS_CONTENT_TYPE) == 0, "%s", h);
  CHECK(strstr(r.body, "# TYPE gangway_admin_requests_total counter\n"), "%s", r.body);
  request(port, "GET", "/metrics", NULL, NULL, &r);
  request(port, "GET", "/metrics", NULL, NULL, &r);
  request(port, "GET", "/nope", NULL, NULL, &r);
  request(port, "POST", "/reload", NULL, "", &r);
}

static void test_requests_counted(void **state) {
  (void)state;
  g_metrics = gw_metrics_new();
  serve((gw_admin_config){.token = TOKEN, .metrics = g_metrics}, c_counted);
  char *text = gw_metrics_prometheus(g_metrics, NULL);
  assert_non_null(strstr(text, "gangway_admin_requests_total{code=\"200\"} 3\n"));
  assert_non_null(strstr(text, "gangway_admin_requests_total{code=\"404\"} 1\n"));
  assert_non_null(strstr(text, "gangway_admin_requests_total{code=\"401\"} 1\n"));
  free(text);
  gw_metrics_free(g_metrics);
  g_metrics = NULL;
}

/* At the open-files limit accept() fails; the endpoint must keep running
 * and answer once descriptors are free again. */
static int spare[4096];
static int nspare;

static void c_fd_limit(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(fd >= 0, "socket");
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  struct rlimit low = {256 < rl.rlim_cur ? 256 : rl.rlim_cur, rl.rlim_max};
  setrlimit(RLIMIT_NOFILE, &low);
  nspare = 0;
  int d, null = open("/dev/null", O_RDONLY);
  spare[nspare++] = null;
  while (nspare < 4096 && (d = dup(null)) >= 0) spare[nspare++] = d;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
  const char *raw = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  bool sent = rc == 0 && send_all(fd, raw, strlen(raw));
  /* the loop meets EMFILE meanwhile, and must not spin on it */
  struct rusage ru0, ru1;
  getrusage(RUSAGE_SELF, &ru0);
  double t0 = now_s();
  usleep(500000);
  getrusage(RUSAGE_SELF, &ru1);
  double wall = now_s() - t0;
  double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec -
                        ru0.ru_stime.tv_sec) +
               (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec -
                        ru0.ru_stime.tv_usec) / 1e6;
  while (nspare) close(spare[--nspare]);
  setrlimit(RLIMIT_NOFILE, &rl);
  CHECK(sent, "connect/send at the limit");
  CHECK(cpu < wall / 2, "%.2f s of CPU in %.2f s at the open-files limit", cpu, wall);
  char buf[1024];
  ssize_t n = read_all(fd, buf, sizeof buf);
  close(fd);
  CHECK(n > 0 && strstr(buf, " 200 "), "no answer after the limit: %.80s", n > 0 ? buf : "");
  CHECK(good_get(port), "GET after the limit");
}

static void test_fd_limit(void **state) {
  (void)state;
  /* valgrind keeps descriptors of its own past the limit and closes a
   * client's accepted past it: not the kernel's behaviour */
  if (RUNNING_ON_VALGRIND) skip();
  serve((gw_admin_config){.token = TOKEN}, c_fd_limit);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reads_and_routing),
      cmocka_unit_test(test_token_for_changes),
      cmocka_unit_test(test_token_for_reads),
      cmocka_unit_test(test_without_token_read_only),
      cmocka_unit_test(test_refuses_to_start),
      cmocka_unit_test(test_body_limit),
      cmocka_unit_test(test_malformed),
      cmocka_unit_test(test_idle_connections_limit),
      cmocka_unit_test(test_slowloris),
      cmocka_unit_test(test_fuzz),
      cmocka_unit_test(test_ipv6),
      cmocka_unit_test(test_stop_from_handler),
      cmocka_unit_test(test_requests_counted),
      cmocka_unit_test(test_fd_limit),
  };
  if (getenv("GW_TEST_FILTER")) cmocka_set_test_filter(getenv("GW_TEST_FILTER"));
  return cmocka_run_group_tests(tests, NULL, NULL);
}
