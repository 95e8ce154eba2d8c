/* test_capture.c: src/capture.c, frames to pcap, read back by tshark. */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "capture.h"

#define BIG 100000

static char g_path[64];
static bool g_tshark;

static struct sockaddr_storage addr(const char *ip, int port) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
  }
  return ss;
}

#define SA(x) ((const struct sockaddr *)&(x))

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* stdout of a shell command (stderr dropped: tshark warns when run as
 * root); the exit status in *status. */
static char *run(const char *cmd, int *status) {
  char full[1100];
  snprintf(full, sizeof full, "%s 2>/dev/null", cmd);
  FILE *p = popen(full, "r");
  assert_non_null(p);
  size_t cap = 1 << 16, n = 0;
  char *out = malloc(cap);
  size_t got;
  while ((got = fread(out + n, 1, cap - n - 1, p)) > 0) {
    n += got;
    if (cap - n < 4096) out = realloc(out, cap *= 2);
  }
  out[n] = '\0';
  *status = pclose(p);
  return out;
}

static char *tshark(const char *args) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "tshark -r %s -o tcp.check_checksum:TRUE -o ip.check_checksum:TRUE "
           "-o tcp.analyze_sequence_numbers:TRUE %s", g_path, args);
  int status;
  char *out = run(cmd, &status);
  if (status != 0) fail_msg("%s: exit status %d", cmd, status);
  return out;
}

