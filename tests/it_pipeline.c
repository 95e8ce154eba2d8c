/* it_pipeline.c: protocols with phases and codecs through a real gangway
 * (issue 11), the cases of spec/pipeline_spec.lua again over loopback
 * sockets, byte for byte:
 *   - an unframed 4-byte hello and a one-byte answer before u16be frames
 *     (session:expect_raw), whole and cut into 1-byte writes, and the same
 *     protocol without the script, which hangs until the frame timeout;
 *   - STARTTLS: a frame switches both sides to raw (session:set_framing);
 *   - MQTT: a handler on the packet type before the varint length;
 *   - zlib on the client's wire with a handler that rewrites each frame;
 *   - a Lua codec that fails closes its session only.
 * Upstreams are servers in threads of this test that record every byte
 * they read, so each test checks what both ends got. A bystander session
 * beside each case keeps its bytes intact. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "frame.h"
#include "itest.h"

static void nap(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* ---- recording upstreams ------------------------------------------------ */

#define HELLO "\xff\xffHI" /* the hello: as u16be, a frame of 65537 bytes */
#define HELLO_LEN 4
#define GREETING "S\x00\x07WELCOME" /* the one-byte answer, then a frame */
#define GREETING_LEN 10

typedef enum {
  REC_ECHO,  /* records and writes back what it reads */
  REC_HELLO, /* the phased protocol: hello, 'S', then u16be frames echoed */
} rec_kind;

#define REC_CONNS 32

typedef struct rec_server rec_server;
typedef struct {
  rec_server *srv;
  int fd;
  pthread_t thread;
  uint8_t *buf; /* every byte read, under srv->mu */
  size_t len, cap;
} rec_conn;

struct rec_server {
  rec_kind kind;
  int lfd, port;
  pthread_t thread;
  atomic_bool stop;
  pthread_mutex_t mu;
  rec_conn conn[REC_CONNS];
  int n;
};

static void rec_append(rec_conn *c, const uint8_t *p, size_t n) {
  pthread_mutex_lock(&c->srv->mu);
  if (c->len + n > c->cap) {
    size_t cap = c->cap ? c->cap : 4096;
    while (cap < c->len + n) cap *= 2;
    uint8_t *nb = realloc(c->buf, cap);
    if (nb) c->buf = nb, c->cap = cap;
  }
  if (c->len + n <= c->cap) memcpy(c->buf + c->len, p, n), c->len += n;
  pthread_mutex_unlock(&c->srv->mu);
}

/* Reads exactly n bytes (recorded); false at EOF, error or stop. */
static bool rec_read(rec_conn *c, uint8_t *p, size_t n) {
  size_t got = 0;
  while (got < n && !c->srv->stop) {
    ssize_t k = recv(c->fd, p + got, n - got, 0);
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
    if (k <= 0) return false;
    rec_append(c, p + got, (size_t)k);
    got += (size_t)k;
  }
  return got == n;
}

static void *rec_conn_main(void *arg) {
  rec_conn *c = arg;
  static __thread uint8_t buf[65536 + 2];
  if (c->srv->kind == REC_ECHO) {
    while (!c->srv->stop) {
      ssize_t k = recv(c->fd, buf, sizeof buf, 0);
      if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
      if (k <= 0) break;
      rec_append(c, buf, (size_t)k);
      if (it_send_all(c->fd, buf, (size_t)k) < 0) break;
    }
  } else if (rec_read(c, buf, HELLO_LEN) && memcmp(buf, HELLO, HELLO_LEN) == 0 &&
             it_send_all(c->fd, GREETING, GREETING_LEN) == 0) {
    /* After the hello, frames: each read whole, then echoed whole. */
    while (rec_read(c, buf, 2)) {
      size_t len = (size_t)buf[0] << 8 | buf[1];
      if (!rec_read(c, buf + 2, len) || it_send_all(c->fd, buf, len + 2) < 0) break;
    }
  }
  shutdown(c->fd, SHUT_WR); /* FIN answered with FIN */
  return NULL;
}

