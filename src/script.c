/* script.c: the Lua state behind include/script.h: its capped allocator,
 * the instruction limit, protected calls, the frame dispatcher, the outbox
 * that orders what handlers send, and the counters.
 *
 * Every call into Lua goes through gw__pcall: a lua_pcall with a message
 * handler that adds a traceback, under the count hook. What Lua sends is
 * queued and emitted after the call, so the host is never re-entered from
 * inside Lua, and a frame's verdict always goes out before what its
 * handlers injected.
 *
 * The host bounds what is queued toward each side of a session (write_max):
 * its emit returns -ENOBUFS for a frame that does not fit, and queues
 * nothing. A sent frame refused so is dropped and counted
 * (injected_refused; the send itself returned true, as it was queued in
 * the outbox); a frame that must pass (the handled frame or its
 * replacement) and cannot closes its session. */
#include <errno.h>
#include <inttypes.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "pipe.h"
#include "script_int.h"

static void count_hook(lua_State *L, lua_Debug *ar);

/* ---- memory ---- */

/* Every ALLOC_CHARGE bytes a call allocates cost it one instruction: C
 * functions (string.rep, table.concat...) do work in proportion to what
 * they allocate, out of the count hook's sight. Filling 256 bytes costs
 * a few Lua instructions' time; a cheaper charge would let the
 * instruction limit stop a memory bomb before the memory limit names it.
 * Past the limit, the hook fires at the next instruction. */
#define ALLOC_CHARGE 256

/* The thread a call runs on: the slice's coroutine, or the main thread
 * (loading, on_close, gw__pcall). */
static lua_State *running(const gw_script *s);

static void charge_bytes(gw_script *s, size_t n) {
  s->alloc_uncharged += n;
  if (s->alloc_uncharged < 4096 || !s->limits.handler_instructions) return;
  s->instructions += s->alloc_uncharged / ALLOC_CHARGE;
  s->alloc_uncharged %= ALLOC_CHARGE;
  if (s->instructions >= s->limits.handler_instructions && !s->timed_out) {
    s->timed_out = true;
    lua_sethook(running(s), count_hook, LUA_MASKCOUNT, 1);
  }
}

/* Lua's allocator, counting what the state holds and refusing to grow past
 * limits.memory_bytes: Lua turns a NULL into a memory error the call's
 * protected mode catches (HAProxy's hlua_alloc). Shrinking never fails. */
static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  gw_script *s = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    s->mem -= old;
    return NULL;
  }
  void *p = NULL;
  if (nsize <= old || !s->limits.memory_bytes ||
      s->mem - old + nsize <= s->limits.memory_bytes)
    p = realloc(ptr, nsize);
  if (p) {
    s->mem = s->mem - old + nsize;
    s->refused.ptr = NULL;
    s->refused.nsize = 0;
    if (nsize > old && s->depth) charge_bytes(s, nsize - old);
    return p;
  }
  /* Lua answers a refusal with a full collection and asks again: the same
   * request refused twice is a memory error. A script could catch it with
   * pcall and ask again, paying a full collection each time: make it
   * sticky, like the instruction limit (the hook raises it again). */
  if (s->refused.ptr == ptr && s->refused.osize == osize &&
      s->refused.nsize == nsize && s->depth && !s->out_of_memory) {
    s->out_of_memory = true;
    lua_sethook(running(s), count_hook, LUA_MASKCOUNT, 1);
  }
  s->refused.ptr = ptr;
  s->refused.osize = osize;
  s->refused.nsize = nsize;
  return NULL;
}

/* C-side buffers that grow with what scripts do (the outbox) come from the
 * same allocator, so a script cannot get around the limit through them. */
static void *grow(gw_script *s, void *p, size_t *cap, size_t need,
                  size_t elem) {
  if (need <= *cap) return p;
  size_t n = *cap ? *cap : 16;
  while (n < need) n *= 2;
  if (n > SIZE_MAX / elem) return NULL;
  void *q = l_alloc(s, p, *cap * elem, n * elem);
  if (q) *cap = n;
  return q;
}

void gw__format_bytes(char *out, size_t outlen, size_t bytes) {
  if (bytes >= (1u << 20) && bytes % (1u << 20) == 0)
    snprintf(out, outlen, "%zu MiB", bytes >> 20);
  else if (bytes >= 1024 && bytes % 1024 == 0)
    snprintf(out, outlen, "%zu KiB", bytes >> 10);
  else
    snprintf(out, outlen, "%zu bytes", bytes);
}

/* ---- the instruction limit ---- */

static int hook_interval(const gw_script *s) {
  uint64_t lim = s->limits.handler_instructions;
  return lim && lim < GW_HOOK_INTERVAL ? (int)lim : GW_HOOK_INTERVAL;
}

/* Raises "FILE:LINE: what" at the instruction the hook stopped at. */
static _Noreturn void hook_error(lua_State *L, lua_Debug *ar, const char *what) {
  lua_getinfo(L, "Sl", ar);
  /* Stopped in the sandbox's xpcall wrapper (gangway's own Lua: in a
   * coroutine, Lua's error recovery runs on in it after xpcall caught an
   * error): name the script's line that called it. */
  lua_Debug up;
  if (!strcmp(ar->source, "=xpcall") && lua_getstack(L, 1, &up) && lua_getinfo(L, "Sl", &up))
    ar = &up;
  if (ar->currentline > 0)
    lua_pushfstring(L, "%s:%d: %s", ar->short_src, ar->currentline, what);
  else
    lua_pushstring(L, what);
  lua_error(L);
  abort(); /* lua_error does not return */
}

/* Counts instructions in steps of the hook interval. Past the limit it
 * raises, and from then on fires at every instruction of every function so
 * that a pcall in the script only catches the error for the next
 * instruction to raise it again (Redis' luaMaskCountHook, HAProxy's
 * hlua_hook). The next gw__pcall sets it back to the interval.
 *
 * It also bounds the depth of the running thread's stack: lua_getstack
 * walks min(depth, GW_MAX_DEPTH) call levels, a few for a usual handler.
 * That error is an ordinary one (a pcall may catch it, as Lua's own
 * "stack overflow"): the unwinding it causes is what the bound is for. */
static void count_hook(lua_State *L, lua_Debug *ar) {
  gw_script *s = gw_script_of(L);
  char what[80];
  if (!gw__over_limit(s)) {
    int interval = hook_interval(s);
    if (lua_gethookcount(L) != interval) {
      /* a coroutine left at every-instruction by an earlier call */
      lua_sethook(L, count_hook, LUA_MASKCOUNT, interval);
      return;
    }
    s->instructions += (uint64_t)interval;
    lua_Debug deep;
    if (lua_getstack(L, GW_MAX_DEPTH, &deep)) {
      snprintf(what, sizeof what, "stack depth limit exceeded (%d levels)",
               GW_MAX_DEPTH);
      hook_error(L, ar, what);
    }
    if (!s->limits.handler_instructions ||
        s->instructions < s->limits.handler_instructions)
      return;
    s->timed_out = true;
  }
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  if (L != running(s)) lua_sethook(running(s), count_hook, LUA_MASKCOUNT, 1);
  if (s->timed_out) {
    snprintf(what, sizeof what, "instruction limit exceeded (%" PRIu64
             " per call)", s->limits.handler_instructions);
  } else {
    char lim[32];
    gw__format_bytes(lim, sizeof lim, s->limits.memory_bytes);
    snprintf(what, sizeof what, "not enough memory (the scripts' limit is %s)",
             lim);
  }
  hook_error(L, ar, what);
}

/* The message handler of every call: the error and a traceback (lua.c).
 * luaL_traceback walks the whole stack to find its last levels: cheap,
 * as the count hook keeps it within GW_MAX_DEPTH + GW_HOOK_INTERVAL
 * levels. */
static int msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

void gw__charge(lua_State *L, uint64_t cost) {
  gw_script *s = gw_script_of(L);
  if (!s->depth || !s->limits.handler_instructions) return;
  s->instructions += cost;
  if (s->instructions < s->limits.handler_instructions && !s->timed_out)
    return;
  s->timed_out = true;
  lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
  if (L != running(s)) lua_sethook(running(s), count_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "instruction limit exceeded (%I per call)",
             (lua_Integer)s->limits.handler_instructions);
}

/* Drops what was queued from nout, arena_len and ncloses on. */
static void outbox_rollback(gw_script *s, size_t nout, size_t arena_len, size_t ncloses) {
  for (size_t i = nout; i < s->nout; i++) {
    if (s->out[i].op) gw_codec_unref(s->out[i].codec);
    else s->stats.injected--;
  }
  s->nout = nout;
  s->arena_len = arena_len;
  for (size_t i = ncloses; i < s->ncloses; i++)
    if (s->closes[i].ss) s->closes[i].ss->closed = false;
  s->ncloses = ncloses;
}

int gw__pcall(gw_script *s, int nargs, int nresults) {
  lua_State *L = s->L;
  s->instructions = 0;
  s->alloc_uncharged = 0;
  s->timed_out = s->out_of_memory = false;
  /* Also without an instruction limit: the memory limit needs the hook.
   * It stays set between calls (it only fires while Lua runs), so a call
   * costs no lua_sethook unless the last one ran into a limit. A call may
   * start with part of the last one's interval left: it is charged a whole
   * interval at that first count, a rounding of at most one interval. */
  int interval = hook_interval(s);
  if (lua_gethook(L) != count_hook || lua_gethookcount(L) != interval)
    lua_sethook(L, count_hook, LUA_MASKCOUNT, interval);
  size_t nout = s->nout, arena_len = s->arena_len, ncloses = s->ncloses;
  s->depth++;
  int st = lua_pcall(L, nargs, nresults, GW_SLOT_MSGH);
  s->depth--;
  /* A call that fails sends nothing and closes nothing: no half-done
   * sequences (on_error decides what happens next). */
  if (st != LUA_OK) outbox_rollback(s, nout, arena_len, ncloses);
  return st;
}

/* ---- errors ---- */

#define ERRLOG_PER_SECOND 20

/* Logs one failed call: the message's first line (FILE:LINE: message) as an
 * error, the traceback at debug level. At most ERRLOG_PER_SECOND lines a
 * second, so a handler failing on every frame cannot flood the log. */
