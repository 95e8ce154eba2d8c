/* script_redis.c: what scripts wait for, and Redis from scripts:
 * gw.redis, gw.redis_pipeline, gw.publish, gw.subscribe, gw.psubscribe,
 * gw.sleep and session:sleep.
 *
 * gw.redis and the sleeps wait: they yield the call they run in (script.c
 * runs every handler, gw.on_connect function, timer and gw.subscribe
 * function in a coroutine) and return when the reply comes or the time is
 * up. Replies become Lua values: a status or a string is a string, an
 * integer an integer, nil is nil, an array a table (its nils false), an
 * error reply nil plus the message. */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "redis.h"
#include "script_int.h"

#define REDIS_ARGS_MAX 1024     /* arguments of one command */
#define PIPELINE_MAX 1024       /* commands of one gw.redis_pipeline */
#define SUBS_KEY "gangway.subscriptions" /* registry: gen -> { {name, pattern, fn} } */

void gw__redis_set(gw_script *s, struct gw_redis *r);

/* ---- replies ---- */

/* Pushes reply as a Lua value; nested errors become { err = message }. */
static void push_value(lua_State *L, const redisReply *r, int depth) {
  luaL_checkstack(L, 4, "redis reply too deep");
  switch (r->type) {
  case REDIS_REPLY_STRING:
  case REDIS_REPLY_STATUS:
    lua_pushlstring(L, r->str, r->len);
    break;
  case REDIS_REPLY_INTEGER:
    lua_pushinteger(L, (lua_Integer)r->integer);
    break;
  case REDIS_REPLY_ARRAY:
    if (depth > 32) luaL_error(L, "redis reply too deep");
    lua_createtable(L, r->elements < INT32_MAX ? (int)r->elements : 0, 0);
    for (size_t i = 0; i < r->elements; i++) {
      if (r->element[i]->type == REDIS_REPLY_NIL) lua_pushboolean(L, 0);
      else push_value(L, r->element[i], depth + 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    break;
  case REDIS_REPLY_ERROR:
    lua_createtable(L, 0, 1);
    lua_pushlstring(L, r->str, r->len);
    lua_setfield(L, -2, "err");
    break;
  default:
    lua_pushnil(L);
    break;
  }
}

/* Protected: pushes (value, nil) or (nil, message) for the reply at 1 (a
 * light userdata; NULL with the message at 2, a light userdata: a C
 * string, made a Lua one here, under protection). */
static int push_reply(lua_State *L) {
  const redisReply *r = lua_touserdata(L, 1);
  if (!r) {
    lua_pushnil(L);
    lua_pushstring(L, lua_touserdata(L, 2));
    return 2;
  }
  if (r->type == REDIS_REPLY_ERROR) {
    lua_pushnil(L);
    lua_pushlstring(L, r->str, r->len);
    return 2;
  }
  push_value(L, r, 0);
  lua_pushnil(L);
  return 2;
}

/* Protected: the C string at 1 (a light userdata) as a Lua string. */
static int push_text(lua_State *L) {
  lua_pushstring(L, lua_touserdata(L, 1));
  return 1;
}

/* The error object of a conversion that failed on top: (nil, why), why
 * made under protection (the failed conversion's memory is free again by
 * then), or else (nil, the error object): Lua's own preallocated "not
 * enough memory" when memory ran out. */
static void failed_pair(lua_State *L, const char *why) {
  lua_pushcfunction(L, push_text);
  lua_pushlightuserdata(L, (void *)why);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) lua_remove(L, -2);
  else lua_pop(L, 1);
  lua_pushnil(L);
  lua_insert(L, -2);
}

/* The two results of a reply onto co, through L. Everything that
 * allocates (the value, the message) happens under protection: at the
 * scripts' memory limit an allocation outside it would end the process.
 * co has room: its stack keeps the slots of the function that waited. */
static void reply_to(gw_script *s, lua_State *co, const redisReply *r, const char *err) {
  lua_State *L = s->L;
  lua_pushcfunction(L, push_reply);
  lua_pushlightuserdata(L, (void *)r);
  lua_pushlightuserdata(L, (void *)(err ? err : "redis: no reply"));
  if (lua_pcall(L, 2, 2, 0) != LUA_OK) failed_pair(L, "redis: not enough memory for the reply");
  lua_xmove(L, co, 2);
}

/* ---- gw.redis ---- */

typedef struct one_wait {
  gw_script *s;
  gw_call *call;
  gw_redis_req *req;            /* NULL once answered */
} one_wait;

static void one_cancel(gw_script *s, void *wait) {
  (void)s;
  one_wait *w = wait;
  gw_redis_cancel(w->req);
  free(w);
}

static void one_reply(void *ud, const struct redisReply *reply, const char *err) {
  one_wait *w = ud;
  gw_script *s = w->s;
  gw_call *c = w->call;
  free(w);
  reply_to(s, gw__call_thread(c), reply, err);
  gw__call_resume(s, c, 2);
}

/* Reads the arguments from `first` on (strings or numbers) into argv/lens
 * (malloc'd, the caller frees). Raises before allocating. */
static int read_args(lua_State *L, int first, int last, const char ***argv, size_t **lens,
                     const char *who) {
  int n = last - first + 1;
  if (n < 1) luaL_error(L, "%s: a command name is needed", who);
  if (n > REDIS_ARGS_MAX) luaL_error(L, "%s: more than %d arguments", who, REDIS_ARGS_MAX);
  for (int i = first; i <= last; i++) {
    int t = lua_type(L, i);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      luaL_error(L, "%s: argument %d is a %s (strings and numbers only)", who, i - first + 1,
                 lua_typename(L, t));
    lua_tolstring(L, i, NULL); /* numbers to strings, in place */
  }
  *argv = malloc((size_t)n * sizeof **argv);
  *lens = malloc((size_t)n * sizeof **lens);
  if (!*argv || !*lens) {
    free(*argv);
    free(*lens);
    return -ENOMEM;
  }
  for (int i = 0; i < n; i++) (*argv)[i] = lua_tolstring(L, first + i, &(*lens)[i]);
  return n;
}

static int no_redis(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "redis: not configured (no redis section in config.lua)");
  return 2;
}

