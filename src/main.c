/* main.c: gangway's command line.
 *
 *   gangway [-c FILE]          run the proxy (default ./config.lua, or the
 *                              installed config for an installed gangway)
 *   gangway check [-c FILE] [--json]  load the config and every script, exit
 *   gangway reload [-c FILE]   ask the running gangway to reload
 *   gangway stats [-c FILE]    print the running gangway's counters (JSON)
 *   gangway capture [-c FILE] [filters] -w FILE   write a pcap of its frames
 *   gangway dissector [-c FILE] [--listener NAME] [-o FILE]   write a
 *                              Wireshark dissector from packet definitions
 *
 * Exit codes: 0 success; 1 invalid config or script (or a failed reload or
 * capture); 2 usage error; 3 runtime failure (cannot listen, control
 * socket path unusable, no running gangway). The running proxy is app.c's;
 * this file only parses the command line and talks to the control socket. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <jansson.h>
#include <lua.h>
#include <uv.h>

#include "app.h"
#include "config.h"
#include "dissector.h"
#include "log.h"
#include "script.h"

#define EXIT_INVALID GW_EXIT_INVALID
#define EXIT_USAGE GW_EXIT_USAGE
#define EXIT_RUNTIME GW_EXIT_RUNTIME
#define CONTROL_ANSWER_MS 30000 /* for an answer, past a capture's own time */

/* %s: the default config in effect (default_config). */
static const char usage_fmt[] =
    "usage: gangway [-c FILE]                 run the proxy (default config: %s)\n"
    "       gangway check [-c FILE] [--json]  validate the config and its scripts\n"
    "                                         (--json: one JSON object on stdout)\n"
    "       gangway reload [-c FILE]          reload the running gangway's config and scripts\n"
    "       gangway stats [-c FILE]           print the running gangway's counters as JSON\n"
    "       gangway capture [-c FILE] [--listener NAME] [--session ID] [--opcode N]\n"
    "               [--seconds S] [--max-mb M] [--originals] -w FILE.pcap\n"
    "                                         write the running gangway's frames to a pcap\n"
    "                                         (default 60 s, 100 MiB at most)\n"
    "       gangway dissector [-c FILE] [--listener NAME] [-o FILE]\n"
    "                                         write a Wireshark Lua dissector from the\n"
    "                                         listeners' packet definitions (protocol = ...)\n"
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

/* ---- commands that talk to a running gangway --------------------------- */

/* SIGINT or SIGTERM while `gangway capture` waits for its answer. */
static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig) {
  (void)sig;
  interrupted = 1;
}

#define INTERRUPT_ANSWER_MS 10000 /* for a capture's end after Ctrl-C */
/* One stop can arrive twice: timeout(1) signals the command and its own
 * process group. Only a signal this long after the first gives up. */
#define SECOND_INTERRUPT_MS 500

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Sends cmd to the control socket and prints the one-line answer; waits
 * up to wait_ms for it. interruptible (a capture): SIGINT or SIGTERM
 * half-closes the connection (the running gangway ends the capture then)
 * and waits a little more for the answer, which says what was written; a
 * second one, half a second later or more, stops waiting. The signals are
 * taken only inside ppoll, so none falls between two waits. Other
 * commands keep the signals' default actions. */
