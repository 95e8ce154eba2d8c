/* fuzz_proxy.c: libFuzzer harness for the PROXY protocol parser
 * (src/proxyproto.c). Checks what the relay relies on: a header never
 * claims more bytes than it was given, every shorter prefix of a header
 * asks for more, an answer of "more" or "malformed" is stable as bytes are
 * added (a prefix that failed never becomes good), and what the writers
 * make of a parsed address parses back to the same address. ASan catches
 * any read past the input, which is a copy of exactly its own size. */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) {                                                           \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                               \
    }                                                                        \
  } while (0)

static void same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  CHECK(a->ss_family == b->ss_family);
  size_t n = a->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
  CHECK(memcmp(a, b, n) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *p = malloc(size ? size : 1);
  memcpy(p, data, size);
  gw_proxy_info info, again;
  char msg[160];
  int rc = gw_proxy_parse(p, size, &info, msg, sizeof msg);
  CHECK(rc == -EAGAIN || rc == -EPROTO || (rc > 0 && (size_t)rc <= size));
  if (rc == -EPROTO) CHECK(msg[0] != '\0');
  if (rc > 0) {
    for (size_t k = 0; k < (size_t)rc; k += 1 + k / 8) {
      int r = gw_proxy_parse(p, k, &again, msg, sizeof msg);
      CHECK(r == -EAGAIN);
    }
    if (!info.local) {
      uint8_t out[128];
      int n = gw_proxy_write_v2((const struct sockaddr *)&info.src,
                                (const struct sockaddr *)&info.dst, out, sizeof out);
      CHECK(n > 0 && gw_proxy_parse(out, (size_t)n, &again, msg, sizeof msg) == n);
      same_addr(&info.src, &again.src);
      same_addr(&info.dst, &again.dst);
      n = gw_proxy_write_v1((const struct sockaddr *)&info.src,
                            (const struct sockaddr *)&info.dst, out, sizeof out);
      CHECK(n > 0 && gw_proxy_parse(out, (size_t)n, &again, msg, sizeof msg) == n);
      CHECK(!again.local);
    }
  } else if (rc == -EPROTO && size < 256) {
    /* more bytes never make a malformed start good */
    uint8_t *q = malloc(size + 64);
    memcpy(q, p, size);
    memset(q + size, '\n', 64);
    CHECK(gw_proxy_parse(q, size + 64, &again, msg, sizeof msg) == -EPROTO);
    free(q);
  }
  free(p);
  return 0;
}
