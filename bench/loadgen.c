/* loadgen.c: gw-loadgen, the load generator of gangway's benchmark suite.
 *
 * Opens N sessions to a target (gangway, HAProxy, or the echo server itself)
 * and sends `top` frames that the far end echoes back. Every echo is checked
 * (length, header, session index, sequence number, payload) and timed with a
 * send timestamp carried in the frame. Three modes:
 *   pipeline  each session keeps D frames in flight and sends the next one
 *             when an echo comes back: frames/s and MB/s;
 *   rate      R frames/s in all, spread over the sessions, one in flight
 *             each: round-trip latency at a load that is not saturating;
 *   idle      each session sends one frame, then all are held open for T
 *             seconds: the watched process's RSS per idle session.
 * One JSON line goes to stdout, a human line to stderr. The exit status is 1
 * if any echo mismatched or any session failed.
 *
 * One libuv loop, one thread. The frame payload is one shared read-only
 * pattern; only the 28-byte header is written per frame, so the generator
 * spends its CPU on the sockets, not on filling buffers. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "echo.h"
#include "histogram.h"

#define container_of(ptr, type, field) \
  ((type *)((char *)(ptr) - offsetof(type, field)))

/* Frame layout: the `top` header, then what the generator checks. */
#define LG_OFF_SCRATCH 8   /* u32 a rewriting handler may set (--expect-scratch) */
#define LG_OFF_INDEX 12    /* u32 BE: session index, catches crossed sessions */
#define LG_OFF_SEQ 16      /* u32 BE: per-session sequence number */
#define LG_OFF_STAMP 20    /* u64: send time, ns, this process's clock */
#define LG_HDR 28          /* smallest frame; the pattern starts here */
#define LG_MAX_FRAME 65535 /* top's u16 length field */
#define LG_SESSION_ID 0x80000000u
#define LG_OPCODE 6        /* CMD_CM_BEGINACTION: an ordinary game frame */

#define LG_BATCH 64              /* frames per uv_write */
#define LG_WHOLE_MAX 1024        /* frames up to this size are sent whole */
#define LG_RBUF (256 * 1024)     /* shared read buffer */
#define LG_DIRECT_MIN 4096       /* read straight into the carry past this */
#define LG_MAX_SOURCES 64
#define LG_MAX_CPUS 64

typedef enum { MODE_PIPELINE, MODE_RATE, MODE_IDLE } lg_mode;
static const char *const mode_names[] = {"pipeline", "rate", "idle"};

typedef struct lg_opts {
  struct sockaddr_in target;
  char target_str[64];
  lg_mode mode;
  unsigned sessions, size, depth, concurrency;
  double rate, duration, warmup, hold, deadline;
  struct sockaddr_in sources[LG_MAX_SOURCES];
  unsigned nsources;
  int watch_pid; /* 0: none */
  int echo_pid;  /* 0: none; CPU only, to tell our load from others' */
  bool echo;     /* the echo upstream runs in this process, on echo_addr */
  struct sockaddr_in echo_addr;
  const char *label;
  bool check_scratch;
  uint32_t expect_scratch;
} lg_opts;

typedef enum { S_NEW, S_CONNECTING, S_OPEN, S_DRAINING, S_CLOSED } lg_state;

typedef struct lg lg;

typedef struct lg_session {
  uv_tcp_t tcp;
  uv_connect_t connect;
  uv_shutdown_t shutdown;
  lg *lg;
  uint32_t index;
  lg_state state;
  uint32_t next_seq;   /* of the next frame sent */
  uint32_t expect_seq; /* of the next echo */
  uint32_t in_flight;
  bool idle_ready;     /* idle mode: its one echo came back */
  bool into_carry;     /* the last alloc handed out the carry */
  uint8_t *carry;      /* one incomplete frame (size bytes), owned here */
  size_t carry_len;
} lg_session;

/* One uv_write of up to LG_BATCH frames. Small frames are copied whole,
 * one after the other, into data: one buffer per write, which the kernel
 * copies far faster than two small iovecs per frame. Large frames keep only
 * their header in data (LG_HDR bytes each) and point into lg->pattern for
 * the rest. data lives until the write callback. */
typedef struct lg_write {
  uv_write_t req;
  struct lg_write *next_free;
  uv_buf_t bufs[2 * LG_BATCH];
  uint8_t data[]; /* LG_BATCH x (whole frame or header) */
} lg_write;

