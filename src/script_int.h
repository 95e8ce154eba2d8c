/* script_int.h: private to the script layer (src/script*.c and the
 * gangway.core Lua module; src/config.c uses gw_meter_open). Not part of any contract: the relay only sees
 * include/script.h.
 *
 * The layer is split by concern:
 *   script.c          the state: allocator, instruction hook, protected
 *                     calls, frame dispatch, outbox, errors, counters
 *   script_load.c     sandbox, require, the `gangway` module, generations
 *                     and reload
 *   script_session.c  session userdata, session open/close
 *   script_timer.c    the timer heap and timer userdata
 *   script_meter.c    library functions charged to the instruction limit
 *   script_packet.c   packet and writer userdata (state-independent: the
 *                     busted module registers them in its own state too) */
#ifndef GW_SCRIPT_INT_H
#define GW_SCRIPT_INT_H

#include <lauxlib.h>
#include <lua.h>
#include <stddef.h>

#include "script.h"

#define GW_PACKET_MT "gangway.packet"
#define GW_WRITER_MT "gangway.writer"
#define GW_SESSION_MT "gangway.session"
#define GW_TIMER_MT "gangway.timer"
#define GW_BINDING_MT "gangway.binding"
#define GW_VERDICT_MT "gangway.verdict"

/* Instructions between two calls of the count hook: the limit is enforced to
 * within this many instructions (HAProxy and Redis use a few thousand). */
#define GW_HOOK_INTERVAL 1000

/* Lua call levels a call into Lua may nest (its own function included).
 * Checked by the count hook, so a recursion is stopped within
 * GW_HOOK_INTERVAL instructions of passing it. Bounds the stack a handler
 * builds, and with it the cost of the traceback of its error: without it
 * a recursion reaches ~200,000 levels before Lua's "stack overflow" and
 * the traceback's stack walk takes seconds. */
#define GW_MAX_DEPTH 1000

/* Fixed slots at the bottom of the main thread's stack, pushed once by
 * gw_script_new, so a call into Lua pushes no new values for them. */
#define GW_SLOT_MSGH 1     /* message handler: error + traceback */
#define GW_SLOT_PACKET_MT 2 /* the packet metatable */
#define GW_SLOT_BASE 2     /* stack top between calls */

#define gw_container_of(p, type, member) \
  ((type *)((char *)(p) - offsetof(type, member)))

typedef enum {
  GW_VERDICT_PASS = 0,
  GW_VERDICT_DROP,
  GW_VERDICT_CLOSE,
  GW_VERDICTS
} gw_verdict;

/* ---- packets and writers (script_packet.c) ---- */

typedef struct gw_packet {
  uint8_t *data;         /* the frame: the host's buffer, or buf */
  size_t len;
  uint8_t *buf;          /* own storage, or NULL while data is the host's
                            frame: C memory for the handled frame, a
                            userdata (user value 1) for a copy */
  size_t cap;
  const gw_framing *f;   /* the listener's, or own_f for a copy */
  gw_side side;          /* where the frame comes from */
  bool valid;            /* false once its handler returned */
  bool dirty;            /* edited in place: check the framing again */
  bool replaced;         /* rebuilt or replaced: no longer the host's frame */
  bool copy;             /* a pkt:copy(): buf is its user value 1 */
  gw_framing own_f;      /* copies only: the framing they were made with */
  const struct gw_proto *proto; /* copies only: the packet definitions
                            they decode with (user value 2), or NULL */
} gw_packet;

/* Registers the packet and writer metatables in L (any state). light:
 * light userdata tokens stand for the frame being handled (script states
 * only: gw__light_packet resolves them). */
void gw_packet_open(lua_State *L, bool light);
/* The packet at idx (a token when light, or a copy), an expired packet for
 * a token gone by, or NULL when it is no packet. */
gw_packet *gw_packet_get(lua_State *L, int idx, bool light);
/* The handled frame's packet if token is its token, else NULL. */
gw_packet *gw__light_packet(lua_State *L, uintptr_t token);
/* Pushes a packet holding its own copy of data and of f. */
gw_packet *gw_packet_push_copy(lua_State *L, const gw_framing *f,
                               gw_side side, const uint8_t *data, size_t len);
/* Replaces p's bytes with a copy of data (one whole frame, already
 * checked). Returns 0 or -ENOMEM; never raises. */
int gw_packet_replace(lua_State *L, gw_packet *p, const uint8_t *data,
                      size_t len);
/* Ends the handled frame's packet: frees its storage with the state's
 * allocator; its token no longer matches. Never raises. */
