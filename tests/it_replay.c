/* it_replay.c: the fuzzing corpus of the framing engine replayed through a
 * running gangway (issue 10). Every file of fuzz/corpus/frame/ (and of
 * build-fuzz/corpus/frame/, what fuzz/run.sh found, when it is there) is a
 * client stream on listeners of five framings in front of an echo upstream:
 * the file as it is and without the 16 bytes that describe the harness's
 * custom framing, plus deterministic mutations of the seed files. Each is
 * sent once in one write and once cut into random writes of 1 to 16 bytes,
 * then FIN; then all of them again, 64 sessions at a time. What comes back
 * is checked against the framing engine's own reading of the stream
 * (gw_frame_next): every whole frame before the first invalid one comes back
 * byte for byte and nothing else (an unfinished frame at FIN is dropped),
 * and a stream that turns invalid ends with a "protocol error" reason. A
 * bystander on another address streams numbered frames the whole time;
 * gangway must never die, and answers stats and exits 0 on SIGTERM at the
 * end. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "frame.h"
#include "itest.h"

#define DESC_LEN 16           /* fuzz_frame.c: the custom framing's description */
#define MUTATIONS 30          /* per seed file */
#define INPUT_MAX (64 * 1024) /* larger corpus files are cut here */
#define BUDGET_MS 60000       /* no new input after this long (a slow machine) */
#define FOUND_MAX 1000        /* files taken from build-fuzz/, which only grows */

static const char *const framings[] = {"top", "u16be", "u32le", "varint", "mysql"};
#define NFRAMINGS 5

typedef struct {
  char name[96];
  uint8_t *data;
  size_t len;
} input;

static input *inputs;
static size_t ninputs, capinputs;

static void add_input(const char *name, const uint8_t *data, size_t len) {
  if (ninputs == capinputs) {
    capinputs = capinputs ? 2 * capinputs : 256;
    inputs = realloc(inputs, capinputs * sizeof *inputs);
  }
  input *in = &inputs[ninputs++];
  snprintf(in->name, sizeof in->name, "%s", name);
  in->data = malloc(len ? len : 1);
  memcpy(in->data, data, len);
  in->len = len;
}

/* Adds the regular files of dir, at most max; returns how many. */
static int load_dir(const char *dir, bool mutate, int max) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int files = 0;
  struct dirent *e;
  static uint8_t buf[INPUT_MAX];
  while (files < max && (e = readdir(d))) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    struct stat st;
    if (e->d_name[0] == '.' || stat(path, &st) < 0 || !S_ISREG(st.st_mode)) continue;
    FILE *f = fopen(path, "rb");
    if (!f) continue;
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    files++;
    char name[96];
    snprintf(name, sizeof name, "%.80s", e->d_name);
    add_input(name, buf, n);
    if (n > DESC_LEN) {
      snprintf(name, sizeof name, "%.80s/stream", e->d_name);
      add_input(name, buf + DESC_LEN, n - DESC_LEN);
    }
    /* Mutations of the seeds: bytes overwritten, a run doubled, a tail cut,
     * so that near-valid streams turn invalid at varied places. */
    for (int m = 0; mutate && m < MUTATIONS && n; m++) {
      static uint8_t mut[2 * INPUT_MAX];
      uint8_t r[8];
      it_fill(r, sizeof r, (uint64_t)files * 131 + (uint64_t)m);
      size_t len = n;
      memcpy(mut, buf, n);
      switch (m % 3) {
      case 0:
        for (int k = 0; k < 3; k++) mut[r[k] % n] = r[k + 3];
        break;
      case 1: {
        size_t at = r[0] % n, run = 1 + r[1] % (n - at);
        memmove(mut + at + run, mut + at, n - at);
        len = n + run;
        break;
      }
      default:
        len = 1 + r[0] % n;
      }
      snprintf(name, sizeof name, "%.80s/mut%d", e->d_name, m);
      add_input(name, mut, len);
    }
  }
  closedir(d);
  return files;
}

/* The bytes of in that come back through an echo upstream: the whole
 * frames before the first invalid one; *proto says whether there is one. */
static size_t expect(const gw_framing *f, const uint8_t *in, size_t n, bool *proto) {
  size_t off = 0;
  *proto = false;
  while (off < n) {
    gw_frame_info fi;
    int rc = gw_frame_next(f, GW_CLIENT, in + off, n - off, &fi);
    if (rc == 1) {
      off += fi.len;
      continue;
    }
    *proto = rc == -EPROTO;
    break;
  }
  return off;
}