static int control_command(const char *config_path, const char *cmd, int wait_ms,
                           bool interruptible) {
  char err[2048];
  gw_config *cfg;
  if (gw_app_load_config(config_path, &cfg, err, sizeof err) < 0) {
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
  char line[GW_CONTROL_LINE_MAX + 1];
  int n = snprintf(line, sizeof line, "%s\n", cmd);
  if (n >= (int)sizeof line) {
    fprintf(stderr, "gangway: request longer than %d bytes (a shorter path?)\n",
            GW_CONTROL_LINE_MAX);
    close(fd);
    return EXIT_USAGE;
  }
  if (write(fd, line, (size_t)n) != n) {
    fprintf(stderr, "gangway: %s: %s\n", path, strerror(errno));
    close(fd);
    return EXIT_RUNTIME;
  }
  /* The answer is one line of any length (stats grows with listeners). */
  size_t len = 0, cap = 0;
  char *answer = NULL;
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  struct sigaction sa_int = {.sa_handler = on_interrupt}, old_int, old_term;
  sigset_t block, old_mask;
  if (interruptible) {
    sigemptyset(&sa_int.sa_mask);
    sigaction(SIGINT, &sa_int, &old_int);
    sigaction(SIGTERM, &sa_int, &old_term);
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
  }
  bool half_closed = false, gave_up = false;
  uint64_t half_closed_at = 0;
  for (;;) {
    int ms = half_closed ? INTERRUPT_ANSWER_MS : wait_ms;
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    int r = interruptible ? ppoll(&pfd, 1, &ts, &old_mask) : poll(&pfd, 1, ms);
    if (r < 0 && errno == EINTR) {
      if (!interrupted) continue;
      interrupted = 0;
      if (!half_closed) {
        shutdown(fd, SHUT_WR);
        half_closed = true;
        half_closed_at = mono_ms();
      } else if (mono_ms() - half_closed_at >= SECOND_INTERRUPT_MS) {
        gave_up = true;
        break;
      }
      continue;
    }
    if (r <= 0) break;
    if (cap - len < 4096) {
      char *grown = realloc(answer, cap = cap ? 2 * cap : 16384);
      if (!grown) break;
      answer = grown;
    }
    ssize_t k = read(fd, answer + len, cap - 1 - len);
    if (k <= 0) break;
    len += (size_t)k;
  }
  if (interruptible) { /* unmasked first: a late signal only sets the flag */
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
  }
  close(fd);
  if (gave_up && !len) {
    free(answer);
    fprintf(stderr, "gangway: interrupted again: stopped waiting for the answer (the running "
                    "gangway ends the capture and logs what it wrote)\n");
    return EXIT_RUNTIME;
  }
  if (answer) answer[len] = '\0';
  if (!len) {
    free(answer);
    fprintf(stderr, "gangway: no answer on %s\n", path);
    return EXIT_RUNTIME;
  }
  bool failed = strncmp(answer, "error", 5) == 0;
  fputs(answer, failed ? stderr : stdout);
  free(answer);
  return failed ? EXIT_INVALID : 0;
}

/* What `gangway capture` asks for (-w and the filters). */
typedef struct capture_args {
  const char *out, *listener, *session, *opcode, *seconds, *max_mb;
  bool originals;
} capture_args;

/* A value that goes into the control line as one word. */
static bool one_word(const char *what, const char *v) {
  if (*v && !strpbrk(v, " \t\r\n")) return true;
  fprintf(stderr, "gangway: %s: no spaces or line breaks allowed, got \"%s\"\n", what, v);
  return false;
}

/* "capture path=/abs k=v ...": -w is made absolute here, as the running
 * gangway's working directory is not the command's. */
static int capture(const char *config_path, const capture_args *ca) {
  if (!ca->out) {
    fprintf(stderr, "gangway: capture needs -w FILE.pcap\n");
    return EXIT_USAGE;
  }
  char cwd[PATH_MAX], path[PATH_MAX + 8];
  if (ca->out[0] != '/' && !getcwd(cwd, sizeof cwd)) {
    fprintf(stderr, "gangway: %s\n", strerror(errno));
    return EXIT_RUNTIME;
  }
  snprintf(path, sizeof path, "%s%s%s", ca->out[0] == '/' ? "" : cwd,
           ca->out[0] == '/' ? "" : "/", ca->out);
  char cmd[GW_CONTROL_LINE_MAX * 2];
  int n = snprintf(cmd, sizeof cmd, "capture path=%s", path);
  const struct { const char *key, *v; } kv[] = {{"listener", ca->listener}, {"session", ca->session},
                                               {"opcode", ca->opcode}, {"seconds", ca->seconds}};
  if (!one_word("-w", path)) return EXIT_USAGE;
  for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
    if (!kv[i].v) continue;
    if (!one_word(kv[i].key, kv[i].v)) return EXIT_USAGE;
    n += snprintf(cmd + n, sizeof cmd - (size_t)n, " %s=%s", kv[i].key, kv[i].v);
  }
  uint64_t seconds = ca->seconds ? strtoull(ca->seconds, NULL, 10) : 60;
  if (ca->max_mb) {
    char *end;
    unsigned long long mb = strtoull(ca->max_mb, &end, 10);
    if (!*ca->max_mb || *end || !mb || mb > (1ull << 20)) {
      fprintf(stderr, "gangway: --max-mb: expected 1 to 1048576, got \"%s\"\n", ca->max_mb);
      return EXIT_USAGE;
    }
    n += snprintf(cmd + n, sizeof cmd - (size_t)n, " max_bytes=%llu", mb << 20);
  }
  if (ca->originals) n += snprintf(cmd + n, sizeof cmd - (size_t)n, " originals=1");
  if (n >= (int)sizeof cmd - 1) {
    fprintf(stderr, "gangway: capture request too long (a shorter -w path?)\n");
    return EXIT_USAGE;
  }
  int wait = seconds > 86400 ? CONTROL_ANSWER_MS : (int)(seconds * 1000) + CONTROL_ANSWER_MS;
  return control_command(config_path, cmd, wait, true);
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
  if (json) {
    gw_log_set_sink(check_log_sink, warnings);
    gw_log_sink_raw(true); /* JSON carries any byte */
  }
  gw_config *cfg = NULL;
  gw_script *s = NULL;
  size_t nscripts = 0;
  int rc = gw_app_load_config(config_path, &cfg, err, sizeof err);
  if (rc == 0) {
    gw_app_fd_fit(cfg, false, note, sizeof note);
    if (note[0] && json) json_array_append_new(warnings, json_text(note));
    else if (note[0]) fprintf(stderr, "%s: warning: %s\n", config_path, note);
    static const gw_host_ops ops = {check_emit, check_close, check_now, check_wake, NULL, NULL, NULL};
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

/* ---- dissector ------------------------------------------------------- */

/* `gangway dissector`: a Wireshark Lua dissector for the listeners with
 * packet definitions (all of them, or the one named), to stdout or out. */
static int dissector(const char *config_path, const char *listener, const char *out) {
  char err[2048];
  gw_config *cfg;
  if (gw_app_load_config(config_path, &cfg, err, sizeof err) < 0) {
    fprintf(stderr, "gangway: %s\n", err);
    return EXIT_INVALID;
  }
  char *text = NULL;
  size_t len = 0;
  int rc = gw_dissector_from_config(cfg, listener, &text, &len, err, sizeof err);
  gw_config_free(cfg);
  free(cfg);
  if (rc < 0) {
    fprintf(stderr, "gangway: %s\n", err);
    return rc == -ENOMEM ? EXIT_RUNTIME : EXIT_INVALID;
  }
  /* Written whole or not at all: the text is complete before the file opens. */
  FILE *f = out ? fopen(out, "w") : stdout;
  bool ok = f && fwrite(text, 1, len, f) == len;
  if (out && f && fclose(f) != 0) ok = false;
  else if (!out && fflush(stdout) != 0) ok = false;
  free(text);
  if (!ok) {
    fprintf(stderr, "gangway: %s: %s\n", out ? out : "stdout", strerror(errno));
    return EXIT_RUNTIME;
  }
  return 0;
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
  bool json = false, capture_opts = false, listener_opt = false;
  capture_args ca = {0};
  const char *dissector_out = NULL; /* dissector -o */
  static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                       {"help", no_argument, NULL, 'h'},
                                       {"version", no_argument, NULL, 'V'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"listener", required_argument, NULL, 'L'},
                                       {"session", required_argument, NULL, 'S'},
                                       {"opcode", required_argument, NULL, 'O'},
                                       {"seconds", required_argument, NULL, 's'},
                                       {"max-mb", required_argument, NULL, 'M'},
                                       {"originals", no_argument, NULL, 'R'},
                                       {NULL, 0, NULL, 0}};
  optind = argi;
  int c;
  while ((c = getopt_long(argc, argv, "c:hVw:o:", opts, NULL)) != -1) {
    switch (c) {
    case 'c': config_path = optarg; break;
    case 'j': json = true; break;
    case 'w': ca.out = optarg, capture_opts = true; break;
    case 'L': ca.listener = optarg, listener_opt = true; break;
    case 'S': ca.session = optarg, capture_opts = true; break;
    case 'O': ca.opcode = optarg, capture_opts = true; break;
    case 's': ca.seconds = optarg, capture_opts = true; break;
    case 'M': ca.max_mb = optarg, capture_opts = true; break;
    case 'R': ca.originals = capture_opts = true; break;
    case 'o': dissector_out = optarg; break;
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
  if (capture_opts && strcmp(cmd, "capture") != 0) {
    fprintf(stderr, "gangway: -w, --session, --opcode, --seconds, --max-mb and "
            "--originals go with capture only\n");
    print_usage(stderr, default_path);
    return EXIT_USAGE;
  }
  bool is_dissector = strcmp(cmd, "dissector") == 0;
  if ((listener_opt && !is_dissector && strcmp(cmd, "capture") != 0) ||
      (dissector_out && !is_dissector)) {
    fprintf(stderr, "gangway: %s goes with %s only\n", dissector_out ? "-o" : "--listener",
            dissector_out ? "dissector" : "capture and dissector");
    print_usage(stderr, default_path);
    return EXIT_USAGE;
  }
  if (strcmp(cmd, "run") == 0) return gw_app_run(config_path);
  if (json && strcmp(cmd, "check") != 0) {
    fprintf(stderr, "gangway: --json goes with check only\n");
    print_usage(stderr, default_path);
    return EXIT_USAGE;
  }
  if (strcmp(cmd, "check") == 0) return check(config_path, json);
  if (strcmp(cmd, "reload") == 0 || strcmp(cmd, "stats") == 0)
    return control_command(config_path, cmd, CONTROL_ANSWER_MS, false);
  if (strcmp(cmd, "capture") == 0) return capture(config_path, &ca);
  if (is_dissector) return dissector(config_path, ca.listener, dissector_out);
  fprintf(stderr, "gangway: unknown command \"%s\"\n", cmd);
  print_usage(stderr, default_path);
  return EXIT_USAGE;
}
