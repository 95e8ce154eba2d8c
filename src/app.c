/* app.c: the running gangway apart from its worker (see app.h): the
 * control socket, the admin HTTP endpoint, signals, reload orchestration,
 * systemd notifications, the registry of counters, captures, and how
 * limits.max_sessions fits under the open-files limit. */
#include "app.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>
#include <systemd/sd-daemon.h>
#include <uv.h>

#include "admin.h"
#include "capture.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "relay.h"
#include "script.h"

#define WATCH_DEBOUNCE_MS 200
#define CONTROL_LINE_MAX GW_CONTROL_LINE_MAX /* a request, newline included */
#define CONTROL_LINE_MAX_TEXT "256"
#define CONTROL_TIMEOUT_MS 5000  /* to send a request and read the answer */
#define CONTROL_CLIENTS_MAX 16   /* connected at once */
#define CONTROL_RETRY_MS 250     /* accept again after running out of fds */
/* Open files kept out of sessions' reach, besides the listeners, the
 * control socket and its clients: stdio, the loop's own (epoll, signal
 * pipes, eventfd, inotify, libuv's EMFILE spare), the control spare, and
 * what a reload opens for a moment (the config, scripts, DNS sockets). */
#define FD_RESERVE 24
/* The admin endpoint: its connections, its listening socket and MHD's
 * epoll descriptor; and a capture's file. */
#define ADMIN_CONNECTIONS 8
#define ADMIN_FDS (ADMIN_CONNECTIONS + 2)
#define CAPTURE_FDS 1
#define RELOAD_HISTORY 16        /* reloads `gangway stats` remembers */


typedef struct app app;

typedef struct control_client {
  uv_pipe_t pipe;
  uv_timer_t timer;             /* CONTROL_TIMEOUT_MS from accept */
  int handles;                  /* open handles: freed at 0 */
  bool closing;
  struct control_client *prev, *next; /* app->control_clients, newest first */
  char line[CONTROL_LINE_MAX + 1];
  size_t len;
  bool answered;
  bool took_spare;              /* its fd is the spare's: re-open that at close */
  bool capturing;               /* waits for its capture to end */
} control_client;

/* One reload, for `gangway stats`. */
typedef struct reload_entry {
  int64_t unix_ms;
  char trigger[32];
  bool ok;
  uint64_t generation;          /* running after it */
  char result[256];             /* the answer `gangway reload` got */
} reload_entry;

/* A capture under way: the control client that asked waits for the end. */
typedef struct capture_run {
  gw_capture *cap;
  control_client *client;       /* NULL once it went away */
  uv_timer_t timer;             /* --seconds (also bounds a quiet capture) */
  uv_timer_t finish;            /* ends it from the loop, not from a write */
  char path[PATH_MAX];
  int status;                   /* GW_CAPTURE_FULL, -errno, or 0 (timer) */
  bool active;
} capture_run;

typedef struct watch_entry {
  uv_fs_event_t ev;
  struct watch_entry *next;
} watch_entry;

struct app {
  uv_loop_t loop;
  const char *config_path;
  gw_relay *relay;
  uv_signal_t sig_int, sig_term, sig_hup;
  /* The control socket is accepted by hand (a uv_poll_t on the listening
   * fd), not by uv_listen: libuv answers EMFILE by dropping every waiting
   * client, and the control socket must answer at the open-files limit. */
  int control_fd;               /* listening socket, -1 when closed */
  uv_poll_t control;
  bool control_open;            /* control (the poll handle) is initialised */
  dev_t control_dev;            /* the socket file bind created: only this */
  ino_t control_ino;            /* file is ever removed */
  struct control_client *control_clients;
  int ncontrol_clients;
  int spare_fd;                 /* /dev/null, closed to accept a control client
                                   when accept says EMFILE; -1 while spent */
  uv_timer_t control_retry;     /* out of fds and spare: accept again later */
  bool control_starved;         /* said so in the log, until an accept works */
  char fd_note[256];            /* the last max_sessions clamp logged */
  char control_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  uv_timer_t watch_timer;
  watch_entry *watches;
  bool stopping, closed;
  uint64_t generation;
  /* The one registry: the worker adds to its slots, /metrics and `gangway
   * stats` render it. A second worker would get a registry of its own,
   * merged into a scratch one before rendering (app_registry). */
  gw_metrics *metrics;
  gw_gangway_families fam;
  uint64_t started_ms;
  gw_admin *admin;
  char admin_listen[GW_ADDR_MAX]; /* what admin is bound to */
  reload_entry reloads[RELOAD_HISTORY]; /* a ring, next at nreloads % N */
  uint64_t nreloads;
  capture_run capture;
  gw_redis *redis;              /* gw.redis's client; NULL without a redis section */
  gw_redis_counters redis_counters; /* its slots, registered with the first client */
};

static void app_close_watches(app *a);
static void app_watch(app *a);
static void capture_finish(app *a, int status, const char *why);

/* Two sockets per session; what stays must cover everything that has to
 * keep answering (listeners, the control socket and its clients). */
static rlim_t fd_reserve(const gw_config *cfg) {
  return FD_RESERVE + 1 + CONTROL_CLIENTS_MAX + (rlim_t)cfg->nlisteners +
         (cfg->admin_listen[0] ? ADMIN_FDS : 0) + CAPTURE_FDS;
}

/* Fits limits.max_sessions under the open-files limit so that sessions can
 * never take the fds the control socket needs; 0 (no limit) is fitted too.
 * A run (apply) first raises its soft limit toward what the sessions need,
 * up to the hard limit; `check` only says what a run would do. Says in note
 * what was clamped and why ("" if nothing was). */
