/* luamod.c: the `gangway.core` Lua module, which lets busted specs drive the
 * real script layer through a simulated host (lua/gangway/testing.lua is the
 * friendly face of it).
 *
 * A host here is what the relay is in the proxy: it loads the config with
 * gw_config_load, owns one gw_script, frames each session's byte streams
 * with gw_frame_next, asks gw_handlers_want which frames go to Lua, passes
 * the others on untouched, and records what comes out (emits, drops,
 * closes) instead of writing to sockets. Its clock only moves when a spec
 * says so. Nothing of the script layer is re-implemented.
 *
 * Handlers may wait as in the proxy: the host installs the same wait ops
 * as the relay (a side's input is held behind a waiting frame and fed
 * again, in order, when it is done; wait_ms and wait_bytes bound it), and
 * a fake Redis (a Lua function of the spec's, through redis.h's stand-in)
 * answers gw.redis: each reply is queued and delivered in order once the
 * host call that sent it has processed its input (or `delay` ms later on
 * the simulated clock). */
#include <errno.h>
#include <inttypes.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include <hiredis/hiredis.h>

#include "config.h"
#include "log.h"
#include "pipe.h"
#include "redis.h"
#include "script.h"
#include "script_int.h"

#define HOST_MT "gangway.core.host"
#define SESSION_MT "gangway.core.session"

/* A queue of frames, oldest first. */
typedef struct hframe {
  struct hframe *next;
  size_t len;
  uint8_t data[];
} hframe;

typedef struct fqueue {
  hframe *head, **tail;
  size_t bytes;           /* queued, as the relay counts toward write_max */
} fqueue;

typedef struct hbuf {
  uint8_t *p;
  size_t len, cap;
} hbuf;

typedef struct host host;

typedef struct hsession {
  gw_script_session ss;   /* what the script layer sees */
  host *h;                /* NULL once the host is gone */
  gw_handlers *hd;        /* the listener's, as at connect */
  gw_framing framing;     /* the listener's at connect: the relay's copy */
  gw_pipe pipe;           /* the relay's own session pipeline */
  bool piped;             /* pipe set up and not yet freed */
  uint8_t *orig;          /* the frame in the handlers, as it came */
  size_t orig_len;
  uint64_t dropped_before;
  uint8_t *wait_orig[GW_SIDES]; /* the frame whose handler waits, as it came */
  size_t wait_orig_len[GW_SIDES];
  int err;                /* out of memory while recording */
  struct hsession *prev, *next;
  hbuf in[GW_SIDES];      /* bytes from each side not yet framed */
  fqueue out[GW_SIDES];   /* frames sent toward each side */
  fqueue dropped;
  bool close_requested;   /* by the script layer (ops->close) */
  bool ended;             /* gw_script_session_close done, or refused */
  bool refused;
  bool opening;           /* on_connect waits: input is held until open_done */
  bool feeding[GW_SIDES]; /* feed() runs for this side */
  bool refeed[GW_SIDES];  /* frame_done came during it: go round again */
  char reason[200];
} hsession;

/* What the fake Redis has to deliver, in order: a reply to a command, or a
 * message published on a channel (q NULL). */
typedef struct hevent {
  struct hevent *next;
  uint64_t due;           /* on the simulated clock */
  gw_redis_req *q;
  redisReply *reply;      /* owned; NULL: err */
  char *err;
  char *channel, *msg;
  size_t channel_len, len;
} hevent;

typedef struct logline {
  gw_log_level level;
  char *text;
} logline;

struct host {
  gw_script *s;
  gw_config cfg;
  bool has_cfg;
  char listener[128];
  uint64_t now, wake;
  uint64_t dropped_mark;  /* the script layer's drop count at the last verdict seen */
  uint64_t next_id;
  size_t write_max;       /* bytes queued toward a side; 0: no limit */
  hsession *sessions;
  logline *logs;
  size_t nlogs, caplogs;
  lua_State *L;           /* the spec's thread in the host call under way */
  gw_redis *redis;        /* the fake Redis's stand-in client, or NULL */
  int answer_ref;         /* its Lua function (registry of the spec's state) */
  hevent *ev_head, **ev_tail;
  bool draining;
};

/* ---- frame queues ---- */

static void fq_init(fqueue *q) {
  q->head = NULL;
  q->tail = &q->head;
  q->bytes = 0;
}

static int fq_push(fqueue *q, const uint8_t *data, size_t len) {
  hframe *f = malloc(sizeof *f + len);
  if (!f) return -ENOMEM;
  f->next = NULL;
  f->len = len;
  memcpy(f->data, data, len);
  *q->tail = f;
  q->tail = &f->next;
  q->bytes += len;
  return 0;
}

static void fq_clear(fqueue *q) {
  for (hframe *f = q->head, *n; f; f = n) {
    n = f->next;
    free(f);
  }
  fq_init(q);
}

/* Pushes the queue as a list of strings and empties it. */
static void fq_take(lua_State *L, fqueue *q) {
  lua_newtable(L);
  lua_Integer i = 0;
  for (hframe *f = q->head; f; f = f->next) {
    lua_pushlstring(L, (const char *)f->data, f->len);
    lua_rawseti(L, -2, ++i);
  }
  fq_clear(q);
}

/* ---- the simulated host ---- */

/* Queues a frame toward `to`, as the relay does: bytes not yet taken by
 * the spec count toward write_max; past it, -ENOBUFS and nothing queued. */
static int queue_out(hsession *hs, gw_side to, const uint8_t *data,
                     size_t len) {
  fqueue *q = &hs->out[to];
  if (hs->h && hs->h->write_max && q->bytes + len > hs->h->write_max)
    return -ENOBUFS;
  return fq_push(q, data, len);
}

static int h_emit(gw_script_session *ss, gw_side to, const uint8_t *data,
                  size_t len) {
  hsession *hs = gw_container_of(ss, hsession, ss);
  return hs->piped ? gw_pipe_output(&hs->pipe, to, data, len) : queue_out(hs, to, data, len);
}

/* ---- the pipeline's driver: what comes out is recorded ---- */

/* Bytes toward `to`: recorded frame by frame when they are whole frames
 * of the framing they travel in, as the specs take them; else (raw bytes,
 * a stream codec's output) as they come. */
