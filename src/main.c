/* main.c: gangway's command line, signals, control socket and live reload.
 *
 *   gangway [-c FILE]          run the proxy (default ./config.lua, or the
 *                              installed config for an installed gangway)
 *   gangway check [-c FILE] [--json]  load the config and every script, exit
 *   gangway reload [-c FILE]   ask the running gangway to reload
 *   gangway stats [-c FILE]    print the running gangway's counters (JSON)
 *
 * Exit codes: 0 success; 1 invalid config or script (or a failed reload);
 * 2 usage error; 3 runtime failure (cannot listen, control socket path
 * unusable, no running gangway). Also here: what gangway tells systemd
 * (sd_notify) and how it fits limits.max_sessions under the open-files
 * limit. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
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
#include <lua.h>
#include <systemd/sd-daemon.h>
#include <uv.h>

#include "config.h"
#include "log.h"
#include "relay.h"
#include "script.h"

#define EXIT_INVALID 1
#define EXIT_USAGE 2
#define EXIT_RUNTIME 3
#define WATCH_DEBOUNCE_MS 200
#define CONTROL_LINE_MAX 256     /* a request, newline included */
#define CONTROL_LINE_MAX_TEXT "256"
#define CONTROL_TIMEOUT_MS 5000  /* to send a request and read the answer */
#define CONTROL_CLIENTS_MAX 16   /* connected at once */
#define CONTROL_RETRY_MS 250     /* accept again after running out of fds */
/* Open files kept out of sessions' reach, besides the listeners, the
 * control socket and its clients: stdio, the loop's own (epoll, signal
 * pipes, eventfd, inotify, libuv's EMFILE spare), the control spare, and
 * what a reload opens for a moment (the config, scripts, DNS sockets). */
#define FD_RESERVE 24

/* %s: the default config in effect (default_config). */
static const char usage_fmt[] =
    "usage: gangway [-c FILE]                 run the proxy (default config: %s)\n"
    "       gangway check [-c FILE] [--json]  validate the config and its scripts\n"
    "                                         (--json: one JSON object on stdout)\n"
    "       gangway reload [-c FILE]          reload the running gangway's config and scripts\n"
    "       gangway stats [-c FILE]           print the running gangway's counters as JSON\n"
    "       gangway --version | --help\n"
    "\n"
    "Signals: SIGHUP reloads; SIGINT/SIGTERM drain (stop accepting, let sessions\n"
    "finish for up to timeouts.drain_ms, then close the rest); a second one quits.\n"
    "Exit codes: 0 ok, 1 invalid config or script (or failed reload), 2 usage,\n"
    "3 runtime failure (cannot listen, control socket path unusable, no running\n"
    "gangway to talk to).\n";

#if !defined(GW_INSTALL_BINDIR) || !defined(GW_INSTALL_CONFIG)
#error "GW_INSTALL_BINDIR and GW_INSTALL_CONFIG come from CMake (GNUInstallDirs)"
#endif

/* The config a plain `gangway` reads: the installed one
 * (GW_INSTALL_CONFIG, e.g. /etc/gangway/config.lua) when this binary runs
 * from the install's bindir, else ./config.lua, so that a source checkout
 * keeps using its own tree. */
static const char *default_config(void) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1); /* symlinks resolved */
  if (n <= 0) return "config.lua";
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return "config.lua";
  *slash = '\0';
  char *bindir = realpath(GW_INSTALL_BINDIR, NULL); /* /bin -> /usr/bin and such */
  bool installed = bindir && strcmp(bindir, exe[0] ? exe : "/") == 0;
  free(bindir);
  return installed ? GW_INSTALL_CONFIG : "config.lua";
}

static void print_usage(FILE *f, const char *default_path) {
  fprintf(f, usage_fmt, default_path[0] == '/' ? default_path : "./config.lua");
}

/* ---- the running proxy -------------------------------------------------- */

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
} control_client;

typedef struct watch_entry {
  uv_fs_event_t ev;
  struct watch_entry *next;
} watch_entry;

typedef struct app {
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
} app;

