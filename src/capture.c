/* capture.c: frames to a pcap file through libpcap, wrapped in synthetic
 * IPv4/IPv6 and TCP headers (see capture.h). */
#include "capture.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <pcap/pcap.h>

#define SNAPLEN 262144
#define PCAP_FILE_HEADER 24
#define PCAP_RECORD_HEADER 16
#define TCP_HEADER 20
#define SYN_OPTIONS 4 /* NOP, window scale */
#define WINDOW_SHIFT 14 /* a window of 1 GiB: frames sent without answers stay in it */
#define ACK_EVERY (1u << 29) /* unanswered bytes after which the peer acknowledges */
#define DSCP_ORIGINAL 1

enum { F_FIN = 0x01, F_SYN = 0x02, F_PSH = 0x08, F_ACK = 0x10 };

struct gw_capture {
  pcap_t *pcap;
  pcap_dumper_t *dump;
  gw_capture_limits lim;
  uint64_t start_us, last_us;
  uint64_t packets, bytes;
  uint64_t reserve_packets, reserve_bytes; /* the FINs of the open streams */
  gw_capture_flow *flows;                  /* those with a stream open */
  const char *stopped;
  int err;
  uint16_t ip_id;
  uint8_t pkt[40 + TCP_HEADER + SYN_OPTIONS + GW_CAPTURE_SEGMENT_MAX];
};

static inline gw_side other(gw_side side) { return side == GW_CLIENT ? GW_SERVER : GW_CLIENT; }

static size_t ip_header(const gw_capture_flow *f) { return f->family == AF_INET ? 20 : 40; }

/* Bytes of a record of a segment (without TCP options). */
static uint64_t record_size(const gw_capture_flow *f, size_t payload) {
  return PCAP_RECORD_HEADER + ip_header(f) + TCP_HEADER + payload;
}

/* ---- opening ------------------------------------------------------------ */

gw_capture *gw_capture_open(const char *path, const gw_capture_limits *lim, char *err,
                            size_t errlen) {
  gw_capture *c = calloc(1, sizeof *c);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  if (lim) c->lim = *lim;
  c->pcap = pcap_open_dead(DLT_RAW, SNAPLEN);
  int fd = c->pcap ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : -1;
  FILE *fp = fd >= 0 ? fdopen(fd, "wb") : NULL;
  if (!fp) {
    snprintf(err, errlen, "%s: %s", path, c->pcap ? strerror(errno) : "pcap_open_dead failed");
    if (fd >= 0) close(fd);
    goto fail;
  }
  c->dump = pcap_dump_fopen(c->pcap, fp);
  if (!c->dump) {
    snprintf(err, errlen, "%s: %s", path, pcap_geterr(c->pcap));
    fclose(fp);
    goto fail;
  }
  if (pcap_dump_flush(c->dump) != 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    pcap_dump_close(c->dump);
    goto fail;
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  c->start_us = c->last_us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
  c->bytes = PCAP_FILE_HEADER;
  return c;
fail:
  if (c->pcap) pcap_close(c->pcap);
  free(c);
  return NULL;
}

/* ---- flows -------------------------------------------------------------- */

/* An address as 16 bytes of IPv6 (IPv4 mapped), and whether it is IPv4. */
static int flow_addr(const struct sockaddr *sa, uint8_t out[16], uint16_t *port, bool *v4) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    memcpy(out, mapped, 12);
    memcpy(out + 12, &a->sin_addr, 4);
    *port = ntohs(a->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    memcpy(out, &a->sin6_addr, 16);
    *port = ntohs(a->sin6_port);
  } else {
    return -EAFNOSUPPORT;
  }
  *v4 = memcmp(out, mapped, 12) == 0;
  return 0;
}

/* FNV-1a: initial sequence numbers that differ between flows. */
static uint32_t isn(const gw_capture_flow *f, gw_side side, int stream) {
  uint32_t h = 2166136261u;
  const uint8_t *p = f->addr[side];
  for (size_t i = 0; i < 16; i++) h = (h ^ p[i]) * 16777619u;
  h = (h ^ (f->port[side] & 0xff)) * 16777619u;
  h = (h ^ (f->port[side] >> 8)) * 16777619u;
  h = (h ^ (uint32_t)(side * 2 + stream)) * 16777619u;
  return h;
}

