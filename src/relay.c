/* relay.c: listeners and sessions on the libuv loop (see relay.h).
 *
 * Data flows one way: socket -> read buffer (pool) -> framer -> dispatch ->
 * (script layer) -> per-side output batch -> one uv_write per batch.
 *
 * Ownership of bytes: a direction's read buffer (gw_dir.rbuf) is referenced
 * by the direction while it holds unconsumed bytes, and by every write
 * request whose iovecs point into it. Frames nobody handles are written
 * straight from it. Bytes the script layer makes (rewrites, injections) are
 * copied into an "arena" pool buffer owned the same way. */
#include "relay.h"

#include <errno.h>
#include <netinet/in.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "capture.h"
#include "frame.h"
#include "iplimit.h"
#include "log.h"
#include "pipe.h"
#include "pool.h"
#include "proxyproto.h"
#include "script.h"
#include "upstream.h"

#define GW_BUF_SIZE (64 * 1024) /* one read; holds any top frame */
#define GW_MIN_READ 4096        /* never read into less free space */
#define GW_POOL_KEEP 256        /* idle buffers kept: 16 MiB at most */
#define GW_OUT_IOV 8            /* iovecs per batch; libuv copies > 4 */
#define GW_OUT_REFS 4           /* buffers one write request references */
#define GW_SOFT_CLOSE_MS 2000   /* how long a scripted close may flush */
#define GW_REFUSAL_LINES_PER_S 10 /* "connection refused" lines a second */

#define container_of(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))

typedef struct gw_listener gw_listener;
/* An IPv4 or IPv6 address with its port: what a session keeps of its
 * peers (28 bytes, not a sockaddr_storage's 128, in every session). */
typedef union gw_ipaddr {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} gw_ipaddr;

/* Copies an address that fits (AF_INET or AF_INET6) into a. */
static void ipaddr_set(gw_ipaddr *a, const struct sockaddr_storage *ss) {
  memset(a, 0, sizeof *a);
  if (ss->ss_family == AF_INET) memcpy(&a->in, ss, sizeof a->in);
  else if (ss->ss_family == AF_INET6) memcpy(&a->in6, ss, sizeof a->in6);
}
typedef struct gw_session gw_session;

struct gw_listener {
  uv_tcp_t tcp;
  gw_relay *relay;
  gw_listener *next;
  char *name;
  char listen[GW_ADDR_MAX];
  char upstream[GW_ADDR_MAX];
  struct sockaddr_storage upstream_addr;
  gw_framing framing;           /* for new sessions; sessions copy it */
  bool unfinished_pass;         /* listener unfinished_frame = "pass" */
  bool proxy_in;                /* proxy_protocol */
  uint8_t proxy_out;            /* upstream_proxy_protocol: 0, 1 or 2 */
  gw_cidr *proxy_from;          /* a copy: the config it came from goes */
  size_t nproxy_from;
  gw_phase *phases[GW_SIDES];   /* copies too, for new sessions */
  size_t nphases[GW_SIDES];
  gw_handlers *handlers;        /* stable for the life of the gw_script */
  gw_upstream *pool;            /* upstream servers for new sessions */
  gw_listener_counters lc;      /* slots in the app's registry */
  uint64_t *refused_proxy_from; /* sessions_refused{reason="proxy_protocol_from"} */
  uint32_t sessions;            /* live sessions that point here */
  bool listening;               /* tcp is open (not closed or closing) */
  bool handle_open;             /* until tcp's close callback */
  bool removed;                 /* gone from the config: free when idle */
};

/* Bytes read from one side. */
typedef struct gw_dir {
  gw_buf *rbuf;                 /* unconsumed bytes are data[start, end) */
  uint32_t start, end;
  uint64_t bytes;
  uint64_t partial_ms;          /* when the unfinished frame at start began
                                   to arrive; 0 while there is none */
  uint64_t partial_off;         /* its stream offset */
  bool eof;
  bool paused;                  /* read stopped for backpressure */
  uint8_t blocked;              /* bit `to`: the queue toward side `to`,
                                   which this side's frames feed, is above
                                   write_high_water; reads resume at 0 */
  bool held;                    /* whole frames left unprocessed at start
                                   while blocked: process() goes on from
                                   there when reading resumes */
} gw_dir;

/* Bytes waiting to be written toward one side, in order. */
typedef struct gw_out {
  uv_buf_t iov[GW_OUT_IOV];
  gw_buf *refs[GW_OUT_REFS];    /* one reference each, moved to the write */
  gw_buf *arena;                /* where copies go; also in refs */
  size_t bytes;                 /* in iov, not yet handed to libuv */
  uint8_t niov, nrefs;
} gw_out;

/* A write in flight; owns its buffer references until write_cb. */
typedef struct gw_wreq {
  uv_write_t req;
  struct gw_wreq *next_free;
  gw_session *session;
  gw_buf *refs[GW_OUT_REFS];
  uint8_t nrefs;
  uint8_t to;
} gw_wreq;

/* S_PREFACE: waiting for the client's PROXY header (proxy_protocol);
 * the upstream is dialled once it has come. */
enum { S_CONNECTING, S_OPEN, S_CLOSING, S_PREFACE };

struct gw_session {
  uv_tcp_t tcp[GW_SIDES];       /* [GW_CLIENT] accepted, [GW_SERVER] upstream */
  uv_timer_t timer;             /* connect, idle, and soft-close deadlines */
  uv_connect_t connect;
  uv_shutdown_t shutdown[GW_SIDES];
  gw_relay *relay;
  gw_listener *listener;
  gw_session *prev, *next;      /* relay->sessions */
  gw_session *dirty_next;       /* relay->dirty: has output to flush */
  gw_pipe pipe;                 /* framing, codecs: the protocol state */
  gw_script_session ss;
  gw_dir dir[GW_SIDES];         /* by the side read from */
  gw_out out[GW_SIDES];         /* by the side written to */
  gw_ipaddr peer;               /* the client's address */
  bool ip_counted;              /* in relay->iplimit */
  bool unfinished_pass;         /* the listener's, fixed at open */
  uint8_t proxy_out;            /* the listener's upstream_proxy_protocol */
  gw_ipaddr local;              /* where the client connected to */
  bool in_frame;                /* a handler of a frame from cur_side runs */
  uint8_t cur_side;
  bool echo[GW_SIDES];          /* handlers of frames from a side have sent
                                   toward that same side: its reads feed
                                   that queue too */
  uint64_t opened_ms, last_active_ms;
  uint8_t state;
  uint8_t handles;              /* open handles; freed when it reaches 0 */
  bool dirty;
  bool soft_close;              /* closing after output is written */
  bool counted;                 /* in its listener's sessions_open */
  bool has_op[GW_SIDES];        /* last_op[side] is known */
  uint32_t last_op[GW_SIDES];   /* opcode of the last frame handed to handlers
                                   from each side */
  gw_capture_flow *flow;        /* while a capture takes this session */
  gw_upstream_try *up_try;      /* choosing and dialling its server */
  gw_upstream_server *server;   /* once connected (upstream.c) */
  bool shut_sent[GW_SIDES], shut_done[GW_SIDES];
  char reason[128];
};

struct gw_relay {
  uv_loop_t *loop;
  gw_config *cfg;
  gw_pool pool;
  gw_script *script;
  gw_listener *listeners;
  gw_session *sessions;
  gw_session *dirty;
  gw_wreq *free_wreqs;
  size_t nfree_wreqs;
  uv_timer_t script_timer;
  uv_timer_t drain_timer;
  uint64_t next_id;
  uint32_t active;
  bool draining, closed;
  void (*drain_done)(gw_relay *r, void *ud);
  void *drain_ud;
  gw_metrics *registry;         /* the app's; collect hook registered there */
  const gw_gangway_families *fam;
  gw_metric *handler_frames;    /* gangway_handler_frames_total{listener} */
  gw_iplimit *iplimit;
  /* A capture under way (gw_relay_capture_start), NULL when none: the
   * sessions it takes use capture_driver instead of pipe_driver. */
  gw_capture *cap;
  gw_relay_capture_filter cap_filter;
  char cap_listener[GW_ADDR_MAX];
  void (*cap_done)(void *ud, int status);
  void *cap_ud;
  gw_capture *lua_cap;          /* a session:capture under way, or NULL */
  uint64_t lua_cap_session;
  uv_timer_t lua_cap_timer;     /* its end: time up, full, or session gone */
  gw_ratelimit session_lines;   /* session open/close and per-session lines */
  gw_ratelimit refusal_lines;   /* connections refused at accept */
  uv_timer_t log_timer;         /* prints what the limits suppressed */
};

