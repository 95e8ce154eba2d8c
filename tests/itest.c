/* itest.c: the integration tests' toolbox (see itest.h). */
#include "itest.h"

#include "frame.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t it_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Under valgrind everything in gangway runs ~20x slower: waits stretch. */
static uint64_t stretch(int ms) {
  const char *vg = getenv("GW_VALGRIND");
  return (uint64_t)ms * (vg && *vg && strcmp(vg, "0") != 0 ? 10 : 1);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* ---- files and processes ----------------------------------------------- */

int it_free_port(void) {
  /* Ports handed out in one test process never repeat, so two servers of a
   * test cannot race for the same one. */
  static int used[256];
  static int nused;
  for (int attempt = 0; attempt < 50; attempt++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
      fail_msg("cannot find a free port: %s", strerror(errno));
    close(fd);
    int port = ntohs(sa.sin_port);
    bool seen = false;
    for (int i = 0; i < nused; i++) seen |= used[i] == port;
    if (!seen) {
      if (nused < 256) used[nused++] = port;
      return port;
    }
  }
  fail_msg("no free port");
  return -1;
}

void it_mkdtemp(char *out, size_t outlen) {
  snprintf(out, outlen, "/tmp/gw-it-XXXXXX");
  if (!mkdtemp(out)) fail_msg("mkdtemp: %s", strerror(errno));
}

void it_rmdir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) it_rmdir(p);
    else unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

void it_write(const char *dir, const char *name, const char *fmt, ...) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  if (!f) fail_msg("cannot write %s: %s", path, strerror(errno));
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
}

char *it_slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  size_t n;
  while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (cap - len < 2) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  fclose(f);
  if (buf) buf[len] = '\0';
  return buf;
}

void it_gangway_prepare(it_gangway *g) {
  memset(g, 0, sizeof *g);
  it_mkdtemp(g->dir, sizeof g->dir);
  snprintf(g->config, sizeof g->config, "%s/config.lua", g->dir);
  snprintf(g->log, sizeof g->log, "%s/gangway.log", g->dir);
}

void it_gangway_run(it_gangway *g, int wait_port) {
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    int fd = open(g->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 2);
    dup2(fd, 1);
    if (chdir(g->dir) < 0) _exit(126);
    if (stretch(1) > 1)
      execlp("valgrind", "valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
             "--show-leak-kinds=definite,indirect", "--errors-for-leak-kinds=definite,indirect",
             GW_BIN, "-c", g->config, (char *)NULL);
    else
      execl(GW_BIN, GW_BIN, "-c", g->config, (char *)NULL);
    _exit(127);
  }
  g->pid = pid;
  if (!wait_port) return;
  uint64_t deadline = it_now_ms() + 2 * stretch(5000);
  while (it_now_ms() < deadline) {
    /* The log line, not a probe connection: a probe would be a session. */
    char *log = it_slurp(g->log);
    bool up = log && strstr(log, " running (config ");
    free(log);
    if (up) return;
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      g->pid = 0;
      char *log = it_slurp(g->log);
      fail_msg("gangway exited at start (status %d):\n%s", status, log ? log : "");
    }
    sleep_ms(10);
  }
  char *log = it_slurp(g->log);
  fail_msg("gangway does not listen on %d after 5 s:\n%s", wait_port, log ? log : "");
}

void it_gangway_start(it_gangway *g, int wait_port, const char *fmt, ...) {
  it_gangway_prepare(g);
  FILE *f = fopen(g->config, "w");
  if (!f) fail_msg("cannot write %s", g->config);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fclose(f);
  it_gangway_run(g, wait_port);
}

