/* redis.c: the Redis client of include/redis.h: hiredis' asynchronous API
 * on the loop through its libuv adapter, one connection for commands and
 * one for pub/sub, each with its own connect deadline and backoff.
 *
 * hiredis frees a context itself when the connection fails or closes
 * (after its disconnect callback); we free it ourselves only when we drop
 * a connection (connect deadline, AUTH refused, new settings, close), and
 * then first detach it (ac->data = NULL) so that what hiredis calls back
 * while freeing it is ignored. Inside a hiredis callback redisAsyncFree is
 * deferred by hiredis until the callback returns. */
#include "redis.h"

#include <errno.h>
#include <fnmatch.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_IN_FLIGHT 65536 /* commands awaiting a reply */
/* Bytes of the commands awaiting a reply: each is copied into the
 * connection's output at once, outside the scripts' memory limit. */
#define MAX_BYTES_IN_FLIGHT ((size_t)64 << 20)

enum { C_DOWN, C_CONNECTING, C_SETUP, C_UP };

typedef struct conn {
  gw_redis *r;
  bool sub;                     /* the pub/sub connection */
  redisAsyncContext *ac;        /* NULL while down */
  int state;
  unsigned setup_left;          /* AUTH / SELECT replies still awaited */
  uv_timer_t timer;             /* connect deadline, or the next attempt */
  uint32_t backoff_ms;          /* the last delay; 0 after a success */
  uint64_t retry_at;
  bool tried;                   /* later attempts count as reconnects */
  char why[160];                /* the last failure */
} conn;

struct gw_redis_req {
  gw_redis *r;
  gw_redis_cb cb;               /* NULL once answered, failed or cancelled */
  void *ud;
  uint64_t deadline;
  size_t bytes;                 /* its share of r->bytes_in_flight */
  gw_redis_req *prev, *next;    /* r->head..tail while a reply is awaited */
  bool linked;
};

typedef struct sub {
  char *name;
  bool pattern;
} sub;

struct gw_redis {
  uv_loop_t *loop;
  char ip[64];
  int port;
  char addr[GW_ADDR_MAX];
  char *password, *user;
  uint32_t db, timeout_ms, connect_ms;
  gw_redis_counters cnt;
  conn cmd, psub;
  uv_timer_t timeout;           /* the oldest awaited reply's deadline */
  gw_redis_req *head, *tail;    /* in send order: deadlines ascend */
  size_t inflight, bytes_in_flight;
  gw_redis_message_cb on_msg;
  void *msg_ud;
  sub *subs;
  size_t nsubs;
  int handles;                  /* open uv handles of ours */
  bool closing;
  const gw_redis_stand_in *stand_in; /* a fake Redis (gw_redis_new_stand_in); NULL: a server */
  void *stand_in_ud;
};

static void count(uint64_t *slot) {
  if (slot) (*slot)++;
}

static void set_up(gw_redis *r, bool up) {
  if (r->cnt.up) *r->cnt.up = up;
}

/* ---- settings ---- */

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static bool same_str(const char *a, const char *b) {
  return (!a && !b) || (a && b && !strcmp(a, b));
}

static void take_settings(gw_redis *r, const gw_config *cfg) {
  snprintf(r->addr, sizeof r->addr, "%s", cfg->redis_addr);
  const struct sockaddr *sa = (const struct sockaddr *)&cfg->redis_sockaddr;
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    uv_ip6_name(in6, r->ip, sizeof r->ip);
    r->port = ntohs(in6->sin6_port);
  } else {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    uv_ip4_name(in, r->ip, sizeof r->ip);
    r->port = ntohs(in->sin_port);
  }
  free(r->password);
  free(r->user);
  r->password = dup_or_null(cfg->redis_password);
  r->user = dup_or_null(cfg->redis_user);
  r->db = cfg->redis_db;
  r->timeout_ms = cfg->redis_timeout_ms ? cfg->redis_timeout_ms : 1000;
  r->connect_ms = cfg->redis_connect_ms ? cfg->redis_connect_ms : 1000;
}

