/* admin.c: the admin HTTP endpoint: libmicrohttpd in external polling mode
 * (epoll) driven by a uv_poll_t and a uv_timer_t on gangway's loop; token
 * checks, routing, body limits. See admin.h. */
#include "admin.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "log.h"

#define HEADERS_MAX 8

struct gw_admin_response {
  int status;
  char *content_type;
  char *body;
  size_t len;
  char *headers[HEADERS_MAX][2];
  size_t nheaders;
};

/* One connection, MHD's socket context: the deadline by which its current
 * request must be in (MHD's own timeout is for inactivity only, which a
 * client sending one byte a second never reaches). */
typedef struct conn {
  struct conn *prev, *next;
  int fd;
  uint64_t deadline;            /* loop time in ms; 0: being answered */
  bool cut;                     /* shut down past its deadline */
} conn;

struct gw_admin {
  uv_loop_t *loop;
  uv_poll_t poll;               /* MHD's epoll descriptor */
  uv_timer_t timer;             /* MHD_get_timeout() */
  uv_timer_t sweep;             /* request deadlines, while connections are open */
  uv_timer_t backoff;           /* the poll paused after accept failures */
  int closing;                  /* handles not yet closed */
  int listen_fd;
  unsigned max_connections;
  unsigned stalls;              /* runs in a row that left a client unaccepted */
  conn *conns;
  uint64_t timeout_ms;
  struct MHD_Daemon *mhd;
  gw_admin_route *routes;
  size_t nroutes;
  void *ud;
  char *token;                  /* NULL: none */
  bool token_for_reads;
  bool loopback;
  size_t max_body;
  int port;
  bool in_run, stop_pending;    /* a handler asked to stop inside MHD_run */
  gw_metric *requests;          /* gangway_admin_requests_total{code} */
};

/* One request's state, MHD's *con_cls: freed by on_completed. */
typedef struct req_state {
  const gw_admin_route *route;
  const char *names[GW_ADMIN_PARAMS_MAX], *values[GW_ADMIN_PARAMS_MAX];
  size_t nparams;
  char *strings;                /* names and values, NUL-separated */
  char *body;
  size_t len, cap;
  size_t discarded;             /* body bytes past max_body */
} req_state;

/* ---- the response a handler fills ---- */

static void response_clear(gw_admin_response *res) {
  free(res->content_type);
  free(res->body);
  for (size_t i = 0; i < res->nheaders; i++) {
    free(res->headers[i][0]);
    free(res->headers[i][1]);
  }
  memset(res, 0, sizeof *res);
}

int gw_admin_reply_take(gw_admin_response *res, int status,
                        const char *content_type, char *body, size_t len) {
  char *ct = strdup(content_type ? content_type : "text/plain; charset=utf-8");
  if (!ct) {
    free(body);
    return -ENOMEM;
  }
  free(res->content_type);
  free(res->body);
  res->status = status;
  res->content_type = ct;
  res->body = body;
  res->len = body ? len : 0;
  return 0;
}

int gw_admin_reply(gw_admin_response *res, int status, const char *content_type,
                   const void *body, size_t len) {
  char *copy = malloc(len + 1);
  if (!copy) return -ENOMEM;
  if (len) memcpy(copy, body, len);
  copy[len] = '\0';
  return gw_admin_reply_take(res, status, content_type, copy, len);
}

int gw_admin_reply_json(gw_admin_response *res, int status, json_t *j) {
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text) return -ENOMEM;
  size_t n = strlen(text);
  char *body = realloc(text, n + 2);
  if (!body) {
    free(text);
    return -ENOMEM;
  }
  memcpy(body + n, "\n", 2);
  return gw_admin_reply_take(res, status, "application/json", body, n + 1);
}

static int reply_error_v(gw_admin_response *res, int status, const char *fmt, va_list ap) {
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  /* the message may quote a client's path: keep it printable ASCII so that
   * it is valid UTF-8 whatever the bytes */
  for (char *p = msg; *p; p++)
    if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7F) *p = '?';
  json_t *o = json_object();
  if (!o || json_object_set_new(o, "error", json_string(msg)) < 0) {
    json_decref(o);
    return -ENOMEM;
  }
  return gw_admin_reply_json(res, status, o);
}

