/* script_bench.c: the cost of a handler call. Streams 64-byte top frames
 * through a session's pipeline (pipe.c: the framer, gw_handlers_want, then
 * the script layer's runs of handled frames or the zero-copy pass, as the
 * relay drives it), in inputs of READ frames (16: what one read holds in
 * bench/run.sh's small scenario), with a host that only counts what it is
 * given and a histogram of handler times (as each listener has), and
 * prints frames/s and ns/frame for handlers of increasing weight, against
 * the same path with no handler. The frames are CM_SAY
 * lines (a 53-byte text), and the listener has a protocol defining CM_SAY,
 * so packets by name (pkt:decode, pkt:encode) compare with the offset API.
 *
 *   build/bench/script_bench [seconds per case, default 1] [case number]
 *
 * GW_BENCH_READ=N: N frames per input (default 16); GW_BENCH_PER_FRAME=1:
 * gw_script_frame frame by frame, without the pipeline (no runs). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "pipe.h"
#include "script.h"

#define FRAME 64
#define BATCH 1024 /* frames per pass over the buffer */

static uint64_t emitted, emitted_bytes;

static int emit(gw_script_session *ss, gw_side to, const uint8_t *data,
                size_t len) {
  (void)ss;
  (void)to;
  (void)data;
  emitted++;
  emitted_bytes += len;
  return 0;
}

static int drv_out(void *ud, gw_side to, const uint8_t *p, size_t len) {
  return emit(ud, to, p, len);
}

static const gw_pipe_driver driver = {drv_out, drv_out, NULL, NULL, NULL};

static void close_session(gw_script_session *ss, const char *reason) {
  (void)ss;
  fprintf(stderr, "session closed: %s\n", reason);
  exit(1);
}

static uint64_t now_ms(void *host) {
  (void)host;
  return 0;
}

static void wake_at(void *host, uint64_t when) {
  (void)host;
  (void)when;
}

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct bench_case {
  const char *name;
  const char *script; /* NULL: no script */
} bench_case;

static const bench_case cases[] = {
  {"no handler (zero-copy pass)", NULL},
  {"handler on another opcode", "gw.on('client', 2, function() end)"},
  {"no-op handler on every frame", "gw.on('client', '*', function() end)"},
  {"no-op handler on the opcode", "gw.on('client', 1, function() end)"},
  {"reads a field", "gw.on('client', 1, function(pkt) local x = pkt:u16(8) end)"},
  {"reads opcode + session.state",
   "gw.on('client', 1, function(pkt, s) local st = s.state; st.n = (st.n or 0) + pkt.opcode end)"},
  {"edits in place (set_u8)", "gw.on('client', 1, function(pkt) pkt:set_u8(10, 65) end)"},
  {"rewrites (set_body, +8 bytes)",
   "gw.on('client', 1, function(pkt) pkt:set_body(pkt:body() .. '12345678') end)"},
  {"drops", "gw.on('client', 1, function() return gw.DROP end)"},
  {"injects one frame", "local f = gw.packet(501, 'x')\n"
                        "gw.on('client', 1, function(pkt, s) s:send_to_client(f) end)"},
  {"CM_SAY: str (offset API)", "gw.on('client', 1, function(pkt) local t = pkt:str(8) end)"},
  {"CM_SAY: decode (by name)",
   "gw.on('client', 'CM_SAY', function(pkt) local t = pkt:decode().text end)"},
  {"CM_SAY: str + set_body (offsets)",
   "gw.on('client', 1, function(pkt)\n"
   "  pkt:set_body(gw.writer():str(pkt:str(8):upper())) end)"},
  {"CM_SAY: decode + encode (names)",
   "gw.on('client', 'CM_SAY', function(pkt)\n"
   "  pkt:encode{ text = pkt:decode().text:upper() } end)"},
};