/* ---- requests ---- */

static void req_unlink(gw_redis_req *q) {
  if (!q->linked) return;
  gw_redis *r = q->r;
  if (q->prev) q->prev->next = q->next;
  else r->head = q->next;
  if (q->next) q->next->prev = q->prev;
  else r->tail = q->prev;
  q->prev = q->next = NULL;
  q->linked = false;
  r->inflight--;
  r->bytes_in_flight -= q->bytes;
}

/* Runs q's callback once with an error (q stays allocated until hiredis
 * calls back for it). */
static void req_fail(gw_redis_req *q, const char *err) {
  req_unlink(q);
  gw_redis_cb cb = q->cb;
  q->cb = NULL;
  if (!cb) return;
  count(q->r->cnt.errors);
  cb(q->ud, NULL, err);
}

static void fail_all(gw_redis *r, const char *err) {
  while (r->head) req_fail(r->head, err);
  uv_timer_stop(&r->timeout);
}

static void conn_drop(conn *c, const char *why);

static void timeout_cb(uv_timer_t *t) {
  gw_redis *r = t->data;
  uint64_t now = uv_now(r->loop);
  char msg[96];
  snprintf(msg, sizeof msg, "redis: no reply within %" PRIu32 " ms (redis.timeout_ms)",
           r->timeout_ms);
  bool expired = false;
  while (r->head && r->head->deadline <= now) {
    count(r->cnt.timeouts);
    req_fail(r->head, msg);
    expired = true;
  }
  /* Replies come in order: what was sent after a command that has none
   * yet waits behind it (a BLPOP that never returns, a Redis that hangs)
   * and would fail too, each after its full wait, while more pile up in
   * the connection. A new connection serves the next commands. */
  if (expired && !r->closing && r->cmd.ac) {
    char why[96];
    snprintf(why, sizeof why, "a command had no reply within %" PRIu32 " ms: reconnecting",
             r->timeout_ms);
    conn_drop(&r->cmd, why);
    return;
  }
  if (r->head && !r->closing)
    uv_timer_start(&r->timeout, timeout_cb, r->head->deadline - now, 0);
}

static void cmd_cb(redisAsyncContext *ac, void *reply, void *priv) {
  gw_redis_req *q = priv;
  req_unlink(q);
  gw_redis_cb cb = q->cb;
  q->cb = NULL;
  if (cb) {
    const redisReply *rep = reply;
    if (!rep) {
      char msg[200];
      const char *why = q->r->cmd.why; /* when we dropped it */
      snprintf(msg, sizeof msg, "redis: connection lost (%s)",
               ac->errstr[0] ? ac->errstr : why[0] ? why : "closed");
      count(q->r->cnt.errors);
      cb(q->ud, NULL, msg);
    } else {
      if (rep->type == REDIS_REPLY_ERROR) count(q->r->cnt.errors);
      cb(q->ud, rep, NULL);
    }
  }
  free(q);
}

/* ---- connections ---- */

static void conn_start(conn *c);

static const char *conn_name(const conn *c) { return c->sub ? "pub/sub" : "commands"; }

static void retry_cb(uv_timer_t *t) {
  conn *c = t->data;
  count(c->r->cnt.reconnects);
  conn_start(c);
}

/* The connection is gone (its context freed or being freed): commands
 * under way fail, the next attempt is scheduled. */
