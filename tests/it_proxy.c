/* it_proxy.c: the PROXY protocol through real processes, against Debian's
 * HAProxy on both sides:
 *   client (127.0.0.2) -> HAProxy send-proxy-v2 -> gangway proxy_protocol
 *     -> echo: gangway names the client 127.0.0.2, not HAProxy;
 *   client (127.0.0.3) -> gangway upstream_proxy_protocol v1/v2 -> HAProxy
 *     accept-proxy, send-proxy to a recorder: HAProxy understood gangway's
 *     header, so the recorder's PROXY line names 127.0.0.3;
 * and malformed or missing headers, and peers outside proxy_protocol_from,
 * closed while a bystander's session goes on. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

/* ---- HAProxy in a temp dir ---- */

typedef struct haproxy {
  pid_t pid;
  char dir[128];
} haproxy;

static bool have_haproxy(void) { return access("/usr/sbin/haproxy", X_OK) == 0; }

/* Starts HAProxy with one frontend on fport and one server at sport, in TCP
 * mode; bind_opts / server_opts say who speaks PROXY. */
static void haproxy_start(haproxy *h, int fport, const char *bind_opts, int sport,
                          const char *server_opts) {
  it_mkdtemp(h->dir, sizeof h->dir);
  it_write(h->dir, "haproxy.cfg",
           "global\n  maxconn 200\n"
           "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n"
           "  timeout server 10s\n"
           "frontend f\n  bind 127.0.0.1:%d %s\n  default_backend b\n"
           "backend b\n  server s 127.0.0.1:%d %s\n",
           fport, bind_opts, sport, server_opts);
  char cfg[256];
  snprintf(cfg, sizeof cfg, "%s/haproxy.cfg", h->dir);
  h->pid = fork();
  if (h->pid == 0) {
    char log[256];
    snprintf(log, sizeof log, "%s/haproxy.log", h->dir);
    FILE *f = freopen(log, "w", stderr);
    (void)f;
    execl("/usr/sbin/haproxy", "haproxy", "-db", "-f", cfg, (char *)NULL);
    _exit(127);
  }
  /* ready once it accepts */
  for (int i = 0; i < 100; i++) {
    int fd = it_connect_addr("127.0.0.1", fport);
    if (fd >= 0) {
      close(fd);
      return;
    }
    usleep(50 * 1000);
  }
  fail_msg("haproxy did not start on port %d", fport);
}

static void haproxy_stop(haproxy *h) {
  kill(h->pid, SIGTERM);
  waitpid(h->pid, NULL, 0);
  it_rmdir(h->dir);
}

/* ---- a recorder: keeps the first bytes of each connection, echoes the
 * rest after its first line ---- */

typedef struct recorder {
  int lfd, port;
  pthread_t th;
  char first[512];   /* the first bytes of the last connection */
  volatile int conns;
} recorder;

static void *recorder_main(void *arg) {
  recorder *r = arg;
  for (;;) {
    int c = accept(r->lfd, NULL, NULL);
    if (c < 0) return NULL;
    char buf[512];
    size_t n = it_recv_exact(c, buf, sizeof buf - 1, 300);
    buf[n] = '\0';
    memcpy(r->first, buf, n + 1);
    r->conns++;
    char *eol = strstr(buf, "\r\n");
    if (eol) it_send_all(c, eol + 2, n - (size_t)(eol + 2 - buf));
    close(c);
  }
}

static void recorder_start(recorder *r) {
  memset(r, 0, sizeof *r);
  r->port = it_free_port();
  r->lfd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(r->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->port)};
  a.sin_addr.s_addr = htonl(0x7f000001);
  assert_int_equal(bind(r->lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(r->lfd, 16), 0);
  pthread_create(&r->th, NULL, recorder_main, r);
}

static void recorder_stop(recorder *r) {
  shutdown(r->lfd, SHUT_RDWR);
  close(r->lfd);
  pthread_join(r->th, NULL);
}

#define GW_CONFIG                                                                      \
  "return {\n"                                                                         \
  "  listeners = { { name = \"p\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\"," \
  " framing = \"u16be\", %s } },\n"                                                    \
  "  log = { session_lines_per_s = 0 },\n"                                             \
  "  control = \"\",\n"                                                                \
  "}\n"