static void *rec_accept_main(void *arg) {
  rec_server *s = arg;
  while (!s->stop) {
    struct pollfd p = {.fd = s->lfd, .events = POLLIN};
    if (poll(&p, 1, 50) <= 0) continue;
    int fd = accept(s->lfd, NULL, NULL);
    if (fd < 0) continue;
    if (s->n == REC_CONNS) {
      close(fd);
      continue;
    }
    /* A receive timeout, so that each connection's thread sees stop. */
    struct timeval tv = {0, 100 * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    pthread_mutex_lock(&s->mu);
    rec_conn *c = &s->conn[s->n];
    c->srv = s;
    c->fd = fd;
    pthread_mutex_unlock(&s->mu);
    pthread_create(&c->thread, NULL, rec_conn_main, c);
    pthread_mutex_lock(&s->mu);
    s->n++;
    pthread_mutex_unlock(&s->mu);
  }
  return NULL;
}

static rec_server *rec_start(rec_kind kind) {
  rec_server *s = calloc(1, sizeof *s);
  s->kind = kind;
  pthread_mutex_init(&s->mu, NULL);
  s->port = it_free_port();
  s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(s->lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(s->lfd, 64) < 0)
    fail_msg("upstream cannot listen on %d: %s", s->port, strerror(errno));
  pthread_create(&s->thread, NULL, rec_accept_main, s);
  return s;
}

static void rec_stop(rec_server *s) {
  s->stop = true;
  pthread_join(s->thread, NULL);
  for (int i = 0; i < s->n; i++) {
    pthread_join(s->conn[i].thread, NULL);
    close(s->conn[i].fd);
    free(s->conn[i].buf);
  }
  close(s->lfd);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

/* The bytes of the connection whose record starts with prefix, once it has
 * want of them (or after timeout_ms with what it has; NULL if none starts
 * so). malloc'd; *len set. */
static uint8_t *rec_wait(rec_server *s, const void *prefix, size_t plen, size_t want,
                         int timeout_ms, size_t *len) {
  uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    uint8_t *out = NULL;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n; i++) {
      rec_conn *c = &s->conn[i];
      if (c->len < plen || memcmp(c->buf, prefix, plen) != 0) continue;
      bool done = c->len >= want;
      if (done || it_now_ms() >= deadline) {
        out = malloc(c->len + 1);
        memcpy(out, c->buf, c->len);
        *len = c->len;
      }
      break;
    }
    pthread_mutex_unlock(&s->mu);
    if (out) return out;
    if (it_now_ms() >= deadline) {
      *len = 0;
      return NULL;
    }
    nap(5);
  }
}

static size_t rec_total(rec_server *s) {
  size_t n = 0;
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->n; i++) n += s->conn[i].len;
  pthread_mutex_unlock(&s->mu);
  return n;
}

/* ---- helpers ------------------------------------------------------------ */

/* body as a u16be frame appended at out; returns the frame's length. */
static size_t u16f(uint8_t *out, const void *body, size_t len) {
  out[0] = (uint8_t)(len >> 8), out[1] = (uint8_t)len;
  memcpy(out + 2, body, len);
  return len + 2;
}

static size_t u16s(uint8_t *out, const char *text) { return u16f(out, text, strlen(text)); }

/* Reads exactly len bytes within timeout_ms and asserts they are want. */
static void expect_bytes(int fd, const void *want, size_t len, int timeout_ms) {
  uint8_t *got = malloc(len ? len : 1);
  size_t n = it_recv_exact(fd, got, len, timeout_ms);
  if (n != len || memcmp(got, want, len) != 0) {
    size_t bad = 0;
    while (bad < n && got[bad] == ((const uint8_t *)want)[bad]) bad++;
    free(got);
    fail_msg("expected %zu bytes, got %zu; first difference at byte %zu", len, n, bad);
  }
  free(got);
}

/* Asserts that nothing more arrives on fd within ms. */
static void expect_quiet(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r = poll(&p, 1, ms);
  if (r > 0) {
    uint8_t b[64];
    ssize_t k = recv(fd, b, sizeof b, MSG_DONTWAIT);
    if (k > 0) fail_msg("%zd unexpected bytes (first 0x%02x)", k, b[0]);
  }
}

/* Starts gangway on config (with scripts already written into g->dir). */
static void gw_start(it_gangway *g, int port, const char *config) {
  it_write(g->dir, "config.lua", "%s", config);
  it_gangway_run(g, port);
}

static const char timeouts_lua[] =
    "timeouts = { frame_ms = 1500, first_frame_ms = 10000, drain_ms = 1000 }";

/* Starts gangway with one listener, `name`, framed with framing, its
 * handlers in name.lua (script), relaying to up. Returns its port. */
