/* upstream.c: a listener's pool of upstream servers (see upstream.h):
 * the choice per session (round robin, least sessions, hash of the client
 * address), failover, health checks and name resolution on the loop.
 *
 * Lifetime: a pool is referenced by its listener (until gw_upstream_retire),
 * by every try and by every session holding one of its servers; it is freed
 * when nothing references it and its handles (check timers and sockets, the
 * resolve timer) and resolves in flight are done. */
#include "upstream.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define ADDRS_MAX 8 /* addresses kept per host name */

#define container_of(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

struct gw_upstream_server {
  gw_upstream *pool;
  unsigned idx;
  gw_upstream_server_config cfg;
  bool named;                   /* cfg.host is a name to resolve */
  bool resolved;                /* a first resolution has ended */
  int resolve_error;            /* the last one's, 0 when it worked */
  struct sockaddr_storage addrs[ADDRS_MAX];
  unsigned naddrs, next_addr;
  bool up;
  uint32_t successes, failures; /* consecutive, toward rise and fall */
  int last_error;
  int64_t rr_current;           /* smooth weighted round robin */
  int64_t own_sessions;         /* without a registry */
  int64_t *sessions;            /* the gauge's slot, shared by the pools of
                                   successive reloads: least_sessions sees
                                   every session on the server */
  int64_t *m_up;
  uint64_t *m_connect_failures, *m_checks_ok, *m_checks_failed, *m_resolve_failures;
  uint64_t m_dummy[4];
  int64_t m_dummy_up;
  gw_upstream_try *waiters;     /* tries waiting for the first resolution */
  /* health check */
  uv_timer_t check_timer;
  uv_tcp_t check_tcp;
  uv_connect_t check_req;
  bool checking, check_tcp_open;
  /* resolution */
  uv_getaddrinfo_t gai;
  bool gai_busy;
};

struct gw_upstream {
  uv_loop_t *loop;
  char *listener;
  gw_balance balance;
  bool health;
  uint32_t interval_ms, timeout_ms, rise, fall, resolve_ms;
  gw_upstream_server *servers;
  size_t n;
  unsigned rotate;              /* least_sessions: where ties start */
  unsigned refs;                /* listener, tries, sessions */
  unsigned pending;             /* handles open, resolves in flight */
  bool retired;
  bool has_names;
  uv_timer_t resolve_timer;
};

struct gw_upstream_try {
  gw_upstream *pool;
  gw_upstream_server *cur;      /* counted in its sessions */
  uint64_t tried;               /* bit idx: failed or skipped already */
  uint64_t deadline_ms;
  bool started;
  unsigned addr_base, addr_tried; /* cur's addresses: where this session
                                   started, how many failed */
  uint8_t key[16];              /* the client's IP, for hash */
  uint8_t keylen;
  gw_upstream_try *wait_next, *wait_prev; /* in cur->waiters */
  bool waiting;
  void (*ready)(void *ud);
  void *ready_ud;
};

/* ---- references ---- */

static void pool_free(gw_upstream *u) {
  free(u->servers);
  free(u->listener);
  free(u);
}

static void pool_maybe_free(gw_upstream *u) {
  if (!u->refs && !u->pending) pool_free(u);
}

static void pool_unref(gw_upstream *u) {
  u->refs--;
  pool_maybe_free(u);
}

static void handle_closed(uv_handle_t *h) {
  gw_upstream *u = h->data;
  u->pending--;
  pool_maybe_free(u);
}

/* ---- state ---- */

const char *gw_upstream_server_name(const gw_upstream_server *s) { return s->cfg.name; }
bool gw_upstream_server_up(const gw_upstream_server *s) { return s->up; }
int64_t gw_upstream_server_sessions(const gw_upstream_server *s) { return *s->sessions; }

gw_upstream_server *gw_upstream_server_at(gw_upstream *u, size_t i) {
  return i < u->n ? &u->servers[i] : NULL;
}

const gw_upstream_server_config *gw_upstream_server_config_of(const gw_upstream_server *s) {
  return &s->cfg;
}

int gw_upstream_server_last_error(const gw_upstream_server *s) { return s->last_error; }

const struct sockaddr_storage *gw_upstream_server_addrs(const gw_upstream_server *s, unsigned *n,
                                                        int *resolve_error) {
  if (!s->named) {
    *n = 1;
    *resolve_error = 0;
    return &s->cfg.sockaddr;
  }
  *n = s->naddrs;
  *resolve_error = s->resolve_error;
  return s->addrs;
}

