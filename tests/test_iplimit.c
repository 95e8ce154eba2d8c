/* test_iplimit.c: src/iplimit.c, sessions per client address. */
#include <arpa/inet.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "iplimit.h"

static struct sockaddr_storage v4(const char *ip, int port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *a = (struct sockaddr_in *)&ss;
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  inet_pton(AF_INET, ip, &a->sin_addr);
  return ss;
}

static struct sockaddr_storage v6(const char *ip) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
  a->sin6_family = AF_INET6;
  inet_pton(AF_INET6, ip, &a->sin6_addr);
  return ss;
}

#define SA(x) ((const struct sockaddr *)&(x))

static void test_no_limits_hold_nothing(void **state) {
  (void)state;
  gw_iplimit *t = gw_iplimit_new();
  struct sockaddr_storage a = v4("10.0.0.1", 1);
  for (int i = 0; i < 1000; i++) assert_int_equal(gw_iplimit_open(t, SA(a), 0), GW_IP_OK);
  assert_int_equal(gw_iplimit_entries(t), 0);
  gw_iplimit_close(t, SA(a), 0);
  gw_iplimit_free(t);
}

static void test_sessions_per_ip(void **state) {
  (void)state;
  gw_iplimit *t = gw_iplimit_new();
  gw_iplimit_set(t, 3, 0);
  struct sockaddr_storage a = v4("10.0.0.1", 1000), a2 = v4("10.0.0.1", 2000),
                          b = v4("10.0.0.2", 1000);
  for (int i = 0; i < 3; i++) assert_int_equal(gw_iplimit_open(t, SA(a), 0), GW_IP_OK);
  /* the port does not make another client */
  assert_int_equal(gw_iplimit_open(t, SA(a2), 0), GW_IP_TOO_MANY);
  assert_int_equal(gw_iplimit_open(t, SA(b), 0), GW_IP_OK);
  gw_iplimit_close(t, SA(a), 0);
  assert_int_equal(gw_iplimit_open(t, SA(a2), 0), GW_IP_OK);
  assert_int_equal(gw_iplimit_open(t, SA(a2), 0), GW_IP_TOO_MANY);
  assert_int_equal(gw_iplimit_entries(t), 2);
  for (int i = 0; i < 3; i++) gw_iplimit_close(t, SA(a), 0);
  gw_iplimit_close(t, SA(b), 0);
  assert_int_equal(gw_iplimit_entries(t), 0); /* nothing open, no rate: gone */
  gw_iplimit_free(t);
}

static void test_new_sessions_per_second(void **state) {
  (void)state;
  gw_iplimit *t = gw_iplimit_new();
  gw_iplimit_set(t, 0, 10);
  struct sockaddr_storage a = v6("2001:db8::1");
  int ok = 0;
  for (int i = 0; i < 50; i++) ok += gw_iplimit_open(t, SA(a), 1000) == GW_IP_OK;
  assert_int_equal(ok, 10); /* the burst */
  /* 100 ms later one more token */
  assert_int_equal(gw_iplimit_open(t, SA(a), 1100), GW_IP_OK);
  assert_int_equal(gw_iplimit_open(t, SA(a), 1100), GW_IP_TOO_FAST);
  /* a steady 10/s over 10 s gets through: one every 100 ms */
  ok = 0;
  for (uint64_t ms = 1200; ms < 11200; ms += 50) ok += gw_iplimit_open(t, SA(a), ms) == GW_IP_OK;
  assert_int_equal(ok, 100);
  gw_iplimit_free(t);
}

static void test_v4_and_mapped_v6_are_one_client(void **state) {
  (void)state;
  gw_iplimit *t = gw_iplimit_new();
  gw_iplimit_set(t, 1, 0);
  struct sockaddr_storage a = v4("192.0.2.7", 1), m = v6("::ffff:192.0.2.7");
  assert_int_equal(gw_iplimit_open(t, SA(a), 0), GW_IP_OK);
  assert_int_equal(gw_iplimit_open(t, SA(m), 0), GW_IP_TOO_MANY);
  gw_iplimit_free(t);
}

/* Many addresses, each gone after a second: the table sweeps them rather
 * than growing without bound. */
static void test_stale_entries_are_swept(void **state) {
  (void)state;
  gw_iplimit *t = gw_iplimit_new();
  gw_iplimit_set(t, 0, 5);
  char ip[32];
  size_t peak = 0;
  for (int i = 0; i < 100000; i++) {
    snprintf(ip, sizeof ip, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    struct sockaddr_storage a = v4(ip, 1);
    uint64_t now = (uint64_t)i; /* 1,000 new addresses per second */
    assert_int_equal(gw_iplimit_open(t, SA(a), now), GW_IP_OK);
    gw_iplimit_close(t, SA(a), now);
    if (gw_iplimit_entries(t) > peak) peak = gw_iplimit_entries(t);
  }
  /* about one second's worth (1,000) live at once, never 100,000 */
  assert_true(peak < 4096);
  gw_iplimit_free(t);
}

static void test_limits_off_after_counting(void **state) {
  (void)state;
  gw_iplimit *t = gw_iplimit_new();
  gw_iplimit_set(t, 1, 0);
  struct sockaddr_storage a = v4("10.0.0.9", 1);
  assert_int_equal(gw_iplimit_open(t, SA(a), 0), GW_IP_OK);
  gw_iplimit_set(t, 0, 0); /* a reload turned them off */
  assert_int_equal(gw_iplimit_open(t, SA(a), 0), GW_IP_OK);
  gw_iplimit_close(t, SA(a), 0);
  gw_iplimit_close(t, SA(a), 0);
  gw_iplimit_close(t, SA(a), 0); /* more closes than opens: harmless */
  assert_int_equal(gw_iplimit_entries(t), 0);
  gw_iplimit_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_limits_hold_nothing),
      cmocka_unit_test(test_sessions_per_ip),
      cmocka_unit_test(test_new_sessions_per_second),
      cmocka_unit_test(test_v4_and_mapped_v6_are_one_client),
      cmocka_unit_test(test_stale_entries_are_swept),
      cmocka_unit_test(test_limits_off_after_counting),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