static void lua_capture_timer(uv_timer_t *t);
static void lua_capture_end(gw_relay *r);
static void session_close(gw_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void capture_end_flow(gw_session *s);
static void capture_take(gw_relay *r, gw_session *s);
static void upstream_end(gw_session *s);
static void upstream_retry(gw_session *s, int status);

static void listener_free(gw_listener *l) {
  gw_upstream_retire(l->pool);
  gw_listener_counters_free(&l->lc);
  free(l->name);
  free(l->proxy_from);
  for (int i = 0; i < GW_SIDES; i++) free(l->phases[i]);
  free(l);
}

/* A listener gone from the config is freed once its handle is closed and
 * its last session has ended. */
static void listener_maybe_free(gw_listener *l) {
  if (!l->removed || l->sessions || l->handle_open) return;
  gw_listener **pp = &l->relay->listeners;
  while (*pp && *pp != l) pp = &(*pp)->next;
  if (*pp) *pp = l->next;
  listener_free(l);
}
static int flush_out(gw_session *s, gw_side to);
static void unblock_drained(gw_session *s, gw_side to);

static inline gw_side other(gw_side side) { return side == GW_CLIENT ? GW_SERVER : GW_CLIENT; }

static inline gw_side side_of(gw_session *s, const uv_handle_t *h) {
  return h == (const uv_handle_t *)&s->tcp[GW_CLIENT] ? GW_CLIENT : GW_SERVER;
}

/* ---- bounded logs ------------------------------------------------------ */

static void log_summaries(gw_relay *r) {
  if (r->session_lines.suppressed)
    gw_info("%" PRIu64 " session lines suppressed (log.session_lines_per_s = %u)",
            r->session_lines.suppressed, r->session_lines.per_s);
  if (r->refusal_lines.suppressed)
    gw_warn("%" PRIu64 " more connections refused, lines suppressed",
            r->refusal_lines.suppressed);
  r->session_lines.suppressed = r->refusal_lines.suppressed = 0;
}

static void log_timer_cb(uv_timer_t *t) {
  log_summaries(container_of(t, gw_relay, log_timer));
}

/* May a line limited by rl be written now? Past the limit the line is
 * counted, and a summary follows within a second. */
static bool log_allow(gw_relay *r, gw_ratelimit *rl) {
  if (gw_ratelimit_allow(rl, uv_now(r->loop))) {
    if (rl->suppressed) log_summaries(r);
    return true;
  }
  if (!r->closed && !uv_is_active((uv_handle_t *)&r->log_timer))
    uv_timer_start(&r->log_timer, log_timer_cb, 1000, 0);
  return false;
}

/* A line about one session (open, close, its errors), under
 * log.session_lines_per_s. */
#define session_log(s, level, event, fields, ...)                           \
  do {                                                                       \
    if (gw_log_enabled(level) && log_allow((s)->relay, &(s)->relay->session_lines)) \
      gw_log_event(level, event, fields, __VA_ARGS__);                       \
  } while (0)
/* The fields every session line carries (in JSON and journald; the text
 * line's sentence has them already). */
#define SESSION_ID(s) GW_F_HIDE(GW_F_U64("session", (s)->ss.id))

/* Errors that only mean the peer has gone (reset, or closed while we still
 * had something to say): the reason is what the peer did, not the call
 * that found out. */
static bool peer_gone(int status) {
  return status == UV_ECONNRESET || status == UV_ENOTCONN || status == UV_EPIPE;
}

static void side_failed(gw_session *s, gw_side side, const char *what, int status) {
  if (peer_gone(status) && s->reason[0])
    session_close(s, "%s", s->reason);
  else if (peer_gone(status))
    session_close(s, "%s reset the connection", gw_side_name(side));
  else
    session_close(s, "%s %s failed: %s", gw_side_name(side), what, uv_strerror(status));
}

/* ---- output batches ---------------------------------------------------- */

static void mark_dirty(gw_session *s) {
  if (s->dirty) return;
  s->dirty = true;
  s->dirty_next = s->relay->dirty;
  s->relay->dirty = s;
}

static void flush_dirty(gw_relay *r) {
  while (r->dirty) {
    gw_session *s = r->dirty;
    r->dirty = s->dirty_next;
    s->dirty = false;
    s->dirty_next = NULL;
    if (s->state == S_CLOSING) continue;
    for (int to = 0; to < GW_SIDES; to++)
      if (s->out[to].niov && flush_out(s, (gw_side)to) < 0) break;
    for (int to = 0; to < GW_SIDES && s->state == S_OPEN; to++) unblock_drained(s, (gw_side)to);
  }
}

static void out_release(gw_relay *r, gw_out *o) {
  for (unsigned i = 0; i < o->nrefs; i++) gw_buf_unref(&r->pool, o->refs[i]);
  o->niov = o->nrefs = 0;
  o->bytes = 0;
  o->arena = NULL;
}

/* Bytes queued toward a side: the batch and libuv's write queue. */
static size_t queued(gw_session *s, gw_side to) {
  return s->out[to].bytes + uv_stream_get_write_queue_size((uv_stream_t *)&s->tcp[to]);
}

/* Makes room for one more iovec and one more reference, flushing the batch
 * early if it is full. Fails only before the upstream is connected. */
static int out_room(gw_session *s, gw_side to) {
  gw_out *o = &s->out[to];
  if (o->niov < GW_OUT_IOV && o->nrefs < GW_OUT_REFS) return 0;
  int rc = flush_out(s, to);
  if (rc < 0) return rc;
  return o->niov ? -ENOBUFS : 0; /* still full: nowhere to write yet */
}

static bool out_has_ref(const gw_out *o, const gw_buf *b) {
  for (unsigned i = 0; i < o->nrefs; i++)
    if (o->refs[i] == b) return true;
  return false;
}

static void out_append(gw_out *o, const uint8_t *p, size_t len) {
  o->bytes += len;
  if (o->niov) {
    uv_buf_t *last = &o->iov[o->niov - 1];
    if ((const uint8_t *)last->base + last->len == p) {
      last->len += len;
      return;
    }
  }
  o->iov[o->niov++] = uv_buf_init((char *)p, (unsigned)len);
}

/* Queues len bytes at p, which lie in b, without copying them. */
static int out_ref(gw_session *s, gw_side to, gw_buf *b, const uint8_t *p, size_t len) {
  gw_out *o = &s->out[to];
  int rc = out_room(s, to);
  if (rc < 0) return rc;
  if (!out_has_ref(o, b)) {
    gw_buf_ref(b);
    o->refs[o->nrefs++] = b;
  }
  out_append(o, p, len);
  mark_dirty(s);
  return 0;
}

/* Queues a copy of len bytes (frames the script layer made). */
static int out_copy(gw_session *s, gw_side to, const uint8_t *p, size_t len) {
  gw_out *o = &s->out[to];
  int rc = out_room(s, to);
  if (rc < 0) return rc;
  if (!o->arena || o->arena->cap - o->arena->used < len) {
    /* out_room left a free reference slot for the new arena. */
    gw_buf *a = gw_buf_get(&s->relay->pool, len);
    if (!a) return -ENOMEM;
    o->refs[o->nrefs++] = a;
    o->arena = a;
  }
  uint8_t *dst = o->arena->data + o->arena->used;
  memcpy(dst, p, len);
  o->arena->used += (uint32_t)len;
  out_append(o, dst, len);
  mark_dirty(s);
  return 0;
}

static gw_wreq *wreq_get(gw_relay *r) {
  gw_wreq *w = r->free_wreqs;
  if (w) {
    r->free_wreqs = w->next_free;
    r->nfree_wreqs--;
    return w;
  }
  return malloc(sizeof *w);
}

static void wreq_put(gw_relay *r, gw_wreq *w) {
  for (unsigned i = 0; i < w->nrefs; i++) gw_buf_unref(&r->pool, w->refs[i]);
  if (r->nfree_wreqs < 1024) {
    w->next_free = r->free_wreqs;
    r->free_wreqs = w;
    r->nfree_wreqs++;
  } else {
    free(w);
  }
}

static void pause_reading(gw_session *s, gw_side side) {
  gw_dir *d = &s->dir[side];
  if (d->paused || d->eof) return;
  d->paused = true;
  uv_read_stop((uv_stream_t *)&s->tcp[side]);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void process(gw_session *s, gw_side side);
static void preface_read(gw_session *s, ssize_t nread);
static void track_partial(gw_session *s, gw_side side);
static void release_idle_rbuf(gw_session *s, gw_side side);

static void resume_reading(gw_session *s, gw_side side) {
  gw_dir *d = &s->dir[side];
  if (!d->paused || d->blocked || d->eof || s->state != S_OPEN || s->soft_close) return;
  d->paused = false;
  uv_read_start((uv_stream_t *)&s->tcp[side], alloc_cb, read_cb);
  if (d->held) { /* first the frames that were read before the stop */
    process(s, side);
    if (s->state != S_CLOSING) track_partial(s, side);
    flush_dirty(s->relay);
    if (s->state != S_CLOSING) release_idle_rbuf(s, side);
  }
}

/* Backpressure: reading from `reader` stops while any queue its frames
 * feed is above write_high_water, and resumes once all are below
 * write_low_water. Relayed frames feed the other side; a side whose
 * handlers answer toward it feeds its own queue too, so a peer that sends
 * and never reads is stopped by its own answers. */
static void set_blocked(gw_session *s, gw_side reader, gw_side to, bool on) {
  gw_dir *d = &s->dir[reader];
  uint8_t bit = (uint8_t)(1u << to);
  if (on) {
    d->blocked |= bit;
    pause_reading(s, reader);
  } else if (d->blocked & bit) {
    d->blocked &= (uint8_t)~bit;
    resume_reading(s, reader);
  }
}

/* A direction whose buffer holds nothing unconsumed and no write points into
 * gives it back to the pool, so an idle session holds no buffer. While
 * writes are in flight it keeps reading into the same buffer's free space:
 * queued bytes then cost about their own size in memory, not a whole
 * buffer per small read. */
static void release_idle_rbuf(gw_session *s, gw_side side) {
  gw_dir *d = &s->dir[side];
  if (d->rbuf && d->start == d->end && d->rbuf->refs == 1) {
    gw_buf_unref(&s->relay->pool, d->rbuf);
    d->rbuf = NULL;
    d->start = d->end = 0;
  }
}

/* Reading resumes from the sides that feed `to` once its queue is below
 * write_low_water: after a write completes, or a batch went out whole. */
static void unblock_drained(gw_session *s, gw_side to) {
  if (!((s->dir[GW_CLIENT].blocked | s->dir[GW_SERVER].blocked) >> to & 1)) return;
  if (queued(s, to) > s->relay->cfg->write_low_water) return;
  set_blocked(s, other(to), to, false);
  if (s->state == S_OPEN) set_blocked(s, to, to, false);
}

static void write_cb(uv_write_t *req, int status) {
  gw_wreq *w = container_of(req, gw_wreq, req);
  gw_session *s = w->session;
  gw_side to = (gw_side)w->to;
  wreq_put(s->relay, w);
  if (s->state != S_CLOSING) release_idle_rbuf(s, other(to));
  if (status < 0) {
    if (status != UV_ECANCELED) side_failed(s, to, "write", status);
    return;
  }
  if (s->state == S_CLOSING) return;
  unblock_drained(s, to);
}

/* uv_try_write's work through the socket calls: send(2) and sendmsg(2)
 * go straight to the socket where libuv's write(2) and writev(2) go
 * through the VFS first (fdget_pos, vfs_write, sock_write_iter): 1-2 %
 * less CPU per write and read on loopback (measured with 1 KiB writes; a
 * relayed small frame is mostly such syscalls). Only while libuv has
 * nothing queued for the stream, so that bytes keep their order;
 * uv_buf_t is laid out as struct iovec on Unix (uv/unix.h). */
_Static_assert(sizeof(uv_buf_t) == sizeof(struct iovec) &&
                   offsetof(uv_buf_t, base) == offsetof(struct iovec, iov_base) &&
                   offsetof(uv_buf_t, len) == offsetof(struct iovec, iov_len),
               "uv_buf_t is a struct iovec");

static int try_send(uv_stream_t *st, const uv_buf_t *bufs, unsigned n) {
  uv_os_fd_t fd;
  /* Behind queued bytes, shut down (uv_shutdown clears writable) or not
   * open: libuv's path, which queues or refuses as it always did. Never
   * connecting: flush_out waits for the upstream's connect. */
  if (uv_stream_get_write_queue_size(st) || !uv_is_writable(st) ||
      uv_fileno((uv_handle_t *)st, &fd) < 0)
    return UV_EAGAIN;
  ssize_t r;
  do {
    if (n == 1) {
      r = send(fd, bufs[0].base, bufs[0].len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      struct msghdr m = {.msg_iov = (struct iovec *)bufs, .msg_iovlen = n};
      r = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
  } while (r < 0 && errno == EINTR);
  if (r < 0) /* ENOBUFS: no room for now, as libuv takes it */
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS ? UV_EAGAIN : -errno;
  return (int)r;
}

/* Writes the batch toward `to` in one uv_write. */
static int flush_out(gw_session *s, gw_side to) {
  gw_out *o = &s->out[to];
  gw_relay *r = s->relay;
  if (!o->niov) return 0;
  if (s->state == S_CLOSING) {
    out_release(r, o);
    return -ECONNRESET;
  }
  if (to == GW_SERVER && s->state == S_CONNECTING) return 0; /* after connect */
  /* Most writes go out at once: then no request is made and the read
   * buffer is free for the next read straight away. */
  uv_stream_t *dst = (uv_stream_t *)&s->tcp[to];
  int n = try_send(dst, o->iov, o->niov);
  if (n < 0 && n != UV_EAGAIN) {
    out_release(r, o);
    side_failed(s, to, "write", n);
    return n;
  }
  unsigned first = 0;
  for (size_t left = n > 0 ? (size_t)n : 0; left && first < o->niov; first++) {
    if (o->iov[first].len > left) {
      o->iov[first].base += left;
      o->iov[first].len -= left;
      break;
    }
    left -= o->iov[first].len;
  }
  if (first == o->niov) {
    out_release(r, o);
    return 0;
  }
  gw_wreq *w = wreq_get(r);
  if (!w) {
    session_close(s, "out of memory");
    return -ENOMEM;
  }
  w->session = s;
  w->to = (uint8_t)to;
  w->nrefs = o->nrefs;
  memcpy(w->refs, o->refs, o->nrefs * sizeof o->refs[0]);
  int rc = uv_write(&w->req, dst, o->iov + first, o->niov - first, write_cb);
  o->niov = o->nrefs = 0;
  o->bytes = 0;
  o->arena = NULL;
  if (rc < 0) {
    wreq_put(r, w);
    side_failed(s, to, "write", rc);
    return rc;
  }
  if (uv_stream_get_write_queue_size(dst) > r->cfg->write_high_water) {
    set_blocked(s, other(to), to, true);
    if (s->echo[to]) set_blocked(s, to, to, true);
  }
  return 0;
}

/* ---- session lifecycle ------------------------------------------------- */

static void session_free(gw_session *s) {
  gw_relay *r = s->relay;
  if (s->dirty) { /* closed with output queued: off the flush list */
    gw_session **pp = &r->dirty;
    while (*pp != s) pp = &(*pp)->dirty_next;
    *pp = s->dirty_next;
  }
  for (int i = 0; i < GW_SIDES; i++) {
    if (s->dir[i].rbuf) gw_buf_unref(&r->pool, s->dir[i].rbuf);
    out_release(r, &s->out[i]);
  }
  gw_pipe_free(&s->pipe);
  if (s->counted) (*s->listener->lc.sessions_open)--;
  if (s->ip_counted) gw_iplimit_close(r->iplimit, (struct sockaddr *)&s->peer, uv_now(r->loop));
  gw_listener *l = s->listener;
  l->sessions--;
  free(s);
  r->active--;
  listener_maybe_free(l);
  if (r->draining && !r->active && r->drain_done) {
    uv_timer_stop(&r->drain_timer);
    void (*done)(gw_relay *, void *) = r->drain_done;
    r->drain_done = NULL;
    done(r, r->drain_ud);
  }
}

static void session_handle_closed(uv_handle_t *h) {
  gw_session *s = h->data;
  if (--s->handles == 0) session_free(s);
}

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, session_handle_closed);
}

static void session_close(gw_session *s, const char *fmt, ...) {
  if (s->state == S_CLOSING) return;
  gw_relay *r = s->relay;
  char reason[sizeof s->reason]; /* fmt's arguments may point at s->reason */
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, sizeof reason, fmt, ap);
  va_end(ap);
  memcpy(s->reason, reason, sizeof reason);
  s->state = S_CLOSING;
  gw_script_session_close(r->script, &s->ss, s->reason);

  session_log(s, GW_LOG_INFO, "session_close",
              GW_FIELDS(SESSION_ID(s), GW_F_STR("listener", s->listener->name),
                        GW_F_STR("client", s->ss.client), GW_F_STR("upstream", s->ss.upstream),
                        GW_F_U64("client_bytes", s->dir[GW_CLIENT].bytes),
                        GW_F_U64("server_bytes", s->dir[GW_SERVER].bytes),
                        GW_F_U64("client_frames", s->pipe.side[GW_CLIENT].frames),
                        GW_F_U64("server_frames", s->pipe.side[GW_SERVER].frames),
                        GW_F_U64("duration_ms", uv_now(r->loop) - s->opened_ms),
                        GW_F_QSTR("reason", s->reason)),
              "session %" PRIu64 " close", s->ss.id);
  if (s->flow) capture_end_flow(s);
  if (r->lua_cap && r->lua_cap_session == s->ss.id) /* its session is over */
    uv_timer_start(&r->lua_cap_timer, lua_capture_timer, 0, 0);

  if (s->prev) s->prev->next = s->next;
  else r->sessions = s->next;
  if (s->next) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  upstream_end(s);

  for (int i = 0; i < GW_SIDES; i++) out_release(r, &s->out[i]);
  close_handle((uv_handle_t *)&s->tcp[GW_CLIENT]);
  close_handle((uv_handle_t *)&s->tcp[GW_SERVER]);
  close_handle((uv_handle_t *)&s->timer);
}

/* A session ends once every FIN we sent is through and, unless a script
 * closed it, both sides have sent theirs. */
static void check_finished(gw_session *s) {
  if (s->state == S_CLOSING) return;
  for (int i = 0; i < GW_SIDES; i++)
    if (s->shut_sent[i] && !s->shut_done[i]) return;
  if (!s->soft_close && !(s->dir[GW_CLIENT].eof && s->dir[GW_SERVER].eof &&
                          s->shut_done[GW_CLIENT] && s->shut_done[GW_SERVER]))
    return;
  session_close(s, "%s", s->reason[0] ? s->reason : "closed");
}

static void shutdown_cb(uv_shutdown_t *req, int status) {
  gw_session *s = req->handle->data;
  gw_side side = side_of(s, (uv_handle_t *)req->handle);
  s->shut_done[side] = true;
  if (status < 0 && status != UV_ECANCELED && s->state != S_CLOSING) {
    side_failed(s, side, "shutdown", status);
    return;
  }
  check_finished(s);
}

/* Sends FIN toward side once everything queued for it is written. */
static void shutdown_side(gw_session *s, gw_side side) {
  if (s->shut_sent[side]) return;
  s->shut_sent[side] = true;
  if (flush_out(s, side) < 0) return;
  int rc = uv_shutdown(&s->shutdown[side], (uv_stream_t *)&s->tcp[side], shutdown_cb);
  if (rc < 0) side_failed(s, side, "shutdown", rc);
}

static void timer_cb(uv_timer_t *t);

/* A scripted close: stop reading, write what was emitted, FIN both sides,
 * then close (or after GW_SOFT_CLOSE_MS at most). */
static void session_close_soft(gw_session *s, const char *reason) {
  if (s->state == S_CLOSING || s->soft_close) return;
  snprintf(s->reason, sizeof s->reason, "%s", reason);
  s->soft_close = true;
  for (int i = 0; i < GW_SIDES; i++) {
    if (!s->dir[i].eof && s->state == S_OPEN) uv_read_stop((uv_stream_t *)&s->tcp[i]);
  }
  uv_timer_start(&s->timer, timer_cb, GW_SOFT_CLOSE_MS, 0);
  shutdown_side(s, GW_CLIENT);
  /* Before the upstream is up there is nothing to deliver to it; connect_cb
   * sends it what on_connect queued, if it connects in time. */
  if (s->state == S_OPEN) shutdown_side(s, GW_SERVER);
  if (s->state != S_CLOSING) check_finished(s);
}

/* Is the client's first whole frame still awaited (framed listeners)? */
static bool first_frame_pending(const gw_session *s, const gw_config *cfg) {
  return cfg->first_frame_ms && !s->pipe.side[GW_CLIENT].framing.raw &&
         !s->pipe.side[GW_CLIENT].frames &&
         !s->dir[GW_CLIENT].eof;
}

/* The next deadline of an open session: idle, an unfinished frame, the
 * client's first frame. Deadlines are checked lazily: the timer fires at
 * the earliest one known, and timer_cb looks at them all. */
static void session_arm(gw_session *s) {
  const gw_config *cfg = s->relay->cfg;
  uint64_t now = uv_now(s->relay->loop), next = UINT64_MAX;
  if (cfg->idle_ms) next = s->last_active_ms + cfg->idle_ms;
  for (int i = 0; i < GW_SIDES; i++)
    if (cfg->frame_ms && s->dir[i].partial_ms && s->dir[i].partial_ms + cfg->frame_ms < next)
      next = s->dir[i].partial_ms + cfg->frame_ms;
  if (first_frame_pending(s, cfg) && s->opened_ms + cfg->first_frame_ms < next)
    next = s->opened_ms + cfg->first_frame_ms;
  if (next == UINT64_MAX) uv_timer_stop(&s->timer);
  else uv_timer_start(&s->timer, timer_cb, next > now ? next - now : 0, 0);
}

static void timer_cb(uv_timer_t *t) {
  gw_session *s = container_of(t, gw_session, timer);
  const gw_config *cfg = s->relay->cfg;
  uint64_t now = uv_now(s->relay->loop);
  if (s->soft_close) {
    session_close(s, "%s (flush timed out)", s->reason);
    return;
  }
  if (s->state == S_CONNECTING) {
    upstream_retry(s, UV_ETIMEDOUT); /* the next server, or the session ends */
    return;
  }
  if (s->state == S_PREFACE) {
    session_close(s, "no PROXY header after %" PRIu64 " ms", now - s->opened_ms);
    return;
  }
  for (int i = 0; i < GW_SIDES; i++) {
    const gw_dir *d = &s->dir[i];
    if (cfg->frame_ms && d->partial_ms && now - d->partial_ms >= cfg->frame_ms) {
      session_close(s, "frame timeout: %u of %u bytes of a frame from the %s side after %u ms",
                    d->end - d->start, s->pipe.side[i].need, gw_side_name((gw_side)i),
                    cfg->frame_ms);
      return;
    }
  }
  if (first_frame_pending(s, cfg) && now - s->opened_ms >= cfg->first_frame_ms) {
    session_close(s, "first frame timeout: no whole frame from the client side after %u ms",
                  cfg->first_frame_ms);
    return;
  }
  if (cfg->idle_ms && now - s->last_active_ms >= cfg->idle_ms) {
    session_close(s, "idle timeout after %u ms", cfg->idle_ms);
    return;
  }
  session_arm(s);
}

/* After a read: notes when an unfinished frame began to arrive, so that
 * timeouts.frame_ms bounds how long it may take (a peer trickling a byte
 * at a time keeps a session active but never finishes a frame). */
static void track_partial(gw_session *s, gw_side side) {
  gw_dir *d = &s->dir[side];
  if (!gw_pipe_partial(&s->pipe, side, d->end - d->start) || d->held) {
    d->partial_ms = 0;
    return;
  }
  uint64_t off = s->pipe.side[side].offset;
  if (d->partial_ms && d->partial_off == off) return; /* the same frame */
  gw_relay *r = s->relay;
  d->partial_off = off;
  d->partial_ms = uv_now(r->loop);
  if (!r->cfg->frame_ms || s->soft_close || s->state != S_OPEN) return;
  if (!uv_is_active((uv_handle_t *)&s->timer) ||
      uv_timer_get_due_in(&s->timer) > r->cfg->frame_ms)
    uv_timer_start(&s->timer, timer_cb, r->cfg->frame_ms, 0);
}

/* ---- reading and framing ----------------------------------------------- */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  gw_session *s = h->data;
  gw_side side = side_of(s, h);
  gw_dir *d = &s->dir[side];
  gw_pool *pool = &s->relay->pool;
  uint32_t tail = d->end - d->start;
  size_t want = GW_MIN_READ;
  uint32_t need = s->pipe.side[side].stream_in ? 0 : s->pipe.side[side].need;
  if (need > tail && need - tail > want) want = need - tail;

  if (!d->rbuf) {
    d->rbuf = gw_buf_get(pool, want);
    d->start = d->end = 0;
  } else if (d->rbuf->cap - d->end < want) {
    /* Move only the partial tail: in place when nobody else points into
     * this buffer, else into a fresh one. */
    if (d->rbuf->refs == 1 && d->rbuf->cap >= tail + want) {
      memmove(d->rbuf->data, d->rbuf->data + d->start, tail);
    } else {
      gw_buf *nb = gw_buf_get(pool, tail + want);
      if (nb) memcpy(nb->data, d->rbuf->data + d->start, tail);
      gw_buf_unref(pool, d->rbuf);
      d->rbuf = nb;
    }
    d->start = 0;
    d->end = tail;
  }
  if (!d->rbuf) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init((char *)d->rbuf->data + d->end, d->rbuf->cap - d->end);
}