int gw_admin_reply_error(gw_admin_response *res, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = reply_error_v(res, status, fmt, ap);
  va_end(ap);
  return rc;
}

int gw_admin_reply_metrics(gw_admin_response *res, gw_metrics *m) {
  size_t len;
  char *text = gw_metrics_prometheus(m, &len);
  if (!text) return -ENOMEM;
  return gw_admin_reply_take(res, 200, GW_METRICS_CONTENT_TYPE, text, len);
}

int gw_admin_reply_header(gw_admin_response *res, const char *name, const char *value) {
  if (res->nheaders == HEADERS_MAX) return -ENOBUFS;
  char *n = strdup(name), *v = strdup(value);
  if (!n || !v) {
    free(n);
    free(v);
    return -ENOMEM;
  }
  res->headers[res->nheaders][0] = n;
  res->headers[res->nheaders][1] = v;
  res->nheaders++;
  return 0;
}

/* ---- the request a handler reads ---- */

const char *gw_admin_param(const gw_admin_request *req, const char *name) {
  for (size_t i = 0; i < req->nparams; i++)
    if (strcmp(req->param_names[i], name) == 0) return req->params[i];
  return NULL;
}

const char *gw_admin_query(const gw_admin_request *req, const char *key) {
  const char *v = MHD_lookup_connection_value(req->conn_, MHD_GET_ARGUMENT_KIND, key);
  if (v) return v;
  /* "?flag" without "=": MHD knows the key, with a NULL value */
  return MHD_lookup_connection_value_n(req->conn_, MHD_GET_ARGUMENT_KIND, key,
                                       strlen(key), NULL, NULL) == MHD_YES ? "" : NULL;
}

const char *gw_admin_header(const gw_admin_request *req, const char *name) {
  return MHD_lookup_connection_value(req->conn_, MHD_HEADER_KIND, name);
}

/* ---- routing ---- */

/* Advances *p past one "/segment"; the segment's span in *s, *n. */
static bool next_segment(const char **p, const char **s, size_t *n) {
  if (**p != '/') return false;
  *s = ++*p;
  *p = strchrnul(*p, '/');
  *n = (size_t)(*p - *s);
  return true;
}

static bool is_param(const char *s, size_t n) {
  return n >= 3 && s[0] == '{' && s[n - 1] == '}';
}

/* Whether path matches pattern; with rs, records the parameters in it. */
static bool route_match(const char *pattern, const char *path, req_state *rs) {
  const char *pp = pattern, *up = path, *ps, *us;
  size_t pn, un;
  const char *spans[GW_ADMIN_PARAMS_MAX][2];
  size_t lens[GW_ADMIN_PARAMS_MAX][2], n = 0;
  while (*pp || *up) {
    if (!next_segment(&pp, &ps, &pn) || !next_segment(&up, &us, &un)) return false;
    if (is_param(ps, pn)) {
      if (un == 0 || n == GW_ADMIN_PARAMS_MAX) return false;
      spans[n][0] = ps + 1, lens[n][0] = pn - 2;
      spans[n][1] = us, lens[n][1] = un;
      n++;
    } else if (pn != un || memcmp(ps, us, pn) != 0) {
      return false;
    }
  }
  if (!rs) return true;
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += lens[i][0] + lens[i][1] + 2;
  free(rs->strings);
  rs->strings = malloc(total + 1);
  if (!rs->strings) return false;
  char *o = rs->strings;
  for (size_t i = 0; i < n; i++) {
    for (int k = 0; k < 2; k++) {
      memcpy(o, spans[i][k], lens[i][k]);
      o[lens[i][k]] = '\0';
      if (k == 0) rs->names[i] = o;
      else rs->values[i] = o;
      o += lens[i][k] + 1;
    }
  }
  rs->nparams = n;
  return true;
}

/* A pattern starts with '/', and its {name} segments are well formed and
 * at most GW_ADMIN_PARAMS_MAX. */