/* The protocol of the CM_SAY cases: a directory with a packets.lua. */
static const char packets_lua[] =
    "return { CM_SAY = { side = 'client', opcode = 1, 'str text' } }\n";

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 1.0;
  if (secs <= 0) secs = 1.0;
  int only = argc > 2 ? atoi(argv[2]) : -1;
  const char *env = getenv("GW_BENCH_READ");
  uint32_t read_frames = env && atoi(env) > 0 ? (uint32_t)atoi(env) : 16;
  env = getenv("GW_BENCH_PER_FRAME");
  bool per_frame = env && *env && strcmp(env, "0");
  gw_log_setup(GW_LOG_WARN, GW_LOG_TEXT);

  /* BATCH frames of 64 bytes, opcode 1: CM_SAY, str(53 letters) */
  gw_framing f;
  gw_framing_preset("top", &f);
  static uint8_t stream[BATCH * FRAME], work[BATCH * FRAME];
  for (int i = 0; i < BATCH; i++) {
    uint8_t body[FRAME - 8];
    memset(body, 'a' + i % 26, sizeof body);
    body[0] = 0;
    body[1] = (uint8_t)(sizeof body - 2); /* the length counts the NUL */
    body[sizeof body - 1] = 0;
    if (gw_frame_build(&f, GW_CLIENT, stream + i * FRAME, FRAME, 1, body,
                       sizeof body) != FRAME)
      return fprintf(stderr, "cannot build a frame\n"), 1;
  }

  char path[] = "/tmp/gangway-bench-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return perror("mkstemp"), 1;
  close(fd);
  char proto_dir[] = "/tmp/gangway-bench-proto-XXXXXX", packets[64];
  if (!mkdtemp(proto_dir)) return perror("mkdtemp"), 1;
  snprintf(packets, sizeof packets, "%s/packets.lua", proto_dir);
  FILE *pf = fopen(packets, "w");
  if (!pf || fputs(packets_lua, pf) < 0 || fclose(pf)) return perror(packets), 1;

  gw_host_ops ops = {.emit = emit, .close = close_session, .now_ms = now_ms,
                     .wake_at = wake_at};
  gw_script_limits lim = {.handler_instructions = 1000000,
                          .memory_bytes = 64u << 20};
  /* What a handler time's clock read costs (one per handled frame). */
  enum { READS = 2000000 };
  volatile uint64_t sink = 0;
  double c0 = seconds();
  for (int i = 0; i < READS; i++) sink += gw_ticks();
  double c1 = seconds();
  for (int i = 0; i < READS; i++) sink += gw__clock_mono_ns();
  double c2 = seconds();
  printf("clock read: %s %.1f ns, clock_gettime(CLOCK_MONOTONIC) %.1f ns\n",
         gw_clock_is_tsc() ? "TSC" : "CLOCK_MONOTONIC (no invariant TSC)",
         (c1 - c0) / READS * 1e9, (c2 - c1) / READS * 1e9);
  (void)sink;

  double base = 0;
  printf("%-32s %12s %10s %8s\n", "case (64-byte frames)", "frames/s", "ns/frame",
         "vs none");
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    if (only >= 0 && (size_t)only != c) continue;
    FILE *fp = fopen(path, "w");
    if (!fp) return perror(path), 1;
    fprintf(fp, "local gw = require 'gangway'\n%s\n",
            cases[c].script ? cases[c].script : "");
    fclose(fp);
    char *scripts[] = {path};
    gw_listener_config lc = {.name = "bench", .framing = f, .scripts = scripts,
                             .nscripts = 1, .on_error = GW_ON_ERROR_PASS,
                             .protocol = "bench", .protocol_dir = proto_dir};
    gw_config cfg = {.listeners = &lc, .nlisteners = 1};
    gw_script *s = gw_script_new(&lim, &ops, NULL);
    char err[256];
    if (!s || gw_script_load(s, &cfg, err, sizeof err))
      return fprintf(stderr, "%s: %s\n", cases[c].name, err), 1;
    gw_handlers *h = gw_script_handlers(s, "bench");
    /* The framing frames are cut with, as the relay's pipeline gives it. */
    gw_script_session ss = {.id = 1};
    gw_pipe pipe;
    gw_pipe_init(&pipe, &f, s, &ss, &driver, &ss);
    for (int i = 0; i < GW_SIDES; i++) ss.framing[i] = &pipe.side[i].framing;
    snprintf(ss.client, sizeof ss.client, "127.0.0.1:1");
    if (gw_script_session_open(s, h, &ss)) return 1;

    /* Handlers are timed into the listener's histogram, as in the relay. */
    static struct {
      gw_histogram h;
      uint64_t counts[64];
    } hist;
    hist.h.bounds = GW_HANDLER_BUCKETS_US;
    hist.h.nbounds = GW_HANDLER_NBUCKETS;
    gw_script_set_handler_histogram(s, &hist.h);

    uint64_t frames = 0;
    emitted = 0;
    double t0 = seconds(), t1;
    do {
      /* The relay hands Lua its read buffer; edits land in it. */
      memcpy(work, stream, sizeof work);
      if (per_frame) {
        size_t pos = 0;
        while (pos < sizeof work) {
          gw_frame_info fi;
          if (gw_frame_next(&f, GW_CLIENT, work + pos, sizeof work - pos, &fi) != 1)
            return fprintf(stderr, "framing failed\n"), 1;
          if (gw_handlers_want(h, GW_CLIENT, &fi)) {
            gw_script_frame(s, &ss, GW_CLIENT, work + pos, &fi);
            gw_script_run_end(s); /* a run of one */
          } else
            emit(&ss, GW_SERVER, work + pos, fi.len);
          pos += fi.len;
        }
      } else {
        for (uint32_t pos = 0; pos < sizeof work;) {
          uint32_t end = pos + read_frames * FRAME;
          if (end > sizeof work) end = sizeof work;
          if (gw_pipe_input(&pipe, GW_CLIENT, work, &pos, end) || pos != end)
            return fprintf(stderr, "%s: the pipeline stopped\n", cases[c].name), 1;
        }
      }
      frames += BATCH;
      t1 = seconds();
    } while (t1 - t0 < secs);
    double rate = (double)frames / (t1 - t0);
    if (c == 0) base = rate;
    if (getenv("GW_BENCH_FRAMES")) fprintf(stderr, "frames %llu\n", (unsigned long long)frames);
    printf("%-32s %12.0f %10.1f %7.2fx\n", cases[c].name, rate, 1e9 / rate,
           rate / base);
    gw_script_stats st;
    gw_script_get_stats(s, &st);
    if (st.errors) return fprintf(stderr, "%s: handler errors\n", cases[c].name), 1;
    gw_script_session_close(s, &ss, "done");
    gw_pipe_free(&pipe);
    gw_script_free(s);
  }
  unlink(path);
  unlink(packets);
  rmdir(proto_dir);
  return 0;
}