static void protocol_error(gw_session *s, gw_side side) {
  const gw_pipe *p = &s->pipe;
  (*s->listener->lc.protocol_errors)++;
  session_log(s, GW_LOG_WARN, "protocol_error",
              GW_FIELDS(SESSION_ID(s), GW_F_HIDE(GW_F_STR("side", gw_side_name(side))),
                        GW_F_HIDE(GW_F_U64("offset", p->error_offset)),
                        GW_F_HIDE(GW_F_STR("error", p->error_msg)),
                        GW_F_HIDE(GW_F_STR("framing", p->side[side].framing.name))),
              "session %" PRIu64 " protocol error from %s side at stream offset %" PRIu64
              ": %s (framing %s)", s->ss.id, gw_side_name(side), p->error_offset,
              p->error_msg, p->side[side].framing.name);
  session_close(s, "protocol error from %s side at offset %" PRIu64 ": %s", gw_side_name(side),
                p->error_offset, p->error_msg);
}

/* After a handled frame: are the queues that frames from `side` feed over
 * write_high_water? Then reading from it stops, and so does processing
 * what it already sent: a peer that floods and never reads holds at most
 * the high-water mark, one frame's answers and its read buffer. */
static bool over_high_water(gw_session *s, gw_side side) {
  uint32_t high = s->relay->cfg->write_high_water;
  if (queued(s, other(side)) > high) set_blocked(s, side, other(side), true);
  if (s->echo[side] && queued(s, side) > high) set_blocked(s, side, side, true);
  return s->dir[side].blocked != 0;
}