void gw_packet_invalidate(lua_State *L, gw_packet *p);
/* Pushes a new writer for framing f. */
void gw_writer_push(lua_State *L, const gw_framing *f);
/* Builds opcode + body into a frame and pushes it as a string (gw.packet);
 * raises a clear error when the framing cannot carry it. */
void gw_frame_push_built(lua_State *L, const gw_framing *f, lua_Integer opcode,
                         const uint8_t *body, size_t body_len);
/* Checks that data is exactly one valid frame from side `from`. Returns 0,
 * or -EPROTO with a reason in why. */
int gw_frame_check(const gw_framing *f, gw_side from, const uint8_t *data,
                   size_t len, char *why, size_t whylen);
/* Reads the bytes of a frame argument: a string or a packet. Raises. */
const uint8_t *gw_frame_arg(lua_State *L, int idx, size_t *len);
/* Reads a body argument: a string or a writer's bytes. Raises. */
const uint8_t *gw_body_arg(lua_State *L, int idx, size_t *len);

/* ---- packets by name (script_proto.c) ---- */
struct gw_proto;
#define GW_PROTO_MT "gangway.proto"
#define GW_KEEPALIVE_KEY (-2)  /* map key of the keep-alive chain */

/* Loads path (a packets.lua) for framing f and pushes it as a userdata
 * that frees it when collected. Raises the loader's message. */
const struct gw_proto *gw__proto_push_new(lua_State *L, const char *path,
                                          const gw_framing *f);
/* The opcode of packet `name` for gw.on(side, name), or GW_KEEPALIVE_KEY
 * for the keep-alive. Raises "gw.on: no packet ..." with a suggestion. */
lua_Integer gw__proto_resolve(lua_State *L, const struct gw_proto *p,
                              gw_side side, const char *name,
                              const char *listener);
/* pkt:decode(), pkt:encode(t) (upvalue 1: light, as the other methods) */
int gw__pkt_decode(lua_State *L);
int gw__pkt_encode(lua_State *L);
/* Pushes pkt.name: the definition's name, or nil. */
void gw__pkt_push_name(lua_State *L, const gw_packet *p, bool light);
/* The copy at dst decodes with what the packet at src decodes with. */
void gw__pkt_adopt_proto(lua_State *L, int src, int dst, bool light);
/* gw.packet(name, fields): pushes the frame built by name; charge: a
 * script state (charge the instruction limit). */
void gw__proto_build(lua_State *L, const struct gw_proto *p,
                     const gw_framing *f, int name_idx, int t_idx, bool charge);
/* From script_packet.c, for decode and encode. */
gw_packet *gw__check_packet(lua_State *L, int idx);
size_t gw__packet_body_offset(const gw_packet *p);
/* Rebuilds the packet at idx around body (pkt:set_body); raises as who,
 * leaving the packet as it was. */
void gw__packet_set_body(lua_State *L, int idx, gw_packet *p,
                         const uint8_t *body, size_t blen, const char *who);

/* ---- the state (script.c) ---- */

/* One listener in the state: the public gw_handlers (stable address, the
 * relay keeps it) and its Lua tables, current and being loaded. */
typedef struct gw_gen_tables {
  int map_ref[GW_SIDES]; /* opcode -> chain (array of functions); key -1 is
                            the "*" chain, used for frames without a chain
                            of their own and for frames without an opcode */
  int star_ref[GW_SIDES]; /* the "*" chain again, or LUA_NOREF: frames the
                            bitmap has no specific chain for go straight
                            to it */
  int connect_ref;       /* arrays of functions, LUA_NOREF when empty */
  int close_ref;
  int admin_ref;         /* gw.admin endpoints: name -> function */
  uint8_t *bits[GW_SIDES];
  bool any[GW_SIDES], all[GW_SIDES], wide[GW_SIDES];
  bool keepalive[GW_SIDES]; /* a chain of its own (map key
                            GW_KEEPALIVE_KEY) for keep-alive frames */
  const struct gw_proto *proto; /* the listener's packet definitions, or
                            NULL; held by the generation's extras
                            (gw__push_gen_extras) */
  struct gw_chain_slot *chains[GW_SIDES]; /* the dispatcher's cache of
                            chains (script.c), NULL until first used */
} gw_gen_tables;

typedef struct gw_opstat {
  uint64_t key;          /* side << 32 | opcode; UINT64_MAX when free */
  uint64_t frames, dropped, replaced, errors, injected;
} gw_opstat;

