/* proxyproto.c: PROXY protocol v1 and v2 (see proxyproto.h and HAProxy's
 * doc/proxy-protocol.txt). Strict: a v1 line must be exactly as specified
 * (single spaces, canonical addresses, ports 0..65535 without leading
 * zeros, CRLF within 107 bytes); a v2 header must have the version 2 and a
 * known command, and enough bytes for its address family. */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_sig[] = "PROXY ";

#define FAIL(...) (snprintf(msg, msglen, __VA_ARGS__), -EPROTO)

/* Is p[0..n) a prefix of sig[0..siglen)? */
static bool prefix_of(const uint8_t *p, size_t n, const void *sig, size_t siglen) {
  return memcmp(p, sig, n < siglen ? n : siglen) == 0;
}

/* A port: 1 to 5 digits, no leading zero (but "0"), at most 65535. */
static int parse_port(const char *s, size_t len, uint16_t *out) {
  if (!len || len > 5 || (s[0] == '0' && len > 1)) return -1;
  unsigned v = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  if (v > 65535) return -1;
  *out = (uint16_t)v;
  return 0;
}

/* An address of family af, in canonical form (inet_ntop gives it back). */
static int parse_ip(int af, const char *s, size_t len, struct sockaddr_storage *ss) {
  char buf[INET6_ADDRSTRLEN + 1], back[INET6_ADDRSTRLEN];
  if (!len || len >= sizeof buf) return -1;
  memcpy(buf, s, len);
  buf[len] = '\0';
  memset(ss, 0, sizeof *ss);
  void *a;
  if (af == AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    a = &sin->sin_addr;
  } else {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    a = &sin6->sin6_addr;
  }
  if (inet_pton(af, buf, a) != 1) return -1;
  /* IPv4 must be canonical (no leading zeros); IPv6 any valid form. */
  if (af == AF_INET && (!inet_ntop(af, a, back, sizeof back) || strcmp(back, buf))) return -1;
  return 0;
}

