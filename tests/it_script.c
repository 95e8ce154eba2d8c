/* it_script.c: Lua handlers in a real gangway, `top` framing, echo upstream:
 * drop, rewrite with a length change, inject toward both sides, on_connect
 * refusal, a timer firing, an erroring handler under each on_error policy,
 * an endless loop (also inside pcall), a memory bomb, two listeners with
 * the same script keeping their own handlers. In every case a
 * bystander session on the same listener keeps getting its bytes intact. */
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "itest.h"

static gw_framing top;

static const char rules_lua[] =
    "local gw = require \"gangway\"\n"
    "gw.on(\"client\", 1, function(pkt, session)\n"
    "  local text = pkt:str(8)\n"
    "  if text == \"drop me\" then return gw.DROP end\n"
    "  if text == \"grow\" then\n"
    "    pkt:set_body(gw.writer():str(\"grown into a much longer line\"):build())\n"
    "  elseif text == \"/inject\" then\n"
    "    session:send_to_client(gw.packet(501, gw.writer():u32(7):str(\"proxy\"):str(\"to you\"):build()))\n"
    "    session:send_to_server(gw.packet(777, gw.writer():str(\"to the server\"):build()))\n"
    "    return gw.DROP\n"
    "  elseif text == \"/timer\" then\n"
    "    session:after(150, function() session:send_to_client(gw.packet(502, gw.writer():str(\"tick\"):build())) end)\n"
    "    return gw.DROP\n"
    "  end\n"
    "end)\n"
    "gw.on(\"client\", 66, function(pkt) error(\"boom\") end)\n"
    "gw.on(\"client\", 67, function(pkt) while true do end end)\n"
    "gw.on(\"client\", 68, function(pkt) pcall(function() while true do end end) return gw.DROP end)\n"
    "gw.on(\"client\", 70, function(pkt)\n" /* this listener's count of its frames */
    "  local n = gw.stats().opcodes.client[70].frames\n"
    "  return gw.packet(70, gw.writer():str(tostring(n)):build())\n"
    "end)\n"
    "gw.on(\"server\", 70, function(pkt) pkt:set_u8(#pkt - 1, 33) end)\n" /* NUL -> '!' */
    "gw.on(\"client\", 69, function(pkt)\n"
    "  local t = {}\n"
    "  for i = 1, 1e9 do t[i] = string.rep(\"x\", 4096) .. i end\n"
    "end)\n";

static const char refuse_lua[] =
    "local gw = require \"gangway\"\n"
    "gw.on_connect(function(session)\n"
    "  session:send_to_client(gw.packet(501, gw.writer():u32(0):str(\"gangway\"):str(\"server full\"):build()))\n"
    "  return gw.CLOSE\n"
    "end)\n";

static size_t say(uint8_t *out, size_t cap, uint16_t opcode, const char *text) {
  uint8_t body[512];
  size_t n = strlen(text) + 1;
  body[0] = (uint8_t)(n >> 8), body[1] = (uint8_t)n;
  memcpy(body + 2, text, n);
  long len = gw_frame_build(&top, GW_CLIENT, out, cap, opcode, body, n + 2);
  assert_true(len > 0);
  return (size_t)len;
}

/* Reads one whole frame (2 s at most); returns its length, 0 on EOF. */
static size_t read_frame(int fd, uint8_t *buf, size_t cap) {
  if (it_recv_exact(fd, buf, 2, 2000) != 2) return 0;
  size_t len = (size_t)buf[0] << 8 | buf[1];
  assert_true(len >= 2 && len <= cap);
  assert_int_equal(it_recv_exact(fd, buf + 2, len - 2, 2000), len - 2);
  return len;
}

static void expect_echo(int fd, const char *text) {
  uint8_t fr[256], back[256];
  size_t n = say(fr, sizeof fr, 1, text);
  assert_int_equal(it_send_all(fd, fr, n), 0);
  assert_int_equal(read_frame(fd, back, sizeof back), n);
  assert_memory_equal(back, fr, n);
}

typedef struct {
  it_gangway g;
  it_server *up;
  int port[4]; /* pass, drop, close, refuse */
} fixture;