int gw_capture_flow_init(gw_capture_flow *f, const struct sockaddr *client,
                         const struct sockaddr *upstream) {
  memset(f, 0, sizeof *f);
  bool v4[GW_SIDES];
  int rc = flow_addr(client, f->addr[GW_CLIENT], &f->port[GW_CLIENT], &v4[GW_CLIENT]);
  if (rc == 0) rc = flow_addr(upstream, f->addr[GW_SERVER], &f->port[GW_SERVER], &v4[GW_SERVER]);
  if (rc < 0) return rc;
  if (v4[GW_CLIENT] && v4[GW_SERVER]) {
    f->family = AF_INET;
    for (int s = 0; s < GW_SIDES; s++) memmove(f->addr[s], f->addr[s] + 12, 4);
  } else {
    f->family = AF_INET6;
  }
  return 0;
}

/* ---- packets ------------------------------------------------------------ */

static uint32_t sum16(uint32_t sum, const uint8_t *p, size_t n) {
  for (; n > 1; p += 2, n -= 2) sum += (uint32_t)p[0] << 8 | p[1];
  if (n) sum += (uint32_t)p[0] << 8;
  return sum;
}

static uint16_t fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v) {
  put16(p, v >> 16);
  put16(p + 2, v);
}

/* One segment of stream `stream` from `from`, written to the file. */
static void put_segment(gw_capture *c, const gw_capture_flow *f, int stream, gw_side from,
                        uint8_t flags, const uint8_t *payload, size_t len, uint64_t ts_us) {
  const gw_capture_stream *st = &f->stream[stream];
  gw_side to = other(from);
  size_t iph = ip_header(f), opt = (flags & F_SYN) ? SYN_OPTIONS : 0;
  size_t tcp_len = TCP_HEADER + opt + len;
  uint8_t *ip = c->pkt, *tcp = c->pkt + iph;
  uint8_t tos = stream == GW_CAPTURE_ORIGINALS ? DSCP_ORIGINAL << 2 : 0;
  const uint8_t *src = f->addr[from], *dst = f->addr[to];
  size_t alen = f->family == AF_INET ? 4 : 16;

  memset(c->pkt, 0, iph + TCP_HEADER + opt);
  if (f->family == AF_INET) {
    ip[0] = 0x45;
    ip[1] = tos;
    put16(ip + 2, (uint32_t)(iph + tcp_len));
    put16(ip + 4, c->ip_id++);
    put16(ip + 6, 0x4000); /* don't fragment */
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    memcpy(ip + 12, src, 4);
    memcpy(ip + 16, dst, 4);
    put16(ip + 10, fold(sum16(0, ip, 20)));
  } else {
    put32(ip, 6u << 28 | (uint32_t)tos << 20);
    put16(ip + 4, (uint32_t)tcp_len);
    ip[6] = IPPROTO_TCP;
    ip[7] = 64;
    memcpy(ip + 8, src, 16);
    memcpy(ip + 24, dst, 16);
  }

  uint16_t port[GW_SIDES] = {f->port[GW_CLIENT], f->port[GW_SERVER]};
  if (stream == GW_CAPTURE_ORIGINALS) port[GW_CLIENT] = GW_CAPTURE_ORIGINAL_PORT(port[GW_CLIENT]);
  put16(tcp, port[from]);
  put16(tcp + 2, port[to]);
  put32(tcp + 4, st->seq[from]);
  put32(tcp + 8, (flags & F_ACK) ? st->seq[to] : 0);
  tcp[12] = (uint8_t)(((TCP_HEADER + opt) / 4) << 4);
  tcp[13] = flags;
  put16(tcp + 14, 0xffff);
  if (opt) {
    tcp[20] = 1; /* NOP */
    tcp[21] = 3; /* window scale */
    tcp[22] = 3;
    tcp[23] = WINDOW_SHIFT;
  }
  if (len) memcpy(tcp + TCP_HEADER + opt, payload, len);
  /* the pseudo-header: addresses, protocol, TCP length */
  uint32_t sum = sum16(0, src, alen);
  sum = sum16(sum, dst, alen);
  sum += IPPROTO_TCP + (uint32_t)(tcp_len & 0xffff) + (uint32_t)(tcp_len >> 16);
  put16(tcp + 16, fold(sum16(sum, tcp, tcp_len)));

  struct pcap_pkthdr h = {
      .ts = {.tv_sec = (time_t)(ts_us / 1000000u), .tv_usec = (suseconds_t)(ts_us % 1000000u)},
      .caplen = (bpf_u_int32)(iph + tcp_len),
      .len = (bpf_u_int32)(iph + tcp_len),
  };
  pcap_dump((u_char *)c->dump, &h, c->pkt);
  c->packets++;
  c->bytes += PCAP_RECORD_HEADER + h.caplen;
}

