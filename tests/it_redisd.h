/* it_redisd.h: what it_redis.c and it_wait.c share: a redis-server of the
 * test's own on a loopback port below the ephemeral range (no persistence),
 * a minimal RESP client to look at it from the test, and `top` frames with
 * a raw body. Header-only: each test program includes it once. */
#ifndef GW_IT_REDISD_H
#define GW_IT_REDISD_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

typedef struct it_redisd {
  pid_t pid;
  int port;
  char log[192];
} it_redisd;

/* A port in 20000..32767 (below Linux's ephemeral range) free now. */
static int redisd_port(void) {
  for (int tries = 0; tries < 200; tries++) {
    int port = 20000 + (int)((it_now_ms() * 7919 + (uint64_t)getpid() * 31 + (uint64_t)tries * 104729) % 12000);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    if (ok) return port;
  }
  fail_msg("no free port below the ephemeral range");
  return -1;
}

/* Starts redis-server on r->port (set it first, or 0 for a new one) with
 * an extra argument pair (e.g. "--requirepass", "s3cret"), and waits (5 s)
 * until it answers. */
static void redisd_start(it_redisd *r, const char *opt, const char *val) {
  if (!r->port) r->port = redisd_port();
  char port[16];
  snprintf(port, sizeof port, "%d", r->port);
  snprintf(r->log, sizeof r->log, "/tmp/gw-redisd-%d.log", r->port);
  fflush(stdout); /* the child's freopen would write our buffer again */
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    FILE *f = freopen(r->log, "w", stdout);
    (void)f;
    dup2(1, 2);
    const char *argv[16] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--daemonize", "no"};
    int n = 11;
    if (opt) {
      argv[n++] = opt;
      argv[n++] = val;
    }
    argv[n] = NULL;
    execvp("redis-server", (char *const *)argv);
    _exit(127);
  }
  r->pid = pid;
  uint64_t until = it_now_ms() + 5000;
  while (it_now_ms() < until) {
    int fd = it_connect(r->port);
    if (fd >= 0) {
      close(fd);
      return;
    }
    usleep(20000);
  }
  fail_msg("redis-server on port %d did not start (log %s)", r->port, r->log);
}

/* Kills it (SIGKILL: a crash, nothing flushed) and reaps it. */
static void redisd_stop(it_redisd *r) {
  if (r->pid <= 0) return;
  kill(r->pid, SIGKILL);
  waitpid(r->pid, NULL, 0);
  r->pid = 0;
  unlink(r->log);
}

/* Sends one command (argv strings) and reads one reply's first line (or
 * the bulk string's bytes) into out. Returns 0, or -1 when nothing came. */
static int redis_cmd(int port, char *out, size_t cap, int argc, const char *const *argv) {
  int fd = it_connect(port);
  if (fd < 0) return -1;
  char buf[4096];
  size_t n = (size_t)snprintf(buf, sizeof buf, "*%d\r\n", argc);
  for (int i = 0; i < argc; i++)
    n += (size_t)snprintf(buf + n, sizeof buf - n, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
  if (it_send_all(fd, buf, n) < 0) {
    close(fd);
    return -1;
  }
  size_t got = 0;
  while (got < cap - 1 && it_recv_exact(fd, out + got, 1, 2000) == 1) {
    got++;
    if (got >= 2 && out[got - 2] == '\r' && out[got - 1] == '\n') break; /* the first line */
  }
  out[got] = 0;
  long bulk = out[0] == '$' ? strtol(out + 1, NULL, 10) : -1;
  if (bulk >= 0 && got + (size_t)bulk + 2 < cap) /* a bulk string: its bytes */
    got += it_recv_exact(fd, out + got, (size_t)bulk + 2, 2000);
  out[got] = 0;
  close(fd);
  return got ? 0 : -1;
}

/* A `top` frame: length, session 0x80000000, opcode, then body as it is. */
static size_t top_frame(uint8_t *out, size_t cap, uint16_t op, const void *body, size_t blen) {
  size_t len = 8 + blen;
  assert_true(len <= cap && len <= 0xffff);
  out[0] = (uint8_t)(len >> 8), out[1] = (uint8_t)len;
  out[2] = 0x80, out[3] = out[4] = out[5] = 0;
  out[6] = (uint8_t)(op >> 8), out[7] = (uint8_t)op;
  memcpy(out + 8, body, blen);
  return len;
}

/* Sends a frame with a text body. */
static void send_text(int fd, uint16_t op, const char *text) {
  uint8_t fr[1024];
  size_t n = top_frame(fr, sizeof fr, op, text, strlen(text));
  assert_int_equal(it_send_all(fd, fr, n), 0);
}

/* Reads one `top` frame (timeout_ms): its opcode in *op, its body as a
 * NUL-terminated string in body. Returns the body's length, -1 on EOF or
 * timeout. */
static int read_text(int fd, uint16_t *op, char *body, size_t cap, int timeout_ms) {
  uint8_t hdr[8];
  if (it_recv_exact(fd, hdr, 8, timeout_ms) != 8) return -1;
  size_t len = (size_t)hdr[0] << 8 | hdr[1];
  if (len < 8 || len - 8 >= cap) return -1;
  if (op) *op = (uint16_t)(hdr[6] << 8 | hdr[7]);
  if (it_recv_exact(fd, body, len - 8, timeout_ms) != len - 8) return -1;
  body[len - 8] = 0;
  return (int)(len - 8);
}

/* The session is alive: a text frame goes through the echo upstream and
 * back intact. */
static void echo_text(int fd, const char *text) {
  char body[1024];
  send_text(fd, 1, text);
  assert_true(read_text(fd, NULL, body, sizeof body, 2000) >= 0);
  assert_string_equal(body, text);
}

/* The fixture of it_redis.c and it_redis_hostile.c: a redis-server and an
 * echo upstream of the test group's own (cmocka group setup, teardown). */
typedef struct redis_echo {
  it_redisd redis;
  it_server *echo;
  int echo_port;
} redis_echo;

static inline int redis_echo_setup(void **state) {
  redis_echo *f = calloc(1, sizeof *f);
  redisd_start(&f->redis, NULL, NULL);
  f->echo = it_server_start(IT_ECHO, 0, &f->echo_port);
  *state = f;
  return 0;
}

static inline int redis_echo_teardown(void **state) {
  redis_echo *f = *state;
  it_server_stop(f->echo);
  redisd_stop(&f->redis);
  free(f);
  return 0;
}

/* Sends a text frame and returns the body of the answer, an op 11 frame
 * (static storage: the next call overwrites it). */
static inline const char *ask_answer(int fd, uint16_t op, const char *text, int timeout_ms) {
  static char body[1024];
  uint16_t got_op = 0;
  send_text(fd, op, text);
  assert_true(read_text(fd, &got_op, body, sizeof body, timeout_ms) >= 0);
  assert_int_equal(got_op, 11);
  return body;
}

#endif