/* gw.redis(cmd, ...) -> value | nil, err: waits for the reply. */
static int l_redis(lua_State *L) {
  gw_script *s = gw_script_of(L);
  gw_call *c = gw__call_current(L, "gw.redis");
  const char **argv;
  size_t *lens;
  int n = read_args(L, 1, lua_gettop(L), &argv, &lens, "gw.redis");
  struct gw_redis *r = gw__redis_of(s);
  if (!r) {
    free(argv);
    free(lens);
    return no_redis(L);
  }
  one_wait *w = n > 0 ? calloc(1, sizeof *w) : NULL;
  char err[256] = "redis: out of memory";
  if (w) {
    w->s = s;
    w->call = c;
    w->req = gw_redis_command(r, n, argv, lens, one_reply, w, err, sizeof err);
  }
  if (n > 0) {
    free(argv);
    free(lens);
  }
  if (!w || !w->req) {
    free(w);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return gw__call_wait(L, c, one_cancel, w, -1);
}

/* ---- gw.redis_pipeline ---- */

typedef struct pipe_wait pipe_wait;
typedef struct pipe_slot {
  pipe_wait *w;
  size_t i;
  gw_redis_req *req;            /* NULL once answered */
} pipe_slot;

struct pipe_wait {
  gw_script *s;
  gw_call *call;
  int results_ref;              /* the results table */
  size_t n, left;
  bool failed;                  /* some command failed: the first error */
  char err[256];
  pipe_slot slot[];             /* one per command */
};

static void pipe_free(gw_script *s, pipe_wait *w) {
  luaL_unref(s->L, LUA_REGISTRYINDEX, w->results_ref);
  free(w);
}

static void pipe_cancel(gw_script *s, void *wait) {
  pipe_wait *w = wait;
  for (size_t i = 0; i < w->n; i++) gw_redis_cancel(w->slot[i].req);
  pipe_free(s, w);
}

/* Protected: results[i] = the reply at 2 (light userdata, or NULL with
 * message 3, a C string as a light userdata). Arg 1: the results table. */
static int store_reply(lua_State *L) {
  const redisReply *r = lua_touserdata(L, 2);
  lua_Integer i = lua_tointeger(L, 4);
  if (!r) {
    lua_createtable(L, 0, 1);
    lua_pushstring(L, lua_touserdata(L, 3));
    lua_setfield(L, -2, "err");
  } else if (r->type == REDIS_REPLY_NIL) {
    lua_pushboolean(L, 0);
  } else {
    push_value(L, r, 0);
  }
  lua_rawseti(L, 1, i);
  return 0;
}

static void pipe_reply(void *ud, const struct redisReply *reply, const char *err) {
  pipe_slot *slot = ud;
  pipe_wait *w = slot->w;
  size_t i = slot->i;
  gw_script *s = w->s;
  lua_State *L = s->L;
  slot->req = NULL;
  const char *why = err;
  if (reply && reply->type == REDIS_REPLY_ERROR) why = reply->str;
  if (why && !w->failed) {
    w->failed = true;
    snprintf(w->err, sizeof w->err, "%s", why);
  }
  lua_pushcfunction(L, store_reply);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->results_ref);
  lua_pushlightuserdata(L, (void *)reply);
  lua_pushlightuserdata(L, (void *)(err ? err : ""));
  lua_pushinteger(L, (lua_Integer)i + 1);
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    if (!w->failed) {
      w->failed = true;
      snprintf(w->err, sizeof w->err, "redis: not enough memory for a reply");
    }
  }
  if (--w->left) return;
  gw_call *c = w->call;
  lua_State *co = gw__call_thread(c);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->results_ref);
  if (!w->failed) {
    lua_pushnil(L);
  } else { /* the message made under protection, as in reply_to */
    lua_pushcfunction(L, push_text);
    lua_pushlightuserdata(L, w->err);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) { /* no results table then: nil, the error */
      lua_remove(L, -2);
      failed_pair(L, "redis: not enough memory for the replies");
    }
  }
  lua_xmove(L, co, 2);
  pipe_free(s, w);
  gw__call_resume(s, c, 2);
}

