/* script_timer.c: gw.after/gw.every and session:after/session:every.
 *
 * All timers of the state sit in one min-heap ordered by (when, seq); the
 * host's clock (now_ms) drives it and the host is asked to call
 * gw_script_run_timers at the earliest due time (wake_at). A timer is a
 * userdata holding its function as a user value, anchored in the registry
 * while it is scheduled. Timers of a session end with it; timers of a
 * generation end when a reload replaces it. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "script_int.h"

/* ---- the heap ---- */

static bool before(const gw_timer *a, const gw_timer *b) {
  return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void place(gw_script *s, size_t i, gw_timer *t) {
  s->heap[i] = t;
  t->idx = i;
}

static void sift_up(gw_script *s, size_t i) {
  gw_timer *t = s->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!before(t, s->heap[parent])) break;
    place(s, i, s->heap[parent]);
    i = parent;
  }
  place(s, i, t);
}

static void sift_down(gw_script *s, size_t i) {
  gw_timer *t = s->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= s->nheap) break;
    if (c + 1 < s->nheap && before(s->heap[c + 1], s->heap[c])) c++;
    if (!before(s->heap[c], t)) break;
    place(s, i, s->heap[c]);
    i = c;
  }
  place(s, i, t);
}

/* The caller made room. */
static void heap_push(gw_script *s, gw_timer *t) {
  s->heap[s->nheap++] = t;
  sift_up(s, s->nheap - 1);
}

static void heap_remove(gw_script *s, gw_timer *t) {
  size_t i = t->idx;
  t->idx = SIZE_MAX;
  gw_timer *last = s->heap[--s->nheap];
  if (i == s->nheap) return;
  place(s, i, last);
  sift_up(s, i);
  sift_down(s, last->idx);
}

static void session_unlink(gw_timer *t) {
  if (!t->sud) return;
  if (t->sprev)
    t->sprev->snext = t->snext;
  else
    t->sud->timers = t->snext;
  if (t->snext) t->snext->sprev = t->sprev;
  t->sprev = t->snext = NULL;
  t->sud = NULL;
  t->ss = NULL;
}

/* Unschedules t (not in the heap any more) and lets Lua collect it. */
static void retire(gw_script *s, gw_timer *t) {
  luaL_unref(s->L, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
  t->idx = SIZE_MAX;
  session_unlink(t);
}

void gw__timer_cancel(gw_script *s, gw_timer *t) {
  if (t->idx == SIZE_MAX) return;
  heap_remove(s, t);
  retire(s, t);
}

void gw__timers_cancel_session(gw_script *s, gw_session_ud *sud) {
  while (sud->timers) {
    gw_timer *t = sud->timers;
    if (t->idx != SIZE_MAX)
      gw__timer_cancel(s, t);
    else
      session_unlink(t);
  }
}

void gw__timers_cancel_gen(gw_script *s, unsigned gen, bool exact) {
  size_t kept = 0;
  for (size_t i = 0; i < s->nheap; i++) {
    gw_timer *t = s->heap[i];
    if (exact ? t->gen == gen : t->gen < gen)
      retire(s, t);
    else
      place(s, kept++, t);
  }
  s->nheap = kept;
  for (size_t i = kept / 2; i-- > 0;) sift_down(s, i);
}

void gw__timers_wake(gw_script *s) {
  uint64_t next = s->nheap ? s->heap[0]->when : UINT64_MAX;
  uint64_t calls = gw__calls_next(s); /* sleeps and wait bounds */
  if (calls < next) next = calls;
  if (next == UINT64_MAX || next >= s->wake) return;
  s->wake = next;
  if (s->ops.wake_at) s->ops.wake_at(s->host, s->wake);
}

/* ---- Lua side ---- */

static gw_timer *check_timer(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, GW_TIMER_MT);
}