struct lg {
  lg_opts o;
  uv_loop_t *loop;
  lg_session *sessions;
  uint8_t *pattern;  /* a whole frame as sent, minus the per-frame header */
  uint8_t *rbuf;     /* shared read buffer: one read is handled at a time */
  lg_write *free_writes;
  uv_timer_t tick;   /* rate mode pacing, and phase changes */
  uv_timer_t guard;  /* hard deadline */
  uv_timer_t drain;  /* bounds the graceful close at the end */
  unsigned next_connect, connecting, open, closed, idle_ready;
  unsigned rr;       /* rate mode round-robin cursor */
  uint64_t t_start, t_measure, t_end, t_ready;
  uint64_t owed;     /* rate mode: frames due but not yet sent */
  uint64_t paced;    /* rate mode: frames made due so far */
  bool measuring, stopping, timed_out, timers_closed;
  /* results, counted while measuring (mismatches and errors always) */
  uint64_t frames, bytes, mismatches, errors, skipped;
  gw_hist hist;
  /* the watched process and this one, at the start and end of measuring */
  long rss_before_kb, rss_after_kb;
  double cpu0_s, cpu1_s, self0_s, self1_s, echo0_s, echo1_s;
  /* every CPU's busy share over the window: who else was running */
  int ncpus;
  uint64_t busy0[LG_MAX_CPUS], total0[LG_MAX_CPUS];
  double busy_pct[LG_MAX_CPUS];
};

static void session_start_connect(lg *g);
static void session_close(lg_session *s);
static void stop(lg *g);

/* ---- small helpers ---- */

static void put_u16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static void put_u32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get_u32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* VmRSS of pid in KiB, -1 if unknown. */
static long rss_kb(int pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

/* User + system CPU seconds of pid, from /proc/PID/stat; -1 if unknown. */
static double cpu_seconds(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* The command name may hold spaces: fields count from its closing ')'. */
  char *p = strrchr(buf, ')');
  unsigned long ut, st;
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                   &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Busy and total jiffies of each CPU from /proc/stat; returns the count. */
static int cpu_times(uint64_t busy[LG_MAX_CPUS], uint64_t total[LG_MAX_CPUS]) {
  FILE *f = fopen("/proc/stat", "r");
  if (!f) return 0;
  char line[512];
  int n = 0;
  while (n < LG_MAX_CPUS && fgets(line, sizeof line, f)) {
    unsigned long long v[8] = {0};
    int cpu;
    if (strncmp(line, "cpu", 3) || line[3] < '0' || line[3] > '9') continue; /* not the sum */
    if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0],
               &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) < 5)
      continue;
    uint64_t t = 0;
    for (int i = 0; i < 8; i++) t += v[i];
    total[n] = t;
    busy[n] = t - v[3] - v[4]; /* all but idle and iowait */
    n++;
  }
  fclose(f);
  return n;
}

static double self_cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* ---- sending ---- */

static lg_write *write_get(lg *g) {
  lg_write *w = g->free_writes;
  if (w) {
    g->free_writes = w->next_free;
    return w;
  }
  size_t each = g->o.size <= LG_WHOLE_MAX ? g->o.size : LG_HDR;
  w = malloc(sizeof *w + LG_BATCH * each);
  if (!w) {
    fprintf(stderr, "gw-loadgen: out of memory\n");
    exit(2);
  }
  return w;
}

static void on_write(uv_write_t *req, int status) {
  lg_write *w = container_of(req, lg_write, req);
  lg_session *s = req->data;
  lg *g = s->lg;
  w->next_free = g->free_writes;
  g->free_writes = w;
  if (status < 0 && s->state == S_OPEN) {
    g->errors++;
    fprintf(stderr, "gw-loadgen: session %u: write: %s\n", s->index,
            uv_strerror(status));
    session_close(s);
  }
}

/* Sends n frames on s, stamping each with its sequence number and now. */
static void session_send(lg_session *s, unsigned n) {
  lg *g = s->lg;
  size_t size = g->o.size;
  bool whole = size <= LG_WHOLE_MAX;
  while (n > 0 && s->state == S_OPEN) {
    unsigned k = n < LG_BATCH ? n : LG_BATCH, nb = 0;
    lg_write *w = write_get(g);
    uint64_t now = uv_hrtime();
    for (unsigned i = 0; i < k; i++) {
      uint8_t *h = w->data + i * (whole ? size : LG_HDR);
      memcpy(h, g->pattern, whole ? size : LG_OFF_INDEX);
      put_u32(h + LG_OFF_INDEX, s->index);
      put_u32(h + LG_OFF_SEQ, s->next_seq++);
      memcpy(h + LG_OFF_STAMP, &now, sizeof now);
      if (whole) continue;
      w->bufs[nb++] = uv_buf_init((char *)h, LG_HDR);
      if (size > LG_HDR)
        w->bufs[nb++] = uv_buf_init((char *)g->pattern + LG_HDR,
                                    (unsigned)(size - LG_HDR));
    }
    if (whole) w->bufs[nb++] = uv_buf_init((char *)w->data, (unsigned)(k * size));
    /* Most writes complete at once: uv_try_write spares them uv_write's
     * callback round, which costs an epoll_ctl per write in libuv. Only a
     * rest the socket did not take is queued. */
    int r = uv_try_write((uv_stream_t *)&s->tcp, w->bufs, nb);
    if (r >= 0 || r == UV_EAGAIN) {
      size_t done = r > 0 ? (size_t)r : 0;
      unsigned first = 0;
      while (first < nb && done >= w->bufs[first].len) done -= w->bufs[first++].len;
      if (first == nb) {
        w->next_free = g->free_writes;
        g->free_writes = w;
        r = 0;
      } else {
        w->bufs[first].base += done;
        w->bufs[first].len -= done;
        w->req.data = s;
        r = uv_write(&w->req, (uv_stream_t *)&s->tcp, w->bufs + first, nb - first,
                     on_write);
      }
    }
    if (r < 0) {
      w->next_free = g->free_writes;
      g->free_writes = w;
      g->errors++;
      fprintf(stderr, "gw-loadgen: session %u: write: %s\n", s->index,
              uv_strerror(r));
      session_close(s);
      return;
    }
    s->in_flight += k;
    n -= k;
  }
}