static int d_out(void *ud, gw_side to, const uint8_t *p, size_t len) {
  hsession *hs = ud;
  gw_side from = to == GW_CLIENT ? GW_SERVER : GW_CLIENT;
  const gw_framing *f = &hs->pipe.side[from].framing;
  size_t pos = 0, nframes = 0;
  while (!f->raw && !hs->pipe.side[to].stream_out && pos < len) {
    gw_frame_info fi;
    if (gw_frame_next(f, from, p + pos, len - pos, &fi) != 1) break;
    pos += fi.len;
    nframes++;
  }
  if (pos != len || nframes < 2) return queue_out(hs, to, p, len);
  /* Only whole frames: check the bound for all, then record each. */
  if (hs->h && hs->h->write_max && hs->out[to].bytes + len > hs->h->write_max) return -ENOBUFS;
  for (pos = 0; pos < len;) {
    gw_frame_info fi;
    gw_frame_next(f, from, p + pos, len - pos, &fi);
    int rc = fq_push(&hs->out[to], p + pos, fi.len);
    if (rc) return rc;
    pos += fi.len;
  }
  return 0;
}

/* The frame as it came, in case its handlers drop it (they may edit it in
 * place first). */
static void d_before(void *ud, gw_side from, const uint8_t *frame, size_t len) {
  (void)from;
  hsession *hs = ud;
  gw_script_stats st;
  gw_script_get_stats(hs->h->s, &st);
  hs->dropped_before = st.dropped;
  free(hs->orig);
  hs->orig = malloc(len ? len : 1);
  hs->orig_len = len;
  if (hs->orig) memcpy(hs->orig, frame, len);
  else hs->err = -ENOMEM;
}

static void d_after(void *ud, gw_side from, int rc) {
  hsession *hs = ud;
  gw_script_stats st;
  gw_script_get_stats(hs->h->s, &st);
  hs->h->dropped_mark = st.dropped;
  if (rc == GW_SCRIPT_PENDING) { /* its verdict comes with frame_done */
    free(hs->wait_orig[from]);
    hs->wait_orig[from] = hs->orig;
    hs->wait_orig_len[from] = hs->orig_len;
    hs->orig = NULL;
    return;
  }
  if (st.dropped > hs->dropped_before && hs->orig &&
      fq_push(&hs->dropped, hs->orig, hs->orig_len))
    hs->err = -ENOMEM;
  free(hs->orig);
  hs->orig = NULL;
}

/* The verdict of the frame from `from` that waited is out: recorded as
 * dropped if the drop count moved since the last verdict the host saw
 * (verdicts come one at a time, each followed by frame_done). */
static void waited_verdict(hsession *hs, gw_side from) {
  gw_script_stats st;
  gw_script_get_stats(hs->h->s, &st);
  if (st.dropped > hs->h->dropped_mark && hs->wait_orig[from] &&
      fq_push(&hs->dropped, hs->wait_orig[from], hs->wait_orig_len[from]))
    hs->err = -ENOMEM;
  hs->h->dropped_mark = st.dropped;
  free(hs->wait_orig[from]);
  hs->wait_orig[from] = NULL;
}

/* Drops counted outside any verdict the host sees (a session closed with
 * its verdict) are no frame's of ours. */
static void mark_drops(host *h) {
  gw_script_stats st;
  gw_script_get_stats(h->s, &st);
  h->dropped_mark = st.dropped;
}

static const gw_pipe_driver pipe_driver = {d_out, d_out, NULL, d_before, d_after};

static void h_pipe(gw_script_session *ss, const gw_pipe_op *op) {
  hsession *hs = gw_container_of(ss, hsession, ss);
  if (!hs->piped) return;
  switch (op->kind) {
  case GW_PIPE_OP_FRAMING: gw_pipe_set_framing(&hs->pipe, op->side, op->framing); break;
  case GW_PIPE_OP_RAW: gw_pipe_expect_raw(&hs->pipe, op->side, op->n); break;
  case GW_PIPE_OP_STREAM_CODEC: gw_pipe_set_stream_codec(&hs->pipe, op->side, op->codec, op->ways); break;
  case GW_PIPE_OP_BODY_CODEC: gw_pipe_set_body_codec(&hs->pipe, op->side, op->codec, op->ways); break;
  }
}

static void h_close(gw_script_session *ss, const char *reason) {
  hsession *hs = gw_container_of(ss, hsession, ss);
  if (hs->close_requested) return;
  hs->close_requested = true;
  snprintf(hs->reason, sizeof hs->reason, "%s", reason ? reason : "closed");
}

static uint64_t h_now(void *ud) { return ((host *)ud)->now; }

static void h_wake_at(void *ud, uint64_t when) {
  host *h = ud;
  if (when < h->wake) h->wake = when;
}

static const gw_host_ops host_ops = {
  .emit = h_emit, .close = h_close, .now_ms = h_now, .wake_at = h_wake_at, .pipe = h_pipe,
};

static void log_sink(gw_log_level level, const char *line, void *ud) {
  host *h = ud;
  if (h->nlogs == h->caplogs) {
    size_t cap = h->caplogs ? h->caplogs * 2 : 64;
    logline *l = realloc(h->logs, cap * sizeof *l);
    if (!l) return;
    h->logs = l;
    h->caplogs = cap;
  }
  /* "2026-11-25T13:15:19.123Z info  msg": keep "msg" */
  const char *msg = strchr(line, ' ');
  msg = msg ? msg + 1 : line;
  while (*msg && *msg != ' ') msg++;
  while (*msg == ' ') msg++;
  char *text = strdup(msg);
  if (!text) return;
  h->logs[h->nlogs++] = (logline){level, text};
}

/* Every call into the script layer logs into this host; the fake Redis
 * answers on the spec's thread that made the call. */
static void enter(host *h, lua_State *L) {
  gw_log_set_sink(log_sink, h);
  h->L = L;
}

/* Ends the sessions the script layer asked to close, as the relay does
 * once their output is written. */
