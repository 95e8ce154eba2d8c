/* redis_bench.c: what a handler that makes one Redis call per login-like
 * frame costs. Starts its own redis-server (no persistence) on a loopback
 * port below the ephemeral range, gw-echo as the upstream and a gangway
 * whose script answers opcode 1 frames with gw.redis("INCR", "logins:" ..
 * name) and lets opcode 2 frames pass in C; then drives N sessions in a
 * closed loop (each sends a 40-byte frame, waits for its echo, sends the
 * next) for S seconds per mode and prints frames/s and the round trip's
 * median and 99th percentile for each mode, and the difference of the
 * medians: the round trip Redis adds to a frame at that many sessions.
 *
 * Two loads: a closed loop (throughput; at 1,000 sessions the round trip is
 * then mostly queueing), and a paced one (each session one frame every
 * interval, default 200 ms: the round trip Redis adds, without queueing).
 *
 *   build/bench/redis_bench [sessions, default 1000] [seconds, default 5]
 *                           [paced interval ms, default 200]
 *
 * It needs redis-server on PATH, build/gangway and build/bench/gw-echo. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FRAME 40
#define MAX_SESSIONS 5000

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int free_port(int lo, int hi) {
  for (int p = lo + (int)(now_us() % (uint64_t)(hi - lo)), n = 0; n < hi - lo; n++, p++) {
    if (p >= hi) p = lo;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    if (ok) return p;
  }
  return -1;
}

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int wait_port(int port, int ms) {
  for (int i = 0; i < ms / 20; i++) {
    int fd = connect_to(port);
    if (fd >= 0) {
      close(fd);
      return 0;
    }
    usleep(20000);
  }
  return -1;
}

static pid_t spawn(const char *const argv[], const char *log) {
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  return pid;
}

static void stop(pid_t pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int i = 0; i < 100; i++) {
    if (waitpid(pid, NULL, WNOHANG) == pid) return;
    usleep(20000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

typedef struct result {
  double frames_per_s;
  uint32_t p50_us, p99_us;
  uint64_t frames, bad;
} result;

/* One mode: every session sends frames of opcode op, one at a time: the
 * next as soon as the echo is back (interval_ms 0: a closed loop, which
 * saturates), or interval_ms after the last one was sent (a paced load,
 * which measures the round trip without queueing). */
