/* upstream.h: a listener's pool of upstream servers, and the choice of one
 * for each session.
 *
 * A pool is built from a listener's `upstream` (config.h gw_upstream_config)
 * for new sessions; a reload builds a new one and retires the old, which
 * lives on while sessions hold its servers (existing sessions are never
 * moved). On the libuv loop it resolves host names (uv_getaddrinfo, again
 * every resolve_ms, keeping the last good addresses when a resolve fails)
 * and runs TCP connect health checks (rise/fall). Without a loop (unit
 * tests) it only chooses.
 *
 * A session's connect goes through one gw_upstream_try: the policy's first
 * choice for the client's address (gw_upstream_try_new), maybe another by
 * name (gw_upstream_route, from on_connect), then failover: each server at
 * most once, up primaries first, then up backups, then the servers that are
 * down, all within one budget (timeouts.connect_ms). The relay dials; the
 * pool says where, how long an attempt may take, and counts the results. */
#ifndef GW_UPSTREAM_H
#define GW_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "config.h"
#include "metrics.h"

typedef struct gw_upstream gw_upstream;
typedef struct gw_upstream_server gw_upstream_server;
typedef struct gw_upstream_try gw_upstream_try;

/* A pool for listener `listener` from cfg (copied). loop NULL: no DNS, no
 * checks. registry (may be NULL) gets the per-server series
 * gangway_upstream_{up,sessions,connect_failures_total,checks_total,
 * resolve_failures_total}{listener,server}. prev (may be NULL) is the pool
 * this one replaces: servers of the same name and address keep their
 * state (up or down, addresses) instead of starting afresh. NULL when out
 * of memory. */
gw_upstream *gw_upstream_new(uv_loop_t *loop, const char *listener, const gw_upstream_config *cfg,
                             gw_metrics *registry, const gw_upstream *prev);
/* The listener lets go: checks and resolves stop; the pool is freed once
 * its handles are closed and no session holds one of its servers. */
void gw_upstream_retire(gw_upstream *u);

/* ---- one session's choice ---- */

/* The policy's choice for a client at address client (hash: its IP). The
 * try holds the pool until gw_upstream_connected or gw_upstream_try_free.
 * NULL when out of memory. */
gw_upstream_try *gw_upstream_try_new(gw_upstream *u, const struct sockaddr *client);
/* The server chosen now (NULL once every one failed). */
gw_upstream_server *gw_upstream_current(const gw_upstream_try *t);
/* Chooses the server named name, or whose "host:port" is name, before the
 * connect starts. 0; -ENOENT (err lists the names); -EALREADY once the
 * connect has started. */
int gw_upstream_route(gw_upstream_try *t, const char *name, char *err, size_t errlen);
/* The connect starts at now_ms with budget_ms for every attempt together.
 * A chosen server that is down is left for the next (uncounted) when
 * another untried one is up. */
void gw_upstream_try_start(gw_upstream_try *t, uint64_t now_ms, uint32_t budget_ms);
bool gw_upstream_try_started(const gw_upstream_try *t);
/* How long the attempt starting now may take: half of what is left of the
 * budget while another server remains to try, else all of it; 0 when the
 * budget is spent. */
uint64_t gw_upstream_attempt_ms(const gw_upstream_try *t, uint64_t now_ms);
/* Where to dial the current server: 0 and *out; -EAGAIN while its name is
 * being resolved for the first time (then gw_upstream_wait); another
 * negative error (a UV_EAI_* code) when it has no address. */
int gw_upstream_addr(gw_upstream_try *t, struct sockaddr_storage *out);
/* Calls ready(ud) once the current server's first resolution ends (not if
 * the try is freed or fails over first). */
void gw_upstream_wait(gw_upstream_try *t, void (*ready)(void *ud), void *ud);
/* The current server failed (status: a negative libuv error, counted as a
 * connect failure toward its health): the next server to try, NULL when
 * none is left. */
gw_upstream_server *gw_upstream_failover(gw_upstream_try *t, int status);
/* The current server accepted: the try is freed and its server returned;
 * the session holds it (and counts in its sessions) until
 * gw_upstream_release. */
gw_upstream_server *gw_upstream_connected(gw_upstream_try *t);
void gw_upstream_try_free(gw_upstream_try *t);
void gw_upstream_release(gw_upstream_server *s);

/* ---- servers ---- */
const char *gw_upstream_server_name(const gw_upstream_server *s);
bool gw_upstream_server_up(const gw_upstream_server *s);
int64_t gw_upstream_server_sessions(const gw_upstream_server *s);
/* Pool u's i-th server in config order (NULL past the end). */
gw_upstream_server *gw_upstream_server_at(gw_upstream *u, size_t i);
/* As configured (address, weight, backup). */
const gw_upstream_server_config *gw_upstream_server_config_of(const gw_upstream_server *s);
/* The last failed connect's or check's error (a libuv code), 0 if none
 * since it was up. */
int gw_upstream_server_last_error(const gw_upstream_server *s);
/* A name's addresses now (*n of them; none before its first resolution or
 * after it failed: then its error, else 0). */
const struct sockaddr_storage *gw_upstream_server_addrs(const gw_upstream_server *s, unsigned *n,
                                                        int *resolve_error);
/* The pool's balance ("round_robin", "least_sessions", "hash") and whether
 * it runs health checks. */
const char *gw_upstream_balance_name(const gw_upstream *u);
bool gw_upstream_checks(const gw_upstream *u);
/* A check's or a connect's result, as the loop would count it: toward
 * rise (ok) or fall. Exposed for the selection tests. */
void gw_upstream_server_result(gw_upstream_server *s, bool ok, int status, bool from_check);

#endif