static void report(gw_script *s, const char *listener, const char *what,
                   const char *msg, bool timeout) {
  s->stats.errors++;
  if (timeout) s->stats.timeouts++;
  gw_listener_rt *rt = gw__find_rt(s, listener);
  if (rt && rt->errors_slot) (*rt->errors_slot)++;
  if (rt && timeout && rt->timeouts_slot) (*rt->timeouts_slot)++;
  uint64_t now = s->ops.now_ms ? s->ops.now_ms(s->host) : 0;
  if (now - s->errlog_window >= 1000 || now < s->errlog_window) {
    s->errlog_window = now;
    s->errlog_count = 0;
  }
  if (++s->errlog_count > ERRLOG_PER_SECOND) {
    s->errlog_suppressed++;
    return;
  }
  const char *nl = strchr(msg, '\n');
  int first = nl ? (int)(nl - msg) : (int)strlen(msg);
  if (s->errlog_suppressed)
    gw_error("%s: %s: %.*s (%" PRIu64 " more errors were not logged)",
             listener, what, first, msg, s->errlog_suppressed);
  else
    gw_error("%s: %s: %.*s", listener, what, first, msg);
  s->errlog_suppressed = 0;
  if (nl && gw_log_enabled(GW_LOG_DEBUG)) {
    /* one line per event: the traceback's lines joined */
    char tb[1800];
    size_t n = 0;
    for (const char *p = nl + 1; *p && n + 4 < sizeof tb; p++) {
      if (*p == '\n') {
        memcpy(tb + n, " | ", 3);
        n += 3;
      } else if (*p != '\t') {
        tb[n++] = *p;
      }
    }
    tb[n] = 0;
    gw_debug("%s: %s: %s", listener, what, tb);
  }
}

void gw__report_error(gw_script *s, int status, const char *listener,
                      const char *what) {
  lua_State *L = s->L;
  char buf[160];
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                   : "(no error message)";
  if (status == LUA_ERRMEM && s->timed_out) {
    snprintf(buf, sizeof buf, "instruction limit exceeded (%" PRIu64
             " per call)", s->limits.handler_instructions);
    msg = buf;
  } else if (status == LUA_ERRMEM) {
    char lim[32];
    gw__format_bytes(lim, sizeof lim, s->limits.memory_bytes);
    snprintf(buf, sizeof buf, "not enough memory (the scripts' limit is %s)",
             lim);
    msg = buf;
  }
  report(s, listener, what, msg, s->timed_out);
  lua_settop(L, GW_SLOT_BASE);
}

/* ---- the outbox ---- */

/* A new outbox entry with len bytes of data copied into the arena. */
static gw_outmsg *outbox_push(lua_State *L, gw_script_session *ss, gw_side to,
                              const void *data, size_t len) {
  gw_script *s = gw_script_of(L);
  void *out = grow(s, s->out, &s->capout, s->nout + 1, sizeof *s->out);
  if (!out) luaL_error(L, "not enough memory");
  s->out = out;
  if (len > SIZE_MAX / 2 - s->arena_len) luaL_error(L, "not enough memory");
  if (len) {
    void *arena = grow(s, s->arena, &s->arena_cap, s->arena_len + len, 1);
    if (!arena) luaL_error(L, "not enough memory");
    s->arena = arena;
    memcpy(s->arena + s->arena_len, data, len);
  }
  gw_outmsg *m = &s->out[s->nout++];
  *m = (gw_outmsg){.ss = ss, .to = to, .off = s->arena_len, .len = len};
  s->arena_len += len;
  return m;
}

void gw__send(lua_State *L, gw_script_session *ss, gw_side to,
              const uint8_t *data, size_t len) {
  outbox_push(L, ss, to, data, len);
  gw_script_of(L)->stats.injected++;
}

void gw__pipe_request(lua_State *L, gw_script_session *ss, const gw_pipe_op *op) {
  gw_outmsg *m = outbox_push(L, ss, op->side, op->framing,
                             op->framing ? sizeof *op->framing : 0);
  m->op = (int)op->kind + 1;
  m->ways = op->ways;
  m->n = op->n;
  m->codec = gw_codec_ref(op->codec);
}

/* Hands one queued pipeline request to the host. */
static void pipe_request(gw_script *s, const gw_outmsg *m) {
  gw_framing f;
  gw_pipe_op op = {.kind = (gw_pipe_op_kind)(m->op - 1), .side = m->to, .n = m->n,
                   .codec = m->codec, .ways = m->ways};
  if (m->len == sizeof f) { /* the arena is bytes: copy it out aligned */
    memcpy(&f, s->arena + m->off, sizeof f);
    op.framing = &f;
  }
  if (m->ss && s->ops.pipe) s->ops.pipe(m->ss, &op);
}

void gw__request_close(gw_script *s, gw_script_session *ss, const char *reason) {
  if (ss->closed) return;
  ss->closed = true;
  gw_closereq *c = grow(s, s->closes, &s->capcloses, s->ncloses + 1,
                        sizeof *s->closes);
  if (!c) {
    /* cannot queue it: close now rather than never */
    if (s->ops.close) s->ops.close(ss, reason);
    return;
  }
  s->closes = c;
  c = &s->closes[s->ncloses++];
  c->ss = ss;
  snprintf(c->reason, sizeof c->reason, "%s", reason ? reason : "closed");
}

static void count_injected(gw_script *s, gw_script_session *ss, gw_side to,
                           const uint8_t *data, size_t len);

void gw__flush(gw_script *s) {
  if (s->flushing) return; /* a close the host did at once: the outer loop
                              picks up what it queued */
  s->flushing = true;
  while (s->nout || s->ncloses) {
    for (size_t i = 0; i < s->nout; i++) {
      gw_outmsg m = s->out[i];
      if (m.op) {
        pipe_request(s, &m);
        gw_codec_unref(m.codec);
        continue;
      }
      if (!m.ss) continue;
      int rc = s->ops.emit(m.ss, m.to, s->arena + m.off, m.len);
      if (rc == 0) count_injected(s, m.ss, m.to, s->arena + m.off, m.len);
      if (rc == -ENOBUFS) { /* past write_max: not sent, the session goes on */
        s->stats.injected--;
        s->stats.injected_refused++;
      } else if (rc < 0) {
        m.ss->closed = true; /* gone: the host will close it */
      }
    }
    s->nout = 0;
    s->arena_len = 0;
    for (size_t i = 0; i < s->ncloses && !s->nout; i++) {
      gw_closereq c = s->closes[i];
      s->closes[i].ss = NULL;
      if (c.ss && s->ops.close) s->ops.close(c.ss, c.reason);
    }
    if (!s->nout) s->ncloses = 0;
  }
  s->flushing = false;
}

/* Forgets ss in what is queued: it is being released. */
static void calls_forget(gw_script *s, gw_script_session *ss);

void gw__outbox_forget(gw_script *s, gw_script_session *ss) {
  calls_forget(s, ss); /* its calls that wait go too */
  for (size_t i = 0; i < s->nout; i++)
    if (s->out[i].ss == ss) s->out[i].ss = NULL;
  for (size_t i = 0; i < s->ncloses; i++)
    if (s->closes[i].ss == ss) s->closes[i].ss = NULL;
}

/* ---- counters ---- */

#define OPSTAT_MAX 4096 /* distinct (side, opcode) pairs counted */

static uint64_t opkey(gw_side side, bool has_opcode, uint32_t opcode) {
  return (uint64_t)side << 33 | (uint64_t)!has_opcode << 32 | opcode;
}

static size_t ophash(uint64_t key, size_t cap) {
  return (size_t)((key * UINT64_C(0x9E3779B97F4A7C15)) >> 32) & (cap - 1);
}

gw_opstat *gw__opstat(gw_listener_rt *rt, gw_side side, bool has_opcode,
                      uint32_t opcode) {
  uint64_t key = opkey(side, has_opcode, opcode);
  if (rt->last_op && rt->last_op->key == key) return rt->last_op;
  if (rt->capops) {
    for (size_t i = ophash(key, rt->capops);; i = (i + 1) & (rt->capops - 1)) {
      if (rt->ops[i].key == key) return rt->last_op = &rt->ops[i];
      if (rt->ops[i].key == UINT64_MAX) break;
    }
  }
  if (rt->nops >= OPSTAT_MAX) return NULL;
  if ((rt->nops + 1) * 2 > rt->capops) {
    size_t cap = rt->capops ? rt->capops * 2 : 64;
    gw_opstat *ops = malloc(cap * sizeof *ops);
    if (!ops) return NULL;
    for (size_t i = 0; i < cap; i++) ops[i].key = UINT64_MAX;
    for (size_t j = 0; j < rt->capops; j++) {
      if (rt->ops[j].key == UINT64_MAX) continue;
      size_t i = ophash(rt->ops[j].key, cap);
      while (ops[i].key != UINT64_MAX) i = (i + 1) & (cap - 1);
      ops[i] = rt->ops[j];
    }
    free(rt->ops);
    rt->ops = ops;
    rt->capops = cap;
    rt->last_op = NULL;
  }
  size_t i = ophash(key, rt->capops);
  while (rt->ops[i].key != UINT64_MAX) i = (i + 1) & (rt->capops - 1);
  rt->ops[i] = (gw_opstat){.key = key};
  rt->nops++;
  return rt->last_op = &rt->ops[i];
}

/* gw__opstat with its usual answer inlined: runs of one opcode. */
static inline gw_opstat *opstat(gw_listener_rt *rt, gw_side side, bool has_opcode,
                                uint32_t opcode) {
  gw_opstat *o = rt->last_op;
  if (o && o->key == opkey(side, has_opcode, opcode)) return o;
  return gw__opstat(rt, side, has_opcode, opcode);
}


void gw_script_get_stats(const gw_script *s, gw_script_stats *st) {
  *st = s->stats;
  st->memory_bytes = s->mem;
}

/* ---- frames ---- */

gw_packet *gw__light_packet(lua_State *L, uintptr_t token) {
  gw_script *s = gw_script_of(L);
  return s->pkt_token && token == s->pkt_token ? &s->pkt : NULL;
}

gw_listener_rt *gw__rt_of(const gw_handlers *h) {
  return gw_container_of(h, gw_listener_rt, h);
}

/* "file.lua:12: " for handler i of the chain at index chain, for
 * messages about what it returned. Allocates nothing. */
static void handler_where(lua_State *L, int chain, lua_Integer i, char *out,
                          size_t outlen) {
  lua_Debug ar;
  lua_rawgeti(L, chain, i);
  if (lua_getinfo(L, ">S", &ar) && ar.linedefined > 0)
    snprintf(out, outlen, "%s:%d: ", ar.short_src, ar.linedefined);
  else
    out[0] = 0;
}

/* What the result on top of the stack asks for: 1 the chain ends here, 0
 * it goes on, -1 the result is wrong (why in msg). Outside protected mode:
 * allocates nothing from Lua, never raises. */