static result drive(int *fds, int n, uint16_t op, int seconds, int interval_ms) {
  uint8_t frame[FRAME];
  uint64_t *sent_at = calloc((size_t)n, sizeof *sent_at);
  uint64_t *next_at = calloc((size_t)n, sizeof *next_at); /* paced: 0 in flight */
  uint64_t interval = (uint64_t)interval_ms * 1000u;
  uint32_t *got = calloc((size_t)n, sizeof *got);
  struct pollfd *pf = calloc((size_t)n, sizeof *pf);
  size_t cap = 1 << 22, nrtt = 0;
  uint32_t *rtt = malloc(cap * sizeof *rtt);
  result r = {0};
  frame[0] = 0, frame[1] = FRAME;
  frame[2] = 0x80, frame[3] = frame[4] = frame[5] = 0;
  frame[6] = (uint8_t)(op >> 8), frame[7] = (uint8_t)op;
  for (int i = 8; i < FRAME; i++) frame[i] = (uint8_t)('a' + i % 26);
  for (int i = 0; i < n; i++) {
    pf[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    frame[8] = (uint8_t)('A' + i % 26); /* the "name" differs per session */
    sent_at[i] = now_us();
    if (interval) /* spread the first sends over one interval */
      sent_at[i] += (uint64_t)i * interval / (uint64_t)n, next_at[i] = sent_at[i];
    else if (write(fds[i], frame, FRAME) != FRAME)
      r.bad++;
  }
  uint64_t t0 = now_us(), end = t0 + (uint64_t)seconds * 1000000u;
  uint8_t buf[4096];
  while (now_us() < end) {
    if (interval) {
      uint64_t t = now_us();
      for (int i = 0; i < n; i++) {
        if (!next_at[i] || next_at[i] > t) continue;
        next_at[i] = 0;
        sent_at[i] = t;
        frame[8] = (uint8_t)('A' + i % 26);
        if (write(fds[i], frame, FRAME) != FRAME) r.bad++;
      }
    }
    if (poll(pf, (nfds_t)n, interval ? 1 : 100) <= 0) continue;
    for (int i = 0; i < n; i++) {
      if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t k = read(fds[i], buf, sizeof buf);
      if (k <= 0) {
        r.bad++;
        pf[i].fd = -1;
        continue;
      }
      got[i] += (uint32_t)k;
      while (got[i] >= FRAME) { /* one whole echo: the next frame */
        got[i] -= FRAME;
        uint64_t t = now_us();
        if (nrtt < cap) rtt[nrtt++] = (uint32_t)(t - sent_at[i]);
        r.frames++;
        if (interval) {
          next_at[i] = sent_at[i] + interval > t ? sent_at[i] + interval : t;
          continue;
        }
        sent_at[i] = t;
        frame[8] = (uint8_t)('A' + i % 26);
        if (write(fds[i], frame, FRAME) != FRAME) r.bad++;
      }
    }
  }
  double secs = (double)(now_us() - t0) / 1e6;
  /* let the frames in flight come back before the next mode */
  uint64_t drain_end = now_us() + 2000000;
  for (int i = 0; i < n && now_us() < drain_end; i++) {
    while (got[i] < FRAME && pf[i].fd >= 0 && now_us() < drain_end) {
      struct pollfd one = {.fd = fds[i], .events = POLLIN};
      if (poll(&one, 1, 100) <= 0) continue;
      ssize_t k = read(fds[i], buf, FRAME - got[i]);
      if (k <= 0) break;
      got[i] += (uint32_t)k;
    }
  }
  r.frames_per_s = (double)r.frames / secs;
  if (nrtt) {
    qsort(rtt, nrtt, sizeof *rtt, cmp_u32);
    r.p50_us = rtt[nrtt / 2];
    r.p99_us = rtt[nrtt * 99 / 100];
  }
  free(sent_at);
  free(next_at);
  free(got);
  free(pf);
  free(rtt);
  return r;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1000;
  int seconds = argc > 2 ? atoi(argv[2]) : 5;
  int interval_ms = argc > 3 ? atoi(argv[3]) : 200;
  if (n < 1 || n > MAX_SESSIONS || seconds < 1 || interval_ms < 1) {
    fprintf(stderr, "usage: redis_bench [sessions 1..%d] [seconds] [paced interval ms]\n",
            MAX_SESSIONS);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  char self[4096], dir[4096];
  ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
  if (k <= 0) return 1;
  self[k] = 0;
  snprintf(dir, sizeof dir, "%s", self);
  *strrchr(dir, '/') = 0; /* build/bench */
  char tmp[] = "/tmp/gw-redis-bench-XXXXXX";
  if (!mkdtemp(tmp)) return 1;
  int rport = free_port(20000, 32000), eport = free_port(20000, 32000);
  int gport = free_port(20000, 32000);
  char rp[16], ep[32], path[4200], log[4200], gw[4200], echo[4200];
  snprintf(rp, sizeof rp, "%d", rport);
  snprintf(ep, sizeof ep, "127.0.0.1:%d", eport);
  snprintf(gw, sizeof gw, "%s/../gangway", dir);
  snprintf(echo, sizeof echo, "%s/gw-echo", dir);
  snprintf(log, sizeof log, "%s/redis.log", tmp);
  const char *redis_argv[] = {"redis-server", "--port", rp, "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", NULL};
  pid_t redis = spawn(redis_argv, log);
  snprintf(log, sizeof log, "%s/echo.log", tmp);
  const char *echo_argv[] = {echo, ep, NULL};
  pid_t echod = spawn(echo_argv, log);
  snprintf(path, sizeof path, "%s/login.lua", tmp);
  FILE *f = fopen(path, "w");
  fprintf(f, "local gw = require 'gangway'\n"
             "-- a login-like frame: one Redis call (a counter per name), then it passes\n"
             "gw.on('client', 1, function(pkt, s)\n"
             "  local n, err = gw.redis('INCR', 'logins:' .. pkt:body():sub(1, 1))\n"
             "  if not n then error(err) end\n"
             "end)\n");
  fclose(f);
  snprintf(path, sizeof path, "%s/config.lua", tmp);
  f = fopen(path, "w");
  fprintf(f, "return {\n"
             "  listeners = { { name = 'game', listen = '127.0.0.1:%d', upstream = '%s',\n"
             "                  framing = 'top', scripts = { 'login.lua' } } },\n"
             "  redis = { addr = '127.0.0.1:%d' },\n"
             "  limits = { max_sessions = %d },\n"
             "  log = { level = 'warn' },\n"
             "  control = '',\n"
             "}\n",
          gport, ep, rport, n + 100);
  fclose(f);
  snprintf(log, sizeof log, "%s/gangway.log", tmp);
  const char *gw_argv[] = {gw, "-c", path, NULL};
  if (wait_port(rport, 5000) < 0 || wait_port(eport, 5000) < 0) {
    fprintf(stderr, "redis-server or gw-echo did not start (see %s)\n", tmp);
    stop(redis);
    stop(echod);
    return 1;
  }
  pid_t gwd = spawn(gw_argv, log);
  int rc = 1;
  int *fds = calloc((size_t)n, sizeof *fds);
  if (wait_port(gport, 5000) < 0) {
    fprintf(stderr, "gangway did not start (see %s)\n", log);
    goto out;
  }
  usleep(300000); /* Redis connected */
  for (int i = 0; i < n; i++) {
    if ((fds[i] = connect_to(gport)) < 0) {
      fprintf(stderr, "session %d: connect failed: %s\n", i, strerror(errno));
      goto out;
    }
  }
  printf("redis_bench: %d sessions, %d s per mode, 40-byte top frames\n", n, seconds);
  printf("%-44s %10s %9s %9s\n", "mode", "frames/s", "p50 us", "p99 us");
  uint64_t bad = 0;
  for (int paced = 0; paced < 2; paced++) {
    int iv = paced ? interval_ms : 0;
    result plain = drive(fds, n, 2, seconds, iv);
    result with = drive(fds, n, 1, seconds, iv);
    char name[64];
    snprintf(name, sizeof name, "no handler (C fast path), %s", paced ? "paced" : "closed loop");
    printf("%-44s %10.0f %9u %9u\n", name, plain.frames_per_s, plain.p50_us, plain.p99_us);
    snprintf(name, sizeof name, "one gw.redis call per frame, %s", paced ? "paced" : "closed loop");
    printf("%-44s %10.0f %9u %9u\n", name, with.frames_per_s, with.p50_us, with.p99_us);
    if (paced)
      printf("paced: a frame every %d ms per session; added round trip (p50): %d us\n", iv,
             (int)with.p50_us - (int)plain.p50_us);
    bad += plain.bad + with.bad;
  }
  printf("frames lost or sessions failed: %llu\n", (unsigned long long)bad);
  rc = bad ? 1 : 0;
out:
  for (int i = 0; i < n; i++)
    if (fds[i] > 0) close(fds[i]);
  free(fds);
  stop(gwd);
  stop(echod);
  stop(redis);
  if (rc == 0) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
  }
  return rc;
}
