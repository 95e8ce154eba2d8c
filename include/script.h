/* script.h: the Lua side of gangway, as the relay (or the busted harness)
 * sees it.
 *
 * One gw_script is one Lua 5.4 state, owned by the event loop, with a capped
 * allocator. Each listener's scripts run there, each with its own _ENV, and
 * register handlers into that listener's gw_handlers. The relay never knows
 * what a handler is: it asks gw_handlers_want() per frame (a C table lookup)
 * and calls gw_script_frame() only for frames some handler asked for. The
 * script layer never touches a socket: whatever it sends goes out through
 * gw_host_ops.emit, in order.
 *
 * Nothing here depends on libuv, so the same code is built into the
 * `gangway.core` Lua module that busted specs load. */
#ifndef GW_SCRIPT_H
#define GW_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "frame.h"

typedef struct gw_script gw_script;
struct gw_codec;

/* What a script asks of a session's pipeline (session:set_framing,
 * expect_raw, set_codec). Handed to the host in order with what the script
 * sends, after the frame being handled has gone on: a switch applies from
 * the next frame. */
typedef enum {
  GW_PIPE_OP_FRAMING,           /* frames from `side` are cut with framing */
  GW_PIPE_OP_RAW,               /* the next n bytes from `side` pass as they are */
  GW_PIPE_OP_STREAM_CODEC,      /* codec (or NULL) on side's wire, `ways` */
  GW_PIPE_OP_BODY_CODEC,
} gw_pipe_op_kind;
typedef struct gw_pipe_op {
  gw_pipe_op_kind kind;
  gw_side side;
  const gw_framing *framing;    /* valid during the call only */
  uint64_t n;
  struct gw_codec *codec;       /* the host takes its own references */
  int ways;                     /* GW_CODEC_IN, _OUT or _BOTH (pipe.h) */
} gw_pipe_op;

/* Per session, embedded in the host's session struct (get back to it with
 * container_of). The host fills the first block before
 * gw_script_session_open; the rest belongs to the script layer. */
typedef struct gw_script_session {
  uint64_t id;
  char client[64];                  /* "ip:port" */
  char upstream[64];
  /* The framing the session's frames from each side are cut with now (the
   * host's pipeline's; NULL: the listener's as at open). */
  const gw_framing *framing[GW_SIDES];
  /* script layer only */
  struct gw_script_session *prev, *next; /* live sessions, for gw.sessions() */
  struct gw_handlers *handlers;     /* the listener's, fixed at open */
  int ref;                          /* session userdata in the registry,
                                       LUA_NOREF until it first enters Lua */
  bool closed;
} gw_script_session;

/* What the script layer needs from its host. */
typedef struct gw_host_ops {
  /* Sends len bytes (one whole frame) toward side `to`. When data is the
   * frame being handled (passed on, maybe edited in place), the host may
   * reference it instead of copying; anything else must be copied before
   * emit returns. Returns 0 or a negative errno (session gone). */
  int (*emit)(gw_script_session *ss, gw_side to, const uint8_t *data,
              size_t len);
  /* Closes the session after what was emitted so far has been written. */
  void (*close)(gw_script_session *ss, const char *reason);
  /* Milliseconds on a monotonic clock, and a request to have
   * gw_script_run_timers() called at (or after) when_ms. */
  uint64_t (*now_ms)(void *host);
  void (*wake_at)(void *host, uint64_t when_ms);
  /* Applies a pipeline request; NULL: the host has no pipeline (requests
   * are then refused to the script). */
  void (*pipe)(gw_script_session *ss, const gw_pipe_op *op);
  /* session:capture: writes the session's frames to <capture_dir>/<name>.pcap
   * for up to seconds / max_mb. Returns 0, or a negative errno with err.
   * NULL: the host cannot capture. */
  int (*capture)(gw_script_session *ss, const char *name, uint32_t seconds, uint32_t max_mb,
                 bool originals, char *err, size_t errlen);
  /* session:route: the session's upstream server by name (or "host:port"),
   * before the host connects. Returns 0 (ss->upstream then names it), or a
   * negative errno with err: an unknown name (-ENOENT), too late
   * (-EALREADY). NULL: the host cannot route. */
  int (*route)(gw_script_session *ss, const char *name, char *err, size_t errlen);
} gw_host_ops;