/* One u16be frame through fd and back. */
static void round_trip(int fd, const char *text) {
  uint8_t f[64];
  size_t n = strlen(text);
  f[0] = 0;
  f[1] = (uint8_t)n;
  memcpy(f + 2, text, n);
  assert_int_equal(it_send_all(fd, f, n + 2), 0);
  uint8_t back[64];
  assert_int_equal(it_recv_exact(fd, back, n + 2, 3000), n + 2);
  assert_memory_equal(back, f, n + 2);
}

static void test_haproxy_in_front(void **state) {
  (void)state;
  if (!have_haproxy()) skip();
  int up_port;
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  int gport = it_free_port();
  it_gangway_start(&g, gport, GW_CONFIG, gport, up_port,
                   "proxy_protocol = true, proxy_protocol_from = { \"127.0.0.1\" }");
  haproxy h;
  int hport = it_free_port();
  haproxy_start(&h, hport, "", gport, "send-proxy-v2");

  int fd = it_connect_from("127.0.0.2", "127.0.0.1", hport);
  assert_true(fd >= 0);
  round_trip(fd, "through haproxy");
  close(fd);
  /* gangway saw the player's address, not HAProxy's */
  assert_true(it_log_wait(&g, "open listener=p client=127.0.0.2:", 3000));
  /* A client that skips HAProxy: 127.0.0.4 is not in proxy_protocol_from */
  fd = it_connect_from("127.0.0.4", "127.0.0.1", gport);
  assert_int_not_equal(it_wait_eof(fd, 3000, NULL), 0);
  close(fd);
  assert_true(it_log_wait(&g, "refused: not in proxy_protocol_from", 3000));
  haproxy_stop(&h);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

static void upstream_header(const char *version, const char *want_prefix) {
  recorder rec;
  recorder_start(&rec);
  haproxy h;
  int hport = it_free_port();
  haproxy_start(&h, hport, "accept-proxy", rec.port, "send-proxy");
  it_gangway g;
  int gport = it_free_port();
  char opts[64];
  snprintf(opts, sizeof opts, "upstream_proxy_protocol = \"%s\"", version);
  it_gangway_start(&g, gport, GW_CONFIG, gport, hport, opts);
  int fd = it_connect_from("127.0.0.3", "127.0.0.1", gport);
  assert_true(fd >= 0);
  uint8_t f[] = {0, 3, 'a', 'b', 'c'};
  assert_int_equal(it_send_all(fd, f, sizeof f), 0);
  uint8_t back[8];
  assert_int_equal(it_recv_exact(fd, back, sizeof f, 3000), sizeof f);
  assert_memory_equal(back, f, sizeof f);
  close(fd);
  /* HAProxy read gangway's header and passed the client on to the recorder */
  assert_non_null(strstr(rec.first, want_prefix));
  haproxy_stop(&h);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  recorder_stop(&rec);
}

static void test_haproxy_behind_v1(void **state) {
  (void)state;
  if (!have_haproxy()) skip();
  upstream_header("v1", "PROXY TCP4 127.0.0.3 127.0.0.1 ");
}

static void test_haproxy_behind_v2(void **state) {
  (void)state;
  if (!have_haproxy()) skip();
  upstream_header("v2", "PROXY TCP4 127.0.0.3 127.0.0.1 ");
}

/* Bad headers close their session only; a bystander's goes on. */
static void test_malformed_headers(void **state) {
  (void)state;
  int up_port;
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  int gport = it_free_port();
  it_gangway_start(&g, gport, GW_CONFIG, gport, up_port, "proxy_protocol = true");
  int by = it_connect(gport);
  const char good[] = "PROXY TCP4 198.51.100.1 127.0.0.1 5000 1973\r\n";
  assert_int_equal(it_send_all(by, good, strlen(good)), 0);
  round_trip(by, "bystander");
  const char *const bad[] = {
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
      "PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
      "PROXY TCP4 1.2.3.4\r\n",
      "\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int fd = it_connect(gport);
    size_t n = i == 3 ? 16 : strlen(bad[i]);
    it_send_all(fd, bad[i], n);
    assert_int_not_equal(it_wait_eof(fd, 3000, NULL), 0);
    close(fd);
    round_trip(by, "still here");
  }
  assert_int_equal(it_log_count(&g, "bad PROXY header", NULL), 4);
  assert_int_equal(it_server_accepted(up), 1); /* none of them reached it */
  close(by);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_haproxy_in_front),
      cmocka_unit_test(test_haproxy_behind_v1),
      cmocka_unit_test(test_haproxy_behind_v2),
      cmocka_unit_test(test_malformed_headers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