/* ---- handlers that wait (issue 14) ---- */

/* A handler of a frame from side waits: what side sends queues behind it
 * (reading goes on) up to limits.wait_bytes. Past that, the listener's
 * on_error applies to the waiting frame; true when the queue may move on. */
static bool wait_overflow(gw_session *s, gw_side side) {
  gw_dir *d = &s->dir[side];
  size_t queued_bytes = (size_t)(d->end - d->start) + s->pipe.side[side].dec.len;
  if (queued_bytes <= s->relay->cfg->wait_bytes) return false;
  char why[128];
  snprintf(why, sizeof why, "%zu bytes queued behind a waiting handler (limits.wait_bytes %u)",
           queued_bytes, s->relay->cfg->wait_bytes);
  if (gw_script_frame_abandon(s->relay->script, &s->ss, side, why) < 0 || s->state != S_OPEN)
    return false;
  gw_pipe_wait_done(&s->pipe, side);
  return true;
}

static void on_eof(gw_session *s, gw_side side);

/* The waiting handler is done: the frames queued behind it go on. */
static void host_frame_done(gw_script_session *ss, gw_side side) {
  gw_session *s = container_of(ss, gw_session, ss);
  gw_dir *d = &s->dir[side];
  gw_pipe_wait_done(&s->pipe, side);
  if (s->state != S_OPEN || s->soft_close) return; /* closing: nothing more is processed */
  if (!d->paused && d->held) {
    process(s, side);
    if (s->state != S_CLOSING) track_partial(s, side);
  }
  if (s->state != S_CLOSING && d->eof && !gw_pipe_waiting(&s->pipe, side)) on_eof(s, side);
  flush_dirty(s->relay);
  if (s->state != S_CLOSING) release_idle_rbuf(s, side);
  if (s->state != S_CLOSING && d->eof) check_finished(s);
}

static void session_connect(gw_session *s);

/* Did the client reset while on_connect waited? Nothing reads it before
 * the connect: a peek tells, so that no upstream is dialled for a client
 * gone (a flood of connect-and-reset would make one connect each). */
static bool client_reset(gw_session *s) {
  uv_os_fd_t fd;
  char c;
  if (uv_fileno((uv_handle_t *)&s->tcp[GW_CLIENT], &fd) < 0) return false;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && errno != EAGAIN &&
         errno != EWOULDBLOCK && errno != EINTR;
}

/* An on_connect that waited is done. */
static void host_open_done(gw_script_session *ss, int rc) {
  gw_session *s = container_of(ss, gw_session, ss);
  if (s->state == S_CLOSING) return;
  if (rc < 0) {
    (*s->listener->lc.refused[GW_REFUSED_SCRIPT])++;
    session_close_soft(s, "refused by on_connect");
  } else if (client_reset(s)) {
    session_close(s, "client reset the connection");
  } else {
    session_connect(s);
  }
  flush_dirty(s->relay);
}

static void host_flush(void *host) { flush_dirty(host); }

static const gw_wait_ops wait_ops = {host_frame_done, host_open_done, host_flush};

static inline void process_frames(gw_session *s, gw_side side) {
  gw_dir *d = &s->dir[side];
  uint64_t frames = s->pipe.side[side].frames;
  d->held = false;
  s->in_frame = true;
  s->cur_side = (uint8_t)side;
  int rc;
  do /* past limits.wait_bytes behind a waiting handler, on_error applies to it */
    rc = gw_pipe_input(&s->pipe, side, d->rbuf ? d->rbuf->data : NULL, &d->start, d->end);
  while (rc == GW_PIPE_WAIT && wait_overflow(s, side));
  s->in_frame = false;
  *s->listener->lc.frames[side] += s->pipe.side[side].frames - frames;
  if (rc == GW_PIPE_HELD)
    d->held = d->start < d->end || s->pipe.side[side].dec.len;
  else if (rc == GW_PIPE_WAIT)
    d->held = true; /* queued behind a waiting handler: no frame timeout */
  else if (rc == -EPROTO)
    protocol_error(s, side);
  else if (rc < 0 && s->state != S_CLOSING && !s->soft_close)
    session_close(s, "handler failed: %s", strerror(-rc));
}

/* Handlers may run: their time goes to this listener's histogram (their
 * errors and timeouts the script layer counts itself, wherever they
 * happen: gw_script_count_errors). Apart, so that frames nobody handles
 * do not pay for it. */
static __attribute__((noinline)) void process_handled(gw_session *s, gw_side side) {
  gw_script_set_handler_histogram(s->relay->script, s->listener->lc.handler_time);
  process_frames(s, side);
}

/* Runs what was read from side through the session's pipeline: frames
 * nobody handles come back as runs to write from the read buffer, the rest
 * through the script layer. */
static void process(gw_session *s, gw_side side) {
  if (s->ss.handlers && s->ss.handlers->any[side]) process_handled(s, side);
  else process_frames(s, side);
}

static void on_eof(gw_session *s, gw_side side) {
  gw_dir *d = &s->dir[side];
  d->eof = true;
  if (!s->reason[0]) snprintf(s->reason, sizeof s->reason, "%s closed", gw_side_name(side));
  if (gw_pipe_waiting(&s->pipe, side)) return; /* the queue behind a waiting
                                                  handler first: host_frame_done */
  /* A frame cut short by FIN. A sanitizing proxy does not hand on bytes
   * no handler saw; unfinished_frame = "pass" does, as a direct connection
   * would, and lets the peer's own parser judge them. */
  size_t n = gw_pipe_finish(&s->pipe, side, d->rbuf ? d->rbuf->data : NULL, &d->start, d->end,
                            s->unfinished_pass);
  if (n && !s->unfinished_pass)
    session_log(s, GW_LOG_INFO, "unfinished_frame",
                GW_FIELDS(SESSION_ID(s), GW_F_HIDE(GW_F_U64("bytes", n)),
                          GW_F_HIDE(GW_F_STR("side", gw_side_name(side)))),
                "session %" PRIu64 " dropped %zu bytes of an unfinished frame from the %s side "
                "at its FIN", s->ss.id, n, gw_side_name(side));
  d->partial_ms = 0;
  shutdown_side(s, other(side));
}

static void read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  gw_session *s = st->data;
  gw_side side = side_of(s, (uv_handle_t *)st);
  gw_dir *d = &s->dir[side];
  gw_relay *r = s->relay;

  if (s->state == S_PREFACE) {
    preface_read(s, nread);
    if (s->state != S_CLOSING) release_idle_rbuf(s, side);
    return;
  }
  if (nread > 0) {
    d->end += (uint32_t)nread;
    d->bytes += (uint64_t)nread;
    *s->listener->lc.bytes[side] += (uint64_t)nread;
    s->last_active_ms = uv_now(r->loop);
    process(s, side);
    if (s->state != S_CLOSING) track_partial(s, side);
  } else if (nread == UV_EOF) {
    on_eof(s, side);
  } else if (nread < 0) {
    if (nread == UV_ENOBUFS) session_close(s, "out of memory for %s read", gw_side_name(side));
    else side_failed(s, side, "read", (int)nread);
  }
  flush_dirty(r);
  if (s->state != S_CLOSING) release_idle_rbuf(s, side);
  if (s->state != S_CLOSING && d->eof) check_finished(s);
}

/* ---- the pipeline's driver --------------------------------------------- */

/* Bytes that lie in the read buffer of the other side: referenced. */
static int drv_pass(void *ud, gw_side to, const uint8_t *p, size_t len) {
  gw_session *s = ud;
  return out_ref(s, to, s->dir[other(to)].rbuf, p, len);
}

static int drv_copy(void *ud, gw_side to, const uint8_t *p, size_t len) {
  return out_copy(ud, to, p, len);
}

static bool drv_hold(void *ud, gw_side from) { return over_high_water(ud, from); }

/* A frame handed to handlers: its opcode is the session's last one from
 * that side (GET /sessions). */
static void drv_before(void *ud, gw_side from, const uint8_t *frame, size_t len) {
  gw_session *s = ud;
  (void)frame;
  (void)len;
  const gw_frame_info *fi = s->pipe.cur_fi; /* as the pipeline cut it */
  s->has_op[from] = fi->has_opcode;
  s->last_op[from] = fi->opcode;
}

static const gw_pipe_driver pipe_driver = {drv_pass, drv_copy, drv_hold, drv_before, NULL};

/* ---- capture --------------------------------------------------------------- */

static uint64_t wall_us(void) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

/* The capture is over (full, or a write failed): nothing more is written,
 * and the app hears of it once, from the loop (not from inside a write). */
static void capture_failed(gw_relay *r, int rc) {
  if (!r->cap_done) return;
  void (*done)(void *, int) = r->cap_done;
  r->cap_done = NULL;
  done(r->cap_ud, rc);
}

/* Writes what goes out toward `to` (from the other side, as the flow sees
 * it): whole, or only the frames of the filter's opcode. */