int it_gangway_stop(it_gangway *g, int sig, int timeout_ms) {
  if (!g->pid) return -1;
  if (sig) kill(g->pid, sig);
  uint64_t deadline = it_now_ms() + stretch(timeout_ms);
  int status = 0, code = -1;
  for (;;) {
    pid_t r = waitpid(g->pid, &status, WNOHANG);
    if (r == g->pid) {
      code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (it_now_ms() >= deadline) {
      kill(g->pid, SIGKILL);
      waitpid(g->pid, &status, 0);
      break;
    }
    sleep_ms(5);
  }
  g->pid = 0;
  if (code != 0 || getenv("GW_IT_KEEP")) {
    char *log = it_slurp(g->log);
    fprintf(stderr, "---- gangway log (%s, exit %d) ----\n%s----\n", g->log, code, log ? log : "");
    free(log);
  } else {
    it_rmdir(g->dir);
  }
  return code;
}

bool it_log_wait(it_gangway *g, const char *needle, int timeout_ms) {
  uint64_t deadline = it_now_ms() + stretch(timeout_ms);
  do {
    char *log = it_slurp(g->log);
    bool found = log && strstr(log, needle);
    free(log);
    if (found) return true;
    sleep_ms(10);
  } while (it_now_ms() < deadline);
  return false;
}

/* A "Field:   N kB" line of /proc/PID/status. */
static long status_kb(pid_t pid, const char *field) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  char *s = it_slurp(path);
  long kb = -1;
  char *p = s ? strstr(s, field) : NULL;
  if (p) kb = strtol(p + strlen(field), NULL, 10);
  free(s);
  return kb;
}

long it_rss_kb(pid_t pid) { return status_kb(pid, "VmRSS:"); }

int it_run_gangway(char **out, const char *const args[]) {
  int pfd[2];
  if (pipe(pfd) < 0) fail_msg("pipe");
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    close(pfd[0]);
    const char *argv[32] = {GW_BIN};
    int n = 1;
    for (int i = 0; args[i] && n < 31; i++) argv[n++] = args[i];
    argv[n] = NULL;
    execv(GW_BIN, (char *const *)argv);
    _exit(127);
  }
  close(pfd[1]);
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  uint64_t deadline = it_now_ms() + 10000;
  struct pollfd p = {.fd = pfd[0], .events = POLLIN};
  while (it_now_ms() < deadline && poll(&p, 1, 100) >= 0) {
    if (!p.revents) continue;
    if (cap - len < 1024) buf = realloc(buf, cap *= 2);
    ssize_t k = read(pfd[0], buf + len, cap - len - 1);
    if (k <= 0) break;
    len += (size_t)k;
  }
  buf[len] = '\0';
  close(pfd[0]);
  int status = 0;
  for (int i = 0; i < 1000 && waitpid(pid, &status, WNOHANG) == 0; i++) sleep_ms(10);
  if (waitpid(pid, &status, WNOHANG) == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  *out = buf;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- sockets ----------------------------------------------------------- */

int it_connect_addr(const char *host, int port) {
  struct sockaddr_storage ss = {0};
  socklen_t len;
  if (strchr(host, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, host, &a->sin6_addr);
    len = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &a->sin_addr);
    len = sizeof *a;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

int it_connect(int port) { return it_connect_addr("127.0.0.1", port); }

int it_send_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

size_t it_recv_exact(int fd, void *buf, size_t len, int timeout_ms) {
  size_t got = 0;
  uint64_t deadline = it_now_ms() + stretch(timeout_ms);
  while (got < len) {
    uint64_t now = it_now_ms();
    if (now >= deadline) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, (int)(deadline - now));
    if (pr <= 0) break;
    ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
    if (n <= 0) break;
    got += (size_t)n;
  }
  return got;
}

void it_echo_byte(int fd, char c) {
  char back = 0;
  assert_int_equal(it_send_all(fd, &c, 1), 0);
  assert_int_equal(it_recv_exact(fd, &back, 1, 1000), 1);
  assert_int_equal(back, c);
}

int it_wait_eof(int fd, int timeout_ms, size_t *extra) {
  uint64_t deadline = it_now_ms() + stretch(timeout_ms);
  char buf[4096];
  for (;;) {
    uint64_t now = it_now_ms();
    if (now >= deadline) return 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(deadline - now)) <= 0) return 0;
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) return 1;
    if (n < 0) return -1;
    if (extra) *extra += (size_t)n;
  }
}

