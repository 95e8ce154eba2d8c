/* it_capture.c: `gangway capture` on a running gangway (issue 13.2): the
 * pcap is read back by tshark with the frames sent, as they left gangway,
 * between the session's real addresses and ports, with the originals of
 * changed frames in their own stream when asked, an opcode filter, and
 * the demo's chat (topd, topbot, chat_filter.lua) as it left and as it
 * came. */
#include <ctype.h>
#include <inttypes.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

/* ---- the command, in a thread while the test makes traffic ---- */

typedef struct capture_cmd {
  pthread_t thread;
  const char *args[16];
  char *out;
  int code;
} capture_cmd;

static void *capture_thread(void *ud) {
  capture_cmd *c = ud;
  c->code = it_run_gangway(&c->out, c->args);
  return NULL;
}

/* Starts `gangway capture -c config ... -w pcap` and waits until the
 * running gangway says it began. */
static void capture_start(capture_cmd *c, it_gangway *g, const char *pcap, const char *const extra[]) {
  memset(c, 0, sizeof *c);
  int n = 0;
  c->args[n++] = "capture";
  c->args[n++] = "-c";
  c->args[n++] = g->config;
  for (int i = 0; extra[i]; i++) c->args[n++] = extra[i];
  c->args[n++] = "-w";
  c->args[n++] = pcap;
  int before = it_log_count(g, "capture to ", "started");
  assert_int_equal(pthread_create(&c->thread, NULL, capture_thread, c), 0);
  for (int i = 0; i < 100 && it_log_count(g, "capture to ", "started") == before; i++)
    usleep(20 * 1000);
  assert_true(it_log_count(g, "capture to ", "started") > before);
}

/* Waits for the command (its --seconds) and checks its answer. */
static void capture_end(capture_cmd *c) {
  pthread_join(c->thread, NULL);
  if (c->code != 0 || !strstr(c->out, "ok: ") || !strstr(c->out, " bytes written to "))
    fail_msg("gangway capture: exit %d: %s", c->code, c->out);
  free(c->out);
}

/* ---- tshark ---- */

typedef struct seg {
  char src[64], dst[64];
  int sport, dport, dscp;
  uint8_t payload[512]; /* its first bytes */
  size_t len;           /* the payload's whole length */
} seg;

static int unhex(char c) { return isdigit((unsigned char)c) ? c - '0' : tolower((unsigned char)c) - 'a' + 10; }

/* The segments with a payload, in file order; *n their count. */
static seg *read_pcap(const char *pcap, size_t *n) {
  if (system("command -v tshark >/dev/null 2>&1") != 0) fail_msg("tshark is not installed");
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "tshark -r '%s' -Y 'tcp.len > 0' -T fields -E separator=' ' -e ip.src -e tcp.srcport "
           "-e ip.dst -e tcp.dstport -e ip.dsfield.dscp -e tcp.payload 2>/dev/null",
           pcap);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  seg *v = calloc(1024, sizeof *v);
  char *line = NULL;
  size_t cap = 0;
  *n = 0;
  while (*n < 1024 && getline(&line, &cap, p) > 0) {
    seg *s = &v[*n];
    int hex_at = 0;
    if (sscanf(line, "%63s %d %63s %d %d %n", s->src, &s->sport, s->dst, &s->dport, &s->dscp,
               &hex_at) != 5 || !hex_at)
      fail_msg("tshark line: %.200s", line);
    const char *hex = line + hex_at;
    s->len = strspn(hex, "0123456789abcdef") / 2; /* the whole payload's length */
    for (size_t i = 0; i < s->len && i < sizeof s->payload; i++)
      s->payload[i] = (uint8_t)(unhex(hex[2 * i]) << 4 | unhex(hex[2 * i + 1]));
    (*n)++;
  }
  free(line);
  assert_int_equal(pclose(p), 0);
  return v;
}

/* Packets in the file that match a display filter. */
static int tshark_count(const char *pcap, const char *filter) {
  char cmd[512], out[64] = "";
  snprintf(cmd, sizeof cmd, "tshark -r '%s' -Y '%s' 2>/dev/null | wc -l", pcap, filter);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  if (!fgets(out, sizeof out, p)) out[0] = '\0';
  pclose(p);
  return atoi(out);
}