static int gw_start_one(it_gangway *g, const char *name, const char *framing,
                        const char *script, rec_server *up) {
  it_gangway_prepare(g);
  int port = it_free_port();
  char file[96], cfg[1024];
  snprintf(file, sizeof file, "%s.lua", name);
  it_write(g->dir, file, "%s", script);
  snprintf(cfg, sizeof cfg,
           "return {\n"
           "  listeners = { { name = \"%s\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\",\n"
           "                  framing = \"%s\", scripts = { \"%s\" } } },\n"
           "  %s, control = \"\",\n"
           "}\n",
           name, port, up->port, framing, file, timeouts_lua);
  gw_start(g, port, cfg);
  return port;
}

/* What a test started, stopped by teardown even when the test failed. */
static struct {
  it_gangway g;
  rec_server *up[2];
  it_bystander *b;
} T;

static int teardown(void **state) {
  (void)state;
  if (T.b) {
    it_bystander_result res;
    it_bystander_stop(T.b, &res);
  }
  int code = T.g.pid ? it_gangway_stop(&T.g, SIGTERM, 5000) : 0;
  for (int i = 0; i < 2; i++)
    if (T.up[i]) rec_stop(T.up[i]);
  memset(&T, 0, sizeof T);
  assert_int_equal(code, 0);
  return 0;
}

/* A bystander session on port: framed messages of preset with opcode. */
static void bystander_on(int port, const char *preset, uint32_t opcode) {
  gw_framing f;
  gw_framing_preset(preset, &f);
  T.b = it_bystander_start("127.0.0.1", port, &f, opcode);
}

static void bystander_done(const char *name) {
  it_bystander_result res;
  it_bystander_stop(T.b, &res);
  T.b = NULL;
  /* a generous bound on a shared 2-core machine: the point is "intact" */
  it_bystander_report(name, "-", -1, &res, 10000);
}

/* ---- 1: an unframed hello and a one-byte answer ------------------------- */

static const char hello_lua[] =
    "local gw = require \"gangway\"\n"
    "gw.on_connect(function(session)\n"
    "  session:expect_raw(\"client\", 4) -- the hello has no length field\n"
    "  session:expect_raw(\"server\", 1) -- nor has the answer\n"
    "end)\n"
    "gw.on(\"client\", \"*\", function(pkt) pkt:set_body(pkt:body():upper()) end)\n";

/* Sends the hello and frames of texts through fd, whole or one byte a write,
 * and checks what comes back and what the upstream got. */
static void hello_session(int fd, rec_server *up, const char *const *texts, int n,
                          bool bytewise) {
  uint8_t out[512], want_client[512], want_up[512], upper[128];
  size_t len = 0, wc = 0, wu = 0;
  memcpy(out, HELLO, HELLO_LEN), len = HELLO_LEN;
  memcpy(want_up, HELLO, HELLO_LEN), wu = HELLO_LEN;
  memcpy(want_client, GREETING, GREETING_LEN), wc = GREETING_LEN;
  for (int i = 0; i < n; i++) {
    size_t tl = strlen(texts[i]);
    for (size_t k = 0; k < tl; k++)
      upper[k] = (uint8_t)(texts[i][k] >= 'a' && texts[i][k] <= 'z' ? texts[i][k] - 32 : texts[i][k]);
    len += u16s(out + len, texts[i]);
    wu += u16f(want_up + wu, upper, tl);
    wc += u16f(want_client + wc, upper, tl);
  }
  if (bytewise) {
    for (size_t i = 0; i < len; i++) {
      assert_int_equal(it_send_all(fd, out + i, 1), 0);
      nap(2); /* each byte its own segment (TCP_NODELAY) */
    }
  } else {
    assert_int_equal(it_send_all(fd, out, len), 0);
  }
  expect_bytes(fd, want_client, wc, 5000);
  size_t got;
  uint8_t *rec = rec_wait(up, want_up, HELLO_LEN + 2 + strlen(texts[0]), wu, 5000, &got);
  assert_non_null(rec);
  assert_int_equal(got, wu);
  assert_memory_equal(rec, want_up, wu);
  free(rec);
}