static void capture_bytes(gw_session *s, gw_side from, const uint8_t *p, size_t len,
                          bool original) {
  gw_relay *r = s->relay;
  if (!s->flow || !r->cap || !r->cap_done) return;
  uint64_t ts = wall_us();
  int rc = 0;
  if (!r->cap_filter.has_opcode) {
    rc = original ? gw_capture_original(r->cap, s->flow, from, p, len, ts)
                  : gw_capture_frame(r->cap, s->flow, from, p, len, ts);
  } else {
    const gw_framing *f = &s->pipe.side[from].framing;
    gw_frame_info fi;
    while (rc == 0 && len && gw_frame_next(f, from, p, len, &fi) == 1) {
      if (fi.has_opcode && fi.opcode == r->cap_filter.opcode)
        rc = original ? gw_capture_original(r->cap, s->flow, from, p, fi.len, ts)
                      : gw_capture_frame(r->cap, s->flow, from, p, fi.len, ts);
      p += fi.len;
      len -= fi.len;
    }
  }
  if (rc != 0) capture_failed(r, rc);
}

static int cap_pass(void *ud, gw_side to, const uint8_t *p, size_t len) {
  int rc = drv_pass(ud, to, p, len);
  if (rc == 0) capture_bytes(ud, other(to), p, len, false);
  return rc;
}

static int cap_copy(void *ud, gw_side to, const uint8_t *p, size_t len) {
  int rc = drv_copy(ud, to, p, len);
  if (rc == 0) capture_bytes(ud, other(to), p, len, false);
  return rc;
}

static void cap_before(void *ud, gw_side from, const uint8_t *frame, size_t len) {
  gw_session *s = ud;
  drv_before(ud, from, frame, len);
  if (s->relay->cap_filter.originals) capture_bytes(s, from, frame, len, true);
}

static const gw_pipe_driver capture_driver = {cap_pass, cap_copy, drv_hold, cap_before, NULL};

/* Does the capture take session s? Then it gets a flow and the capturing
 * driver. */
static void capture_take(gw_relay *r, gw_session *s) {
  const gw_relay_capture_filter *f = &r->cap_filter;
  if (s->flow || (f->session && s->ss.id != f->session) ||
      (f->listener && strcmp(f->listener, s->listener->name) != 0))
    return;
  gw_capture_flow *flow = calloc(1, sizeof *flow);
  if (!flow) return;
  struct sockaddr_storage up = s->listener->upstream_addr;
  if (s->up_try) gw_upstream_addr(s->up_try, &up); /* where it dials, if known */
  int ulen = sizeof up;
  if (s->server) uv_tcp_getpeername(&s->tcp[GW_SERVER], (struct sockaddr *)&up, &ulen);
  if (gw_capture_flow_init(flow, (struct sockaddr *)&s->peer, (struct sockaddr *)&up) < 0) {
    free(flow);
    return;
  }
  s->flow = flow;
  s->pipe.drv = &capture_driver;
}

static void capture_end_flow(gw_session *s) {
  gw_relay *r = s->relay;
  if (r->cap) {
    int rc = gw_capture_flow_end(r->cap, s->flow, s->dir[GW_CLIENT].eof ? GW_CLIENT : GW_SERVER,
                                 wall_us());
    if (rc != 0) capture_failed(r, rc);
  }
  free(s->flow);
  s->flow = NULL;
  s->pipe.drv = &pipe_driver;
}

int gw_relay_capture_start(gw_relay *r, gw_capture *cap, const gw_relay_capture_filter *f,
                           void (*done)(void *ud, int status), void *ud) {
  if (r->cap) return -EBUSY;
  r->cap = cap;
  r->cap_filter = *f;
  if (f->listener) {
    snprintf(r->cap_listener, sizeof r->cap_listener, "%s", f->listener);
    r->cap_filter.listener = r->cap_listener;
  }
  r->cap_done = done;
  r->cap_ud = ud;
  /* A session still waiting for its PROXY header is taken once it has
   * its client's address (session_begin). */
  for (gw_session *s = r->sessions; s; s = s->next)
    if (s->state != S_CLOSING && s->state != S_PREFACE) capture_take(r, s);
  return 0;
}

void gw_relay_capture_stop(gw_relay *r) {
  if (!r->cap) return;
  for (gw_session *s = r->sessions; s; s = s->next)
    if (s->flow) capture_end_flow(s);
  r->cap = NULL;
  r->cap_done = NULL;
}

/* ---- session:capture ------------------------------------------------------ */

/* Ends a script's capture: its file is whole and closed. */
static void lua_capture_end(gw_relay *r) {
  if (!r->lua_cap) return;
  if (r->cap == r->lua_cap) gw_relay_capture_stop(r);
  uint64_t packets, bytes;
  gw_capture_info(r->lua_cap, &packets, &bytes);
  const char *why = gw_capture_stopped(r->lua_cap);
  gw_info("capture of session %" PRIu64 " ended: %" PRIu64 " packets, %" PRIu64 " bytes%s%s",
          r->lua_cap_session, packets, bytes, why ? ", stopped: " : "", why ? why : "");
  gw_capture_close(r->lua_cap);
  r->lua_cap = NULL;
  uv_timer_stop(&r->lua_cap_timer);
}

static void lua_capture_timer(uv_timer_t *t) {
  lua_capture_end(container_of(t, gw_relay, lua_cap_timer));
}

/* Full or failed, from inside a write: end it from the loop. */
static void lua_capture_done(void *ud, int status) {
  (void)status;
  gw_relay *r = ud;
  uv_timer_start(&r->lua_cap_timer, lua_capture_timer, 0, 0);
}