void gw_app_fd_fit(gw_config *cfg, bool apply, char *note, size_t notelen) {
  note[0] = '\0';
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
  rlim_t reserve = fd_reserve(cfg);
  rlim_t need = cfg->max_sessions ? 2 * (rlim_t)cfg->max_sessions + reserve : RLIM_INFINITY;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need && rl.rlim_max > rl.rlim_cur) {
    struct rlimit raised = {need < rl.rlim_max ? need : rl.rlim_max, rl.rlim_max};
    if (raised.rlim_cur != RLIM_INFINITY && (!apply || setrlimit(RLIMIT_NOFILE, &raised) == 0)) {
      if (apply)
        gw_info("open-files limit raised from %llu to %llu", (unsigned long long)rl.rlim_cur,
                (unsigned long long)raised.rlim_cur);
      rl.rlim_cur = raised.rlim_cur;
    }
  }
  if (rl.rlim_cur == RLIM_INFINITY || need <= rl.rlim_cur) return;
  uint32_t fit = rl.rlim_cur > reserve + 2 ? (uint32_t)((rl.rlim_cur - reserve) / 2) : 1;
  if (cfg->max_sessions)
    snprintf(note, notelen,
             "limits.max_sessions %u needs %llu open files, the limit is %llu: using %u",
             cfg->max_sessions, (unsigned long long)need, (unsigned long long)rl.rlim_cur, fit);
  else
    snprintf(note, notelen,
             "limits.max_sessions 0 (no limit) would exceed the open-files limit %llu "
             "(%llu kept for listeners and the control socket): using %u",
             (unsigned long long)rl.rlim_cur, (unsigned long long)reserve, fit);
  cfg->max_sessions = fit;
}

/* Fits cfg under the fd limit; warns when the clamp differs from the last
 * one logged, so a reload storm does not repeat it. */
static void app_fd_fit(app *a, gw_config *cfg) {
  char note[sizeof a->fd_note];
  gw_app_fd_fit(cfg, true, note, sizeof note);
  if (note[0] && strcmp(note, a->fd_note) != 0) gw_warn("%s", note);
  snprintf(a->fd_note, sizeof a->fd_note, "%s", note);
}

/* ---- systemd: Type=notify / notify-reload ------------------------------ */
/* sd_notify does nothing without NOTIFY_SOCKET in the environment. */

/* READY=1 with a one-line STATUS (systemd shows it; a newline would end the
 * field early). */
static void notify_ready(const char *status) {
  char line[512];
  snprintf(line, sizeof line, "%s", status);
  for (char *p = line; *p; p++)
    if (*p == '\n' || *p == '\r') *p = ' ';
  sd_notifyf(0, "READY=1\nSTATUS=%s", line);
}

/* systemd 253+ (Type=notify-reload) wants the time the reload started. */
static void notify_reloading(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
}

int gw_app_load_config(const char *path, gw_config **out, char *err, size_t errlen) {
  gw_config *cfg = calloc(1, sizeof *cfg);
  if (!cfg) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  int rc = gw_config_load(path, cfg, err, errlen);
  if (rc < 0) {
    gw_config_free(cfg);
    free(cfg);
    return rc;
  }
  *out = cfg;
  return 0;
}

static void app_admin_apply(app *a);
static void app_redis_apply(app *a);

/* Remembers a reload for `gangway stats`, and counts it. */
static void reload_note(app *a, const char *trigger, bool ok, const char *result) {
  reload_entry *e = &a->reloads[a->nreloads++ % RELOAD_HISTORY];
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  e->unix_ms = tv.tv_sec * 1000 + tv.tv_usec / 1000;
  snprintf(e->trigger, sizeof e->trigger, "%s", trigger);
  e->ok = ok;
  e->generation = a->generation;
  snprintf(e->result, sizeof e->result, "%s", result);
  (*(ok ? a->fam.reloads_ok : a->fam.reloads_failed))++;
  *a->fam.script_generation = (int64_t)a->generation;
}

/* Loads the config again and swaps it in; err says why not. */
static int app_reload(app *a, const char *trigger, char *err, size_t errlen) {
  uint64_t t0 = uv_hrtime();
  if (!a->stopping) notify_reloading();
  gw_config *cfg;
  int rc = gw_app_load_config(a->config_path, &cfg, err, errlen);
  if (rc == 0) {
    app_fd_fit(a, cfg);
    rc = gw_relay_reload(a->relay, cfg, err, errlen);
  }
  double ms = (double)(uv_hrtime() - t0) / 1e6;
  char status[512];
  if (rc < 0) {
    gw_error("reload (%s) failed, still running generation %llu: %s", trigger,
             (unsigned long long)a->generation, err);
    snprintf(status, sizeof status, "generation %llu running; reload (%s) failed: %s",
             (unsigned long long)a->generation, trigger, err);
    if (!a->stopping) notify_ready(status);
    reload_note(a, trigger, false, err);
    return rc;
  }
  a->generation++;
  snprintf(err, errlen, "generation %llu active after %.1f ms",
           (unsigned long long)a->generation, ms);
  gw_info("reload (%s): %s", trigger, err);
  app_redis_apply(a);
  reload_note(a, trigger, true, err);
  app_admin_apply(a);
  snprintf(status, sizeof status, "generation %llu running (reload: %s)",
           (unsigned long long)a->generation, trigger);
  if (!a->stopping) notify_ready(status);
  if (gw_relay_config(a->relay)->watch || a->watches) app_watch(a);
  return 0;
}

static void control_client_close(struct control_client *c);
static void control_close(app *a);

/* ---- Redis (gw.redis) ---- */

/* The client's counters, in the registry from the first client on. */
static int redis_counters(app *a) {
  if (a->redis_counters.commands) return 0;
  gw_metrics *m = a->metrics;
  gw_metric *f[4] = {
    gw_metrics_counter(m, "gangway_redis_commands_total", "Redis commands sent by scripts.", NULL),
    gw_metrics_counter(m, "gangway_redis_errors_total",
                       "Redis commands that failed: error replies, refused while down, lost.", NULL),
    gw_metrics_counter(m, "gangway_redis_timeouts_total",
                       "Redis commands without a reply within redis.timeout_ms.", NULL),
    gw_metrics_counter(m, "gangway_redis_reconnects_total",
                       "Redis connection attempts after a loss.", NULL),
  };
  gw_metric *up = gw_metrics_gauge(m, "gangway_redis_up",
                                   "1 while the Redis command connection is up.", NULL);
  for (int i = 0; i < 4; i++)
    if (!f[i]) return -ENOMEM;
  if (!up) return -ENOMEM;
  gw_redis_counters c = {gw_metric_slot(f[0], NULL), gw_metric_slot(f[1], NULL),
                         gw_metric_slot(f[2], NULL), gw_metric_slot(f[3], NULL),
                         gw_metric_gauge(up, NULL)};
  a->redis_counters = c;
  return 0;
}