static void settle(host *h) {
  bool again = true;
  while (again) {
    again = false;
    for (hsession *hs = h->sessions; hs; hs = hs->next) {
      if (hs->close_requested && !hs->ended) {
        hs->ended = true;
        gw_script_session_close(h->s, &hs->ss, hs->reason);
        again = true;
        break;
      }
    }
  }
}

/* Its codecs may hold the script state's values: freed before the state. */
static void unpipe(hsession *hs) {
  if (!hs->piped) return;
  hs->piped = false;
  gw_pipe_free(&hs->pipe);
  free(hs->orig);
  hs->orig = NULL;
  for (int i = 0; i < GW_SIDES; i++) {
    free(hs->wait_orig[i]);
    hs->wait_orig[i] = NULL;
  }
}

static void session_end(host *h, hsession *hs, const char *reason) {
  if (hs->ended) return;
  hs->ended = true;
  if (!hs->close_requested) {
    hs->close_requested = true;
    snprintf(hs->reason, sizeof hs->reason, "%s", reason);
  }
  gw_script_session_close(h->s, &hs->ss, reason);
  unpipe(hs);
}

/* ---- handlers that wait: the relay's wait ops ---- */

static bool wait_overflow(hsession *hs, gw_side side, size_t left) {
  host *h = hs->h;
  size_t queued = left + hs->pipe.side[side].dec.len;
  if (queued <= h->cfg.wait_bytes) return false;
  char why[128];
  snprintf(why, sizeof why, "%zu bytes queued behind a waiting handler (limits.wait_bytes %u)",
           queued, h->cfg.wait_bytes);
  mark_drops(h);
  int rc = gw_script_frame_abandon(h->s, &hs->ss, side, why);
  waited_verdict(hs, side);
  if (rc < 0 || hs->close_requested || hs->ended) return false;
  gw_pipe_wait_done(&hs->pipe, side);
  return true;
}

/* Runs side's input held so far through the session's pipeline, as the
 * relay does: what queues behind a waiting handler stays in in[side] for
 * frame_done; past limits.wait_bytes the listener's on_error applies to
 * the waiting frame. A protocol error or output past write_max ends the
 * session. Returns 0 or -ENOMEM. */
static int feed(hsession *hs, gw_side side) {
  host *h = hs->h;
  hbuf *b = &hs->in[side];
  gw_side to = side == GW_CLIENT ? GW_SERVER : GW_CLIENT;
  int err = 0;
  hs->feeding[side] = true;
  do {
    hs->refeed[side] = false;
    uint32_t pos = 0;
    size_t queued = hs->out[to].bytes;
    hs->err = 0;
    int rc;
    do
      rc = gw_pipe_input(&hs->pipe, side, b->p, &pos, (uint32_t)b->len);
    while (rc == GW_PIPE_WAIT && wait_overflow(hs, side, b->len - pos));
    if (hs->err) err = hs->err;
    char why[200];
    if (rc == -EPROTO) {
      snprintf(why, sizeof why, "protocol error from the %s: %s", gw_side_name(side),
               hs->pipe.error_msg);
      session_end(h, hs, why);
    } else if (rc == -ENOBUFS) {
      snprintf(why, sizeof why, "output limit exceeded toward the %s side (%zu bytes queued)",
               gw_side_name(to), queued);
      session_end(h, hs, why);
    } else if (rc == -ENOMEM) {
      err = rc;
    }
    if (pos) memmove(b->p, b->p + pos, b->len - pos);
    b->len -= pos;
  } while (hs->refeed[side] && !err && hs->piped && !hs->close_requested);
  hs->feeding[side] = false;
  return err;
}

/* The waiting handler of a frame from side is done: the frames held
 * behind it go on. */
static void h_frame_done(gw_script_session *ss, gw_side side) {
  hsession *hs = gw_container_of(ss, hsession, ss);
  if (!hs->piped) return;
  waited_verdict(hs, side);
  gw_pipe_wait_done(&hs->pipe, side);
  if (hs->close_requested || hs->ended || hs->opening) return;
  if (hs->feeding[side]) { /* under way below us: it goes round again */
    hs->refeed[side] = true;
    return;
  }
  if (feed(hs, side) < 0) session_end(hs->h, hs, "out of memory");
}

/* An on_connect that waited is done: refused (released already), or the
 * session goes on with what each side sent meanwhile, client first. */
static void h_open_done(gw_script_session *ss, int rc) {
  hsession *hs = gw_container_of(ss, hsession, ss);
  if (!hs->opening) return;
  hs->opening = false;
  if (rc < 0) {
    hs->refused = hs->ended = hs->close_requested = true;
    snprintf(hs->reason, sizeof hs->reason, "refused");
    return;
  }
  for (int i = 0; i < GW_SIDES; i++)
    if (hs->piped && !hs->close_requested && hs->in[i].len && feed(hs, (gw_side)i) < 0)
      session_end(hs->h, hs, "out of memory");
}

/* Output is recorded as it is sent: nothing to write. */
static void h_flush(void *ud) { (void)ud; }

static const gw_wait_ops wait_ops = {h_frame_done, h_open_done, h_flush};

/* ---- the fake Redis: the spec's function answers, replies queue ---- */

#define EVENTS_MAX 100000 /* delivered in one go without the clock moving */

static void reply_free(redisReply *r) {
  if (!r) return;
  for (size_t i = 0; i < r->elements; i++) reply_free(r->element[i]);
  free(r->element);
  free(r->str);
  free(r);
}

static redisReply *reply_str(int type, const char *p, size_t len) {
  redisReply *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->type = type;
  r->str = malloc(len + 1);
  if (!r->str) {
    free(r);
    return NULL;
  }
  memcpy(r->str, p, len);
  r->str[len] = 0;
  r->len = len;
  return r;
}

/* The Lua value at idx as a reply: a string, an integer (a float as its
 * text, as Redis sends them), nil or false nil, true "OK", { err = msg } an
 * error, a list an array. NULL with *why on a value no reply can be. */