/* gw.redis_pipeline{ {cmd, ...}, ... } -> results, err: sends them all at
 * once and waits for every reply. results[i]: the reply (nil as false, an
 * error as { err = message }); err: the first error, or nil. */
static int l_redis_pipeline(lua_State *L) {
  gw_script *s = gw_script_of(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  gw_call *c = gw__call_current(L, "gw.redis_pipeline");
  lua_Integer n = luaL_len(L, 1);
  if (n < 1 || n > PIPELINE_MAX)
    return luaL_error(L, "gw.redis_pipeline: 1 to %d commands", PIPELINE_MAX);
  /* every command's table goes on the stack: room past LUA_MINSTACK */
  luaL_checkstack(L, (int)n + 8, "gw.redis_pipeline");
  for (lua_Integer i = 1; i <= n; i++)
    if (lua_rawgeti(L, 1, i) != LUA_TTABLE)
      return luaL_error(L, "gw.redis_pipeline: command %I is not a table", i);
  /* the command tables are at 2 .. n+1; their arguments go on the stack */
  struct gw_redis *r = gw__redis_of(s);
  if (!r) return no_redis(L);
  lua_newtable(L);
  int results_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  pipe_wait *w = calloc(1, sizeof *w + (size_t)n * sizeof w->slot[0]);
  if (!w) {
    luaL_unref(L, LUA_REGISTRYINDEX, results_ref);
    return luaL_error(L, "gw.redis_pipeline: not enough memory");
  }
  w->s = s;
  w->call = c;
  w->results_ref = results_ref;
  char err[256] = "";
  for (lua_Integer i = 1; i <= n && !err[0]; i++) {
    int top = lua_gettop(L);
    lua_Integer m = (lua_Integer)lua_rawlen(L, (int)i + 1);
    if (m < 1 || m > REDIS_ARGS_MAX || !lua_checkstack(L, (int)m + 4)) {
      snprintf(err, sizeof err, "gw.redis_pipeline: command %" PRId64 " has %" PRId64
               " arguments", (int64_t)i, (int64_t)m);
      break;
    }
    bool ok = true;
    for (lua_Integer k = 1; k <= m; k++) {
      int t = lua_rawgeti(L, (int)i + 1, k);
      if (t != LUA_TSTRING && t != LUA_TNUMBER) ok = false;
    }
    if (!ok) {
      snprintf(err, sizeof err, "gw.redis_pipeline: command %" PRId64
               " has an argument that is no string or number", (int64_t)i);
      lua_settop(L, top);
      break;
    }
    const char **argv;
    size_t *lens;
    int na = read_args(L, top + 1, lua_gettop(L), &argv, &lens, "gw.redis_pipeline");
    if (na < 0) {
      snprintf(err, sizeof err, "redis: out of memory");
      lua_settop(L, top);
      break;
    }
    pipe_slot *slot = &w->slot[i - 1];
    slot->w = w;
    slot->i = (size_t)i - 1;
    slot->req = gw_redis_command(r, na, argv, lens, pipe_reply, slot, err, sizeof err);
    free(argv);
    free(lens);
    lua_settop(L, top);
    if (!slot->req) break;
    w->n++;
    w->left++;
  }
  if (err[0]) {
    /* What was sent is cancelled: all or nothing is waited for. */
    for (size_t i = 0; i < w->n; i++) gw_redis_cancel(w->slot[i].req);
    pipe_free(s, w);
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  return gw__call_wait(L, c, pipe_cancel, w, -1);
}

/* ---- gw.publish ---- */

static void publish_done(void *ud, const struct redisReply *reply, const char *err) {
  (void)ud;
  if (err) gw_debug("gw.publish: %s", err);
  else if (reply && reply->type == REDIS_REPLY_ERROR) gw_debug("gw.publish: %s", reply->str);
}

/* gw.publish(channel, message) -> true | nil, err: sent, not waited for. */
static int l_publish(lua_State *L) {
  gw_script *s = gw_script_of(L);
  size_t clen, mlen;
  const char *ch = luaL_checklstring(L, 1, &clen);
  const char *msg = luaL_checklstring(L, 2, &mlen);
  struct gw_redis *r = gw__redis_of(s);
  if (!r) return no_redis(L);
  const char *argv[3] = {"PUBLISH", ch, msg};
  size_t lens[3] = {7, clen, mlen};
  char err[256];
  if (!gw_redis_command(r, 3, argv, lens, publish_done, NULL, err, sizeof err)) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- gw.subscribe ---- */

static int subscribe(lua_State *L, bool pattern) {
  gw_script *s = gw_script_of(L);
  const char *who = pattern ? "gw.psubscribe" : "gw.subscribe";
  size_t len;
  /* the client and the matching read names up to a NUL: "bans\0x" was
   * "bans", and got that channel's messages */
  if (strlen(luaL_checklstring(L, 1, &len)) != len)
    luaL_argerror(L, 1, pattern ? "a pattern without NUL bytes" : "a channel name without NUL bytes");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!s->loading_gen)
    return luaL_error(L, "%s: only while scripts load (at the top of a script)", who);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, SUBS_KEY);
  if (lua_rawgeti(L, -1, s->loading_gen) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawseti(L, -3, s->loading_gen);
  }
  lua_createtable(L, 3, 0);
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, 1);
  lua_pushboolean(L, pattern);
  lua_rawseti(L, -2, 2);
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, 3);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  /* list.index["c" .. channel or "p" .. pattern] = { fn, ... }: a message
   * finds its functions at once, among any number of subscriptions */
  int list = lua_gettop(L);
  if (lua_getfield(L, list, "index") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, list, "index");
  }
  int index = lua_gettop(L);
  lua_pushstring(L, pattern ? "p" : "c");
  lua_pushvalue(L, 1);
  lua_concat(L, 2);
  int key = lua_gettop(L);
  lua_pushvalue(L, key);
  if (lua_rawget(L, index) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, key);
    lua_pushvalue(L, -2);
    lua_rawset(L, index);
  }
  lua_pushvalue(L, 2);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

