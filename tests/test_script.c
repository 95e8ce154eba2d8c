/* test_script.c: unit tests for the script layer (src/script*.c) through
 * include/script.h, with a fake host that records what it is asked to do:
 * the exactness of the dispatch bitmaps, emit order and zero-copy, the
 * on_error policies, the instruction and memory limits, reload atomicity,
 * timers on the host's clock, and safety of calls after a session ends. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "metrics.h"
#include "script.h"

/* ---- the fake host ---- */

#define MAX_EMITS 64

typedef struct emitted {
  gw_script_session *ss;
  gw_side to;
  const uint8_t *ptr; /* as given: to tell zero-copy from copies */
  uint8_t data[256];
  size_t len;
} emitted;

typedef struct fake_host {
  emitted emits[MAX_EMITS];
  int nemits;
  int closes;
  char close_reason[128];
  gw_script_session *closed_ss;
  uint64_t now, wake;
  int wakes;
  int room;  /* emits accepted before -ENOBUFS (write_max); 0: no limit,
                -1: none */
} fake_host;

static fake_host host;

static int h_emit(gw_script_session *ss, gw_side to, const uint8_t *data,
                  size_t len) {
  if (host.room && host.nemits >= host.room) return -ENOBUFS;
  assert_true(host.nemits < MAX_EMITS);
  assert_true(len <= sizeof host.emits[0].data);
  emitted *e = &host.emits[host.nemits++];
  e->ss = ss;
  e->to = to;
  e->ptr = data;
  memcpy(e->data, data, len);
  e->len = len;
  return 0;
}

static void h_close(gw_script_session *ss, const char *reason) {
  host.closes++;
  host.closed_ss = ss;
  snprintf(host.close_reason, sizeof host.close_reason, "%s", reason);
}

static uint64_t h_now(void *ud) { return ((fake_host *)ud)->now; }

static void h_wake_at(void *ud, uint64_t when) {
  fake_host *h = ud;
  h->wake = when;
  h->wakes++;
}

static const gw_host_ops ops = {h_emit, h_close, h_now, h_wake_at, NULL, NULL, NULL};

/* Log lines, to check what errors say. */
static char logbuf[16384];

static void sink(gw_log_level level, const char *line, void *ud) {
  (void)level;
  (void)ud;
  size_t n = strlen(logbuf);
  snprintf(logbuf + n, sizeof logbuf - n, "%s\n", line);
}

/* ---- fixtures ---- */

typedef struct fixture {
  char dir[64];
  char path[128];
  gw_listener_config lc;
  char *scripts[1];
  gw_config cfg;
  gw_script *s;
  gw_handlers *h;
  gw_script_session ss;
} fixture;

static void write_script(fixture *f, const char *source) {
  FILE *fp = fopen(f->path, "w");
  assert_non_null(fp);
  fprintf(fp, "local gw = require 'gangway'\n%s\n", source);
  fclose(fp);
}

/* A state with one `top` listener "t" running source; limits given. */
static fixture *start(const char *source, gw_on_error on_error,
                      uint64_t instructions, size_t memory) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  memset(&host, 0, sizeof host);
  logbuf[0] = 0;
  gw_log_setup(GW_LOG_DEBUG, GW_LOG_TEXT);
  gw_log_set_sink(sink, NULL);
  snprintf(f->dir, sizeof f->dir, "/tmp/gw-test-script-XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  snprintf(f->path, sizeof f->path, "%s/handler.lua", f->dir);
  write_script(f, source);
  f->scripts[0] = f->path;
  f->lc.name = "t";
  assert_int_equal(gw_framing_preset("top", &f->lc.framing), 0);
  f->lc.scripts = f->scripts;
  f->lc.nscripts = 1;
  f->lc.on_error = on_error;
  f->cfg.listeners = &f->lc;
  f->cfg.nlisteners = 1;
  gw_script_limits lim = {instructions, memory};
  f->s = gw_script_new(&lim, &ops, &host);
  assert_non_null(f->s);
  char err[256] = "";
  int rc = gw_script_load(f->s, &f->cfg, err, sizeof err);
  if (rc) fail_msg("load: %s", err);
  f->h = gw_script_handlers(f->s, "t");
  assert_non_null(f->h);
  f->ss.id = 1;
  snprintf(f->ss.client, sizeof f->ss.client, "127.0.0.1:4000");
  return f;
}