const char *gw_upstream_balance_name(const gw_upstream *u) {
  switch (u->balance) {
  case GW_BALANCE_LEAST_SESSIONS: return "least_sessions";
  case GW_BALANCE_HASH: return "hash";
  default: return "round_robin";
  }
}

bool gw_upstream_checks(const gw_upstream *u) { return u->health; }

static void set_up(gw_upstream_server *s, bool up, const char *why) {
  if (s->up == up) return;
  s->up = up;
  *s->m_up = up;
  gw_upstream *u = s->pool;
  if (u->retired) return;
  if (up)
    gw_info("upstream of %s: server %s (%s) is up%s%s", u->listener, s->cfg.name, s->cfg.addr,
            why ? ": " : "", why ? why : "");
  else
    gw_warn("upstream of %s: server %s (%s) is down: %s", u->listener, s->cfg.name, s->cfg.addr,
            why);
}

void gw_upstream_server_result(gw_upstream_server *s, bool ok, int status, bool from_check) {
  gw_upstream *u = s->pool;
  if (from_check) (*(ok ? s->m_checks_ok : s->m_checks_failed))++;
  else if (!ok) (*s->m_connect_failures)++;
  s->last_error = ok ? 0 : status; /* for GET /upstreams */
  if (!u->health) return; /* no checks: servers stay up, failures fail over */
  char why[160];
  if (ok) {
    s->failures = 0;
    if (!from_check) return; /* only checks bring a server back */
    if (++s->successes >= u->rise && !s->up) {
      snprintf(why, sizeof why, "%u check(s) passed", s->successes);
      set_up(s, true, why);
    }
    return;
  }
  s->successes = 0;
  if (++s->failures >= u->fall && s->up) {
    snprintf(why, sizeof why, "%u failed %s in a row, the last: %s", s->failures,
             from_check ? "checks" : "connects or checks", uv_strerror(status));
    set_up(s, false, why);
  }
}

/* ---- choice ---- */

static uint64_t mix64(uint64_t x) { /* splitmix64's finalizer */
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static uint64_t fnv1a(const void *p, size_t n, uint64_t h) {
  for (size_t i = 0; i < n; i++) h = (h ^ ((const uint8_t *)p)[i]) * 0x100000001b3ULL;
  return h;
}

/* Rendezvous hashing: each server draws weight numbers from (client, name,
 * replica) and the highest draw wins, so a client keeps its server while
 * that server stays among the candidates, and a server's share is its
 * weight over the total. */
static uint64_t hash_score(const gw_upstream_try *t, const gw_upstream_server *s) {
  uint64_t h = fnv1a(s->cfg.name, strlen(s->cfg.name), fnv1a(t->key, t->keylen, 0xcbf29ce484222325ULL));
  uint64_t best = 0;
  for (uint32_t w = 0; w < s->cfg.weight; w++) {
    uint64_t v = mix64(h + w * 0x9e3779b97f4a7c15ULL);
    if (v > best) best = v;
  }
  return best;
}

/* A server that has no address to dial: its name never resolved. */
static bool unreachable(const gw_upstream_server *s) {
  return s->named && s->resolved && !s->naddrs;
}

/* Candidates in tiers: up primaries, up backups, then down primaries and
 * down backups (a check can be wrong; trying costs one refused connect).
 * The policy picks within the first tier that has an untried server. */
static gw_upstream_server *choose(gw_upstream *u, gw_upstream_try *t) {
  for (int tier = 0; tier < 4; tier++) {
    bool want_up = tier < 2, want_backup = tier % 2;
    gw_upstream_server *cand[GW_UPSTREAM_SERVERS_MAX];
    size_t nc = 0;
    for (size_t i = 0; i < u->n; i++) {
      gw_upstream_server *s = &u->servers[i];
      bool up = s->up && !unreachable(s);
      if (t->tried >> i & 1 || up != want_up || s->cfg.backup != want_backup) continue;
      cand[nc++] = s;
    }
    if (!nc) continue;
    gw_upstream_server *best = cand[0];
    if (u->balance == GW_BALANCE_ROUND_ROBIN) {
      int64_t total = 0;
      for (size_t i = 0; i < nc; i++) {
        cand[i]->rr_current += cand[i]->cfg.weight;
        total += cand[i]->cfg.weight;
        if (cand[i]->rr_current > best->rr_current) best = cand[i];
      }
      best->rr_current -= total;
    } else if (u->balance == GW_BALANCE_LEAST_SESSIONS) {
      /* fewest sessions per weight; ties go round from a rotating start */
      size_t start = u->rotate++ % nc;
      best = cand[start];
      for (size_t k = 1; k < nc; k++) {
        gw_upstream_server *s = cand[(start + k) % nc];
        if (*s->sessions * (int64_t)best->cfg.weight < *best->sessions * (int64_t)s->cfg.weight)
          best = s;
      }
    } else {
      uint64_t top = hash_score(t, best);
      for (size_t i = 1; i < nc; i++) {
        uint64_t v = hash_score(t, cand[i]);
        if (v > top) top = v, best = cand[i];
      }
    }
    return best;
  }
  return NULL;
}

static void take(gw_upstream_try *t, gw_upstream_server *s) {
  if (t->cur) (*t->cur->sessions)--;
  t->cur = s;
  t->addr_tried = 0;
  if (s) t->addr_base = s->next_addr++; /* sessions spread over a name's addresses */
  if (s) (*s->sessions)++;
}

static void unwait(gw_upstream_try *t) {
  if (!t->waiting) return;
  if (t->wait_prev) t->wait_prev->wait_next = t->wait_next;
  else t->cur->waiters = t->wait_next;
  if (t->wait_next) t->wait_next->wait_prev = t->wait_prev;
  t->wait_next = t->wait_prev = NULL;
  t->waiting = false;
}

gw_upstream_try *gw_upstream_try_new(gw_upstream *u, const struct sockaddr *client) {
  gw_upstream_try *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->pool = u;
  u->refs++;
  if (client && client->sa_family == AF_INET) {
    memcpy(t->key, &((const struct sockaddr_in *)client)->sin_addr, 4);
    t->keylen = 4;
  } else if (client && client->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)client)->sin6_addr;
    /* ::ffff:a.b.c.d (a dual-stack load balancer's PROXY header) is the
     * IPv4 client a.b.c.d: the same server */
    bool mapped = IN6_IS_ADDR_V4MAPPED(a6);
    t->keylen = mapped ? 4 : 16;
    memcpy(t->key, a6->s6_addr + (mapped ? 12 : 0), t->keylen);
  }
  take(t, choose(u, t));
  return t;
}