static int host_capture(gw_script_session *ss, const char *name, uint32_t seconds,
                        uint32_t max_mb, bool originals, char *err, size_t errlen) {
  gw_session *s = container_of(ss, gw_session, ss);
  gw_relay *r = s->relay;
  const char *dir = r->cfg->capture_dir;
  if (!dir || !*dir) {
    snprintf(err, errlen, "capture_dir is not set in the config");
    return -EPERM;
  }
  if (r->cap || r->closed || s->state == S_CLOSING) {
    snprintf(err, errlen, r->cap ? "another capture is running" : "shutting down");
    return -EBUSY;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.pcap", dir, name);
  gw_capture_limits lim = {.max_bytes = (uint64_t)max_mb << 20, .max_seconds = seconds};
  gw_capture *cap = gw_capture_open(path, &lim, err, errlen);
  if (!cap) return -EIO;
  gw_relay_capture_filter f = {.session = ss->id, .originals = originals};
  int rc = gw_relay_capture_start(r, cap, &f, lua_capture_done, r);
  if (rc < 0) {
    gw_capture_close(cap);
    snprintf(err, errlen, "cannot start: %s", strerror(-rc));
    return rc;
  }
  r->lua_cap = cap;
  r->lua_cap_session = ss->id;
  uv_timer_start(&r->lua_cap_timer, lua_capture_timer, (uint64_t)seconds * 1000, 0);
  gw_info("capture of session %" PRIu64 " to %s started by a script (%u s, %u MiB at most)",
          ss->id, path, seconds, max_mb);
  return 0;
}

/* ---- connecting -------------------------------------------------------- */

static void connect_cb(uv_connect_t *req, int status) {
  gw_session *s = container_of(req, gw_session, connect);
  gw_relay *r = s->relay;
  if (status == UV_ECANCELED || s->state == S_CLOSING) return;
  if (status < 0) {
    upstream_retry(s, status);
    return;
  }
  s->server = gw_upstream_connected(s->up_try);
  s->up_try = NULL;
  s->state = S_OPEN;
  s->last_active_ms = uv_now(r->loop);
  uv_tcp_nodelay(&s->tcp[GW_SERVER], 1);
  if (s->soft_close) { /* closed while connecting: deliver what was sent,
                          under the soft-close deadline already running */
    shutdown_side(s, GW_SERVER);
    return;
  }
  session_arm(s);
  /* A side paused by what on_connect queued stays paused until the queue it
   * feeds drains (write_cb resumes it), unless that already happened. */
  for (int i = 0; i < GW_SIDES; i++) {
    gw_dir *d = &s->dir[i];
    for (int to = 0; to < GW_SIDES; to++)
      if ((d->blocked >> to & 1) && queued(s, (gw_side)to) <= r->cfg->write_low_water)
        d->blocked &= (uint8_t)~(1u << to);
    if (d->paused && !d->blocked) d->paused = false;
    if (!d->paused) uv_read_start((uv_stream_t *)&s->tcp[i], alloc_cb, read_cb);
  }
  /* What the client sent right behind its PROXY header waits in its
   * buffer: it goes first. */
  gw_dir *cd = &s->dir[GW_CLIENT];
  if (cd->rbuf && cd->end > cd->start && !cd->paused) {
    process(s, GW_CLIENT);
    if (s->state != S_CLOSING) track_partial(s, GW_CLIENT);
  }
  if (s->out[GW_SERVER].niov) mark_dirty(s);
  flush_dirty(r);
}

static void refuse_cb(uv_handle_t *h) { free(h); }
static void refuse(gw_session *s, uint64_t *counter, const char *why);
static bool ip_admit(gw_session *s);
static void session_begin(gw_session *s);

static void accept_cb(uv_stream_t *server, int status) {
  gw_listener *l = container_of(server, gw_listener, tcp);
  gw_relay *r = l->relay;
  if (status < 0) {
    gw_warn("listener %s: accept failed: %s", l->name, uv_strerror(status));
    return;
  }
  if (r->cfg->max_sessions && r->active >= r->cfg->max_sessions) {
    /* Take it off the backlog and close it, or libuv keeps calling us. */
    uv_tcp_t *t = malloc(sizeof *t);
    if (!t) return;
    uv_tcp_init(r->loop, t);
    if (uv_accept(server, (uv_stream_t *)t) == 0) {
      (*l->lc.refused[GW_REFUSED_MAX_SESSIONS])++;
      if (log_allow(r, &r->refusal_lines))
        gw_warn("listener %s: session limit %u reached (limits.max_sessions), connection refused",
                l->name, r->cfg->max_sessions);
    }
    uv_close((uv_handle_t *)t, refuse_cb);
    return;
  }
  gw_session *s = calloc(1, sizeof *s);
  if (!s) return;
  s->relay = r;
  s->listener = l;
  s->unfinished_pass = l->unfinished_pass;
  gw_pipe_init(&s->pipe, &l->framing, r->script, &s->ss, &pipe_driver, s);
  for (int i = 0; i < GW_SIDES; i++) {
    s->ss.framing[i] = &s->pipe.side[i].framing;
    if (l->nphases[i]) gw_pipe_set_phases(&s->pipe, (gw_side)i, l->phases[i], l->nphases[i]);
  }
  uv_tcp_init(r->loop, &s->tcp[GW_CLIENT]);
  s->tcp[GW_CLIENT].data = s;
  s->handles = 1;
  l->sessions++;
  r->active++;
  int rc = uv_accept(server, (uv_stream_t *)&s->tcp[GW_CLIENT]);
  if (rc < 0) {
    gw_warn("listener %s: accept failed: %s", l->name, uv_strerror(rc));
    s->state = S_CLOSING;
    uv_close((uv_handle_t *)&s->tcp[GW_CLIENT], session_handle_closed);
    return;
  }
  int plen = sizeof s->peer;
  if (uv_tcp_getpeername(&s->tcp[GW_CLIENT], (struct sockaddr *)&s->peer, &plen) == 0)
    gw_format_addr((struct sockaddr *)&s->peer, s->ss.client, sizeof s->ss.client);
  else
    snprintf(s->ss.client, sizeof s->ss.client, "?");
  if (l->proxy_out) { /* only a PROXY header toward the upstream names it */
    plen = sizeof s->local;
    uv_tcp_getsockname(&s->tcp[GW_CLIENT], (struct sockaddr *)&s->local, &plen);
  }
  if (l->proxy_in && l->nproxy_from &&
      !gw_cidr_match(l->proxy_from, l->nproxy_from, (struct sockaddr *)&s->peer)) {
    refuse(s, l->refused_proxy_from, "not in proxy_protocol_from");
    return;
  }
  /* Behind a load balancer the client's address comes in the PROXY
   * header: per-address limits wait for it. */
  if (!l->proxy_in && !ip_admit(s)) return;
  s->proxy_out = l->proxy_out;
  uv_tcp_init(r->loop, &s->tcp[GW_SERVER]);
  s->tcp[GW_SERVER].data = s;
  uv_timer_init(r->loop, &s->timer);
  s->timer.data = s;
  s->handles = 3;
  uv_tcp_nodelay(&s->tcp[GW_CLIENT], 1);

  s->ss.id = ++r->next_id;
  (*l->lc.sessions_total)++;
  (*l->lc.sessions_open)++;
  s->counted = true;
  /* until session_begin has the pool's choice (a PROXY header may come first) */
  snprintf(s->ss.upstream, sizeof s->ss.upstream, "%.63s", l->upstream);
  s->opened_ms = s->last_active_ms = uv_now(r->loop);
  s->next = r->sessions;
  if (r->sessions) r->sessions->prev = s;
  r->sessions = s;
  if (l->proxy_in) {
    s->state = S_PREFACE;
    const gw_config *cfg = r->cfg;
    uv_timer_start(&s->timer, timer_cb, cfg->first_frame_ms ? cfg->first_frame_ms : cfg->connect_ms, 0);
    uv_read_start((uv_stream_t *)&s->tcp[GW_CLIENT], alloc_cb, read_cb);
    return;
  }
  session_begin(s);
}

/* ---- the PROXY protocol --------------------------------------------------- */

/* Reads the client's PROXY header; once it is whole, the session goes on
 * with the address it names, from the bytes after it. */
static void preface_read(gw_session *s, ssize_t nread) {
  gw_dir *d = &s->dir[GW_CLIENT];
  if (nread < 0) {
    session_close(s, "client %s before its PROXY header",
                  nread == UV_EOF ? "closed" : "reset the connection");
    return;
  }
  d->end += (uint32_t)nread;
  d->bytes += (uint64_t)nread;
  *s->listener->lc.bytes[GW_CLIENT] += (uint64_t)nread;
  gw_proxy_info info;
  char msg[160];
  int n = gw_proxy_parse(d->rbuf->data + d->start, d->end - d->start, &info, msg, sizeof msg);
  if (n == -EAGAIN) return;
  if (n < 0) {
    (*s->listener->lc.protocol_errors)++;
    session_close(s, "bad PROXY header: %s", msg);
    return;
  }
  d->start += (uint32_t)n;
  uv_read_stop((uv_stream_t *)&s->tcp[GW_CLIENT]); /* again once connected */
  if (!info.local) {
    ipaddr_set(&s->peer, &info.src);
    ipaddr_set(&s->local, &info.dst);
    gw_format_addr((struct sockaddr *)&s->peer, s->ss.client, sizeof s->ss.client);
  }
  if (!ip_admit(s)) return;
  uv_timer_stop(&s->timer);
  session_begin(s);
}

/* Writes the PROXY header toward the upstream first: the client's address
 * and the one it connected to. */
static void preface_send(gw_session *s) {
  uint8_t hdr[GW_PROXY_V1_MAX + 1];
  const struct sockaddr *src = (struct sockaddr *)&s->peer, *dst = (struct sockaddr *)&s->local;
  int n = s->proxy_out == 1 ? gw_proxy_write_v1(src, dst, hdr, sizeof hdr)
                            : gw_proxy_write_v2(src, dst, hdr, sizeof hdr);
  if (n > 0) out_copy(s, GW_SERVER, hdr, (size_t)n);
}

/* ---- admission ----------------------------------------------------------- */

/* A connection closed before it became a session; counter: its reason's
 * (NULL: not counted). */
static void refuse(gw_session *s, uint64_t *counter, const char *why) {
  gw_relay *r = s->relay;
  if (counter) (*counter)++;
  if (log_allow(r, &r->refusal_lines))
    gw_warn("listener %s: connection from %s refused: %s", s->listener->name, s->ss.client, why);
  if (s->state == S_PREFACE) { /* a session already: close it as one */
    session_close(s, "refused: %s", why);
    return;
  }
  s->state = S_CLOSING;
  uv_close((uv_handle_t *)&s->tcp[GW_CLIENT], session_handle_closed);
}

/* Per-address limits; false if refused (and closed). */
static bool ip_admit(gw_session *s) {
  gw_relay *r = s->relay;
  gw_ip_verdict iv = gw_iplimit_open(r->iplimit, (struct sockaddr *)&s->peer, uv_now(r->loop));
  if (iv == GW_IP_OK) {
    s->ip_counted = true;
    return true;
  }
  uint64_t *const *refused = s->listener->lc.refused;
  if (iv == GW_IP_TOO_MANY)
    refuse(s, refused[GW_REFUSED_SESSIONS_PER_IP], "limits.sessions_per_ip reached");
  else if (iv == GW_IP_TOO_FAST)
    refuse(s, refused[GW_REFUSED_NEW_PER_IP], "limits.new_sessions_per_ip_per_s exceeded");
  else
    refuse(s, NULL, "out of memory");
  return false;
}

/* The session proper: logged, handed to on_connect, and its upstream
 * dialled. */
static void session_connect(gw_session *s);
static void session_begin(gw_session *s) {
  gw_relay *r = s->relay;
  gw_listener *l = s->listener;
  s->state = S_CONNECTING;
  /* The pool's choice for this client; on_connect may route it elsewhere. */
  if (!l->pool || !(s->up_try = gw_upstream_try_new(l->pool, &s->peer.sa))) {
    session_close(s, "out of memory");
    return;
  }
  snprintf(s->ss.upstream, sizeof s->ss.upstream, "%s",
           gw_upstream_server_name(gw_upstream_current(s->up_try)));
  session_log(s, GW_LOG_INFO, "session_open",
              GW_FIELDS(SESSION_ID(s), GW_F_STR("listener", l->name),
                        GW_F_STR("client", s->ss.client), GW_F_STR("upstream", s->ss.upstream)),
              "session %" PRIu64 " open", s->ss.id);
  if (s->proxy_out) preface_send(s);
  if (r->cap) capture_take(r, s);
  int opened = gw_script_session_start(r->script, l->handlers, &s->ss);
  if (opened < 0) {
    (*l->lc.refused[GW_REFUSED_SCRIPT])++;
    /* Whatever on_connect sent first ("server full") still reaches the
     * client; the upstream is never dialled. */
    session_close_soft(s, "refused by on_connect");
    return;
  }
  if (s->state == S_CLOSING) return;
  if (opened == GW_SCRIPT_PENDING) { /* on_connect waits: host_open_done connects */
    flush_dirty(r);
    return;
  }
  session_connect(s);
}

/* ---- upstream choice (upstream.c) -----------------------------------------
 * After on_connect: the chosen server is dialled; a failed or timed-out
 * attempt closes the server-side handle and dials the next server, each at
 * most once, all within timeouts.connect_ms; what on_connect queued toward
 * the server waits in out[GW_SERVER] for whichever server accepts. */

static void upstream_dial(gw_session *s);

/* Once on_connect is done with the session. */
static void session_connect(gw_session *s) {
  gw_relay *r = s->relay;
  gw_upstream_try_start(s->up_try, uv_now(r->loop), r->cfg->connect_ms);
  upstream_dial(s);
  flush_dirty(r); /* anything on_connect sent toward the client */
}

static void upstream_ready(void *ud) { /* the server's name has resolved, or not */
  gw_session *s = ud;
  if (s->state == S_CONNECTING) upstream_dial(s);
}

static void upstream_dial(gw_session *s) {
  gw_relay *r = s->relay;
  gw_upstream_try *t = s->up_try;
  snprintf(s->ss.upstream, sizeof s->ss.upstream, "%s",
           gw_upstream_server_name(gw_upstream_current(t)));
  struct sockaddr_storage addr;
  int rc = gw_upstream_addr(t, &addr);
  uint64_t ms = gw_upstream_attempt_ms(t, uv_now(r->loop));
  if (rc == -EAGAIN) { /* its first resolution: wait for it, within the budget */
    gw_upstream_wait(t, upstream_ready, s);
  } else if (rc == 0) {
    rc = uv_tcp_connect(&s->connect, &s->tcp[GW_SERVER], (struct sockaddr *)&addr, connect_cb);
  }
  if (rc < 0 && rc != -EAGAIN) {
    upstream_retry(s, rc);
    return;
  }
  if (!s->soft_close) uv_timer_start(&s->timer, timer_cb, ms ? ms : 1, 0);
}

/* A fresh handle for the next attempt, or the session's end. */
static void upstream_handle_closed(uv_handle_t *h) {
  gw_session *s = h->data;
  if (s->state == S_CLOSING) {
    session_handle_closed(h);
    return;
  }
  uv_tcp_init(s->relay->loop, &s->tcp[GW_SERVER]);
  s->tcp[GW_SERVER].data = s;
  upstream_dial(s);
}

/* The current server failed (status) or took too long: the next one. */
static void upstream_retry(gw_session *s, int status) {
  gw_relay *r = s->relay;
  gw_upstream_try *t = s->up_try;
  if (!t || !gw_upstream_try_started(t)) {
    session_close(s, "upstream connect timeout after %u ms", r->cfg->connect_ms);
    return;
  }
  session_log(s, GW_LOG_WARN, "connect_failed",
              GW_FIELDS(SESSION_ID(s), GW_F_HIDE(GW_F_STR("upstream", s->ss.upstream)),
                        GW_F_HIDE(GW_F_STR("error", uv_strerror(status)))),
              "session %" PRIu64 " upstream %s: connect failed: %s", s->ss.id, s->ss.upstream,
              uv_strerror(status));
  bool spent = !gw_upstream_attempt_ms(t, uv_now(r->loop));
  if (!gw_upstream_failover(t, status) || spent) {
    if (status == UV_ETIMEDOUT)
      session_close(s, "upstream connect timeout after %u ms", r->cfg->connect_ms);
    else
      session_close(s, "upstream connect failed: %s", uv_strerror(status));
    return;
  }
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->tcp[GW_SERVER], upstream_handle_closed);
}

/* The session lets go of its server (or of its choice, while connecting). */
static void upstream_end(gw_session *s) {
  gw_upstream_try_free(s->up_try);
  s->up_try = NULL;
  gw_upstream_release(s->server);
  s->server = NULL;
}