/* After the first load and every reload: the client follows the config's
 * redis section (made, kept, reconnected with new settings, or closed),
 * and the scripts' subscriptions follow the generation now running. */
static void app_redis_apply(app *a) {
  const gw_config *cfg = gw_relay_config(a->relay);
  gw_script *script = gw_relay_script(a->relay);
  if (!cfg->redis_addr[0]) {
    if (a->redis) {
      gw_script_set_redis(script, NULL);
      gw_redis_close(a->redis);
      a->redis = NULL;
      if (a->redis_counters.up) *a->redis_counters.up = 0;
    }
    gw_script_set_redis(script, NULL);
    return;
  }
  if (a->redis) {
    gw_redis_configure(a->redis, cfg);
  } else if (redis_counters(a) < 0 ||
             gw_redis_new(&a->loop, cfg, &a->redis_counters, &a->redis) < 0) {
    gw_error("redis %s: out of memory", cfg->redis_addr);
    return;
  }
  gw_script_set_redis(script, a->redis);
}

static void app_redis_close(app *a) {
  if (!a->redis) return;
  gw_script_set_redis(gw_relay_script(a->relay), NULL); /* first: what fails now resumes
                                                            scripts that must not reach it */
  gw_redis_close(a->redis);
  a->redis = NULL;
}

static void on_drained(gw_relay *r, void *ud) {
  app *a = ud;
  (void)r;
  if (a->closed) return;
  a->closed = true;
  gw_info("drained, exiting");
  capture_finish(a, 0, "gangway stopped");
  uv_close((uv_handle_t *)&a->capture.timer, NULL);
  uv_close((uv_handle_t *)&a->capture.finish, NULL);
  if (a->admin) gw_admin_stop(a->admin);
  a->admin = NULL;
  while (a->control_clients) control_client_close(a->control_clients);
  app_redis_close(a);
  gw_relay_close(a->relay);
  uv_close((uv_handle_t *)&a->sig_int, NULL);
  uv_close((uv_handle_t *)&a->sig_term, NULL);
  uv_close((uv_handle_t *)&a->sig_hup, NULL);
  uv_close((uv_handle_t *)&a->watch_timer, NULL);
  app_close_watches(a);
  control_close(a);
}

static void on_signal(uv_signal_t *h, int signum) {
  app *a = h->data;
  if (signum == SIGHUP) {
    char err[1024];
    app_reload(a, "SIGHUP", err, sizeof err);
    return;
  }
  if (a->stopping) {
    gw_info("second %s: closing every session now", strsignal(signum));
    on_drained(a->relay, a);
    return;
  }
  a->stopping = true;
  gw_info("%s received", strsignal(signum));
  sd_notifyf(0, "STOPPING=1\nSTATUS=draining after %s", strsignal(signum));
  gw_relay_drain(a->relay, on_drained, a);
}

/* ---- control socket: one line in, one answer out ------------------------ */

/* Takes back the fd a control client accepted in the spare's place. */
static void spare_open(app *a) {
  if (a->spare_fd < 0) a->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

static void control_client_closed(uv_handle_t *h) {
  control_client *c = h->data;
  if (--c->handles == 0) free(c);
}

/* Unlinks c and closes its handles (once). */
static void control_client_close(control_client *c) {
  if (c->closing) return;
  c->closing = true;
  app *a = c->pipe.loop->data;
  if (c->prev) c->prev->next = c->next;
  else if (a->control_clients == c) a->control_clients = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  a->ncontrol_clients--;
  if (c->capturing && a->capture.client == c) { /* the command went: so does its capture */
    a->capture.client = NULL;
    capture_finish(a, 0, "command stopped");
  }
  uv_close((uv_handle_t *)&c->pipe, control_client_closed); /* closes the fd now */
  uv_close((uv_handle_t *)&c->timer, control_client_closed);
  if (c->took_spare) spare_open(a);
}

static void control_write_cb(uv_write_t *req, int status) {
  (void)status;
  control_client *c = req->handle->data;
  free(req);
  control_client_close(c);
}

static void control_answer(control_client *c, const char *text) {
  c->answered = true;
  uv_read_stop((uv_stream_t *)&c->pipe);
  size_t n = strlen(text);
  uv_write_t *req = malloc(sizeof *req + n);
  if (!req) {
    control_client_close(c);
    return;
  }
  char *copy = (char *)(req + 1);
  memcpy(copy, text, n);
  uv_buf_t b = uv_buf_init(copy, (unsigned)n);
  if (uv_write(req, (uv_stream_t *)&c->pipe, &b, 1, control_write_cb) < 0) {
    free(req);
    control_client_close(c);
  }
}

static void control_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  control_client *c = h->data;
  *buf = uv_buf_init(c->line + c->len, (unsigned)(CONTROL_LINE_MAX - c->len));
}

/* A client that has not sent its request in time gets an error; one that
 * does not take its answer in time is closed. */
static void control_timeout(uv_timer_t *t) {
  control_client *c = t->data;
  if (c->answered) {
    control_client_close(c);
    return;
  }
  control_answer(c, "error: request timed out\n");
  uv_timer_start(&c->timer, control_timeout, CONTROL_TIMEOUT_MS, 0);
}

/* ---- one registry, two renderings ---------------------------------------- */

/* The registry to render. With one worker it is the app's own; a second
 * worker's registry would be merged (gw_metrics_merge) into a scratch one
 * here, and nothing else on the admin side changes. */
static gw_metrics *app_registry(app *a) { return a->metrics; }

/* The sum of a family's series in the registry's JSON, over those whose
 * label `label` is `value` (label NULL: all). */
