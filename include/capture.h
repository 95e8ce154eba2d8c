/* capture.h: frames to a pcap file, as TCP streams that Wireshark
 * reassembles.
 *
 * gangway sees frames, not packets: each frame is written as the payload
 * of synthetic TCP segments between the session's real client and upstream
 * addresses (client -> server frames from the client's address and port
 * to the upstream's, server -> client frames the other way), with the
 * frame's own timestamp. Each flow has its own sequence numbers per
 * direction; a SYN, SYN-ACK, ACK opens it before its first frame and a
 * FIN from each side ends it (gw_capture_flow_end, or when the capture
 * closes or reaches a limit), so Wireshark's "Follow TCP stream" shows
 * the session as gangway relayed it. IPv4 and TCP checksums are correct;
 * a frame longer than GW_CAPTURE_SEGMENT_MAX bytes is split into segments
 * of at most that size (PSH on the last one). Link type LINKTYPE_RAW
 * (IPv4 and IPv6 in one file). A flow whose client and upstream are of
 * different families is written as IPv6, the IPv4 side as ::ffff:a.b.c.d;
 * IPv4-mapped IPv6 addresses on both sides are written as IPv4.
 *
 * Frames as they arrived ("originals"): gw_capture_frame() writes a frame
 * as it left gangway (after handlers), gw_capture_original() one as it
 * arrived, before handlers changed or dropped it. Originals go to a second
 * TCP stream of the same flow, with the client's port turned into
 * GW_CAPTURE_ORIGINAL_PORT(port) (the upstream's port is kept, so port-based
 * dissectors still apply) and DSCP 1 in the IP header: in Wireshark
 * `ip.dsfield.dscp == 1 || ipv6.tclass.dscp == 1` shows the originals,
 * its negation what left gangway. Which originals to write (every frame,
 * or those a handler changed or dropped) is the caller's choice.
 *
 * Limits: max_bytes (the file's size), max_seconds (from gw_capture_open,
 * by the frames' timestamps) and max_packets (records in the file,
 * synthetic ones included). A frame that would pass a limit is not
 * written: instead every open flow is ended with its FINs (room for them
 * is kept back, so the file stays within max_bytes and max_packets), the
 * file is flushed and complete, and this and every later write returns
 * GW_CAPTURE_FULL. The caller then closes the capture.
 *
 * Pure: no libuv, no Lua; the caller passes the times. Writes are buffered
 * stdio writes to a local file, on the caller's thread. The file is
 * created mode 0600: it holds what players sent. */
#ifndef GW_CAPTURE_H
#define GW_CAPTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "frame.h"

#define GW_CAPTURE_SEGMENT_MAX 65000 /* payload bytes of one synthetic segment */
#define GW_CAPTURE_ORIGINAL_PORT(port) ((uint16_t)((port) ^ 0x8000))
#define GW_CAPTURE_FULL 1 /* a limit was reached: nothing more is written */

typedef struct gw_capture gw_capture;

typedef struct gw_capture_limits {
  uint64_t max_bytes;   /* size of the file, its header included; 0: none */
  uint64_t max_seconds; /* 0: none */
  uint64_t max_packets; /* 0: none */
} gw_capture_limits;

/* The streams of a flow. */
enum { GW_CAPTURE_SENT = 0, GW_CAPTURE_ORIGINALS = 1 };

typedef struct gw_capture_stream {
  uint32_t seq[GW_SIDES];   /* next sequence number each side sends */
  uint32_t acked[GW_SIDES]; /* what the other side last acknowledged of it */
  bool open;                /* handshake written, FINs not yet */
} gw_capture_stream;

/* One session in one capture: set up by gw_capture_flow_init, then owned
 * by the caller, who ends it (gw_capture_flow_end) before freeing it or
 * keeps it until gw_capture_close. Fields are private. */
typedef struct gw_capture_flow {
  int family;                 /* AF_INET or AF_INET6 */
  uint8_t addr[GW_SIDES][16]; /* [GW_CLIENT] the client, [GW_SERVER] the upstream */
  uint16_t port[GW_SIDES];    /* host order */
  gw_capture_stream stream[2]; /* [GW_CAPTURE_SENT], [GW_CAPTURE_ORIGINALS] */
  gw_capture *cap;            /* while a stream is open: in cap's list */
  struct gw_capture_flow *prev, *next;
} gw_capture_flow;

/* Creates (or truncates) path, mode 0600, and writes the pcap header.
 * lim may be NULL (no limits). NULL on failure, with the reason in err. */
gw_capture *gw_capture_open(const char *path, const gw_capture_limits *lim, char *err,
                            size_t errlen);

/* client: the session's client address and port; upstream: the upstream's.
 * 0, or -EAFNOSUPPORT for an address that is not IPv4 or IPv6. */
int gw_capture_flow_init(gw_capture_flow *f, const struct sockaddr *client,
                         const struct sockaddr *upstream);

/* A frame from `from`, as it left gangway (toward the other side), at
 * ts_us (microseconds since the epoch). Opens the flow's stream first if
 * needed; an empty frame writes nothing. 0, GW_CAPTURE_FULL, or -errno
 * (a write failed: the capture is then FULL too). */
int gw_capture_frame(gw_capture *c, gw_capture_flow *f, gw_side from, const uint8_t *frame,
                     size_t len, uint64_t ts_us);
/* The same for a frame as it arrived, in the flow's originals stream. */
int gw_capture_original(gw_capture *c, gw_capture_flow *f, gw_side from, const uint8_t *frame,
                        size_t len, uint64_t ts_us);

/* The session ended: FINs, `first` side first, on each open stream of the
 * flow, which leaves the capture's list. 0, GW_CAPTURE_FULL or -errno. */
int gw_capture_flow_end(gw_capture *c, gw_capture_flow *f, gw_side first, uint64_t ts_us);

/* Ends the flows still open (at their last timestamp), flushes and
 * closes the file, frees c. 0 or -errno of the first write that failed. */
int gw_capture_close(gw_capture *c);

/* What was written so far, file header included. */
void gw_capture_info(const gw_capture *c, uint64_t *packets, uint64_t *bytes);
/* The limit that stopped the capture ("max_bytes", "max_seconds",
 * "max_packets", "write error"), or NULL while it runs. */
const char *gw_capture_stopped(const gw_capture *c);

#endif