/* ---- script host ------------------------------------------------------- */

static int host_emit(gw_script_session *ss, gw_side to, const uint8_t *data, size_t len) {
  gw_session *s = container_of(ss, gw_session, ss);
  if (s->state == S_CLOSING) return -ECONNRESET;
  if (s->shut_sent[to]) {
    /* That side has had our FIN: nothing more can reach it. The script
     * layer takes the session as closed now, so close it for real. */
    if (!s->soft_close) session_close(s, "a handler sent to the %s side after its end", gw_side_name(to));
    return -ECONNRESET;
  }
  /* Whatever produced them (relayed frames, replacements, sends, timers),
   * bytes queued toward a side are bounded: past write_max the session
   * goes, rather than gangway's memory. */
  /* The script layer drops a sent frame refused so and closes the session
   * if it was the frame being handled, which must pass. */
  if (queued(s, to) + len > s->relay->cfg->write_max) {
    if (data != s->pipe.cur_frame) (*s->listener->lc.injected_refused)++;
    return -ENOBUFS;
  }
  if (s->in_frame && s->cur_side == to) s->echo[to] = true;
  int rc = gw_pipe_output(&s->pipe, to, data, len);
  if (rc < 0 && rc != -ECONNRESET) session_close(s, "cannot queue frame: %s", strerror(-rc));
  return rc;
}

static void host_close(gw_script_session *ss, const char *reason) {
  gw_session *s = container_of(ss, gw_session, ss);
  session_close_soft(s, reason && *reason ? reason : "closed by script");
}

static uint64_t host_now(void *host) { return uv_now(((gw_relay *)host)->loop); }

static void script_timer_cb(uv_timer_t *t) {
  gw_relay *r = container_of(t, gw_relay, script_timer);
  gw_script_run_timers(r->script);
  flush_dirty(r);
}

static void host_wake_at(void *host, uint64_t when_ms) {
  gw_relay *r = host;
  if (r->closed) return;
  uint64_t now = uv_now(r->loop);
  uv_timer_start(&r->script_timer, script_timer_cb, when_ms > now ? when_ms - now : 0, 0);
}

/* A script's request to the session's pipeline. */
static void host_pipe(gw_script_session *ss, const gw_pipe_op *op) {
  gw_session *s = container_of(ss, gw_session, ss);
  if (s->state == S_CLOSING) return;
  gw_pipe *p = &s->pipe;
  switch (op->kind) {
  case GW_PIPE_OP_FRAMING: gw_pipe_set_framing(p, op->side, op->framing); break;
  case GW_PIPE_OP_RAW: gw_pipe_expect_raw(p, op->side, op->n); break;
  case GW_PIPE_OP_STREAM_CODEC: gw_pipe_set_stream_codec(p, op->side, op->codec, op->ways); break;
  case GW_PIPE_OP_BODY_CODEC: gw_pipe_set_body_codec(p, op->side, op->codec, op->ways); break;
  }
}

/* session:route(name): another server of the pool, before the connect. */
static int host_route(gw_script_session *ss, const char *name, char *err, size_t errlen) {
  gw_session *s = container_of(ss, gw_session, ss);
  if (s->state != S_CONNECTING || !s->up_try) {
    snprintf(err, errlen, "the session is connected already (route from gw.on_connect)");
    return -EALREADY;
  }
  int rc = gw_upstream_route(s->up_try, name, err, errlen);
  if (rc == 0)
    snprintf(ss->upstream, sizeof ss->upstream, "%s",
             gw_upstream_server_name(gw_upstream_current(s->up_try)));
  return rc;
}

static const gw_host_ops host_ops = {.emit = host_emit, .close = host_close, .now_ms = host_now,
                                     .wake_at = host_wake_at, .pipe = host_pipe,
                                     .capture = host_capture, .route = host_route};

/* ---- listeners --------------------------------------------------------- */

static void listener_closed(uv_handle_t *h) {
  gw_listener *l = container_of(h, gw_listener, tcp);
  l->handle_open = false;
  listener_maybe_free(l);
}

static void listener_stop(gw_listener *l) {
  if (!l->listening) return;
  l->listening = false;
  uv_close((uv_handle_t *)&l->tcp, listener_closed);
}

static int listener_bind(gw_relay *r, gw_listener *l, const gw_listener_config *lc,
                         char *err, size_t errlen) {
  uv_tcp_init(r->loop, &l->tcp);
  l->listening = l->handle_open = true;
  unsigned flags = lc->listen_addr.ss_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0;
  int rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&lc->listen_addr, flags);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&l->tcp, 511, accept_cb);
  if (rc < 0) {
    snprintf(err, errlen, "listener %s: cannot listen on %s: %s", lc->name, lc->listen,
             uv_strerror(rc));
    return rc;
  }
  snprintf(l->listen, sizeof l->listen, "%s", lc->listen);
  return 0;
}

/* Points l at lc's upstream, framing and handlers (for new sessions). */
static void listener_update(gw_relay *r, gw_listener *l, const gw_listener_config *lc) {
  snprintf(l->upstream, sizeof l->upstream, "%s", lc->upstream);
  l->upstream_addr = lc->upstream_addr;
  l->framing = lc->framing;
  l->unfinished_pass = lc->unfinished_frame_pass;
  l->proxy_in = lc->proxy_protocol;
  l->proxy_out = lc->upstream_proxy_protocol;
  gw_cidr *from = lc->nproxy_from ? malloc(lc->nproxy_from * sizeof *from) : NULL;
  if (from) memcpy(from, lc->proxy_from, lc->nproxy_from * sizeof *from);
  free(l->proxy_from);
  l->proxy_from = from;
  l->nproxy_from = from ? lc->nproxy_from : 0;
  for (int i = 0; i < GW_SIDES; i++) {
    size_t n = lc->nphases[i];
    gw_phase *ph = n ? malloc(n * sizeof *ph) : NULL;
    if (ph) memcpy(ph, lc->phases[i], n * sizeof *ph);
    free(l->phases[i]);
    l->phases[i] = ph;
    l->nphases[i] = ph ? n : 0;
  }
  l->handlers = gw_script_handlers(r->script, lc->name);
  gw_script_count_errors(r->script, lc->name, l->lc.handler_errors, l->lc.handler_timeouts);
  l->removed = false;
  /* A new pool for new sessions; sessions keep the servers they have. */
  gw_upstream *pool = gw_upstream_new(r->loop, lc->name, &lc->pool, r->registry, l->pool);
  if (!pool) {
    gw_error("listener %s: out of memory for its upstream pool%s", lc->name,
             l->pool ? ": keeping the old one" : "");
    return;
  }
  gw_upstream_retire(l->pool);
  l->pool = pool;
}

/* A listener named name with its counter slots (a name seen before
 * continues its series); NULL when out of memory (err says so). */
static gw_listener *listener_new(gw_relay *r, const char *name, char *err, size_t errlen) {
  gw_listener *l = calloc(1, sizeof *l);
  if (l && (l->name = strdup(name)) && gw_listener_counters_init(&l->lc, r->fam, name) == 0 &&
      (l->refused_proxy_from = gw_metric_slot(r->fam->sessions_refused,
                                              GW_LABELS(name, "proxy_protocol_from")))) {
    l->relay = r;
    return l;
  }
  if (l) listener_free(l);
  snprintf(err, errlen, "out of memory");
  return NULL;
}

static gw_listener *listener_find(gw_relay *r, const char *name) {
  for (gw_listener *l = r->listeners; l; l = l->next)
    if (!l->removed && strcmp(l->name, name) == 0) return l;
  return NULL;
}

/* ---- the relay --------------------------------------------------------- */

/* Applies the config's log and per-client settings. */
static void apply_limits(gw_relay *r) {
  const gw_config *cfg = r->cfg;
  gw_log_setup(cfg->log_level, cfg->log_format);
  gw_log_set_target((gw_log_target)cfg->log_target);
  r->session_lines.per_s = cfg->log_session_lines_per_s;
  r->refusal_lines.per_s = GW_REFUSAL_LINES_PER_S;
  gw_iplimit_set(r->iplimit, cfg->sessions_per_ip, cfg->new_sessions_per_ip_per_s);
}

static gw_script_limits script_limits(const gw_config *cfg) {
  return (gw_script_limits){.handler_instructions = cfg->handler_instructions,
                            .memory_bytes = (size_t)cfg->lua_memory_mb << 20};
}

/* Gauges pulled at each rendering, and the script layer's per-opcode
 * counts: cumulative for the life of the script state, they are summed into
 * the opcode series afresh (several opcodes may share "other"). */
static void opstat_zero(void *ud, const char *listener, gw_side side, bool has_opcode,
                        uint32_t opcode, const gw_opstat_counts *c);
static void opstat_add(void *ud, const char *listener, gw_side side, bool has_opcode,
                       uint32_t opcode, const gw_opstat_counts *c);

static void relay_collect(gw_metrics *m, void *ud) {
  (void)m;
  gw_relay *r = ud;
  if (!r->script) return;
  gw_script_stats st;
  gw_script_get_stats(r->script, &st);
  *r->fam->lua_memory = (int64_t)st.memory_bytes;
  *r->fam->pool_in_use = (int64_t)r->pool.live;
  *r->fam->pool_free = (int64_t)r->pool.nfree;
  gw_script_foreach_opstat(r->script, opstat_zero, r);
  gw_script_foreach_opstat(r->script, opstat_add, r);
}

/* The newest listener of that name (a removed one keeps the same series). */
static gw_listener *listener_counted(gw_relay *r, const char *name) {
  for (gw_listener *l = r->listeners; l; l = l->next)
    if (strcmp(l->name, name) == 0) return l;
  return NULL;
}

static void opstat_apply(gw_relay *r, const char *listener, gw_side side, bool has_opcode,
                         uint32_t opcode, const gw_opstat_counts *c, bool add) {
  gw_listener *l = listener_counted(r, listener);
  if (!l) return;
  uint64_t *all = gw_metric_slot(r->handler_frames, GW_LABELS(l->name));
  if (all) *all = add ? *all + c->frames : 0;
  if (!has_opcode) return; /* per opcode: frames that have one */
  gw_opcode_counters *t[4] = {l->lc.passed[side], l->lc.dropped[side], l->lc.replaced[side],
                              l->lc.injected[side]};
  const uint64_t v[4] = {c->passed, c->dropped, c->replaced, c->injected};
  for (int i = 0; i < 4; i++) {
    uint64_t *slot = gw_opcode_counters_slot(t[i], opcode);
    if (slot) *slot = add ? *slot + v[i] : 0;
  }
}

static void opstat_zero(void *ud, const char *listener, gw_side side, bool has_opcode,
                        uint32_t opcode, const gw_opstat_counts *c) {
  opstat_apply(ud, listener, side, has_opcode, opcode, c, false);
}

static void opstat_add(void *ud, const char *listener, gw_side side, bool has_opcode,
                       uint32_t opcode, const gw_opstat_counts *c) {
  opstat_apply(ud, listener, side, has_opcode, opcode, c, true);
}

int gw_relay_add_families(gw_relay_metrics *m) {
  m->handler_frames = gw_metrics_counter(m->registry, "gangway_handler_frames_total",
                                         "Frames handed to handlers.", GW_LABELS("listener"));
  return m->handler_frames ? 0 : -ENOMEM;
}