static void stop(fixture *f) {
  gw_script_session_close(f->s, &f->ss, "end of test");
  gw_script_free(f->s);
  unlink(f->path);
  rmdir(f->dir);
  gw_log_set_sink(NULL, NULL);
  free(f);
}

/* A top frame: opcode + body. */
static size_t frame(uint8_t *out, size_t cap, uint32_t opcode, const char *body) {
  gw_framing top;
  gw_framing_preset("top", &top);
  long n = gw_frame_build(&top, GW_CLIENT, out, cap, opcode,
                          (const uint8_t *)body, strlen(body));
  assert_true(n > 0);
  return (size_t)n;
}

/* Hands one frame of session ss from side to the script layer, as the
 * relay does. */
static int feed_session(fixture *f, gw_script_session *ss, gw_side side,
                        uint8_t *buf, size_t len) {
  gw_frame_info fi;
  assert_int_equal(gw_frame_next(&f->h->framing, side, buf, len, &fi), 1);
  assert_int_equal(fi.len, len);
  if (!gw_handlers_want(f->h, side, &fi)) return h_emit(ss, !side, buf, len);
  return gw_script_frame(f->s, ss, side, buf, &fi);
}

static int feed(fixture *f, gw_side side, uint8_t *buf, size_t len) {
  return feed_session(f, &f->ss, side, buf, len);
}

static gw_script_stats stats(fixture *f) {
  gw_script_stats st;
  gw_script_get_stats(f->s, &st);
  return st;
}

/* ---- tests ---- */

static void test_want_is_exact(void **state) {
  (void)state;
  fixture *f = start("gw.on('client', {1, 300, 65535}, function() end)\n"
                     "gw.on('server', '*', function() end)",
                     GW_ON_ERROR_PASS, 1000000, 0);
  assert_non_null(gw_script_session_open(f->s, f->h, &f->ss) == 0 ? f : NULL);
  for (uint32_t op = 0; op < 65536; op++) {
    gw_frame_info fi = {.has_opcode = true, .opcode = op};
    bool want = op == 1 || op == 300 || op == 65535;
    if (gw_handlers_want(f->h, GW_CLIENT, &fi) != want)
      fail_msg("client opcode %u: want %d", op, !want);
    assert_true(gw_handlers_want(f->h, GW_SERVER, &fi));
  }
  gw_frame_info keepalive = {.has_opcode = false};
  assert_false(gw_handlers_want(f->h, GW_CLIENT, &keepalive));
  assert_true(gw_handlers_want(f->h, GW_SERVER, &keepalive));
  assert_false(f->h->wide[GW_CLIENT]);
  stop(f);
}

static void test_no_handlers_want_nothing(void **state) {
  (void)state;
  fixture *f = start("", GW_ON_ERROR_PASS, 1000000, 0);
  gw_frame_info fi = {.has_opcode = true, .opcode = 1};
  assert_false(gw_handlers_want(f->h, GW_CLIENT, &fi));
  assert_false(gw_handlers_want(f->h, GW_SERVER, &fi));
  assert_false(gw_handlers_want(NULL, GW_SERVER, &fi));
  stop(f);
}

/* A passed frame is the relay's own bytes (zero-copy); a rebuilt one is
 * not; injected frames follow the frame, in order. */