static int take_result(lua_State *L, gw_script *s, gw_frame_ctx *c, int chain,
                       char *msg, size_t msglen) {
  const uint8_t *data = NULL;
  size_t len = 0;
  const char *bad = NULL;
  char where[96];
  int t = lua_type(L, -1);
  if (t == LUA_TNIL) return 0;
  if (t == LUA_TSTRING) {
    data = (const uint8_t *)lua_tolstring(L, -1, &len);
  } else if (t == LUA_TLIGHTUSERDATA) {
    uintptr_t u = (uintptr_t)lua_touserdata(L, -1);
    if (u == s->pkt_token) return 0;
    bad = u & 1 ? "a packet whose handler had returned" : "a light userdata";
  } else if (t == LUA_TUSERDATA) {
    void *u = lua_touserdata(L, -1);
    if (u == s->verdicts[GW_VERDICT_PASS]) return 0;
    if (u == s->verdicts[GW_VERDICT_DROP] || u == s->verdicts[GW_VERDICT_CLOSE]) {
      c->verdict = u == s->verdicts[GW_VERDICT_DROP] ? GW_VERDICT_DROP
                                                      : GW_VERDICT_CLOSE;
      return 1;
    }
    if (lua_getmetatable(L, -1)) {
      if (lua_rawequal(L, -1, GW_SLOT_PACKET_MT)) {
        const gw_packet *p = u; /* a copy: always valid */
        data = p->data;
        len = p->len;
      }
      lua_pop(L, 1);
    }
  }
  if (!data && !bad) bad = lua_typename(L, t);
  char why[160];
  if (bad) {
    handler_where(L, chain, c->handler, where, sizeof where);
    snprintf(msg, msglen, "%shandler returned %s; expected nothing, gw.PASS, "
             "gw.DROP, gw.CLOSE, a frame (string) or a packet", where, bad);
    return -1;
  }
  if (gw_frame_check(c->pkt->f, c->from, data, len, why,
                     sizeof why) < 0) {
    handler_where(L, chain, c->handler, where, sizeof where);
    snprintf(msg, msglen, "%shandler returned a replacement that is not one "
             "frame: %s", where, why);
    return -1;
  }
  if (gw_packet_replace(L, c->pkt, data, len) < 0) {
    snprintf(msg, msglen, "not enough memory for a %zu-byte replacement", len);
    return -1;
  }
  return 0;
}

/* ---- calls that wait ----
 *
 * Every handler, gw.on_connect function, timer and gw.subscribe function
 * runs on a coroutine: the runner, one thread reused call after call, so a
 * call that never waits costs a lua_resume where it cost a lua_pcall. A
 * call that waits keeps the runner as its own thread (a new runner is made
 * for the next call) and becomes a gw_call: what it waits for, its share of
 * the instruction limit, its deadline (timeouts.wait_ms), and for a frame
 * the frame itself (copied out of the host's buffer), the handler it is at
 * in the chain and what it sent so far, held back so that the frame's
 * verdict still goes out first. */

typedef enum { CALL_FRAME, CALL_CONNECT, CALL_PLAIN } call_kind;

struct gw_call {
  call_kind kind;
  lua_State *co;            /* its thread (anchored at co_ref) */
  int co_ref;
  gw_script_session *ss;    /* its session, or NULL */
  gw_listener_rt *rt;       /* for messages and on_error; NULL: "scripts" */
  char what[96];            /* "client frame 3 of session 7", "timer"... */
  uint64_t instructions;    /* run so far, in all its slices */
  uint64_t deadline;        /* timeouts.wait_ms from its first wait */
  uint64_t wake;            /* a sleep's end; UINT64_MAX: none */
  size_t hidx;              /* in the wait heap; SIZE_MAX: not */
  gw_wait_cancel cancel;    /* what it waits for, while it waits */
  void *wait;
  bool waiting;
  /* CALL_FRAME and CALL_CONNECT: the chain and where it is in it */
  int chain_ref;
  lua_Integer handler;
  gw_verdict verdict;
  bool failed;
  gw_frame_ctx ctx;         /* CALL_FRAME: s->cur, s->pkt, s->pkt_token */
  gw_frame_info fi;
  gw_packet pkt;
  uintptr_t token;
  /* CALL_FRAME: sends and closes held back until the verdict is out */
  gw_outmsg *out;
  size_t nout, capout;
  uint8_t *arena;
  size_t arena_len, arena_cap;
  gw_closereq *closes;
  size_t ncloses, capcloses;
  gw_call *prev, *next;     /* s->waits->calls */
};

typedef struct gw_waits {
  lua_State *runner;        /* reused by calls that do not wait */
  int runner_ref;
  int runner_interval;      /* the count hook's interval set on it, 0: unknown
                               (a count hook left at 1 resets itself) */
  gw_call *calls;           /* every call that waits */
  gw_call **heap;           /* min-heap on min(wake, deadline) */
  size_t nheap, capheap;
  /* the slice running */
  lua_State *slice_co;
  gw_call *slice_call;      /* made by gw__call_current when it waits */
  call_kind slice_kind;
  bool slice_may_wait;
  gw_script_session *slice_ss;
  gw_listener_rt *slice_rt;
  struct gw_redis *redis;
  gw_wait_ops ops;          /* the host's, all NULL until set */
  uint32_t wait_ms;
} gw_waits;

enum { MAP = GW_SLOT_BASE + 1, CHAIN, SESSION };

static lua_State *running(const gw_script *s) {
  return s->waits && s->waits->slice_co ? s->waits->slice_co : s->L;
}

static uint64_t call_key(const gw_call *c) { return c->wake < c->deadline ? c->wake : c->deadline; }

static void heap_set(gw_waits *w, size_t i, gw_call *c) {
  w->heap[i] = c;
  c->hidx = i;
}

static void wheap_up(gw_waits *w, size_t i) {
  gw_call *c = w->heap[i];
  while (i > 0 && call_key(c) < call_key(w->heap[(i - 1) / 2])) {
    heap_set(w, i, w->heap[(i - 1) / 2]);
    i = (i - 1) / 2;
  }
  heap_set(w, i, c);
}

static void wheap_down(gw_waits *w, size_t i) {
  gw_call *c = w->heap[i];
  for (;;) {
    size_t k = 2 * i + 1;
    if (k >= w->nheap) break;
    if (k + 1 < w->nheap && call_key(w->heap[k + 1]) < call_key(w->heap[k])) k++;
    if (call_key(w->heap[k]) >= call_key(c)) break;
    heap_set(w, i, w->heap[k]);
    i = k;
  }
  heap_set(w, i, c);
}

static void wheap_remove(gw_waits *w, gw_call *c) {
  if (c->hidx == SIZE_MAX) return;
  size_t i = c->hidx;
  c->hidx = SIZE_MAX;
  gw_call *last = w->heap[--w->nheap];
  if (i == w->nheap) return;
  heap_set(w, i, last);
  wheap_up(w, i);
  wheap_down(w, last->hidx);
}

/* Puts c in the heap (it has a key); false when it cannot grow. */
static bool wheap_add(gw_waits *w, gw_call *c) {
  if (call_key(c) == UINT64_MAX) return true;
  if (w->nheap == w->capheap) {
    size_t cap = w->capheap ? w->capheap * 2 : 64;
    gw_call **h = realloc(w->heap, cap * sizeof *h);
    if (!h) return false;
    w->heap = h;
    w->capheap = cap;
  }
  w->heap[w->nheap++] = c;
  wheap_up(w, w->nheap - 1);
  return true;
}

uint64_t gw__calls_next(const gw_script *s) {
  const gw_waits *w = s->waits;
  return w->nheap ? call_key(w->heap[0]) : UINT64_MAX;
}

/* gw__timers_wake, skipped when there is no timer nor wait to wake for
 * (inline: every handled frame asks). */
static inline void timers_wake(gw_script *s) {
  if (s->nheap || s->waits->nheap) gw__timers_wake(s);
}

/* Protected: a new runner thread, anchored (results: the ref). */
static int new_runner(lua_State *L) {
  lua_State *co = lua_newthread(L);
  lua_pushlightuserdata(L, co);
  lua_insert(L, -2);
  lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
  return 2;
}

static lua_State *new_runner_slow(gw_script *s);

/* Inline: every handler call asks for it, and it is made once. */
static inline lua_State *runner(gw_script *s) {
  lua_State *co = s->waits->runner;
  return co ? co : new_runner_slow(s);
}

static lua_State *new_runner_slow(gw_script *s) {
  gw_waits *w = s->waits;
  lua_State *L = s->L;
  lua_pushcfunction(L, new_runner);
  if (lua_pcall(L, 0, 2, 0) != LUA_OK) return NULL; /* its error on L */
  w->runner = lua_touserdata(L, -2);
  w->runner_interval = 0;
  w->runner_ref = (int)lua_tointeger(L, -1);
  lua_pop(L, 2);
  return w->runner;
}

/* The thread of a slice that ended (not waiting) is free again. */
static void thread_done(gw_script *s, lua_State *co, int ref) {
  gw_waits *w = s->waits;
  lua_settop(co, 0);
  if (co == w->runner) return;
  if (!w->runner) {
    w->runner = co;
    w->runner_interval = 0;
    w->runner_ref = ref;
  } else {
    luaL_unref(s->L, LUA_REGISTRYINDEX, ref);
  }
}

/* Protected: the error object at 2 of the failed thread at 1 as text,
 * with the thread's traceback (msgh's work, for lua_resume). */
static int thread_error_text(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  const char *msg = lua_tostring(L, 2);
  if (!msg) {
    if (luaL_callmeta(L, 2, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
      msg = lua_tostring(L, -1);
    else
      msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 2));
  }
  luaL_traceback(L, co, msg, 0);
  return 1;
}

/* Pushes on L the error of the failed thread co with its traceback. co is
 * not reused: an error raised from the count hook leaves its hooks off
 * (lua_resume does not restore them). */
static void push_thread_error(lua_State *L, lua_State *co) {
  lua_pushcfunction(L, thread_error_text);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  lua_xmove(co, L, 1); /* the error object */
  /* On failure its error stands in: Lua's own "not enough memory",
   * preallocated (pushing a message now could raise outside protection). */
  lua_pcall(L, 2, 1, 0);
}

static void call_unlink(gw_script *s, gw_call *c);

/* Runs one slice of a call on co: nargs values on co's top are the
 * function's arguments (first slice, the function below them) or what the
 * wait returns. LUA_OK: the results (*nres) on co. LUA_YIELD: it waits,
 * *made is its call. Else the error on L's top (co reset). What a failed
 * slice queued is dropped, as gw__pcall does. */