static void link_flow(gw_capture *c, gw_capture_flow *f) {
  if (f->cap) return;
  f->cap = c;
  f->prev = NULL;
  f->next = c->flows;
  if (c->flows) c->flows->prev = f;
  c->flows = f;
}

static void unlink_flow(gw_capture *c, gw_capture_flow *f) {
  if (f->cap != c || f->stream[0].open || f->stream[1].open) return;
  if (f->prev) f->prev->next = f->next;
  else c->flows = f->next;
  if (f->next) f->next->prev = f->prev;
  f->prev = f->next = NULL;
  f->cap = NULL;
}

static void open_stream(gw_capture *c, gw_capture_flow *f, int stream, uint64_t ts_us) {
  gw_capture_stream *st = &f->stream[stream];
  st->seq[GW_CLIENT] = isn(f, GW_CLIENT, stream);
  st->seq[GW_SERVER] = isn(f, GW_SERVER, stream);
  put_segment(c, f, stream, GW_CLIENT, F_SYN, NULL, 0, ts_us);
  st->seq[GW_CLIENT]++;
  put_segment(c, f, stream, GW_SERVER, F_SYN | F_ACK, NULL, 0, ts_us);
  st->seq[GW_SERVER]++;
  put_segment(c, f, stream, GW_CLIENT, F_ACK, NULL, 0, ts_us);
  for (int s = 0; s < GW_SIDES; s++) st->acked[s] = st->seq[s];
  st->open = true;
  c->reserve_packets += 3;
  c->reserve_bytes += 3 * record_size(f, 0);
  link_flow(c, f);
}

static void end_stream(gw_capture *c, gw_capture_flow *f, int stream, gw_side first,
                       uint64_t ts_us) {
  gw_capture_stream *st = &f->stream[stream];
  if (!st->open) return;
  put_segment(c, f, stream, first, F_FIN | F_ACK, NULL, 0, ts_us);
  st->seq[first]++;
  put_segment(c, f, stream, other(first), F_FIN | F_ACK, NULL, 0, ts_us);
  st->seq[other(first)]++;
  put_segment(c, f, stream, first, F_ACK, NULL, 0, ts_us);
  st->open = false;
  c->reserve_packets -= 3;
  c->reserve_bytes -= 3 * record_size(f, 0);
}

/* After writing: did stdio fail? Then the capture stops. */
static int check_written(gw_capture *c) {
  if (!ferror(pcap_dump_file(c->dump))) return 0;
  if (!c->err) c->err = -EIO;
  c->stopped = "write error";
  return c->err;
}

/* Ends every open flow and flushes: the file is complete from here on. */
static void end_all(gw_capture *c) {
  while (c->flows) {
    gw_capture_flow *f = c->flows;
    for (int s = 0; s < 2; s++) end_stream(c, f, s, GW_CLIENT, c->last_us);
    unlink_flow(c, f);
  }
  if (pcap_dump_flush(c->dump) != 0 && !c->err) c->err = -EIO;
}

static int stop(gw_capture *c, const char *why) {
  c->stopped = why;
  end_all(c);
  check_written(c);
  return c->err ? c->err : GW_CAPTURE_FULL;
}

/* Would packets and bytes more, with the FINs of the streams open then,
 * stay within the limits? */
static const char *over_limit(const gw_capture *c, uint64_t packets, uint64_t bytes) {
  const gw_capture_limits *l = &c->lim;
  if (l->max_packets && c->packets + c->reserve_packets + packets > l->max_packets)
    return "max_packets";
  if (l->max_bytes && c->bytes + c->reserve_bytes + bytes > l->max_bytes) return "max_bytes";
  return NULL;
}