/* ---- top frames ---- */

static size_t top_frame(uint8_t *f, uint16_t opcode, const char *body) {
  size_t len = 8 + strlen(body);
  f[0] = (uint8_t)(len >> 8), f[1] = (uint8_t)len;
  f[2] = 0x80, f[3] = f[4] = f[5] = 0;
  f[6] = (uint8_t)(opcode >> 8), f[7] = (uint8_t)opcode;
  memcpy(f + 8, body, strlen(body));
  return len;
}

/* The frame made by the replacing handler below. */
static size_t replaced_frame(uint8_t *f) {
  /* gw.writer():str("REPLACED"): top strings are a u16 length counting a
   * trailing NUL. */
  static const char body[] = "\x00\x09REPLACED";
  size_t len = 8 + sizeof body; /* with the NUL */
  top_frame(f, 5, "");
  memcpy(f + 8, body, sizeof body);
  f[0] = (uint8_t)(len >> 8), f[1] = (uint8_t)len;
  return len;
}

static int local_port(int fd) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  return ntohs(a.sin_port);
}

/* ---- tests ---- */

typedef struct fx {
  it_gangway g;
  it_server *up;
  int port, up_port;
  char pcap[256];
} fx;

static void fx_start(fx *f) {
  f->up = it_server_start(IT_ECHO, 0, &f->up_port);
  f->port = it_free_port();
  it_gangway_prepare(&f->g);
  it_write(f->g.dir, "replace.lua",
           "local gw = require \"gangway\"\n"
           "gw.on(\"client\", 5, function() return gw.packet(5, gw.writer():str(\"REPLACED\")) end)\n");
  it_write(f->g.dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\", framing = \"top\", scripts = { \"replace.lua\" } } },\n"
           "  control = \"ctl.sock\" }\n",
           f->port, f->up_port);
  it_gangway_run(&f->g, f->port);
  snprintf(f->pcap, sizeof f->pcap, "%s/out.pcap", f->g.dir);
}

static void fx_stop(fx *f) {
  assert_int_equal(it_gangway_stop(&f->g, SIGTERM, 10000), 0);
  it_server_stop(f->up);
}

/* Sends a frame and reads back what the echo upstream returns of it. */
static void exchange(int fd, const uint8_t *f, size_t len, const uint8_t *want, size_t wlen) {
  uint8_t back[512];
  assert_int_equal(it_send_all(fd, f, len), 0);
  assert_int_equal(it_recv_exact(fd, back, wlen, 3000), wlen);
  assert_memory_equal(back, want, wlen);
}

/* Every frame, both ways, as it left gangway, between the client's and
 * the upstream's addresses; a replaced frame as its replacement. */
static void test_frames_as_they_left(void **state) {
  (void)state;
  fx f;
  fx_start(&f);
  capture_cmd c;
  const char *const extra[] = {"--seconds", "3", "--listener", "game", NULL};
  capture_start(&c, &f.g, f.pcap, extra);
  int fd = it_connect(f.port);
  assert_true(fd >= 0);
  int cport = local_port(fd);
  enum { N = 6 };
  uint8_t fr[N + 2][64];
  size_t len[N + 2];
  for (int i = 0; i < N; i++) {
    char body[32];
    snprintf(body, sizeof body, "frame number %d", i);
    len[i] = top_frame(fr[i], 1, body);
    exchange(fd, fr[i], len[i], fr[i], len[i]);
  }
  uint8_t rep[64];
  size_t rlen = replaced_frame(rep);
  for (int i = N; i < N + 2; i++) {
    len[i] = top_frame(fr[i], 5, "original words");
    exchange(fd, fr[i], len[i], rep, rlen);
  }
  close(fd);
  capture_end(&c);
  size_t n;
  seg *v = read_pcap(f.pcap, &n);
  assert_int_equal(n, 2 * (N + 2));
  for (size_t i = 0; i < n; i++) {
    const seg *s = &v[i];
    int k = (int)i / 2;
    bool to_server = i % 2 == 0; /* each frame, then its echo */
    assert_string_equal(s->src, "127.0.0.1");
    assert_string_equal(s->dst, "127.0.0.1");
    assert_int_equal(s->dscp, 0);
    assert_int_equal(to_server ? s->sport : s->dport, cport);
    assert_int_equal(to_server ? s->dport : s->sport, f.up_port);
    const uint8_t *want = k < N ? fr[k] : rep;
    size_t wlen = k < N ? len[k] : rlen;
    assert_int_equal(s->len, wlen);
    assert_memory_equal(s->payload, want, wlen);
  }
  free(v);
  /* The session's handshake and both FINs: a whole TCP stream. */
  assert_int_equal(tshark_count(f.pcap, "tcp.flags.syn == 1"), 2);
  assert_int_equal(tshark_count(f.pcap, "tcp.flags.fin == 1"), 2);
  assert_int_equal(tshark_count(f.pcap, "tcp.analysis.flags && !tcp.analysis.window_update"), 0);
  fx_stop(&f);
}