/* gw.subscribe(channel, fn(channel, message)): for the generation loading. */
static int l_subscribe(lua_State *L) { return subscribe(L, false); }
/* gw.psubscribe(pattern, fn(channel, message, pattern)) */
static int l_psubscribe(lua_State *L) { return subscribe(L, true); }

/* Messages are dropped while the scripts' memory stays near its limit.
 * There every allocation costs a full collection, so a flood of messages
 * (each starting a function, and each function that waits holding its
 * coroutine) would spend the loop on collections and starve every
 * session. Near the limit one collection at most every GUARD_MS tells
 * whether the memory is really held; until the next, messages go or are
 * dropped by what it told. */
#define GUARD_MS 100
typedef struct msg_guard {
  uint64_t checked_ms;
  uint64_t dropped;             /* since the memory got tight */
  bool tight;
} msg_guard;
static const char guard_key = 0; /* registry[&guard_key]: the msg_guard */

/* Protected: the running generation's subscriptions to the client (arg 1);
 * older generations' are forgotten. */
static int sync_subs(lua_State *L) {
  gw_script *s = gw_script_of(L);
  struct gw_redis *r = lua_touserdata(L, 1);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &guard_key) == LUA_TNIL) {
    msg_guard *g = lua_newuserdatauv(L, sizeof *g, 0);
    memset(g, 0, sizeof *g);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &guard_key);
  }
  lua_pop(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, SUBS_KEY);
  int t = lua_gettop(L);
  /* drop every generation but the running one and one loading */
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    lua_Integer g = lua_tointeger(L, -1);
    if (g != (lua_Integer)s->gen && g != (lua_Integer)s->loading_gen) {
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, t); /* clearing a field during lua_next is allowed */
    }
  }
  if (!r) return 0;
  size_t n = 0;
  const char **names = NULL, **pats = NULL;
  size_t nn = 0, np = 0;
  if (lua_rawgeti(L, t, s->gen) == LUA_TTABLE) n = lua_rawlen(L, -1);
  int list = lua_gettop(L);
  if (n) {
    names = lua_newuserdatauv(L, n * sizeof *names, 0);
    pats = lua_newuserdatauv(L, n * sizeof *pats, 0);
  }
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, list, (lua_Integer)i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    const char *name = lua_tostring(L, -2); /* kept alive by the entry */
    if (lua_toboolean(L, -1)) pats[np++] = name;
    else names[nn++] = name;
    lua_pop(L, 3);
  }
  if (gw_redis_set_subscriptions(r, names, nn, pats, np) < 0)
    return luaL_error(L, "not enough memory for the subscriptions");
  return 0;
}