static int setup(void **state) {
  gw_framing_preset("top", &top);
  fixture *f = calloc(1, sizeof *f);
  int up_port;
  f->up = it_server_start(IT_ECHO, 0, &up_port);
  for (int i = 0; i < 4; i++) f->port[i] = it_free_port();
  it_gangway_prepare(&f->g);
  it_write(f->g.dir, "rules.lua", "%s", rules_lua);
  it_write(f->g.dir, "refuse.lua", "%s", refuse_lua);
  it_write(f->g.dir, "config.lua",
           "local function l(name, port, on_error, script)\n"
           "  return { name = name, listen = \"127.0.0.1:\" .. port, upstream = \"127.0.0.1:%d\",\n"
           "           framing = \"top\", scripts = { script }, on_error = on_error }\n"
           "end\n"
           "return {\n"
           "  listeners = { l(\"pass\", %d, \"pass\", \"rules.lua\"), l(\"drop\", %d, \"drop\", \"rules.lua\"),\n"
           "                l(\"close\", %d, \"close\", \"rules.lua\"), l(\"refuse\", %d, \"pass\", \"refuse.lua\") },\n"
           "  limits = { handler_instructions = 1000000, lua_memory_mb = 32 },\n"
           "  control = \"\",\n"
           "}\n",
           up_port, f->port[0], f->port[1], f->port[2], f->port[3]);
  it_gangway_run(&f->g, f->port[0]);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  int code = it_gangway_stop(&f->g, SIGTERM, 5000);
  it_server_stop(f->up);
  free(f);
  assert_int_equal(code, 0);
  return 0;
}

static void test_drop(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[0]), by = it_connect(f->port[0]);
  uint8_t buf[512], back[256];
  size_t n = say(buf, sizeof buf, 1, "hello");
  size_t n2 = say(buf + n, sizeof buf - n, 1, "drop me");
  size_t n3 = say(buf + n + n2, sizeof buf - n - n2, 1, "world");
  assert_int_equal(it_send_all(fd, buf, n + n2 + n3), 0);
  assert_int_equal(read_frame(fd, back, sizeof back), n);
  assert_memory_equal(back, buf, n);
  assert_int_equal(read_frame(fd, back, sizeof back), n3); /* "drop me" never came back */
  assert_memory_equal(back, buf + n + n2, n3);
  expect_echo(by, "bystander");
  close(fd);
  close(by);
}

static void test_rewrite_recomputes_length(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[0]);
  uint8_t fr[256], want[256], back[256];
  size_t n = say(fr, sizeof fr, 1, "grow");
  size_t wn = say(want, sizeof want, 1, "grown into a much longer line");
  assert_int_equal(it_send_all(fd, fr, n), 0);
  assert_int_equal(read_frame(fd, back, sizeof back), wn);
  assert_memory_equal(back, want, wn); /* length field computed: 00 2a */
  expect_echo(fd, "after the rewrite");
  close(fd);
}

static void test_inject_both_ways(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[0]);
  uint8_t fr[256], a[256], b[256];
  size_t n = say(fr, sizeof fr, 1, "/inject");
  assert_int_equal(it_send_all(fd, fr, n), 0);
  size_t na = read_frame(fd, a, sizeof a), nb = read_frame(fd, b, sizeof b);
  assert_true(na && nb);
  /* One comes from the proxy (501), the other is the echo of what the
   * proxy sent to the server (777); which first is up to the network. */
  uint8_t *p501 = a[7] == 0xf5 ? a : b, *p777 = a[7] == 0xf5 ? b : a;
  assert_int_equal(p501[6] << 8 | p501[7], 501);
  assert_int_equal(p777[6] << 8 | p777[7], 777);
  assert_memory_equal(p501 + 8, "\x00\x00\x00\x07\x00\x06proxy\x00\x00\x07to you\x00", 21);
  assert_memory_equal(p777 + 8, "\x00\x0eto the server\x00", 16);
  expect_echo(fd, "after the injections");
  close(fd);
}

static void test_refused_by_on_connect(void **state) {
  fixture *f = *state;
  int before = it_server_accepted(f->up);
  int fd = it_connect(f->port[3]);
  assert_true(fd >= 0);
  /* What on_connect sent before refusing arrives, then the end. */
  uint8_t back[256];
  assert_int_equal(read_frame(fd, back, sizeof back), 8 + 4 + 10 + 14);
  assert_memory_equal(back + 6, "\x01\xf5\x00\x00\x00\x00\x00\x08gangway\x00\x00\x0cserver full\x00", 30);
  assert_int_equal(it_wait_eof(fd, 2000, NULL), 1);
  close(fd);
  assert_true(it_log_wait(&f->g, "refused by on_connect", 2000));
  assert_int_equal(it_server_accepted(f->up), before); /* never reached upstream */
}

static void test_timer_fires(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[0]);
  uint8_t fr[256], back[256];
  size_t n = say(fr, sizeof fr, 1, "/timer");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(it_send_all(fd, fr, n), 0);
  size_t bn = read_frame(fd, back, sizeof back);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
  assert_int_equal(bn, 15);
  assert_memory_equal(back + 6, "\x01\xf6\x00\x05tick\x00", 9);
  assert_true(ms >= 140);
  close(fd);
}

/* An erroring handler: "pass" forwards the frame, "drop" drops it, "close"
 * closes that session. The error is logged with script:line. */