static redisReply *reply_of(lua_State *L, int idx, int depth, const char **why) {
  idx = lua_absindex(L, idx);
  redisReply *r = NULL;
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    r = calloc(1, sizeof *r);
    if (r) r->type = REDIS_REPLY_NIL;
    break;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx)) return reply_str(REDIS_REPLY_STATUS, "OK", 2);
    r = calloc(1, sizeof *r);
    if (r) r->type = REDIS_REPLY_NIL;
    break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      r = calloc(1, sizeof *r);
      if (r) {
        r->type = REDIS_REPLY_INTEGER;
        r->integer = (long long)lua_tointeger(L, idx);
      }
      break;
    }
    __attribute__((fallthrough)); /* a float goes as its text */
  case LUA_TSTRING: {
    size_t n;
    lua_pushvalue(L, idx); /* tolstring converts a number in place */
    const char *p = lua_tolstring(L, -1, &n);
    r = reply_str(REDIS_REPLY_STRING, p, n);
    lua_pop(L, 1);
    break;
  }
  case LUA_TTABLE: {
    if (lua_getfield(L, idx, "err") == LUA_TSTRING) {
      size_t n;
      const char *p = lua_tolstring(L, -1, &n);
      r = reply_str(REDIS_REPLY_ERROR, p, n);
      lua_pop(L, 1);
      break;
    }
    lua_pop(L, 1);
    if (depth > 32) {
      *why = "a reply nested deeper than 32";
      return NULL;
    }
    size_t n = lua_rawlen(L, idx);
    r = calloc(1, sizeof *r);
    if (!r || !(r->element = calloc(n ? n : 1, sizeof *r->element))) {
      free(r);
      break;
    }
    r->type = REDIS_REPLY_ARRAY;
    luaL_checkstack(L, 4, "redis reply");
    for (size_t i = 0; i < n; i++) {
      lua_rawgeti(L, idx, (lua_Integer)i + 1);
      r->element[i] = reply_of(L, -1, depth + 1, why);
      lua_pop(L, 1);
      if (!r->element[i]) {
        reply_free(r);
        return NULL;
      }
      r->elements++;
    }
    break;
  }
  default:
    *why = "a reply of a type Redis has not (strings, numbers, booleans, nil, tables)";
    return NULL;
  }
  if (!r) *why = "out of memory";
  return r;
}

static void event_free(hevent *e) {
  reply_free(e->reply);
  free(e->err);
  free(e->channel);
  free(e->msg);
  free(e);
}

/* Queues e after what is queued: replies and messages come in order. */
static void event_push(host *h, hevent *e, uint64_t delay) {
  e->due = h->now + delay;
  *h->ev_tail = e;
  h->ev_tail = &e->next;
}

static hevent *event_pop(host *h) {
  hevent *e = h->ev_head;
  h->ev_head = e->next;
  if (!h->ev_head) h->ev_tail = &h->ev_head;
  return e;
}

/* The stand-in's command: the spec's function answer({ cmd, ... }) returns
 * "down", message (the command fails at once) or "reply", value, delay_ms
 * (the reply is queued). A function that raises is an error reply. */
static int fake_command(void *ud, gw_redis_req *q, int argc, const char *const *argv,
                        const size_t *lens, char *err, size_t errlen) {
  host *h = ud;
  lua_State *L = h->L;
  if (!L || h->answer_ref == LUA_NOREF || !lua_checkstack(L, 8)) {
    snprintf(err, errlen, "redis: not connected (the test host is closing)");
    return -ENOTCONN;
  }
  int top = lua_gettop(L);
  hevent *e = calloc(1, sizeof *e);
  if (!e) {
    snprintf(err, errlen, "redis: out of memory");
    return -ENOMEM;
  }
  e->q = q;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->answer_ref);
  lua_createtable(L, argc, 0);
  for (int i = 0; i < argc; i++) {
    lua_pushlstring(L, argv[i], lens[i]);
    lua_rawseti(L, -2, i + 1);
  }
  const char *why = NULL;
  lua_Integer delay = 0;
  if (lua_pcall(L, 1, 3, 0) != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    e->reply = reply_str(REDIS_REPLY_ERROR, m ? m : "ERR the fake Redis failed",
                         m ? strlen(m) : 25);
  } else if (lua_type(L, -3) == LUA_TSTRING && !strcmp(lua_tostring(L, -3), "down")) {
    snprintf(err, errlen, "redis: %s", luaL_optstring(L, -2, "not connected (down)"));
    lua_settop(L, top);
    free(e);
    return -ENOTCONN;
  } else {
    delay = lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0 ? lua_tointeger(L, -1) : 0;
    e->reply = reply_of(L, -2, 0, &why);
  }
  lua_settop(L, top);
  if (!e->reply) {
    char msg[160];
    snprintf(msg, sizeof msg, "redis: the fake Redis answered %s", why ? why : "nothing");
    e->err = strdup(msg);
  }
  event_push(h, e, (uint64_t)delay);
  return 0;
}

static const gw_redis_stand_in fake_redis = {fake_command};

/* Delivers what is due, in order (what it makes is delivered too, when
 * due). False when it kept coming without end. */
static bool drain(host *h) {
  if (h->draining) return true; /* the loop below us goes on */
  h->draining = true;
  size_t n = 0;
  while (h->ev_head && h->ev_head->due <= h->now && n++ < EVENTS_MAX) {
    hevent *e = event_pop(h);
    mark_drops(h);
    if (e->q) gw_redis_answer(e->q, e->reply, e->err);
    else if (h->redis)
      gw_redis_stand_in_publish(h->redis, e->channel, e->channel_len, e->msg, e->len, true);
    event_free(e);
    settle(h);
  }
  h->draining = false;
  return n <= EVENTS_MAX;
}

/* After a host call: the sessions closed, then what the fake Redis has due. */
static void finish(lua_State *L, host *h) {
  settle(h);
  if (!drain(h))
    luaL_error(L, "the fake Redis kept delivering without the clock moving (%d replies and "
               "messages: a gw.subscribe function publishing to its own channel?)", EVENTS_MAX);
}