/* Inlined: it is on every handler call's path. */
static inline __attribute__((always_inline)) int slice(gw_script *s, gw_call *call, lua_State *co,
                                                       int nargs, int *nres,
                                                       uint64_t *instructions, gw_call **made) {
  gw_waits *w = s->waits;
  s->instructions = *instructions;
  s->alloc_uncharged = 0;
  s->timed_out = s->out_of_memory = false;
  int interval = hook_interval(s);
  if (co != w->runner || w->runner_interval != interval) {
    if (lua_gethook(co) != count_hook || lua_gethookcount(co) != interval)
      lua_sethook(co, count_hook, LUA_MASKCOUNT, interval);
    if (co == w->runner) w->runner_interval = interval;
  }
  size_t nout = s->nout, arena_len = s->arena_len, ncloses = s->ncloses;
  w->slice_co = co;
  w->slice_call = call;
  s->depth++;
  int st = lua_resume(co, s->L, nargs, nres);
  s->depth--;
  *instructions = s->instructions;
  *made = w->slice_call;
  w->slice_co = NULL;
  w->slice_call = NULL;
  if (st == LUA_YIELD && !(*made && (*made)->waiting)) {
    /* coroutine.yield() straight from the call: nothing would resume it */
    lua_pushliteral(s->L, "attempt to yield from a handler (yield in a coroutine of your own, "
                          "or wait with gw.redis or session:sleep)");
    st = LUA_ERRRUN;
  } else if (st != LUA_OK && st != LUA_YIELD) {
    push_thread_error(s->L, co);
  }
  if (st != LUA_OK && st != LUA_YIELD) {
    outbox_rollback(s, nout, arena_len, ncloses);
    if (co == w->runner) { /* dropped: the next call gets a new one */
      luaL_unref(s->L, LUA_REGISTRYINDEX, w->runner_ref);
      w->runner = NULL;
      w->runner_ref = LUA_NOREF;
    }
  }
  if (*made && *made != call && !(*made)->waiting) {
    /* made by a waiting function that then raised before it waited */
    call_unlink(s, *made);
    free(*made);
    *made = NULL;
  }
  return st;
}

/* After a slice that did not wait: its first result on L (nil if none). */
static void take_first_result(lua_State *L, lua_State *co, int nres) {
  if (nres == 0) {
    lua_pushnil(L);
  } else {
    lua_pop(co, nres - 1);
    lua_xmove(co, L, 1);
  }
}

/* Runs the function below nargs arguments on L's top as the first slice
 * of a call (*callp: the call this frame or on_connect already made when
 * an earlier handler waited, or NULL). LUA_OK: one result pushed on L, or
 * with none set, nothing when the function returned nothing (*none then
 * true: a handler's usual end, which costs no nil to push and look at).
 * LUA_YIELD: it waits; *callp is its call, which owns the thread. Else:
 * the error on L. */
static inline __attribute__((always_inline)) int
call_run(gw_script *s, lua_State *co, int nargs, gw_call **callp, call_kind kind,
         gw_script_session *ss, gw_listener_rt *rt, bool may_wait, bool *none);

static inline __attribute__((always_inline)) int
call_start(gw_script *s, int nargs, gw_call **callp, call_kind kind, gw_script_session *ss,
           gw_listener_rt *rt, bool may_wait, bool *none) {
  lua_State *L = s->L;
  lua_State *co = runner(s);
  if (!co) { /* its error (a memory error) in place of the function */
    lua_insert(L, -(nargs + 2));
    lua_pop(L, nargs + 1);
    return LUA_ERRMEM;
  }
  lua_xmove(L, co, nargs + 1);
  return call_run(s, co, nargs, callp, kind, ss, rt, may_wait, none);
}

/* call_start with the function and its arguments on the runner co
 * already. */
static inline __attribute__((always_inline)) int
call_run(gw_script *s, lua_State *co, int nargs, gw_call **callp, call_kind kind,
         gw_script_session *ss, gw_listener_rt *rt, bool may_wait, bool *none) {
  gw_waits *w = s->waits;
  lua_State *L = s->L;
  w->slice_kind = kind;
  w->slice_may_wait = may_wait;
  w->slice_ss = ss;
  w->slice_rt = rt;
  int nres = 0;
  uint64_t instructions = 0; /* each handler has its own limit */
  gw_call *made = NULL;
  int st = slice(s, *callp, co, nargs, &nres, &instructions, &made);
  if (st == LUA_YIELD) {
    if (made->co != co) { /* it takes the runner */
      if (made->co) luaL_unref(L, LUA_REGISTRYINDEX, made->co_ref);
      made->co = co;
      made->co_ref = w->runner_ref;
      w->runner = NULL;
      w->runner_ref = LUA_NOREF;
    }
    made->instructions = instructions;
    *callp = made;
    return st;
  }
  if (st == LUA_OK) {
    if (none && !nres) *none = true; /* co's stack is empty already */
    else take_first_result(L, co, nres);
  }
  return st;
}

gw_call *gw__call_current(lua_State *L, const char *who) {
  gw_script *s = gw_script_of(L);
  gw_waits *w = s->waits;
  if (L != w->slice_co || !w->slice_may_wait)
    luaL_error(L, "%s: cannot wait here (handlers, gw.on_connect functions, timers and "
                  "gw.subscribe functions can; gw.on_close, loading and coroutines of the "
                  "script's own cannot)", who);
  /* Before anything is recorded: a yield that cannot happen would leave a
   * call behind that nothing resumes. */
  if (!lua_isyieldable(L))
    luaL_error(L, "%s: cannot wait here (inside a function called from C, such as a "
                  "table.sort comparator or a string.gsub function)", who);
  if (w->slice_call) return w->slice_call;
  gw_call *c = calloc(1, sizeof *c);
  if (!c) luaL_error(L, "%s: not enough memory", who);
  c->kind = w->slice_kind;
  c->ss = w->slice_ss;
  c->rt = w->slice_rt;
  c->co_ref = c->chain_ref = LUA_NOREF;
  c->deadline = c->wake = UINT64_MAX;
  c->hidx = SIZE_MAX;
  c->next = w->calls;
  if (w->calls) w->calls->prev = c;
  w->calls = c;
  w->slice_call = c;
  return c;
}

int gw__call_wait(lua_State *L, gw_call *c, gw_wait_cancel cancel, void *wait, int64_t sleep_ms) {
  gw_script *s = gw_script_of(L);
  uint64_t now = s->ops.now_ms ? s->ops.now_ms(s->host) : 0;
  c->cancel = cancel;
  c->wait = wait;
  c->waiting = true;
  if (c->deadline == UINT64_MAX && s->waits->wait_ms) c->deadline = now + s->waits->wait_ms;
  c->wake = sleep_ms >= 0 ? now + (uint64_t)sleep_ms : UINT64_MAX;
  if (!wheap_add(s->waits, c)) {
    if (cancel) cancel(s, wait);
    c->waiting = false;
    c->cancel = NULL;
    return luaL_error(L, "not enough memory");
  }
  return lua_yield(L, 0);
}

lua_State *gw__call_thread(gw_call *c) { return c->co; }

/* ---- what a call sent, held back while a frame waits ---- */

static bool hold_grow(gw_script *s, void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true; /* also nothing, with nothing allocated */
  void *q = grow(s, *p, cap, need, elem);
  if (!q) return false;
  *p = q;
  return true;
}

/* Moves the outbox's entries from nout, arena from arena_len, closes from
 * ncloses into c. False when out of memory (then nothing moved). */
static bool hold_sends(gw_script *s, gw_call *c, size_t nout, size_t arena_len, size_t ncloses) {
  size_t n = s->nout - nout, a = s->arena_len - arena_len, k = s->ncloses - ncloses;
  if (!hold_grow(s, (void **)&c->out, &c->capout, c->nout + n, sizeof *c->out) ||
      !hold_grow(s, (void **)&c->arena, &c->arena_cap, c->arena_len + a, 1) ||
      !hold_grow(s, (void **)&c->closes, &c->capcloses, c->ncloses + k, sizeof *c->closes))
    return false;
  for (size_t i = 0; i < n; i++) {
    gw_outmsg m = s->out[nout + i];
    m.off = m.off - arena_len + c->arena_len;
    c->out[c->nout++] = m;
  }
  if (a) memcpy(c->arena + c->arena_len, s->arena + arena_len, a);
  c->arena_len += a;
  if (k) memcpy(c->closes + c->ncloses, s->closes + ncloses, k * sizeof *c->closes);
  c->ncloses += k;
  s->nout = nout;
  s->arena_len = arena_len;
  s->ncloses = ncloses;
  return true;
}

/* Puts what c held back at the end of the outbox. False when out of
 * memory (then what it held is dropped). */
static bool unhold_sends(gw_script *s, gw_call *c) {
  bool ok = hold_grow(s, (void **)&s->out, &s->capout, s->nout + c->nout, sizeof *s->out) &&
            hold_grow(s, (void **)&s->arena, &s->arena_cap, s->arena_len + c->arena_len, 1) &&
            hold_grow(s, (void **)&s->closes, &s->capcloses, s->ncloses + c->ncloses,
                      sizeof *s->closes);
  if (ok) {
    for (size_t i = 0; i < c->nout; i++) {
      gw_outmsg m = c->out[i];
      m.off += s->arena_len;
      s->out[s->nout++] = m;
    }
    if (c->arena_len) memcpy(s->arena + s->arena_len, c->arena, c->arena_len);
    s->arena_len += c->arena_len;
    if (c->ncloses) memcpy(s->closes + s->ncloses, c->closes, c->ncloses * sizeof *c->closes);
    s->ncloses += c->ncloses;
  } else {
    for (size_t i = 0; i < c->nout; i++) {
      if (c->out[i].op) gw_codec_unref(c->out[i].codec);
      else s->stats.injected--;
    }
  }
  c->nout = c->arena_len = c->ncloses = 0;
  return ok;
}

/* Forgets ss in what c holds (ss is being released). */
static void hold_forget(gw_call *c, gw_script_session *ss) {
  for (size_t i = 0; i < c->nout; i++)
    if (c->out[i].ss == ss) c->out[i].ss = NULL;
  for (size_t i = 0; i < c->ncloses; i++)
    if (c->closes[i].ss == ss) c->closes[i].ss = NULL;
}

/* ---- the end of a call ---- */