static void test_emit_order_and_zero_copy(void **state) {
  (void)state;
  fixture *f = start(
      "gw.on('client', 1, function(pkt, s)\n"
      "  s:send_to_client(gw.packet(501, 'a'))\n"
      "  s:send_to_server(gw.packet(502, 'b'))\n"
      "  if pkt:str(8) == 'grow' then pkt:set_body(gw.writer():str('grown!')) end\n"
      "  pkt:set_u8(2, 0x81)\n"
      "end)",
      GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[64], body[16] = {0, 3, 'h', 'i', 0};
  size_t n = frame(buf, sizeof buf, 1, "");
  memcpy(buf + n, body, 5);
  buf[1] = (uint8_t)(n + 5);
  n += 5;
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  assert_int_equal(host.nemits, 3);
  assert_ptr_equal(host.emits[0].ptr, buf); /* the frame itself, edited */
  assert_int_equal(host.emits[0].to, GW_SERVER);
  assert_int_equal(buf[2], 0x81);
  assert_int_equal(host.emits[1].to, GW_CLIENT);
  assert_int_equal(host.emits[1].data[7], 501 & 0xff);
  assert_int_equal(host.emits[2].to, GW_SERVER);
  assert_int_equal(host.emits[2].data[7], 502 & 0xff);

  host.nemits = 0;
  uint8_t grow[64];
  size_t g = frame(grow, sizeof grow, 1, "");
  memcpy(grow + g, "\0\5grow\0", 7);
  grow[1] = (uint8_t)(g + 7);
  g += 7;
  assert_int_equal(feed(f, GW_CLIENT, grow, g), 0);
  assert_int_equal(host.nemits, 3);
  assert_ptr_not_equal(host.emits[0].ptr, grow); /* rebuilt: a copy */
  assert_int_equal(host.emits[0].len, g + 2);
  assert_int_equal(host.emits[0].data[1], g + 2); /* length recomputed */
  assert_int_equal(host.emits[0].data[2], 0x81);
  assert_memory_equal(host.emits[0].data + 10, "grown!", 7);
  gw_script_stats st = stats(f);
  assert_int_equal(st.frames, 2);
  assert_int_equal(st.replaced, 1);
  assert_int_equal(st.injected, 4);
  stop(f);
}

static void test_on_error_policies(void **state) {
  (void)state;
  static const char *src = "gw.on('client', 1, function() error('boom') end)";
  for (int policy = GW_ON_ERROR_PASS; policy <= GW_ON_ERROR_CLOSE; policy++) {
    fixture *f = start(src, (gw_on_error)policy, 1000000, 0);
    assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
    uint8_t buf[32];
    size_t n = frame(buf, sizeof buf, 1, "x");
    int rc = feed(f, GW_CLIENT, buf, n);
    assert_int_equal(stats(f).errors, 1);
    assert_non_null(strstr(logbuf, "handler.lua:2: boom"));
    assert_non_null(strstr(logbuf, "client frame 1 of session 1"));
    switch (policy) {
    case GW_ON_ERROR_PASS:
      assert_int_equal(rc, 0);
      assert_int_equal(host.nemits, 1);
      assert_ptr_equal(host.emits[0].ptr, buf);
      break;
    case GW_ON_ERROR_DROP:
      assert_int_equal(rc, 0);
      assert_int_equal(host.nemits, 0);
      assert_int_equal(stats(f).dropped, 1);
      break;
    case GW_ON_ERROR_CLOSE:
      assert_int_equal(rc, -ECONNRESET);
      assert_int_equal(host.nemits, 0);
      assert_int_equal(host.closes, 1);
      assert_string_equal(host.close_reason, "handler error");
      /* the host has not released it yet: more frames are refused */
      assert_int_equal(feed(f, GW_CLIENT, buf, n), -ECONNRESET);
      assert_int_equal(stats(f).frames, 1);
      break;
    }
    stop(f);
  }
}

static void test_instruction_limit(void **state) {
  (void)state;
  fixture *f = start(
      "gw.on('client', 1, function()\n"
      "  while true do pcall(function() while true do end end) end\n"
      "end)\n"
      "gw.on('client', 2, function(pkt) pkt:set_u8(8, 7) end)",
      GW_ON_ERROR_DROP, 50000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[32], ok[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  assert_int_equal(host.nemits, 0);
  gw_script_stats st = stats(f);
  assert_int_equal(st.errors, 1);
  assert_int_equal(st.timeouts, 1);
  assert_non_null(strstr(logbuf, "instruction limit exceeded (50000 per call)"));
  size_t m = frame(ok, sizeof ok, 2, "x");
  assert_int_equal(feed(f, GW_CLIENT, ok, m), 0);
  assert_int_equal(host.nemits, 1);
  assert_int_equal(ok[8], 7);
  stop(f);
}

/* A deep recursion is stopped near GW_MAX_DEPTH levels whatever the
 * instruction limit, with an error on_error applies to; the state goes on. */
static void test_stack_depth_limit(void **state) {
  (void)state;
  fixture *f = start(
      "local deepest = 0\n"
      "local function f(n) deepest = n return f(n + 1) + 1 end\n"
      "gw.on('client', 1, function() return f(1) end)\n"
      "gw.on('client', 2, function(pkt) pkt:set_body(tostring(deepest)) end)",
      GW_ON_ERROR_CLOSE, UINT64_C(1000000000), 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[32], ok[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), -ECONNRESET);
  assert_int_equal(host.nemits, 0);
  assert_int_equal(host.closes, 1);
  assert_string_equal(host.close_reason, "handler error");
  gw_script_stats st = stats(f);
  assert_int_equal(st.errors, 1);
  assert_int_equal(st.timeouts, 0);
  assert_non_null(strstr(logbuf, "handler.lua:3: stack depth limit exceeded "
                                 "(1000 levels)"));
  /* a second session of the same state still runs its handlers */
  gw_script_session other = {.id = 2};
  assert_int_equal(gw_script_session_open(f->s, f->h, &other), 0);
  size_t m = frame(ok, sizeof ok, 2, "");
  assert_int_equal(feed_session(f, &other, GW_CLIENT, ok, m), 0);
  assert_int_equal(host.nemits, 1);
  /* the depth it reached (the body, after top's 8-byte header): within a
   * hook interval of the limit */
  const emitted *e = &host.emits[0];
  char depth[16] = "";
  assert_true(e->len > 8 && e->len - 8 < sizeof depth);
  memcpy(depth, e->data + 8, e->len - 8);
  long d = strtol(depth, NULL, 10);
  if (d < 990 || d > 2000) fail_msg("reached %ld levels", d);
  gw_script_session_close(f->s, &other, "end of test");
  stop(f);
}

/* The host refuses what does not fit under write_max (-ENOBUFS): a sent
 * frame is dropped and counted, the session goes on; a frame that must pass
 * closes it. */
static void test_output_limit(void **state) {
  (void)state;
  fixture *f = start(
      "gw.on('client', 1, function(pkt, s)\n"
      "  for i = 1, 3 do s:send_to_client(gw.packet(501, 'a')) end\n"
      "end)",
      GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  host.room = 2; /* the frame and one send */
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  assert_int_equal(host.nemits, 2);
  assert_ptr_equal(host.emits[0].ptr, buf);
  assert_int_equal(host.emits[1].to, GW_CLIENT);
  gw_script_stats st = stats(f);
  assert_int_equal(st.injected, 1);
  assert_int_equal(st.injected_refused, 2);
  assert_int_equal(host.closes, 0);
  assert_int_equal(st.errors, 0);

  /* no room for the frame itself */
  host.nemits = 0;
  host.room = -1;
  assert_int_equal(feed(f, GW_CLIENT, buf, n), -ECONNRESET);
  assert_int_equal(host.nemits, 0);
  assert_int_equal(host.closes, 1);
  assert_string_equal(host.close_reason,
                      "output limit exceeded toward the server side");
  assert_int_equal(stats(f).injected_refused, 5);
  stop(f);
}

static void test_memory_cap(void **state) {
  (void)state;
  fixture *f = start(
      "local keep = {}\n"
      "gw.on('client', 1, function()\n"
      "  while true do pcall(function() keep[#keep + 1] = ('x'):rep(1000) .. #keep end) end\n"
      "end)\n"
      "gw.on('client', 2, function() keep = {} end)",
      GW_ON_ERROR_PASS, 100000000, 4u << 20);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  gw_script_stats st = stats(f);
  assert_int_equal(st.errors, 1);
  assert_true(st.memory_bytes <= 4u << 20);
  assert_non_null(strstr(logbuf, "not enough memory (the scripts' limit is 4 MiB)"));
  assert_int_equal(host.nemits, 1); /* on_error = pass */
  n = frame(buf, sizeof buf, 2, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  assert_int_equal(stats(f).errors, 1);
  stop(f);
}

static void test_tiny_memory_limit_fails_cleanly(void **state) {
  (void)state;
  gw_log_set_sink(sink, NULL);
  gw_script_limits lim = {1000000, 16 * 1024};
  assert_null(gw_script_new(&lim, &ops, &host));
  gw_log_set_sink(NULL, NULL);
}

/* A failing reload changes nothing, not even the bitmap's address. */
static void test_reload_atomic(void **state) {
  (void)state;
  fixture *f = start("gw.on('client', 1, function() return gw.DROP end)",
                     GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t *bits = f->h->bits[GW_CLIENT];
  write_script(f, "gw.on('client', 2, function() end)\n"
                  "gw.after(5, function() error('must not run') end)\n"
                  "local x = nil + 1");
  char err[256] = "";
  assert_int_equal(gw_script_load(f->s, &f->cfg, err, sizeof err), -EINVAL);
  assert_non_null(strstr(err, "handler.lua:4: attempt to perform arithmetic on a nil value"));
  assert_ptr_equal(gw_script_handlers(f->s, "t"), f->h);
  assert_ptr_equal(f->h->bits[GW_CLIENT], bits);
  gw_frame_info one = {.has_opcode = true, .opcode = 1};
  gw_frame_info two = {.has_opcode = true, .opcode = 2};
  assert_true(gw_handlers_want(f->h, GW_CLIENT, &one));
  assert_false(gw_handlers_want(f->h, GW_CLIENT, &two));
  host.now = 10;
  gw_script_run_timers(f->s);
  assert_int_equal(stats(f).errors, 0);
  uint8_t buf[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  assert_int_equal(host.nemits, 0); /* still dropped by the old handler */

  write_script(f, "gw.on('client', 2, function() return gw.DROP end)");
  assert_int_equal(gw_script_load(f->s, &f->cfg, err, sizeof err), 0);
  assert_ptr_equal(gw_script_handlers(f->s, "t"), f->h);
  assert_false(gw_handlers_want(f->h, GW_CLIENT, &one));
  assert_true(gw_handlers_want(f->h, GW_CLIENT, &two));
  stop(f);
}

static void test_timers_follow_host_clock(void **state) {
  (void)state;
  fixture *f = start(
      "gw.on('client', 1, function(pkt, s)\n"
      "  s:every(100, function(s) s:send_to_client(gw.packet(501, 'tick')) end)\n"
      "end)\n"
      "gw.after(250, function() gw.log.info('once at ' .. gw.now()) end)",
      GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(host.wake, 250);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  assert_int_equal(host.wake, 100);
  host.nemits = 0;
  host.now = 100;
  gw_script_run_timers(f->s);
  assert_int_equal(host.nemits, 1);
  assert_int_equal(host.wake, 200);
  host.now = 260;
  gw_script_run_timers(f->s);
  assert_int_equal(host.nemits, 2);
  assert_non_null(strstr(logbuf, "handler.lua: once at 260"));
  /* the session ends: its timer with it */
  gw_script_session_close(f->s, &f->ss, "gone");
  host.now = 1000;
  gw_script_run_timers(f->s);
  assert_int_equal(host.nemits, 2);
  stop(f);
}

/* Calls after a session ended are harmless; Lua sees it as ended. */
static void test_use_after_close(void **state) {
  (void)state;
  fixture *f = start(
      "local saved\n"
      "gw.on('client', 1, function(pkt, s) saved = s; s:close('bye') end)\n"
      "gw.on('client', 2, function(pkt, s)\n"
      "  local ok, err = pcall(saved.send_to_client, saved, gw.packet(501, ''))\n"
      "  assert(not ok and err:find('session 1 has ended'), err)\n"
      "  assert(saved.id == 1 and saved.closed)\n"
      "end)\n"
      "gw.on_close(function(s, reason) gw.log.info('on_close ' .. s.id .. ' ' .. reason) end)",
      GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), -ECONNRESET);
  assert_int_equal(host.nemits, 1); /* session:close passes the frame */
  assert_int_equal(host.closes, 1);
  assert_ptr_equal(host.closed_ss, &f->ss);
  assert_string_equal(host.close_reason, "bye");
  gw_script_session_close(f->s, &f->ss, "bye");
  gw_script_session_close(f->s, &f->ss, "twice");
  assert_non_null(strstr(logbuf, "on_close 1 bye"));
  assert_null(strstr(logbuf, "twice"));
  gw_frame_info fi = {.len = n, .has_opcode = true, .opcode = 1};
  assert_int_equal(gw_script_frame(f->s, &f->ss, GW_CLIENT, buf, &fi), -ECONNRESET);
  assert_int_equal(host.nemits, 1);

  gw_script_session other = {.id = 2};
  assert_int_equal(gw_script_session_open(f->s, f->h, &other), 0);
  size_t m = frame(buf, sizeof buf, 2, "x");
  gw_frame_info fi2;
  gw_frame_next(&f->h->framing, GW_CLIENT, buf, m, &fi2);
  assert_int_equal(gw_script_frame(f->s, &other, GW_CLIENT, buf, &fi2), 0);
  assert_int_equal(stats(f).errors, 0);
  gw_script_session_close(f->s, &other, "done");
  stop(f);
}

static void test_refused_session(void **state) {
  (void)state;
  fixture *f = start("gw.on_connect(function(s)\n"
                     "  s:send_to_client(gw.packet(501, 'full'))\n"
                     "  return gw.CLOSE\n"
                     "end)\n"
                     "gw.on_close(function() error('not for refused sessions') end)",
                     GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), -ECONNREFUSED);
  assert_int_equal(host.nemits, 1);
  assert_int_equal(host.closes, 0);
  gw_script_session_close(f->s, &f->ss, "refused");
  assert_int_equal(stats(f).errors, 0);
  stop(f);
}

/* The host may free the state with sessions still open. */
static void test_free_with_open_sessions(void **state) {
  (void)state;
  fixture *f = start("gw.on('client', 1, function(pkt, s) s:every(10, print) end)",
                     GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  uint8_t buf[32];
  size_t n = frame(buf, sizeof buf, 1, "x");
  assert_int_equal(feed(f, GW_CLIENT, buf, n), 0);
  gw_script_free(f->s);
  f->s = NULL;
  assert_null(f->ss.handlers);
  assert_true(f->ss.closed);
  unlink(f->path);
  rmdir(f->dir);
  gw_log_set_sink(NULL, NULL);
  free(f);
}

/* Per-opcode counts and the handler-time histogram, as /metrics reads them. */
typedef struct opseen {
  uint64_t frames[8], dropped[8], replaced[8], injected[8];
  int calls;
} opseen;

static void count_op(void *ud, const char *listener, gw_side side, bool has_opcode,
                     uint32_t opcode, const gw_opstat_counts *c) {
  opseen *o = ud;
  assert_string_equal(listener, "t");
  assert_true(has_opcode && opcode < 8 && side == GW_CLIENT);
  o->frames[opcode] = c->frames;
  o->dropped[opcode] = c->dropped;
  o->replaced[opcode] = c->replaced;
  o->injected[opcode] = c->injected;
  assert_int_equal(c->passed, c->frames - c->dropped - c->replaced);
  o->calls++;
}

static void test_opstats_and_handler_time(void **state) {
  (void)state;
  fixture *f = start("gw.on('client', 1, function() return gw.DROP end)\n"
                     "gw.on('client', 2, function(pkt, s)\n"
                     "  pkt:set_body('longer body')\n"
                     "  s:send_to_server(gw.packet(3, 'x'))\n"
                     "end)",
                     GW_ON_ERROR_PASS, 1000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  static const uint64_t bounds[] = {10, 100, 1000000};
  gw_histogram *h = calloc(1, sizeof *h + 4 * sizeof h->counts[0]);
  h->bounds = bounds;
  h->nbounds = 3;
  gw_script_set_handler_histogram(f->s, h);
  uint8_t buf[64];
  for (int i = 0; i < 3; i++) feed(f, GW_CLIENT, buf, frame(buf, sizeof buf, 1, "a"));
  for (int i = 0; i < 2; i++) feed(f, GW_CLIENT, buf, frame(buf, sizeof buf, 2, "b"));
  gw_script_run_end(f->s); /* as the pipeline does after each read */
  opseen o = {0};
  gw_script_foreach_opstat(f->s, count_op, &o);
  assert_int_equal(o.frames[1], 3);
  assert_int_equal(o.dropped[1], 3);
  assert_int_equal(o.frames[2], 2);
  assert_int_equal(o.replaced[2], 2);
  assert_int_equal(o.injected[3], 2); /* counted under the sent frame's opcode */
  assert_int_equal(h->count, 5);
  gw_script_set_handler_histogram(f->s, NULL);
  free(h);
  stop(f);
}

/* One run of n frames of opcode op then, back to back, m of opcode 2, as
 * the pipeline hands a read's frames over; ended as it ends them. */
static void feed_run(fixture *f, uint32_t op, int n, int m) {
  uint8_t buf[64];
  for (int i = 0; i < n + m; i++) {
    if (i) gw_script_frame_follows(f->s);
    host.nemits = 0; /* what passes is not looked at here */
    assert_int_equal(feed(f, GW_CLIENT, buf, frame(buf, sizeof buf, i < n ? op : 2, "x")), 0);
  }
  gw_script_run_end(f->s);
}

/* Frames above the first bucket: how many of the histogram's are. */
static uint64_t above_first(const gw_histogram *h) { return h->count - h->counts[0]; }

/* Two slow frames (300,000 loop turns each: milliseconds) as one run:
 * returns how many went into the first bucket. Timed as a run, it is one
 * observation of their time and one of none (1); frame by frame, none (0). */
static uint64_t slow_pair(fixture *f, gw_histogram *h) {
  uint64_t n0 = h->count, s0 = h->sum, c0 = h->counts[0];
  feed_run(f, 1, 2, 0);
  assert_int_equal(h->count - n0, 2);
  assert_true(h->sum - s0 > 2 * 10);
  return h->counts[0] - c0;
}

static void quick_runs(fixture *f, int n) {
  for (int i = 0; i < n; i++) feed_run(f, 2, 0, 1);
}

/* Frames handled back to back are timed as a run: when the run took at
 * most the first bucket's bound, so did each frame, and all go there (what
 * timing each would give); a run that took longer goes in as one
 * observation of its time and the rest of none, and runs are timed frame
 * by frame until 64 in a row had no frame past the bound. Timing on a
 * shared machine: what a preempted run changes is allowed for, never
 * assumed away. */
static void test_handler_time_runs(void **state) {
  (void)state;
  fixture *f = start("gw.on('client', 1, function() local x = 0; for i = 1, 300000 do x = x + i end end)\n"
                     "gw.on('client', 2, function() end)",
                     GW_ON_ERROR_PASS, 100000000, 0);
  assert_int_equal(gw_script_session_open(f->s, f->h, &f->ss), 0);
  static const uint64_t bounds[] = {10, 100, 1000, 1000000};
  gw_histogram *h = calloc(1, sizeof *h + 5 * sizeof h->counts[0]);
  h->bounds = bounds;
  h->nbounds = 4;
  gw_script_set_handler_histogram(f->s, h);

  /* Every run: all its frames counted, its time in the sum; one that took
   * at most 10 us has all its frames in the first bucket. */
  for (int i = 0; i < 100; i++) {
    uint64_t n0 = h->count, s0 = h->sum, c0 = h->counts[0];
    feed_run(f, 2, 0, 16);
    assert_int_equal(h->count - n0, 16);
    if (h->sum - s0 <= 10) assert_int_equal(h->counts[0] - c0, 16);
  }

  /* One slow frame among quick ones keeps its bucket, however the run is
   * timed: exactly one more above the first. */
  quick_runs(f, 70);
  uint64_t up = above_first(h), c0 = h->counts[0];
  feed_run(f, 1, 1, 3);
  assert_int_equal(above_first(h) - up, 1);
  assert_in_range(h->counts[0] - c0, 2, 3); /* 2: a quick one preempted */

  /* The switch: after 64 quick runs a run is timed as a whole (1 in the
   * first bucket); the run after it frame by frame (0), and so are runs
   * for 64 after the last one with a slow frame (63 quick runs later,
   * still 0); 64 quick runs after that, as a whole again (1). A quick run
   * preempted past 10 us counts as slow: tried 3 times. */
  bool ok = false;
  for (int attempt = 0; attempt < 3 && !ok; attempt++) {
    quick_runs(f, 65);
    uint64_t d1 = slow_pair(f, h), d2 = slow_pair(f, h);
    quick_runs(f, 63);
    uint64_t d3 = slow_pair(f, h);
    quick_runs(f, 64);
    uint64_t d4 = slow_pair(f, h);
    ok = d1 == 1 && d2 == 0 && d3 == 0 && d4 == 1;
    if (!ok) fprintf(stderr, "attempt %d: %lu %lu %lu %lu\n", attempt, (unsigned long)d1,
                     (unsigned long)d2, (unsigned long)d3, (unsigned long)d4);
  }
  assert_true(ok);

  /* A run nobody ended is ended by the next frame that does not follow,
   * and by a change of histogram: no frame goes uncounted. */
  uint64_t before = h->count;
  uint8_t buf[64];
  host.nemits = 0;
  assert_int_equal(feed(f, GW_CLIENT, buf, frame(buf, sizeof buf, 2, "x")), 0);
  assert_in_range(h->count, before, before + 1); /* open, or timed alone */
  assert_int_equal(feed(f, GW_CLIENT, buf, frame(buf, sizeof buf, 2, "x")), 0);
  assert_in_range(h->count, before + 1, before + 2);
  gw_script_set_handler_histogram(f->s, NULL);
  assert_int_equal(h->count, before + 2);
  free(h);
  stop(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_want_is_exact),
    cmocka_unit_test(test_no_handlers_want_nothing),
    cmocka_unit_test(test_emit_order_and_zero_copy),
    cmocka_unit_test(test_on_error_policies),
    cmocka_unit_test(test_instruction_limit),
    cmocka_unit_test(test_stack_depth_limit),
    cmocka_unit_test(test_output_limit),
    cmocka_unit_test(test_memory_cap),
    cmocka_unit_test(test_tiny_memory_limit_fails_cleanly),
    cmocka_unit_test(test_reload_atomic),
    cmocka_unit_test(test_timers_follow_host_clock),
    cmocka_unit_test(test_use_after_close),
    cmocka_unit_test(test_refused_session),
    cmocka_unit_test(test_free_with_open_sessions),
    cmocka_unit_test(test_opstats_and_handler_time),
    cmocka_unit_test(test_handler_time_runs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