/* The log, read as it grows: the reason of a client's close line. */
static struct {
  FILE *f;
  char *buf;
  size_t len, cap;
} lg;

static bool find_reason(const char *client, char *out, size_t cap, int timeout_ms) {
  char needle[80];
  snprintf(needle, sizeof needle, " client=%s ", client);
  uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    /* Only lines that came since the last session ended are searched. */
    char *p = lg.buf ? lg.buf : (char *)"";
    char *hit = NULL;
    for (char *q = p; (q = strstr(q, needle)); q++) {
      char *bol = q;
      while (bol > p && bol[-1] != '\n') bol--;
      char *eol = strchr(q, '\n');
      char *c = strstr(bol, " close listener=");
      if (eol && c && c < eol) hit = bol;
    }
    if (hit) {
      char *r = strstr(hit, "reason=\""), *eol = strchr(hit, '\n');
      size_t n = 0;
      if (r && r < eol)
        for (r += 8; r + n < eol - 1 && n + 1 < cap; n++) out[n] = r[n];
      out[n] = '\0';
      /* Drop what was read up to this line: the next session starts after. */
      size_t keep = lg.len - (size_t)(eol + 1 - lg.buf);
      memmove(lg.buf, eol + 1, keep);
      lg.len = keep;
      lg.buf[lg.len] = '\0';
      return true;
    }
    if (it_now_ms() >= deadline) return false;
    if (lg.cap - lg.len < 65536) lg.buf = realloc(lg.buf, lg.cap = 2 * lg.cap + 65536);
    size_t k = fread(lg.buf + lg.len, 1, lg.cap - lg.len - 1, lg.f);
    lg.len += k;
    lg.buf[lg.len] = '\0';
    if (!k) {
      clearerr(lg.f);
      usleep(2000);
    }
  }
}

typedef struct {
  size_t sessions, relayed, proto_closed, bytes_in, bytes_back;
  size_t failures;
  char first_failure[400];
} tally;

static void failed(tally *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failed(tally *t, const char *fmt, ...) {
  char msg[sizeof t->first_failure];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (!t->failures++) memcpy(t->first_failure, msg, sizeof msg);
  if (t->failures <= 10) printf("  replay failure: %s\n", msg); /* the first few, for the log */
}

/* One hostile session: the stream in whole or cut, FIN, all that comes
 * back until gangway's end, judged against the framing engine. */
static void replay_one(int port, const gw_framing *f, const input *in, bool cut, uint64_t seed,
                       tally *t) {
  static uint8_t back[2 * INPUT_MAX + 1];
  int fd = it_connect(port);
  if (fd < 0) {
    failed(t, "%s on %s: cannot connect: %s", in->name, f->name, strerror(errno));
    return;
  }
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &alen);
  char client[64];
  snprintf(client, sizeof client, "127.0.0.1:%d", ntohs(a.sin_port));
  t->sessions++;
  t->bytes_in += in->len;

  /* Writes may fail once gangway has closed for a protocol error. */
  uint8_t r[1];
  for (size_t off = 0; off < in->len;) {
    size_t n = in->len - off;
    if (cut) {
      it_fill(r, 1, seed + off);
      n = n < (size_t)(1 + r[0] % 16) ? n : (size_t)(1 + r[0] % 16);
    }
    if (it_send_all(fd, in->data + off, n) < 0) break;
    off += n;
  }
  shutdown(fd, SHUT_WR);
  size_t got = 0;
  uint64_t deadline = it_now_ms() + 5000;
  bool ended = false;
  while (!ended && it_now_ms() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(deadline - it_now_ms())) <= 0) break;
    ssize_t k = recv(fd, back + got, sizeof back - got, 0);
    if (k > 0) got += (size_t)k;
    else ended = true; /* FIN, or RST after a protocol error */
  }
  close(fd);
  t->bytes_back += got;

  bool proto;
  size_t want = expect(f, in->data, in->len, &proto);
  char reason[256];
  bool closed = find_reason(client, reason, sizeof reason, 3000);
  const char *mode = cut ? "cut" : "whole";
  if (!ended) failed(t, "%s (%s) on %s: no end from gangway in 5 s", in->name, mode, f->name);
  else if (!closed) failed(t, "%s (%s) on %s: no close line for %s", in->name, mode, f->name, client);
  else if (got > want || memcmp(back, in->data, got < in->len ? got : in->len)) {
    if (getenv("GW_REPLAY_DUMP") && !t->failures) {
      FILE *d = fopen(getenv("GW_REPLAY_DUMP"), "wb");
      if (d) fwrite(back, 1, got, d), fclose(d);
    }
    failed(t, "%s (%s) on %s: %zu bytes came back, %zu expected, first wrong at %zu", in->name,
           mode, f->name, got, want, got > want ? want : got);
  }
  else if (proto && !strstr(reason, "protocol error"))
    failed(t, "%s (%s) on %s: invalid at %zu but closed with \"%s\"", in->name, mode, f->name,
           want, reason);
  else if (!proto && (got != want || strstr(reason, "protocol error")))
    failed(t, "%s (%s) on %s: valid, %zu of %zu bytes came back, reason \"%s\"", in->name, mode,
           f->name, got, want, reason);
  else if (proto)
    t->proto_closed++;
  else
    t->relayed++;
}