static bool pattern_ok(const char *pattern) {
  const char *p = pattern, *s;
  size_t n, params = 0;
  if (*p != '/') return false;
  while (*p) {
    if (!next_segment(&p, &s, &n)) return false;
    bool brace = memchr(s, '{', n) || memchr(s, '}', n);
    if (brace && (!is_param(s, n) || memchr(s + 1, '{', n - 2) || memchr(s + 1, '}', n - 2)))
      return false;
    if (brace && ++params > GW_ADMIN_PARAMS_MAX) return false;
  }
  return true;
}

/* ---- answers ---- */

static conn *conn_of(struct MHD_Connection *c) {
  const union MHD_ConnectionInfo *i =
      MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return i ? i->socket_context : NULL;
}

static enum MHD_Result queue(gw_admin *a, struct MHD_Connection *c,
                             gw_admin_response *res) {
  struct MHD_Response *r = MHD_create_response_from_buffer(
      res->len, res->body ? res->body : (char *)"", MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                          res->content_type ? res->content_type : "text/plain; charset=utf-8");
  MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  for (size_t i = 0; i < res->nheaders; i++)
    MHD_add_response_header(r, res->headers[i][0], res->headers[i][1]);
  enum MHD_Result ok = MHD_queue_response(c, (unsigned)res->status, r);
  MHD_destroy_response(r);
  conn *k = conn_of(c);
  if (k) k->deadline = 0;
  if (a->requests) {
    char code[8];
    snprintf(code, sizeof code, "%d", res->status);
    uint64_t *slot = gw_metric_slot(a->requests, GW_LABELS(code));
    if (slot) (*slot)++;
  }
  return ok;
}

/* Queues an error answer with an optional extra header. */
static enum MHD_Result refuse(gw_admin *a, struct MHD_Connection *c, int status,
                              const char *hname, const char *hvalue, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result refuse(gw_admin *a, struct MHD_Connection *c, int status,
                              const char *hname, const char *hvalue, const char *fmt, ...) {
  gw_admin_response res = {0};
  va_list ap;
  va_start(ap, fmt);
  int rc = reply_error_v(&res, status, fmt, ap);
  va_end(ap);
  if (rc == 0 && hname) rc = gw_admin_reply_header(&res, hname, hvalue);
  enum MHD_Result ok = rc == 0 ? queue(a, c, &res) : MHD_NO;
  response_clear(&res);
  return ok;
}

/* Constant time in the length of the expected token, whatever is given. */
static bool token_equal(const char *given, size_t glen, const char *want) {
  size_t wlen = strlen(want);
  unsigned char d = glen != wlen;
  for (size_t i = 0; i < wlen; i++)
    d |= (unsigned char)want[i] ^ (unsigned char)(i < glen ? given[i] : 0);
  return d == 0;
}

/* The bearer token of the Authorization header, NULL if there is none. */
static const char *bearer(struct MHD_Connection *c, size_t *len) {
  const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                              MHD_HTTP_HEADER_AUTHORIZATION);
  if (!h) return NULL;
  h += strspn(h, " \t");
  if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t')) return NULL;
  h += 6 + strspn(h + 6, " \t");
  size_t n = strlen(h);
  while (n && (h[n - 1] == ' ' || h[n - 1] == '\t')) n--;
  *len = n;
  return h;
}

static bool is_read(const char *method) {
  return strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
}

/* The first answer, from the headers alone: a refusal queued (returns
 * true with *ok set) or the route to run once the body is in. */