/* One more frame on an established hello session: upper-cased both ways. */
static void hello_exchange(int fd, const char *text) {
  uint8_t fr[256], want[256], upper[128];
  size_t tl = strlen(text);
  for (size_t k = 0; k < tl; k++)
    upper[k] = (uint8_t)(text[k] >= 'a' && text[k] <= 'z' ? text[k] - 32 : text[k]);
  size_t n = u16s(fr, text), wn = u16f(want, upper, tl);
  assert_int_equal(it_send_all(fd, fr, n), 0);
  expect_bytes(fd, want, wn, 5000);
}

static void test_unframed_hello(void **state) {
  (void)state;
  rec_server *up = T.up[0] = rec_start(REC_HELLO), *up_plain = T.up[1] = rec_start(REC_HELLO);
  it_gangway *g = &T.g;
  it_gangway_prepare(g);
  it_write(g->dir, "hello.lua", "%s", hello_lua);
  int port = it_free_port(), plain = it_free_port();
  char cfg[1024];
  snprintf(cfg, sizeof cfg,
           "return {\n"
           "  listeners = {\n"
           "    { name = \"phased\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\",\n"
           "      framing = \"u16be\", scripts = { \"hello.lua\" } },\n"
           "    { name = \"plain\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\",\n"
           "      framing = \"u16be\" },\n"
           "  },\n"
           "  %s, control = \"\",\n"
           "}\n",
           port, up->port, plain, up_plain->port, timeouts_lua);
  gw_start(g, port, cfg);

  /* The bystander: a session of the same protocol, open all along. */
  int by = it_connect(port);
  assert_true(by >= 0);
  const char *by_texts[] = {"bystander one"};
  hello_session(by, up, by_texts, 1, false);

  /* The hello and two frames in one write. */
  int fd = it_connect(port);
  assert_true(fd >= 0);
  const char *texts[] = {"one", "two, Mixed case"};
  hello_session(fd, up, texts, 2, false);
  hello_exchange(fd, "three");
  close(fd);

  /* The same, every byte its own write: the hello's 4 bytes and each frame
   * arrive in pieces. */
  fd = it_connect(port);
  assert_true(fd >= 0);
  const char *slow[] = {"slow one", "slow two", "slow three, 1 byte a write"};
  hello_session(fd, up, slow, 3, true);
  close(fd);
  hello_exchange(by, "bystander two");

  /* Without the script the hello reads as the start of a 65537-byte
   * frame: gangway waits for the rest, the server never gets the hello,
   * the client never gets its 'S', and the frame timeout ends it. */
  fd = it_connect(plain);
  assert_true(fd >= 0);
  assert_int_equal(it_send_all(fd, HELLO, HELLO_LEN), 0);
  size_t extra = 0;
  assert_int_not_equal(it_wait_eof(fd, 10000, &extra), 0);
  assert_int_equal(extra, 0);
  close(fd);
  assert_true(it_log_wait(&T.g, "frame timeout: 4 of 65537 bytes of a frame from the client side", 2000));
  assert_int_equal(rec_total(up_plain), 0);

  /* The phased session beside it is still served. */
  hello_exchange(by, "bystander three");
  close(by);
}

/* ---- 2: STARTTLS, then raw bytes both ways -------------------------------- */

static const char starttls_lua[] =
    "local gw = require \"gangway\"\n"
    "gw.on(\"client\", \"*\", function(pkt, session)\n"
    "  if pkt:body() == \"STARTTLS\" then\n"
    "    session:set_framing(\"client\", \"raw\")\n"
    "    session:set_framing(\"server\", \"raw\")\n"
    "  end\n"
    "end)\n";

