/* top_conn.c: one Tales of Pirates TCP connection (see top_conn.h). */
#include "top_conn.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One uv_write of the frames queued in a loop iteration; holds a
 * reference on each until the callback. */
typedef struct top_write {
  uv_write_t req;
  top_msg **msgs; /* owned array */
  size_t n;
} top_write;

#define TOP_IOV_STACK 16 /* bufs of a flush kept on the stack */

top_msg *top_msg_new(gw_side side, uint32_t cmd, const top_writer *w)
{
  const gw_framing *f = top_framing();
  size_t cap = gw_frame_body_offset(f) + w->len;
  top_msg *m = malloc(sizeof *m + cap);
  if (!m)
    return NULL;
  long len = top_frame(w, side, cmd, m->data, cap);
  if (len < 0) {
    free(m);
    return NULL;
  }
  m->refs = 1;
  m->len = (size_t)len;
  return m;
}

void top_msg_unref(top_msg *m)
{
  if (m && --m->refs == 0)
    free(m);
}

static uv_stream_t *conn_stream(top_conn *c) { return (uv_stream_t *)&c->tcp; }

static uint64_t conn_now(top_conn *c) { return uv_now(c->tcp.loop); }

static void release_msgs(top_msg **msgs, size_t n)
{
  for (size_t i = 0; i < n; i++)
    top_msg_unref(msgs[i]);
  free(msgs);
}

static void on_handle_closed(uv_handle_t *h)
{
  top_conn *c = h->type == UV_TCP     ? TOP_CONTAINER_OF(h, top_conn, tcp)
                : h->type == UV_TIMER ? TOP_CONTAINER_OF(h, top_conn, timer)
                                      : TOP_CONTAINER_OF(h, top_conn, flush);
  if (--c->open_handles > 0)
    return;
  free(c->rbuf);
  c->rbuf = NULL;
  free(c->key);
  c->key = NULL;
  release_msgs(c->pend, c->npend);
  c->pend = NULL;
  c->npend = 0;
  c->cbs->closed(c);
}

static void close_handles(top_conn *c)
{
  if (c->state == TOP_CLOSED)
    return;
  c->state = TOP_CLOSED;
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->flush, on_handle_closed);
}

/* Tells the owner, once, that the connection is ending. */
static void conn_end(top_conn *c, const char *reason, bool by_peer)
{
  if (c->ended)
    return;
  c->ended = true;
  c->ended_by_peer = by_peer;
  snprintf(c->reason, sizeof c->reason, "%s", reason);
  if (c->cbs->end)
    c->cbs->end(c, c->reason);
}

/* Closes at once: queued writes are dropped. For errors. */
static void conn_abort(top_conn *c, const char *reason, bool by_peer)
{
  if (c->state == TOP_CLOSED)
    return;
  conn_end(c, reason, by_peer);
  close_handles(c);
}

static void on_timer(uv_timer_t *t);
static void conn_close(top_conn *c, const char *reason, bool by_peer);

/* Arms the timer for the next keep-alive deadline. The deadlines move with
 * every read and write; rather than re-arming each time, the timer fires at
 * the earliest deadline it knew of and re-arms if it finds none due. */
static void conn_arm(top_conn *c)
{
  uint64_t next = UINT64_MAX;
  if (c->idle_ms)
    next = c->last_recv + c->idle_ms;
  if (c->ping_ms && !c->connecting && c->last_send + c->ping_ms < next)
    next = c->last_send + c->ping_ms;
  if (next == UINT64_MAX) {
    uv_timer_stop(&c->timer);
    return;
  }
  uint64_t now = conn_now(c);
  uv_timer_start(&c->timer, on_timer, next > now ? next - now : 0, 0);
}

static void conn_linger(top_conn *c)
{
  uv_timer_start(&c->timer, on_timer, TOP_LINGER_MS, 0);
}