static json_int_t family_sum(json_t *reg, const char *name, const char *label,
                             const char *value) {
  json_t *series = json_object_get(json_object_get(reg, name), "series");
  json_int_t sum = 0;
  size_t i;
  json_t *one;
  json_array_foreach(series, i, one) {
    const char *v = label ? json_string_value(json_object_get(json_object_get(one, "labels"), label))
                          : NULL;
    if (!label || (v && strcmp(v, value) == 0))
      sum += json_integer_value(json_object_get(one, "value"));
  }
  return sum;
}

/* `gangway stats`: a flat summary first (the keys scripts and tests have
 * grepped for since the first version), then uptime, the generation, the
 * reload history and the whole registry; every number comes from the
 * registry that /metrics renders. One line, malloc'd; NULL when out of
 * memory. */
static char *app_stats_text(app *a) {
  json_t *reg = gw_metrics_json(app_registry(a));
  if (!reg) return NULL;
  static const struct { const char *key, *family, *label, *value; } flat[] = {
      {"sessions_active", "gangway_sessions_open", NULL, NULL},
      {"sessions_total", "gangway_sessions_total", NULL, NULL},
      {"client_bytes", "gangway_bytes_total", "side", "client"},
      {"server_bytes", "gangway_bytes_total", "side", "server"},
      {"client_frames", "gangway_frames_total", "side", "client"},
      {"server_frames", "gangway_frames_total", "side", "server"},
      {"protocol_errors", "gangway_protocol_errors_total", NULL, NULL},
      {"sessions_refused", "gangway_sessions_refused_total", NULL, NULL},
      {"pool_buffers_live", "gangway_pool_buffers", "state", "in_use"},
      {"pool_buffers_free", "gangway_pool_buffers", "state", "free"},
      {"handler_frames", "gangway_handler_frames_total", NULL, NULL},
      {"handler_dropped", "gangway_frames_dropped_total", NULL, NULL},
      {"handler_replaced", "gangway_frames_replaced_total", NULL, NULL},
      {"handler_injected", "gangway_frames_injected_total", NULL, NULL},
      {"handler_errors", "gangway_handler_errors_total", NULL, NULL},
      {"handler_timeouts", "gangway_handler_timeouts_total", NULL, NULL},
      {"lua_memory_bytes", "gangway_lua_memory_bytes", NULL, NULL},
  };
  json_t *summary = json_object();
  for (size_t i = 0; summary && i < sizeof flat / sizeof flat[0]; i++)
    json_object_set_new(summary, flat[i].key,
                        json_integer(family_sum(reg, flat[i].family, flat[i].label, flat[i].value)));
  json_t *reloads = json_array();
  uint64_t first = a->nreloads > RELOAD_HISTORY ? a->nreloads - RELOAD_HISTORY : 0;
  for (uint64_t n = first; reloads && n < a->nreloads; n++) {
    const reload_entry *e = &a->reloads[n % RELOAD_HISTORY];
    json_array_append_new(reloads, json_pack("{sI ss sb sI ss}", "unix_ms", (json_int_t)e->unix_ms,
                                             "trigger", e->trigger, "ok", e->ok, "generation",
                                             (json_int_t)e->generation, "result", e->result));
  }
  json_t *o = json_object();
  json_object_set_new(o, "summary", summary);
  json_object_set_new(o, "uptime_seconds",
                      json_real((double)(uv_now(&a->loop) - a->started_ms) / 1000.0));
  json_object_set_new(o, "generation", json_integer((json_int_t)a->generation));
  json_object_set_new(o, "reloads", reloads);
  json_object_set_new(o, "metrics", reg);
  /* JSON_PRESERVE_ORDER: the summary comes first, as it always did. */
  char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
  json_decref(o);
  if (!text) return NULL;
  size_t n = strlen(text);
  char *line = realloc(text, n + 2);
  if (!line) {
    free(text);
    return NULL;
  }
  memcpy(line + n, "\n", 2);
  return line;
}

/* ---- capture: `gangway capture` through the control socket ---------------
 *
 * gangway writes the file itself, on the loop, as frames leave the relay:
 * the frames are already in hand there, gw_capture bounds the file by size
 * and time, and nothing has to be copied to the command and kept in order
 * behind a slow reader. Whoever may use the control socket (mode 0600,
 * gangway's user) may have gangway write a file as that user; the file is
 * created mode 0600 (it holds what players sent). The command stays
 * connected until the capture ends and gets the result as its answer; if
 * it half-closes (the command's Ctrl-C) the capture ends and it still gets
 * the answer; if it goes away, the capture ends too. */

#define CAPTURE_DEFAULT_SECONDS 60
#define CAPTURE_MAX_SECONDS 86400

/* Ends the capture: every flow gets its FINs, the file is closed, and the
 * command that asked gets what was written. Why: the limit gw_capture
 * reached, else a write error (status < 0), else `why`. */
static void capture_finish(app *a, int status, const char *why) {
  capture_run *cr = &a->capture;
  if (!cr->active) return;
  cr->active = false;
  uv_timer_stop(&cr->timer);
  gw_relay_capture_stop(a->relay);
  uint64_t packets, bytes;
  gw_capture_info(cr->cap, &packets, &bytes);
  if (gw_capture_stopped(cr->cap)) why = gw_capture_stopped(cr->cap);
  else if (status < 0) why = strerror(-status);
  int rc = gw_capture_close(cr->cap);
  cr->cap = NULL;
  char answer[PATH_MAX + 256];
  if (rc < 0)
    snprintf(answer, sizeof answer, "error: capture to %s: %s\n", cr->path, strerror(-rc));
  else
    snprintf(answer, sizeof answer,
             "ok: %" PRIu64 " packets, %" PRIu64 " bytes written to %s (stopped: %s)\n", packets,
             bytes, cr->path, why);
  gw_info("capture to %s ended: %s", cr->path, answer);
  control_client *c = cr->client;
  cr->client = NULL;
  if (c) {
    c->capturing = false;
    control_answer(c, answer);
  }
}

static void capture_timer_cb(uv_timer_t *t) {
  app *a = t->data;
  capture_finish(a, 0, "seconds");
}

static void capture_finish_cb(uv_timer_t *t) {
  app *a = t->data;
  capture_finish(a, a->capture.status, "seconds");
}