static void test_starttls_to_raw(void **state) {
  (void)state;
  rec_server *up = T.up[0] = rec_start(REC_ECHO);
  int port = gw_start_one(&T.g, "starttls", "u16be", starttls_lua, up);
  bystander_on(port, "u16be", 0);

  int fd = it_connect(port);
  assert_true(fd >= 0);
  static uint8_t sent[4096], tls[1000], more[1000];
  size_t n = u16s(sent, "EHLO gangway");
  assert_int_equal(it_send_all(fd, sent, n), 0);
  expect_bytes(fd, sent, n, 5000);

  /* STARTTLS, and a TLS ClientHello right behind it in the same write: as
   * u16be its first bytes would announce a 5637-byte frame. */
  static const uint8_t hello_start[] = {0x16, 0x03, 0x01, 0x03, 0xe3, 0x01, 0x00,
                                        0x03, 0xdf, 0x03, 0x03};
  it_fill(tls, sizeof tls, 11);
  memcpy(tls, hello_start, sizeof hello_start);
  size_t st = n;
  n += u16s(sent + n, "STARTTLS");
  memcpy(sent + n, tls, sizeof tls), n += sizeof tls;
  assert_int_equal(it_send_all(fd, sent + st, n - st), 0);
  expect_bytes(fd, sent + st, n - st, 5000);

  /* More random bytes, cut at odd sizes: raw for good. */
  it_fill(more, sizeof more, 12);
  static const size_t cuts[] = {1, 3, 7, 13, 31, 97, 2, 211};
  for (size_t off = 0, i = 0; off < sizeof more; i++) {
    size_t k = cuts[i % 8] < sizeof more - off ? cuts[i % 8] : sizeof more - off;
    assert_int_equal(it_send_all(fd, more + off, k), 0);
    off += k;
    nap(1);
  }
  memcpy(sent + n, more, sizeof more), n += sizeof more;
  expect_bytes(fd, more, sizeof more, 5000);
  expect_quiet(fd, 100);

  /* The upstream got the same bytes, in order. */
  size_t got;
  uint8_t *rec = rec_wait(up, sent, 14, n, 5000, &got);
  assert_non_null(rec);
  assert_int_equal(got, n);
  assert_memory_equal(rec, sent, n);
  free(rec);
  close(fd);
  bystander_done("starttls");
}

/* ---- 3: MQTT, a handler on the packet type --------------------------------- */

static const char mqtt_lua[] =
    "local gw = require \"gangway\"\n"
    "gw.on(\"client\", 0x30, function(pkt) -- PUBLISH, QoS 0\n"
    "  if pkt:str(pkt.body_offset) == \"secret\" then return gw.DROP end\n"
    "end)\n";

/* A PUBLISH (QoS 0) of payload plen bytes (it_fill(seed)) to topic. */
static size_t publish(uint8_t *out, const char *topic, size_t plen, uint64_t seed) {
  size_t tl = strlen(topic), rem = 2 + tl + plen, n = 0;
  out[n++] = 0x30;
  do { /* the remaining length: a varint */
    out[n] = (uint8_t)(rem & 0x7f);
    rem >>= 7;
    if (rem) out[n] |= 0x80;
    n++;
  } while (rem);
  out[n++] = (uint8_t)(tl >> 8), out[n++] = (uint8_t)tl;
  memcpy(out + n, topic, tl), n += tl;
  it_fill(out + n, plen, seed);
  return n + plen;
}

static void test_mqtt_packet_type(void **state) {
  (void)state;
  rec_server *up = T.up[0] = rec_start(REC_ECHO);
  int port = gw_start_one(&T.g, "mqtt", "mqtt", mqtt_lua, up);
  /* The bystander publishes with the retain flag (0x31): not the
   * handler's type, so its frames pass without a handler. */
  bystander_on(port, "mqtt", 0x31);

  static const uint8_t connect[] = "\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01" "a";
  static const uint8_t ping[] = {0xc0, 0x00};
  uint8_t wire[2048], want[2048], pk[512];
  size_t wn = 0, en = 0, k;
#define KEEP(p, n) (memcpy(wire + wn, p, n), wn += (n), memcpy(want + en, p, n), en += (n))
#define DROP(p, n) (memcpy(wire + wn, p, n), wn += (n))
  KEEP(connect, sizeof connect - 1);
  KEEP(ping, 2);
  k = publish(pk, "news", 2, 1), KEEP(pk, k);
  k = publish(pk, "secret", 2, 2), DROP(pk, k);
  size_t big = wn;
  k = publish(pk, "news", 291, 3), KEEP(pk, k); /* 300 bytes: 0x30 a9 02 ... */
  assert_int_equal(k, 300);
  assert_memory_equal(pk, "\x30\xa9\x02", 3);
  k = publish(pk, "secret", 289, 4), DROP(pk, k);
  assert_int_equal(k, 300);
  k = publish(pk, "newsy", 0, 5), KEEP(pk, k); /* a neighbour's name */
  k = publish(pk, "secrets", 3, 6), KEEP(pk, k);
  k = publish(pk, "secret", 0, 7), DROP(pk, k);
  KEEP(ping, 2);
#undef KEEP
#undef DROP

  int fd = it_connect(port);
  assert_true(fd >= 0);
  /* Everything before the big PUBLISH in one write; the big one cut inside
   * its varint (after 0x30 a9) and in its topic and payload; the rest in
   * writes of odd sizes. */
  assert_int_equal(it_send_all(fd, wire, big), 0);
  static const size_t cuts[] = {2, 1, 3, 150, 144, 7, 61, 13};
  for (size_t off = big, i = 0; off < wn; i++) {
    size_t c = i < 8 ? cuts[i] : 5;
    if (c > wn - off) c = wn - off;
    assert_int_equal(it_send_all(fd, wire + off, c), 0);
    off += c;
    nap(3);
  }
  /* The upstream got exactly the packets kept, in order; the echo of them
   * comes back through the server side's framing unchanged. */
  size_t got;
  uint8_t *rec = rec_wait(up, connect, sizeof connect - 1, en, 5000, &got);
  assert_non_null(rec);
  assert_int_equal(got, en);
  assert_memory_equal(rec, want, en);
  free(rec);
  expect_bytes(fd, want, en, 5000);
  expect_quiet(fd, 100);
  close(fd);
  bystander_done("mqtt");
}