/* ---- upstream servers -------------------------------------------------- */

#define IT_MAX_CONNS 1024

struct it_server {
  it_server_kind kind;
  uint64_t param;
  int lfd;
  int wake[2];
  pthread_t thread;
  _Atomic uint64_t bytes_in;
  _Atomic int accepted;
};

typedef struct conn {
  int fd;
  uint64_t in, out;        /* bytes read / written */
  char *pending;           /* echo: bytes read, not yet written */
  size_t plen, poff;
  bool rd_eof, wr_shut;
} conn;

static void conn_close(conn *c) {
  close(c->fd);
  free(c->pending);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

static void *server_main(void *arg) {
  it_server *s = arg;
  static __thread char buf[65536];
  conn *conns = calloc(IT_MAX_CONNS, sizeof *conns);
  struct pollfd *pfds = calloc(IT_MAX_CONNS + 2, sizeof *pfds);
  int n = 0;
  for (;;) {
    pfds[0] = (struct pollfd){.fd = s->wake[0], .events = POLLIN};
    pfds[1] = (struct pollfd){.fd = s->lfd, .events = POLLIN};
    for (int i = 0; i < n; i++) {
      conn *c = &conns[i];
      short ev = 0;
      if (!c->rd_eof && (c->plen - c->poff) < (1 << 20)) ev |= POLLIN;
      if (c->plen > c->poff || (s->kind == IT_FLOOD && (!s->param || c->out < s->param)))
        ev |= POLLOUT;
      pfds[i + 2] = (struct pollfd){.fd = c->fd, .events = ev};
    }
    if (poll(pfds, (nfds_t)n + 2, 1000) < 0 && errno != EINTR) break;
    if (pfds[0].revents) break;
    if (pfds[1].revents & POLLIN) {
      int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0 && n < IT_MAX_CONNS) {
        conns[n] = (conn){.fd = fd};
        /* Not polled this round: its slot holds the events of an earlier
         * connection (maybe with the same fd number), which must not be
         * taken for its own (an echo would send flood bytes). */
        pfds[n + 2] = (struct pollfd){.fd = -1};
        n++;
        s->accepted++;
      } else if (fd >= 0) {
        close(fd);
      }
    }
    for (int i = 0; i < n; i++) {
      conn *c = &conns[i];
      short re = pfds[i + 2].revents;
      if (c->fd < 0 || pfds[i + 2].fd != c->fd) continue;
      bool dead = false;
      if (re & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t k = recv(c->fd, buf, sizeof buf, 0);
        if (k > 0) {
          c->in += (uint64_t)k;
          s->bytes_in += (uint64_t)k;
          if (s->kind == IT_ECHO) {
            if (c->poff == c->plen) c->poff = c->plen = 0;
            c->pending = realloc(c->pending, c->plen + (size_t)k);
            memcpy(c->pending + c->plen, buf, (size_t)k);
            c->plen += (size_t)k;
          }
          if (s->kind == IT_CLOSE_AFTER && c->in >= s->param) dead = true;
        } else if (k == 0) {
          c->rd_eof = true;
          if (s->kind != IT_ECHO && s->kind != IT_FLOOD) dead = true;
        } else if (errno != EAGAIN) {
          dead = true;
        }
      }
      if (!dead && (re & POLLOUT)) {
        ssize_t k;
        if (c->plen > c->poff) {
          k = send(c->fd, c->pending + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
          if (k > 0) c->poff += (size_t)k;
        } else {
          size_t want = sizeof buf;
          if (s->param && s->param - c->out < want) want = (size_t)(s->param - c->out);
          for (size_t j = 0; j < want; j++) buf[j] = (char)(c->out + j);
          k = send(c->fd, buf, want, MSG_NOSIGNAL);
        }
        if (k > 0) c->out += (uint64_t)k;
        else if (k < 0 && errno != EAGAIN) dead = true;
      }
      /* Echo answers FIN with FIN once everything is echoed; a bounded
       * flood sends FIN when done. */
      if (!dead && !c->wr_shut &&
          ((s->kind == IT_ECHO && c->rd_eof && c->poff == c->plen) ||
           (s->kind == IT_FLOOD && s->param && c->out >= s->param))) {
        shutdown(c->fd, SHUT_WR);
        c->wr_shut = true;
      }
      if (!dead && c->wr_shut && c->rd_eof) dead = true;
      if (dead) {
        conn_close(c);
        conns[i] = conns[--n];
        i--;
      }
    }
  }
  for (int i = 0; i < n; i++) conn_close(&conns[i]);
  free(conns);
  free(pfds);
  return NULL;
}

it_server *it_server_start(it_server_kind kind, uint64_t param, int *port) {
  it_server *s = calloc(1, sizeof *s);
  s->kind = kind;
  s->param = param;
  *port = it_free_port();
  if (kind == IT_REFUSE) {
    s->lfd = -1;
    return s;
  }
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)*port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(s->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(s->lfd, 1024) < 0)
    fail_msg("upstream server cannot listen on %d: %s", *port, strerror(errno));
  if (pipe(s->wake) < 0) fail_msg("pipe");
  pthread_create(&s->thread, NULL, server_main, s);
  return s;
}