static void host_free(host *h, lua_State *L) {
  if (!h->s) return;
  enter(h, L);
  for (hsession *hs = h->sessions, *n; hs; hs = n) {
    n = hs->next;
    session_end(h, hs, "host closed");
    unpipe(hs); /* also when the script layer closed it */
    hs->h = NULL;
    hs->prev = hs->next = NULL;
  }
  h->sessions = NULL;
  gw_script_free(h->s);
  h->s = NULL;
  /* The script layer is gone (its waits cancelled): what the fake Redis
   * holds is freed unanswered. */
  while (h->ev_head) {
    hevent *e = event_pop(h);
    if (e->q) gw_redis_answer(e->q, NULL, "redis: the test host is closing");
    event_free(e);
  }
  gw_redis_close(h->redis);
  h->redis = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, h->answer_ref);
  h->answer_ref = LUA_NOREF;
  if (h->has_cfg) gw_config_free(&h->cfg);
  h->has_cfg = false;
  for (size_t i = 0; i < h->nlogs; i++) free(h->logs[i].text);
  free(h->logs);
  h->logs = NULL;
  h->nlogs = h->caplogs = 0;
  gw_log_set_sink(NULL, NULL);
}

static host *check_host(lua_State *L, int idx) {
  host *h = luaL_checkudata(L, idx, HOST_MT);
  if (!h->s) luaL_error(L, "this test host was closed");
  return h;
}

/* core.new{ config = path, listener = name, instructions = n,
 * memory = bytes, write_max = bytes } -> host | nil, err */
static int core_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "config");
  const char *path = luaL_checkstring(L, -1);
  lua_getfield(L, 1, "listener");
  const char *listener = luaL_optstring(L, -1, NULL);
  lua_getfield(L, 1, "instructions");
  lua_Integer instructions = luaL_optinteger(L, -1, -1);
  lua_getfield(L, 1, "memory");
  lua_Integer memory = luaL_optinteger(L, -1, -1);
  lua_getfield(L, 1, "write_max");
  lua_Integer write_max = luaL_optinteger(L, -1, 0);
  lua_getfield(L, 1, "redis"); /* answer({ cmd, ... }): the fake Redis */
  int redis_fn = lua_gettop(L);
  if (!lua_isnil(L, redis_fn)) luaL_checktype(L, redis_fn, LUA_TFUNCTION);

  host *h = lua_newuserdatauv(L, sizeof *h, 0);
  memset(h, 0, sizeof *h);
  h->wake = UINT64_MAX;
  h->write_max = write_max > 0 ? (size_t)write_max : 0;
  h->answer_ref = LUA_NOREF;
  h->ev_tail = &h->ev_head;
  luaL_setmetatable(L, HOST_MT);
  enter(h, L);
  char err[512];
  if (gw_config_load(path, &h->cfg, err, sizeof err) != 0) {
    gw_log_set_sink(NULL, NULL);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  h->has_cfg = true;
  snprintf(h->listener, sizeof h->listener, "%s",
           listener ? listener : h->cfg.listeners[0].name);
  gw_script_limits lim = {
    .handler_instructions = instructions >= 0 ? (uint64_t)instructions
                                              : h->cfg.handler_instructions,
    .memory_bytes = memory >= 0 ? (size_t)memory
                                : (size_t)h->cfg.lua_memory_mb << 20,
  };
  h->s = gw_script_new(&lim, &host_ops, h);
  if (!h->s) {
    gw_config_free(&h->cfg);
    h->has_cfg = false;
    lua_pushnil(L);
    lua_pushliteral(L, "cannot create the Lua state (memory limit too low?)");
    return 2;
  }
  int rc = gw_script_load(h->s, &h->cfg, err, sizeof err);
  if (rc == 0 && !gw_script_handlers(h->s, h->listener)) {
    snprintf(err, sizeof err, "%s: no listener named %s", path, h->listener);
    rc = -ENOENT;
  }
  if (rc != 0) {
    host_free(h, L);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  /* As the relay and the app do after a load. */
  gw_script_set_waits(h->s, &wait_ops, h->cfg.wait_ms);
  if (!lua_isnil(L, redis_fn)) {
    if (!(h->redis = gw_redis_new_stand_in(&fake_redis, h))) {
      host_free(h, L);
      return luaL_error(L, "out of memory");
    }
    lua_pushvalue(L, redis_fn);
    h->answer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  gw_script_set_redis(h->s, h->redis);
  return 1;
}

static int host_gc(lua_State *L) {
  host_free(luaL_checkudata(L, 1, HOST_MT), L);
  return 0;
}

/* host:reload([config]) -> true | nil, err */
static int host_reload(lua_State *L) {
  host *h = check_host(L, 1);
  const char *path = luaL_optstring(L, 2, h->cfg.path);
  gw_config cfg;
  char err[512];
  enter(h, L);
  int rc = gw_config_load(path, &cfg, err, sizeof err);
  if (rc == 0) {
    rc = gw_script_load(h->s, &cfg, err, sizeof err);
    if (rc == 0) {
      gw_config_free(&h->cfg);
      h->cfg = cfg;
      gw_script_set_waits(h->s, &wait_ops, h->cfg.wait_ms);
      gw_script_set_redis(h->s, h->redis); /* the new generation's subscriptions */
    } else {
      gw_config_free(&cfg);
    }
  }
  finish(L, h);
  if (rc != 0) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static const gw_listener_config *host_listener(host *h) {
  for (size_t i = 0; i < h->cfg.nlisteners; i++)
    if (!strcmp(h->cfg.listeners[i].name, h->listener))
      return &h->cfg.listeners[i];
  return NULL;
}

/* host:connect(client) -> session (refused ones are ended already) */
static int host_connect(lua_State *L) {
  host *h = check_host(L, 1);
  const char *client = luaL_optstring(L, 2, "127.0.0.1:50000");
  gw_handlers *hd = gw_script_handlers(h->s, h->listener);
  if (!hd) return luaL_error(L, "no listener named %s", h->listener);
  hsession *hs = lua_newuserdatauv(L, sizeof *hs, 1);
  memset(hs, 0, sizeof *hs);
  for (int i = 0; i < GW_SIDES; i++) fq_init(&hs->out[i]);
  fq_init(&hs->dropped);
  luaL_setmetatable(L, SESSION_MT);
  lua_pushvalue(L, 1); /* the session keeps its host alive */
  lua_setiuservalue(L, -2, 1);
  hs->h = h;
  hs->hd = hd;
  hs->framing = hd->framing;
  gw_pipe_init(&hs->pipe, &hs->framing, h->s, &hs->ss, &pipe_driver, hs);
  hs->piped = true;
  const gw_listener_config *plc = host_listener(h);
  for (int i = 0; i < GW_SIDES; i++) {
    hs->ss.framing[i] = &hs->pipe.side[i].framing;
    if (plc && plc->nphases[i] &&
        gw_pipe_set_phases(&hs->pipe, (gw_side)i, plc->phases[i], plc->nphases[i]) < 0)
      return luaL_error(L, "out of memory");
  }
  hs->ss.id = ++h->next_id;
  snprintf(hs->ss.client, sizeof hs->ss.client, "%s", client);
  const gw_listener_config *lc = host_listener(h);
  snprintf(hs->ss.upstream, sizeof hs->ss.upstream, "%.*s",
           (int)sizeof hs->ss.upstream - 1, lc ? lc->upstream : "");
  hs->next = h->sessions;
  if (h->sessions) h->sessions->prev = hs;
  h->sessions = hs;
  enter(h, L);
  int rc = gw_script_session_start(h->s, hd, &hs->ss);
  if (rc == -ECONNREFUSED) {
    hs->refused = hs->ended = hs->close_requested = true;
    snprintf(hs->reason, sizeof hs->reason, "refused");
  } else if (rc == GW_SCRIPT_PENDING) {
    hs->opening = true; /* h_open_done goes on */
  }
  finish(L, h);
  return 1;
}

/* host:advance(ms): moves the clock, running timers (sleeps and wait
 * bounds too) and delivering the fake Redis's replies as they come due. */
static int host_advance(lua_State *L) {
  host *h = check_host(L, 1);
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= 0, 2, "time only moves forward");
  uint64_t target = h->now + (uint64_t)ms;
  enter(h, L);
  for (int rounds = 0;; rounds++) {
    uint64_t next = h->wake;
    if (h->ev_head && h->ev_head->due < next) next = h->ev_head->due;
    if (next > target) break;
    if (rounds > 1000000)
      return luaL_error(L, "timers keep coming due without the clock moving");
    if (next > h->now) h->now = next;
    if (h->wake <= h->now) {
      h->wake = UINT64_MAX;
      mark_drops(h);
      gw_script_run_timers(h->s);
    }
    finish(L, h);
  }
  h->now = target;
  finish(L, h);
  return 0;
}

static int host_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_host(L, 1)->now);
  return 1;
}