/* From the relay, inside a write: finished from the loop instead. */
static void capture_full(void *ud, int status) {
  app *a = ud;
  a->capture.status = status;
  uv_timer_start(&a->capture.finish, capture_finish_cb, 0, 0);
}

/* An unsigned number of a capture argument, within max. */
static bool capture_num(const char *v, uint64_t max, uint64_t *out) {
  char *end;
  errno = 0;
  /* digits only, no sign, space or leading zero: one spelling per number */
  if (!isdigit((unsigned char)v[0]) || (v[0] == '0' && v[1])) return false;
  unsigned long long n = strtoull(v, &end, 10);
  if (*end || errno || n > max) return false;
  *out = n;
  return true;
}

/* "capture path=/abs/out.pcap listener=game session=7 opcode=1 seconds=10
 * max_bytes=1048576 originals=1": starts writing; 0, or -1 with the
 * answer (an error) in answer. */
static int capture_begin(app *a, control_client *c, char *args, char *answer, size_t len) {
  capture_run *cr = &a->capture;
  gw_relay_capture_filter f = {0};
  gw_capture_limits lim = {.max_seconds = CAPTURE_DEFAULT_SECONDS, .max_bytes = 100u << 20};
  const char *path = NULL;
  for (char *save, *tok = strtok_r(args, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
    char *eq = strchr(tok, '=');
    if (!eq) {
      snprintf(answer, len, "error: capture: expected key=value, got \"%.64s\"\n", tok);
      return -1;
    }
    *eq = '\0';
    const char *k = tok, *v = eq + 1;
    uint64_t n = 0;
    bool ok = true;
    if (strcmp(k, "path") == 0) path = v, ok = v[0] == '/';
    else if (strcmp(k, "listener") == 0) f.listener = v;
    else if (strcmp(k, "session") == 0) ok = capture_num(v, UINT64_MAX, &f.session) && f.session;
    else if (strcmp(k, "opcode") == 0) ok = capture_num(v, UINT32_MAX, &n), f.has_opcode = true, f.opcode = (uint32_t)n;
    else if (strcmp(k, "seconds") == 0) ok = capture_num(v, CAPTURE_MAX_SECONDS, &lim.max_seconds) && lim.max_seconds;
    else if (strcmp(k, "max_bytes") == 0) ok = capture_num(v, UINT64_MAX, &lim.max_bytes) && lim.max_bytes;
    else if (strcmp(k, "originals") == 0) ok = capture_num(v, 1, &n), f.originals = n == 1;
    else {
      snprintf(answer, len, "error: capture: unknown key \"%.32s\"\n", k);
      return -1;
    }
    if (!ok) {
      snprintf(answer, len, "error: capture: bad %s \"%.64s\"\n", k, v);
      return -1;
    }
  }
  if (!path) {
    snprintf(answer, len, "error: capture: path=/absolute/file.pcap is required\n");
    return -1;
  }
  if (f.listener) { /* a name that matches nothing would capture nothing */
    const gw_config *cfg = gw_relay_config(a->relay);
    bool known = false;
    for (size_t i = 0; i < cfg->nlisteners && !known; i++)
      known = strcmp(cfg->listeners[i].name, f.listener) == 0;
    if (!known) {
      snprintf(answer, len, "error: capture: no listener named \"%.64s\"\n", f.listener);
      return -1;
    }
  }
  if (a->stopping || cr->active) {
    snprintf(answer, len, "error: capture: %s\n",
             a->stopping ? "shutting down" : "another capture is running (one at a time)");
    return -1;
  }
  char err[512];
  gw_capture *cap = gw_capture_open(path, &lim, err, sizeof err);
  if (!cap) {
    snprintf(answer, len, "error: capture: %s\n", err);
    return -1;
  }
  snprintf(cr->path, sizeof cr->path, "%s", path);
  cr->cap = cap;
  cr->client = c;
  cr->status = 0;
  cr->active = true;
  int rc = gw_relay_capture_start(a->relay, cap, &f, capture_full, a);
  if (rc < 0) {
    cr->active = false;
    cr->client = NULL;
    gw_capture_close(cap);
    cr->cap = NULL;
    snprintf(answer, len, "error: capture: %s\n", strerror(-rc));
    return -1;
  }
  /* The capture's own clock is the frames' timestamps; the timer ends a
   * capture during which nothing happens too. */
  uv_timer_start(&cr->timer, capture_timer_cb, lim.max_seconds * 1000, 0);
  c->capturing = true;
  c->len = 0;
  uv_timer_stop(&c->timer);
  gw_info("capture to %s started (%" PRIu64 " s, %" PRIu64 " bytes at most)", path,
          lim.max_seconds, lim.max_bytes);
  return 0;
}

static void control_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  control_client *c = st->data;
  app *a = st->loop->data;
  if (nread == UV_EOF && c->capturing && a->capture.client == c) {
    /* The command half-closed (its Ctrl-C) or went away: the capture
     * ends, and the answer reaches it if it is still there, saying what
     * was written. */
    capture_finish(a, 0, "command stopped");
    return;
  }
  if (nread < 0) {
    control_client_close(c); /* a capture it waits for ends with it */
    return;
  }
  if (c->capturing) { /* nothing more is asked while it waits */
    c->len = 0;
    return;
  }
  if (memchr(c->line + c->len, '\0', (size_t)nread)) {
    control_answer(c, "error: NUL byte in request\n");
    return;
  }
  c->len += (size_t)nread;
  c->line[c->len] = '\0';
  char *nl = strchr(c->line, '\n');
  if (!nl) {
    if (c->len == CONTROL_LINE_MAX)
      control_answer(c, "error: request too long (" CONTROL_LINE_MAX_TEXT " bytes at most)\n");
    return;
  }
  *nl = '\0';
  char answer[4096];
  if (strcmp(c->line, "reload") == 0 && a->stopping) {
    snprintf(answer, sizeof answer, "error: shutting down: no reload\n");
  } else if (strcmp(c->line, "reload") == 0) {
    char err[2048];
    int rc = app_reload(a, "control socket", err, sizeof err);
    snprintf(answer, sizeof answer, "%s: %s\n", rc == 0 ? "ok" : "error", err);
  } else if (strcmp(c->line, "stats") == 0) {
    char *text = app_stats_text(a);
    control_answer(c, text ? text : "error: out of memory\n");
    free(text);
    return;
  } else if (strncmp(c->line, "capture", 7) == 0 && (!c->line[7] || c->line[7] == ' ')) {
    if (capture_begin(a, c, c->line + 7, answer, sizeof answer) == 0) return;
  } else {
    snprintf(answer, sizeof answer, "error: unknown command \"%.64s\" (reload, stats)\n", c->line);
  }
  control_answer(c, answer);
}

