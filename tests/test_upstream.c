/* test_upstream.c: the choice of a server (src/upstream.c) without a loop:
 * round robin (weighted, smooth), least sessions, hash of the client
 * address (consistent when the set of servers changes), backups, failover
 * order and budget, session:route's lookup, rise and fall, and the state a
 * reload carries over. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"
#include "metrics.h"
#include "upstream.h"

#define NS 4

typedef struct {
  gw_upstream_server_config sv[NS];
  gw_upstream_config cfg;
} pool_cfg;

/* n servers 10.0.0.1:1000.. named s1.., weights and backups as given. */
static void make_cfg(pool_cfg *p, size_t n, gw_balance b, const uint32_t *weights,
                     const bool *backups, bool health) {
  memset(p, 0, sizeof *p);
  for (size_t i = 0; i < n; i++) {
    gw_upstream_server_config *s = &p->sv[i];
    snprintf(s->name, sizeof s->name, "s%zu", i + 1);
    snprintf(s->addr, sizeof s->addr, "10.0.0.%zu:%zu", i + 1, 1000 + i);
    char err[128];
    assert_int_equal(gw_parse_host_port(s->addr, s->host, sizeof s->host, &s->port, &s->sockaddr,
                                        err, sizeof err), 0);
    s->weight = weights ? weights[i] : 1;
    s->backup = backups ? backups[i] : false;
  }
  p->cfg = (gw_upstream_config){.servers = p->sv, .nservers = n, .balance = b, .health = health,
                                .health_interval_ms = 1000, .health_timeout_ms = 500,
                                .health_rise = 2, .health_fall = 1, .resolve_ms = 1000};
}

static struct sockaddr_in client(const char *ip) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(40000)};
  inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}

/* The server a new session from ip gets (the try is let go at once). */
static int pick(gw_upstream *u, const char *ip) {
  struct sockaddr_in a = client(ip);
  gw_upstream_try *t = gw_upstream_try_new(u, (struct sockaddr *)&a);
  assert_non_null(t);
  int idx = gw_upstream_server_name(gw_upstream_current(t))[1] - '1';
  gw_upstream_try_free(t);
  return idx;
}

static void down(gw_upstream *u, size_t i) { /* fall = 1 */
  gw_upstream_server_result(gw_upstream_server_at(u, i), false, UV_ECONNREFUSED, true);
  assert_false(gw_upstream_server_up(gw_upstream_server_at(u, i)));
}

static void test_round_robin_weighted(void **state) {
  (void)state;
  pool_cfg p;
  const uint32_t w[] = {1, 1, 2};
  make_cfg(&p, 3, GW_BALANCE_ROUND_ROBIN, w, NULL, false);
  gw_upstream *u = gw_upstream_new(NULL, "game", &p.cfg, NULL, NULL);
  int count[3] = {0};
  for (int i = 0; i < 400; i++) {
    int k = pick(u, "127.0.0.1");
    count[k]++;
    if (i % 4 == 3) { /* smooth: every cycle of the total weight is exact */
      assert_int_equal(count[0], (i + 1) / 4);
      assert_int_equal(count[2], (i + 1) / 2);
    }
  }
  assert_int_equal(count[0], 100);
  assert_int_equal(count[1], 100);
  assert_int_equal(count[2], 200);
  gw_upstream_retire(u);
}