gw_upstream_server *gw_upstream_current(const gw_upstream_try *t) { return t->cur; }

int gw_upstream_route(gw_upstream_try *t, const char *name, char *err, size_t errlen) {
  gw_upstream *u = t->pool;
  if (t->started) {
    snprintf(err, errlen, "the connect to the upstream has started (route from gw.on_connect)");
    return -EALREADY;
  }
  for (size_t i = 0; i < u->n; i++) {
    gw_upstream_server *s = &u->servers[i];
    if (strcmp(s->cfg.name, name) && strcmp(s->cfg.addr, name)) continue;
    take(t, s);
    return 0;
  }
  size_t n = (size_t)snprintf(err, errlen, "no server \"%s\" in listener %s's upstream (", name,
                              u->listener);
  for (size_t i = 0; i < u->n && n < errlen; i++)
    n += (size_t)snprintf(err + n, errlen - n, "%s\"%s\"", i ? ", " : "", u->servers[i].cfg.name);
  if (n < errlen) snprintf(err + n, errlen - n, ")");
  return -ENOENT;
}

void gw_upstream_try_start(gw_upstream_try *t, uint64_t now_ms, uint32_t budget_ms) {
  t->started = true;
  t->deadline_ms = now_ms + budget_ms;
  gw_upstream_server *s = t->cur;
  if (!s || (s->up && !unreachable(s))) return;
  /* Down since it was chosen (or routed to): another up server first. */
  t->tried |= 1ULL << s->idx;
  gw_upstream_server *next = choose(t->pool, t);
  if (next && next->up && !unreachable(next)) take(t, next);
  /* not tried: still a candidate among the down ones */
  t->tried &= ~(1ULL << s->idx);
}

bool gw_upstream_try_started(const gw_upstream_try *t) { return t->started; }

uint64_t gw_upstream_attempt_ms(const gw_upstream_try *t, uint64_t now_ms) {
  if (now_ms >= t->deadline_ms) return 0;
  uint64_t left = t->deadline_ms - now_ms;
  gw_upstream *u = t->pool;
  bool more = t->cur && t->addr_tried + 1 < t->cur->naddrs;
  for (size_t i = 0; i < u->n && !more; i++)
    more = &u->servers[i] != t->cur && !(t->tried >> i & 1);
  return more && left > 1 ? left / 2 : left;
}

