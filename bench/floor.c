/* floor.c: gw-floor, the least a TCP relay can do on this kernel, as a
 * reference contender for bench/run.sh. Not a proxy anyone should run.
 *
 * One thread, level-triggered epoll, the socket calls (recv/send: no VFS
 * layer), one read into a shared 64 KiB buffer and one send of what was
 * read, per wake-up of a socket; no framing, no per-session buffers (bytes
 * a send did not take wait in a malloc'd leftover, and reading that side
 * stops until they are gone), no timers, no accounting. Whatever a real
 * relay adds (framing, limits, metrics, scripts) it adds on top of this:
 * its CPU per frame relayed is the floor gangway, HAProxy and nginx are
 * measured against.
 *
 *   gw-floor LISTEN_PORT UPSTREAM_PORT     (both on 127.0.0.1)
 *
 * A session ends whole when either side ends or fails. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ 65536

typedef struct session session;
typedef struct end {
  session *s;
  int side; /* 0: client, 1: upstream */
} end;

struct session {
  int fd[2];
  end ends[2];
  uint32_t events[2];  /* each fd's interest as registered */
  char *left[2];       /* read from side i, not yet sent to the other */
  size_t off[2], len[2];
  int connected;
};

static int ep;
static char buf[BUFSZ];
static end listener_end;

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void session_end(session *s) {
  for (int i = 0; i < 2; i++) {
    if (s->fd[i] >= 0) close(s->fd[i]); /* close leaves the epoll set */
    free(s->left[i]);
  }
  free(s);
}

/* Interest of side i: read while nothing of its is pending and the
 * upstream is connected; write while something toward it is pending
 * (or, for the upstream, until it is connected). */
static int update(session *s, int i) {
  uint32_t ev = 0;
  if (s->connected && !s->len[i]) ev |= EPOLLIN;
  if (s->len[1 - i] || (i == 1 && !s->connected)) ev |= EPOLLOUT;
  if (ev == s->events[i]) return 0;
  struct epoll_event e = {.events = ev, .data.ptr = &s->ends[i]};
  s->events[i] = ev;
  return epoll_ctl(ep, EPOLL_CTL_MOD, s->fd[i], &e);
}

/* Sends what side i holds toward the other; 0, or -1 when the session
 * is to end. */
static int drain(session *s, int i) {
  while (s->len[i]) {
    ssize_t n = send(s->fd[1 - i], s->left[i] + s->off[i], s->len[i], MSG_NOSIGNAL);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    s->off[i] += (size_t)n;
    s->len[i] -= (size_t)n;
  }
  free(s->left[i]);
  s->left[i] = NULL;
  s->off[i] = 0;
  return 0;
}

static int relay(session *s, int i) {
  ssize_t n = recv(s->fd[i], buf, sizeof buf, 0);
  if (n == 0) return -1;
  if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
  ssize_t w = send(s->fd[1 - i], buf, (size_t)n, MSG_NOSIGNAL);
  if (w < 0 && errno != EAGAIN) return -1;
  if (w < 0) w = 0;
  if (w < n) {
    s->left[i] = malloc((size_t)(n - w));
    if (!s->left[i]) return -1;
    memcpy(s->left[i], buf + w, (size_t)(n - w));
    s->len[i] = (size_t)(n - w);
    if (update(s, i) || update(s, 1 - i)) return -1;
  }
  return 0;
}

static int nb_socket(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static void accept_all(int lfd, struct sockaddr_in *up) {
  for (;;) {
    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    session *s = calloc(1, sizeof *s);
    int u = nb_socket();
    if (!s || u < 0 ||
        (connect(u, (struct sockaddr *)up, sizeof *up) < 0 && errno != EINPROGRESS)) {
      close(c);
      if (u >= 0) close(u);
      free(s);
      continue;
    }
    s->fd[0] = c;
    s->fd[1] = u;
    for (int i = 0; i < 2; i++) s->ends[i] = (end){s, i};
    s->events[0] = 0;
    s->events[1] = EPOLLOUT;
    struct epoll_event e0 = {.events = 0, .data.ptr = &s->ends[0]};
    struct epoll_event e1 = {.events = EPOLLOUT, .data.ptr = &s->ends[1]};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &e0) || epoll_ctl(ep, EPOLL_CTL_ADD, u, &e1))
      session_end(s);
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: gw-floor LISTEN_PORT UPSTREAM_PORT\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct sockaddr_in up = la;
  up.sin_port = htons((uint16_t)atoi(argv[2]));
  int lfd = nb_socket();
  int one = 1;
  if (lfd < 0) die("socket");
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, (struct sockaddr *)&la, sizeof la) || listen(lfd, 4096)) die("listen");
  if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0) die("epoll_create1");
  struct epoll_event le = {.events = EPOLLIN, .data.ptr = &listener_end};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le)) die("epoll_ctl");
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    /* An event of a session ended earlier in this batch is skipped: the
     * batch's sessions are freed after it. */
    session *gone[256];
    int ngone = 0;
    for (int k = 0; k < n; k++) {
      end *e = evs[k].data.ptr;
      if (e == &listener_end) {
        accept_all(lfd, &up);
        continue;
      }
      session *s = e->s;
      int i = e->side, dead = 0;
      for (int g = 0; g < ngone; g++) dead |= gone[g] == s;
      if (dead) continue;
      uint32_t ev = evs[k].events;
      int fail = 0;
      if (i == 1 && !s->connected && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(s->fd[1], SOL_SOCKET, SO_ERROR, &err, &l);
        s->connected = !err;
        fail = err || update(s, 0) || update(s, 1);
      } else if (ev & EPOLLERR) {
        fail = 1;
      } else {
        if (!fail && (ev & EPOLLOUT)) fail = drain(s, 1 - i) || update(s, i) || update(s, 1 - i);
        if (!fail && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !s->len[i]) fail = relay(s, i);
      }
      if (fail) {
        for (int j = 0; j < 2; j++) {
          close(s->fd[j]);
          s->fd[j] = -1;
        }
        gone[ngone++] = s;
      }
    }
    for (int g = 0; g < ngone; g++) session_end(gone[g]);
  }
}
