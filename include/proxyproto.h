/* proxyproto.h: the PROXY protocol, versions 1 (text) and 2 (binary), as
 * HAProxy specifies it: a header a load balancer puts before a connection's
 * first byte, carrying the client's real address.
 *
 * Pure: bytes in, an address or an error out; no allocation. The relay
 * parses it in front of the framer on listeners with proxy_protocol, and
 * writes one toward upstreams with upstream_proxy_protocol. */
#ifndef GW_PROXYPROTO_H
#define GW_PROXYPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define GW_PROXY_V1_MAX 107      /* the longest v1 line, CRLF included */
#define GW_PROXY_V2_MAX (16 + 65535)

typedef struct gw_proxy_info {
  int version;                   /* 1 or 2 */
  bool local;                    /* v2 LOCAL / v1 UNKNOWN: no address given
                                    (health checks): keep the socket's */
  struct sockaddr_storage src;   /* the client, when !local */
  struct sockaddr_storage dst;   /* where it connected to, when !local */
} gw_proxy_info;

/* Looks for a PROXY header at p[0..n). Returns the header's size (> 0) with
 * *info filled, -EAGAIN if more bytes are needed (every prefix of a valid
 * header answers so, and nothing else does), or -EPROTO if the bytes are
 * not a valid header (msg says why). */
int gw_proxy_parse(const uint8_t *p, size_t n, gw_proxy_info *info, char *msg,
                   size_t msglen);

/* Writes a header for a TCP connection from src to dst (both AF_INET or
 * both AF_INET6; anything else is written as v1 UNKNOWN / v2 LOCAL).
 * Returns its size, or -ENOBUFS if cap is too small (108 bytes is always
 * enough for v1, 52 for v2). */
int gw_proxy_write_v1(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *out,
                      size_t cap);
int gw_proxy_write_v2(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *out,
                      size_t cap);

#endif