static bool check_headers(gw_admin *a, struct MHD_Connection *c, const char *url,
                          const char *method, req_state *rs, enum MHD_Result *ok) {
  bool read = is_read(method);
  if (!read || a->token_for_reads) {
    if (!a->token) {
      *ok = refuse(a, c, 403, NULL, NULL,
                   "admin.token is not set: the admin API is read-only");
      return true;
    }
    size_t glen = 0;
    const char *given = bearer(c, &glen);
    if (!given || !token_equal(given, glen, a->token)) {
      *ok = refuse(a, c, 401, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                   given ? "Bearer realm=\"gangway\", error=\"invalid_token\""
                         : "Bearer realm=\"gangway\"",
                   given ? "wrong token" : "this request needs Authorization: Bearer <admin.token>");
      return true;
    }
  }
  const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
  char allow[128] = "";
  bool path_known = false;
  for (size_t i = 0; i < a->nroutes; i++) {
    const gw_admin_route *r = &a->routes[i];
    if (!route_match(r->pattern, url, NULL)) continue;
    path_known = true;
    if (strcmp(r->method, want) == 0) {
      if (!route_match(r->pattern, url, rs)) {
        *ok = MHD_NO;
        return true;
      }
      rs->route = r;
      break;
    }
    if (!strstr(allow, r->method)) {
      size_t n = strlen(allow);
      snprintf(allow + n, sizeof allow - n, "%s%s%s", n ? ", " : "", r->method,
               strcmp(r->method, "GET") == 0 ? ", HEAD" : "");
    }
  }
  if (!rs->route) {
    *ok = path_known ? refuse(a, c, 405, MHD_HTTP_HEADER_ALLOW, allow,
                              "method %s not allowed here (allowed: %s)", method, allow)
                     : refuse(a, c, 404, NULL, NULL, "no such path: %s", url);
    return true;
  }
  const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                               MHD_HTTP_HEADER_CONTENT_LENGTH);
  if (cl && strtoull(cl, NULL, 10) > a->max_body) {
    *ok = refuse(a, c, 413, NULL, NULL, "request body over %zu bytes", a->max_body);
    return true;
  }
  return false;
}

/* Keeps up to max_body bytes; past it counts and drops the rest. 0 or
 * -ENOMEM. */
static int take_body(gw_admin *a, req_state *rs, const char *data, size_t n) {
  if (rs->discarded || rs->len + n > a->max_body) {
    rs->discarded += n;
    return 0;
  }
  if (rs->len + n + 1 > rs->cap) {
    size_t cap = rs->cap ? rs->cap : 1024;
    while (cap < rs->len + n + 1) cap *= 2;
    char *p = realloc(rs->body, cap);
    if (!p) return -ENOMEM;
    rs->body = p;
    rs->cap = cap;
  }
  memcpy(rs->body + rs->len, data, n);
  rs->len += n;
  rs->body[rs->len] = '\0';
  return 0;
}

static enum MHD_Result run_handler(gw_admin *a, struct MHD_Connection *c,
                                   const char *url, const char *method, req_state *rs) {
  gw_admin_request req = {
      .method = strcmp(method, "HEAD") == 0 ? "GET" : method,
      .path = url,
      .nparams = rs->nparams,
      .body = rs->body ? rs->body : "",
      .body_len = rs->len,
      .conn_ = c,
  };
  for (size_t i = 0; i < rs->nparams; i++) {
    req.param_names[i] = rs->names[i];
    req.params[i] = rs->values[i];
  }
  gw_admin_response res = {0};
  rs->route->handler(a->ud, &req, &res);
  if (res.status < 100 || res.status > 599) {
    response_clear(&res);
    if (gw_admin_reply_error(&res, 500, "the handler gave no answer") < 0) return MHD_NO;
  }
  enum MHD_Result ok = queue(a, c, &res);
  response_clear(&res);
  return ok;
}

/* MHD's access handler: called once with the headers, then once per piece
 * of body, then once more with *upload_data_size 0. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c,
                                  const char *url, const char *method,
                                  const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
  (void)version;
  gw_admin *a = cls;
  req_state *rs = *con_cls;
  if (!rs) {
    rs = calloc(1, sizeof *rs);
    if (!rs) return MHD_NO;
    *con_cls = rs;
    enum MHD_Result ok = MHD_YES;
    if (check_headers(a, c, url, method, rs, &ok)) rs->route = NULL;
    return ok;
  }
  if (!rs->route) { /* answered from the headers: drop any body */
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (*upload_data_size) {
    if (take_body(a, rs, upload_data, *upload_data_size) < 0) return MHD_NO;
    *upload_data_size = 0;
    /* a chunked body far past the limit is not read to its end */
    return rs->discarded > 16 * a->max_body + 65536 ? MHD_NO : MHD_YES;
  }
  if (rs->discarded)
    return refuse(a, c, 413, NULL, NULL, "request body over %zu bytes", a->max_body);
  return run_handler(a, c, url, method, rs);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)toe;
  gw_admin *a = cls;
  conn *k = conn_of(c);
  if (k) k->deadline = uv_now(a->loop) + a->timeout_ms; /* the next request's */
  req_state *rs = *con_cls;
  if (!rs) return;
  free(rs->strings);
  free(rs->body);
  free(rs);
  *con_cls = NULL;
}