int gw_upstream_addr(gw_upstream_try *t, struct sockaddr_storage *out) {
  gw_upstream_server *s = t->cur;
  if (!s->named) {
    *out = s->cfg.sockaddr;
    return 0;
  }
  if (s->naddrs) {
    *out = s->addrs[(t->addr_base + t->addr_tried) % s->naddrs];
    return 0;
  }
  if (!s->resolved && t->pool->loop && !t->pool->retired) return -EAGAIN;
  return s->resolve_error ? s->resolve_error : UV_EAI_NONAME;
}

void gw_upstream_wait(gw_upstream_try *t, void (*ready)(void *ud), void *ud) {
  unwait(t);
  t->ready = ready;
  t->ready_ud = ud;
  t->waiting = true;
  t->wait_prev = NULL;
  t->wait_next = t->cur->waiters;
  if (t->wait_next) t->wait_next->wait_prev = t;
  t->cur->waiters = t;
}

gw_upstream_server *gw_upstream_failover(gw_upstream_try *t, int status) {
  gw_upstream_server *s = t->cur;
  if (!s) return NULL;
  unwait(t);
  if (status && t->addr_tried + 1 < s->naddrs) { /* the name's next address */
    t->addr_tried++;
    return s;
  }
  t->tried |= 1ULL << s->idx;
  if (status) gw_upstream_server_result(s, false, status, false);
  take(t, choose(t->pool, t));
  return t->cur;
}

gw_upstream_server *gw_upstream_connected(gw_upstream_try *t) {
  gw_upstream_server *s = t->cur;
  unwait(t);
  gw_upstream_server_result(s, true, 0, false);
  /* the try's pool reference and session count pass to the session */
  free(t);
  return s;
}

void gw_upstream_try_free(gw_upstream_try *t) {
  if (!t) return;
  unwait(t);
  gw_upstream *u = t->pool;
  take(t, NULL);
  free(t);
  pool_unref(u);
}

void gw_upstream_release(gw_upstream_server *s) {
  if (!s) return;
  (*s->sessions)--;
  pool_unref(s->pool);
}

/* ---- resolution ---- */

static void wake_waiters(gw_upstream_server *s) {
  while (s->waiters) {
    gw_upstream_try *t = s->waiters;
    unwait(t);
    t->ready(t->ready_ud);
  }
}

static void resolve_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  gw_upstream_server *s = container_of(req, gw_upstream_server, gai);
  gw_upstream *u = s->pool;
  s->gai_busy = false;
  u->refs++; /* a woken session may let go of the pool's last reference */
  u->pending--;
  unsigned n = 0;
  struct sockaddr_storage got[ADDRS_MAX];
  for (struct addrinfo *a = status == 0 ? res : NULL; a && n < ADDRS_MAX; a = a->ai_next) {
    if (a->ai_family != AF_INET && a->ai_family != AF_INET6) continue;
    memset(&got[n], 0, sizeof got[n]);
    memcpy(&got[n], a->ai_addr, a->ai_addrlen);
    if (a->ai_family == AF_INET) ((struct sockaddr_in *)&got[n])->sin_port = htons(s->cfg.port);
    else ((struct sockaddr_in6 *)&got[n])->sin6_port = htons(s->cfg.port);
    n++;
  }
  if (res) uv_freeaddrinfo(res);
  if (status != UV_EAI_CANCELED) {
    if (n) {
      bool first = !s->naddrs;
      memcpy(s->addrs, got, n * sizeof got[0]);
      s->naddrs = n;
      s->resolve_error = 0;
      if (first && !u->retired) {
        char a[64];
        gw_format_addr((struct sockaddr *)&got[0], a, sizeof a);
        gw_info("upstream of %s: server %s: %s resolved to %s%s", u->listener, s->cfg.name,
                s->cfg.host, a, n > 1 ? " and more" : "");
      }
      if (!u->health) set_up(s, true, "its name resolved");
    } else {
      int err = status ? status : UV_EAI_NODATA;
      (*s->m_resolve_failures)++;
      if (!u->retired && (err != s->resolve_error || !s->resolved))
        gw_warn("upstream of %s: server %s: cannot resolve \"%s\": %s%s", u->listener,
                s->cfg.name, s->cfg.host, uv_strerror(err),
                s->naddrs ? " (keeping the last addresses)" : "");
      s->resolve_error = err;
      if (!s->naddrs) set_up(s, false, "its name does not resolve");
    }
  }
  s->resolved = true;
  wake_waiters(s);
  pool_unref(u);
}