static size_t count_lines(const char *s) {
  size_t n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

/* tshark reads the file, finds no malformed packet, no bad checksum and
 * nothing wrong with the sequence numbers; returns its packet count. */
static size_t assert_clean(void) {
  char *bad = tshark("-Y '_ws.malformed || _ws.expert.severity >= warning || tcp.analysis.flags "
                     "|| tcp.checksum.status != 1 || ip.checksum.status == 0'");
  if (*bad) fail_msg("tshark reports problems:\n%s", bad);
  free(bad);
  char *all = tshark("-T fields -e frame.number");
  size_t n = count_lines(all);
  free(all);
  return n;
}

static int setup(void **state) {
  (void)state;
  snprintf(g_path, sizeof g_path, "/tmp/test_capture_%d.pcap", (int)getpid());
  return 0;
}

static int teardown(void **state) {
  (void)state;
  if (!getenv("KEEP")) unlink(g_path); /* KEEP=1: left for a look in Wireshark */
  return 0;
}

static gw_capture *open_capture(const gw_capture_limits *lim) {
  if (!g_tshark) skip(); /* cmocka prints [  SKIPPED ]; main said why */
  char err[256];
  gw_capture *c = gw_capture_open(g_path, lim, err, sizeof err);
  if (!c) fail_msg("%s", err);
  return c;
}

/* Expected payload of one direction of one conversation. */
typedef struct expect {
  const char *src, *dst;
  int sport, dport;
  uint8_t *bytes;
  size_t len;
} expect;

static void add(expect *e, const void *p, size_t n) {
  e->bytes = realloc(e->bytes, e->len + n);
  memcpy(e->bytes + e->len, p, n);
  e->len += n;
}

static int frame(gw_capture *c, gw_capture_flow *f, gw_side from, expect *e, const void *p,
                 size_t n, uint64_t ts) {
  add(e, p, n);
  return gw_capture_frame(c, f, from, p, n, ts);
}

static int hexval(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* Each data segment's payload, appended to the direction it belongs to;
 * a segment of no expected direction fails. */
static void check_payloads(expect *e, size_t ne) {
  char *out = tshark("-Y 'tcp.len > 0' -T fields -E separator=, -e ip.src -e ipv6.src "
                     "-e tcp.srcport -e ip.dst -e ipv6.dst -e tcp.dstport -e tcp.payload");
  uint8_t **got = calloc(ne, sizeof *got);
  size_t *gotlen = calloc(ne, sizeof *gotlen);
  char *save = NULL;
  for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    /* ip.src,ipv6.src,tcp.srcport,ip.dst,ipv6.dst,tcp.dstport,tcp.payload:
     * an empty field is nothing between two commas */
    char *fld[7];
    char *p = line;
    for (int i = 0; i < 7; i++) {
      fld[i] = p;
      p = strchr(p, ',');
      if (p) *p++ = '\0';
      else assert_int_equal(i, 6);
    }
    int sport = atoi(fld[2]), dport = atoi(fld[5]);
    const char *src = *fld[0] ? fld[0] : fld[1], *dst = *fld[3] ? fld[3] : fld[4];
    size_t i = 0;
    for (; i < ne; i++)
      if (!strcmp(e[i].src, src) && !strcmp(e[i].dst, dst) && e[i].sport == sport &&
          e[i].dport == dport)
        break;
    if (i == ne) fail_msg("a segment nobody sent: %s:%d -> %s:%d", src, sport, dst, dport);
    size_t hl = strlen(fld[6]);
    got[i] = realloc(got[i], gotlen[i] + hl / 2);
    for (size_t k = 0; k + 1 < hl; k += 2)
      got[i][gotlen[i]++] = (uint8_t)(hexval(fld[6][k]) << 4 | hexval(fld[6][k + 1]));
  }
  for (size_t i = 0; i < ne; i++) {
    if (gotlen[i] != e[i].len)
      fail_msg("%s:%d -> %s:%d: %zu bytes, expected %zu", e[i].src, e[i].sport, e[i].dst,
               e[i].dport, gotlen[i], e[i].len);
    assert_memory_equal(got[i], e[i].bytes, e[i].len);
    free(got[i]);
    free(e[i].bytes);
  }
  free(got);
  free(gotlen);
  free(out);
}

static void test_flows(void **state) {
  (void)state;
  gw_capture *c = open_capture(NULL);
  struct sockaddr_storage a_cl = addr("10.1.2.3", 40001), a_up = addr("192.0.2.10", 47000),
                          b_cl = addr("2001:db8::5", 40002), b_up = addr("2001:db8::10", 47001),
                          m_cl = addr("127.0.0.1", 40003), m_up = addr("::1", 47002);
  gw_capture_flow a, b, m;
  assert_int_equal(gw_capture_flow_init(&a, SA(a_cl), SA(a_up)), 0);
  assert_int_equal(gw_capture_flow_init(&b, SA(b_cl), SA(b_up)), 0);
  assert_int_equal(gw_capture_flow_init(&m, SA(m_cl), SA(m_up)), 0);
  int orig_port = GW_CAPTURE_ORIGINAL_PORT(40001);
  expect e[] = {
      {"10.1.2.3", "192.0.2.10", 40001, 47000, NULL, 0},
      {"192.0.2.10", "10.1.2.3", 47000, 40001, NULL, 0},
      {"10.1.2.3", "192.0.2.10", orig_port, 47000, NULL, 0}, /* originals */
      {"2001:db8::5", "2001:db8::10", 40002, 47001, NULL, 0},
      {"2001:db8::10", "2001:db8::5", 47001, 40002, NULL, 0},
      {"::ffff:127.0.0.1", "::1", 40003, 47002, NULL, 0},
  };
  uint8_t *big = malloc(BIG);
  for (size_t i = 0; i < BIG; i++) big[i] = (uint8_t)(i * 7 + i / 251);

  uint64_t t = now_us();
  assert_int_equal(frame(c, &a, GW_CLIENT, &e[0], "hello", 5, t), 0);
  add(&e[2], "HELLO", 5); /* a handler changed it: "hello" left, "HELLO" came */
  assert_int_equal(gw_capture_original(c, &a, GW_CLIENT, (const uint8_t *)"HELLO", 5, t), 0);
  assert_int_equal(frame(c, &b, GW_CLIENT, &e[3], "v6 frame\0with a NUL", 19, t + 10), 0);
  assert_int_equal(frame(c, &a, GW_SERVER, &e[1], "world!", 6, t + 20), 0);
  assert_int_equal(frame(c, &a, GW_CLIENT, &e[0], big, BIG, t + 30), 0);
  assert_int_equal(gw_capture_frame(c, &a, GW_CLIENT, NULL, 0, t + 35), 0); /* nothing */
  assert_int_equal(frame(c, &b, GW_SERVER, &e[4], "\xff\x00\x01", 3, t + 40), 0);
  assert_int_equal(frame(c, &m, GW_CLIENT, &e[5], "mixed", 5, t + 50), 0);
  assert_int_equal(frame(c, &a, GW_SERVER, &e[1], "bye", 3, t + 60), 0);
  assert_int_equal(gw_capture_flow_end(c, &a, GW_SERVER, t + 70), 0);
  assert_int_equal(gw_capture_flow_end(c, &a, GW_SERVER, t + 70), 0); /* once */
  assert_int_equal(gw_capture_flow_end(c, &b, GW_CLIENT, t + 80), 0);
  /* m is left open: closing the capture ends it */
  uint64_t packets, bytes;
  gw_capture_info(c, &packets, &bytes);
  assert_null(gw_capture_stopped(c));
  assert_int_equal(gw_capture_close(c), 0);
  assert_null(m.cap);

  /* a: 3 handshake + 5 segments (100000 bytes in two) + 3 FINs; its
   * originals 3 + 1 + 3; b 3 + 2 + 3; m 3 + 1 + 3 */
  assert_int_equal(packets + 3, 11 + 7 + 8 + 7); /* m's FINs came at close */
  struct stat st;
  assert_int_equal(stat(g_path, &st), 0);
  assert_int_equal(st.st_mode & 0777, 0600);
  assert_int_equal(assert_clean(), 33);

  char *conv = tshark("-q -z conv,tcp");
  size_t convs = 0;
  for (const char *p = conv; (p = strstr(p, "<->")); p++) convs++;
  assert_int_equal(convs, 4);
  assert_non_null(strstr(conv, "10.1.2.3:40001"));
  assert_non_null(strstr(conv, "2001:db8::5"));
  free(conv);

  /* the big frame in two segments, the second 35000 bytes */
  char *lens = tshark("-Y 'tcp.len > 1000' -T fields -e tcp.len");
  assert_string_equal(lens, "65000\n35000\n");
  free(lens);
  /* handshakes and FINs: 4 SYNs, 4 SYN-ACKs, 8 FINs */
  char *syn = tshark("-Y 'tcp.flags.syn == 1' -T fields -e tcp.flags.ack");
  assert_string_equal(syn, "0\n1\n0\n1\n0\n1\n0\n1\n");
  free(syn);
  char *fin = tshark("-Y 'tcp.flags.fin == 1' -T fields -e tcp.srcport");
  assert_int_equal(count_lines(fin), 8);
  free(fin);
  /* originals are marked DSCP 1, the rest 0 */
  char *dscp = tshark("-Y 'ip.dsfield.dscp == 1 || ipv6.tclass.dscp == 1' -T fields -e tcp.srcport");
  assert_int_equal(count_lines(dscp), 7);
  free(dscp);
  /* Wireshark's own reassembly of the client's side of a, byte for byte */
  char *follow = tshark("-q -z follow,tcp,raw,0");
  char *hex = malloc(2 * (5 + BIG) + 1), *h = hex;
  const char *p = strstr(follow, "Node 1:");
  assert_non_null(p);
  /* a line per segment, the server's indented by a tab, then ==== */
  for (p = strchr(p, '\n'); p && p[1] && p[1] != '='; p = strchr(p + 1, '\n')) {
    if (p[1] == '\t') continue;
    size_t n = strcspn(p + 1, "\n");
    if (h - hex + n > 2 * (5 + BIG)) fail_msg("stream 0 is longer than sent");
    memcpy(h, p + 1, n);
    h += n;
  }
  *h = '\0';
  assert_int_equal(strlen(hex), 2 * (5 + BIG));
  assert_memory_equal(hex, "68656c6c6f", 10);
  for (size_t i = 0; i < BIG; i++)
    if (hexval(hex[10 + 2 * i]) << 4 != (big[i] & 0xf0) || hexval(hex[11 + 2 * i]) != (big[i] & 15))
      fail_msg("stream 0 differs at byte %zu", 5 + i);
  free(hex);
  free(follow);
  check_payloads(e, sizeof e / sizeof *e);
  free(big);
}

/* Frames of 500 bytes on two flows until a limit stops the capture. */
static int fill(gw_capture *c, uint64_t t, size_t max_frames, size_t *written) {
  struct sockaddr_storage cl = addr("10.0.0.1", 5000), up = addr("10.0.0.2", 6000),
                          cl6 = addr("::1", 5001);
  static gw_capture_flow f4, f6;
  gw_capture_flow_init(&f4, SA(cl), SA(up));
  gw_capture_flow_init(&f6, SA(cl6), SA(up));
  uint8_t payload[500];
  memset(payload, 'x', sizeof payload);
  int rc = 0;
  for (*written = 0; *written < max_frames; (*written)++) {
    gw_capture_flow *f = *written % 3 ? &f4 : &f6;
    rc = gw_capture_frame(c, f, *written % 2 ? GW_SERVER : GW_CLIENT, payload, sizeof payload,
                          t + *written * 1000);
    if (rc) break;
  }
  return rc;
}

static void test_limit_bytes(void **state) {
  (void)state;
  gw_capture_limits lim = {.max_bytes = 8000};
  gw_capture *c = open_capture(&lim);
  size_t n;
  assert_int_equal(fill(c, now_us(), 1000, &n), GW_CAPTURE_FULL);
  assert_string_equal(gw_capture_stopped(c), "max_bytes");
  uint8_t x = 1;
  gw_capture_flow f;
  struct sockaddr_storage cl = addr("10.0.0.9", 1), up = addr("10.0.0.2", 2);
  gw_capture_flow_init(&f, SA(cl), SA(up));
  assert_int_equal(gw_capture_frame(c, &f, GW_CLIENT, &x, 1, now_us()), GW_CAPTURE_FULL);
  uint64_t packets, bytes;
  gw_capture_info(c, &packets, &bytes);
  assert_int_equal(gw_capture_close(c), 0);
  struct stat st;
  assert_int_equal(stat(g_path, &st), 0);
  assert_int_equal((uint64_t)st.st_size, bytes);
  assert_true(bytes <= 8000);
  assert_true(bytes > 8000 - 600); /* the next frame would not have fitted */
  assert_true(n > 5);
  assert_int_equal(assert_clean(), packets);
  /* both streams ended with FINs from both sides */
  char *fin = tshark("-Y 'tcp.flags.fin == 1' -T fields -e tcp.srcport");
  assert_int_equal(count_lines(fin), 4);
  free(fin);
}

static void test_limit_seconds(void **state) {
  (void)state;
  gw_capture_limits lim = {.max_seconds = 10};
  uint64_t t = now_us();
  gw_capture *c = open_capture(&lim);
  size_t n;
  assert_int_equal(fill(c, t, 5, &n), 0);
  gw_capture_flow f;
  struct sockaddr_storage cl = addr("10.0.0.9", 1), up = addr("10.0.0.2", 2);
  gw_capture_flow_init(&f, SA(cl), SA(up));
  assert_int_equal(gw_capture_frame(c, &f, GW_CLIENT, (const uint8_t *)"late", 4, t + 11000000),
                   GW_CAPTURE_FULL);
  assert_string_equal(gw_capture_stopped(c), "max_seconds");
  assert_int_equal(gw_capture_flow_end(c, &f, GW_CLIENT, t + 12000000), GW_CAPTURE_FULL);
  assert_int_equal(gw_capture_close(c), 0);
  /* two streams: 3 + 3 + 5 frames + 3 + 3 */
  assert_int_equal(assert_clean(), 17);
  char *late = tshark("-Y 'tcp.len == 4'");
  assert_string_equal(late, "");
  free(late);
}

static void test_limit_packets(void **state) {
  (void)state;
  gw_capture_limits lim = {.max_packets = 10};
  gw_capture *c = open_capture(&lim);
  size_t n;
  assert_int_equal(fill(c, now_us(), 100, &n), GW_CAPTURE_FULL);
  /* f6 first: 3 + 1, room kept for 3 FINs; f4 would need 3 + 1 + 3 more */
  assert_int_equal(n, 1);
  assert_string_equal(gw_capture_stopped(c), "max_packets");
  assert_int_equal(gw_capture_close(c), 0);
  assert_int_equal(assert_clean(), 7);
}

static void test_errors(void **state) {
  (void)state;
  char err[256];
  assert_null(gw_capture_open("/nonexistent/dir/x.pcap", NULL, err, sizeof err));
  assert_non_null(strstr(err, "/nonexistent/dir/x.pcap: No such file or directory"));
  struct sockaddr_storage un = {.ss_family = AF_UNIX}, up = addr("10.0.0.2", 2);
  gw_capture_flow f;
  assert_int_equal(gw_capture_flow_init(&f, SA(un), SA(up)), -EAFNOSUPPORT);
  /* a v4-mapped client with a v4 upstream is plain IPv4 */
  struct sockaddr_storage mapped = addr("::ffff:10.0.0.1", 3);
  assert_int_equal(gw_capture_flow_init(&f, SA(mapped), SA(up)), 0);
  assert_int_equal(f.family, AF_INET);
  assert_memory_equal(f.addr[GW_CLIENT], "\x0a\x00\x00\x01", 4);
}

int main(void) {
  g_tshark = system("tshark --version >/dev/null 2>&1") == 0;
  if (!g_tshark)
    fprintf(stderr, "test_capture: tshark not found (tools/install-deps.sh installs it): "
                    "the captures are not read back, those tests are skipped\n");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_flows, setup, teardown),
      cmocka_unit_test_setup_teardown(test_limit_bytes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_limit_seconds, setup, teardown),
      cmocka_unit_test_setup_teardown(test_limit_packets, setup, teardown),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