/* host:logs() -> { "level message", ... } */
static int host_logs(lua_State *L) {
  host *h = check_host(L, 1);
  lua_createtable(L, (int)h->nlogs, 0);
  for (size_t i = 0; i < h->nlogs; i++) {
    lua_pushfstring(L, "%s %s", gw_log_level_name(h->logs[i].level),
                    h->logs[i].text);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static void set_count(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

static int host_stats(lua_State *L) {
  host *h = check_host(L, 1);
  gw_script_stats st;
  gw_script_get_stats(h->s, &st);
  lua_createtable(L, 0, 8);
  set_count(L, "frames", st.frames);
  set_count(L, "dropped", st.dropped);
  set_count(L, "replaced", st.replaced);
  set_count(L, "injected", st.injected);
  set_count(L, "injected_refused", st.injected_refused);
  set_count(L, "errors", st.errors);
  set_count(L, "timeouts", st.timeouts);
  set_count(L, "memory", st.memory_bytes);
  return 1;
}

/* host:want(side, opcode|nil) -> whether the relay would hand such a frame
 * to Lua (gw_handlers_want, the relay's own test). */
static int host_want(lua_State *L) {
  static const char *const sides[] = {"client", "server", NULL};
  host *h = check_host(L, 1);
  gw_side side = (gw_side)luaL_checkoption(L, 2, NULL, sides);
  gw_frame_info fi = {0};
  if (!lua_isnoneornil(L, 3)) {
    fi.has_opcode = true;
    fi.opcode = (uint32_t)luaL_checkinteger(L, 3);
  }
  lua_pushboolean(L, gw_handlers_want(gw_script_handlers(h->s, h->listener),
                                      side, &fi));
  return 1;
}

static const gw_framing *host_framing(host *h) {
  gw_handlers *hd = gw_script_handlers(h->s, h->listener);
  return hd ? &hd->framing : &h->cfg.listeners[0].framing;
}

/* The listener's packet definitions, pushed (loaded afresh: specs are
 * small), or NULL and nothing pushed when it has no protocol. */
static const struct gw_proto *host_proto(lua_State *L, host *h) {
  const gw_listener_config *lc = host_listener(h);
  if (!lc || !lc->protocol_dir) return NULL;
  lua_pushfstring(L, "%s/packets.lua", lc->protocol_dir);
  const struct gw_proto *p = gw__proto_push_new(L, lua_tostring(L, -1), &lc->framing);
  lua_remove(L, -2);
  return p;
}

/* host:build(opcode, body) or host:build(name, fields) -> frame, with the
 * listener's framing */
static int host_build(lua_State *L) {
  host *h = check_host(L, 1);
  if (lua_type(L, 2) == LUA_TSTRING) {
    lua_settop(L, 3);
    const struct gw_proto *p = host_proto(L, h);
    gw__proto_build(L, p, host_framing(h), 2, 3, false);
    return 1;
  }
  lua_Integer op = lua_isnoneornil(L, 2) ? -1 : luaL_checkinteger(L, 2);
  size_t n = 0;
  const uint8_t *body = lua_isnoneornil(L, 3) ? (const uint8_t *)""
                                              : gw_body_arg(L, 3, &n);
  gw_frame_push_built(L, host_framing(h), op, body, n);
  return 1;
}

static int host_writer(lua_State *L) {
  gw_writer_push(L, host_framing(check_host(L, 1)));
  return 1;
}

/* host:parse(frame, side) -> packet (a copy), to read fields in specs */
static int host_parse(lua_State *L) {
  static const char *const sides[] = {"client", "server", NULL};
  host *h = check_host(L, 1);
  size_t n;
  const uint8_t *d = (const uint8_t *)luaL_checklstring(L, 2, &n);
  gw_side side = (gw_side)luaL_checkoption(L, 3, "server", sides);
  lua_settop(L, 3);
  const struct gw_proto *proto = host_proto(L, h);
  gw_packet *p = gw_packet_push_copy(L, host_framing(h), side, d, n);
  if (proto) { /* the copy decodes with the listener's definitions */
    lua_pushvalue(L, 4);
    lua_setiuservalue(L, -2, 2);
    p->proto = proto;
  }
  return 1;
}

static int host_close(lua_State *L) {
  host_free(luaL_checkudata(L, 1, HOST_MT), L);
  return 0;
}

/* ---- sessions ---- */

static hsession *check_session(lua_State *L, int idx) {
  hsession *hs = luaL_checkudata(L, idx, SESSION_MT);
  if (!hs->h) luaL_error(L, "this session's host was closed");
  return hs;
}

static int hbuf_append(hbuf *b, const uint8_t *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    uint8_t *q = realloc(b->p, cap);
    if (!q) return -ENOMEM;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

/* session:from(side, bytes): bytes arriving from that side, framed and
 * handed on as the relay does. */
static int hs_from(lua_State *L) {
  static const char *const sides[] = {"client", "server", NULL};
  hsession *hs = check_session(L, 1);
  host *h = hs->h;
  gw_side side = (gw_side)luaL_checkoption(L, 2, NULL, sides);
  size_t n;
  const uint8_t *bytes = (const uint8_t *)luaL_checklstring(L, 3, &n);
  if (hs->close_requested || hs->ended) {
    lua_pushboolean(L, 0);
    return 1;
  }
  hbuf *b = &hs->in[side];
  if (hbuf_append(b, bytes, n)) return luaL_error(L, "out of memory");
  enter(h, L);
  /* The relay's own pipeline: framing, dispatch, codecs; held while
   * on_connect waits (the relay reads nobody before it is done). */
  int err = hs->opening ? 0 : feed(hs, side);
  finish(L, h);
  if (err) return luaL_error(L, "out of memory");
  lua_pushboolean(L, 1);
  return 1;
}

/* session:take(side) -> frames sent toward side since the last take */
static int hs_take(lua_State *L) {
  static const char *const sides[] = {"client", "server", NULL};
  hsession *hs = luaL_checkudata(L, 1, SESSION_MT);
  fq_take(L, &hs->out[luaL_checkoption(L, 2, NULL, sides)]);
  return 1;
}

static int hs_dropped(lua_State *L) {
  fq_take(L, &((hsession *)luaL_checkudata(L, 1, SESSION_MT))->dropped);
  return 1;
}

/* session:closed() -> the reason it was closed for, or nil */
static int hs_closed(lua_State *L) {
  hsession *hs = luaL_checkudata(L, 1, SESSION_MT);
  if (!hs->close_requested && !hs->ended) return 0;
  lua_pushstring(L, hs->reason);
  return 1;
}

static int hs_refused(lua_State *L) {
  lua_pushboolean(L, ((hsession *)luaL_checkudata(L, 1, SESSION_MT))->refused);
  return 1;
}

static int hs_id(lua_State *L) {
  hsession *hs = luaL_checkudata(L, 1, SESSION_MT);
  lua_pushinteger(L, (lua_Integer)hs->ss.id);
  return 1;
}

/* session:close(reason): the connection ends (a peer hung up). */
static int hs_close(lua_State *L) {
  hsession *hs = check_session(L, 1);
  const char *reason = luaL_optstring(L, 2, "client closed");
  enter(hs->h, L);
  session_end(hs->h, hs, reason);
  finish(L, hs->h);
  return 0;
}

static int hs_gc(lua_State *L) {
  hsession *hs = luaL_checkudata(L, 1, SESSION_MT);
  host *h = hs->h;
  if (h) {
    enter(h, L);
    session_end(h, hs, "collected");
    unpipe(hs);
    if (hs->prev)
      hs->prev->next = hs->next;
    else
      h->sessions = hs->next;
    if (hs->next) hs->next->prev = hs->prev;
    hs->h = NULL;
  }
  for (int i = 0; i < GW_SIDES; i++) {
    fq_clear(&hs->out[i]);
    free(hs->in[i].p);
    hs->in[i].p = NULL;
  }
  fq_clear(&hs->dropped);
  return 0;
}

/* ---- module ---- */

/* core.realpath(path) -> absolute path | nil, err */
static int core_realpath(lua_State *L) {
  char *p = realpath(luaL_checkstring(L, 1), NULL);
  if (!p) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushstring(L, p);
  free(p);
  return 1;
}

/* core.mkdtemp() -> a new private directory */
static int core_mkdtemp(lua_State *L) {
  const char *tmp = getenv("TMPDIR");
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/gangway-spec-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  if (!mkdtemp(path)) return luaL_error(L, "mkdtemp: %s", strerror(errno));
  lua_pushstring(L, path);
  return 1;
}

static int core_rmdir(lua_State *L) {
  lua_pushboolean(L, rmdir(luaL_checkstring(L, 1)) == 0);
  return 1;
}

static int get_preset(lua_State *L, int idx, gw_framing *f) {
  const char *name = luaL_checkstring(L, idx);
  if (gw_framing_preset(name, f))
    return luaL_error(L, "unknown framing preset \"%s\"", name);
  return 0;
}

/* core.build(preset, opcode, body) -> frame */
static int core_build(lua_State *L) {
  gw_framing f;
  get_preset(L, 1, &f);
  lua_Integer op = lua_isnoneornil(L, 2) ? -1 : luaL_checkinteger(L, 2);
  size_t n = 0;
  const uint8_t *body = lua_isnoneornil(L, 3) ? (const uint8_t *)""
                                              : gw_body_arg(L, 3, &n);
  gw_frame_push_built(L, &f, op, body, n);
  return 1;
}

static int core_writer(lua_State *L) {
  gw_framing f;
  get_preset(L, 1, &f);
  gw_writer_push(L, &f);
  return 1;
}

/* core.parse(preset, frame [, side]) -> packet (a copy) */
static int core_parse(lua_State *L) {
  static const char *const sides[] = {"client", "server", NULL};
  gw_framing f;
  get_preset(L, 1, &f);
  size_t n;
  const uint8_t *d = (const uint8_t *)luaL_checklstring(L, 2, &n);
  gw_side side = (gw_side)luaL_checkoption(L, 3, "server", sides);
  gw_packet_push_copy(L, &f, side, d, n);
  return 1;
}

/* host:admin(name, method, body) -> status, body: a request to a script
 * endpoint (gw.admin), as the admin API makes it. */
static int host_admin(lua_State *L) {
  host *h = check_host(L, 1);
  const char *name = luaL_checkstring(L, 2);
  const char *method = luaL_optstring(L, 3, "GET");
  size_t n = 0;
  const char *body = luaL_optlstring(L, 4, NULL, &n);
  char *out;
  size_t outlen;
  enter(h, L);
  int status = gw_script_admin(h->s, name, method, body, n, &out, &outlen);
  lua_pushinteger(L, status);
  if (out) lua_pushlstring(L, out, outlen);
  else lua_pushnil(L);
  free(out);
  finish(L, h);
  return 2;
}

/* host:publish(channel, message) -> subscriptions that match: a message
 * as Redis would bring it, queued behind the replies under way (delivered
 * with them: this may run inside a script's call, through the fake). */
static int host_publish(lua_State *L) {
  host *h = check_host(L, 1);
  size_t clen, mlen;
  const char *ch = luaL_checklstring(L, 2, &clen);
  const char *msg = luaL_checklstring(L, 3, &mlen);
  if (!h->redis) return luaL_error(L, "this test host has no fake Redis (testing.new{ redis = ... })");
  hevent *e = calloc(1, sizeof *e);
  if (e) {
    e->channel = malloc(clen + 1);
    e->msg = malloc(mlen + 1);
  }
  if (!e || !e->channel || !e->msg) {
    if (e) event_free(e);
    return luaL_error(L, "out of memory");
  }
  memcpy(e->channel, ch, clen + 1);
  memcpy(e->msg, msg, mlen + 1);
  e->channel_len = clen;
  e->len = mlen;
  event_push(h, e, 0);
  lua_pushinteger(L, (lua_Integer)gw_redis_stand_in_publish(h->redis, ch, clen, msg, mlen, false));
  return 1;
}

static const luaL_Reg host_methods[] = {
  {"reload", host_reload}, {"connect", host_connect}, {"advance", host_advance},
  {"now", host_now},       {"logs", host_logs},       {"stats", host_stats},
  {"want", host_want},     {"build", host_build},     {"writer", host_writer},
  {"parse", host_parse},   {"close", host_close},     {"admin", host_admin},
  {"publish", host_publish}, {NULL, NULL},
};

static const luaL_Reg session_methods[] = {
  {"from", hs_from},     {"take", hs_take},     {"dropped", hs_dropped},
  {"closed", hs_closed}, {"refused", hs_refused}, {"id", hs_id},
  {"close", hs_close},   {NULL, NULL},
};

/* ---- zlib for specs: a peer's side of a compressed stream ---- */

#define ZLIB_MT "gangway.core.zlib"

typedef struct zpeer {
  z_stream d, i;
  bool ok;
} zpeer;

/* core.zlib() -> z: z:deflate(s) compresses (sync-flushed, one stream
 * across calls), z:inflate(s) decompresses another stream. */
static int core_zlib(lua_State *L) {
  zpeer *z = lua_newuserdatauv(L, sizeof *z, 0);
  memset(z, 0, sizeof *z);
  if (deflateInit(&z->d, 6) != Z_OK) return luaL_error(L, "deflateInit failed");
  if (inflateInit(&z->i) != Z_OK) {
    deflateEnd(&z->d);
    return luaL_error(L, "inflateInit failed");
  }
  z->ok = true;
  luaL_setmetatable(L, ZLIB_MT);
  return 1;
}

static int z_run(lua_State *L, bool deflating) {
  zpeer *z = luaL_checkudata(L, 1, ZLIB_MT);
  size_t n;
  const char *in = luaL_checklstring(L, 2, &n);
  z_stream *st = deflating ? &z->d : &z->i;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  st->next_in = (Bytef *)in;
  st->avail_in = (uInt)n;
  do {
    char *out = luaL_prepbuffsize(&b, 16384);
    st->next_out = (Bytef *)out;
    st->avail_out = 16384;
    int rc = deflating ? deflate(st, Z_SYNC_FLUSH) : inflate(st, Z_SYNC_FLUSH);
    if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END)
      return luaL_error(L, "zlib: %s", zError(rc));
    luaL_addsize(&b, 16384 - st->avail_out);
  } while (st->avail_out == 0);
  luaL_pushresult(&b);
  return 1;
}

static int z_deflate(lua_State *L) { return z_run(L, true); }
static int z_inflate(lua_State *L) { return z_run(L, false); }

static int z_gc(lua_State *L) {
  zpeer *z = luaL_checkudata(L, 1, ZLIB_MT);
  if (z->ok) {
    deflateEnd(&z->d);
    inflateEnd(&z->i);
    z->ok = false;
  }
  return 0;
}

static const luaL_Reg zlib_methods[] = {
  {"deflate", z_deflate}, {"inflate", z_inflate}, {NULL, NULL},
};

static const luaL_Reg core_funcs[] = {
  {"new", core_new},       {"realpath", core_realpath},
  {"mkdtemp", core_mkdtemp}, {"rmdir", core_rmdir},
  {"build", core_build},   {"writer", core_writer},
  {"parse", core_parse},   {"zlib", core_zlib},
  {NULL, NULL},
};

static void new_class(lua_State *L, const char *name, lua_CFunction gc,
                      const luaL_Reg *methods) {
  luaL_newmetatable(L, name);
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

int luaopen_gangway_core(lua_State *L) {
  /* Specs see every line, debug included. */
  gw_log_setup(GW_LOG_DEBUG, GW_LOG_TEXT);
  gw_packet_open(L, false);
  new_class(L, HOST_MT, host_gc, host_methods);
  new_class(L, SESSION_MT, hs_gc, session_methods);
  new_class(L, ZLIB_MT, z_gc, zlib_methods);
  luaL_newlib(L, core_funcs);
  lua_pushliteral(L, GW_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