/* ---- 4: zlib on the client's wire, a rewriting handler ------------------- */

static const char zlib_lua[] =
    "local gw = require \"gangway\"\n"
    "gw.on_connect(function(session) session:set_codec(\"client\", \"zlib\") end)\n"
    "gw.on(\"client\", \"*\", function(pkt) pkt:set_body(pkt:body():rep(2)) end)\n";

#define ZFRAMES 100

typedef struct {
  int port;
  int id;
  uint8_t *clear;    /* what the client sends, in clear */
  size_t clear_len;
  uint8_t *want;     /* the rewritten frames: what the upstream must get */
  size_t want_len;
  char error[200];   /* "" when the client saw what it should */
} zclient;

/* Frame i of client id: a tag that names it, then (i * 37) % 200 bytes. */
static void zbuild(zclient *z) {
  z->clear = malloc(ZFRAMES * 256);
  z->want = malloc(ZFRAMES * 512);
  z->clear_len = z->want_len = 0;
  for (int i = 0; i < ZFRAMES; i++) {
    uint8_t body[256], twice[512];
    int tl = snprintf((char *)body, sizeof body, "client %d frame %03d:", z->id, i);
    size_t bl = (size_t)tl + (size_t)(i * 37) % 200;
    it_fill(body + tl, bl - (size_t)tl, (uint64_t)(z->id * 1000 + i));
    memcpy(twice, body, bl), memcpy(twice + bl, body, bl);
    z->clear_len += u16f(z->clear + z->clear_len, body, bl);
    z->want_len += u16f(z->want + z->want_len, twice, 2 * bl);
  }
}