static void call_unlink(gw_script *s, gw_call *c) {
  gw_waits *w = s->waits;
  wheap_remove(w, c);
  if (c->prev) c->prev->next = c->next;
  else if (w->calls == c) w->calls = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* Frees c (unlinked, its wait over or cancelled). */
static void call_free(gw_script *s, gw_call *c) {
  lua_State *L = s->L;
  if (c->co_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, c->co_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, c->chain_ref);
  for (size_t i = 0; i < c->nout; i++) {
    if (c->out[i].op) gw_codec_unref(c->out[i].codec);
    else s->stats.injected--;
  }
  if (c->kind == CALL_FRAME) gw_packet_invalidate(L, &c->pkt);
  l_alloc(s, c->out, c->capout * sizeof *c->out, 0);
  l_alloc(s, c->arena, c->arena_cap, 0);
  l_alloc(s, c->closes, c->capcloses * sizeof *c->closes, 0);
  free(c);
}

static void call_cancel_wait(gw_script *s, gw_call *c) {
  if (c->waiting && c->cancel) c->cancel(s, c->wait);
  c->cancel = NULL;
  c->wait = NULL;
  c->waiting = false;
  wheap_remove(s->waits, c);
}

/* Drops c without running anything: its session is gone, or the state. */
static void call_discard(gw_script *s, gw_call *c) {
  call_cancel_wait(s, c);
  call_unlink(s, c);
  call_free(s, c);
}

/* After output from outside the host's own calls: have it written. */
void gw__host_flush(gw_script *s) {
  gw__flush(s);
  gw__timers_wake(s);
  if (s->waits->ops.flush) s->waits->ops.flush(s->host);
}

/* ---- frames ---- */

static void frame_what(char *out, size_t outlen, const gw_frame_ctx *c) {
  if (c->fi->has_opcode)
    snprintf(out, outlen, "%s frame %" PRIu32 " of session %" PRIu64,
             gw_side_name(c->from), c->fi->opcode, c->ss->id);
  else
    snprintf(out, outlen, "%s frame of session %" PRIu64,
             gw_side_name(c->from), c->ss->id);
}

/* A handler's call ended with st (its result on L's top when LUA_OK).
 * Returns true when the chain stops there. */
static inline __attribute__((always_inline)) bool handler_ended(gw_script *s, int st,
                                                                bool *failed) {
  lua_State *L = s->L;
  gw_frame_ctx *c = &s->cur;
  char what[96], msg[320];
  if (st != LUA_OK) {
    *failed = true;
    frame_what(what, sizeof what, c);
    gw__report_error(s, st, c->rt->h.listener, what); /* resets the stack */
    return true;
  }
  int r = take_result(L, s, c, CHAIN, msg, sizeof msg);
  lua_settop(L, SESSION);
  if (r < 0) {
    *failed = true;
    frame_what(what, sizeof what, c);
    report(s, c->rt->h.listener, what, msg, false);
  }
  return r != 0;
}

/* Handler i of the chain at CHAIN yielded (call waits): the frame is
 * saved in call, out of the host's buffer, with what it sent so far held
 * back. Returns call, or NULL when out of memory (the frame failed). */
static gw_call *frame_wait(gw_script *s, gw_call *call, lua_Integer i, size_t nout,
                           size_t arena_len, size_t ncloses, bool *failed) {
  lua_State *L = s->L;
  gw_frame_ctx *c = &s->cur;
  gw_packet *p = &s->pkt;
  bool replaced = p->replaced, dirty = p->dirty;
  if (!p->buf && gw_packet_replace(L, p, p->data, p->len) < 0) {
    call_discard(s, call);
    lua_settop(L, SESSION);
    *failed = true;
    char what[96];
    frame_what(what, sizeof what, c);
    report(s, c->rt->h.listener, what, "not enough memory to keep a waiting frame", false);
    return NULL;
  }
  p->replaced = replaced;
  p->dirty = dirty;
  if (call->chain_ref == LUA_NOREF) {
    lua_pushvalue(L, CHAIN);
    call->chain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  hold_sends(s, call, nout, arena_len, ncloses);
  call->handler = i;
  call->verdict = c->verdict;
  call->failed = *failed;
  call->fi = *c->fi;
  call->ctx = *c;
  call->ctx.fi = &call->fi;
  call->pkt = *p;
  call->token = s->pkt_token;
  frame_what(call->what, sizeof call->what, c);
  memset(p, 0, sizeof *p); /* the call owns its bytes now */
  return call;
}

/* A chain the dispatcher has seen, by its key in the map (an opcode, -1
 * for "*", GW_KEEPALIVE_KEY): registry references to the chain and, when
 * it holds one function, to that function, so that a frame's handler is
 * pushed straight onto the runner (no map, chain or session on the main
 * thread's stack). A generation's chains never change once it runs. */
typedef struct gw_chain_slot {
  lua_Integer key;       /* CHAIN_FREE: none */
  int chain_ref;
  int fn_ref;            /* LUA_NOREF: several functions */
} gw_chain_slot;
#define CHAIN_SLOTS 64   /* per side, direct-mapped */
#define CHAIN_FREE LUA_MININTEGER

static inline size_t chain_hash(lua_Integer key) {
  return (size_t)(((uint64_t)key * UINT64_C(0x9E3779B97F4A7C15)) >> 58) & (CHAIN_SLOTS - 1);
}

/* Protected: references to the chain at 1 and, if it has one function,
 * to it, written to the int[2] at 2 as each is made (so that a memory
 * error after the first leaves it known, to unref). */
static int chain_refs(lua_State *L) {
  int *refs = lua_touserdata(L, 2);
  lua_settop(L, 1);
  lua_pushvalue(L, 1);
  refs[0] = luaL_ref(L, LUA_REGISTRYINDEX);
  if (lua_rawlen(L, 1) == 1) {
    lua_rawgeti(L, 1, 1);
    refs[1] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* Remembers the chain at CHAIN under key; on any failure the dispatch
 * just goes on uncached. */
static void chain_remember(gw_script *s, gw_gen_tables *g, gw_side from, lua_Integer key) {
  lua_State *L = s->L;
  if (!g->chains[from]) {
    gw_chain_slot *a = malloc(CHAIN_SLOTS * sizeof *a);
    if (!a) return;
    for (size_t i = 0; i < CHAIN_SLOTS; i++) a[i] = (gw_chain_slot){CHAIN_FREE, LUA_NOREF, LUA_NOREF};
    g->chains[from] = a;
  }
  gw_chain_slot *slot = &g->chains[from][chain_hash(key)];
  luaL_unref(L, LUA_REGISTRYINDEX, slot->chain_ref); /* a key hashed alike */
  luaL_unref(L, LUA_REGISTRYINDEX, slot->fn_ref);
  *slot = (gw_chain_slot){CHAIN_FREE, LUA_NOREF, LUA_NOREF};
  int refs[2] = {LUA_NOREF, LUA_NOREF};
  lua_pushcfunction(L, chain_refs);
  lua_pushvalue(L, CHAIN);
  lua_pushlightuserdata(L, refs);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, refs[0]);
    return;
  }
  *slot = (gw_chain_slot){key, refs[0], refs[1]};
}

static void chains_clear(gw_script *s, gw_gen_tables *g) {
  for (int i = 0; i < GW_SIDES; i++) {
    if (!g->chains[i]) continue;
    for (size_t j = 0; j < CHAIN_SLOTS; j++) {
      luaL_unref(s->L, LUA_REGISTRYINDEX, g->chains[i][j].chain_ref);
      luaL_unref(s->L, LUA_REGISTRYINDEX, g->chains[i][j].fn_ref);
    }
    free(g->chains[i]);
    g->chains[i] = NULL;
  }
}

/* Runs the handlers of the chain at CHAIN from `first` on. Returns the
 * call when one waits (the frame is then saved in it), else NULL.
 * one: the chain is that slot's one function, and nothing of it is on
 * the main thread's stack (L at GW_SLOT_BASE): it is pushed straight onto
 * the runner; MAP, CHAIN and SESSION are pushed only if it returns
 * something, fails or waits. */
static inline __attribute__((always_inline)) gw_call *frame_chain(gw_script *s, gw_call *call,
                                                                   lua_Integer first,
                                                                   bool *failed,
                                                                   const gw_chain_slot *one) {
  lua_State *L = s->L;
  gw_frame_ctx *c = &s->cur;
  bool may_wait = s->waits->ops.frame_done != NULL;
  if (one) {
    c->handler = 1;
    size_t nout = s->nout, arena_len = s->arena_len, ncloses = s->ncloses;
    lua_State *co = runner(s);
    bool none = false;
    int st = LUA_ERRMEM; /* no runner: its error on L */
    if (co) {
      lua_rawgeti(co, LUA_REGISTRYINDEX, one->fn_ref);
      lua_pushlightuserdata(co, (void *)s->pkt_token);
      lua_rawgeti(co, LUA_REGISTRYINDEX, c->ss->ref);
      st = call_run(s, co, 2, &call, CALL_FRAME, c->ss, c->rt, may_wait, &none);
    }
    if (none) return NULL;
    if (st == LUA_OK || st == LUA_YIELD) { /* the chain's stack, as below */
      lua_pushnil(L);
      lua_rawgeti(L, LUA_REGISTRYINDEX, one->chain_ref);
      lua_rawgeti(L, LUA_REGISTRYINDEX, c->ss->ref);
      if (st == LUA_YIELD) return frame_wait(s, call, 1, nout, arena_len, ncloses, failed);
      lua_rotate(L, MAP, 3); /* the result on top */
    }
    handler_ended(s, st, failed);
    return NULL;
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, CHAIN);
  for (lua_Integer i = first; i <= n && !c->ss->closed; i++) {
    c->handler = i;
    size_t nout = s->nout, arena_len = s->arena_len, ncloses = s->ncloses;
    lua_rawgeti(L, CHAIN, i);
    lua_pushlightuserdata(L, (void *)s->pkt_token);
    lua_pushvalue(L, SESSION);
    bool none = false;
    int st = call_start(s, 2, &call, CALL_FRAME, c->ss, c->rt, may_wait, &none);
    if (none) continue; /* returned nothing: the chain goes on, L at SESSION */
    if (st == LUA_YIELD) return frame_wait(s, call, i, nout, arena_len, ncloses, failed);
    if (handler_ended(s, st, failed)) break;
  }
  return NULL;
}

/* The verdict of the frame in s->cur, out; then what its handlers sent.
 * os: its opcode's counters as looked up at its start (NULL: look again,
 * after a wait). Returns 0, or -ECONNRESET when the session is closed. */
static inline __attribute__((always_inline)) int frame_finish(gw_script *s, bool failed,
                                                              gw_opstat *os) {
  lua_State *L = s->L;
  gw_frame_ctx *c = &s->cur;
  gw_listener_rt *rt = c->rt;
  gw_script_session *ss = c->ss;
  gw_side from = c->from;
  const gw_frame_info *fi = c->fi;
  if (!os) os = opstat(rt, from, fi->has_opcode, fi->opcode);
  if (lua_gettop(L) != GW_SLOT_BASE) lua_settop(L, GW_SLOT_BASE);
  gw_packet *p = c->pkt;
  gw_verdict v = c->verdict;
  bool broken = false;
  char what[96], msg[320];
  /* In-place edits may have broken the framing (a length field written
   * over): such a frame never goes out. */
  char why[160];
  if (p && p->dirty &&
      gw_frame_check(p->f, from, p->data, p->len, why, sizeof why)) {
    broken = true;
    if (!failed) {
      frame_what(what, sizeof what, c);
      snprintf(msg, sizeof msg, "handler edits broke the frame: %s", why);
      report(s, rt->h.listener, what, msg, false);
    }
  }
  if (failed || broken) {
    if (os) os->errors++;
    switch (rt->h.on_error) {
    case GW_ON_ERROR_PASS: v = broken ? GW_VERDICT_DROP : GW_VERDICT_PASS; break;
    case GW_ON_ERROR_DROP: v = GW_VERDICT_DROP; break;
    case GW_ON_ERROR_CLOSE: v = GW_VERDICT_CLOSE; break;
    }
  }
  const uint8_t *out = p ? p->data : c->data;
  size_t outlen = p ? p->len : fi->len;
  gw_side to = from == GW_CLIENT ? GW_SERVER : GW_CLIENT;
  switch (v) {
  case GW_VERDICT_PASS:
    if (p && p->replaced) {
      s->stats.replaced++;
      if (os) os->replaced++;
    }
    switch (s->ops.emit(ss, to, out, outlen)) {
    case 0:
      break;
    case -ENOBUFS: /* a frame that must pass and cannot: the session goes */
      snprintf(msg, sizeof msg, "output limit exceeded toward the %s side",
               gw_side_name(to));
      gw__request_close(s, ss, msg);
      break;
    default:
      ss->closed = true;
      break;
    }
    break;
  case GW_VERDICT_DROP:
  case GW_VERDICT_CLOSE:
    s->stats.dropped++;
    if (os) os->dropped++;
    if (v == GW_VERDICT_CLOSE)
      gw__request_close(s, ss, failed || broken ? "handler error"
                                                : "closed by a handler");
    break;
  case GW_VERDICTS:
    break;
  }
  /* Storage to free only when the frame was copied or rebuilt. */
  if (p && p->buf) gw_packet_invalidate(L, p);
  else if (p) p->valid = false, p->data = NULL, p->len = p->cap = 0;
  s->pkt_token = 0;
  c->pkt = NULL;
  /* emit may have closed the session, running Lua: the stack as it was */
  if (lua_gettop(L) != GW_SLOT_BASE) lua_settop(L, GW_SLOT_BASE);
  bool closed = ss->closed;
  if (s->nout || s->ncloses) gw__flush(s);
  timers_wake(s);
  return closed ? -ECONNRESET : 0;
}

/* Protected: makes the session's userdata (arg 1), its first time in Lua. */
static int make_session(lua_State *L) {
  gw__push_session(L, lua_touserdata(L, 1));
  return 0;
}

/* Runs the handlers of a frame. Each handler is its own call on the
 * runner, made from here with nothing allocated around it: the packet is
 * a token for s->pkt, the session's userdata exists from its first frame
 * on. */
static int frame_handlers(gw_script *s, gw_script_session *ss, gw_side from, uint8_t *data,
                          const gw_frame_info *fi);

/* The handler time (gangway_handler_seconds). A clock read (gw_ticks:
 * the TSC, 10 ns here) is a sixth of a trivial handler's call, so frames
 * handled back to back (a run: one read's frames, only their framing
 * between them, gw_script_frame_follows) are timed as a whole, two reads
 * per run, and gw_script_run_end enters them: when the run took at most
 * the first bucket's bound, every frame of it did, and the histogram is
 * what timing each would have made it. A run that took longer is entered
 * as one observation of its time and the rest of none
 * (gw_histogram_observe_run: the slow frame keeps its bucket), and runs
 * are timed frame by frame, exactly, one read per frame (the end of one
 * the start of the next), until PRECISE_RUNS of them in a row had no
 * frame past the bound. */
#define PRECISE_RUNS 64

/* Whole microseconds between two reads: the difference of whole-us
 * timestamps, not a span cut to them, so that sub-microsecond frames add
 * up to their true time in the sum. */
static inline uint64_t span_us(uint64_t t0, uint64_t t1) {
  return gw_ticks_ns(t1) / 1000u - gw_ticks_ns(t0) / 1000u;
}

static void run_close(gw_script *s) {
  uint64_t n = s->run_frames;
  s->run_frames = 0;
  if (s->precise_runs) { /* its frames went in one by one */
    s->precise_runs--;
    return;
  }
  if (!gw_histogram_observe_run(s->handler_time, n, span_us(s->run_start, gw_ticks())))
    s->precise_runs = PRECISE_RUNS;
}

int gw_script_frame(gw_script *s, gw_script_session *ss, gw_side from,
                    uint8_t *data, const gw_frame_info *fi) {
  bool follows = s->follows;
  s->follows = false;
  /* untimed: none asked, or a host callback came back in (refused) */
  if (!s->handler_time || s->depth) return frame_handlers(s, ss, from, data, fi);
  if (!follows && s->run_frames) run_close(s); /* nobody ended it */
  if (!s->precise_runs) {
    if (!s->run_frames) s->run_start = gw_ticks();
    s->run_frames++;
    return frame_handlers(s, ss, from, data, fi);
  }
  uint64_t t0 = follows && s->frame_end ? s->frame_end : gw_ticks();
  s->run_frames++;
  int rc = frame_handlers(s, ss, from, data, fi);
  uint64_t t1 = gw_ticks();
  uint64_t us = span_us(t0, t1);
  gw_histogram_observe(s->handler_time, us);
  if (s->handler_time->nbounds && us > s->handler_time->bounds[0])
    s->precise_runs = PRECISE_RUNS + 1; /* slow still: this run ends at 64 to go */
  s->frame_end = t1;
  return rc;
}

void gw_script_frame_follows(gw_script *s) { s->follows = s->run_frames != 0; }

void gw_script_run_end(gw_script *s) {
  if (s->run_frames && s->handler_time) run_close(s);
  s->follows = false;
}

void gw_script_set_handler_histogram(gw_script *s, struct gw_histogram *h) {
  gw_script_run_end(s); /* an open run goes into the one it began in */
  s->handler_time = h;
  s->frame_end = 0; /* a new batch: its first frame reads the clock */
}

void gw_script_foreach_opstat(gw_script *s, gw_opstat_fn fn, void *ud) {
  for (size_t i = 0; i < s->nlisteners; i++) {
    gw_listener_rt *rt = s->listeners[i];
    for (size_t j = 0; j < rt->capops; j++) {
      const gw_opstat *o = &rt->ops[j];
      if (o->key == UINT64_MAX) continue;
      gw_opstat_counts c = {.frames = o->frames, .passed = o->frames - o->dropped - o->replaced,
                            .dropped = o->dropped, .replaced = o->replaced,
                            .errors = o->errors, .injected = o->injected};
      gw_side side = (gw_side)(o->key >> 33 & 1);
      bool has = !(o->key >> 32 & 1);
      fn(ud, rt->h.listener, side, has, (uint32_t)o->key, &c);
    }
  }
}

/* A frame sent from Lua went out: counted under its opcode, as a frame of
 * the side it comes from (toward the client: the server side's). */
static void count_injected(gw_script *s, gw_script_session *ss, gw_side to,
                           const uint8_t *data, size_t len) {
  if (!ss->handlers) return;
  gw_side from = to == GW_CLIENT ? GW_SERVER : GW_CLIENT;
  const gw_framing *f = ss->framing[from] ? ss->framing[from] : &ss->handlers->framing;
  gw_frame_info fi;
  if (gw_frame_next(f, from, data, len, &fi) != 1) return;
  gw_opstat *os = gw__opstat(gw__rt_of(ss->handlers), from, fi.has_opcode, fi.opcode);
  if (os) os->injected++;
  (void)s;
}

static int frame_handlers(gw_script *s, gw_script_session *ss, gw_side from, uint8_t *data,
                          const gw_frame_info *fi) {
  if (!ss->handlers || ss->closed) return -ECONNRESET;
  if (s->depth) return -EDEADLK; /* a host callback came back in */
  lua_State *L = s->L;
  gw_listener_rt *rt = gw__rt_of(ss->handlers);
  gw_frame_ctx *c = &s->cur;
  c->rt = rt;
  c->ss = ss;
  c->from = from;
  c->data = data;
  c->fi = fi;
  c->pkt = NULL;
  c->verdict = GW_VERDICT_PASS;
  s->stats.frames++;
  gw_opstat *os = opstat(rt, from, fi->has_opcode, fi->opcode);
  if (os) os->frames++;

  bool failed = false;
  char what[96];
  int st = LUA_OK;
  /* The bitmap says whether the opcode has a chain of its own; if not,
   * the "*" chain (if any) is the one. */
  gw_gen_tables *g = &rt->cur;
  bool own = false;
  if (fi->has_opcode && fi->opcode < 65536)
    own = g->bits[from] && (g->bits[from][fi->opcode >> 3] >> (fi->opcode & 7) & 1);
  else if (fi->has_opcode)
    own = g->wide[from];
  else
    own = g->keepalive[from]; /* gw.on(side, "KEEPALIVE") by name */
  lua_Integer key = !own ? -1 : fi->has_opcode ? (lua_Integer)fi->opcode : GW_KEEPALIVE_KEY;
  int t = LUA_TNIL;
  /* A chain seen before, for a session in Lua already: no look-up in Lua.
   * Its one function goes straight to the runner; a longer chain is
   * pushed whole. Else the look-up as it always was, remembered. */
  const gw_chain_slot *slot = g->chains[from] ? &g->chains[from][chain_hash(key)] : NULL;
  if (slot && slot->key == key && ss->ref != LUA_NOREF &&
      (slot->fn_ref == LUA_NOREF || ss->framing[from])) {
    t = LUA_TTABLE;
    if (slot->fn_ref == LUA_NOREF) {
      lua_pushnil(L); /* MAP */
      lua_rawgeti(L, LUA_REGISTRYINDEX, slot->chain_ref);
      slot = NULL;
    }
  } else {
    slot = NULL;
    lua_pushnil(L); /* MAP: only looked at for an opcode's own chain */
    if (own) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, g->map_ref[from]);
      lua_replace(L, MAP);
      if ((t = lua_rawgeti(L, MAP, key)) == LUA_TNIL) lua_pop(L, 1);
    }
    if (t == LUA_TNIL && g->star_ref[from] != LUA_NOREF) {
      t = lua_rawgeti(L, LUA_REGISTRYINDEX, g->star_ref[from]);
      key = -1;
    }
    if (t != LUA_TTABLE) lua_settop(L, MAP);
    else chain_remember(s, g, from, key);
    if (t == LUA_TTABLE && ss->ref == LUA_NOREF) {
      lua_pushcfunction(L, make_session);
      lua_pushlightuserdata(L, ss);
      if ((st = gw__pcall(s, 1, 0)) != LUA_OK) {
        failed = true;
        frame_what(what, sizeof what, c);
        gw__report_error(s, st, rt->h.listener, what); /* resets the stack */
        t = LUA_TNIL;
      }
    }
  }
  if (t == LUA_TTABLE) {
    if (!slot) lua_rawgeti(L, LUA_REGISTRYINDEX, ss->ref); /* SESSION */
    gw_packet *p = c->pkt = &s->pkt;
    p->data = data;
    p->len = fi->len;
    p->buf = NULL;
    p->cap = 0;
    /* the session's now: a reload does not change it, its phases may
     * (gw__session_framing; the host's pipeline's without a look at the
     * userdata, which the slot's way has not pushed) */
    p->f = ss->framing[from] ? ss->framing[from]
                             : gw__session_framing(lua_touserdata(L, SESSION), from);
    p->side = from;
    p->valid = true;
    p->dirty = p->replaced = false;
    s->pkt_token = (uintptr_t)(++s->pkt_serial << 1 | 1);
    gw_call *call = frame_chain(s, NULL, 1, &failed, slot);
    if (call) {
      s->pkt_token = 0;
      c->pkt = NULL;
      lua_settop(L, GW_SLOT_BASE);
      gw__flush(s); /* other sessions' closes, if any */
      gw__timers_wake(s);
      return GW_SCRIPT_PENDING;
    }
  }
  return frame_finish(s, failed, os);
}