/* Rate mode: hands the frames that are due to sessions with nothing in
 * flight, starting where the last round stopped so the load spreads. */
static void rate_dispatch(lg *g) {
  unsigned n = g->o.sessions;
  for (unsigned scanned = 0; g->owed > 0 && scanned < n; scanned++) {
    lg_session *s = &g->sessions[g->rr];
    g->rr = (g->rr + 1) % n;
    if (s->state == S_OPEN && s->in_flight == 0) {
      session_send(s, 1);
      g->owed--;
    }
  }
}

/* ---- receiving ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  lg_session *s = container_of((uv_tcp_t *)h, lg_session, tcp);
  lg *g = s->lg;
  size_t missing = g->o.size - s->carry_len;
  /* A large frame's rest goes straight where it will be checked. */
  s->into_carry = s->carry_len > 0 && missing >= LG_DIRECT_MIN;
  if (s->into_carry)
    *buf = uv_buf_init((char *)s->carry + s->carry_len, (unsigned)missing);
  else
    *buf = uv_buf_init((char *)g->rbuf, LG_RBUF);
}

/* Checks one echoed frame. Returns false if the stream cannot be trusted
 * any more (wrong length: the framing is lost). */
static bool check_frame(lg_session *s, const uint8_t *p, uint64_t now) {
  lg *g = s->lg;
  size_t size = g->o.size;
  if (get_u16(p) != size) {
    g->mismatches++;
    fprintf(stderr, "gw-loadgen: session %u: echo length %u, sent %zu\n",
            s->index, get_u16(p), size);
    return false;
  }
  uint64_t stamp;
  memcpy(&stamp, p + LG_OFF_STAMP, sizeof stamp);
  bool ok = memcmp(p + 2, g->pattern + 2, LG_OFF_SCRATCH - 2) == 0 &&
            get_u32(p + LG_OFF_SCRATCH) ==
                (g->o.check_scratch ? g->o.expect_scratch : 0) &&
            get_u32(p + LG_OFF_INDEX) == s->index &&
            get_u32(p + LG_OFF_SEQ) == s->expect_seq && stamp <= now &&
            memcmp(p + LG_HDR, g->pattern + LG_HDR, size - LG_HDR) == 0;
  s->expect_seq++;
  s->in_flight--;
  if (!ok) {
    if (g->mismatches++ < 5)
      fprintf(stderr, "gw-loadgen: session %u: echo %u differs from what was sent\n",
              s->index, s->expect_seq - 1);
    return true;
  }
  if (g->measuring) {
    g->frames++;
    g->bytes += size;
    gw_hist_record(&g->hist, now - stamp);
  }
  return true;
}

/* What a session does after `done` of its frames came back. */
static void session_echoed(lg_session *s, unsigned done) {
  lg *g = s->lg;
  if (s->state != S_OPEN || done == 0) return;
  switch (g->o.mode) {
  case MODE_PIPELINE:
    if (!g->stopping) session_send(s, done);
    break;
  case MODE_RATE:
    /* Frames due while every session was busy go out as soon as one is
     * free, so a slow path shows up as latency, not as a lower rate. */
    if (!g->stopping && g->owed > 0 && s->in_flight == 0) {
      session_send(s, 1);
      g->owed--;
    }
    break;
  case MODE_IDLE:
    if (!s->idle_ready && s->in_flight == 0) {
      s->idle_ready = true;
      if (++g->idle_ready + g->closed == g->o.sessions && !g->t_ready)
        g->t_ready = uv_hrtime();
    }
    break;
  }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  lg_session *s = container_of((uv_tcp_t *)st, lg_session, tcp);
  lg *g = s->lg;
  size_t size = g->o.size;
  if (nread == 0) return;
  if (nread < 0) {
    if (nread == UV_EOF && s->state == S_DRAINING) {
      /* The far end finished after our shutdown: a clean end. */
    } else if (s->state == S_OPEN || s->state == S_DRAINING) {
      g->errors++;
      fprintf(stderr, "gw-loadgen: session %u: read: %s\n", s->index,
              uv_strerror((int)nread));
    }
    session_close(s);
    return;
  }
  uint64_t now = uv_hrtime();
  unsigned done = 0;
  if (s->into_carry) {
    s->carry_len += (size_t)nread;
    if (s->carry_len == size) {
      s->carry_len = 0;
      if (!check_frame(s, s->carry, now)) goto lost;
      done++;
    }
    session_echoed(s, done);
    return;
  }
  const uint8_t *p = g->rbuf;
  size_t n = (size_t)nread;
  if (s->carry_len > 0) {
    size_t take = size - s->carry_len;
    if (take > n) take = n;
    memcpy(s->carry + s->carry_len, p, take);
    s->carry_len += take;
    p += take;
    n -= take;
    if (s->carry_len < size) return;
    s->carry_len = 0;
    if (!check_frame(s, s->carry, now)) goto lost;
    done++;
  }
  for (; n >= size; p += size, n -= size, done++)
    if (!check_frame(s, p, now)) goto lost;
  if (n > 0) {
    if (!s->carry && !(s->carry = malloc(size))) {
      fprintf(stderr, "gw-loadgen: out of memory\n");
      exit(2);
    }
    memcpy(s->carry, p, n);
    s->carry_len = n;
  }
  session_echoed(s, done);
  return;
lost:
  session_close(s);
}