/* Every input on every framing again, CONCURRENT sessions at a time, so that
 * gangway's pooled buffers serve many sessions in turn: each must get back
 * exactly its own bytes (the close reasons were checked one by one above). */
#define CONCURRENT 64

typedef struct {
  int fd;
  size_t job, got, want, cap;
  bool proto;
  uint8_t *back;
} slot;

static void judge(tally *t, slot *sl, const input *in, const char *framing, bool ended) {
  t->sessions++;
  t->bytes_in += in->len;
  t->bytes_back += sl->got;
  if (!ended)
    failed(t, "%s (concurrent) on %s: no end from gangway in time", in->name, framing);
  else if (sl->got > sl->want || memcmp(sl->back, in->data, sl->got))
    failed(t, "%s (concurrent) on %s: %zu bytes came back, %zu expected, not its own", in->name,
           framing, sl->got, sl->want);
  else if (!sl->proto && sl->got != sl->want)
    failed(t, "%s (concurrent) on %s: valid, %zu of %zu bytes came back", in->name, framing,
           sl->got, sl->want);
  else if (sl->proto)
    t->proto_closed++;
  else
    t->relayed++;
  close(sl->fd);
  free(sl->back);
  memset(sl, 0, sizeof *sl);
  sl->fd = -1;
}

static void replay_concurrent(const int *ports, size_t ninput, tally *t, uint64_t deadline) {
  static slot sl[CONCURRENT];
  for (int i = 0; i < CONCURRENT; i++) sl[i].fd = -1;
  size_t next = 0, njobs = ninput * NFRAMINGS;
  int busy = 0;
  while ((next < njobs || busy) && it_now_ms() < deadline) {
    for (int i = 0; i < CONCURRENT && next < njobs; i++) {
      if (sl[i].fd >= 0) continue;
      size_t job = next++;
      const input *in = &inputs[job / NFRAMINGS];
      int k = (int)(job % NFRAMINGS);
      gw_framing f;
      gw_framing_preset(framings[k], &f);
      slot *x = &sl[i];
      x->job = job;
      x->want = expect(&f, in->data, in->len, &x->proto);
      x->cap = in->len + 1;
      x->back = malloc(x->cap);
      x->fd = it_connect(ports[k]);
      if (x->fd < 0) {
        failed(t, "%s (concurrent) on %s: cannot connect", in->name, framings[k]);
        free(x->back);
        x->back = NULL;
        continue;
      }
      it_send_all(x->fd, in->data, in->len); /* may fail after a protocol error */
      shutdown(x->fd, SHUT_WR);
      fcntl(x->fd, F_SETFL, O_NONBLOCK);
      busy++;
    }
    struct pollfd p[CONCURRENT];
    for (int i = 0; i < CONCURRENT; i++) p[i] = (struct pollfd){.fd = sl[i].fd, .events = POLLIN};
    if (poll(p, CONCURRENT, 100) <= 0) continue;
    for (int i = 0; i < CONCURRENT; i++) {
      slot *x = &sl[i];
      if (x->fd < 0 || !p[i].revents) continue;
      ssize_t k = recv(x->fd, x->back + x->got, x->cap - x->got, 0);
      if (k > 0) {
        x->got += (size_t)k;
        if (x->got < x->cap) continue; /* more than was sent: judged wrong at the end */
      } else if (k < 0 && errno == EAGAIN) {
        continue;
      }
      judge(t, x, &inputs[x->job / NFRAMINGS], framings[x->job % NFRAMINGS], true);
      busy--;
    }
  }
  for (int i = 0; i < CONCURRENT; i++)
    if (sl[i].fd >= 0) judge(t, &sl[i], &inputs[sl[i].job / NFRAMINGS], framings[sl[i].job % NFRAMINGS], false);
}