static void conn_lost(conn *c, const char *why, bool was_up) {
  gw_redis *r = c->r;
  c->state = C_DOWN;
  c->ac = NULL;
  snprintf(c->why, sizeof c->why, "%s", why);
  if (!c->sub) set_up(r, false);
  if (r->closing) {
    uv_timer_stop(&c->timer);
  } else {
    uint32_t b = c->backoff_ms ? c->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (b > BACKOFF_MAX_MS) b = BACKOFF_MAX_MS;
    c->backoff_ms = b;
    /* +-20% so that a fleet of gangways does not come back in step */
    uint32_t delay = b - b / 5 + (uint32_t)(rand() % (int)(2 * (b / 5) + 1));
    c->retry_at = uv_now(r->loop) + delay;
    uv_timer_start(&c->timer, retry_cb, delay, 0);
    if (was_up)
      gw_warn("redis %s (%s): connection lost: %s; retrying in %" PRIu32 " ms", r->addr,
              conn_name(c), why, delay);
    else
      gw_debug("redis %s (%s): %s; retrying in %" PRIu32 " ms", r->addr, conn_name(c), why,
               delay);
  }
  if (!c->sub) {
    char msg[256];
    snprintf(msg, sizeof msg, "redis: connection lost (%s)", why);
    fail_all(r, msg);
  }
}

/* Drops the connection ourselves. It is down before hiredis fails its
 * commands: their callbacks resume scripts that may send again at once,
 * and must be refused, not handed to the context being freed. */
static void conn_drop(conn *c, const char *why) {
  redisAsyncContext *ac = c->ac;
  bool was_up = c->state == C_UP;
  c->ac = NULL;
  c->state = C_DOWN;
  snprintf(c->why, sizeof c->why, "%s", why);
  if (!c->sub) set_up(c->r, false);
  if (ac) {
    ac->data = NULL; /* what it calls back while freed is ignored */
    redisAsyncFree(ac);
  }
  conn_lost(c, why, was_up);
}

static void sub_cb(redisAsyncContext *ac, void *reply, void *priv);

static void subscribe_one(conn *c, const sub *s, bool on) {
  const char *argv[2] = {s->pattern ? (on ? "PSUBSCRIBE" : "PUNSUBSCRIBE")
                                    : (on ? "SUBSCRIBE" : "UNSUBSCRIBE"),
                         s->name};
  size_t lens[2] = {strlen(argv[0]), strlen(s->name)};
  redisAsyncCommandArgv(c->ac, on ? sub_cb : NULL, NULL, 2, argv, lens);
}

static void conn_up(conn *c) {
  gw_redis *r = c->r;
  c->state = C_UP;
  c->backoff_ms = 0;
  c->why[0] = 0;
  uv_timer_stop(&c->timer);
  gw_info("redis %s (%s): connected", r->addr, conn_name(c));
  if (!c->sub) {
    set_up(r, true);
    return;
  }
  for (size_t i = 0; i < r->nsubs; i++) subscribe_one(c, &r->subs[i], true);
}

static void setup_cb(redisAsyncContext *ac, void *reply, void *priv) {
  conn *c = ac->data;
  const char *what = priv;
  const redisReply *rep = reply;
  if (!c || !rep) return; /* dropped, or lost: the disconnect says why */
  if (rep->type == REDIS_REPLY_ERROR) {
    char why[160];
    snprintf(why, sizeof why, "%s failed: %s", what, rep->str);
    gw_warn("redis %s (%s): %s", c->r->addr, conn_name(c), why);
    conn_drop(c, why);
    return;
  }
  if (--c->setup_left == 0) conn_up(c);
}