static void resolve_start(gw_upstream_server *s) {
  gw_upstream *u = s->pool;
  if (s->gai_busy || u->retired) return;
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  int rc = uv_getaddrinfo(u->loop, &s->gai, resolve_cb, s->cfg.host, NULL, &hints);
  if (rc == 0) {
    s->gai_busy = true;
    u->pending++;
    return;
  }
  s->resolved = true;
  s->resolve_error = rc;
  wake_waiters(s);
}

static void resolve_timer_cb(uv_timer_t *tm) {
  gw_upstream *u = container_of(tm, gw_upstream, resolve_timer);
  for (size_t i = 0; i < u->n; i++)
    if (u->servers[i].named) resolve_start(&u->servers[i]);
}

/* ---- health checks ---- */

static void check_start(uv_timer_t *tm);

static void check_tcp_closed(uv_handle_t *h) {
  gw_upstream_server *s = container_of((uv_tcp_t *)h, gw_upstream_server, check_tcp);
  s->check_tcp_open = false;
  handle_closed(h);
}

static void check_done(gw_upstream_server *s, int status) {
  if (!s->checking) return;
  s->checking = false;
  uv_close((uv_handle_t *)&s->check_tcp, check_tcp_closed);
  gw_upstream_server_result(s, status == 0, status, true);
  if (!s->pool->retired) uv_timer_start(&s->check_timer, check_start, s->pool->interval_ms, 0);
}

static void check_cb(uv_connect_t *req, int status) {
  if (status == UV_ECANCELED) return; /* the timeout closed it */
  check_done(container_of(req, gw_upstream_server, check_req), status);
}

static void check_timeout(uv_timer_t *tm) {
  check_done(container_of(tm, gw_upstream_server, check_timer), UV_ETIMEDOUT);
}

static void check_start(uv_timer_t *tm) {
  gw_upstream_server *s = container_of(tm, gw_upstream_server, check_timer);
  gw_upstream *u = s->pool;
  struct sockaddr_storage a;
  if (s->check_tcp_open || (s->named && !s->naddrs)) { /* nothing to dial yet */
    uv_timer_start(&s->check_timer, check_start, u->interval_ms, 0);
    return;
  }
  a = s->named ? s->addrs[0] : s->cfg.sockaddr;
  uv_tcp_init(u->loop, &s->check_tcp);
  s->check_tcp.data = u;
  s->check_tcp_open = s->checking = true;
  u->pending++;
  int rc = uv_tcp_connect(&s->check_req, &s->check_tcp, (struct sockaddr *)&a, check_cb);
  if (rc < 0) {
    check_done(s, rc);
    return;
  }
  uv_timer_start(&s->check_timer, check_timeout, u->timeout_ms, 0);
}

/* ---- the pool ---- */

static int server_metrics(gw_upstream_server *s, gw_metrics *reg, const char *listener) {
  s->m_up = &s->m_dummy_up;
  s->m_connect_failures = &s->m_dummy[0];
  s->m_checks_ok = &s->m_dummy[1];
  s->m_checks_failed = &s->m_dummy[2];
  s->m_resolve_failures = &s->m_dummy[3];
  s->sessions = &s->own_sessions;
  if (!reg) return 0;
  const char *const *lab = GW_LABELS("listener", "server");
  const char *const *val = GW_LABELS(listener, s->cfg.name);
  gw_metric *up = gw_metrics_gauge(reg, "gangway_upstream_up",
                                   "1 while the server is taken as up (health checks, names).", lab);
  gw_metric *ses = gw_metrics_gauge(reg, "gangway_upstream_sessions",
                                    "Sessions on the server, connecting or connected.", lab);
  gw_metric *cf = gw_metrics_counter(reg, "gangway_upstream_connect_failures_total",
                                     "Session connects to the server that failed.", lab);
  gw_metric *rf = gw_metrics_counter(reg, "gangway_upstream_resolve_failures_total",
                                     "Resolutions of the server's host name that failed.", lab);
  gw_metric *ck = gw_metrics_counter(reg, "gangway_upstream_checks_total",
                                     "Health checks of the server, by result.",
                                     GW_LABELS("listener", "server", "result"));
  if (!up || !ses || !cf || !rf || !ck) return -ENOMEM;
  s->m_up = gw_metric_gauge(up, val);
  s->sessions = gw_metric_gauge(ses, val);
  s->m_connect_failures = gw_metric_slot(cf, val);
  s->m_resolve_failures = gw_metric_slot(rf, val);
  s->m_checks_ok = gw_metric_slot(ck, GW_LABELS(listener, s->cfg.name, "ok"));
  s->m_checks_failed = gw_metric_slot(ck, GW_LABELS(listener, s->cfg.name, "failed"));
  if (!s->m_up || !s->sessions || !s->m_connect_failures || !s->m_resolve_failures ||
      !s->m_checks_ok || !s->m_checks_failed)
    return -ENOMEM;
  return 0;
}