static void test_round_robin_skips_down_and_backups(void **state) {
  (void)state;
  pool_cfg p;
  const bool backup[] = {false, false, true};
  make_cfg(&p, 3, GW_BALANCE_ROUND_ROBIN, NULL, backup, true);
  gw_upstream *u = gw_upstream_new(NULL, "game", &p.cfg, NULL, NULL);
  int count[3] = {0};
  for (int i = 0; i < 10; i++) count[pick(u, "127.0.0.1")]++;
  assert_int_equal(count[2], 0); /* the backup rests while a primary is up */
  down(u, 0);
  for (int i = 0; i < 10; i++) assert_int_equal(pick(u, "127.0.0.1"), 1);
  down(u, 1);
  for (int i = 0; i < 10; i++) assert_int_equal(pick(u, "127.0.0.1"), 2);
  /* rise = 2: one good check is not enough */
  gw_upstream_server_result(gw_upstream_server_at(u, 0), true, 0, true);
  assert_int_equal(pick(u, "127.0.0.1"), 2);
  gw_upstream_server_result(gw_upstream_server_at(u, 0), true, 0, true);
  assert_true(gw_upstream_server_up(gw_upstream_server_at(u, 0)));
  assert_int_equal(pick(u, "127.0.0.1"), 0);
  /* every server down: still a choice (the primaries first) */
  down(u, 0);
  down(u, 2);
  int k = pick(u, "127.0.0.1");
  assert_true(k == 0 || k == 1);
  gw_upstream_retire(u);
}

static void test_least_sessions(void **state) {
  (void)state;
  pool_cfg p;
  const uint32_t w[] = {1, 1, 2};
  make_cfg(&p, 3, GW_BALANCE_LEAST_SESSIONS, w, NULL, false);
  gw_upstream *u = gw_upstream_new(NULL, "game", &p.cfg, NULL, NULL);
  struct sockaddr_in a = client("127.0.0.1");
  gw_upstream_try *t[8];
  for (int i = 0; i < 8; i++) t[i] = gw_upstream_try_new(u, (struct sockaddr *)&a);
  /* per weight: 2, 2 and 4 */
  assert_int_equal(gw_upstream_server_sessions(gw_upstream_server_at(u, 0)), 2);
  assert_int_equal(gw_upstream_server_sessions(gw_upstream_server_at(u, 1)), 2);
  assert_int_equal(gw_upstream_server_sessions(gw_upstream_server_at(u, 2)), 4);
  /* sessions on s1 end: the next two go there */
  gw_upstream_server *s1 = gw_upstream_server_at(u, 0);
  for (int i = 0; i < 8; i++)
    if (gw_upstream_current(t[i]) == s1) {
      gw_upstream_try_free(t[i]);
      t[i] = NULL;
    }
  assert_int_equal(gw_upstream_server_sessions(s1), 0);
  /* a connected session counts as one too */
  gw_upstream_try *c = gw_upstream_try_new(u, (struct sockaddr *)&a);
  assert_ptr_equal(gw_upstream_current(c), s1);
  gw_upstream_server *held = gw_upstream_connected(c);
  assert_int_equal(gw_upstream_server_sessions(s1), 1);
  assert_int_equal(pick(u, "127.0.0.1"), 0);
  gw_upstream_release(held);
  for (int i = 0; i < 8; i++) gw_upstream_try_free(t[i]);
  for (int i = 0; i < 3; i++)
    assert_int_equal(gw_upstream_server_sessions(gw_upstream_server_at(u, i)), 0);
  gw_upstream_retire(u);
}