/* At CONTROL_CLIENTS_MAX, the oldest client that has not sent a whole
 * request yet makes room: clients that connect and say nothing cannot lock
 * an admin out (`gangway stats` sends its request at once). */
static bool control_make_room(app *a) {
  if (a->ncontrol_clients < CONTROL_CLIENTS_MAX) return true;
  control_client *oldest = NULL;
  for (control_client *c = a->control_clients; c; c = c->next)
    if (!c->answered && !c->capturing) oldest = c;
  if (!oldest) return false;
  control_answer(oldest, "error: too many control clients\n");
  control_client_close(oldest);
  return true;
}

static void control_client_add(app *a, int fd, bool took_spare) {
  if (!control_make_room(a)) {
    static const char busy[] = "error: too many control clients\n";
    (void)send(fd, busy, sizeof busy - 1, MSG_DONTWAIT | MSG_NOSIGNAL); /* best effort */
    close(fd);
    if (took_spare) spare_open(a);
    return;
  }
  control_client *c = calloc(1, sizeof *c);
  if (!c || uv_pipe_init(&a->loop, &c->pipe, 0) < 0) {
    free(c);
    close(fd);
    if (took_spare) spare_open(a);
    return;
  }
  c->took_spare = took_spare;
  uv_timer_init(&a->loop, &c->timer);
  c->handles = 2;
  c->pipe.data = c->timer.data = c;
  c->next = a->control_clients;
  if (c->next) c->next->prev = c;
  a->control_clients = c;
  a->ncontrol_clients++;
  if (uv_pipe_open(&c->pipe, fd) < 0) {
    close(fd);
    control_client_close(c);
    return;
  }
  uv_timer_start(&c->timer, control_timeout, CONTROL_TIMEOUT_MS, 0);
  uv_read_start((uv_stream_t *)&c->pipe, control_alloc, control_read);
}

static void control_retry(uv_timer_t *t);

static void control_accept(uv_poll_t *p, int status, int events) {
  (void)events;
  app *a = p->data;
  if (status < 0) {
    gw_warn("control socket: %s", uv_strerror(status));
    return;
  }
  for (;;) {
    int fd = accept4(a->control_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    bool took_spare = false;
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && a->spare_fd >= 0) {
      /* Out of fds: the spare makes room for this one client. */
      close(a->spare_fd);
      a->spare_fd = -1;
      fd = accept4(a->control_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      int e = errno;
      took_spare = fd >= 0;
      if (!took_spare) spare_open(a);
      errno = e;
    }
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        /* The spare is in use: let clients wait in the backlog instead of
         * spinning on a socket that stays readable. */
        if (!a->control_starved)
          gw_warn("control socket: out of file descriptors, trying again every %d ms",
                  CONTROL_RETRY_MS);
        a->control_starved = true;
        uv_poll_stop(&a->control);
        uv_timer_start(&a->control_retry, control_retry, CONTROL_RETRY_MS, 0);
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        gw_warn("control socket: accept failed: %s", strerror(errno));
      }
      return;
    }
    a->control_starved = false;
    control_client_add(a, fd, took_spare);
  }
}

static void control_retry(uv_timer_t *t) {
  app *a = t->data;
  spare_open(a);
  if (a->control_open) uv_poll_start(&a->control, UV_READABLE, control_accept);
}

/* Closes the control socket and removes its file, if that file is still the
 * socket this gangway bound: anything else at the path is someone else's. */
static void control_close(app *a) {
  if (a->control_open) {
    uv_close((uv_handle_t *)&a->control, NULL);
    uv_close((uv_handle_t *)&a->control_retry, NULL);
  }
  a->control_open = false;
  if (a->spare_fd >= 0) close(a->spare_fd);
  a->spare_fd = -1;
  if (a->control_fd < 0) return;
  close(a->control_fd);
  a->control_fd = -1;
  struct stat st;
  if (lstat(a->control_path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == a->control_dev &&
      st.st_ino == a->control_ino)
    unlink(a->control_path);
}

static const char *file_kind(mode_t m) {
  if (S_ISREG(m)) return "a regular file";
  if (S_ISLNK(m)) return "a symbolic link";
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  return "not a socket";
}

/* What is at path may be replaced only if it is a socket nobody answers on
 * (left by a gangway that did not exit cleanly). Never follows a symlink:
 * lstat, and connect only to a socket. Returns 0 when the path is free. */
static int control_clear(const char *path, char *err, size_t errlen) {
  struct stat st;
  if (lstat(path, &st) < 0) {
    if (errno == ENOENT) return 0;
    snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
    return -errno;
  }
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(err, errlen,
             "control socket %s: the path exists and is %s, not a socket: "
             "not touching it (remove it or choose another `control` path)",
             path, file_kind(st.st_mode));
    return -EEXIST;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
    return -errno;
  }
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : -errno;
  close(fd);
  if (rc == 0) {
    snprintf(err, errlen, "control socket %s: another gangway is running there", path);
    return -EADDRINUSE;
  }
  if (rc != -ECONNREFUSED) {
    snprintf(err, errlen, "control socket %s: %s", path, strerror(-rc));
    return rc;
  }
  /* Stale. Remove it only if it is still the socket looked at above. */
  struct stat now;
  if (lstat(path, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino &&
      S_ISSOCK(now.st_mode))
    unlink(path);
  return 0;
}

static int control_open(app *a, const char *path, char *err, size_t errlen) {
  a->control_fd = -1;
  if (!path || !*path) return 0;
  if (strlen(path) >= sizeof a->control_path) {
    snprintf(err, errlen, "control socket path too long: %s", path);
    return -ENAMETOOLONG;
  }
  int rc = control_clear(path, err, errlen);
  if (rc < 0) return rc;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
    return -errno;
  }
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  /* Mode 0600 from the start (reload is an admin's right): bind creates the
   * file under the umask, so there is no window and no chmod by name. */
  mode_t old = umask(0177);
  rc = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? 0 : -errno;
  umask(old);
  struct stat st;
  if (rc == 0 && lstat(path, &st) < 0) rc = -errno;
  if (rc == 0 && listen(fd, 64) < 0) rc = -errno;
  if (rc < 0) {
    /* EADDRINUSE here: something appeared at the path since control_clear. */
    snprintf(err, errlen, "control socket %s: %s", path, strerror(-rc));
    close(fd);
    return rc;
  }
  snprintf(a->control_path, sizeof a->control_path, "%s", path);
  a->control_fd = fd;
  a->control_dev = st.st_dev;
  a->control_ino = st.st_ino;
  rc = uv_poll_init_socket(&a->loop, &a->control, fd);
  if (rc == 0) {
    a->control_open = true;
    a->control.data = a;
    uv_timer_init(&a->loop, &a->control_retry);
    a->control_retry.data = a;
    spare_open(a);
    rc = uv_poll_start(&a->control, UV_READABLE, control_accept);
  }
  if (rc < 0) {
    snprintf(err, errlen, "control socket %s: %s", path, uv_strerror(rc));
    control_close(a);
    return rc;
  }
  return 0;
}