static void on_connect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  conn *c = ac->data;
  if (!c) return;
  if (status != REDIS_OK) {
    char why[160];
    snprintf(why, sizeof why, "%s", ac->errstr[0] ? ac->errstr : "connect failed");
    c->ac = NULL; /* hiredis frees it */
    uv_timer_stop(&c->timer);
    conn_lost(c, why, false);
    return;
  }
  gw_redis *r = c->r;
  c->state = C_SETUP;
  c->setup_left = 0;
  if (r->password) {
    const char *argv[3] = {"AUTH", r->user ? r->user : r->password, r->password};
    size_t lens[3] = {4, strlen(argv[1]), strlen(r->password)};
    redisAsyncCommandArgv(ac, setup_cb, (void *)"AUTH", r->user ? 3 : 2, argv, lens);
    c->setup_left++;
  }
  if (r->db && !c->sub) { /* pub/sub channels are not per database */
    char db[16];
    snprintf(db, sizeof db, "%" PRIu32, r->db);
    const char *argv[2] = {"SELECT", db};
    size_t lens[2] = {6, strlen(db)};
    redisAsyncCommandArgv(ac, setup_cb, (void *)"SELECT", 2, argv, lens);
    c->setup_left++;
  }
  /* Up means Redis answers: a server that accepts and never replies (hung,
   * stopped) stays down, under connect_ms and the backoff. */
  const char *ping[1] = {"PING"};
  size_t ping_len[1] = {4};
  redisAsyncCommandArgv(ac, setup_cb, (void *)"PING", 1, ping, ping_len);
  c->setup_left++;
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
  redisAsyncContext *ac = (redisAsyncContext *)cac;
  conn *c = ac->data;
  if (!c) return;
  char why[160];
  snprintf(why, sizeof why, "%s",
           status == REDIS_OK ? "closed by the server" : ac->errstr[0] ? ac->errstr : "closed");
  bool was_up = c->state == C_UP;
  c->ac = NULL; /* hiredis frees it after this */
  conn_lost(c, why, was_up);
}

static void connect_deadline(uv_timer_t *t) {
  conn *c = t->data;
  char why[96];
  snprintf(why, sizeof why, "connect timed out after %" PRIu32 " ms (redis.connect_ms)",
           c->r->connect_ms);
  conn_drop(c, why);
}

static void conn_start(conn *c) {
  gw_redis *r = c->r;
  c->tried = true;
  c->state = C_CONNECTING;
  redisAsyncContext *ac = redisAsyncConnect(r->ip, r->port);
  if (!ac) {
    conn_lost(c, "out of memory", false);
    return;
  }
  if (ac->err) {
    char why[160];
    snprintf(why, sizeof why, "%s", ac->errstr);
    redisAsyncFree(ac);
    conn_lost(c, why, false);
    return;
  }
  if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    conn_lost(c, "cannot attach to the loop", false);
    return;
  }
  ac->data = c;
  c->ac = ac;
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  uv_timer_start(&c->timer, connect_deadline, r->connect_ms, 0);
}

/* ---- pub/sub ---- */

static void sub_cb(redisAsyncContext *ac, void *reply, void *priv) {
  (void)priv;
  conn *c = ac->data;
  const redisReply *rep = reply;
  if (!c || !rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 3) return;
  gw_redis *r = c->r;
  const redisReply *const *e = (const redisReply *const *)rep->element;
  if (e[0]->type != REDIS_REPLY_STRING || !r->on_msg) return;
  if (!strcmp(e[0]->str, "message") && e[1]->type == REDIS_REPLY_STRING &&
      e[2]->type == REDIS_REPLY_STRING)
    r->on_msg(r->msg_ud, NULL, e[1]->str, e[1]->len, e[2]->str, e[2]->len);
  else if (!strcmp(e[0]->str, "pmessage") && rep->elements >= 4 &&
           e[2]->type == REDIS_REPLY_STRING && e[3]->type == REDIS_REPLY_STRING)
    r->on_msg(r->msg_ud, e[1]->str, e[2]->str, e[2]->len, e[3]->str, e[3]->len);
}

void gw_redis_on_message(gw_redis *r, gw_redis_message_cb cb, void *ud) {
  r->on_msg = cb;
  r->msg_ud = ud;
}

static int sub_cmp(const void *a, const void *b) {
  const sub *x = a, *y = b;
  if (x->pattern != y->pattern) return x->pattern ? 1 : -1;
  return strcmp(x->name, y->name);
}

/* r->subs stays sorted (sub_cmp): the wanted names, sorted too, are walked
 * beside it once, so tens of thousands of subscriptions cost a sort, not
 * each name compared with each (a reload with 20,000 took a second). */