/* session:capture from a script: one session's frames into capture_dir,
 * ended with the session; a name with a slash and a second capture are
 * refused; without capture_dir a script gets nil and why. */
static void test_session_capture_from_lua(void **state) {
  (void)state;
  it_gangway g;
  int up_port;
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  int port = it_free_port();
  it_gangway_prepare(&g);
  it_write(g.dir, "cap.lua",
           "local gw = require \"gangway\"\n"
           "gw.on(\"client\", 7, function(pkt, session)\n"
           "  local name = pkt:body()\n"
           "  local ok, why = session:capture(name, { seconds = 10 })\n"
           "  gw.log.info(\"capture\", name, tostring(ok), tostring(why))\n"
           "  return gw.DROP\n"
           "end)\n"
           "gw.on(\"client\", 8, function(pkt, session)\n"
           "  local ok, err = pcall(session.capture, session, \"../etc/x\")\n"
           "  gw.log.info(\"badname\", tostring(ok), err)\n"
           "  return gw.DROP\n"
           "end)\n");
  char caps[256];
  snprintf(caps, sizeof caps, "%s/caps", g.dir);
  assert_int_equal(mkdir(caps, 0700), 0);
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\", framing = \"top\", scripts = { \"cap.lua\" } } },\n"
           "  capture_dir = \"caps\", control = \"\" }\n",
           port, up_port);
  it_gangway_run(&g, port);
  int a = it_connect(port), b = it_connect(port);
  uint8_t f[128], w[64];
  size_t n = top_frame(f, 7, "one");
  assert_int_equal(it_send_all(a, f, n), 0);
  assert_true(it_log_wait(&g, "capture one true nil", 3000));
  n = top_frame(f, 7, "two"); /* a second capture while one runs */
  assert_int_equal(it_send_all(b, f, n), 0);
  assert_true(it_log_wait(&g, "capture two nil another capture is running", 3000));
  n = top_frame(f, 8, "x");
  assert_int_equal(it_send_all(b, f, n), 0);
  assert_true(it_log_wait(&g, "badname false", 3000));
  for (int i = 0; i < 5; i++) { /* a's frames are captured, b's are not */
    n = top_frame(f, 1, i % 2 ? "odd" : "even");
    exchange(a, f, n, f, n);
    size_t m = top_frame(w, 1, "bystander");
    exchange(b, w, m, w, m);
  }
  close(a);
  assert_true(it_log_wait(&g, "ended: ", 3000)); /* with its session */
  char pcap[300];
  snprintf(pcap, sizeof pcap, "%s/one.pcap", caps);
  size_t nseg;
  seg *v = read_pcap(pcap, &nseg);
  assert_int_equal(nseg, 10); /* 5 frames and their echoes; the dropped 7 never left */
  for (size_t i = 0; i < nseg; i++) /* "even" and "odd" frames, each echoed */
    assert_int_equal(v[i].len, (i / 2) % 2 ? 11 : 12);
  free(v);
  assert_int_equal(tshark_count(pcap, "tcp.flags.fin == 1"), 2);
  close(b);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
  it_server_stop(up);
}

/* --opcode keeps one opcode; --originals adds the frames handed to
 * handlers as they came, in a stream of their own (DSCP 1). */