/* Puts the frame c waits with back in s->cur and s->pkt, and the chain's
 * stack (MAP, CHAIN, SESSION) on L. */
static void frame_enter(gw_script *s, gw_call *c) {
  lua_State *L = s->L;
  s->cur = c->ctx;
  s->cur.fi = &c->fi;
  s->pkt = c->pkt;
  memset(&c->pkt, 0, sizeof c->pkt); /* s->pkt owns the bytes again */
  s->cur.pkt = &s->pkt;
  s->cur.data = s->pkt.data;
  s->pkt_token = c->token;
  lua_settop(L, GW_SLOT_BASE);
  lua_pushnil(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->chain_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ss->ref);
}

/* ---- on_connect ---- */

/* Runs the on_connect functions at CHAIN from `first` on for s->cur.ss.
 * Returns the call when one waits, else NULL (s->cur.verdict CLOSE when
 * one refused). */
static gw_call *connect_chain(gw_script *s, gw_call *call, lua_Integer first, bool *failed) {
  lua_State *L = s->L;
  gw_frame_ctx *c = &s->cur;
  lua_Integer n = (lua_Integer)lua_rawlen(L, CHAIN);
  for (lua_Integer i = first; i <= n && !c->ss->closed; i++) {
    lua_rawgeti(L, CHAIN, i);
    lua_pushvalue(L, SESSION);
    int st = call_start(s, 1, &call, CALL_CONNECT, c->ss, c->rt, true, NULL);
    if (st == LUA_YIELD) {
      if (call->chain_ref == LUA_NOREF) {
        lua_pushvalue(L, CHAIN);
        call->chain_ref = luaL_ref(L, LUA_REGISTRYINDEX);
      }
      call->handler = i;
      call->failed = *failed;
      call->verdict = c->verdict;
      snprintf(call->what, sizeof call->what, "on_connect of session %" PRIu64, c->ss->id);
      lua_settop(L, GW_SLOT_BASE);
      gw__flush(s); /* what it sent so far goes out: the client is there */
      gw__timers_wake(s);
      return call;
    }
    if (st != LUA_OK) {
      char what[64];
      *failed = true;
      snprintf(what, sizeof what, "on_connect of session %" PRIu64, c->ss->id);
      gw__report_error(s, st, c->rt->h.listener, what);
      return NULL;
    }
    bool refused = lua_touserdata(L, -1) == s->verdicts[GW_VERDICT_CLOSE];
    lua_settop(L, SESSION);
    if (refused) {
      c->verdict = GW_VERDICT_CLOSE;
      break;
    }
  }
  return NULL;
}

