/* test_proxyproto.c: src/proxyproto.c, PROXY protocol v1 and v2: the
 * examples of HAProxy's specification, every prefix of a header asking for
 * more, malformed headers refused, and what the writers write read back. */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxyproto.h"

static void expect_header(const void *hdr, size_t n, int version, const char *src, unsigned sport,
                          const char *dst, unsigned dport) {
  gw_proxy_info info;
  char msg[128];
  /* every prefix asks for more, never fails */
  for (size_t k = 0; k < n; k++)
    assert_int_equal(gw_proxy_parse(hdr, k, &info, msg, sizeof msg), -EAGAIN);
  assert_int_equal(gw_proxy_parse(hdr, n, &info, msg, sizeof msg), (int)n);
  assert_int_equal(info.version, version);
  if (!src) {
    assert_true(info.local);
    return;
  }
  assert_false(info.local);
  char a[INET6_ADDRSTRLEN];
  const struct sockaddr *s = (const struct sockaddr *)&info.src, *d = (const struct sockaddr *)&info.dst;
  if (s->sa_family == AF_INET) {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)s)->sin_addr, a, sizeof a);
    assert_string_equal(a, src);
    assert_int_equal(ntohs(((const struct sockaddr_in *)s)->sin_port), sport);
    inet_ntop(AF_INET, &((const struct sockaddr_in *)d)->sin_addr, a, sizeof a);
    assert_string_equal(a, dst);
    assert_int_equal(ntohs(((const struct sockaddr_in *)d)->sin_port), dport);
  } else {
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)s)->sin6_addr, a, sizeof a);
    assert_string_equal(a, src);
    assert_int_equal(ntohs(((const struct sockaddr_in6 *)s)->sin6_port), sport);
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)d)->sin6_addr, a, sizeof a);
    assert_string_equal(a, dst);
    assert_int_equal(ntohs(((const struct sockaddr_in6 *)d)->sin6_port), dport);
  }
}

static void expect_bad(const void *hdr, size_t n, const char *why) {
  gw_proxy_info info;
  char msg[128];
  assert_int_equal(gw_proxy_parse(hdr, n, &info, msg, sizeof msg), -EPROTO);
  assert_non_null(strstr(msg, why));
}

static void test_v1(void **state) {
  (void)state;
  const char tcp4[] = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
  expect_header(tcp4, strlen(tcp4), 1, "192.168.0.1", 56324, "192.168.0.11", 443);
  const char tcp6[] = "PROXY TCP6 ffff:f...:ffff ::1 1 2\r\n";
  expect_bad(tcp6, strlen(tcp6), "bad IPv6 address");
  const char tcp6ok[] = "PROXY TCP6 2001:db8::1 ::1 65535 0\r\n";
  expect_header(tcp6ok, strlen(tcp6ok), 1, "2001:db8::1", 65535, "::1", 0);
  const char unknown[] = "PROXY UNKNOWN ffff:f...:ffff ffff:f...:ffff 65535 65535\r\n";
  expect_header(unknown, strlen(unknown), 1, NULL, 0, NULL, 0);
  /* the bytes after the header are the client's, not the header's */
  char more[128];
  snprintf(more, sizeof more, "%sHELLO", tcp4);
  gw_proxy_info info;
  assert_int_equal(gw_proxy_parse((const uint8_t *)more, strlen(more), &info, NULL, 0),
                   (int)strlen(tcp4));
}