static void set_port(struct sockaddr_storage *ss, uint16_t port) {
  if (ss->ss_family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons(port);
  else ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static int parse_v1(const uint8_t *p, size_t n, gw_proxy_info *info, char *msg, size_t msglen) {
  size_t lim = n < GW_PROXY_V1_MAX ? n : GW_PROXY_V1_MAX;
  const uint8_t *cr = memchr(p, '\r', lim);
  size_t len = cr ? (size_t)(cr - p) : lim;
  for (size_t i = 0; i < len; i++) /* printable ASCII only, NUL included */
    if (p[i] < 0x20 || p[i] > 0x7e) return FAIL("PROXY v1 line with a bad byte");
  if (!cr) {
    if (n >= GW_PROXY_V1_MAX) return FAIL("PROXY v1 line longer than 107 bytes");
    return -EAGAIN;
  }
  if (len + 1 >= n) return -EAGAIN;
  if (cr[1] != '\n') return FAIL("PROXY v1 line not ended by CRLF");
  /* Fields between single spaces: PROXY proto src dst sport dport. */
  const char *f[7];
  size_t fl[7], nf = 0;
  const char *s = (const char *)p, *e = s + len;
  while (s <= e && nf < 7) {
    const char *sp = memchr(s, ' ', (size_t)(e - s));
    const char *end = sp ? sp : e;
    f[nf] = s;
    fl[nf++] = (size_t)(end - s);
    if (!sp) break;
    s = sp + 1;
  }
  memset(info, 0, sizeof *info);
  info->version = 1;
  if (nf >= 2 && fl[1] == 7 && !memcmp(f[1], "UNKNOWN", 7)) {
    info->local = true; /* the rest of the line is to be ignored */
    return (int)len + 2;
  }
  if (nf != 6) return FAIL("PROXY v1 line needs 6 fields, has %zu", nf);
  int af;
  if (fl[1] == 4 && !memcmp(f[1], "TCP4", 4)) af = AF_INET;
  else if (fl[1] == 4 && !memcmp(f[1], "TCP6", 4)) af = AF_INET6;
  else return FAIL("PROXY v1: unknown protocol \"%.*s\"", (int)(fl[1] < 16 ? fl[1] : 16), f[1]);
  uint16_t sport, dport;
  if (parse_ip(af, f[2], fl[2], &info->src) || parse_ip(af, f[3], fl[3], &info->dst))
    return FAIL("PROXY v1: bad %s address", af == AF_INET ? "IPv4" : "IPv6");
  if (parse_port(f[4], fl[4], &sport) || parse_port(f[5], fl[5], &dport))
    return FAIL("PROXY v1: bad port");
  set_port(&info->src, sport);
  set_port(&info->dst, dport);
  return (int)len + 2;
}

static int parse_v2(const uint8_t *p, size_t n, gw_proxy_info *info, char *msg, size_t msglen) {
  if (n < 16) return -EAGAIN;
  uint8_t ver = p[12] >> 4, cmd = p[12] & 0x0f, fam = p[13];
  size_t len = (size_t)p[14] << 8 | p[15];
  if (ver != 2) return FAIL("PROXY v2: version %u", ver);
  if (cmd > 1) return FAIL("PROXY v2: unknown command %u", cmd);
  if (n < 16 + len) return -EAGAIN;
  memset(info, 0, sizeof *info);
  info->version = 2;
  const uint8_t *a = p + 16;
  if (cmd == 0) { /* LOCAL: the connection is the proxy's own */
    info->local = true;
    return (int)(16 + len);
  }
  uint8_t af = fam >> 4, proto = fam & 0x0f;
  if (proto != 1 && proto != 0) return FAIL("PROXY v2: transport %u is not TCP", proto);
  if (af == 1) {
    if (len < 12) return FAIL("PROXY v2: %zu address bytes for IPv4", len);
    struct sockaddr_in *s = (struct sockaddr_in *)&info->src, *d = (struct sockaddr_in *)&info->dst;
    s->sin_family = d->sin_family = AF_INET;
    memcpy(&s->sin_addr, a, 4);
    memcpy(&d->sin_addr, a + 4, 4);
    memcpy(&s->sin_port, a + 8, 2);
    memcpy(&d->sin_port, a + 10, 2);
  } else if (af == 2) {
    if (len < 36) return FAIL("PROXY v2: %zu address bytes for IPv6", len);
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)&info->src, *d = (struct sockaddr_in6 *)&info->dst;
    s->sin6_family = d->sin6_family = AF_INET6;
    memcpy(&s->sin6_addr, a, 16);
    memcpy(&d->sin6_addr, a + 16, 16);
    memcpy(&s->sin6_port, a + 32, 2);
    memcpy(&d->sin6_port, a + 34, 2);
  } else {
    info->local = true; /* UNSPEC or UNIX: no address to use */
  }
  return (int)(16 + len); /* TLVs after the addresses are skipped */
}

int gw_proxy_parse(const uint8_t *p, size_t n, gw_proxy_info *info, char *msg, size_t msglen) {
  if (msglen) msg[0] = '\0';
  if (!n) return -EAGAIN;
  if (p[0] == v2_sig[0]) {
    if (!prefix_of(p, n, v2_sig, sizeof v2_sig)) return FAIL("no PROXY header");
    return n < sizeof v2_sig ? -EAGAIN : parse_v2(p, n, info, msg, msglen);
  }
  if (!prefix_of(p, n, v1_sig, sizeof v1_sig - 1)) return FAIL("no PROXY header");
  return n < sizeof v1_sig - 1 ? -EAGAIN : parse_v1(p, n, info, msg, msglen);
}

static bool same_family(const struct sockaddr *a, const struct sockaddr *b) {
  return a && b && a->sa_family == b->sa_family &&
         (a->sa_family == AF_INET || a->sa_family == AF_INET6);
}

int gw_proxy_write_v1(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *out,
                      size_t cap) {
  char line[GW_PROXY_V1_MAX + 1];
  int n;
  if (!same_family(src, dst)) {
    n = snprintf(line, sizeof line, "PROXY UNKNOWN\r\n");
  } else {
    char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
    unsigned sp, dp;
    if (src->sa_family == AF_INET) {
      const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;
      inet_ntop(AF_INET, &a->sin_addr, s, sizeof s);
      inet_ntop(AF_INET, &b->sin_addr, d, sizeof d);
      sp = ntohs(a->sin_port);
      dp = ntohs(b->sin_port);
    } else {
      const struct sockaddr_in6 *a = (const void *)src, *b = (const void *)dst;
      inet_ntop(AF_INET6, &a->sin6_addr, s, sizeof s);
      inet_ntop(AF_INET6, &b->sin6_addr, d, sizeof d);
      sp = ntohs(a->sin6_port);
      dp = ntohs(b->sin6_port);
    }
    n = snprintf(line, sizeof line, "PROXY %s %s %s %u %u\r\n",
                 src->sa_family == AF_INET ? "TCP4" : "TCP6", s, d, sp, dp);
  }
  if (n < 0 || (size_t)n > cap) return -ENOBUFS;
  memcpy(out, line, (size_t)n);
  return n;
}

int gw_proxy_write_v2(const struct sockaddr *src, const struct sockaddr *dst, uint8_t *out,
                      size_t cap) {
  bool addr = same_family(src, dst);
  size_t alen = !addr ? 0 : src->sa_family == AF_INET ? 12 : 36;
  if (cap < 16 + alen) return -ENOBUFS;
  memcpy(out, v2_sig, sizeof v2_sig);
  out[12] = addr ? 0x21 : 0x20; /* version 2, PROXY or LOCAL */
  out[13] = !addr ? 0x00 : src->sa_family == AF_INET ? 0x11 : 0x21;
  out[14] = (uint8_t)(alen >> 8);
  out[15] = (uint8_t)alen;
  uint8_t *a = out + 16;
  if (addr && src->sa_family == AF_INET) {
    const struct sockaddr_in *s = (const void *)src, *d = (const void *)dst;
    memcpy(a, &s->sin_addr, 4);
    memcpy(a + 4, &d->sin_addr, 4);
    memcpy(a + 8, &s->sin_port, 2);
    memcpy(a + 10, &d->sin_port, 2);
  } else if (addr) {
    const struct sockaddr_in6 *s = (const void *)src, *d = (const void *)dst;
    memcpy(a, &s->sin6_addr, 16);
    memcpy(a + 16, &d->sin6_addr, 16);
    memcpy(a + 32, &s->sin6_port, 2);
    memcpy(a + 34, &d->sin6_port, 2);
  }
  return (int)(16 + alen);
}