static int write_frame(gw_capture *c, gw_capture_flow *f, int stream, gw_side from,
                       const uint8_t *frame, size_t len, uint64_t ts_us) {
  if (c->stopped) return c->err ? c->err : GW_CAPTURE_FULL;
  if (c->lim.max_seconds && ts_us >= c->start_us + c->lim.max_seconds * 1000000u)
    return stop(c, "max_seconds");
  if (!len) return 0;
  if (f->cap && f->cap != c) return -EINVAL; /* a flow belongs to one capture */

  gw_capture_stream *st = &f->stream[stream];
  gw_side to = other(from);
  size_t segments = (len + GW_CAPTURE_SEGMENT_MAX - 1) / GW_CAPTURE_SEGMENT_MAX;
  uint64_t packets = segments, bytes = segments * record_size(f, 0) + len;
  if (!st->open) { /* the handshake, and room for the FINs */
    packets += 3 + 3;
    bytes += 6 * record_size(f, 0) + 2 * SYN_OPTIONS;
  }
  /* the receiver's acknowledgement, before unanswered bytes fill its window */
  bool ack = st->open && st->seq[from] + (uint32_t)len - st->acked[from] >= ACK_EVERY;
  if (ack) {
    packets++;
    bytes += record_size(f, 0);
  }
  const char *why = over_limit(c, packets, bytes);
  if (why) return stop(c, why);

  if (ts_us > c->last_us) c->last_us = ts_us;
  if (!st->open) open_stream(c, f, stream, ts_us);
  if (ack) {
    put_segment(c, f, stream, to, F_ACK, NULL, 0, ts_us);
    st->acked[from] = st->seq[from];
  }
  for (size_t off = 0; off < len; off += GW_CAPTURE_SEGMENT_MAX) {
    size_t n = len - off < GW_CAPTURE_SEGMENT_MAX ? len - off : GW_CAPTURE_SEGMENT_MAX;
    put_segment(c, f, stream, from, F_ACK | (off + n == len ? F_PSH : 0), frame + off, n, ts_us);
    st->seq[from] += (uint32_t)n;
  }
  /* every segment acknowledges what the other side sent */
  st->acked[to] = st->seq[to];
  return check_written(c);
}

int gw_capture_frame(gw_capture *c, gw_capture_flow *f, gw_side from, const uint8_t *frame,
                     size_t len, uint64_t ts_us) {
  return write_frame(c, f, GW_CAPTURE_SENT, from, frame, len, ts_us);
}

int gw_capture_original(gw_capture *c, gw_capture_flow *f, gw_side from, const uint8_t *frame,
                        size_t len, uint64_t ts_us) {
  return write_frame(c, f, GW_CAPTURE_ORIGINALS, from, frame, len, ts_us);
}

int gw_capture_flow_end(gw_capture *c, gw_capture_flow *f, gw_side first, uint64_t ts_us) {
  if (c->stopped) return c->err ? c->err : GW_CAPTURE_FULL;
  if (f->cap != c) return 0; /* nothing written, or ended already */
  if (ts_us > c->last_us) c->last_us = ts_us;
  /* the FINs were kept room for: no limit applies */
  for (int s = 0; s < 2; s++) end_stream(c, f, s, first, ts_us);
  unlink_flow(c, f);
  return check_written(c);
}

int gw_capture_close(gw_capture *c) {
  if (!c) return 0;
  if (!c->stopped) end_all(c);
  while (c->flows) { /* stopped by a write error: forget the flows */
    gw_capture_flow *f = c->flows;
    f->stream[0].open = f->stream[1].open = false;
    unlink_flow(c, f);
  }
  if (pcap_dump_flush(c->dump) != 0 && !c->err) c->err = -EIO;
  check_written(c);
  int rc = c->err;
  pcap_dump_close(c->dump);
  pcap_close(c->pcap);
  free(c);
  return rc;
}

void gw_capture_info(const gw_capture *c, uint64_t *packets, uint64_t *bytes) {
  if (packets) *packets = c->packets;
  if (bytes) *bytes = c->bytes;
}

const char *gw_capture_stopped(const gw_capture *c) { return c->stopped; }