static void on_sweep(uv_timer_t *t);

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
  gw_admin *a = cls;
  conn *k = *socket_context;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    k = calloc(1, sizeof *k);
    if (!k || !i) {
      /* without a deadline MHD's inactivity timeout still applies */
      free(k);
      return;
    }
    k->fd = i->connect_fd;
    k->deadline = uv_now(a->loop) + a->timeout_ms;
    k->next = a->conns;
    if (a->conns) a->conns->prev = k;
    a->conns = k;
    *socket_context = k;
    if (!a->stop_pending && !uv_is_active((uv_handle_t *)&a->sweep)) {
      uint64_t every = a->timeout_ms / 4 ? a->timeout_ms / 4 : 1;
      uv_timer_start(&a->sweep, on_sweep, every, every);
    }
    return;
  }
  if (!k) return;
  if (k->prev) k->prev->next = k->next;
  else a->conns = k->next;
  if (k->next) k->next->prev = k->prev;
  free(k);
  *socket_context = NULL;
  if (!a->conns && !a->stop_pending) uv_timer_stop(&a->sweep);
}

/* MHD's messages are about clients' mistakes (malformed requests, closed
 * sockets): debug level, so a client cannot flood the log. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
  (void)cls;
  if (!gw_log_enabled(GW_LOG_DEBUG)) return;
  char msg[256];
  vsnprintf(msg, sizeof msg, fmt, ap);
  msg[strcspn(msg, "\r\n")] = '\0';
  gw_log(GW_LOG_DEBUG, "admin: %s", msg);
}

/* ---- the loop ---- */

static void stop_now(gw_admin *a);
static void on_timer(uv_timer_t *t);

static unsigned connections(gw_admin *a) {
  const union MHD_DaemonInfo *i =
      MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
  return i ? i->num_connections : 0;
}

/* MHD_run, then the timer set to when MHD must run again (MHD may hold
 * work that no descriptor will announce: a timeout, data already read). */
static void run(gw_admin *a) {
  a->in_run = true;
  unsigned before = connections(a);
  MHD_run(a->mhd);
  /* At its connection limit or at EMFILE MHD takes the listening socket
   * out of its epoll set, and puts it back at the start of the next
   * MHD_run: run again when connections closed, or nothing else would. */
  if (connections(a) < before) MHD_run(a->mhd);
  a->in_run = false;
  if (a->stop_pending) {
    stop_now(a);
    return;
  }
  MHD_UNSIGNED_LONG_LONG ms;
  if (MHD_get_timeout(a->mhd, &ms) == MHD_YES)
    uv_timer_start(&a->timer, on_timer, ms > 3600000 ? 3600000 : (uint64_t)ms, 0);
  else
    uv_timer_stop(&a->timer);
}

static void on_timer(uv_timer_t *t) { run(t->data); }

/* Shuts down (without closing: the descriptor stays MHD's) every
 * connection past its deadline; MHD then reads the end and closes it. */
static void on_sweep(uv_timer_t *t) {
  gw_admin *a = t->data;
  uint64_t now = uv_now(a->loop);
  bool cut = false;
  for (conn *k = a->conns; k; k = k->next) {
    if (k->deadline && now >= k->deadline && !k->cut) {
      shutdown(k->fd, SHUT_RDWR);
      k->cut = cut = true;
    }
  }
  if (cut) run(a);
}

static void on_poll(uv_poll_t *p, int status, int events);

static void on_backoff(uv_timer_t *t) {
  gw_admin *a = t->data;
  uv_poll_start(&a->poll, UV_READABLE, on_poll);
  run(a);
}

/* Whether a client waits on the listening socket although MHD is below its
 * connection limit: accept() failed (EMFILE, ENFILE, ENOBUFS). */