static void test_hash_sticky_and_consistent(void **state) {
  (void)state;
  pool_cfg p;
  make_cfg(&p, 4, GW_BALANCE_HASH, NULL, NULL, true);
  gw_upstream *u = gw_upstream_new(NULL, "game", &p.cfg, NULL, NULL);
  int before[200], count[4] = {0};
  char ip[32];
  for (int i = 0; i < 200; i++) {
    snprintf(ip, sizeof ip, "10.1.%d.%d", i / 250, i % 250 + 1);
    before[i] = pick(u, ip);
    count[before[i]]++;
    assert_int_equal(pick(u, ip), before[i]); /* the same client, the same server */
  }
  for (int k = 0; k < 4; k++) assert_true(count[k] > 20); /* spread */
  down(u, 2);
  int moved = 0;
  for (int i = 0; i < 200; i++) {
    snprintf(ip, sizeof ip, "10.1.%d.%d", i / 250, i % 250 + 1);
    int now = pick(u, ip);
    assert_int_not_equal(now, 2);
    if (before[i] != 2) assert_int_equal(now, before[i]); /* only s3's clients move */
    moved += now != before[i];
  }
  assert_int_equal(moved, count[2]);
  /* An IPv4 client seen as ::ffff:a.b.c.d (a PROXY header from a
   * dual-stack load balancer) is the same client: the same server. IPv6
   * clients spread too. */
  int same = 0, v6count[4] = {0};
  for (int i = 0; i < 200; i++) {
    snprintf(ip, sizeof ip, "::ffff:10.1.%d.%d", i / 250, i % 250 + 1);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(40000)};
    assert_int_equal(inet_pton(AF_INET6, ip, &a6.sin6_addr), 1);
    gw_upstream_try *t = gw_upstream_try_new(u, (struct sockaddr *)&a6);
    same += gw_upstream_server_name(gw_upstream_current(t))[1] - '1' == pick(u, ip + 7);
    gw_upstream_try_free(t);
    snprintf(ip, sizeof ip, "2001:db8:%x::%x", i, i * 31 + 1);
    assert_int_equal(inet_pton(AF_INET6, ip, &a6.sin6_addr), 1);
    t = gw_upstream_try_new(u, (struct sockaddr *)&a6);
    v6count[gw_upstream_server_name(gw_upstream_current(t))[1] - '1']++;
    gw_upstream_try_free(t);
  }
  assert_int_equal(same, 200);
  assert_int_equal(v6count[2], 0); /* s3 is down */
  for (int k = 0; k < 4; k++) assert_true(k == 2 || v6count[k] > 20);
  gw_upstream_retire(u);
}

static void test_failover_order_and_budget(void **state) {
  (void)state;
  pool_cfg p;
  const bool backup[] = {false, false, true};
  make_cfg(&p, 3, GW_BALANCE_ROUND_ROBIN, NULL, backup, true);
  p.cfg.health_fall = 3;
  gw_metrics *m = gw_metrics_new();
  gw_upstream *u = gw_upstream_new(NULL, "game", &p.cfg, m, NULL);
  struct sockaddr_in a = client("127.0.0.1");
  gw_upstream_try *t = gw_upstream_try_new(u, (struct sockaddr *)&a);
  gw_upstream_try_start(t, 1000, 800);
  assert_false(gw_upstream_try_started(t) == false);
  gw_upstream_server *first = gw_upstream_current(t);
  assert_false(first == gw_upstream_server_at(u, 2));
  assert_int_equal(gw_upstream_attempt_ms(t, 1000), 400); /* half: others remain */
  struct sockaddr_storage ss;
  assert_int_equal(gw_upstream_addr(t, &ss), 0);
  gw_upstream_server *second = gw_upstream_failover(t, UV_ECONNREFUSED);
  assert_non_null(second);
  assert_false(second == first);
  assert_false(second == gw_upstream_server_at(u, 2)); /* the backup comes last */
  assert_ptr_equal(gw_upstream_failover(t, UV_ETIMEDOUT), gw_upstream_server_at(u, 2));
  assert_int_equal(gw_upstream_attempt_ms(t, 1400), 400); /* the last: all that is left */
  assert_int_equal(gw_upstream_attempt_ms(t, 1800), 0);
  assert_null(gw_upstream_failover(t, UV_ECONNREFUSED)); /* each once */
  assert_null(gw_upstream_current(t));
  gw_upstream_try_free(t);
  /* one failure each: counted, not yet down (fall = 3) */
  for (int i = 0; i < 3; i++) {
    gw_upstream_server *s = gw_upstream_server_at(u, i);
    uint64_t *f = gw_metric_slot(gw_metrics_counter(m, "gangway_upstream_connect_failures_total", "",
                                                    GW_LABELS("listener", "server")),
                                 GW_LABELS("game", gw_upstream_server_name(s)));
    assert_int_equal(*f, 1);
    assert_true(gw_upstream_server_up(s));
    assert_int_equal(gw_upstream_server_sessions(s), 0);
  }
  gw_upstream_retire(u);
  gw_metrics_free(m);
}