int gw_redis_set_subscriptions(gw_redis *r, const char *const *channels, size_t nchannels,
                               const char *const *patterns, size_t npatterns) {
  bool up = r->psub.state == C_UP;
  size_t nwant = nchannels + npatterns;
  sub *want = malloc((nwant ? nwant : 1) * sizeof *want);
  sub *next = malloc((nwant ? nwant : 1) * sizeof *next);
  if (!want || !next) {
    free(want);
    free(next);
    return -ENOMEM;
  }
  for (size_t k = 0; k < nwant; k++) {
    bool pattern = k >= nchannels;
    want[k] = (sub){(char *)(pattern ? patterns[k - nchannels] : channels[k]), pattern};
  }
  qsort(want, nwant, sizeof *want, sub_cmp);
  int rc = 0;
  size_t i = 0, j = 0, n = 0;
  while (i < r->nsubs || j < nwant) {
    int c = i == r->nsubs ? 1 : j == nwant ? -1 : sub_cmp(&r->subs[i], &want[j]);
    if (c < 0) { /* gone */
      if (up) subscribe_one(&r->psub, &r->subs[i], false);
      free(r->subs[i++].name);
      continue;
    }
    const sub *w = &want[j];
    if (c == 0) {
      next[n++] = r->subs[i++];
    } else {
      sub s = {strdup(w->name), w->pattern};
      if (s.name) {
        next[n++] = s;
        if (up) subscribe_one(&r->psub, &s, true);
      } else {
        rc = -ENOMEM;
      }
    }
    while (++j < nwant && !sub_cmp(&want[j], w)) { /* the same name again */
    }
  }
  free(want);
  free(r->subs);
  r->subs = next;
  r->nsubs = n;
  return rc;
}

/* ---- commands ---- */

bool gw_redis_up(const gw_redis *r) { return r && r->cmd.state == C_UP; }

void gw_redis_status(const gw_redis *r, char *out, size_t outlen) {
  const conn *c = &r->cmd;
  if (c->state == C_UP) {
    snprintf(out, outlen, "connected");
  } else if (c->state == C_DOWN && !r->closing) {
    uint64_t now = uv_now(r->loop);
    snprintf(out, outlen, "not connected (%s), retrying in %" PRIu64 " ms",
             c->why[0] ? c->why : "down", c->retry_at > now ? c->retry_at - now : 0);
  } else if (r->closing) {
    snprintf(out, outlen, "not connected (closing)");
  } else {
    snprintf(out, outlen, "not connected (%s%s%s)", c->state == C_SETUP ? "authenticating" : "connecting",
             c->why[0] ? ", last attempt: " : "", c->why);
  }
}

/* ---- a stand-in for the server (redis.h): the busted harness ---- */

gw_redis *gw_redis_new_stand_in(const gw_redis_stand_in *ops, void *ud) {
  gw_redis *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->stand_in = ops;
  r->stand_in_ud = ud;
  return r;
}

static gw_redis_req *req_new(gw_redis *r, gw_redis_cb cb, void *ud, char *err, size_t errlen) {
  gw_redis_req *q = calloc(1, sizeof *q);
  if (!q) {
    snprintf(err, errlen, "redis: out of memory");
    return NULL;
  }
  q->r = r;
  q->cb = cb;
  q->ud = ud;
  return q;
}

static gw_redis_req *stand_in_command(gw_redis *r, int argc, const char *const *argv,
                                      const size_t *lens, gw_redis_cb cb, void *ud, char *err,
                                      size_t errlen) {
  gw_redis_req *q = req_new(r, cb, ud, err, errlen);
  if (!q) return NULL;
  if (r->stand_in->command(r->stand_in_ud, q, argc, argv, lens, err, errlen) < 0) {
    free(q);
    return NULL;
  }
  return q;
}