gw_timer *gw__timer_start(lua_State *L, gw_listener_rt *rt, gw_session_ud *sud,
                          lua_Integer ms, bool repeat, int fidx) {
  gw_script *s = gw_script_of(L);
  fidx = lua_absindex(L, fidx);
  luaL_checktype(L, fidx, LUA_TFUNCTION);
  if (repeat && ms < 1) luaL_argerror(L, fidx - 1, "an interval of 1 ms or more");
  gw_timer *t = lua_newuserdatauv(L, sizeof *t, 1);
  memset(t, 0, sizeof *t);
  t->idx = SIZE_MAX;
  t->ref = LUA_NOREF;
  t->rt = rt;
  luaL_setmetatable(L, GW_TIMER_MT);
  lua_pushvalue(L, fidx);
  lua_setiuservalue(L, -2, 1);
  t->gen = s->loading_gen ? s->loading_gen : s->gen;
  t->interval = repeat ? (uint64_t)ms : 0;
  t->when = s->ops.now_ms(s->host) + (uint64_t)ms;
  t->seq = ++s->timer_seq;
  if (sud && (!sud->ss || sud->ss->closed))
    return t; /* the session is closing: a timer that never fires */
  void *heap = gw__grow(s, s->heap, &s->capheap, s->nheap + 1, sizeof *s->heap);
  if (!heap) luaL_error(L, "not enough memory");
  s->heap = heap;
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (sud) {
    t->sud = sud;
    t->ss = sud->ss;
    t->snext = sud->timers;
    if (sud->timers) sud->timers->sprev = t;
    sud->timers = t;
  }
  heap_push(s, t);
  return t;
}

static int t_cancel(lua_State *L) {
  gw_timer *t = check_timer(L, 1);
  bool active = t->idx != SIZE_MAX;
  gw__timer_cancel(gw_script_of(L), t);
  lua_pushboolean(L, active);
  return 1;
}

static int t_active(lua_State *L) {
  lua_pushboolean(L, check_timer(L, 1)->idx != SIZE_MAX);
  return 1;
}

static int t_tostring(lua_State *L) {
  gw_timer *t = check_timer(L, 1);
  lua_pushfstring(L, "gangway.timer (%s%s)",
                  t->interval ? "every " : "once",
                  t->idx == SIZE_MAX ? ", done" : "");
  return 1;
}

static const luaL_Reg t_methods[] = {
  {"cancel", t_cancel}, {"active", t_active}, {NULL, NULL},
};

void gw__timer_open_lib(lua_State *L) {
  luaL_newmetatable(L, GW_TIMER_MT);
  lua_pushcfunction(L, t_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_newtable(L);
  luaL_setfuncs(L, t_methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0); /* out of scripts' reach, as the packet's */
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}

void gw_script_run_timers(gw_script *s) {
  if (s->depth) return;
  lua_State *L = s->L;
  uint64_t now = s->ops.now_ms(s->host);
  /* Only timers that exist now: one a callback starts with 0 ms waits for
   * the next run, so `after(0)` chains cannot spin here forever. */
  uint64_t last = s->timer_seq;
  s->wake = UINT64_MAX; /* the host's wake-up is spent */
  while (s->nheap && s->heap[0]->when <= now && s->heap[0]->seq <= last) {
    gw_timer *t = s->heap[0];
    heap_remove(s, t);
    /* fn(session, timer) or fn(timer), in a call that may wait: the timer
     * userdata (an argument) anchors it for the call. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
    lua_getiuservalue(L, -1, 1);
    lua_insert(L, -2);
    gw_script_session *ss = t->ss;
    gw_listener_rt *rt = t->rt;
    int nargs = 1;
    if (ss) { /* a session timer: its userdata exists (session:after made it) */
      gw__push_session(L, ss);
      lua_insert(L, -2);
      nargs = 2;
    }
    if (t->interval) {
      /* Next due one interval on; a host that fell behind does not get a
       * burst of catch-up calls. */
      t->when += t->interval;
      if (t->when <= now) t->when = now + t->interval;
      t->seq = ++s->timer_seq;
      heap_push(s, t); /* the slot it left is free */
    } else {
      retire(s, t);
    }
    char what[64];
    if (ss)
      snprintf(what, sizeof what, "timer of session %" PRIu64, ss->id);
    else
      snprintf(what, sizeof what, "timer");
    gw__call_plain(s, nargs, rt, ss, what);
    gw__flush(s);
  }
  gw__calls_run_due(s, now);
  gw__timers_wake(s);
}