static void test_route(void **state) {
  (void)state;
  pool_cfg p;
  make_cfg(&p, 3, GW_BALANCE_ROUND_ROBIN, NULL, NULL, true);
  gw_upstream *u = gw_upstream_new(NULL, "game", &p.cfg, NULL, NULL);
  struct sockaddr_in a = client("127.0.0.1");
  gw_upstream_try *t = gw_upstream_try_new(u, (struct sockaddr *)&a);
  char err[256];
  assert_int_equal(gw_upstream_route(t, "s3", err, sizeof err), 0);
  assert_string_equal(gw_upstream_server_name(gw_upstream_current(t)), "s3");
  assert_int_equal(gw_upstream_route(t, "10.0.0.2:1001", err, sizeof err), 0);
  assert_string_equal(gw_upstream_server_name(gw_upstream_current(t)), "s2");
  assert_int_equal(gw_upstream_server_sessions(gw_upstream_server_at(u, 1)), 1);
  assert_int_equal(gw_upstream_route(t, "eu-9", err, sizeof err), -ENOENT);
  assert_string_equal(err, "no server \"eu-9\" in listener game's upstream (\"s1\", \"s2\", \"s3\")");
  /* a route to a down server: the connect starts elsewhere */
  down(u, 1);
  gw_upstream_try_start(t, 0, 1000);
  assert_false(gw_upstream_current(t) == gw_upstream_server_at(u, 1));
  assert_int_equal(gw_upstream_route(t, "s1", err, sizeof err), -EALREADY);
  gw_upstream_try_free(t);
  gw_upstream_retire(u);
}

/* A reload's pool: the same servers keep their state, new ones start up. */
static void test_reload_carries_state(void **state) {
  (void)state;
  pool_cfg p;
  make_cfg(&p, 3, GW_BALANCE_ROUND_ROBIN, NULL, NULL, true);
  gw_metrics *m = gw_metrics_new();
  gw_upstream *old = gw_upstream_new(NULL, "game", &p.cfg, m, NULL);
  down(old, 1);
  struct sockaddr_in a = client("127.0.0.1");
  gw_upstream_try *t = gw_upstream_try_new(old, (struct sockaddr *)&a);
  gw_upstream_server *held = gw_upstream_connected(t);
  snprintf(p.sv[2].addr, sizeof p.sv[2].addr, "10.0.0.9:1002"); /* s3 moved */
  gw_upstream *u = gw_upstream_new(NULL, "game", &p.cfg, m, old);
  gw_upstream_retire(old); /* lives on: a session holds one of its servers */
  assert_true(gw_upstream_server_up(gw_upstream_server_at(u, 0)));
  assert_false(gw_upstream_server_up(gw_upstream_server_at(u, 1)));
  assert_true(gw_upstream_server_up(gw_upstream_server_at(u, 2)));
  /* the session counts on its server in both pools' eyes (one series) */
  size_t k = (size_t)(gw_upstream_server_name(held)[1] - '1');
  assert_int_equal(gw_upstream_server_sessions(gw_upstream_server_at(u, k)), 1);
  gw_upstream_release(held); /* the old pool goes now */
  assert_int_equal(gw_upstream_server_sessions(gw_upstream_server_at(u, k)), 0);
  gw_upstream_retire(u);
  gw_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_round_robin_weighted),
    cmocka_unit_test(test_round_robin_skips_down_and_backups),
    cmocka_unit_test(test_least_sessions),
    cmocka_unit_test(test_hash_sticky_and_consistent),
    cmocka_unit_test(test_failover_order_and_budget),
    cmocka_unit_test(test_route),
    cmocka_unit_test(test_reload_carries_state),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