typedef struct gw_listener_rt {
  gw_handlers h;         /* h.priv points back here */
  gw_script *s;
  bool published;        /* has loaded once: gw_script_handlers finds it */
  bool in_next;          /* part of the generation being loaded */
  gw_gen_tables cur;     /* the generation the relay runs */
  gw_gen_tables next;    /* the generation being loaded */
  gw_framing next_framing;
  gw_on_error next_on_error;
  gw_opstat *ops;        /* per-opcode counters, open addressing */
  size_t nops, capops;
  gw_opstat *last_op;    /* the last one looked up: runs of one opcode */
  uint64_t *errors_slot, *timeouts_slot; /* the host's counters, or NULL */
} gw_listener_rt;

typedef struct gw_outmsg {
  gw_script_session *ss; /* NULL once the session was released */
  gw_side to;            /* a send: toward; a pipeline request: its side */
  size_t off, len;       /* in the outbox arena: the frame, or the framing */
  int op;                /* 0: a send; else gw_pipe_op_kind + 1 */
  int ways;
  uint64_t n;
  struct gw_codec *codec; /* one reference, held until done or dropped */
} gw_outmsg;

typedef struct gw_closereq {
  gw_script_session *ss;
  char reason[96];
} gw_closereq;

typedef struct gw_timer gw_timer;

/* The frame being handled, for the dispatcher. */
typedef struct gw_frame_ctx {
  gw_listener_rt *rt;
  gw_script_session *ss;
  gw_side from;
  uint8_t *data;
  const gw_frame_info *fi;
  gw_packet *pkt;        /* NULL until the dispatcher makes one */
  gw_verdict verdict;
  lua_Integer handler;   /* index in the chain of the handler running */
} gw_frame_ctx;

struct gw_script {
  lua_State *L;
  gw_host_ops ops;
  void *host;
  gw_script_limits limits;
  size_t mem;            /* bytes the state holds */

  /* the instruction limit of the call under way */
  uint64_t instructions;
  size_t alloc_uncharged; /* bytes allocated not yet charged */
  bool timed_out;        /* over the instruction limit */
  bool out_of_memory;    /* a memory error, even if the script caught it */
  struct { void *ptr; size_t osize, nsize; } refused; /* last refusal */
  int depth;             /* calls into Lua under way (0 or 1) */
  struct gw_histogram *handler_time; /* gw_script_frame's, in us, or NULL */
  uint64_t frame_end;    /* when the last gw_script_frame ended (gw_ticks), 0: unknown */
  bool follows;          /* the next one starts then (gw_script_frame_follows) */
  uint64_t run_start;    /* gw_ticks when the open run began (timed as a whole) */
  uint32_t run_frames;   /* frames in the open run, 0: none open */
  uint32_t precise_runs; /* runs left to time frame by frame */
  int cjson_ref;         /* cjson for gw_script_admin, made on first use */

  unsigned gen;          /* generation the relay runs */
  unsigned loading_gen;  /* generation being loaded, 0 when none */
  bool loaded;
  gw_listener_rt **listeners;
  size_t nlisteners;

  gw_script_session *sessions; /* live ones, newest first */
  size_t nsessions;

  gw_frame_ctx cur;
  gw_packet pkt;         /* the handled frame's packet */
  uintptr_t pkt_token;   /* its token while its handlers run, else 0 */
  uint64_t pkt_serial;

  gw_outmsg *out;        /* frames sent from Lua, emitted after the call */
  size_t nout, capout;
  uint8_t *arena;
  size_t arena_len, arena_cap;
  gw_closereq *closes;   /* closes asked for from Lua, done after the call */
  size_t ncloses, capcloses;
  bool flushing;

  gw_timer **heap;       /* min-heap on (when, seq) */
  size_t nheap, capheap;
  uint64_t timer_seq;
  uint64_t wake;         /* last wake_at asked of the host, UINT64_MAX none */

  gw_script_stats stats;
  uint64_t errlog_window; /* start of the second that errlog_count counts */
  unsigned errlog_count;
  uint64_t errlog_suppressed;

  int shared_ref;        /* gw.shared */
  int base_ref;          /* the read-only base of sandboxed _ENVs */
  int modules_ref;       /* require cache of the generation being loaded */
  int next_modules_ref;
  int reload_ref;        /* gw.on_reload functions of the loading gen */
  void *verdicts[GW_VERDICTS]; /* gw.PASS, gw.DROP, gw.CLOSE */
  struct gw_waits *waits; /* calls that wait (script.c), never NULL */
};

static inline gw_script *gw_script_of(lua_State *L) {
  return *(gw_script **)lua_getextraspace(L);
}