/* One compressing client (a thread): no cmocka asserts here. */
static void *zclient_main(void *arg) {
  zclient *z = arg;
  int fd = it_connect(z->port);
  if (fd < 0) {
    snprintf(z->error, sizeof z->error, "client %d: cannot connect", z->id);
    return NULL;
  }
  z_stream d = {0}, in = {0};
  deflateInit(&d, Z_DEFAULT_COMPRESSION);
  inflateInit(&in);
  static const size_t cuts[] = {1, 3, 7, 13, 31, 97, 5, 211, 17};
  uint8_t zbuf[4096];
  /* The clear stream cut at odd sizes (across frame boundaries); each piece
   * deflated and flushed (Z_SYNC_FLUSH) so gangway can decode it at once;
   * every other compressed piece sent in two writes, its first byte alone. */
  for (size_t off = 0, i = 0; off < z->clear_len && !z->error[0]; i++) {
    size_t k = cuts[i % 9] < z->clear_len - off ? cuts[i % 9] : z->clear_len - off;
    d.next_in = z->clear + off;
    d.avail_in = (uInt)k;
    d.next_out = zbuf;
    d.avail_out = sizeof zbuf;
    if (deflate(&d, Z_SYNC_FLUSH) != Z_OK || d.avail_in) {
      snprintf(z->error, sizeof z->error, "client %d: deflate failed", z->id);
      break;
    }
    size_t zn = sizeof zbuf - d.avail_out, first = i % 2 ? 1 : zn;
    if (it_send_all(fd, zbuf, first) < 0 || (zn > first && it_send_all(fd, zbuf + first, zn - first) < 0))
      snprintf(z->error, sizeof z->error, "client %d: send: %s", z->id, strerror(errno));
    off += k;
    if (i % 16 == 0) nap(1);
  }
  /* What comes back is the echo of the rewritten frames, compressed toward
   * the client: inflate it as it arrives. */
  uint8_t *back = malloc(z->want_len + 1);
  size_t bn = 0;
  uint64_t deadline = it_now_ms() + 10000;
  while (!z->error[0] && bn < z->want_len && it_now_ms() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t k = recv(fd, zbuf, sizeof zbuf, 0);
    if (k <= 0) {
      snprintf(z->error, sizeof z->error, "client %d: connection ended after %zu of %zu bytes",
               z->id, bn, z->want_len);
      break;
    }
    in.next_in = zbuf;
    in.avail_in = (uInt)k;
    while (in.avail_in && !z->error[0]) {
      uint8_t obuf[8192];
      in.next_out = obuf;
      in.avail_out = sizeof obuf;
      int rc = inflate(&in, Z_SYNC_FLUSH);
      if (rc != Z_OK && rc != Z_BUF_ERROR) {
        snprintf(z->error, sizeof z->error, "client %d: inflate: %d", z->id, rc);
        break;
      }
      size_t on = sizeof obuf - in.avail_out;
      if (bn + on > z->want_len) {
        snprintf(z->error, sizeof z->error, "client %d: more than the %zu bytes expected", z->id,
                 z->want_len);
        break;
      }
      memcpy(back + bn, obuf, on), bn += on;
      if (rc == Z_BUF_ERROR && !on) break;
    }
  }
  if (!z->error[0] && (bn != z->want_len || memcmp(back, z->want, bn) != 0)) {
    size_t bad = 0;
    while (bad < bn && back[bad] == z->want[bad]) bad++;
    snprintf(z->error, sizeof z->error, "client %d: %zu of %zu bytes back, first wrong at %zu",
             z->id, bn, z->want_len, bad);
  }
  free(back);
  deflateEnd(&d);
  inflateEnd(&in);
  close(fd);
  return NULL;
}

static void test_zlib_rewrite(void **state) {
  (void)state;
  rec_server *up = T.up[0] = rec_start(REC_ECHO);
  int port = gw_start_one(&T.g, "zlib", "u16be", zlib_lua, up);

  /* Two compressing clients at once, each the other's bystander: each
   * session has zlib streams of its own. */
  zclient z[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    memset(&z[i], 0, sizeof z[i]);
    z[i].port = port;
    z[i].id = i + 1;
    zbuild(&z[i]);
    pthread_create(&th[i], NULL, zclient_main, &z[i]);
  }
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < 2; i++) {
    if (z[i].error[0]) fail_msg("%s", z[i].error);
    /* The upstream got the rewritten frames in clear. */
    size_t got;
    uint8_t *rec = rec_wait(up, z[i].want, 20, z[i].want_len, 5000, &got);
    assert_non_null(rec);
    assert_int_equal(got, z[i].want_len);
    assert_memory_equal(rec, z[i].want, got);
    free(rec);
    free(z[i].clear);
    free(z[i].want);
  }
  assert_int_equal(it_log_count(&T.g, "protocol error", NULL), 0);
}

/* ---- 5: a Lua codec that fails ------------------------------------------- */

static const char badcodec_lua[] =
    "local gw = require \"gangway\"\n"
    "local bad = gw.codec{ name = \"badkey\",\n"
    "  decode = function() error(\"no key yet\") end,\n"
    "  encode = function(b) return b end }\n"
    "gw.on(\"client\", \"*\", function(pkt, session)\n"
    "  -- from the frame after ARM on, the client's bodies go through it\n"
    "  if pkt:body() == \"ARM\" then\n"
    "    session:set_codec(\"client\", bad, { body = true, offset = 2 })\n"
    "  end\n"
    "end)\n";