gw_upstream *gw_upstream_new(uv_loop_t *loop, const char *listener, const gw_upstream_config *cfg,
                             gw_metrics *registry, const gw_upstream *prev) {
  gw_upstream *u = calloc(1, sizeof *u);
  if (!u) return NULL;
  u->servers = calloc(cfg->nservers, sizeof *u->servers);
  u->listener = strdup(listener);
  if (!u->servers || !u->listener) {
    pool_free(u);
    return NULL;
  }
  u->loop = loop;
  u->n = cfg->nservers;
  u->balance = cfg->balance;
  u->health = cfg->health;
  u->interval_ms = cfg->health_interval_ms;
  u->timeout_ms = cfg->health_timeout_ms;
  u->rise = cfg->health_rise;
  u->fall = cfg->health_fall;
  u->resolve_ms = cfg->resolve_ms;
  u->refs = 1;
  for (size_t i = 0; i < u->n; i++) {
    gw_upstream_server *s = &u->servers[i];
    s->pool = u;
    s->idx = (unsigned)i;
    s->cfg = cfg->servers[i];
    s->named = s->cfg.sockaddr.ss_family == 0;
    s->up = true;
    if (server_metrics(s, registry, listener) < 0) {
      pool_free(u);
      return NULL;
    }
    u->has_names |= s->named;
    /* the same server in the pool replaced: its state goes on */
    for (size_t j = 0; prev && j < prev->n; j++) {
      const gw_upstream_server *o = &prev->servers[j];
      if (strcmp(o->cfg.name, s->cfg.name) || strcmp(o->cfg.addr, s->cfg.addr)) continue;
      s->up = o->up || !u->health;
      s->successes = o->successes;
      s->failures = o->failures;
      if (s->named && o->naddrs) {
        memcpy(s->addrs, o->addrs, sizeof s->addrs);
        s->naddrs = o->naddrs;
        s->resolved = true;
      }
    }
    if (unreachable(s)) s->up = false;
    *s->m_up = s->up;
  }
  if (!loop) return u;
  for (size_t i = 0; i < u->n; i++) {
    gw_upstream_server *s = &u->servers[i];
    if (s->named) resolve_start(s);
    if (!u->health) continue;
    uv_timer_init(loop, &s->check_timer);
    s->check_timer.data = u;
    u->pending++;
    /* the first checks spread over the first interval */
    uv_timer_start(&s->check_timer, check_start, u->interval_ms * i / u->n + 1, 0);
  }
  if (u->has_names) {
    uv_timer_init(loop, &u->resolve_timer);
    u->resolve_timer.data = u;
    u->pending++;
    uv_timer_start(&u->resolve_timer, resolve_timer_cb, u->resolve_ms, u->resolve_ms);
  }
  return u;
}

void gw_upstream_retire(gw_upstream *u) {
  if (!u || u->retired) return;
  u->retired = true;
  if (u->loop) {
    for (size_t i = 0; i < u->n; i++) {
      gw_upstream_server *s = &u->servers[i];
      /* sessions waiting for it keep waiting: only an unwatched one goes */
      if (s->gai_busy && !s->waiters) uv_cancel((uv_req_t *)&s->gai);
      if (!u->health) continue;
      if (s->checking) {
        s->checking = false;
        uv_close((uv_handle_t *)&s->check_tcp, check_tcp_closed);
      }
      uv_close((uv_handle_t *)&s->check_timer, handle_closed);
    }
    if (u->has_names) uv_close((uv_handle_t *)&u->resolve_timer, handle_closed);
  }
  pool_unref(u);
}