/* Protected: a reference to { channel, message, pattern or false, the
 * functions subscribed ... } for a message. Arg: light userdata of the
 * on_message arguments. In the registry, not on the stack: running a
 * function resets the stack. */
typedef struct message {
  const char *pattern, *channel, *msg;
  size_t channel_len, len;
} message;

static int match_subs(lua_State *L) {
  gw_script *s = gw_script_of(L);
  const message *m = lua_touserdata(L, 1);
  lua_newtable(L);
  int out = lua_gettop(L);
  lua_pushlstring(L, m->channel, m->channel_len);
  lua_rawseti(L, out, 1);
  lua_pushlstring(L, m->msg, m->len);
  lua_rawseti(L, out, 2);
  if (m->pattern) lua_pushstring(L, m->pattern);
  else lua_pushboolean(L, 0);
  lua_rawseti(L, out, 3);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, SUBS_KEY);
  if (lua_rawgeti(L, -1, s->gen) == LUA_TTABLE && lua_getfield(L, -1, "index") == LUA_TTABLE) {
    lua_pushstring(L, m->pattern ? "p" : "c");
    lua_rawgeti(L, out, m->pattern ? 3 : 1); /* the whole channel, NULs too */
    lua_concat(L, 2);
    if (lua_rawget(L, -2) == LUA_TTABLE) {
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, out, 3 + i);
      }
    }
  }
  lua_settop(L, out);
  lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
  return 1;
}

static bool drop_message(gw_script *s, const char *channel, size_t channel_len) {
  lua_State *L = s->L;
  size_t limit = s->limits.memory_bytes;
  if (!limit) return false;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &guard_key); /* allocates nothing */
  msg_guard *g = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!g) return false;
  uint64_t now = s->ops.now_ms ? s->ops.now_ms(s->host) : 0;
  if (s->mem > limit - limit / 8 && (!g->checked_ms || now - g->checked_ms >= GUARD_MS)) {
    g->checked_ms = now ? now : 1;
    lua_gc(L, LUA_GCCOLLECT);
    bool tight = s->mem > limit - limit / 4;
    if (tight && !g->tight)
      gw_warn("redis messages dropped (the first on %.*s): the scripts' memory is near "
              "limits.lua_memory_mb (%zu of %zu KiB in use)",
              (int)(channel_len < 64 ? channel_len : 64), channel, s->mem / 1024, limit / 1024);
    g->tight = tight;
  } else if (g->tight && s->mem <= limit - limit / 4) {
    g->tight = false;
  }
  if (!g->tight && g->dropped) {
    gw_info("redis messages flow again: %" PRIu64 " dropped while the scripts' memory was "
            "near its limit", g->dropped);
    g->dropped = 0;
  }
  if (g->tight) g->dropped++;
  return g->tight;
}