/* ---- session life ---- */

/* Once every session is closed the loop has nothing left but the timers. */
static void close_timers(lg *g) {
  if (g->timers_closed) return;
  g->timers_closed = true;
  if (g->o.echo) echo_stop();
  uv_close((uv_handle_t *)&g->tick, NULL);
  uv_close((uv_handle_t *)&g->guard, NULL);
  uv_close((uv_handle_t *)&g->drain, NULL);
}

static void on_close(uv_handle_t *h) {
  lg_session *s = container_of((uv_tcp_t *)h, lg_session, tcp);
  lg *g = s->lg;
  g->closed++;
  if (g->o.mode == MODE_IDLE && !s->idle_ready && !g->stopping &&
      g->idle_ready + g->closed == g->o.sessions && !g->t_ready)
    g->t_ready = uv_hrtime();
  if (g->closed == g->o.sessions) close_timers(g);
}

static void session_close(lg_session *s) {
  if (s->state == S_CLOSED) return;
  if (s->state == S_OPEN || s->state == S_DRAINING) s->lg->open--;
  s->state = S_CLOSED;
  uv_close((uv_handle_t *)&s->tcp, on_close);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  lg_session *s = req->data;
  if (status < 0) session_close(s);
}

/* Stops sending and half-closes; the echoes still in flight come back and
 * are checked, then the far end's FIN closes the session. */
static void session_drain(lg_session *s) {
  if (s->state != S_OPEN) return;
  s->state = S_DRAINING;
  s->shutdown.data = s;
  if (uv_shutdown(&s->shutdown, (uv_stream_t *)&s->tcp, on_shutdown) < 0)
    session_close(s);
}

static void on_connect(uv_connect_t *req, int status) {
  lg_session *s = req->data;
  lg *g = s->lg;
  g->connecting--;
  if (status < 0) {
    if (status != UV_ECANCELED) {
      if (g->errors++ < 5)
        fprintf(stderr, "gw-loadgen: session %u: connect: %s\n", s->index,
                uv_strerror(status));
    }
    session_close(s);
    if (!g->stopping) session_start_connect(g);
    return;
  }
  if (s->state == S_CLOSED) return;
  s->state = S_OPEN;
  g->open++;
  uv_tcp_nodelay(&s->tcp, 1);
  uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
  if (g->stopping) {
    session_drain(s);
  } else if (g->o.mode == MODE_PIPELINE) {
    session_send(s, g->o.depth);
  } else if (g->o.mode == MODE_IDLE) {
    session_send(s, 1);
  }
  if (!g->stopping) session_start_connect(g);
}

/* Starts connects until `concurrency` are in progress: bounded so the
 * listener's accept queue never overflows into SYN retries. */
static void session_start_connect(lg *g) {
  while (g->next_connect < g->o.sessions && g->connecting < g->o.concurrency) {
    lg_session *s = &g->sessions[g->next_connect++];
    s->state = S_CONNECTING;
    int r = uv_tcp_init_ex(g->loop, &s->tcp, AF_INET);
    if (r < 0) {
      fprintf(stderr, "gw-loadgen: socket: %s\n", uv_strerror(r));
      exit(2);
    }
    if (g->o.nsources > 0) {
      /* Without this the port would be chosen at bind(), from one range for
       * all destinations; with it, at connect(), per destination. */
      uv_os_fd_t fd;
      int one = 1;
      uv_fileno((uv_handle_t *)&s->tcp, &fd);
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      const struct sockaddr_in *src = &g->o.sources[s->index % g->o.nsources];
      r = uv_tcp_bind(&s->tcp, (const struct sockaddr *)src, 0);
    }
    s->connect.data = s;
    if (r == 0)
      r = uv_tcp_connect(&s->connect, &s->tcp,
                         (const struct sockaddr *)&g->o.target, on_connect);
    if (r < 0) {
      if (g->errors++ < 5)
        fprintf(stderr, "gw-loadgen: session %u: connect: %s\n", s->index,
                uv_strerror(r));
      session_close(s);
      continue;
    }
    g->connecting++;
  }
}

