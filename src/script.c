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

static void charge_bytes(gw_script *s, size_t n) {
  s->alloc_uncharged += n;
  if (s->alloc_uncharged < 4096 || !s->limits.handler_instructions) return;
  s->instructions += s->alloc_uncharged / ALLOC_CHARGE;
  s->alloc_uncharged %= ALLOC_CHARGE;
  if (s->instructions >= s->limits.handler_instructions && !s->timed_out) {
    s->timed_out = true;
    lua_sethook(s->L, count_hook, LUA_MASKCOUNT, 1);
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
    lua_sethook(s->L, count_hook, LUA_MASKCOUNT, 1);
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
  if (L != s->L) lua_sethook(s->L, count_hook, LUA_MASKCOUNT, 1);
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
  if (L != s->L) lua_sethook(s->L, count_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "instruction limit exceeded (%I per call)",
             (lua_Integer)s->limits.handler_instructions);
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
  if (st != LUA_OK) {
    /* A call that fails sends nothing and closes nothing: no half-done
     * sequences (on_error decides what happens next). */
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
void gw__outbox_forget(gw_script *s, gw_script_session *ss) {
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

/* Protected: makes the session's userdata (arg 1), its first time in Lua. */
static int make_session(lua_State *L) {
  gw__push_session(L, lua_touserdata(L, 1));
  return 0;
}

static void frame_what(char *out, size_t outlen, const gw_frame_ctx *c) {
  if (c->fi->has_opcode)
    snprintf(out, outlen, "%s frame %" PRIu32 " of session %" PRIu64,
             gw_side_name(c->from), c->fi->opcode, c->ss->id);
  else
    snprintf(out, outlen, "%s frame of session %" PRIu64,
             gw_side_name(c->from), c->ss->id);
}

/* Runs the handlers of a frame. Each handler is its own protected call,
 * made from here with nothing allocated around it: the packet is a token
 * for s->pkt, the session's userdata exists from its first frame on. */
static int frame_handlers(gw_script *s, gw_script_session *ss, gw_side from, uint8_t *data,
                          const gw_frame_info *fi);

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int gw_script_frame(gw_script *s, gw_script_session *ss, gw_side from,
                    uint8_t *data, const gw_frame_info *fi) {
  if (!s->handler_time) return frame_handlers(s, ss, from, data, fi);
  uint64_t t0 = now_us();
  int rc = frame_handlers(s, ss, from, data, fi);
  gw_histogram_observe(s->handler_time, now_us() - t0);
  return rc;
}

void gw_script_set_handler_histogram(gw_script *s, struct gw_histogram *h) { s->handler_time = h; }

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
  gw_opstat *os = gw__opstat(rt, from, fi->has_opcode, fi->opcode);
  if (os) os->frames++;

  enum { MAP = GW_SLOT_BASE + 1, CHAIN, SESSION };
  bool failed = false, broken = false;
  char what[96], msg[320];
  int st = LUA_OK;
  /* The bitmap says whether the opcode has a chain of its own; if not,
   * the "*" chain (if any) is the one. */
  const gw_gen_tables *g = &rt->cur;
  bool own = false;
  if (fi->has_opcode && fi->opcode < 65536)
    own = g->bits[from] && (g->bits[from][fi->opcode >> 3] >> (fi->opcode & 7) & 1);
  else if (fi->has_opcode)
    own = g->wide[from];
  else
    own = g->keepalive[from]; /* gw.on(side, "KEEPALIVE") by name */
  int t = LUA_TNIL;
  lua_pushnil(L); /* MAP: only looked at for an opcode's own chain */
  if (own) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->map_ref[from]);
    lua_replace(L, MAP);
    if ((t = lua_rawgeti(L, MAP, fi->has_opcode ? (lua_Integer)fi->opcode
                                                : GW_KEEPALIVE_KEY)) == LUA_TNIL)
      lua_pop(L, 1);
  }
  if (t == LUA_TNIL && g->star_ref[from] != LUA_NOREF)
    t = lua_rawgeti(L, LUA_REGISTRYINDEX, g->star_ref[from]);
  if (t != LUA_TTABLE) lua_settop(L, MAP);
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
  if (t == LUA_TTABLE) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ss->ref); /* SESSION */
    const gw_session_ud *u = lua_touserdata(L, SESSION);
    gw_packet *p = c->pkt = &s->pkt;
    p->data = data;
    p->len = fi->len;
    p->buf = NULL;
    p->cap = 0;
    p->f = gw__session_framing(u, from); /* the session's now: a reload does
                                             not change it, its phases may */
    p->side = from;
    p->valid = true;
    p->dirty = p->replaced = false;
    s->pkt_token = (uintptr_t)(++s->pkt_serial << 1 | 1);
    lua_Integer n = (lua_Integer)lua_rawlen(L, CHAIN);
    for (lua_Integer i = 1; i <= n && !ss->closed; i++) {
      c->handler = i;
      lua_rawgeti(L, CHAIN, i);
      lua_pushlightuserdata(L, (void *)s->pkt_token);
      lua_pushvalue(L, SESSION);
      if ((st = gw__pcall(s, 2, 1)) != LUA_OK) {
        failed = true;
        frame_what(what, sizeof what, c);
        gw__report_error(s, st, rt->h.listener, what); /* resets the stack */
        break;
      }
      int r = take_result(L, s, c, CHAIN, msg, sizeof msg);
      lua_settop(L, SESSION);
      if (r < 0) {
        failed = true;
        frame_what(what, sizeof what, c);
        report(s, rt->h.listener, what, msg, false);
      }
      if (r) break;
    }
  }
  lua_settop(L, GW_SLOT_BASE);
  gw_packet *p = c->pkt;
  gw_verdict v = c->verdict;
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
  const uint8_t *out = p ? p->data : data;
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
  if (p) gw_packet_invalidate(L, p);
  s->pkt_token = 0;
  c->pkt = NULL;
  lua_settop(L, GW_SLOT_BASE);
  bool closed = ss->closed;
  gw__flush(s);
  gw__timers_wake(s);
  return closed ? -ECONNRESET : 0;
}

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
  lua_State *L = lua_newstate(l_alloc, s);
  if (!L) {
    free(s);
    return NULL;
  }
  s->L = L;
  *(gw_script **)lua_getextraspace(L) = s; /* new threads copy it */
  lua_pushcfunction(L, init_state);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    gw_error("scripts: cannot set up the Lua state: %s",
             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    lua_close(L);
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
  free(s);
}

/* The heap array grows through the state's allocator too. */
void *gw__grow(gw_script *s, void *p, size_t *cap, size_t need, size_t elem) {
  return grow(s, p, cap, need, elem);
}