static void test_opcode_and_originals(void **state) {
  (void)state;
  fx f;
  fx_start(&f);
  int early = it_connect(f.port); /* open before the capture starts */
  assert_true(early >= 0);
  uint8_t a[64], b[64], rep[64];
  size_t alen = top_frame(a, 1, "not captured"), blen = top_frame(b, 5, "original words");
  size_t rlen = replaced_frame(rep);
  exchange(early, a, alen, a, alen);
  capture_cmd c;
  const char *const extra[] = {"--seconds", "2", "--opcode", "5", "--originals", NULL};
  capture_start(&c, &f.g, f.pcap, extra);
  for (int i = 0; i < 3; i++) {
    exchange(early, a, alen, a, alen);
    exchange(early, b, blen, rep, rlen);
  }
  close(early);
  capture_end(&c);
  size_t n;
  seg *v = read_pcap(f.pcap, &n);
  int sent = 0, originals = 0, echoed = 0;
  for (size_t i = 0; i < n; i++) {
    const seg *s = &v[i];
    if (s->dscp == 1) {
      originals++;
      assert_int_equal(s->dport, f.up_port);
      assert_int_equal(s->len, blen);
      assert_memory_equal(s->payload, b, blen);
      continue;
    }
    assert_int_equal(s->len, rlen); /* opcode 1 is not in the file */
    assert_memory_equal(s->payload, rep, rlen);
    *(s->dport == f.up_port ? &sent : &echoed) += 1;
  }
  free(v);
  assert_int_equal(sent, 3);
  assert_int_equal(echoed, 3);
  assert_int_equal(originals, 3);
  fx_stop(&f);
}

/* --session takes one session of two; --max-mb stops the capture at that
 * size with a whole file, and the command says why. */
static void test_session_and_size_limit(void **state) {
  (void)state;
  fx f;
  fx_start(&f);
  int other = it_connect(f.port), mine = it_connect(f.port);
  assert_true(other >= 0 && mine >= 0);
  uint8_t a[64];
  size_t alen = top_frame(a, 1, "first");
  exchange(other, a, alen, a, alen); /* session 1 */
  exchange(mine, a, alen, a, alen);  /* session 2 */
  int cport = local_port(mine);
  capture_cmd c;
  const char *const extra[] = {"--session", "2", "--max-mb", "1", "--seconds", "20", NULL};
  capture_start(&c, &f.g, f.pcap, extra);
  exchange(other, a, alen, a, alen);
  /* 8 KB frames both ways until the file passes 1 MiB: about 64 of them. */
  static uint8_t big[8192], back[8192];
  memset(big, 'z', sizeof big);
  big[0] = sizeof big >> 8, big[1] = sizeof big & 0xff, big[2] = 0x80, big[7] = 1;
  uint64_t t0 = it_now_ms();
  for (int i = 0; i < 100; i++) {
    assert_int_equal(it_send_all(mine, big, sizeof big), 0);
    assert_int_equal(it_recv_exact(mine, back, sizeof back, 3000), sizeof back);
  }
  pthread_join(c.thread, NULL);
  if (c.code != 0 || !strstr(c.out, "(stopped: max_bytes)"))
    fail_msg("gangway capture: exit %d: %s", c.code, c.out);
  assert_true(it_now_ms() - t0 < 15000); /* the size, not the time, ended it */
  free(c.out);
  struct stat st;
  assert_int_equal(stat(f.pcap, &st), 0);
  assert_true(st.st_size <= 1 << 20 && st.st_size > 1000 * 1000);
  assert_int_equal(st.st_mode & 0777, 0600);
  size_t n;
  seg *v = read_pcap(f.pcap, &n);
  assert_true(n > 50);
  for (size_t i = 0; i < n; i++) /* the other session is not in it */
    assert_true(v[i].sport == cport || v[i].dport == cport);
  free(v);
  assert_int_equal(tshark_count(f.pcap, "tcp.flags.fin == 1"), 2); /* ended whole */
  close(other);
  close(mine);
  fx_stop(&f);
}

/* A session through f's gangway, a frame for it in a, and `gangway
 * capture` started (its output to out_fd) once the capture has begun. */