static void test_failing_codec(void **state) {
  (void)state;
  rec_server *up = T.up[0] = rec_start(REC_ECHO);
  int port = gw_start_one(&T.g, "bad", "u16be", badcodec_lua, up);
  bystander_on(port, "u16be", 0);

  int fd = it_connect(port);
  assert_true(fd >= 0);
  uint8_t arm[16], x[16];
  size_t an = u16s(arm, "ARM"), xn = u16s(x, "x");
  assert_int_equal(it_send_all(fd, arm, an), 0);
  expect_bytes(fd, arm, an, 5000); /* ARM itself passes: the codec comes after */
  assert_int_equal(it_send_all(fd, x, xn), 0);
  size_t extra = 0;
  assert_int_not_equal(it_wait_eof(fd, 5000, &extra), 0);
  assert_int_equal(extra, 0); /* the frame the codec failed on never came back */
  close(fd);
  /* The reason names the codec, the script's line and its message; one
   * session failed, one was closed for it. */
  assert_true(it_log_wait(&T.g, "codec badkey: ", 2000));
  assert_int_equal(it_log_count(&T.g, "protocol error from client side at stream offset",
                                "bad.lua:3: no key yet"), 1);
  assert_int_equal(it_log_count(&T.g, " close ", "reason=\"protocol error from client side"), 1);
  /* the upstream got ARM, nothing after */
  size_t got;
  uint8_t *rec = rec_wait(up, arm, an, an + 1, 500, &got);
  assert_non_null(rec);
  assert_int_equal(got, an);
  free(rec);

  /* A new session on the listener works. */
  fd = it_connect(port);
  assert_true(fd >= 0);
  assert_int_equal(it_send_all(fd, x, xn), 0);
  expect_bytes(fd, x, xn, 5000);
  close(fd);
  bystander_done("failing codec");
}

/* ---- a wrong framing found in seconds ---------------------------------- */

/* A session that waits for a frame far longer than what arrived: the debug
 * log says once where, how long, and the bytes seen (a wrong framing shows
 * at a glance), and the session goes on if the frame does come. */
static void test_long_wait_logged(void **state) {
  (void)state;
  rec_server *up = T.up[0] = rec_start(REC_ECHO);
  it_gangway *g = &T.g;
  it_gangway_prepare(g);
  int port = it_free_port();
  char cfg[1024];
  snprintf(cfg, sizeof cfg,
           "return {\n"
           "  listeners = { { name = \"plain\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\",\n"
           "                  framing = \"u16be\" } },\n"
           "  timeouts = { frame_ms = 10000, drain_ms = 1000 }, control = \"\",\n"
           "  log = { level = \"debug\" },\n"
           "}\n",
           port, up->port);
  gw_start(g, port, cfg);
  bystander_on(port, "u16be", 0);

  int fd = it_connect(port);
  assert_true(fd >= 0);
  static uint8_t buf[65537 + 8];
  size_t n = u16s(buf, "ok");
  assert_int_equal(it_send_all(fd, buf, n), 0);
  expect_bytes(fd, buf, n, 5000);
  /* the hello of test_unframed_hello, read as u16be: 65535 body bytes */
  memcpy(buf + n, HELLO, HELLO_LEN);
  assert_int_equal(it_send_all(fd, buf + n, HELLO_LEN), 0);
  assert_true(it_log_wait(g, "waits for a frame of 65537 bytes", 5000));
  assert_int_equal(it_log_count(g, "session 2 waits for a frame of 65537 bytes from the client "
                                   "side at stream offset 4, has 4: ff ff 48 49 (framing u16be)",
                                NULL), 1);
  /* more of it is no news: one line per wait */
  it_fill(buf + n + HELLO_LEN, 3000, 7);
  assert_int_equal(it_send_all(fd, buf + n + HELLO_LEN, 3000), 0);
  /* the rest of the frame: it passes whole */
  it_fill(buf + n + HELLO_LEN + 3000, 65537 - HELLO_LEN - 3000, 8);
  assert_int_equal(it_send_all(fd, buf + n + HELLO_LEN + 3000, 65537 - HELLO_LEN - 3000), 0);
  expect_bytes(fd, buf + n, 65537, 5000);
  assert_int_equal(it_log_count(g, "waits for a frame", NULL), 1);
  close(fd);
  bystander_done("long wait");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_unframed_hello, teardown),
      cmocka_unit_test_teardown(test_starttls_to_raw, teardown),
      cmocka_unit_test_teardown(test_mqtt_packet_type, teardown),
      cmocka_unit_test_teardown(test_zlib_rewrite, teardown),
      cmocka_unit_test_teardown(test_failing_codec, teardown),
      cmocka_unit_test_teardown(test_long_wait_logged, teardown),
  };
  return cmocka_run_group_tests_name("phases and codecs through gangway", tests, NULL, NULL);
}