typedef struct gw_script_limits {
  uint64_t handler_instructions;    /* per handler call */
  size_t memory_bytes;              /* whole Lua state */
} gw_script_limits;

/* Which frames a listener's handlers asked for: a C table by side and
 * opcode, swapped at reload. Public so the check inlines into the relay. */
typedef struct gw_handlers {
  bool any[GW_SIDES];               /* some handler for this side at all */
  bool all[GW_SIDES];               /* a "*" handler */
  uint8_t *bits[GW_SIDES];          /* 65536-bit map of wanted opcodes */
  bool wide[GW_SIDES];              /* handlers on opcodes >= 65536 */
  bool keepalive[GW_SIDES];         /* handlers on keep-alives (frames
                                       without an opcode), by name */
  /* script layer only */
  char *listener;
  gw_framing framing;
  gw_on_error on_error;
  void *priv;
} gw_handlers;

static inline bool gw_handlers_want(const gw_handlers *h, gw_side side,
                                    const gw_frame_info *fi) {
  if (!h || !h->any[side]) return false;
  if (h->all[side]) return true;
  if (!fi->has_opcode) return h->keepalive[side];
  if (fi->opcode < 65536)
    return h->bits[side] && (h->bits[side][fi->opcode >> 3] >> (fi->opcode & 7)) & 1;
  return h->wide[side];
}

gw_script *gw_script_new(const gw_script_limits *limits,
                         const gw_host_ops *ops, void *host);
void gw_script_free(gw_script *s);
/* New limits, from the next handler call on (the relay applies a reloaded
 * config's limits with it). */
void gw_script_set_limits(gw_script *s, const gw_script_limits *limits);

/* Loads every listener's scripts from cfg into a new generation and runs
 * them to completion. Only if all of them load is it swapped in: old
 * generation timers cancelled, handlers replaced, gw.on_reload functions
 * run. Otherwise nothing changes and err holds "FILE:LINE: message".
 * Returns 0 or a negative errno. The first call is the initial load. */
int gw_script_load(gw_script *s, const gw_config *cfg, char *err,
                   size_t errlen);
/* The current handlers of listener `name` (stable pointer for the life of
 * the gw_script), or NULL if no such listener was loaded. */
gw_handlers *gw_script_handlers(gw_script *s, const char *name);

/* A new session of the listener whose handlers are h: links it in and runs
 * gw.on_connect. Returns 0, or -ECONNREFUSED if a handler refused it. */
int gw_script_session_open(gw_script *s, gw_handlers *h,
                           gw_script_session *ss);
/* Handlers that wait (gw.redis, session:sleep; issue 14): what the host
 * does when a call that waited ends. Until a host sets them, frame
 * handlers and on_connect functions cannot wait (timers and gw.subscribe
 * functions can). */
typedef struct gw_wait_ops {
  /* A frame from `from` whose handler waited is done, its verdict and
   * sends out: the host goes on with the frames it held behind it. */
  void (*frame_done)(gw_script_session *ss, gw_side from);
  /* An on_connect that waited is done: rc 0, connect the upstream;
   * -ECONNREFUSED, refused (released already: close it). */
  void (*open_done)(gw_script_session *ss, int rc);
  /* Script work outside the host's calls (a Redis reply, a message)
   * queued output: write it. */
  void (*flush)(void *host);
} gw_wait_ops;
/* wait_ms: how long a call may wait in all, from its first wait on (0:
 * no bound); past it the listener's on_error applies. */
void gw_script_set_waits(gw_script *s, const gw_wait_ops *ops, uint32_t wait_ms);

/* gw_script_frame and gw_script_session_start: a handler waits; the host
 * hears of the end through frame_done / open_done. */
#define GW_SCRIPT_PENDING 1
/* gw_script_session_open whose gw.on_connect functions may wait (with
 * ops.open_done): 0, -ECONNREFUSED, or GW_SCRIPT_PENDING. */