static bool accept_failed(gw_admin *a) {
  if (a->listen_fd < 0 || connections(a) >= a->max_connections) return false;
  struct pollfd p = {a->listen_fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1;
}

static void on_poll(uv_poll_t *p, int status, int events) {
  (void)events;
  gw_admin *a = p->data;
  if (status < 0) gw_debug("admin: poll: %s", uv_strerror(status));
  run(a);
  if (a->stop_pending) return;
  /* MHD 0.9.75 keeps a listening socket it cannot accept from in its epoll
   * set when it has no connection (at the open-files limit, say), so its
   * descriptor stays readable: pause instead of spinning, and try again
   * in 100 ms; the loop and the relay go on meanwhile. */
  a->stalls = accept_failed(a) ? a->stalls + 1 : 0;
  if (a->stalls >= 3) {
    a->stalls = 0;
    uv_poll_stop(&a->poll);
    uv_timer_start(&a->backoff, on_backoff, 100, 0);
  }
}

static void on_closed(uv_handle_t *h) {
  gw_admin *a = h->data;
  if (--a->closing > 0) return;
  free(a->routes);
  free(a->token);
  free(a);
}

/* The poll handle leaves libuv's epoll set before MHD closes the
 * descriptor it watches. */
static void stop_now(gw_admin *a) {
  uv_close((uv_handle_t *)&a->poll, on_closed);
  uv_close((uv_handle_t *)&a->timer, on_closed);
  uv_close((uv_handle_t *)&a->sweep, on_closed);
  uv_close((uv_handle_t *)&a->backoff, on_closed);
  MHD_stop_daemon(a->mhd);
  a->mhd = NULL;
}

void gw_admin_stop(gw_admin *a) {
  if (!a || a->stop_pending) return;
  a->stop_pending = true;
  if (!a->in_run) stop_now(a);
}

int gw_admin_port(const gw_admin *a) { return a->port; }

static char *token_copy(const char *token, bool *oom) {
  *oom = false;
  if (!token || !*token) return NULL;
  char *t = strdup(token);
  *oom = t == NULL;
  return t;
}

int gw_admin_set_token(gw_admin *a, const char *token, bool token_for_reads) {
  bool oom;
  char *t = token_copy(token, &oom);
  if (oom) return -ENOMEM;
  if ((!t && !a->loopback) || (!t && token_for_reads)) return -EINVAL;
  free(a->token);
  a->token = t;
  a->token_for_reads = token_for_reads;
  return 0;
}

/* ---- starting ---- */

/* "host:port" with a numeric IPv4 host, "localhost", or "[IPv6]". */
static int parse_listen(const char *listen, struct sockaddr_storage *ss) {
  char host[64];
  const char *colon;
  if (!listen) return -EINVAL;
  if (listen[0] == '[') {
    const char *close = strchr(listen, ']');
    if (!close || close[1] != ':' || (size_t)(close - listen) > sizeof host) return -EINVAL;
    memcpy(host, listen + 1, (size_t)(close - listen - 1));
    host[close - listen - 1] = '\0';
    colon = close + 1;
  } else {
    colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host) return -EINVAL;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
  }
  char *end;
  errno = 0;
  unsigned long port = strtoul(colon + 1, &end, 10);
  if (!colon[1] || *end || errno || port > 65535) return -EINVAL;
  memset(ss, 0, sizeof *ss);
  if (listen[0] == '[')
    return uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0 ? 0 : -EINVAL;
  return uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 &&
                 strspn(host, "0123456789.") == strlen(host)
             ? 0
             : -EINVAL;
}