/* ---- phases ---- */

static void measure_begin(lg *g) {
  g->measuring = true;
  g->t_measure = uv_hrtime();
  if (g->o.watch_pid) g->cpu0_s = cpu_seconds(g->o.watch_pid);
  if (g->o.echo_pid) g->echo0_s = cpu_seconds(g->o.echo_pid);
  g->self0_s = self_cpu_seconds();
  g->ncpus = cpu_times(g->busy0, g->total0);
}

static void measure_end(lg *g) {
  g->measuring = false;
  g->t_end = uv_hrtime();
  if (g->o.echo_pid) g->echo1_s = cpu_seconds(g->o.echo_pid);
  if (g->o.watch_pid) {
    g->cpu1_s = cpu_seconds(g->o.watch_pid);
    g->rss_after_kb = rss_kb(g->o.watch_pid);
  }
  g->self1_s = self_cpu_seconds();
  uint64_t busy1[LG_MAX_CPUS], total1[LG_MAX_CPUS];
  if (cpu_times(busy1, total1) != g->ncpus) g->ncpus = 0;
  for (int i = 0; i < g->ncpus; i++)
    g->busy_pct[i] = total1[i] > g->total0[i]
                         ? 100.0 * (double)(busy1[i] - g->busy0[i]) /
                               (double)(total1[i] - g->total0[i])
                         : 0;
}

static void on_drain_timeout(uv_timer_t *t) {
  lg *g = container_of(t, lg, drain);
  for (unsigned i = 0; i < g->o.sessions; i++) {
    lg_session *s = &g->sessions[i];
    if (s->state == S_DRAINING) {
      g->errors++;
      fprintf(stderr, "gw-loadgen: session %u: no FIN after shutdown\n", i);
    }
    session_close(s);
  }
}

static void stop(lg *g) {
  if (g->stopping) return;
  g->stopping = true;
  uv_timer_stop(&g->tick);
  if (g->measuring) measure_end(g);
  unsigned never = 0;
  for (unsigned i = 0; i < g->o.sessions; i++) {
    lg_session *s = &g->sessions[i];
    if (s->state == S_OPEN) session_drain(s);
    else if (s->state == S_NEW) s->state = S_CLOSED, never++;
  }
  g->closed += never;
  if (g->closed == g->o.sessions) {
    close_timers(g);
    return;
  }
  uv_timer_start(&g->drain, on_drain_timeout, 2000, 0);
}

static void on_guard(uv_timer_t *t) {
  lg *g = container_of(t, lg, guard);
  fprintf(stderr, "gw-loadgen: deadline of %.0f s reached\n", g->o.deadline);
  g->timed_out = true;
  g->errors++;
  stop(g);
}

/* Every millisecond: phase changes, and in rate mode the frames now due. */
static void on_tick(uv_timer_t *t) {
  lg *g = container_of(t, lg, tick);
  uint64_t now = uv_hrtime();
  double el = (double)(now - g->t_start) / 1e9;
  if (g->o.mode == MODE_IDLE) {
    if (!g->t_ready) return;
    if (!g->measuring && g->t_measure == 0) {
      measure_begin(g);
      if (g->idle_ready < g->o.sessions)
        fprintf(stderr, "gw-loadgen: only %u of %u sessions came up\n",
                g->idle_ready, g->o.sessions);
    }
    if (now > g->t_measure && (double)(now - g->t_measure) / 1e9 >= g->o.hold) stop(g);
    return;
  }
  if (!g->measuring && g->t_measure == 0 && el >= g->o.warmup) measure_begin(g);
  if (el >= g->o.warmup + g->o.duration) {
    stop(g);
    return;
  }
  if (g->o.mode == MODE_RATE) {
    uint64_t due = (uint64_t)(g->o.rate * el);
    if (due > g->paced) {
      g->owed += due - g->paced;
      g->paced = due;
    }
    /* A backlog worth more than 100 ms is not latency any more: the target
     * cannot take the rate. Count it instead of letting it grow. */
    uint64_t cap = (uint64_t)(g->o.rate / 10) + g->o.sessions;
    if (g->owed > cap) {
      if (g->measuring) g->skipped += g->owed - cap;
      g->owed = cap;
    }
    rate_dispatch(g);
  }
}

/* ---- report ---- */