static void conn_ping(top_conn *c)
{
  uint8_t ping[8];
  long len = gw_frame_encode(top_framing(), c->from == GW_CLIENT ? GW_SERVER : GW_CLIENT,
                             ping, sizeof ping, NULL, NULL, 0);
  top_msg *m = len > 0 ? malloc(sizeof *m + (size_t)len) : NULL;
  if (!m)
    return; /* out of memory: the peer's idle timer will tell */
  m->refs = 1;
  m->len = (size_t)len;
  memcpy(m->data, ping, (size_t)len);
  int rc = top_conn_send(c, m);
  top_msg_unref(m);
  if (rc == 0 && c->cbs->pinged)
    c->cbs->pinged(c);
}

static void on_timer(uv_timer_t *t)
{
  top_conn *c = TOP_CONTAINER_OF(t, top_conn, timer);
  if (c->state == TOP_CLOSING) { /* the flush took too long */
    close_handles(c);
    return;
  }
  if (c->state == TOP_HALF_CLOSED) {
    conn_abort(c, "linger timeout", false);
    return;
  }
  uint64_t now = conn_now(c);
  if (c->idle_ms && now - c->last_recv >= c->idle_ms) {
    conn_abort(c, c->connecting ? "connect timeout" : "keep-alive timeout", false);
    return;
  }
  if (c->ping_ms && !c->connecting && now - c->last_send >= c->ping_ms)
    conn_ping(c);
  if (c->state == TOP_OPEN)
    conn_arm(c);
}