static bool is_loopback(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(a) ||
         (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

static bool method_ok(const char *m) {
  static const char *const known[] = {"GET", "POST", "PUT", "DELETE", "PATCH"};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
    if (m && strcmp(m, known[i]) == 0) return true;
  return false;
}

gw_admin *gw_admin_start(uv_loop_t *loop, const gw_admin_config *cfg,
                         const gw_admin_route *routes, size_t nroutes, void *ud,
                         char *err, size_t errlen) {
  struct sockaddr_storage ss;
  if (parse_listen(cfg->listen, &ss) < 0) {
    snprintf(err, errlen, "admin.listen: '%s' is not an address and port "
             "(\"127.0.0.1:9973\", \"[::1]:9973\")", cfg->listen ? cfg->listen : "");
    return NULL;
  }
  bool has_token = cfg->token && *cfg->token;
  if (!has_token && !is_loopback(&ss)) {
    snprintf(err, errlen, "admin.listen %s is not a loopback address: set admin.token "
             "(requests from other hosts must prove who they are)", cfg->listen);
    return NULL;
  }
  if (!has_token && cfg->token_for_reads) {
    snprintf(err, errlen, "admin.token_for_reads needs admin.token");
    return NULL;
  }
  for (size_t i = 0; i < nroutes; i++) {
    if (!method_ok(routes[i].method) || !routes[i].pattern || !pattern_ok(routes[i].pattern) ||
        !routes[i].handler) {
      snprintf(err, errlen, "admin: bad route %s %s", routes[i].method ? routes[i].method : "?",
               routes[i].pattern ? routes[i].pattern : "?");
      return NULL;
    }
  }
  gw_admin *a = calloc(1, sizeof *a);
  bool oom = a == NULL;
  if (a) {
    a->loop = loop;
    a->ud = ud;
    a->loopback = is_loopback(&ss);
    a->token_for_reads = cfg->token_for_reads;
    a->max_body = cfg->max_body ? cfg->max_body : GW_ADMIN_MAX_BODY;
    a->max_connections = cfg->max_connections ? cfg->max_connections : GW_ADMIN_MAX_CONNECTIONS;
    a->timeout_ms = 1000ull * (cfg->timeout_s ? cfg->timeout_s : GW_ADMIN_TIMEOUT_S);
    a->token = token_copy(cfg->token, &oom);
    a->routes = malloc((nroutes ? nroutes : 1) * sizeof *routes);
    oom = oom || !a->routes;
  }
  if (oom) {
    if (a) free(a->token), free(a->routes);
    free(a);
    snprintf(err, errlen, "admin: out of memory");
    return NULL;
  }
  if (nroutes) memcpy(a->routes, routes, nroutes * sizeof *routes);
  a->nroutes = nroutes;
  if (cfg->metrics)
    a->requests = gw_metrics_counter(cfg->metrics, "gangway_admin_requests_total",
                                     "Admin API requests answered, per HTTP status.",
                                     GW_LABELS("code"));
  unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG |
                   (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
  a->mhd = MHD_start_daemon(
      flags, 0, NULL, NULL, on_request, a,
      MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, a,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
      MHD_OPTION_CONNECTION_LIMIT, a->max_connections,
      MHD_OPTION_CONNECTION_TIMEOUT, cfg->timeout_s ? cfg->timeout_s : GW_ADMIN_TIMEOUT_S,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
      MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
      MHD_OPTION_STRICT_FOR_CLIENT, 1,
      MHD_OPTION_END);
  if (!a->mhd) {
    int e = errno;
    snprintf(err, errlen, "admin: cannot listen on %s: %s", cfg->listen,
             e ? strerror(e) : "libmicrohttpd refused to start");
    free(a->token);
    free(a->routes);
    free(a);
    return NULL;
  }
  const union MHD_DaemonInfo *ep = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_EPOLL_FD);
  const union MHD_DaemonInfo *port = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_BIND_PORT);
  a->port = port ? port->port : 0;
  int rc = ep ? uv_poll_init(loop, &a->poll, ep->epoll_fd) : UV_EINVAL;
  if (rc < 0) {
    snprintf(err, errlen, "admin: cannot watch libmicrohttpd's epoll descriptor: %s",
             uv_strerror(rc));
    MHD_stop_daemon(a->mhd);
    free(a->token);
    free(a->routes);
    free(a);
    return NULL;
  }
  uv_timer_init(loop, &a->timer);
  uv_timer_init(loop, &a->sweep);
  uv_timer_init(loop, &a->backoff);
  a->poll.data = a->timer.data = a->sweep.data = a->backoff.data = a;
  a->closing = 4;
  const union MHD_DaemonInfo *lfd = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_LISTEN_FD);
  a->listen_fd = lfd ? lfd->listen_fd : -1;
  uv_poll_start(&a->poll, UV_READABLE, on_poll);
  run(a);
  return a;
}
