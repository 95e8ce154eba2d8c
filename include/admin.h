/* admin.h: the admin HTTP endpoint, libmicrohttpd on gangway's libuv loop.
 *
 * MHD runs without a thread of its own (external polling with epoll): a
 * uv_poll_t watches MHD's epoll descriptor and a uv_timer_t follows
 * MHD_get_timeout(), and both call MHD_run(). So every handler runs on the
 * loop thread, between two callbacks of the relay, and may read and change
 * gangway's state directly. All HTTP parsing is MHD's.
 *
 * Rules applied before any handler runs, in this order:
 *   - a request that may change something (any method but GET and HEAD)
 *     needs "Authorization: Bearer <token>", and so does every request
 *     when token_for_reads is set: 401 with WWW-Authenticate when it is
 *     missing or wrong (compared in constant time); 403 when no token is
 *     configured (the API is then read-only);
 *   - a path no route matches: 404; a path some route matches with another
 *     method: 405 with an Allow header;
 *   - a body larger than max_body: 413 (at once when Content-Length says
 *     so, else once the body has been read past the limit);
 *   - at most max_connections connections; a request must arrive whole
 *     within timeout_s seconds of its connection (or of the answer before
 *     it on a kept-alive connection), else the connection is shut down, so
 *     idle clients and clients that trickle bytes (slowloris) cannot hold
 *     the endpoint; malformed requests get MHD's 4xx or a close;
 *   - when accept() fails (the open-files limit), the endpoint pauses its
 *     listener 100 ms at a time instead of spinning, and serves again as
 *     soon as descriptors are free.
 * Error bodies are JSON: {"error": "..."}. Every response has
 * Cache-Control: no-store. HEAD is answered as GET without the body. */
#ifndef GW_ADMIN_H
#define GW_ADMIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "metrics.h"

typedef struct gw_admin gw_admin;

typedef struct gw_admin_config {
  /* "127.0.0.1:9973", "[::1]:9973", "localhost:9973" (127.0.0.1),
   * "0.0.0.0:9973", "[::]:9973"; numeric addresses only; port 0 picks a
   * free port (see gw_admin_port). A non-loopback address needs a token. */
  const char *listen;
  const char *token;            /* NULL or "": none, the API is read-only */
  bool token_for_reads;         /* GET and HEAD need the token too */
  unsigned max_connections;     /* 0: GW_ADMIN_MAX_CONNECTIONS */
  unsigned timeout_s;           /* 0: GW_ADMIN_TIMEOUT_S */
  size_t max_body;              /* 0: GW_ADMIN_MAX_BODY */
  /* Optional: gangway_admin_requests_total{code} is registered here and
   * counted. Must outlive the endpoint. */
  gw_metrics *metrics;
} gw_admin_config;

#define GW_ADMIN_MAX_CONNECTIONS 64
#define GW_ADMIN_TIMEOUT_S 10
#define GW_ADMIN_MAX_BODY (64 * 1024)
#define GW_ADMIN_PARAMS_MAX 4

/* A request as a handler sees it; valid during the handler call only. */
typedef struct gw_admin_request {
  const char *method;           /* as sent; "GET" for HEAD */
  const char *path;             /* percent-decoded, without the query */
  /* Values of the route's {name} segments, in pattern order. */
  const char *param_names[GW_ADMIN_PARAMS_MAX];
  const char *params[GW_ADMIN_PARAMS_MAX];
  size_t nparams;
  const char *body;             /* NUL-terminated ("" without a body) */
  size_t body_len;
  void *conn_;                  /* private: MHD's connection */
} gw_admin_request;

/* A path parameter by name ("id" for /sessions/{id}), NULL if none. */
const char *gw_admin_param(const gw_admin_request *req, const char *name);
/* A query argument ("?limit=10"), decoded; NULL if absent, "" if valueless. */
const char *gw_admin_query(const gw_admin_request *req, const char *key);
/* A request header, case-insensitive; NULL if absent. */
const char *gw_admin_header(const gw_admin_request *req, const char *name);

/* The response a handler fills. A handler that sets nothing answers 500. */
typedef struct gw_admin_response gw_admin_response;

/* Sets status, content type and body (copied). 0 or -ENOMEM. */
int gw_admin_reply(gw_admin_response *res, int status, const char *content_type,
                   const void *body, size_t len);
/* Takes a malloc'd body (freed by the endpoint, also on failure). */
int gw_admin_reply_take(gw_admin_response *res, int status,
                        const char *content_type, char *body, size_t len);
/* Encodes j (steals the reference, like json_object_set_new) as compact
 * JSON plus a newline, Content-Type application/json. */
int gw_admin_reply_json(gw_admin_response *res, int status, json_t *j);
/* {"error": "<message>"} with the given status. */
int gw_admin_reply_error(gw_admin_response *res, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 200 with the registry in Prometheus text format (GET /metrics). */
int gw_admin_reply_metrics(gw_admin_response *res, gw_metrics *m);
/* An extra response header (Location, Retry-After...). 0 or -ENOMEM. */
int gw_admin_reply_header(gw_admin_response *res, const char *name, const char *value);

typedef void (*gw_admin_handler)(void *ud, const gw_admin_request *req,
                                 gw_admin_response *res);

/* A route: one method and a pattern of literal segments and {name}
 * segments (each matches one non-empty segment): "/metrics",
 * "/sessions/{id}", "/scripts/{name}". Several routes may share a pattern
 * with different methods. */
typedef struct gw_admin_route {
  const char *method;           /* "GET", "POST", "PUT", "DELETE", "PATCH" */
  const char *pattern;
  gw_admin_handler handler;
} gw_admin_route;

/* Binds cfg->listen and serves routes (the array is copied; strings must
 * outlive the endpoint) on loop; handlers get ud. NULL on failure with the
 * reason in err (bad address, non-loopback address without a token,
 * token_for_reads without a token, a bad pattern, bind failure). */
gw_admin *gw_admin_start(uv_loop_t *loop, const gw_admin_config *cfg,
                         const gw_admin_route *routes, size_t nroutes, void *ud,
                         char *err, size_t errlen);

/* The port bound (useful with port 0). */
int gw_admin_port(const gw_admin *a);

/* A new token on reload, without rebinding (the strings are copied). A
 * non-loopback endpoint keeps its old token when given none: -EINVAL. */
int gw_admin_set_token(gw_admin *a, const char *token, bool token_for_reads);

/* Closes the listener and every connection at once; the memory is freed
 * by the loop's close callbacks (run the loop afterwards). */
void gw_admin_stop(gw_admin *a);

#endif