/* The call under way ran into a limit: its error must not be caught. */
static inline bool gw__over_limit(const gw_script *s) {
  return s->timed_out || s->out_of_memory;
}

/* Runs the function below its nargs arguments on the stack, protected,
 * under the limits. Returns the lua_pcall status; on error the message
 * (with traceback) is left on the stack, else nresults results. */
int gw__pcall(gw_script *s, int nargs, int nresults);
/* Charges cost instructions to the call under way (C work the count hook
 * cannot see); past the limit, raises the limit's error. */
void gw__charge(lua_State *L, uint64_t cost);
/* How a Lua state pays for the C work of its metered library functions:
 * charge(L, cost) adds cost instructions to the run under way and raises
 * the limit's error past it. Must outlive the state (a static). */
typedef struct gw_meter {
  void (*charge)(lua_State *L, uint64_t cost);
} gw_meter;
/* Replaces string.find/match/gmatch/gsub, table.sort/move/insert/remove
 * and coroutine.create/wrap (those of them the state has loaded) with
 * versions that charge their C work to meter (script_meter.c). The config
 * loader uses it too. */
void gw_meter_open(lua_State *L, const gw_meter *meter);
/* Logs a failed call (rate-limited) and counts it. what says which call
 * ("client frame 1", "timer"...). Pops the message. */
void gw__report_error(gw_script *s, int status, const char *listener,
                      const char *what);
/* Queues a frame toward `to` of ss, sent after the call under way. */
/* Pushes the lowercase hex of p[0..n) (gw.hex, pkt:hex). */
void gw__push_hex(lua_State *L, const uint8_t *p, size_t n);

/* script_codec.c: gw.codec, session:set_codec / set_framing / expect_raw. */
int gw__lua_codec(lua_State *L);
int gw__session_set_codec(lua_State *L);
int gw__session_set_framing(lua_State *L);
int gw__session_expect_raw(lua_State *L);
void gw__codec_open_lib(lua_State *L);

/* Queues a pipeline request behind what ss was sent so far. framing (may
 * be NULL) is copied; codec gets a reference of the outbox's. */
void gw__pipe_request(lua_State *L, gw_script_session *ss, const gw_pipe_op *op);
void gw__send(lua_State *L, gw_script_session *ss, gw_side to,
              const uint8_t *data, size_t len);
/* Asks for ss to be closed after the call under way. */
void gw__request_close(gw_script *s, gw_script_session *ss, const char *reason);
/* Emits what Lua sent, then does the closes it asked for. */
void gw__flush(gw_script *s);
/* Forgets ss in the outbox: it is being released. */
void gw__outbox_forget(gw_script *s, gw_script_session *ss);
/* Grows an array of *cap elements to hold need, with the state's
 * allocator (counted toward the memory limit). NULL when refused. */
void *gw__grow(gw_script *s, void *p, size_t *cap, size_t need, size_t elem);
/* The state's memory limit in words for messages ("64 MiB"). */
void gw__format_bytes(char *out, size_t outlen, size_t bytes);
gw_listener_rt *gw__rt_of(const gw_handlers *h);
/* The listener named name's, or NULL (a linear search: for errors). */
gw_listener_rt *gw__find_rt(gw_script *s, const char *name);
/* Counters of one opcode of a listener (NULL if it could not grow). */
gw_opstat *gw__opstat(gw_listener_rt *rt, gw_side side, bool has_opcode,
                      uint32_t opcode);

/* ---- calls that wait (script.c; the waits: script_redis.c) ----
 * Handlers, gw.on_connect functions, timers and gw.subscribe functions run
 * in a coroutine; a function that waits yields it with gw__call_wait, and
 * whatever ends the wait resumes it with gw__call_resume. */
typedef struct gw_call gw_call;
typedef void (*gw_wait_cancel)(gw_script *s, void *wait);
/* The call running on L, made on first use; raises "who: cannot wait
 * here" where nothing may wait (gw.on_close, loading, a coroutine of the
 * script's own, a host without waits). */
gw_call *gw__call_current(lua_State *L, const char *who);
/* Yields c until gw__call_resume; wait is what it waits for, handed to
 * cancel when the call is discarded first. sleep_ms: also resume after
 * that long (a sleep), or -1. Use as `return gw__call_wait(...)`. */
int gw__call_wait(lua_State *L, gw_call *c, gw_wait_cancel cancel, void *wait,
                  int64_t sleep_ms);
/* The thread to push the waiting function's results on. */
lua_State *gw__call_thread(gw_call *c);
/* Ends c's wait: the nvalues values on its thread are what the waiting
 * function returns. Runs it on, from the loop (depth 0). */