int gw_script_session_start(gw_script *s, gw_handlers *h, gw_script_session *ss);
/* The host gives up on the waiting frame from `from` of ss (what queued
 * behind it passed limits.wait_bytes): the listener's on_error applies to
 * it now, and no frame_done follows. 0, or -ECONNRESET when that closed
 * the session. */
int gw_script_frame_abandon(gw_script *s, gw_script_session *ss, gw_side from, const char *why);
/* The Redis client of gw.redis and gw.subscribe (NULL: none; commands
 * under way are forgotten). Call again after every load: it subscribes
 * to the channels of the generation now running. */
struct gw_redis;
void gw_script_set_redis(gw_script *s, struct gw_redis *r);

/* Runs gw.on_close, cancels the session's timers and releases it. */
void gw_script_session_close(gw_script *s, gw_script_session *ss,
                             const char *reason);

/* Hands one frame (from side `from`, fi as gw_frame_next found it) to the
 * handlers. data is writable: in-place edits are what passes on. Whatever
 * the handlers send goes out through ops->emit, in order: the frame (or its
 * replacement) first, then injected frames. Returns 0, or -ECONNRESET if
 * the session was closed (by a handler or its on_error policy). */
int gw_script_frame(gw_script *s, gw_script_session *ss, gw_side from,
                    uint8_t *data, const gw_frame_info *fi);

/* Runs the timers that are due. */
void gw_script_run_timers(gw_script *s);

/* Counters, for logs and the control socket. */
typedef struct gw_script_stats {
  uint64_t frames, dropped, replaced, injected, errors, timeouts;
  uint64_t injected_refused; /* sent frames emit refused with -ENOBUFS
                                (past limits.write_max): not sent */
  size_t memory_bytes;
} gw_script_stats;
void gw_script_get_stats(const gw_script *s, gw_script_stats *st);

/* Per opcode of handled frames, per listener and side of origin (at most a
 * few thousand opcodes each; past that they are not counted). */
typedef struct gw_opstat_counts {
  uint64_t frames;              /* handed to the handlers */
  uint64_t passed, dropped, replaced, errors; /* passed: unchanged */
  uint64_t injected;            /* frames of this opcode sent from Lua */
} gw_opstat_counts;
typedef void (*gw_opstat_fn)(void *ud, const char *listener, gw_side side, bool has_opcode,
                             uint32_t opcode, const gw_opstat_counts *c);
void gw_script_foreach_opstat(gw_script *s, gw_opstat_fn fn, void *ud);

/* Counters the host keeps per listener (its metrics), counted by the
 * script layer at each failed call of that listener's scripts, wherever
 * it runs: a frame's handler, one that waited and failed later, a timer,
 * on_connect, on_close. NULL: none. The counters must outlive s. */
void gw_script_count_errors(gw_script *s, const char *listener, uint64_t *errors,
                            uint64_t *timeouts);

/* Each call of gw_script_frame is timed (microseconds) into h, when set
 * (a run of them is entered when it ends: gw_script_run_end). */
struct gw_histogram;
void gw_script_set_handler_histogram(gw_script *s, struct gw_histogram *h);
/* The next gw_script_frame follows the last one back to back, with only
 * the framing of its frame between them: the same run, timed as a whole
 * (two clock reads per run, not one per frame). */
void gw_script_frame_follows(gw_script *s);
/* The run of frames handled back to back ended: its time is taken now.
 * Call it after the last gw_script_frame of a run (else the next frame
 * that does not follow ends it, its time then counting the gap). */
void gw_script_run_end(gw_script *s);

/* A script endpoint, gw.admin(name, fn): calls fn(req) with req = { method
 * = "GET" | "POST" | "DELETE", body = the request's JSON decoded (nil if
 * none) } and encodes what it returns as JSON (fn may return a status
 * first: `return 201, { ok = true }`). Returns the HTTP status (404 when no
 * script registered name, 400 for a body that is not JSON, 500 when fn
 * fails) and *out, a malloc'd JSON body the caller frees. */
int gw_script_admin(gw_script *s, const char *name, const char *method, const char *body,
                    size_t len, char **out, size_t *outlen);

#endif