static void app_close_watches(app *a);
static void app_watch(app *a);

/* Two sockets per session; what stays must cover everything that has to
 * keep answering (listeners, the control socket and its clients). */
static rlim_t fd_reserve(const gw_config *cfg) {
  return FD_RESERVE + 1 + CONTROL_CLIENTS_MAX + (rlim_t)cfg->nlisteners;
}

/* Fits limits.max_sessions under the open-files limit so that sessions can
 * never take the fds the control socket needs; 0 (no limit) is fitted too.
 * A run (apply) first raises its soft limit toward what the sessions need,
 * up to the hard limit; `check` only says what a run would do. Says in note
 * what was clamped and why ("" if nothing was). */
static void fd_fit(gw_config *cfg, bool apply, char *note, size_t notelen) {
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
  fd_fit(cfg, true, note, sizeof note);
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

static int load_config(const char *path, gw_config **out, char *err, size_t errlen) {
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

/* Loads the config again and swaps it in; err says why not. */
static int app_reload(app *a, const char *trigger, char *err, size_t errlen) {
  uint64_t t0 = uv_hrtime();
  if (!a->stopping) notify_reloading();
  gw_config *cfg;
  int rc = load_config(a->config_path, &cfg, err, errlen);
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
    return rc;
  }
  a->generation++;
  snprintf(err, errlen, "generation %llu active after %.1f ms",
           (unsigned long long)a->generation, ms);
  gw_info("reload (%s): %s", trigger, err);
  snprintf(status, sizeof status, "generation %llu running (reload: %s)",
           (unsigned long long)a->generation, trigger);
  if (!a->stopping) notify_ready(status);
  if (gw_relay_config(a->relay)->watch || a->watches) app_watch(a);
  return 0;
}

static void control_client_close(struct control_client *c);
static void control_close(app *a);

static void on_drained(gw_relay *r, void *ud) {
  app *a = ud;
  (void)r;
  if (a->closed) return;
  a->closed = true;
  gw_info("drained, exiting");
  while (a->control_clients) control_client_close(a->control_clients);
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

static void control_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)buf;
  control_client *c = st->data;
  app *a = st->loop->data;
  if (nread < 0) {
    control_client_close(c);
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
    if (gw_relay_stats_json(a->relay, answer, sizeof answer - 1) == 0) strcat(answer, "\n");
    else snprintf(answer, sizeof answer, "error: stats too large\n");
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
    if (!c->answered) oldest = c;
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

static int run(const char *config_path) {
  char err[2048];
  gw_config *cfg;
  if (load_config(config_path, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "gangway: %s\n", err);
    return EXIT_INVALID;
  }
  signal(SIGPIPE, SIG_IGN);
  app a = {.config_path = config_path, .generation = 1, .control_fd = -1, .spare_fd = -1};
  uv_loop_init(&a.loop);
  a.loop.data = &a;
  gw_log_setup(cfg->log_level, cfg->log_format);
  app_fd_fit(&a, cfg);
  char *control = cfg->control ? strdup(cfg->control) : NULL;
  int rc = gw_relay_new(&a.loop, cfg, &a.relay, err, sizeof err);
  int code = 0;
  if (rc == 0) rc = control_open(&a, control, err, sizeof err);
  free(control);
  if (rc < 0) {
    gw_error("%s", err);
    code = rc == -EINVAL || rc == -ENOENT ? EXIT_INVALID : EXIT_RUNTIME;
    if (a.relay) gw_relay_close(a.relay);
    control_close(&a);
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
    gw_info("gangway %s running (config %s, pid %d)", GW_VERSION, config_path, (int)getpid());
    /* Every listener is bound and the control socket answers. */
    char status[512];
    snprintf(status, sizeof status, "generation 1 running, %zu listener(s)",
             gw_relay_config(a.relay)->nlisteners);
    notify_ready(status);
  }
  uv_run(&a.loop, UV_RUN_DEFAULT);
  gw_relay_free(a.relay);
  if (uv_loop_close(&a.loop) != 0) gw_warn("event loop closed with handles open");
  return code;
}

/* ---- commands that talk to a running gangway --------------------------- */

static int control_command(const char *config_path, const char *cmd) {
  char err[2048];
  gw_config *cfg;
  if (load_config(config_path, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "gangway: %s\n", err);
    return EXIT_INVALID;
  }
  char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
  snprintf(path, sizeof path, "%s", cfg->control ? cfg->control : "");
  gw_config_free(cfg);
  free(cfg);
  if (!*path) {
    fprintf(stderr, "gangway: %s: control socket disabled (control = \"\")\n", config_path);
    return EXIT_RUNTIME;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    fprintf(stderr, "gangway: no gangway answers on %s: %s\n", path, strerror(errno));
    if (fd >= 0) close(fd);
    return EXIT_RUNTIME;
  }
  char line[64];
  int n = snprintf(line, sizeof line, "%s\n", cmd);
  if (write(fd, line, (size_t)n) != n) {
    fprintf(stderr, "gangway: %s: %s\n", path, strerror(errno));
    close(fd);
    return EXIT_RUNTIME;
  }
  char answer[8192];
  size_t len = 0;
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  while (len < sizeof answer - 1 && poll(&pfd, 1, 30000) > 0) {
    ssize_t k = read(fd, answer + len, sizeof answer - 1 - len);
    if (k <= 0) break;
    len += (size_t)k;
  }
  close(fd);
  answer[len] = '\0';
  if (!len) {
    fprintf(stderr, "gangway: no answer on %s\n", path);
    return EXIT_RUNTIME;
  }
  bool failed = strncmp(answer, "error", 5) == 0;
  fputs(answer, failed ? stderr : stdout);
  return failed ? EXIT_INVALID : 0;
}

/* The script layer needs a host even to only load scripts. */
static int check_emit(gw_script_session *ss, gw_side to, const uint8_t *d, size_t n) {
  (void)ss, (void)to, (void)d, (void)n;
  return -ENOTCONN;
}
static void check_close(gw_script_session *ss, const char *reason) { (void)ss, (void)reason; }
static uint64_t check_now(void *host) { (void)host; return 0; }
static void check_wake(void *host, uint64_t when) { (void)host, (void)when; }

/* s with every byte that does not start a valid UTF-8 sequence replaced by
 * U+FFFD (malloc'd): JSON text must be UTF-8, and a path or a message may
 * hold any bytes. */
static char *utf8_clean(const char *s) {
  size_t n = strlen(s);
  char *out = malloc(3 * n + 1);
  if (!out) return NULL;
  const unsigned char *p = (const unsigned char *)s;
  size_t o = 0;
  while (*p) {
    unsigned char c = *p;
    size_t len = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    /* The second byte's range rules out overlong forms, surrogates and
     * code points past U+10FFFF. */
    unsigned char lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
    unsigned char hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
    bool ok = len > 0;
    for (size_t i = 1; ok && i < len; i++)
      ok = p[i] >= (i == 1 ? lo : 0x80) && p[i] <= (i == 1 ? hi : 0xBF);
    if (ok) {
      memcpy(out + o, p, len);
      o += len;
      p += len;
    } else {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3;
      p++;
    }
  }
  out[o] = '\0';
  return out;
}

/* A JSON string of any bytes (invalid UTF-8 as U+FFFD). */
static json_t *json_text(const char *s) {
  char *clean = utf8_clean(s);
  json_t *j = clean ? json_string(clean) : NULL;
  free(clean);
  return j;
}

/* `check --json`: warnings logged while scripts load go into the warnings
 * array instead of stderr; errors are the result's "error" already. A text
 * line is "STAMP LEVEL  msg" with the level padded to 5 (log.h): keep msg. */
static void check_log_sink(gw_log_level level, const char *line, void *ud) {
  if (level != GW_LOG_WARN) return;
  const char *msg = strchr(line, ' ');
  msg = msg && strlen(msg) > 6 ? msg + 6 : line;
  if (*msg == ' ') msg++;
  json_array_append_new(ud, json_text(msg));
}

/* Loads the config and every script, as a run would, and says what it
 * found: a line of text, or one JSON object on stdout (json). */
static int check(const char *config_path, bool json) {
  char err[2048], note[256];
  json_t *warnings = json ? json_array() : NULL;
  gw_log_setup(GW_LOG_WARN, GW_LOG_TEXT);
  if (json) gw_log_set_sink(check_log_sink, warnings);
  gw_config *cfg = NULL;
  gw_script *s = NULL;
  size_t nscripts = 0;
  int rc = load_config(config_path, &cfg, err, sizeof err);
  if (rc == 0) {
    fd_fit(cfg, false, note, sizeof note);
    if (note[0] && json) json_array_append_new(warnings, json_text(note));
    else if (note[0]) fprintf(stderr, "%s: warning: %s\n", config_path, note);
    static const gw_host_ops ops = {check_emit, check_close, check_now, check_wake, NULL};
    gw_script_limits limits = {cfg->handler_instructions, (size_t)cfg->lua_memory_mb << 20};
    s = gw_script_new(&limits, &ops, NULL);
    rc = s ? gw_script_load(s, cfg, err, sizeof err) : -ENOMEM;
    if (!s) snprintf(err, sizeof err, "out of memory");
    for (size_t i = 0; i < cfg->nlisteners; i++) nscripts += cfg->listeners[i].nscripts;
  }
  if (json) {
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_boolean(rc == 0));
    json_object_set_new(o, "config", json_text(config_path));
    if (rc == 0) {
      json_object_set_new(o, "listeners", json_integer((json_int_t)cfg->nlisteners));
      json_object_set_new(o, "scripts", json_integer((json_int_t)nscripts));
    } else {
      json_object_set_new(o, "error", json_text(err));
    }
    json_object_set_new(o, "warnings", warnings);
    char *text = json_dumps(o, JSON_COMPACT);
    if (text) printf("%s\n", text);
    else rc = -ENOMEM;
    free(text);
    json_decref(o);
    gw_log_set_sink(NULL, NULL);
  } else if (rc < 0) {
    fprintf(stderr, "%s\n", err);
  } else {
    printf("%s: ok (%zu listener(s), %zu script(s))\n", config_path, cfg->nlisteners, nscripts);
  }
  gw_script_free(s);
  if (cfg) gw_config_free(cfg);
  free(cfg);
  return rc < 0 ? EXIT_INVALID : 0;
}

int main(int argc, char **argv) {
  const char *cmd = "run";
  int argi = 1;
  if (argc > 1 && argv[1][0] != '-') {
    cmd = argv[1];
    argi = 2;
  }
  const char *default_path = default_config();
  const char *config_path = default_path;
  bool json = false;
  static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                       {"help", no_argument, NULL, 'h'},
                                       {"version", no_argument, NULL, 'V'},
                                       {"json", no_argument, NULL, 'j'},
                                       {NULL, 0, NULL, 0}};
  optind = argi;
  int c;
  while ((c = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config_path = optarg; break;
    case 'j': json = true; break;
    case 'h': print_usage(stdout, default_path); return 0;
    case 'V': printf("gangway %s (libuv %s, %s)\n", GW_VERSION, uv_version_string(), LUA_RELEASE); return 0;
    default: print_usage(stderr, default_path); return EXIT_USAGE;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "gangway: unexpected argument \"%s\"\n", argv[optind]);
    print_usage(stderr, default_path);
    return EXIT_USAGE;
  }
  if (strcmp(cmd, "run") == 0) return run(config_path);
  if (json && strcmp(cmd, "check") != 0) {
    fprintf(stderr, "gangway: --json goes with check only\n");
    print_usage(stderr, default_path);
    return EXIT_USAGE;
  }
  if (strcmp(cmd, "check") == 0) return check(config_path, json);
  if (strcmp(cmd, "reload") == 0 || strcmp(cmd, "stats") == 0)
    return control_command(config_path, cmd);
  fprintf(stderr, "gangway: unknown command \"%s\"\n", cmd);
  print_usage(stderr, default_path);
  return EXIT_USAGE;
}