static void report(lg *g) {
  lg_opts *o = &g->o;
  double win = g->t_end > g->t_measure ? (double)(g->t_end - g->t_measure) / 1e9 : 0;
  double fps = win > 0 ? (double)g->frames / win : 0;
  double mbps = win > 0 ? (double)g->bytes / win / 1e6 : 0;
  double p50 = gw_hist_percentile(&g->hist, 50.0) / 1e3;
  double p99 = gw_hist_percentile(&g->hist, 99.0) / 1e3;
  double p999 = gw_hist_percentile(&g->hist, 99.9) / 1e3;
  double pmax = (double)g->hist.max / 1e3;
  double self_pct = win > 0 ? (g->self1_s - g->self0_s) / win * 100 : 0;
  double watch_pct = -1, rss_per = -1;
  if (o->watch_pid && win > 0 && g->cpu0_s >= 0 && g->cpu1_s >= 0)
    watch_pct = (g->cpu1_s - g->cpu0_s) / win * 100;
  double echo_pct = -1, other_pct = -1;
  if (o->echo_pid && win > 0 && g->echo0_s >= 0 && g->echo1_s >= 0)
    echo_pct = (g->echo1_s - g->echo0_s) / win * 100;
  if (o->echo) echo_pct = 0; /* counted in this process's own */
  /* Everything else the CPUs did: the noise of a shared machine. */
  if (echo_pct >= 0 && g->ncpus > 0) {
    other_pct = -self_pct - echo_pct - (watch_pct > 0 ? watch_pct : 0);
    for (int i = 0; i < g->ncpus; i++) other_pct += g->busy_pct[i];
    if (other_pct < 0) other_pct = 0;
  }
  if (o->watch_pid && g->rss_before_kb >= 0 && g->rss_after_kb >= 0 && g->idle_ready)
    rss_per = (double)(g->rss_after_kb - g->rss_before_kb) * 1024.0 / g->idle_ready;
  printf("{\"label\":\"%s\",\"mode\":\"%s\",\"target\":\"%s\",\"sessions\":%u,"
         "\"size\":%u,\"depth\":%u,\"rate\":%.0f,\"window_s\":%.3f,"
         "\"frames\":%" PRIu64 ",\"frames_per_s\":%.1f,\"mb_per_s\":%.2f,"
         "\"p50_us\":%.2f,\"p99_us\":%.2f,\"p999_us\":%.2f,\"max_us\":%.2f,"
         "\"mismatches\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"skipped\":%" PRIu64 ","
         "\"ready\":%u,\"loadgen_cpu_pct\":%.1f,\"watch_cpu_pct\":%.1f,\"echo_cpu_pct\":%.1f,\"other_cpu_pct\":%.1f,"
         "\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,\"rss_per_session_b\":%.0f,"
         "\"cpus_busy_pct\":[",
         o->label, mode_names[o->mode], o->target_str, o->sessions, o->size,
         o->depth, o->rate, win, g->frames, fps, mbps, p50, p99, p999, pmax,
         g->mismatches, g->errors, g->skipped, g->idle_ready, self_pct,
         watch_pct, echo_pct, other_pct, g->rss_before_kb, g->rss_after_kb, rss_per);
  for (int i = 0; i < g->ncpus; i++) printf("%s%.1f", i ? "," : "", g->busy_pct[i]);
  printf("]}\n");
  fflush(stdout);
  fprintf(stderr,
          "%-12s %-8s %5u sessions %5u B x%-3u %10.0f frames/s %9.1f MB/s  "
          "rtt p50 %.1f p99 %.1f p99.9 %.1f us  mismatches %" PRIu64
          " errors %" PRIu64,
          o->label, mode_names[o->mode], o->sessions, o->size, o->depth, fps,
          mbps, p50, p99, p999, g->mismatches, g->errors);
  if (watch_pct >= 0) fprintf(stderr, "  target cpu %.0f%%", watch_pct);
  if (rss_per >= 0)
    fprintf(stderr, "  rss %+ld KiB = %.0f B/session", g->rss_after_kb - g->rss_before_kb,
            rss_per);
  if (g->skipped) fprintf(stderr, "  skipped %" PRIu64, g->skipped);
  if (other_pct >= 0) fprintf(stderr, "  other work %.0f%%", other_pct);
  if (g->ncpus) {
    fprintf(stderr, "  cpus busy");
    for (int i = 0; i < g->ncpus; i++) fprintf(stderr, " %.0f%%", g->busy_pct[i]);
  }
  fputc('\n', stderr);
}

/* ---- options ---- */