static void test_v1_malformed(void **state) {
  (void)state;
  const char *const bad[][2] = {
      {"GET / HTTP/1.1\r\n", "no PROXY header"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bad byte"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CRLF"},
      {"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "6 fields"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "6 fields"},
      {"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"},
      {"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "bad IPv4 address"},
      {"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "bad IPv4 address"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "bad port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"},
      {"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) expect_bad(bad[i][0], strlen(bad[i][0]), bad[i][1]);
  char longline[200];
  memset(longline, 'a', sizeof longline);
  memcpy(longline, "PROXY ", 6);
  expect_bad(longline, sizeof longline, "longer than 107");
}

static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static void test_v2(void **state) {
  (void)state;
  uint8_t h[64];
  memcpy(h, sig, 12);
  h[12] = 0x21; /* v2 PROXY */
  h[13] = 0x11; /* TCP over IPv4 */
  h[14] = 0;
  h[15] = 12 + 7; /* with a 7-byte TLV after the addresses, skipped */
  const uint8_t a[] = {10, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90, 0x07, 0xb5};
  memcpy(h + 16, a, sizeof a);
  memcpy(h + 28, "\x04\x00\x04" "abcd", 7);
  expect_header(h, 35, 2, "10.0.0.1", 8080, "127.0.0.1", 1973);
  /* LOCAL: a health check of the load balancer's own */
  h[12] = 0x20;
  h[13] = 0x00;
  h[15] = 0;
  expect_header(h, 16, 2, NULL, 0, NULL, 0);
  /* IPv6 */
  h[12] = 0x21;
  h[13] = 0x21;
  h[15] = 36;
  memset(h + 16, 0, 36);
  h[16] = 0x20, h[17] = 0x01, h[18] = 0x0d, h[19] = 0xb8, h[31] = 1; /* 2001:db8::1 */
  h[47] = 1;                                                        /* ::1 */
  h[48] = 0x12, h[49] = 0x34, h[50] = 0, h[51] = 80;
  expect_header(h, 52, 2, "2001:db8::1", 0x1234, "::1", 80);
}

static void test_v2_malformed(void **state) {
  (void)state;
  uint8_t h[64];
  memcpy(h, sig, 12);
  h[12] = 0x11; /* version 1 in a v2 header */
  h[13] = 0x11, h[14] = 0, h[15] = 12;
  expect_bad(h, 28, "version 1");
  h[12] = 0x22; /* command 2 */
  expect_bad(h, 28, "unknown command 2");
  h[12] = 0x21, h[15] = 4; /* too short for IPv4 */
  expect_bad(h, 20, "4 address bytes for IPv4");
  h[13] = 0x12, h[15] = 12; /* UDP */
  expect_bad(h, 28, "not TCP");
  h[4] = 0x01; /* a broken signature */
  expect_bad(h, 28, "no PROXY header");
}

static void round_trip(int af, const char *s, unsigned sp, const char *d, unsigned dp) {
  struct sockaddr_storage src = {0}, dst = {0};
  if (af == AF_INET) {
    struct sockaddr_in *a = (void *)&src, *b = (void *)&dst;
    a->sin_family = b->sin_family = AF_INET;
    inet_pton(AF_INET, s, &a->sin_addr);
    inet_pton(AF_INET, d, &b->sin_addr);
    a->sin_port = htons((uint16_t)sp);
    b->sin_port = htons((uint16_t)dp);
  } else {
    struct sockaddr_in6 *a = (void *)&src, *b = (void *)&dst;
    a->sin6_family = b->sin6_family = AF_INET6;
    inet_pton(AF_INET6, s, &a->sin6_addr);
    inet_pton(AF_INET6, d, &b->sin6_addr);
    a->sin6_port = htons((uint16_t)sp);
    b->sin6_port = htons((uint16_t)dp);
  }
  uint8_t out[128];
  int n = gw_proxy_write_v1((void *)&src, (void *)&dst, out, sizeof out);
  assert_true(n > 0 && n <= GW_PROXY_V1_MAX);
  expect_header(out, (size_t)n, 1, s, sp, d, dp);
  n = gw_proxy_write_v2((void *)&src, (void *)&dst, out, sizeof out);
  assert_int_equal(n, af == AF_INET ? 28 : 52);
  expect_header(out, (size_t)n, 2, s, sp, d, dp);
  assert_int_equal(gw_proxy_write_v2((void *)&src, (void *)&dst, out, 20), -ENOBUFS);
}

static void test_writers(void **state) {
  (void)state;
  round_trip(AF_INET, "203.0.113.9", 50123, "127.0.0.1", 1974);
  round_trip(AF_INET6, "2001:db8::42", 1, "fe80::1", 65535);
  uint8_t out[128];
  struct sockaddr_storage unix_like = {.ss_family = AF_UNIX};
  int n = gw_proxy_write_v1((void *)&unix_like, (void *)&unix_like, out, sizeof out);
  expect_header(out, (size_t)n, 1, NULL, 0, NULL, 0);
  n = gw_proxy_write_v2((void *)&unix_like, (void *)&unix_like, out, sizeof out);
  expect_header(out, (size_t)n, 2, NULL, 0, NULL, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_v1),
      cmocka_unit_test(test_v1_malformed),
      cmocka_unit_test(test_v2),
      cmocka_unit_test(test_v2_malformed),
      cmocka_unit_test(test_writers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