static void test_corpus_replay(void **state) {
  (void)state;
  signal(SIGPIPE, SIG_IGN);
  int seeds = load_dir(GW_SOURCE_DIR "/fuzz/corpus/frame", true, INT32_MAX);
  int found = load_dir(GW_SOURCE_DIR "/build-fuzz/corpus/frame", false, FOUND_MAX);
  assert_true(seeds > 0);

  int up_port, ports[NFRAMINGS];
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  char listeners[4096] = "";
  for (int i = 0; i < NFRAMINGS; i++) {
    ports[i] = it_free_port();
    size_t l = strlen(listeners);
    snprintf(listeners + l, sizeof listeners - l,
             "    { name = \"%s\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\","
             " framing = \"%s\" },\n",
             framings[i], ports[i], up_port, framings[i]);
  }
  it_gangway g;
  it_gangway_start(&g, ports[0],
                   "return {\n  listeners = {\n%s  },\n"
                   "  timeouts = { drain_ms = 2000 },\n"
                   "  log = { session_lines_per_s = 0 },\n"
                   "  control = \"gangway.sock\",\n}\n",
                   listeners);
  char sock[256];
  snprintf(sock, sizeof sock, "%s/gangway.sock", g.dir);
  lg.f = fopen(g.log, "r");
  assert_non_null(lg.f);
  gw_framing by_framing;
  gw_framing_preset("u16be", &by_framing);
  it_bystander *by = it_bystander_start("127.0.0.2", ports[1], &by_framing, 0);

  tally t = {0};
  uint64_t t0 = it_now_ms();
  size_t tried = 0;
  bool dead = false;
  for (size_t i = 0; i < ninputs && !dead && it_now_ms() - t0 < BUDGET_MS; i++) {
    for (int k = 0; k < NFRAMINGS; k++) {
      gw_framing f;
      gw_framing_preset(framings[k], &f);
      replay_one(ports[k], &f, &inputs[i], false, 0, &t);
      replay_one(ports[k], &f, &inputs[i], true, i * 7919 + (size_t)k, &t);
    }
    tried++;
    int status;
    dead = waitpid(g.pid, &status, WNOHANG) == g.pid;
    if (dead) g.pid = 0;
  }
  size_t one_by_one = t.sessions;
  if (!dead) replay_concurrent(ports, tried, &t, t0 + 2 * BUDGET_MS);
  int status;
  if (!dead && waitpid(g.pid, &status, WNOHANG) == g.pid) dead = true, g.pid = 0;
  uint64_t took = it_now_ms() - t0;

  it_bystander_result br;
  it_bystander_stop(by, &br);
  char js[4096] = "";
  int answered = dead ? -1 : it_control(sock, "stats", js, sizeof js, 3000);
  long hwm = dead ? -1 : it_hwm_kb(g.pid);
  int code = dead ? -1 : it_gangway_stop(&g, SIGTERM, 5000);
  it_server_stop(up);
  fclose(lg.f);
  free(lg.buf);

  printf("  replay: corpus_files=%d (+%d from build-fuzz) inputs=%zu of %zu sessions=%zu"
         " (%zu one by one, the rest %d at a time) relayed=%zu"
         " protocol_error_closes=%zu bytes_in=%zu bytes_back=%zu failures=%zu in %" PRIu64
         " ms%s%s\n",
         seeds, found, tried, ninputs, t.sessions, one_by_one, CONCURRENT, t.relayed, t.proto_closed, t.bytes_in,
         t.bytes_back, t.failures, took, t.failures ? " first_failure: " : "", t.first_failure);
  char what[128];
  snprintf(what, sizeof what, "%zu_inputs_x_%d_framings_x_whole,cut,concurrent=%zu_sessions",
           tried, NFRAMINGS, t.sessions);
  it_bystander_report("replay frame_corpus", what, hwm, &br, 2000);
  if (dead) fail_msg("gangway died during the replay");
  assert_true(answered > 0);
  assert_int_equal(code, 0);
  if (t.failures) fail_msg("%zu sessions wrong, first: %s", t.failures, t.first_failure);
  assert_int_equal(tried, ninputs); /* every input was tried within the budget */
  for (size_t i = 0; i < ninputs; i++) free(inputs[i].data);
  free(inputs);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_corpus_replay)};
  return cmocka_run_group_tests_name("fuzzing corpus through gangway", tests, NULL, NULL);
}