static void usage(FILE *f) {
  fprintf(f,
"usage: gw-loadgen --target HOST:PORT [options]\n"
"  -t, --target HOST:PORT    where to connect (IPv4)\n"
"  -m, --mode MODE           pipeline (default), rate, idle\n"
"  -c, --sessions N          sessions (default 1)\n"
"  -s, --size BYTES          frame size, %d..%d (default 64)\n"
"  -D, --depth D             pipeline: frames in flight per session (default 1)\n"
"  -r, --rate R              rate: frames/s over all sessions (default 1000)\n"
"  -d, --duration S          measured seconds (default 5)\n"
"  -w, --warmup S            seconds before measuring (default 1)\n"
"  -H, --hold S              idle: seconds to hold the sessions (default 5)\n"
"  -S, --sources A[,B...]    local source addresses, round-robin, or N for\n"
"                            127.0.0.1..127.0.0.N (more ephemeral ports)\n"
"  -p, --watch-pid PID       report PID's CPU %% and (idle) RSS delta\n"
"  -E, --echo-pid PID        report PID's CPU %% too (the echo server)\n"
"  -e, --echo HOST:PORT      run the echo upstream in this process, listening\n"
"                            there (its CPU is then counted in ours)\n"
"  -C, --concurrency N       connects in progress at once (default 256)\n"
"  -x, --expect-scratch HEX  the u32 at frame offset %d must read HEX on\n"
"                            the echo (a rewriting handler's work)\n"
"  -l, --label NAME          name in the output\n"
"  -T, --deadline S          hard bound on the whole run (default: phases+30)\n",
          LG_HDR, LG_MAX_FRAME, LG_OFF_SCRATCH);
}

static int parse_ipv4(const char *s, int default_port, struct sockaddr_in *out) {
  char host[64];
  const char *colon = strrchr(s, ':');
  int port = default_port;
  size_t hl = colon ? (size_t)(colon - s) : strlen(s);
  if (hl >= sizeof host) return -1;
  memcpy(host, s, hl);
  host[hl] = '\0';
  if (colon) {
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535) return -1;
    port = (int)p;
  }
  if (port < 0) return -1;
  return uv_ip4_addr(host, port, out) == 0 ? 0 : -1;
}

static int parse_sources(const char *arg, lg_opts *o) {
  char *end;
  long n = strtol(arg, &end, 10);
  if (*end == '\0') {
    if (n < 1 || n > LG_MAX_SOURCES) return -1;
    for (long i = 0; i < n; i++) {
      char a[32];
      snprintf(a, sizeof a, "127.0.0.%ld", i + 1);
      if (parse_ipv4(a, 0, &o->sources[o->nsources++]) < 0) return -1;
    }
    return 0;
  }
  char *copy = strdup(arg), *save = NULL;
  for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (o->nsources == LG_MAX_SOURCES || parse_ipv4(tok, 0, &o->sources[o->nsources++]) < 0) {
      free(copy);
      return -1;
    }
  }
  free(copy);
  return o->nsources ? 0 : -1;
}

static double num(const char *name, const char *arg, double lo, double hi) {
  char *end;
  double v = strtod(arg, &end);
  if (*end || !(v >= lo && v <= hi)) {
    fprintf(stderr, "gw-loadgen: --%s: expected a number in [%g, %g], got '%s'\n",
            name, lo, hi, arg);
    exit(2);
  }
  return v;
}

static void parse_opts(int argc, char **argv, lg_opts *o) {
  static const struct option longs[] = {
      {"target", 1, 0, 't'},   {"mode", 1, 0, 'm'},     {"sessions", 1, 0, 'c'},
      {"size", 1, 0, 's'},     {"depth", 1, 0, 'D'},    {"rate", 1, 0, 'r'},
      {"duration", 1, 0, 'd'}, {"warmup", 1, 0, 'w'},   {"hold", 1, 0, 'H'},
      {"sources", 1, 0, 'S'},  {"watch-pid", 1, 0, 'p'}, {"concurrency", 1, 0, 'C'},
      {"expect-scratch", 1, 0, 'x'}, {"echo-pid", 1, 0, 'E'}, {"echo", 1, 0, 'e'}, {"label", 1, 0, 'l'}, {"deadline", 1, 0, 'T'},
      {"help", 0, 0, 'h'},     {0, 0, 0, 0}};
  *o = (lg_opts){.mode = MODE_PIPELINE, .sessions = 1, .size = 64, .depth = 1,
                 .concurrency = 256, .rate = 1000, .duration = 5, .warmup = 1,
                 .hold = 5, .label = "loadgen"};
  bool have_target = false;
  int c;
  while ((c = getopt_long(argc, argv, "t:m:c:s:D:r:d:w:H:S:p:E:e:C:x:l:T:h", longs, NULL)) != -1) {
    switch (c) {
    case 't':
      if (parse_ipv4(optarg, -1, &o->target) < 0) {
        fprintf(stderr, "gw-loadgen: --target: expected IPv4:PORT, got '%s'\n", optarg);
        exit(2);
      }
      snprintf(o->target_str, sizeof o->target_str, "%s", optarg);
      have_target = true;
      break;
    case 'm': {
      size_t i;
      for (i = 0; i < 3 && strcmp(optarg, mode_names[i]); i++) {}
      if (i == 3) {
        fprintf(stderr, "gw-loadgen: --mode: pipeline, rate or idle\n");
        exit(2);
      }
      o->mode = (lg_mode)i;
      break;
    }
    case 'c': o->sessions = (unsigned)num("sessions", optarg, 1, 1000000); break;
    case 's': o->size = (unsigned)num("size", optarg, LG_HDR, LG_MAX_FRAME); break;
    case 'D': o->depth = (unsigned)num("depth", optarg, 1, 100000); break;
    case 'r': o->rate = num("rate", optarg, 1, 1e8); break;
    case 'd': o->duration = num("duration", optarg, 0.01, 86400); break;
    case 'w': o->warmup = num("warmup", optarg, 0, 86400); break;
    case 'H': o->hold = num("hold", optarg, 0, 86400); break;
    case 'p': o->watch_pid = (int)num("watch-pid", optarg, 1, 1 << 30); break;
    case 'E': o->echo_pid = (int)num("echo-pid", optarg, 1, 1 << 30); break;
    case 'e':
      if (parse_ipv4(optarg, -1, &o->echo_addr) < 0) {
        fprintf(stderr, "gw-loadgen: --echo: expected IPv4:PORT, got '%s'\n", optarg);
        exit(2);
      }
      o->echo = true;
      break;
    case 'C': o->concurrency = (unsigned)num("concurrency", optarg, 1, 100000); break;
    case 'T': o->deadline = num("deadline", optarg, 0.1, 86400); break;
    case 'l': o->label = optarg; break;
    case 'S':
      if (parse_sources(optarg, o) < 0) {
        fprintf(stderr, "gw-loadgen: --sources: IPv4 list or a count 1..%d\n",
                LG_MAX_SOURCES);
        exit(2);
      }
      break;
    case 'x': {
      char *end;
      unsigned long v = strtoul(optarg, &end, 16);
      if (*end || v > UINT32_MAX) {
        fprintf(stderr, "gw-loadgen: --expect-scratch: a hex u32\n");
        exit(2);
      }
      o->check_scratch = true;
      o->expect_scratch = (uint32_t)v;
      break;
    }
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); exit(2);
    }
  }
  if (!have_target || optind != argc) {
    usage(stderr);
    exit(2);
  }
  if (o->deadline == 0)
    o->deadline = o->warmup + o->duration + (o->mode == MODE_IDLE ? o->hold : 0) + 30;
}

