/* top_conn.h: one Tales of Pirates TCP connection of the demo programs.
 *
 * Reads frames with the framer into a bounded buffer and hands each to a
 * callback; sends frames that several connections may share (top_msg);
 * keeps alive the way the game does: a `00 02` after ping_ms of sending
 * nothing, an answer to every `00 02` when echo_pings is set, and a drop
 * after idle_ms of hearing nothing. Memory per connection is bounded: a
 * peer whose write queue passes TOP_WRITE_HIGH is dropped as a slow reader.
 * Optionally encrypts the frames it sends and decrypts the frames it reads
 * with the demo cipher (top_cipher.h), from the frame the owner says on.
 *
 * Lifetime: after top_conn_init the connection ends only through
 * top_conn_close (or a peer's or a timer's doing), which calls cbs->end
 * once, then cbs->closed when its handles are closed; the owner may free
 * the memory around it from cbs->closed on. */
#ifndef TOP_CONN_H
#define TOP_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "frame.h"
#include "top_cipher.h"
#include "top_wire.h"

/* The struct that embeds member at ptr (owners embed a top_conn). */
#define TOP_CONTAINER_OF(ptr, type, member) \
  ((type *)((char *)(ptr) - offsetof(type, member)))

#define TOP_WRITE_HIGH (1024 * 1024) /* bytes queued before a peer is dropped */
#define TOP_LINGER_MS 2000           /* bound on a graceful close */

/* A whole frame, reference-counted so that a broadcast builds it once. */
typedef struct top_msg {
  unsigned refs;
  size_t len;
  uint8_t data[];
} top_msg;

/* cmd with body w, as sent from side; refs 1. NULL on failure. */
top_msg *top_msg_new(gw_side side, uint32_t cmd, const top_writer *w);
void top_msg_unref(top_msg *m);

typedef struct top_conn top_conn;

typedef struct top_conn_cbs {
  /* Clients: the connect finished; status 0 or a libuv error (the
   * connection then closes by itself). */
  void (*connected)(top_conn *c, int status);
  /* A whole frame; keep-alives too (!info->has_opcode, len 2). */
  void (*frame)(top_conn *c, const uint8_t *frame, const gw_frame_info *info);
  /* A keep-alive went out (optional). */
  void (*pinged)(top_conn *c);
  /* Every queued frame has been written (optional): a producer that
   * paused for the write queue may go on. */
  void (*drained)(top_conn *c);
  /* The connection is closing, and why: "closed by peer" or a socket
   * error (then ended_by_peer is set), "keep-alive timeout", "malformed
   * frame: ...", "slow reader", or the reason given to top_conn_close.
   * Nothing can be sent from here on. */
  void (*end)(top_conn *c, const char *reason);
  void (*closed)(top_conn *c);
} top_conn_cbs;

typedef enum {
  TOP_OPEN,
  TOP_HALF_CLOSED, /* our FIN is sent or queued; still reading */
  TOP_CLOSING,     /* flushing before the close; no more reading */
  TOP_CLOSED,      /* uv_close issued */
} top_conn_state;

struct top_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;         /* keep-alives, then the linger bound */
  uv_prepare_t flush;       /* writes what this loop iteration queued */
  uv_connect_t connect_req;
  uv_shutdown_t shutdown_req;
  const top_conn_cbs *cbs;
  gw_side from;             /* side of the frames this connection reads */
  unsigned ping_ms;         /* 0: never ping */
  unsigned idle_ms;         /* 0: never drop for silence */
  bool echo_pings;
  top_conn_state state;
  bool connecting;          /* a connect request is pending */
  bool shutdown_pending;    /* shutdown_req is in flight */
  bool ended;               /* cbs->end was called */
  bool ended_by_peer;       /* by its FIN or a socket error, not by us */
  int open_handles;
  uint64_t last_recv, last_send; /* loop time, ms */
  uint8_t *rbuf;            /* owned; max_frame[from] bytes */
  size_t rlen, rcap;
  top_msg **pend;           /* owned, a reference each: queued, not yet
                               handed to uv_write */
  size_t npend, pend_cap, pend_bytes;
  char reason[96];
  /* The demo cipher: each direction is clear until turned on. */
  uint8_t *key;             /* owned; NULL until top_conn_set_key */
  top_cipher rx, tx;        /* frames read, frames sent */
  bool rx_on, tx_on;
};

/* Sets up the handles and the read buffer. Returns 0 or a negative errno
 * (then nothing needs closing). */
int top_conn_init(uv_loop_t *loop, top_conn *c, const top_conn_cbs *cbs,
                  gw_side from);
/* Takes the next connection from listener and starts reading. On error
 * the connection closes (cbs->end, cbs->closed) and this returns it. */
int top_conn_accept(top_conn *c, uv_stream_t *listener);
/* Connects; cbs->connected reports the outcome, then reading starts. On
 * an immediate error the connection closes (cbs->end, cbs->closed) and
 * this returns it. */
int top_conn_connect(top_conn *c, const struct sockaddr *addr);
/* Queues a frame (takes a reference); the frames queued in one loop
 * iteration go out together, before the loop next waits. Returns 0 or a
 * negative errno (UV_EPIPE once closing; UV_ENOBUFS when the peer is
 * dropped as a slow reader; UV_EINVAL when it should be encrypted and no
 * key is set). */
int top_conn_send(top_conn *c, top_msg *m);
/* Bytes queued and not yet written. */
size_t top_conn_queued(const top_conn *c);
/* Builds and sends cmd with body w. */
int top_conn_send_cmd(top_conn *c, uint32_t cmd, const top_writer *w);
/* The demo cipher's key (the chap string's bytes), copied; set once. Both
 * directions' counters start at 0. Returns 0, -EEXIST when a key is set
 * already, -EINVAL for an empty key, or -ENOMEM. */
int top_conn_set_key(top_conn *c, const uint8_t *key, size_t n);
/* Decrypts every frame read after the one being handled now (call it from
 * cbs->frame). A bodied frame read with no key set closes the connection
 * ("malformed frame: no cipher key"). */
void top_conn_decrypt_reads(top_conn *c);
/* Encrypts every frame sent from now on; each connection encrypts its own
 * copy of a shared top_msg. Until a key is set, top_conn_send refuses
 * bodied frames (UV_EINVAL); keep-alives have nothing to encrypt. */
void top_conn_encrypt_sends(top_conn *c);
/* Closes after the queued frames are out (TOP_LINGER_MS at most). */
void top_conn_close(top_conn *c, const char *reason);
/* Sends our FIN after the queued frames and keeps reading until the peer
 * closes too (TOP_LINGER_MS at most): the polite end of a client. */
void top_conn_finish(top_conn *c);

#endif