static pid_t command_start(fx *f, int *fd, uint8_t *a, size_t *alen, const char *text, int out_fd) {
  fx_start(f);
  *fd = it_connect(f->port);
  assert_true(*fd >= 0);
  *alen = top_frame(a, 1, text);
  pid_t cmd = fork();
  if (cmd == 0) {
    dup2(out_fd, 1), dup2(out_fd, 2);
    execl(GW_BIN, GW_BIN, "capture", "-c", f->g.config, "--seconds", "60", "-w", f->pcap,
          (char *)NULL);
    _exit(127);
  }
  for (int i = 0; i < 100 && !it_log_count(&f->g, "capture to ", "started"); i++) usleep(20 * 1000);
  return cmd;
}

/* Ctrl-C (or SIGTERM, or both at once) on the command: the capture ends
 * at once, the file whole, and the command still prints what was written
 * and exits 0. */
static void test_command_interrupted(void **state) {
  (void)state;
  fx f;
  int fd, out[2];
  uint8_t a[64];
  size_t alen;
  assert_int_equal(pipe2(out, O_CLOEXEC), 0); /* the gangway started next keeps no end */
  pid_t cmd = command_start(&f, &fd, a, &alen, "before ctrl-c", out[1]);
  close(out[1]);
  exchange(fd, a, alen, a, alen);
  uint64_t t0 = it_now_ms();
  /* One stop, delivered twice at once (timeout(1) signals the command and
   * its own group): still one answer. */
  kill(cmd, SIGTERM);
  kill(cmd, SIGINT);
  char said[1024] = "";
  size_t got = 0;
  ssize_t k;
  while (got < sizeof said - 1 && (k = read(out[0], said + got, sizeof said - 1 - got)) > 0)
    got += (size_t)k;
  close(out[0]);
  int status = 0;
  waitpid(cmd, &status, 0);
  uint64_t took = it_now_ms() - t0;
  printf("  interrupted: exit %d after %" PRIu64 " ms: %s", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
         took, said);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  assert_non_null(strstr(said, "ok: "));
  assert_non_null(strstr(said, "(stopped: command stopped)"));
  assert_non_null(strstr(said, f.pcap));
  size_t n;
  seg *v = read_pcap(f.pcap, &n);
  assert_int_equal(n, 2); /* the frame, both ways */
  free(v);
  exchange(fd, a, alen, a, alen); /* the session goes on */
  close(fd);
  fx_stop(&f);
}

/* Commands other than capture keep Ctrl-C's default: `gangway stats`
 * against a gangway that does not answer ends at once. */