/* ---- watch = true: reload when the config or a script changes ----------- */

static void watch_timer_cb(uv_timer_t *t) {
  app *a = t->data;
  char err[1024];
  app_reload(a, "file change", err, sizeof err);
}

static void watch_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  (void)filename;
  (void)events;
  app *a = h->loop->data;
  if (status < 0 || a->stopping) return;
  /* Editors write a file in several steps: wait until they are done. */
  uv_timer_start(&a->watch_timer, watch_timer_cb, WATCH_DEBOUNCE_MS, 0);
}

static void watch_closed(uv_handle_t *h) { free(h); }

static void app_close_watches(app *a) {
  while (a->watches) {
    watch_entry *w = a->watches;
    a->watches = w->next;
    uv_close((uv_handle_t *)&w->ev, watch_closed);
  }
}

static void watch_add(app *a, const char *path) {
  /* Watch the directory: editors replace files by rename, which ends a
   * watch on the file itself. */
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  else snprintf(dir, sizeof dir, ".");
  for (watch_entry *w = a->watches; w; w = w->next) {
    char have[4096];
    size_t n = sizeof have;
    if (uv_fs_event_getpath(&w->ev, have, &n) == 0 && strcmp(have, dir) == 0) return;
  }
  watch_entry *w = calloc(1, sizeof *w);
  if (!w) return;
  uv_fs_event_init(&a->loop, &w->ev);
  if (uv_fs_event_start(&w->ev, watch_event, dir, 0) < 0) {
    gw_warn("watch: cannot watch %s", dir);
    uv_close((uv_handle_t *)&w->ev, watch_closed);
    return;
  }
  w->next = a->watches;
  a->watches = w;
}

static void app_watch(app *a) {
  app_close_watches(a);
  const gw_config *cfg = gw_relay_config(a->relay);
  if (!cfg->watch) return;
  watch_add(a, a->config_path);
  for (size_t i = 0; i < cfg->nlisteners; i++)
    for (size_t j = 0; j < cfg->listeners[i].nscripts; j++)
      watch_add(a, cfg->listeners[i].scripts[j]);
}

/* ---- the admin HTTP endpoint ------------------------------------------------ */

/* The worker as the admin side sees it. There is one today; with more, these
 * (and app_registry) would ask each in turn, and the routes stay as they are. */
static json_t *app_sessions(app *a) { return gw_relay_sessions_json(a->relay); }
static int app_close_session(app *a, uint64_t id, const char *reason) {
  return gw_relay_close_session(a->relay, id, reason);
}

static void admin_metrics(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)req;
  gw_admin_reply_metrics(res, app_registry(ud));
}

static void admin_sessions(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)req;
  app *a = ud;
  json_t *j = app_sessions(a);
  if (j) gw_admin_reply_json(res, 200, j);
  else gw_admin_reply_error(res, 500, "out of memory");
}

static void admin_upstreams(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)req;
  app *a = ud;
  json_t *j = gw_relay_upstreams_json(a->relay);
  if (j) gw_admin_reply_json(res, 200, j);
  else gw_admin_reply_error(res, 500, "out of memory");
}

static void admin_session_close(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  app *a = ud;
  const char *id = gw_admin_param(req, "id");
  uint64_t n;
  if (!capture_num(id, UINT64_MAX, &n) || !n) {
    gw_admin_reply_error(res, 400, "session id: expected a positive integer");
    return;
  }
  if (app_close_session(a, n, "closed by admin") < 0) {
    gw_admin_reply_error(res, 404, "no open session %" PRIu64, n);
    return;
  }
  gw_info("session %" PRIu64 " closed by admin", n);
  gw_admin_reply_json(res, 200, json_pack("{sI}", "closed", (json_int_t)n));
}

/* The same text `gangway reload` prints, in "result". */
static void admin_reload(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  (void)req;
  app *a = ud;
  char err[2048];
  int rc = a->stopping ? -ECANCELED : app_reload(a, "admin API", err, sizeof err);
  if (a->stopping) snprintf(err, sizeof err, "shutting down: no reload");
  char text[2100];
  snprintf(text, sizeof text, "%s: %s", rc == 0 ? "ok" : "error", err);
  gw_admin_reply_json(res, rc == 0 ? 200 : a->stopping ? 503 : 422,
                      json_pack("{sb ss}", "ok", rc == 0, "result", text));
}