int top_conn_init(uv_loop_t *loop, top_conn *c, const top_conn_cbs *cbs,
                  gw_side from)
{
  memset(c, 0, sizeof *c);
  c->cbs = cbs;
  c->from = from;
  c->ping_ms = 2000;
  c->idle_ms = 10000;
  c->rcap = top_framing()->max_frame[from];
  c->rbuf = malloc(c->rcap);
  if (!c->rbuf)
    return -ENOMEM;
  int rc = uv_tcp_init(loop, &c->tcp);
  if (rc) {
    free(c->rbuf);
    return rc;
  }
  /* Timer and prepare handles cannot fail to initialise on Unix. */
  uv_timer_init(loop, &c->timer);
  uv_prepare_init(loop, &c->flush);
  c->open_handles = 3;
  c->last_recv = c->last_send = uv_now(loop);
  return 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
  (void)hint;
  top_conn *c = TOP_CONTAINER_OF(h, top_conn, tcp);
  /* Never full here: a frame is at most rcap bytes, and whole frames are
   * consumed after every read. */
  *buf = uv_buf_init((char *)c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

/* Hands every whole frame in the buffer to the owner. */
static void conn_parse(top_conn *c)
{
  size_t off = 0;
  while (c->state == TOP_OPEN || c->state == TOP_HALF_CLOSED) {
    gw_frame_info info;
    int rc = gw_frame_next(top_framing(), c->from, c->rbuf + off, c->rlen - off, &info);
    if (rc == -EAGAIN)
      break;
    if (rc < 0) {
      char why[64];
      snprintf(why, sizeof why, "malformed frame: %s", gw_frame_strerror(info.error));
      conn_abort(c, why, false);
      return;
    }
    if (c->rx_on && info.len > TOP_CIPHER_CLEAR) {
      if (!c->key) {
        conn_abort(c, "malformed frame: no cipher key", false);
        return;
      }
      /* Whole frames only, each once: a partial one waits in rbuf as it
       * came. The length is clear; the command is read again, decrypted. */
      top_cipher_frame(&c->rx, c->rbuf + off, info.len);
      gw_frame_next(top_framing(), c->from, c->rbuf + off, info.len, &info);
    }
    c->cbs->frame(c, c->rbuf + off, &info);
    if (!info.has_opcode && c->echo_pings && c->state == TOP_OPEN)
      conn_ping(c);
    off += info.len;
  }
  if (c->state == TOP_CLOSED)
    return;
  memmove(c->rbuf, c->rbuf + off, c->rlen - off);
  c->rlen -= off;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
  (void)buf;
  top_conn *c = TOP_CONTAINER_OF(s, top_conn, tcp);
  if (nread > 0) {
    c->rlen += (size_t)nread;
    c->last_recv = conn_now(c);
    conn_parse(c);
  } else if (nread == UV_EOF) {
    conn_close(c, "closed by peer", true);
  } else if (nread < 0) {
    conn_abort(c, uv_strerror((int)nread), true);
  }
}

static int conn_start(top_conn *c)
{
  c->last_recv = c->last_send = conn_now(c);
  /* Game frames are small and each one matters now: no Nagle delay. */
  uv_tcp_nodelay(&c->tcp, 1);
  int rc = uv_read_start(conn_stream(c), on_alloc, on_read);
  if (rc == 0)
    conn_arm(c);
  return rc;
}

int top_conn_accept(top_conn *c, uv_stream_t *listener)
{
  int rc = uv_accept(listener, conn_stream(c));
  if (rc == 0)
    rc = conn_start(c);
  if (rc)
    conn_abort(c, uv_strerror(rc), true);
  return rc;
}

static void on_connect(uv_connect_t *req, int status)
{
  top_conn *c = TOP_CONTAINER_OF(req, top_conn, connect_req);
  c->connecting = false;
  if (status == UV_ECANCELED || c->state != TOP_OPEN)
    return;
  if (status == 0)
    status = conn_start(c);
  if (c->cbs->connected)
    c->cbs->connected(c, status);
  if (status)
    conn_abort(c, uv_strerror(status), true);
}

int top_conn_connect(top_conn *c, const struct sockaddr *addr)
{
  c->connecting = true;
  int rc = uv_tcp_connect(&c->connect_req, &c->tcp, addr, on_connect);
  if (rc) {
    c->connecting = false;
    conn_abort(c, uv_strerror(rc), true);
    return rc;
  }
  c->last_recv = conn_now(c); /* idle_ms bounds the connect too */
  conn_arm(c);
  return 0;
}

size_t top_conn_queued(const top_conn *c)
{
  return c->pend_bytes + uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

static void on_write(uv_write_t *req, int status)
{
  top_write *w = TOP_CONTAINER_OF(req, top_write, req);
  top_conn *c = TOP_CONTAINER_OF(req->handle, top_conn, tcp);
  release_msgs(w->msgs, w->n);
  free(w);
  if (status < 0 && status != UV_ECANCELED)
    conn_abort(c, uv_strerror(status), true);
  else if (status == 0 && c->cbs->drained && c->state == TOP_OPEN &&
           top_conn_queued(c) == 0)
    c->cbs->drained(c);
}

/* Hands the frames queued since the last flush to one uv_write (a writev):
 * a broadcast to many peers costs a syscall per peer and loop iteration,
 * not per frame. */
static void conn_flush(top_conn *c)
{
  uv_prepare_stop(&c->flush);
  if (!c->npend)
    return;
  uv_buf_t stack[TOP_IOV_STACK];
  uv_buf_t *bufs = c->npend <= TOP_IOV_STACK ? stack : malloc(c->npend * sizeof *bufs);
  top_write *w = malloc(sizeof *w);
  if (!w || !bufs) {
    free(w);
    if (bufs != stack)
      free(bufs);
    conn_abort(c, "out of memory", false);
    return;
  }
  for (size_t i = 0; i < c->npend; i++)
    bufs[i] = uv_buf_init((char *)c->pend[i]->data, (unsigned)c->pend[i]->len);
  w->msgs = c->pend;
  w->n = c->npend;
  /* uv_write copies the bufs array, not the bytes: those stay in msgs. */
  int rc = uv_write(&w->req, conn_stream(c), bufs, (unsigned)w->n, on_write);
  if (bufs != stack)
    free(bufs);
  c->pend = NULL;
  c->npend = c->pend_cap = c->pend_bytes = 0;
  if (rc) {
    release_msgs(w->msgs, w->n);
    free(w);
    conn_abort(c, uv_strerror(rc), true);
  }
}

static void on_flush(uv_prepare_t *p)
{
  conn_flush(TOP_CONTAINER_OF(p, top_conn, flush));
}

/* This connection's encrypted copy of m, with one reference, or NULL. */
static top_msg *conn_encrypt(top_conn *c, const top_msg *m)
{
  top_msg *e = malloc(sizeof *e + m->len);
  if (!e)
    return NULL;
  e->refs = 1;
  e->len = m->len;
  memcpy(e->data, m->data, m->len);
  top_cipher_frame(&c->tx, e->data, e->len);
  return e;
}

int top_conn_send(top_conn *c, top_msg *m)
{
  if (c->state != TOP_OPEN || c->connecting)
    return UV_EPIPE;
  bool encrypt = c->tx_on && m->len > TOP_CIPHER_CLEAR;
  if (encrypt && !c->key)
    return UV_EINVAL;
  if (top_conn_queued(c) > TOP_WRITE_HIGH) {
    conn_abort(c, "slow reader", false);
    return UV_ENOBUFS;
  }
  if (c->npend == c->pend_cap) {
    size_t cap = c->pend_cap ? 2 * c->pend_cap : 16;
    top_msg **p = realloc(c->pend, cap * sizeof *p);
    if (!p)
      return UV_ENOMEM;
    c->pend = p;
    c->pend_cap = cap;
  }
  /* Encrypted last, once nothing can fail: the keystream moves on only for
   * frames that go out, in the order they go out. */
  if (encrypt) {
    m = conn_encrypt(c, m);
    if (!m)
      return UV_ENOMEM;
  } else {
    m->refs++;
  }
  c->pend[c->npend++] = m;
  c->pend_bytes += m->len;
  /* Written just before the loop next waits for I/O, with whatever else
   * this iteration queues. */
  if (c->npend == 1)
    uv_prepare_start(&c->flush, on_flush);
  c->last_send = conn_now(c);
  return 0;
}

int top_conn_send_cmd(top_conn *c, uint32_t cmd, const top_writer *w)
{
  top_msg *m = top_msg_new(c->from == GW_CLIENT ? GW_SERVER : GW_CLIENT, cmd, w);
  if (!m)
    return w->err ? w->err : -ENOMEM;
  int rc = top_conn_send(c, m);
  top_msg_unref(m);
  return rc;
}

int top_conn_set_key(top_conn *c, const uint8_t *key, size_t n)
{
  if (c->key)
    return -EEXIST;
  if (n == 0)
    return -EINVAL;
  c->key = malloc(n);
  if (!c->key)
    return -ENOMEM;
  memcpy(c->key, key, n);
  top_cipher_init(&c->rx, c->key, n);
  top_cipher_init(&c->tx, c->key, n);
  return 0;
}

void top_conn_decrypt_reads(top_conn *c) { c->rx_on = true; }

void top_conn_encrypt_sends(top_conn *c) { c->tx_on = true; }

static void on_shutdown(uv_shutdown_t *req, int status)
{
  top_conn *c = TOP_CONTAINER_OF(req, top_conn, shutdown_req);
  c->shutdown_pending = false;
  if (c->state == TOP_CLOSING)
    close_handles(c);
  else if (status < 0 && c->state == TOP_HALF_CLOSED)
    conn_abort(c, uv_strerror(status), true);
}

/* Queues our FIN after the pending writes. */
static bool conn_shutdown(top_conn *c)
{
  if (c->connecting)
    return false;
  conn_flush(c);
  c->shutdown_pending =
      uv_shutdown(&c->shutdown_req, conn_stream(c), on_shutdown) == 0;
  return c->shutdown_pending;
}

/* Closes after the queued writes (and our FIN) are out. */
static void conn_close(top_conn *c, const char *reason, bool by_peer)
{
  if (c->state == TOP_CLOSING || c->state == TOP_CLOSED)
    return;
  bool fin_sent = c->state == TOP_HALF_CLOSED;
  c->state = TOP_CLOSING;
  uv_read_stop(conn_stream(c));
  conn_end(c, reason, by_peer);
  if (c->shutdown_pending || (!fin_sent && conn_shutdown(c))) {
    conn_linger(c);
    return;
  }
  close_handles(c);
}

void top_conn_close(top_conn *c, const char *reason)
{
  conn_close(c, reason, false);
}

void top_conn_finish(top_conn *c)
{
  if (c->state != TOP_OPEN)
    return;
  c->state = TOP_HALF_CLOSED;
  if (!conn_shutdown(c)) {
    conn_abort(c, "closed", false);
    return;
  }
  conn_linger(c);
}