void gw_redis_answer(gw_redis_req *q, const redisReply *reply, const char *err) {
  gw_redis_cb cb = q->cb;
  q->cb = NULL;
  if (cb) cb(q->ud, reply, reply ? NULL : err ? err : "redis: no reply");
  free(q);
}

size_t gw_redis_stand_in_publish(gw_redis *r, const char *channel, size_t channel_len,
                                 const char *msg, size_t len, bool deliver) {
  char *name = malloc(channel_len + 1); /* fnmatch reads up to a NUL */
  if (!name) return 0;
  memcpy(name, channel, channel_len);
  name[channel_len] = 0;
  size_t n = 0;
  for (size_t i = 0; i < r->nsubs; i++) {
    const sub *s = &r->subs[i];
    if (s->pattern ? fnmatch(s->name, name, 0) != 0 : strcmp(s->name, name) != 0) continue;
    n++;
    if (deliver && r->on_msg)
      r->on_msg(r->msg_ud, s->pattern ? s->name : NULL, channel, channel_len, msg, len);
  }
  free(name);
  return n;
}

/* ---- (end of the stand-in) ---- */

static bool word_is(const char *w, size_t len, const char *name) {
  return len == strlen(name) && !strncasecmp(w, name, len);
}

/* Why a command may not go on the command connection every script shares
 * (it would make it a subscriber, a monitor, another database or
 * protocol, silent, or gone), or NULL. */
static const char *not_shared(int argc, const char *const *argv, const size_t *lens) {
  static const char *const subs[] = {"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE",
                                     "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"};
  static const char *const others[] = {"MONITOR", "HELLO", "RESET", "QUIT", "SYNC", "PSYNC"};
  for (size_t i = 0; i < sizeof subs / sizeof *subs; i++)
    if (word_is(argv[0], lens[0], subs[i])) return "gw.subscribe and gw.psubscribe listen to channels";
  if (word_is(argv[0], lens[0], "SELECT")) return "redis.db chooses the database";
  if (word_is(argv[0], lens[0], "AUTH")) return "redis.user and redis.password log in";
  for (size_t i = 0; i < sizeof others / sizeof *others; i++)
    if (word_is(argv[0], lens[0], others[i])) return "it would change the connection for every script";
  if (argc > 1 && word_is(argv[0], lens[0], "CLIENT") && word_is(argv[1], lens[1], "REPLY"))
    return "it would change the connection for every script";
  return NULL;
}

gw_redis_req *gw_redis_command(gw_redis *r, int argc, const char *const *argv,
                               const size_t *lens, gw_redis_cb cb, void *ud, char *err,
                               size_t errlen) {
  const char *why = argc > 0 ? not_shared(argc, argv, lens) : NULL;
  if (why) {
    snprintf(err, errlen, "redis: %.*s is not allowed on the shared connection (%s)",
             (int)(lens[0] < 32 ? lens[0] : 32), argv[0], why);
    return NULL;
  }
  if (r->stand_in) return stand_in_command(r, argc, argv, lens, cb, ud, err, errlen);
  if (r->cmd.state != C_UP || !r->cmd.ac || r->closing) {
    char st[200];
    gw_redis_status(r, st, sizeof st);
    snprintf(err, errlen, "redis: %s", st);
    count(r->cnt.errors);
    return NULL;
  }
  if (r->inflight >= MAX_IN_FLIGHT) {
    snprintf(err, errlen, "redis: too many commands under way (%d)", MAX_IN_FLIGHT);
    count(r->cnt.errors);
    return NULL;
  }
  size_t bytes = 16 * (size_t)argc; /* RESP's framing, roughly */
  for (int i = 0; i < argc; i++) bytes += lens[i];
  /* one command of any size goes alone */
  if (r->inflight && r->bytes_in_flight + bytes > MAX_BYTES_IN_FLIGHT) {
    snprintf(err, errlen, "redis: too many bytes under way (%zu MiB awaiting replies)",
             r->bytes_in_flight >> 20);
    count(r->cnt.errors);
    return NULL;
  }
  gw_redis_req *q = req_new(r, cb, ud, err, errlen);
  if (!q) return NULL;
  if (redisAsyncCommandArgv(r->cmd.ac, cmd_cb, q, argc, (const char **)argv, lens) != REDIS_OK) {
    free(q);
    snprintf(err, errlen, "redis: cannot send the command (%s)",
             r->cmd.ac->errstr[0] ? r->cmd.ac->errstr : "connection closing");
    count(r->cnt.errors);
    return NULL;
  }
  count(r->cnt.commands);
  q->deadline = uv_now(r->loop) + r->timeout_ms;
  q->linked = true;
  q->bytes = bytes;
  r->bytes_in_flight += bytes;
  q->prev = r->tail;
  if (r->tail) r->tail->next = q;
  else r->head = q;
  r->tail = q;
  r->inflight++;
  if (r->head == q) uv_timer_start(&r->timeout, timeout_cb, r->timeout_ms, 0);
  return q;
}