/* on_connect is over: 0, or -ECONNREFUSED (then ss is released). */
static int connect_finish(gw_script *s, gw_script_session *ss, gw_listener_rt *rt,
                          gw_verdict v, bool failed) {
  lua_settop(s->L, GW_SLOT_BASE);
  bool refused = v == GW_VERDICT_CLOSE || ss->closed ||
                 (failed && rt->h.on_error == GW_ON_ERROR_CLOSE);
  if (!refused) {
    gw__flush(s);
    gw__timers_wake(s);
    return 0;
  }
  /* What on_connect sent goes out; no close request: the host closes a
   * refused session itself. */
  for (size_t i = 0; i < s->ncloses; i++)
    if (s->closes[i].ss == ss) s->closes[i].ss = NULL;
  ss->closed = true;
  gw__flush(s);
  /* Released as gw_script_session_open releases a refused session: its
   * on_close functions do not run (depth set skips them). */
  s->depth++;
  gw_script_session_close(s, ss, "refused by on_connect");
  s->depth--;
  return -ECONNREFUSED;
}

int gw_script_session_start(gw_script *s, gw_handlers *h, gw_script_session *ss) {
  gw_listener_rt *rt = gw__rt_of(h);
  if (rt->cur.connect_ref == LUA_NOREF || s->depth || !s->waits->ops.open_done)
    return gw_script_session_open(s, h, ss);
  /* Linked in without its on_connect functions (depth set skips them):
   * they run here, in calls that may wait. */
  s->depth++;
  int rc = gw_script_session_open(s, h, ss);
  s->depth--;
  if (rc < 0) return rc;
  lua_State *L = s->L;
  gw_frame_ctx *c = &s->cur;
  c->rt = rt;
  c->ss = ss;
  c->verdict = GW_VERDICT_PASS;
  bool failed = false;
  lua_pushcfunction(L, make_session);
  lua_pushlightuserdata(L, ss);
  int st = gw__pcall(s, 1, 0);
  if (st != LUA_OK) {
    char what[64];
    snprintf(what, sizeof what, "on_connect of session %" PRIu64, ss->id);
    gw__report_error(s, st, h->listener, what);
    return connect_finish(s, ss, rt, GW_VERDICT_PASS, true);
  }
  lua_pushnil(L); /* MAP */
  lua_rawgeti(L, LUA_REGISTRYINDEX, rt->cur.connect_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ss->ref);
  if (connect_chain(s, NULL, 1, &failed)) return GW_SCRIPT_PENDING;
  return connect_finish(s, ss, rt, c->verdict, failed);
}

/* ---- timers and messages ---- */

static void plain_failed(gw_script *s, int st, gw_listener_rt *rt, gw_script_session *ss,
                         const char *what) {
  gw__report_error(s, st, rt ? rt->h.listener : "scripts", what);
  /* A session whose script fails is closed if its listener says so. */
  if (ss && ss->handlers && ss->handlers->on_error == GW_ON_ERROR_CLOSE)
    gw__request_close(s, ss, "handler error");
}

void gw__call_plain(gw_script *s, int nargs, gw_listener_rt *rt, gw_script_session *ss,
                    const char *what) {
  gw_call *call = NULL;
  int st = call_start(s, nargs, &call, CALL_PLAIN, ss, rt, true, NULL);
  if (st == LUA_YIELD) {
    snprintf(call->what, sizeof call->what, "%s", what);
    return;
  }
  if (st != LUA_OK) plain_failed(s, st, rt, ss, what);
  lua_settop(s->L, GW_SLOT_BASE);
}

/* ---- resuming ---- */

/* c is over: out of the list (a flush below may release its session). */
static void call_end_frame(gw_script *s, gw_call *c, bool failed, bool notify) {
  call_unlink(s, c);
  gw_script_session *ss = c->ss;
  gw_side from = c->ctx.from;
  int rc = frame_finish(s, failed, NULL);
  call_free(s, c);
  if (notify && rc == 0 && ss->handlers && s->waits->ops.frame_done) s->waits->ops.frame_done(ss, from);
}

static void call_end_connect(gw_script *s, gw_call *c, bool failed, bool notify) {
  call_unlink(s, c);
  gw_script_session *ss = c->ss;
  gw_listener_rt *rt = c->rt;
  gw_verdict v = s->cur.verdict;
  call_free(s, c);
  int rc = connect_finish(s, ss, rt, v, failed);
  if (notify && s->waits->ops.open_done) s->waits->ops.open_done(ss, rc);
}