static void on_message(void *ud, const char *pattern, const char *channel, size_t channel_len,
                       const char *msg, size_t len) {
  gw_script *s = ud;
  lua_State *L = s->L;
  if (s->depth) return; /* never: messages come from the loop */
  if (drop_message(s, channel, channel_len)) return;
  message m = {pattern, channel, msg, channel_len, len};
  lua_pushcfunction(L, match_subs);
  lua_pushlightuserdata(L, &m);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    gw_warn("redis message on %.*s: %s", (int)channel_len, channel, lua_tostring(L, -1));
    lua_settop(L, GW_SLOT_BASE);
    return;
  }
  int ref = (int)lua_tointeger(L, -1);
  lua_settop(L, GW_SLOT_BASE);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1) - 3;
  lua_settop(L, GW_SLOT_BASE);
  char what[128];
  snprintf(what, sizeof what, "gw.%s function of %.*s", pattern ? "psubscribe" : "subscribe",
           (int)(channel_len < 64 ? channel_len : 64), channel);
  /* each function from the reference: gw__call_plain resets the stack */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    int t = lua_gettop(L);
    lua_rawgeti(L, t, 3 + i);
    for (int k = 1; k <= (pattern ? 3 : 2); k++) lua_rawgeti(L, t, k);
    lua_remove(L, t);
    gw__call_plain(s, pattern ? 3 : 2, NULL, NULL, what);
    lua_settop(L, GW_SLOT_BASE);
  }
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  gw__flush(s);
  gw__timers_wake(s);
  gw__host_flush(s);
}

void gw_script_set_redis(gw_script *s, struct gw_redis *r) {
  gw__redis_set(s, r);
  if (r) gw_redis_on_message(r, on_message, s);
  lua_State *L = s->L;
  lua_pushcfunction(L, sync_subs);
  lua_pushlightuserdata(L, r);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    gw_error("redis: subscriptions: %s", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

/* ---- sleeps ---- */

static int sleep_for(lua_State *L, int idx, const char *who) {
  lua_Number ms = luaL_checknumber(L, idx);
  if (!(ms >= 0 && ms < 1e12)) luaL_argerror(L, idx, "milliseconds >= 0");
  gw_call *c = gw__call_current(L, who);
  /* at least 1 ms: a sleep ends in a later turn of the loop, never in the
   * one that runs it (a `sleep(0)` loop cannot spin there) */
  return gw__call_wait(L, c, NULL, NULL, ms < 1 ? 1 : (int64_t)ms);
}

/* gw.sleep(ms) */
static int l_sleep(lua_State *L) { return sleep_for(L, 1, "gw.sleep"); }

/* session:sleep(ms) */
static int s_sleep(lua_State *L) {
  luaL_checkudata(L, 1, GW_SESSION_MT);
  return sleep_for(L, 2, "session:sleep");
}

static const luaL_Reg redis_funcs[] = {
  {"redis", l_redis}, {"redis_pipeline", l_redis_pipeline}, {"publish", l_publish},
  {"subscribe", l_subscribe}, {"psubscribe", l_psubscribe}, {"sleep", l_sleep},
  {NULL, NULL},
};

void gw__redis_funcs(lua_State *L) { luaL_setfuncs(L, redis_funcs, 0); }

/* session:sleep joins the session's methods: the table its __index
 * closure looks in first (script_session.c). */
void gw__wait_open_lib(lua_State *L) {
  int top = lua_gettop(L);
  luaL_getmetatable(L, GW_SESSION_MT);
  if (lua_getfield(L, -1, "__index") == LUA_TFUNCTION && lua_getupvalue(L, -1, 1) &&
      lua_type(L, -1) == LUA_TTABLE) {
    lua_pushcfunction(L, s_sleep);
    lua_setfield(L, -2, "sleep");
  }
  lua_settop(L, top);
}