void gw__call_resume(gw_script *s, gw_call *c, int nvalues);
/* Runs the function below nargs arguments on L's top as a call that may
 * wait; reports its error as `what` (listener rt, or "scripts"), and a
 * session's on_error close applies. */
void gw__call_plain(gw_script *s, int nargs, gw_listener_rt *rt, gw_script_session *ss,
                    const char *what);
/* Due sleeps and wait bounds (gw_script_run_timers); the earliest of them
 * (UINT64_MAX: none). */
void gw__calls_run_due(gw_script *s, uint64_t now);
/* Flushes the outbox, re-arms timers and has the host write (after work
 * outside the host's own calls: replies, messages). */
void gw__host_flush(gw_script *s);
uint64_t gw__calls_next(const gw_script *s);
/* script_redis.c: gw.redis, gw.redis_pipeline, gw.publish, gw.subscribe,
 * gw.psubscribe and gw.sleep into the `gangway` table on top; session:sleep. */
void gw__redis_funcs(lua_State *L);
void gw__wait_open_lib(lua_State *L);
struct gw_redis *gw__redis_of(gw_script *s);

/* ---- loading (script_load.c) ---- */
/* Creates the base environment and the registry tables. Runs protected. */
int gw__load_init(lua_State *L);
void gw__gen_tables_init(gw_gen_tables *g);
void gw__gen_tables_clear(gw_script *s, gw_gen_tables *g);
/* Pushes the per-generation table of g (its packet definitions, chat
 * commands, tell function), made when create; nil when there is none. */
void gw__push_gen_extras(lua_State *L, const gw_gen_tables *g, bool create);
/* Registers gw.* of a binding; pushes its framing for packets and writers. */
const gw_framing *gw__binding_framing(lua_State *L, int idx);

/* ---- sessions (script_session.c) ---- */
typedef struct gw_session_ud {
  gw_script_session *ss; /* NULL once the session was released */
  uint64_t id;
  char client[64];
  char upstream[64];
  gw_listener_rt *rt;
  gw_timer *timers;      /* its timers, to cancel at release */
  /* The framing the relay frames this session with: the listener's when the
   * session opened (a reload changes it for new sessions only). Made before
   * a reload changes it, for every live session of the listener. */
  gw_framing framing;
} gw_session_ud;

/* The framing frames from `from` are cut with now: the host pipeline's,
 * or the listener's as at open. */
static inline const gw_framing *gw__session_framing(const gw_session_ud *u, gw_side from) {
  return u->ss && u->ss->framing[from] ? u->ss->framing[from] : &u->framing;
}

/* Pushes ss's userdata, creating it on first use. Raises memory errors. */
gw_session_ud *gw__push_session(lua_State *L, gw_script_session *ss);
void gw__session_open_lib(lua_State *L);
/* Pushes a list of the live sessions of rt. */
void gw__push_sessions(lua_State *L, gw_listener_rt *rt);
/* Pushes the live sessions of rt with a player, oldest first (name NULL),
 * or the one whose player.name is name (or nil). */
void gw__push_players(lua_State *L, gw_listener_rt *rt, const char *name);
/* gw.set_player(session, player): session.player (user value 2). */
int gw__session_set_player(lua_State *L);

/* ---- timers (script_timer.c) ---- */
struct gw_timer {
  uint64_t when, seq, interval; /* interval 0: fires once */
  size_t idx;            /* in the heap, SIZE_MAX when not scheduled */
  int ref;               /* this userdata in the registry while scheduled */
  unsigned gen;          /* generation that made it */
  gw_listener_rt *rt;    /* listener whose script made it, for logs */
  gw_script_session *ss; /* session timers: its session */
  gw_session_ud *sud;
  gw_timer *sprev, *snext; /* in sud->timers */
};

void gw__timer_open_lib(lua_State *L);
/* Pushes a new timer calling the function at fidx after ms (every ms when
 * repeat); sud: the session it belongs to, or NULL. Raises. */
gw_timer *gw__timer_start(lua_State *L, gw_listener_rt *rt, gw_session_ud *sud,
                          lua_Integer ms, bool repeat, int fidx);
void gw__timer_cancel(gw_script *s, gw_timer *t);
/* Cancels every timer of a generation older than gen (or == gen when
 * exact). */
void gw__timers_cancel_gen(gw_script *s, unsigned gen, bool exact);
void gw__timers_cancel_session(gw_script *s, gw_session_ud *sud);
/* Tells the host when the next timer is due, if that changed. */
void gw__timers_wake(gw_script *s);

#endif