void gw__call_resume(gw_script *s, gw_call *c, int nvalues) {
  lua_State *L = s->L;
  if (s->depth) { /* never from inside a call: the wait ends as a failure */
    lua_pop(c->co, nvalues);
    /* the waiter that called us frees its wait: a later discard of this
     * call must not cancel it again; the call ends at its deadline */
    c->cancel = NULL;
    c->wait = NULL;
    return;
  }
  c->waiting = false;
  c->cancel = NULL;
  c->wait = NULL;
  c->wake = UINT64_MAX;
  wheap_remove(s->waits, c);
  size_t n0 = s->nout, a0 = s->arena_len, k0 = s->ncloses;
  if (c->kind == CALL_FRAME) {
    frame_enter(s, c);
    if (!unhold_sends(s, c)) c->failed = true;
  } else if (c->kind == CALL_CONNECT) {
    lua_settop(L, GW_SLOT_BASE);
    lua_pushnil(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->chain_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ss->ref);
    s->cur.rt = c->rt;
    s->cur.ss = c->ss;
    s->cur.verdict = c->verdict;
  }
  gw_waits *w = s->waits;
  w->slice_kind = c->kind;
  w->slice_may_wait = true;
  w->slice_ss = c->ss;
  w->slice_rt = c->rt;
  int nres = 0;
  gw_call *made = NULL;
  lua_State *co = c->co;
  int st = slice(s, c, co, nvalues, &nres, &c->instructions, &made);
  if (st == LUA_YIELD) {
    if (c->kind == CALL_FRAME) {
      hold_sends(s, c, n0, a0, k0); /* what it had, and more */
      c->pkt = s->pkt;
      memset(&s->pkt, 0, sizeof s->pkt);
      s->pkt_token = 0;
      s->cur.pkt = NULL;
    }
    lua_settop(L, GW_SLOT_BASE);
    gw__host_flush(s);
    return;
  }
  if (st != LUA_OK && c->kind == CALL_FRAME) /* a call that fails sends nothing */
    outbox_rollback(s, n0, a0, k0);
  /* The function that waited has returned: its thread is free. */
  if (st == LUA_OK) {
    take_first_result(L, co, nres);
    thread_done(s, co, c->co_ref);
  } else {
    luaL_unref(L, LUA_REGISTRYINDEX, c->co_ref);
  }
  c->co = NULL;
  c->co_ref = LUA_NOREF;
  bool failed = c->failed;
  switch (c->kind) {
  case CALL_FRAME:
    if (!handler_ended(s, st, &failed)) {
      gw_call *again = frame_chain(s, c, c->handler + 1, &failed, NULL);
      if (again) { /* a later handler of the chain waits now */
        lua_settop(L, GW_SLOT_BASE);
        gw__host_flush(s);
        return;
      }
    }
    call_end_frame(s, c, failed, true);
    break;
  case CALL_CONNECT:
    if (st != LUA_OK) {
      char what[64];
      failed = true;
      snprintf(what, sizeof what, "on_connect of session %" PRIu64, c->ss->id);
      gw__report_error(s, st, c->rt->h.listener, what);
    } else {
      bool refused = lua_touserdata(L, -1) == s->verdicts[GW_VERDICT_CLOSE];
      lua_settop(L, SESSION);
      if (refused) s->cur.verdict = GW_VERDICT_CLOSE;
      else if (connect_chain(s, c, c->handler + 1, &failed)) {
        if (s->waits->ops.flush) s->waits->ops.flush(s->host);
        return;
      }
    }
    call_end_connect(s, c, failed, true);
    break;
  case CALL_PLAIN:
    call_unlink(s, c);
    if (st != LUA_OK) plain_failed(s, st, c->rt, c->ss, c->what);
    call_free(s, c);
    break;
  }
  lua_settop(L, GW_SLOT_BASE);
  gw__host_flush(s);
}

/* ---- wait bounds, sleeps, discards ---- */

/* Gives up on c: what it waits for is cancelled, its thread dropped, and
 * its listener's on_error applies as to a handler that failed. notify: tell
 * the host (frame_done / open_done) and write what came of it. */
static void call_abandon(gw_script *s, gw_call *c, const char *why, bool notify) {
  call_cancel_wait(s, c);
  report(s, c->rt ? c->rt->h.listener : "scripts", c->what, why, false);
  switch (c->kind) {
  case CALL_FRAME:
    frame_enter(s, c);
    call_end_frame(s, c, true, notify); /* what it held back is dropped */
    break;
  case CALL_CONNECT:
    s->cur.verdict = c->verdict;
    call_end_connect(s, c, true, notify);
    break;
  case CALL_PLAIN:
    call_unlink(s, c);
    if (c->ss && c->ss->handlers && c->ss->handlers->on_error == GW_ON_ERROR_CLOSE)
      gw__request_close(s, c->ss, "handler error");
    call_free(s, c);
    break;
  }
  lua_settop(s->L, GW_SLOT_BASE);
  if (notify) gw__host_flush(s);
}

void gw__calls_run_due(gw_script *s, uint64_t now) {
  gw_waits *w = s->waits;
  if (s->depth) return;
  while (w->nheap && call_key(w->heap[0]) <= now) {
    gw_call *c = w->heap[0];
    if (c->deadline <= now) {
      char why[96];
      snprintf(why, sizeof why, "waited longer than timeouts.wait_ms (%" PRIu32 " ms)",
               s->waits->wait_ms);
      call_abandon(s, c, why, true);
    } else { /* a sleep is over */
      wheap_remove(w, c);
      gw__call_resume(s, c, 0);
    }
  }
}

int gw_script_frame_abandon(gw_script *s, gw_script_session *ss, gw_side from, const char *why) {
  if (s->depth) return 0;
  for (gw_call *c = s->waits->calls; c; c = c->next) {
    if (c->kind != CALL_FRAME || c->ss != ss || c->ctx.from != from) continue;
    call_abandon(s, c, why, false);
    return ss->closed || !ss->handlers ? -ECONNRESET : 0;
  }
  return 0;
}

/* ss is being released: its calls go, and what others hold for it. */
static void calls_forget(gw_script *s, gw_script_session *ss) {
  for (gw_call *c = s->waits->calls, *next; c; c = next) {
    next = c->next;
    if (c->ss == ss) call_discard(s, c);
    else hold_forget(c, ss);
  }
}

struct gw_redis *gw__redis_of(gw_script *s) { return s->waits->redis; }

void gw_script_set_waits(gw_script *s, const gw_wait_ops *ops, uint32_t wait_ms) {
  s->waits->ops = *ops;
  s->waits->wait_ms = wait_ms;
}
void gw__redis_set(gw_script *s, struct gw_redis *r) { s->waits->redis = r; }

/* ---- the state ---- */

static int verdict_tostring(lua_State *L) {
  gw_script *s = gw_script_of(L);
  void *u = lua_touserdata(L, 1);
  lua_pushstring(L, u == s->verdicts[GW_VERDICT_DROP]    ? "gw.DROP"
                    : u == s->verdicts[GW_VERDICT_CLOSE] ? "gw.CLOSE"
                                                         : "gw.PASS");
  return 1;
}

static int init_state(lua_State *L) {
  gw_script *s = gw_script_of(L);
  luaL_openlibs(L);
  static const gw_meter meter = {gw__charge};
  gw_meter_open(L, &meter);
  gw_packet_open(L, true);
  gw__session_open_lib(L);
  gw__timer_open_lib(L);
  gw__wait_open_lib(L);
  luaL_newmetatable(L, GW_VERDICT_MT);
  lua_pushcfunction(L, verdict_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  /* gw.PASS, gw.DROP, gw.CLOSE: unique values no string or number can be
   * mistaken for; anchored in the registry for the state's life. */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, "gangway.verdicts");
  for (int i = 0; i < GW_VERDICTS; i++) {
    s->verdicts[i] = lua_newuserdatauv(L, 1, 0);
    luaL_setmetatable(L, GW_VERDICT_MT);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pop(L, 1);
  return gw__load_init(L);
}

gw_script *gw_script_new(const gw_script_limits *limits,
                         const gw_host_ops *ops, void *host) {
  gw_script *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->limits = *limits;
  s->ops = *ops;
  s->host = host;
  s->wake = UINT64_MAX;
  s->shared_ref = s->base_ref = s->modules_ref = LUA_NOREF;
  s->next_modules_ref = s->reload_ref = s->cjson_ref = LUA_NOREF;
  gw_clock_init(); /* its calibration, before any frame is timed */
  s->waits = calloc(1, sizeof *s->waits);
  lua_State *L = s->waits ? lua_newstate(l_alloc, s) : NULL;
  if (!L) {
    free(s->waits);
    free(s);
    return NULL;
  }
  s->waits->runner_ref = LUA_NOREF;
  s->L = L;
  *(gw_script **)lua_getextraspace(L) = s; /* new threads copy it */
  lua_pushcfunction(L, init_state);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    gw_error("scripts: cannot set up the Lua state: %s",
             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    lua_close(L);
    free(s->waits);
    free(s);
    return NULL;
  }
  lua_settop(L, 0);
  lua_pushcfunction(L, msgh);        /* GW_SLOT_MSGH */
  luaL_getmetatable(L, GW_PACKET_MT); /* GW_SLOT_PACKET_MT */
  return s;
}

void gw_script_set_limits(gw_script *s, const gw_script_limits *limits) {
  s->limits = *limits; /* read afresh by every handler call */
}

void gw__gen_tables_clear(gw_script *s, gw_gen_tables *g) {
  chains_clear(s, g);
  for (int i = 0; i < GW_SIDES; i++) {
    luaL_unref(s->L, LUA_REGISTRYINDEX, g->map_ref[i]);
    luaL_unref(s->L, LUA_REGISTRYINDEX, g->star_ref[i]);
    free(g->bits[i]);
  }
  luaL_unref(s->L, LUA_REGISTRYINDEX, g->connect_ref);
  luaL_unref(s->L, LUA_REGISTRYINDEX, g->close_ref);
  luaL_unref(s->L, LUA_REGISTRYINDEX, g->admin_ref);
  gw__gen_tables_init(g);
}

void gw__gen_tables_init(gw_gen_tables *g) {
  memset(g, 0, sizeof *g);
  for (int i = 0; i < GW_SIDES; i++) g->map_ref[i] = g->star_ref[i] = LUA_NOREF;
  g->connect_ref = g->close_ref = g->admin_ref = LUA_NOREF;
}

void gw_script_free(gw_script *s) {
  if (!s) return;
  /* Sessions the host did not close: detach them, so a late call is a
   * harmless no-op. */
  for (gw_script_session *ss = s->sessions, *next; ss; ss = next) {
    next = ss->next;
    ss->prev = ss->next = NULL;
    ss->handlers = NULL;
    ss->closed = true;
    ss->ref = LUA_NOREF;
  }
  s->sessions = NULL;
  while (s->waits->calls) call_discard(s, s->waits->calls);
  /* Finalizers scripts set run now, still under the instruction limit, and
   * may reach listeners: those are freed after. */
  s->instructions = 0;
  s->timed_out = false;
  s->depth = 1;
  if (s->limits.handler_instructions)
    lua_sethook(s->L, count_hook, LUA_MASKCOUNT, hook_interval(s));
  lua_close(s->L);
  for (size_t i = 0; i < s->nlisteners; i++) {
    gw_listener_rt *rt = s->listeners[i];
    for (int j = 0; j < GW_SIDES; j++) {
      free(rt->cur.bits[j]);
      free(rt->next.bits[j]);
      free(rt->cur.chains[j]); /* their references went with the state */
      free(rt->next.chains[j]);
    }
    free(rt->ops);
    free(rt->h.listener);
    free(rt);
  }
  free(s->listeners);
  /* these came from l_alloc, which only needs s */
  l_alloc(s, s->out, s->capout * sizeof *s->out, 0);
  l_alloc(s, s->arena, s->arena_cap, 0);
  l_alloc(s, s->closes, s->capcloses * sizeof *s->closes, 0);
  l_alloc(s, s->heap, s->capheap * sizeof *s->heap, 0);
  free(s->waits->heap);
  free(s->waits);
  free(s);
}

/* The heap array grows through the state's allocator too. */
void *gw__grow(gw_script *s, void *p, size_t *cap, size_t need, size_t elem) {
  return grow(s, p, cap, need, elem);
}