static void test_on_error_policies(void **state) {
  fixture *f = *state;
  uint8_t fr[256], back[256];
  size_t n = say(fr, sizeof fr, 66, "x");
  for (int i = 0; i < 3; i++) {
    int fd = it_connect(f->port[i]), by = it_connect(f->port[i]);
    assert_int_equal(it_send_all(fd, fr, n), 0);
    if (i == 0) {
      assert_int_equal(read_frame(fd, back, sizeof back), n);
      expect_echo(fd, "still here");
    } else if (i == 1) {
      expect_echo(fd, "the erroring frame was dropped, this one is next");
    } else {
      assert_true(it_wait_eof(fd, 2000, NULL) != 0);
    }
    expect_echo(by, "bystander");
    close(fd);
    close(by);
  }
  assert_true(it_log_wait(&f->g, "rules.lua:16: boom", 2000));
}

static void test_endless_loop_is_stopped(void **state) {
  fixture *f = *state;
  int by = it_connect(f->port[0]);
  for (uint16_t op = 67; op <= 68; op++) { /* plain, then inside pcall */
    int fd = it_connect(f->port[0]);
    uint8_t fr[256], back[256];
    size_t n = say(fr, sizeof fr, op, "spin");
    assert_int_equal(it_send_all(fd, fr, n), 0);
    /* on_error = "pass": the frame goes on once the handler is stopped */
    assert_int_equal(read_frame(fd, back, sizeof back), n);
    expect_echo(fd, "after the loop");
    expect_echo(by, "bystander");
    close(fd);
  }
  close(by);
  assert_true(it_log_wait(&f->g, "instruction", 2000));
}

/* Two listeners load the same script: each has its own chains, cached
 * apart, and the same opcode on both sides of each. Opcode 70's client
 * handler answers with its listener's count of opcode-70 frames, the
 * server one marks the answer: a chain taken from the other listener's
 * cache (or the other side's) would count wrong or not mark. Three frames
 * a read: the first of a session looks its chain up, the rest take the
 * cache's one-function way. */
static void test_listeners_keep_their_chains(void **state) {
  fixture *f = *state;
  int a = it_connect(f->port[0]), b = it_connect(f->port[1]);
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < 2; i++) {
      int fd = i ? b : a;
      uint8_t buf[256], back[256], want[64];
      size_t n = 0;
      for (int k = 0; k < 3; k++) n += say(buf + n, sizeof buf - n, 70, "count");
      assert_int_equal(it_send_all(fd, buf, n), 0);
      for (int k = 1; k <= 3; k++) {
        char text[8];
        snprintf(text, sizeof text, "%d", round * 3 + k);
        size_t wn = say(want, sizeof want, 70, text);
        want[wn - 1] = '!';
        assert_int_equal(read_frame(fd, back, sizeof back), wn);
        assert_memory_equal(back, want, wn);
      }
    }
  }
  close(a);
  close(b);
}

/* on_error = "close" on the cached one-function way, a frame behind the
 * erroring one in the same read: the session closes at once (nothing of
 * that read comes back), its bystander goes on. */
static void test_close_stops_the_read(void **state) {
  fixture *f = *state;
  uint8_t buf[256];
  for (int i = 0; i < 2; i++) { /* the first session gets opcode 66's chain cached */
    int fd = it_connect(f->port[2]), by = it_connect(f->port[2]);
    expect_echo(fd, "in Lua already");
    size_t n = say(buf, sizeof buf, 66, "x");
    n += say(buf + n, sizeof buf - n, 1, "never echoed");
    assert_int_equal(it_send_all(fd, buf, n), 0);
    size_t got = 0;
    assert_true(it_wait_eof(fd, 2000, &got) != 0);
    assert_int_equal(got, 0);
    expect_echo(by, "bystander");
    close(fd);
    close(by);
  }
}

static void test_memory_bomb_is_contained(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[1]), by = it_connect(f->port[1]); /* on_error = "drop" */
  uint8_t fr[256];
  size_t n = say(fr, sizeof fr, 69, "bomb");
  assert_int_equal(it_send_all(fd, fr, n), 0);
  expect_echo(fd, "the bomb was dropped, this one is next");
  expect_echo(by, "bystander");
  close(fd);
  close(by);
  assert_true(it_log_wait(&f->g, "not enough memory", 2000));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_drop),
      cmocka_unit_test(test_rewrite_recomputes_length),
      cmocka_unit_test(test_inject_both_ways),
      cmocka_unit_test(test_refused_by_on_connect),
      cmocka_unit_test(test_timer_fires),
      cmocka_unit_test(test_on_error_policies),
      cmocka_unit_test(test_endless_loop_is_stopped),
      cmocka_unit_test(test_listeners_keep_their_chains),
      cmocka_unit_test(test_close_stops_the_read),
      cmocka_unit_test(test_memory_bomb_is_contained),
  };
  return cmocka_run_group_tests_name("Lua handlers through gangway", tests, setup, teardown);
}