int main(int argc, char **argv) {
  static lg g; /* large (histogram); static keeps it off the stack */
  parse_opts(argc, argv, &g.o);
  signal(SIGPIPE, SIG_IGN); /* a reset peer is an error to count, not a death */
  lg_opts *o = &g.o;
  g.loop = uv_default_loop();
  g.sessions = calloc(o->sessions, sizeof *g.sessions);
  g.pattern = malloc(o->size);
  g.rbuf = malloc(LG_RBUF);
  if (!g.sessions || !g.pattern || !g.rbuf) {
    fprintf(stderr, "gw-loadgen: out of memory\n");
    return 2;
  }
  /* The template frame: top header, zero scratch, then a byte pattern that
   * a proxy bug (shifted, dropped or duplicated bytes) would not reproduce. */
  memset(g.pattern, 0, LG_HDR);
  put_u16(g.pattern, (uint16_t)o->size);
  put_u32(g.pattern + 2, LG_SESSION_ID);
  put_u16(g.pattern + 6, LG_OPCODE);
  for (size_t i = LG_HDR; i < o->size; i++)
    g.pattern[i] = (uint8_t)(i * 131 + (i >> 8) * 7 + 1);
  for (unsigned i = 0; i < o->sessions; i++) {
    g.sessions[i].lg = &g;
    g.sessions[i].index = i;
  }
  gw_hist_init(&g.hist);
  g.rss_before_kb = g.rss_after_kb = -1;
  if (o->watch_pid) g.rss_before_kb = rss_kb(o->watch_pid);
  uv_timer_init(g.loop, &g.tick);
  uv_timer_init(g.loop, &g.guard);
  uv_timer_init(g.loop, &g.drain);
  g.t_start = uv_hrtime();
  uv_timer_start(&g.tick, on_tick, 1, 1);
  uv_timer_start(&g.guard, on_guard, (uint64_t)(o->deadline * 1000), 0);
  if (o->echo) {
    int r = echo_listen(g.loop, &o->echo_addr);
    if (r < 0) {
      fprintf(stderr, "gw-loadgen: --echo: listen: %s\n", uv_strerror(r));
      return 2;
    }
  }
  session_start_connect(&g);
  uv_run(g.loop, UV_RUN_DEFAULT);
  report(&g);
  int rc = g.mismatches || g.errors ? 1 : 0;
  if (o->mode == MODE_IDLE && g.idle_ready < o->sessions) rc = 1;
  if (o->mode != MODE_IDLE && g.frames == 0) rc = 1;
  for (unsigned i = 0; i < o->sessions; i++) free(g.sessions[i].carry);
  while (g.free_writes) {
    lg_write *w = g.free_writes;
    g.free_writes = w->next_free;
    free(w);
  }
  free(g.sessions);
  free(g.pattern);
  free(g.rbuf);
  uv_loop_close(g.loop);
  return rc;
}