int gw_relay_new(uv_loop_t *loop, gw_config *cfg, const gw_relay_metrics *m, gw_relay **out,
                 char *err, size_t errlen) {
  *out = NULL;
  gw_relay *r = calloc(1, sizeof *r);
  gw_iplimit *ipl = r ? gw_iplimit_new() : NULL;
  if (!ipl || gw_metrics_on_collect(m->registry, relay_collect, r) < 0) {
    gw_iplimit_free(ipl);
    free(r);
    gw_config_free(cfg);
    free(cfg);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  r->loop = loop;
  r->cfg = cfg;
  r->registry = m->registry;
  r->fam = m->families;
  r->handler_frames = m->handler_frames;
  gw_pool_init(&r->pool, GW_BUF_SIZE, GW_POOL_KEEP);
  uv_timer_init(loop, &r->script_timer);
  uv_timer_init(loop, &r->drain_timer);
  uv_timer_init(loop, &r->log_timer);
  uv_timer_init(loop, &r->lua_cap_timer);
  r->iplimit = ipl;
  apply_limits(r);
  gw_script_limits limits = script_limits(cfg);
  r->script = gw_script_new(&limits, &host_ops, r);
  if (r->script) gw_script_set_waits(r->script, &wait_ops, cfg->wait_ms);
  int rc = r->script ? gw_script_load(r->script, cfg, err, errlen) : -ENOMEM;
  if (!r->script) snprintf(err, errlen, "cannot create the Lua state: out of memory");
  for (size_t i = 0; rc == 0 && i < cfg->nlisteners; i++) {
    gw_listener *l = listener_new(r, cfg->listeners[i].name, err, errlen);
    if (!l) {
      rc = -ENOMEM;
      break;
    }
    l->next = r->listeners;
    r->listeners = l;
    listener_update(r, l, &cfg->listeners[i]);
    rc = listener_bind(r, l, &cfg->listeners[i], err, errlen);
    if (rc == 0)
      gw_info("listener %s: listening on %s, upstream %s, framing %s, %zu script(s)", l->name,
              l->listen, l->upstream, l->framing.name, cfg->listeners[i].nscripts);
  }
  *out = r;
  if (rc == 0) flush_dirty(r);
  return rc;
}

const gw_config *gw_relay_config(const gw_relay *r) { return r->cfg; }

int gw_relay_reload(gw_relay *r, gw_config *cfg, char *err, size_t errlen) {
  if (r->draining || r->closed) {
    snprintf(err, errlen, "shutting down: no reload");
    gw_config_free(cfg);
    free(cfg);
    return -ECANCELED;
  }
  /* 1. New listeners and moved addresses are bound first, so that a port in
   *    use fails the reload before anything changes. (A move onto a port
   *    the old address still holds fails too: move in two reloads.) */
  gw_listener *fresh = NULL;
  int rc = 0;
  for (size_t i = 0; i < cfg->nlisteners && rc == 0; i++) {
    const gw_listener_config *lc = &cfg->listeners[i];
    gw_listener *old = listener_find(r, lc->name);
    if (old && strcmp(old->listen, lc->listen) == 0) continue;
    gw_listener *l = listener_new(r, lc->name, err, errlen);
    if (!l) {
      rc = -ENOMEM;
      break;
    }
    l->next = fresh;
    fresh = l;
    rc = listener_bind(r, l, lc, err, errlen);
  }
  /* 2. Scripts: all or nothing. */
  if (rc == 0) rc = gw_script_load(r->script, cfg, err, errlen);
  /* 3. Link the fresh listeners in; on failure they go away again. */
  while (fresh) {
    gw_listener *l = fresh;
    fresh = l->next;
    l->next = r->listeners;
    r->listeners = l;
    if (rc < 0) {
      l->removed = true;
      listener_stop(l);
    }
  }
  if (rc < 0) {
    gw_config_free(cfg);
    free(cfg);
    return rc;
  }
  /* 4. Commit: listeners that moved or went away stop accepting; the rest
   *    take the new upstream, framing and handlers for new sessions. */
  for (gw_listener *l = r->listeners; l; l = l->next) {
    if (l->removed) continue;
    const gw_listener_config *lc = NULL;
    for (size_t i = 0; i < cfg->nlisteners; i++)
      if (strcmp(cfg->listeners[i].name, l->name) == 0) lc = &cfg->listeners[i];
    if (lc && strcmp(lc->listen, l->listen) == 0) {
      listener_update(r, l, lc);
    } else {
      l->removed = true;
      listener_stop(l);
    }
  }
  gw_config_free(r->cfg);
  free(r->cfg);
  r->cfg = cfg;
  apply_limits(r);
  gw_script_limits limits = script_limits(cfg);
  gw_script_set_limits(r->script, &limits);
  gw_script_set_waits(r->script, &wait_ops, cfg->wait_ms);
  flush_dirty(r); /* whatever on_reload sent */
  return 0;
}

static void drain_timer_cb(uv_timer_t *t) {
  gw_relay *r = container_of(t, gw_relay, drain_timer);
  gw_info("drain: %u session(s) still open after %u ms, closing them", r->active,
          r->cfg->drain_ms);
  /* session_close unlinks, and on_close handlers may close others too. */
  while (r->sessions) session_close(r->sessions, "shutdown");
}

void gw_relay_drain(gw_relay *r, void (*done)(gw_relay *, void *), void *ud) {
  if (r->draining) return;
  r->draining = true;
  r->drain_done = done;
  r->drain_ud = ud;
  for (gw_listener *l = r->listeners; l; l = l->next) listener_stop(l);
  gw_info("draining: no new sessions, %u open, waiting up to %u ms", r->active,
          r->cfg->drain_ms);
  if (!r->active) {
    r->drain_done = NULL;
    done(r, ud);
    return;
  }
  uv_timer_start(&r->drain_timer, drain_timer_cb, r->cfg->drain_ms, 0);
}

void gw_relay_close(gw_relay *r) {
  if (r->closed) return;
  r->closed = true;
  r->drain_done = NULL; /* closing now: a drain in progress is over */
  while (r->sessions) session_close(r->sessions, "shutdown");
  for (gw_listener *l = r->listeners; l; l = l->next) {
    l->removed = true;
    listener_stop(l);
    gw_upstream_retire(l->pool); /* its handles close with the loop's */
    l->pool = NULL;
  }
  uv_close((uv_handle_t *)&r->script_timer, NULL);
  uv_close((uv_handle_t *)&r->drain_timer, NULL);
  log_summaries(r);
  uv_close((uv_handle_t *)&r->log_timer, NULL);
  lua_capture_end(r);
  uv_close((uv_handle_t *)&r->lua_cap_timer, NULL);
}

void gw_relay_free(gw_relay *r) {
  if (!r) return;
  while (r->listeners) {
    gw_listener *l = r->listeners;
    r->listeners = l->next;
    listener_free(l);
  }
  gw_script_free(r->script);
  gw_iplimit_free(r->iplimit);
  while (r->free_wreqs) {
    gw_wreq *w = r->free_wreqs;
    r->free_wreqs = w->next_free;
    free(w);
  }
  gw_pool_destroy(&r->pool);
  gw_config_free(r->cfg);
  free(r->cfg);
  free(r);
}

gw_script *gw_relay_script(gw_relay *r) { return r->script; }

json_t *gw_relay_sessions_json(gw_relay *r) {
  json_t *a = json_array();
  uint64_t now = uv_now(r->loop);
  for (gw_session *s = r->sessions; a && s; s = s->next) {
    json_t *o = json_pack("{sI ss ss ss sI sI sI sI sI}", "id", (json_int_t)s->ss.id,
                          "listener", s->listener->name, "client", s->ss.client, "upstream",
                          s->ss.upstream, "age_ms", (json_int_t)(now - s->opened_ms),
                          "bytes_client", (json_int_t)s->dir[GW_CLIENT].bytes, "bytes_server",
                          (json_int_t)s->dir[GW_SERVER].bytes, "frames_client",
                          (json_int_t)s->pipe.side[GW_CLIENT].frames, "frames_server",
                          (json_int_t)s->pipe.side[GW_SERVER].frames);
    if (!o || json_array_append_new(a, o) < 0) {
      json_decref(a);
      return NULL;
    }
    for (int i = 0; i < GW_SIDES; i++)
      json_object_set_new(o, i == GW_CLIENT ? "last_opcode_client" : "last_opcode_server",
                          s->has_op[i] ? json_integer(s->last_op[i]) : json_null());
    json_object_set_new(o, "player", json_null());
  }
  return a;
}

/* A server of a pool: what an admin needs to see why sessions go where
 * they go. */
static json_t *server_json(gw_upstream_server *sv) {
  const gw_upstream_server_config *c = gw_upstream_server_config_of(sv);
  unsigned n;
  int resolve_error;
  const struct sockaddr_storage *addrs = gw_upstream_server_addrs(sv, &n, &resolve_error);
  json_t *list = json_array();
  for (unsigned i = 0; list && i < n; i++) {
    char a[GW_ADDR_MAX];
    gw_format_addr((const struct sockaddr *)&addrs[i], a, sizeof a);
    if (json_array_append_new(list, json_string(a)) < 0) {
      json_decref(list);
      list = NULL;
    }
  }
  int err = gw_upstream_server_last_error(sv);
  json_t *o = json_pack("{ss ss so sb sI si sb so so}", "name", gw_upstream_server_name(sv),
                        "address", c->addr, "addresses", list ? list : json_null(), "up",
                        gw_upstream_server_up(sv), "sessions",
                        (json_int_t)gw_upstream_server_sessions(sv), "weight", (int)c->weight,
                        "backup", c->backup, "last_error",
                        err ? json_string(uv_strerror(err)) : json_null(), "resolve_error",
                        resolve_error ? json_string(uv_strerror(resolve_error)) : json_null());
  return o;
}

json_t *gw_relay_upstreams_json(gw_relay *r) {
  json_t *a = json_array();
  /* Listeners a reload removed or moved drain their sessions with their
   * old pool: those sessions count in the current pool's servers already. */
  for (gw_listener *l = r->listeners; a && l; l = l->next) {
    if (!l->pool || l->removed) continue;
    json_t *servers = json_array();
    gw_upstream_server *sv;
    for (size_t i = 0; servers && (sv = gw_upstream_server_at(l->pool, i)); i++) {
      json_t *o = server_json(sv);
      if (!o || json_array_append_new(servers, o) < 0) {
        json_decref(servers);
        servers = NULL;
      }
    }
    json_t *o = servers ? json_pack("{ss ss sb so}", "listener", l->name, "balance",
                                    gw_upstream_balance_name(l->pool), "health_checks",
                                    gw_upstream_checks(l->pool), "servers", servers)
                        : NULL;
    if (!o || json_array_insert_new(a, 0, o) < 0) { /* listeners are kept newest first */
      json_decref(a);
      return NULL;
    }
  }
  return a;
}

int gw_relay_close_session(gw_relay *r, uint64_t id, const char *reason) {
  for (gw_session *s = r->sessions; s; s = s->next) {
    if (s->ss.id != id || s->state == S_CLOSING) continue;
    session_close_soft(s, reason);
    flush_dirty(r);
    return 0;
  }
  return -ENOENT;
}