/* /scripts/{name}: a script's gw.admin endpoint. */
static void admin_script(void *ud, const gw_admin_request *req, gw_admin_response *res) {
  app *a = ud;
  char *out = NULL;
  size_t outlen = 0;
  int status = gw_script_admin(gw_relay_script(a->relay), gw_admin_param(req, "name"),
                               req->method, req->body, req->body_len, &out, &outlen);
  if (out) gw_admin_reply_take(res, status, "application/json", out, outlen);
  else gw_admin_reply_error(res, status >= 400 ? status : 500, "script endpoint failed");
}

static const gw_admin_route admin_routes[] = {
    {"GET", "/metrics", admin_metrics},
    {"GET", "/sessions", admin_sessions},
    {"GET", "/upstreams", admin_upstreams},
    {"DELETE", "/sessions/{id}", admin_session_close},
    {"POST", "/reload", admin_reload},
    {"GET", "/scripts/{name}", admin_script},
    {"POST", "/scripts/{name}", admin_script},
    {"DELETE", "/scripts/{name}", admin_script},
};

/* Starts, moves, stops or re-keys the endpoint to match the config in
 * effect. 0, or -1 with err when it cannot listen. */
static int app_admin_setup(app *a, char *err, size_t errlen) {
  const gw_config *cfg = gw_relay_config(a->relay);
  if (a->admin && strcmp(a->admin_listen, cfg->admin_listen) == 0) {
    if (gw_admin_set_token(a->admin, cfg->admin_token, cfg->admin_token_for_reads) < 0)
      gw_warn("admin: the endpoint on %s keeps its token: it is not on a loopback address",
              a->admin_listen);
    return 0;
  }
  if (a->admin) {
    gw_admin_stop(a->admin);
    a->admin = NULL;
    gw_info("admin: stopped listening on %s", a->admin_listen);
    a->admin_listen[0] = '\0';
  }
  if (!cfg->admin_listen[0]) return 0;
  gw_admin_config ac = {.listen = cfg->admin_listen,
                        .token = cfg->admin_token,
                        .token_for_reads = cfg->admin_token_for_reads,
                        .max_connections = ADMIN_CONNECTIONS,
                        .metrics = a->metrics};
  a->admin = gw_admin_start(&a->loop, &ac, admin_routes,
                            sizeof admin_routes / sizeof admin_routes[0], a, err, errlen);
  if (!a->admin) return -1;
  snprintf(a->admin_listen, sizeof a->admin_listen, "%s", cfg->admin_listen);
  gw_info("admin: listening on http://%s%s", cfg->admin_listen,
          cfg->admin_token ? "" : " (no token: read-only)");
  return 0;
}

/* After a reload: the endpoint follows the new config, or says why not. */
static void app_admin_apply(app *a) {
  char err[512];
  if (app_admin_setup(a, err, sizeof err) < 0) gw_error("%s", err);
}

int gw_app_run(const char *config_path) {
  char err[2048];
  gw_config *cfg;
  if (gw_app_load_config(config_path, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "gangway: %s\n", err);
    return GW_EXIT_INVALID;
  }
  signal(SIGPIPE, SIG_IGN);
  app a = {.config_path = config_path, .generation = 1, .control_fd = -1, .spare_fd = -1};
  uv_loop_init(&a.loop);
  a.loop.data = &a;
  gw_log_setup(cfg->log_level, cfg->log_format);
  app_fd_fit(&a, cfg);
  char *control = cfg->control ? strdup(cfg->control) : NULL;
  a.metrics = gw_metrics_new();
  gw_relay_metrics wm = {a.metrics, &a.fam, NULL};
  int rc = a.metrics ? gw_metrics_add_gangway(a.metrics, &a.fam) : -ENOMEM;
  if (rc == 0) rc = gw_relay_add_families(&wm);
  if (rc < 0) {
    gw_config_free(cfg);
    free(cfg);
    snprintf(err, sizeof err, "out of memory");
  } else {
    *a.fam.script_generation = 1;
    a.started_ms = uv_now(&a.loop);
    rc = gw_relay_new(&a.loop, cfg, &wm, &a.relay, err, sizeof err);
  }
  int code = 0;
  if (rc == 0) rc = control_open(&a, control, err, sizeof err);
  free(control);
  if (rc == 0 && app_admin_setup(&a, err, sizeof err) < 0) rc = -EADDRNOTAVAIL;
  uv_timer_init(&a.loop, &a.capture.timer);
  uv_timer_init(&a.loop, &a.capture.finish);
  a.capture.timer.data = a.capture.finish.data = &a;
  if (rc < 0) {
    gw_error("%s", err);
    code = rc == -EINVAL || rc == -ENOENT ? GW_EXIT_INVALID : GW_EXIT_RUNTIME;
    if (a.relay) gw_relay_close(a.relay);
    control_close(&a);
    uv_close((uv_handle_t *)&a.capture.timer, NULL);
    uv_close((uv_handle_t *)&a.capture.finish, NULL);
  } else {
    uv_signal_init(&a.loop, &a.sig_int);
    uv_signal_init(&a.loop, &a.sig_term);
    uv_signal_init(&a.loop, &a.sig_hup);
    a.sig_int.data = a.sig_term.data = a.sig_hup.data = &a;
    uv_signal_start(&a.sig_int, on_signal, SIGINT);
    uv_signal_start(&a.sig_term, on_signal, SIGTERM);
    uv_signal_start(&a.sig_hup, on_signal, SIGHUP);
    uv_timer_init(&a.loop, &a.watch_timer);
    a.watch_timer.data = &a;
    app_watch(&a);
    app_redis_apply(&a);
    gw_info("gangway %s running (config %s, pid %d)", GW_VERSION, config_path, (int)getpid());
    /* Every listener is bound and the control socket answers. */
    char status[512];
    snprintf(status, sizeof status, "generation 1 running, %zu listener(s)",
             gw_relay_config(a.relay)->nlisteners);
    notify_ready(status);
  }
  uv_run(&a.loop, UV_RUN_DEFAULT);
  gw_relay_free(a.relay);
  gw_metrics_free(a.metrics); /* after the relay: its collect hook is gone with it */
  if (uv_loop_close(&a.loop) != 0) gw_warn("event loop closed with handles open");
  return code;
}

