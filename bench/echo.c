/* echo.c: gw-echo, the upstream of gangway's benchmarks: writes back what it
 * reads, on every connection, as fast as one libuv loop can.
 *
 * Read buffers come from a free list and go back to it once written, so a
 * steady load allocates nothing; an idle connection holds no buffer. Bytes
 * are written with uv_try_write first (most echoes leave in the read
 * callback) and queued only for the rest. Backpressure as in libuv's
 * socks5-proxy sample: stop reading while the write queue is above a high
 * mark, resume below a low one. A FIN is answered with a FIN once all
 * echoed bytes are out.
 *
 * The same code runs inside gw-loadgen (--echo): one process and one loop
 * for both ends of the load side, so it spends less CPU per frame than the
 * proxy it measures (bench/echo.h; built with GW_ECHO_NO_MAIN there).
 *
 * usage: gw-echo [HOST:]PORT  (HOST defaults to 127.0.0.1) */
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "echo.h"

#define container_of(ptr, type, field) \
  ((type *)((char *)(ptr) - offsetof(type, field)))

#define ECHO_BUF (64 * 1024)
#define ECHO_HIGH (1024 * 1024) /* write queue bytes: stop reading above */
#define ECHO_LOW (256 * 1024)   /* resume below */

typedef struct echo_conn {
  uv_tcp_t tcp;
  struct echo_conn *prev, *next; /* every open connection, for echo_stop */
  uv_shutdown_t shutdown;
  bool reading;
  bool eof; /* the client half-closed: never read again */
} echo_conn;

/* A read buffer, or a queued write of its tail: the write request owns the
 * buffer until its callback puts both back on the free list. */
typedef struct echo_buf {
  uv_write_t req;
  struct echo_buf *next_free;
  char data[ECHO_BUF];
} echo_buf;

static echo_buf *free_bufs;
static uv_tcp_t listener;
static echo_conn *conns;

static echo_buf *buf_get(void) {
  echo_buf *b = free_bufs;
  if (b) {
    free_bufs = b->next_free;
    return b;
  }
  b = malloc(sizeof *b);
  if (!b) {
    fprintf(stderr, "gw-echo: out of memory\n");
    exit(2);
  }
  return b;
}

static void buf_put(echo_buf *b) {
  b->next_free = free_bufs;
  free_bufs = b;
}

static void on_close(uv_handle_t *h) {
  echo_conn *c = container_of((uv_tcp_t *)h, echo_conn, tcp);
  if (c->prev) c->prev->next = c->next;
  else conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

static void conn_close(echo_conn *c) {
  if (!uv_is_closing((uv_handle_t *)&c->tcp))
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  echo_buf *b = buf_get();
  *buf = uv_buf_init(b->data, ECHO_BUF);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void on_write(uv_write_t *req, int status) {
  echo_buf *b = container_of(req, echo_buf, req);
  echo_conn *c = req->data;
  buf_put(b);
  if (status < 0) {
    conn_close(c);
    return;
  }
  uv_stream_t *st = (uv_stream_t *)&c->tcp;
  if (!c->reading && !c->eof && !uv_is_closing((uv_handle_t *)st) &&
      uv_stream_get_write_queue_size(st) < ECHO_LOW &&
      uv_read_start(st, on_alloc, on_read) == 0)
    c->reading = true;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  conn_close(req->data);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  echo_conn *c = container_of((uv_tcp_t *)st, echo_conn, tcp);
  echo_buf *b = buf->base ? container_of(buf->base, echo_buf, data) : NULL;
  if (nread <= 0) {
    if (b) buf_put(b);
    if (nread == UV_EOF) {
      /* Half-close back once everything echoed so far has been written. */
      uv_read_stop(st);
      c->reading = false;
      c->eof = true;
      c->shutdown.data = c;
      if (uv_shutdown(&c->shutdown, st, on_shutdown) < 0) conn_close(c);
    } else if (nread < 0) {
      conn_close(c);
    }
    return;
  }
  uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
  int w = uv_try_write(st, &out, 1);
  if (w == nread) {
    buf_put(b);
    return;
  }
  if (w < 0 && w != UV_EAGAIN) {
    buf_put(b);
    conn_close(c);
    return;
  }
  if (w > 0) out = uv_buf_init(buf->base + w, (unsigned)(nread - w));
  b->req.data = c;
  if (uv_write(&b->req, st, &out, 1, on_write) < 0) {
    buf_put(b);
    conn_close(c);
    return;
  }
  if (uv_stream_get_write_queue_size(st) > ECHO_HIGH) {
    uv_read_stop(st);
    c->reading = false;
  }
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) {
    fprintf(stderr, "gw-echo: accept: %s\n", uv_strerror(status));
    return;
  }
  echo_conn *c = calloc(1, sizeof *c);
  if (!c) {
    fprintf(stderr, "gw-echo: out of memory\n");
    exit(2);
  }
  uv_tcp_init(server->loop, &c->tcp);
  c->next = conns;
  if (conns) conns->prev = c;
  conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
    c->reading = true;
  else
    conn_close(c);
}

int echo_listen(uv_loop_t *loop, const struct sockaddr_in *addr) {
  signal(SIGPIPE, SIG_IGN); /* a reset peer closes its connection only */
  uv_tcp_init(loop, &listener);
  int r = uv_tcp_bind(&listener, (const struct sockaddr *)addr, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&listener, 4096, on_connection);
  if (r < 0) uv_close((uv_handle_t *)&listener, NULL);
  return r;
}

void echo_stop(void) {
  if (!uv_is_closing((uv_handle_t *)&listener))
    uv_close((uv_handle_t *)&listener, NULL);
  for (echo_conn *c = conns; c; c = c->next) conn_close(c);
}

#ifndef GW_ECHO_NO_MAIN
static uv_signal_t sigterm, sigint;

static void on_signal(uv_signal_t *s, int signum) {
  (void)signum;
  /* Stop the loop; the kernel closes the sockets. */
  uv_stop(s->loop);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: gw-echo [HOST:]PORT\n");
    return 2;
  }
  char host[64] = "127.0.0.1";
  const char *port_s = argv[1], *colon = strrchr(argv[1], ':');
  if (colon) {
    size_t hl = (size_t)(colon - argv[1]);
    if (hl >= sizeof host) return 2;
    memcpy(host, argv[1], hl);
    host[hl] = '\0';
    port_s = colon + 1;
  }
  struct sockaddr_in addr;
  int port = atoi(port_s);
  if (port <= 0 || port > 65535 || uv_ip4_addr(host, port, &addr) < 0) {
    fprintf(stderr, "gw-echo: bad address '%s'\n", argv[1]);
    return 2;
  }
  uv_loop_t *loop = uv_default_loop();
  int r = echo_listen(loop, &addr);
  if (r < 0) {
    fprintf(stderr, "gw-echo: listen on %s: %s\n", argv[1], uv_strerror(r));
    return 1;
  }
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_init(loop, &sigint);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
#endif