void gw_redis_cancel(gw_redis_req *q) {
  if (!q) return;
  req_unlink(q);
  q->cb = NULL;
}

/* ---- life ---- */

static void conn_init(gw_redis *r, conn *c, bool sub) {
  c->r = r;
  c->sub = sub;
  uv_timer_init(r->loop, &c->timer);
  c->timer.data = c;
  r->handles++;
}

int gw_redis_new(uv_loop_t *loop, const gw_config *cfg, const gw_redis_counters *counters,
                 gw_redis **out) {
  gw_redis *r = calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  r->loop = loop;
  if (counters) r->cnt = *counters;
  take_settings(r, cfg);
  conn_init(r, &r->cmd, false);
  conn_init(r, &r->psub, true);
  uv_timer_init(loop, &r->timeout);
  r->timeout.data = r;
  r->handles++;
  set_up(r, false);
  conn_start(&r->cmd);
  conn_start(&r->psub);
  *out = r;
  return 0;
}

bool gw_redis_configure(gw_redis *r, const gw_config *cfg) {
  if (!strcmp(r->addr, cfg->redis_addr) && same_str(r->password, cfg->redis_password) &&
      same_str(r->user, cfg->redis_user) && r->db == cfg->redis_db &&
      r->timeout_ms == cfg->redis_timeout_ms && r->connect_ms == cfg->redis_connect_ms)
    return false;
  take_settings(r, cfg);
  gw_info("redis: new settings (%s): reconnecting", r->addr);
  conn *cs[2] = {&r->cmd, &r->psub};
  for (int i = 0; i < 2; i++) {
    conn_drop(cs[i], "reconnecting with new settings");
    uv_timer_stop(&cs[i]->timer);
    cs[i]->backoff_ms = 0;
    conn_start(cs[i]);
  }
  return true;
}

static void redis_free(gw_redis *r) {
  for (size_t i = 0; i < r->nsubs; i++) free(r->subs[i].name);
  free(r->subs);
  free(r->password);
  free(r->user);
  free(r);
}

static void conn_timer_closed(uv_handle_t *h) {
  conn *c = h->data;
  gw_redis *r = c->r;
  if (--r->handles == 0) redis_free(r);
}

static void timeout_closed(uv_handle_t *h) {
  gw_redis *r = h->data;
  if (--r->handles == 0) redis_free(r);
}

void gw_redis_close(gw_redis *r) {
  if (r && r->stand_in) { /* no connections, no handles; its owner answers what it holds */
    redis_free(r);
    return;
  }
  if (!r || r->closing) return;
  r->closing = true;
  fail_all(r, "redis: gangway is stopping");
  conn_drop(&r->cmd, "closing");
  conn_drop(&r->psub, "closing");
  uv_close((uv_handle_t *)&r->cmd.timer, conn_timer_closed);
  uv_close((uv_handle_t *)&r->psub.timer, conn_timer_closed);
  uv_close((uv_handle_t *)&r->timeout, timeout_closed);
}