static void test_stats_interrupted(void **state) {
  (void)state;
  fx f;
  fx_start(&f);
  kill(f.g.pid, SIGSTOP);
  pid_t cmd = fork();
  if (cmd == 0) {
    int null = open("/dev/null", O_WRONLY);
    dup2(null, 1), dup2(null, 2);
    execl(GW_BIN, GW_BIN, "stats", "-c", f.g.config, (char *)NULL);
    _exit(127);
  }
  usleep(300 * 1000);
  uint64_t t0 = it_now_ms();
  kill(cmd, SIGINT);
  int status = 0;
  pid_t got = 0;
  while ((got = waitpid(cmd, &status, WNOHANG)) == 0 && it_now_ms() - t0 < 5000) usleep(10 * 1000);
  if (!got) kill(cmd, SIGKILL), waitpid(cmd, &status, 0);
  uint64_t took = it_now_ms() - t0;
  kill(f.g.pid, SIGCONT);
  printf("  stats interrupted: ended after %" PRIu64 " ms by %s\n", took,
         WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "an exit");
  assert_true(got == cmd && WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
  fx_stop(&f);
}

/* The command killed: the capture ends with it, the file whole. */
static void test_command_goes_away(void **state) {
  (void)state;
  fx f;
  int fd;
  uint8_t a[64];
  size_t alen;
  int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  pid_t cmd = command_start(&f, &fd, a, &alen, "before the end", null);
  close(null);
  exchange(fd, a, alen, a, alen);
  kill(cmd, SIGKILL);
  waitpid(cmd, NULL, 0);
  assert_true(it_log_wait(&f.g, "(stopped: command stopped)", 2000));
  size_t n;
  seg *v = read_pcap(f.pcap, &n);
  assert_int_equal(n, 2);
  free(v);
  assert_int_equal(tshark_count(f.pcap, "tcp.flags.fin == 1"), 2); /* the stream was ended */
  exchange(fd, a, alen, a, alen); /* the session goes on */
  close(fd);
  fx_stop(&f);
}

/* The demo: players chat through chat_filter.lua; the file has the line
 * as the server got it, and as the player wrote it among the originals. */
static void test_demo_chat(void **state) {
  (void)state;
  it_gangway g;
  it_gangway_prepare(&g);
  char topd_log[256], bots_log[256], scenario[256], bin[1200];
  snprintf(topd_log, sizeof topd_log, "%s/topd.out", g.dir);
  snprintf(bots_log, sizeof bots_log, "%s/bots.out", g.dir);
  snprintf(scenario, sizeof scenario, "%s/players.txt", g.dir);
  int up = it_free_port(), port = it_free_port();
  pid_t topd = fork();
  if (topd == 0) {
    char listen[32];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", up);
    if (!freopen(topd_log, "w", stderr) || !freopen(topd_log, "a", stdout)) _exit(126);
    execl(GW_BUILD_DIR "/topd", "topd", "-v", "-l", listen, (char *)NULL);
    _exit(127);
  }
  it_write(g.dir, "players.txt", "wait 300\nsay sorry noob, my bad\nwait 200\nsay hello again\nwait 500\n");
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\", framing = \"top\", protocol = \"%s/protocols/top\",\n"
           "  scripts = { \"%s/scripts/chat_filter.lua\" } } },\n"
           "  control = \"ctl.sock\" }\n",
           port, up, GW_SOURCE_DIR, GW_SOURCE_DIR);
  usleep(200 * 1000);
  it_gangway_run(&g, port);
  char pcap[256];
  snprintf(pcap, sizeof pcap, "%s/demo.pcap", g.dir);
  capture_cmd c;
  const char *const extra[] = {"--seconds", "4", "--originals", NULL};
  capture_start(&c, &g, pcap, extra);
  snprintf(bin, sizeof bin,
           "'%s/topbot' -c 127.0.0.1:%d -p player -n 2 -d 2 -s '%s' > '%s' 2>&1", GW_BUILD_DIR,
           port, scenario, bots_log);
  assert_int_equal(system(bin), 0);
  capture_end(&c);
  kill(topd, SIGINT);
  waitpid(topd, NULL, 0);
  size_t n;
  seg *v = read_pcap(pcap, &n);
  int rewritten = 0, raw_noob = 0, originals = 0;
  for (size_t i = 0; i < n; i++) {
    const seg *s = &v[i];
    originals += s->dscp == 1;
    size_t seen = s->len < sizeof s->payload ? s->len : sizeof s->payload;
    bool noob = memmem(s->payload, seen, "sorry noob", 10) != NULL;
    bool friend = memmem(s->payload, seen, "sorry new friend", 16) != NULL;
    if (s->dscp == 0 && noob) fail_msg("the line as the player wrote it left gangway");
    if (s->dscp == 0 && friend && s->dport == up) rewritten++;
    if (s->dscp == 1 && noob) raw_noob++;
  }
  free(v);
  printf("  demo capture: %zu segments with a payload, %d originals, rewritten line %d times\n", n,
         originals, rewritten);
  assert_int_equal(rewritten, 2); /* one per player, to the server */
  assert_int_equal(raw_noob, 2);
  /* One stream per player and one of originals each: 2 x 2 handshakes. */
  assert_int_equal(tshark_count(pcap, "tcp.flags.syn == 1 && tcp.flags.ack == 0"), 4);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_frames_as_they_left),
      cmocka_unit_test(test_session_capture_from_lua),
      cmocka_unit_test(test_opcode_and_originals),
      cmocka_unit_test(test_session_and_size_limit),
      cmocka_unit_test(test_command_interrupted),
      cmocka_unit_test(test_stats_interrupted),
      cmocka_unit_test(test_command_goes_away),
      cmocka_unit_test(test_demo_chat),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