void it_server_stop(it_server *s) {
  if (!s) return;
  if (s->lfd >= 0) {
    if (write(s->wake[1], "x", 1) != 1) fail_msg("wake");
    pthread_join(s->thread, NULL);
    close(s->lfd);
    close(s->wake[0]);
    close(s->wake[1]);
  }
  free(s);
}

uint64_t it_server_bytes_in(it_server *s) { return s->bytes_in; }
int it_server_accepted(it_server *s) { return s->accepted; }

/* ---- data -------------------------------------------------------------- */

void it_fill(void *buf, size_t len, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
  uint8_t *p = buf;
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = (uint8_t)x;
  }
}

uint64_t it_fnv1a(const void *buf, size_t len, uint64_t h) {
  const uint8_t *p = buf;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

/* ---- hostile clients ---------------------------------------------------- */

long it_hwm_kb(pid_t pid) { return status_kb(pid, "VmHWM:"); }

int it_fd_count(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

int it_connect_from(const char *src, const char *host, int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  struct sockaddr_in from = {.sin_family = AF_INET};
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || inet_pton(AF_INET, src, &from.sin_addr) != 1)
    return -1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (bind(fd, (struct sockaddr *)&from, sizeof from) < 0 ||
      connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

int it_control(const char *path, const char *cmd, char *out, size_t cap, int timeout_ms) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  char line[256];
  int n = snprintf(line, sizeof line, "%s\n", cmd);
  size_t got = 0;
  if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      it_send_all(fd, line, (size_t)n) == 0) {
    uint64_t deadline = it_now_ms() + stretch(timeout_ms);
    while (got + 1 < cap && it_now_ms() < deadline) {
      struct pollfd p = {.fd = fd, .events = POLLIN};
      if (poll(&p, 1, (int)(deadline - it_now_ms())) <= 0) break;
      ssize_t k = recv(fd, out + got, cap - 1 - got, 0);
      if (k <= 0) break;
      got += (size_t)k;
      if (out[got - 1] == '\n') break; /* one answer is one line */
    }
  }
  close(fd);
  out[got] = '\0';
  return got ? (int)got : -1;
}

long long it_json_int(const char *json, const char *key) {
  char pat[96];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = json ? strstr(json, pat) : NULL;
  return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

int it_log_count(it_gangway *g, const char *needle, const char *needle2) {
  char *log = it_slurp(g->log);
  int n = 0;
  for (char *line = log; line && *line;) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = '\0';
    if (strstr(line, needle) && (!needle2 || strstr(line, needle2))) n++;
    if (!nl) break;
    line = nl + 1;
  }
  free(log);
  return n;
}

struct it_bystander {
  int fd;
  gw_framing framing;
  uint32_t opcode;
  pthread_t thread;
  atomic_bool stop;
  it_bystander_result res;
};

static void *bystander_main(void *arg) {
  it_bystander *b = arg;
  static __thread uint8_t body[512], frame[600], back[600];
  for (uint32_t seq = 1; !b->stop; seq++) {
    /* Body: the sequence number, then 4..259 bytes that depend on it, so a
     * lost, repeated or reordered message shows. */
    size_t blen = 4 + 4 + (seq * 37u) % 256;
    memcpy(body, &seq, 4);
    it_fill(body + 4, blen - 4, seq);
    long n = gw_frame_build(&b->framing, GW_CLIENT, frame, sizeof frame, b->opcode, body, blen);
    if (n < 0) {
      snprintf(b->res.error, sizeof b->res.error, "cannot build message %u: %ld", seq, n);
      break;
    }
    uint64_t t0 = it_now_ms();
    if (it_send_all(b->fd, frame, (size_t)n) < 0) {
      snprintf(b->res.error, sizeof b->res.error, "message %u: send: %s", seq, strerror(errno));
      break;
    }
    b->res.bytes_sent += (uint64_t)n;
    size_t got = it_recv_exact(b->fd, back, (size_t)n, 10000);
    uint64_t rtt = it_now_ms() - t0;
    if (rtt > b->res.worst_rtt_ms) b->res.worst_rtt_ms = rtt;
    if (got != (size_t)n || memcmp(back, frame, (size_t)n) != 0) {
      size_t bad = 0;
      while (bad < got && back[bad] == frame[bad]) bad++;
      snprintf(b->res.error, sizeof b->res.error,
               "message %u (%ld bytes): %zu came back in %" PRIu64 " ms, first wrong byte at %zu",
               seq, n, got, rtt, bad);
      b->res.bytes_ok += bad;
      break;
    }
    b->res.bytes_ok += (uint64_t)n;
    b->res.frames++;
    sleep_ms(5);
  }
  b->res.lost = b->res.bytes_sent - b->res.bytes_ok;
  return NULL;
}

it_bystander *it_bystander_start(const char *src, int port, const gw_framing *f, uint32_t opcode) {
  it_bystander *b = calloc(1, sizeof *b);
  b->framing = *f;
  b->opcode = opcode;
  b->fd = it_connect_from(src, "127.0.0.1", port);
  if (b->fd < 0) fail_msg("bystander cannot connect from %s to %d: %s", src, port, strerror(errno));
  pthread_create(&b->thread, NULL, bystander_main, b);
  /* The first echo proves the session is up before an attack starts. */
  uint64_t deadline = it_now_ms() + stretch(5000);
  while (!b->res.frames && !b->res.error[0] && it_now_ms() < deadline) sleep_ms(2);
  if (!b->res.frames) fail_msg("bystander: no first echo: %s", b->res.error);
  return b;
}

void it_bystander_stop(it_bystander *b, it_bystander_result *res) {
  b->stop = true;
  pthread_join(b->thread, NULL);
  close(b->fd);
  *res = b->res;
  free(b);
}

void it_bystander_report(const char *name, const char *inputs, long hwm_kb,
                         const it_bystander_result *res, uint64_t max_rtt_ms) {
  printf("%s: inputs=%s rss_hwm_kb=%ld bystander_worst_rtt_ms=%" PRIu64
         " bystander_lost=%" PRIu64 " bystander_frames=%" PRIu64 "%s%s\n",
         name, inputs, hwm_kb, res->worst_rtt_ms, res->lost, res->frames,
         res->error[0] ? " bystander_error=" : "", res->error);
  fflush(stdout);
  if (res->error[0]) fail_msg("%s: bystander: %s", name, res->error);
  assert_int_equal(res->lost, 0);
  assert_true(res->frames > 0);
  if (res->worst_rtt_ms >= stretch((int)max_rtt_ms))
    fail_msg("%s: bystander's worst round trip %" PRIu64 " ms (bound %" PRIu64 " ms)", name,
             res->worst_rtt_ms, max_rtt_ms);
}
