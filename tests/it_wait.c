/* it_wait.c: handlers that wait (session:sleep, gw.redis) in a real
 * gangway: a waiting session's frames keep their order while 50 other
 * sessions stream every byte intact; the wait bounds (timeouts.wait_ms,
 * limits.wait_bytes) apply on_error; a session closed mid-wait; on_connect
 * and timers that wait; the instruction limit across the slices of a
 * call; chat commands that wait. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "itest.h"
#include "it_redisd.h"

static const char rules_lua[] =
    "local gw = require 'gangway'\n"
    "gw.on('client', 30, function(pkt, s) s:sleep(60) end)\n"
    "gw.on('client', 31, function(pkt, s)\n"
    "  local n, err = gw.redis('INCR', 'waits')\n"
    "  if not n then error(err) end\n"
    "end)\n"
    "gw.on('client', 32, function(pkt, s) s:sleep(5000) return gw.DROP end)\n"
    "gw.on('client', 33, function(pkt, s)\n"
    "  s:sleep(300) gw.log.info('woke ' .. s.id)\n"
    "  gw.redis('PING') gw.log.info('redis answered ' .. s.id)\n"
    "end)\n"
    "local function burn(n) local x = 0 for i = 1, n // 2 do x = x + i end return x end\n"
    "gw.on('client', 35, function(pkt, s)\n"
    "  burn(150000) s:sleep(10) burn(150000)\n"
    "  s:send_to_client(gw.packet(37, 'heavy done'))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on('client', 36, function(pkt, s)\n"
    "  burn(50000) s:sleep(10) burn(50000)\n"
    "  s:send_to_client(gw.packet(37, 'light done'))\n"
    "  return gw.DROP\n"
    "end)\n"
    "-- a waiting handler followed by one that does not, then the verdict\n"
    "gw.on('client', 38, function(pkt, s) s:sleep(20) s:send_to_server(gw.packet(39, 'first')) end)\n"
    "gw.on('client', 38, function(pkt, s) s:send_to_server(gw.packet(39, 'second')) return pkt:body() == 'drop' and gw.DROP or nil end)\n"
    "gw.every(50, function()\n"
    "  local n = gw.redis('INCR', 'ticks')\n"
    "  if n == 3 then gw.log.info('timer waited: ticks 3') end\n"
    "end)\n";

static const char greet_lua[] =
    "local gw = require 'gangway'\n"
    "gw.on_connect(function(s)\n"
    "  s:sleep(300)\n"
    "  local n = gw.redis('INCR', 'greeted')\n"
    "  s:send_to_client(gw.packet(40, 'welcome ' .. tostring(n)))\n"
    "end)\n";

static const char refuse_lua[] =
    "local gw = require 'gangway'\n"
    "gw.on_connect(function(s)\n"
    "  s:sleep(100)\n"
    "  s:send_to_client(gw.packet(40, 'full'))\n"
    "  return gw.CLOSE\n"
    "end)\n";

/* Chat commands (through the top protocol module) that wait. */
static const char commands_lua[] =
    "local gw = require 'gangway'\n"
    "gw.command('/slow', function(s, args)\n"
    "  s:sleep(100)\n"
    "  local n = gw.redis('INCR', 'slow')\n"
    "  s:tell('slow ' .. args .. ' ' .. tostring(n))\n"
    "end)\n"
    "gw.command('/bad', function(s) s:sleep(20) error('boom after a wait') end)\n";

typedef struct fixture {
  it_redisd redis;
  it_server *echo;
  int echo_port;
  it_gangway g;
  int port[5];            /* pass, close, greet, refuse, commands */
} fixture;

static int teardown(void **state);

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  redisd_start(&f->redis, NULL, NULL);
  f->echo = it_server_start(IT_ECHO, 0, &f->echo_port);
  for (int i = 0; i < 5; i++) f->port[i] = it_free_port();
  it_gangway_prepare(&f->g);
  it_write(f->g.dir, "rules.lua", "%s", rules_lua);
  it_write(f->g.dir, "greet.lua", "%s", greet_lua);
  it_write(f->g.dir, "refuse.lua", "%s", refuse_lua);
  it_write(f->g.dir, "commands.lua", "%s", commands_lua);
  it_write(f->g.dir, "config.lua",
           "local function l(name, port, script, on_error, protocol)\n"
           "  return { name = name, listen = '127.0.0.1:' .. port, upstream = '127.0.0.1:%d',\n"
           "           framing = 'top', scripts = { script }, on_error = on_error,\n"
           "           protocol = protocol }\n"
           "end\n"
           "return {\n"
           "  listeners = { l('pass', %d, 'rules.lua', 'pass'), l('close', %d, 'rules.lua', 'close'),\n"
           "                l('greet', %d, 'greet.lua', 'pass'), l('refuse', %d, 'refuse.lua', 'pass'),\n"
           "                l('commands', %d, 'commands.lua', 'pass', '%s/protocols/top') },\n"
           "  redis = { addr = '127.0.0.1:%d', timeout_ms = 3000 },\n"
           "  timeouts = { wait_ms = 400 },\n"
           "  limits = { wait_bytes = 2000, handler_instructions = 200000 },\n"
           "  control = 'ctl.sock',\n"
           "}\n",
           f->echo_port, f->port[0], f->port[1], f->port[2], f->port[3], f->port[4],
           GW_SOURCE_DIR, f->redis.port);
  it_gangway_run(&f->g, f->port[0]);
  *state = f;
  if (!it_log_wait(&f->g, "(commands): connected", 3000)) {
    teardown(state); /* nothing left running */
    return -1;
  }
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  int rc = it_gangway_stop(&f->g, SIGTERM, 10000);
  it_server_stop(f->echo);
  redisd_stop(&f->redis);
  free(f);
  return rc == 0 ? 0 : -1;
}

#define BYSTANDERS 50
#define ROUNDS 20
#define WAITING_FRAMES 30

static void test_order_kept_while_others_stream(void **state) {
  fixture *f = *state;
  int w = it_connect(f->port[0]);
  /* every third frame sleeps, every third waits on Redis, the rest pass
   * in C: all sent at once, all must come back in this order */
  uint8_t all[WAITING_FRAMES * 32];
  size_t n = 0;
  for (int i = 0; i < WAITING_FRAMES; i++) {
    char body[32];
    snprintf(body, sizeof body, "seq %d", i);
    uint16_t op = i % 3 == 0 ? 30 : i % 3 == 1 ? 31 : 1;
    n += top_frame(all + n, sizeof all - n, op, body, strlen(body));
  }
  assert_int_equal(it_send_all(w, all, n), 0);
  /* meanwhile 50 sessions stream, each frame checked byte for byte */
  int by[BYSTANDERS];
  for (int i = 0; i < BYSTANDERS; i++) by[i] = it_connect(f->port[0]);
  uint64_t checked = 0;
  for (int r = 0; r < ROUNDS; r++) {
    uint8_t fr[BYSTANDERS][200];
    size_t len[BYSTANDERS];
    for (int i = 0; i < BYSTANDERS; i++) {
      uint8_t body[180];
      it_fill(body, sizeof body, (uint64_t)(r * BYSTANDERS + i));
      len[i] = top_frame(fr[i], sizeof fr[i], 1, body, sizeof body);
      assert_int_equal(it_send_all(by[i], fr[i], len[i]), 0);
    }
    for (int i = 0; i < BYSTANDERS; i++) {
      uint8_t back[200];
      assert_int_equal(it_recv_exact(by[i], back, len[i], 3000), len[i]);
      assert_memory_equal(back, fr[i], len[i]);
      checked += len[i];
    }
  }
  printf("%d sessions streamed %llu bytes, every one checked, while one session waited\n",
         BYSTANDERS, (unsigned long long)checked);
  for (int i = 0; i < WAITING_FRAMES; i++) {
    char body[64], want[32];
    uint16_t op = 0;
    snprintf(want, sizeof want, "seq %d", i);
    assert_true(read_text(w, &op, body, sizeof body, 5000) >= 0);
    assert_string_equal(body, want);
    assert_int_equal(op, i % 3 == 0 ? 30 : i % 3 == 1 ? 31 : 1);
  }
  char out[64];
  const char *get[] = {"GET", "waits"};
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 2, get), 0);
  assert_non_null(strstr(out, "10")); /* each op 31 frame's INCR, once */
  for (int i = 0; i < BYSTANDERS; i++) close(by[i]);
  close(w);
}

static void test_chain_after_a_wait(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[0]);
  char body[64];
  uint16_t op;
  /* toward the server (and back through the echo): the verdict first
   * (the frame passes), then what the handlers sent, then the next frame */
  send_text(fd, 38, "pass");
  send_text(fd, 1, "after");
  const char *want[] = {"pass", "first", "second", "after"};
  for (int i = 0; i < 4; i++) {
    assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
    assert_string_equal(body, want[i]);
  }
  send_text(fd, 38, "drop"); /* the second handler drops it */
  send_text(fd, 1, "next");
  const char *want2[] = {"first", "second", "next"};
  for (int i = 0; i < 3; i++) {
    assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
    assert_string_equal(body, want2[i]);
  }
  close(fd);
}

/* CM_SAY of text: a ToP string (u16 length counting the NUL). */
static void send_say(int fd, const char *text) {
  uint8_t body[256];
  size_t n = strlen(text) + 1;
  assert_true(n + 2 <= sizeof body);
  body[0] = (uint8_t)(n >> 8), body[1] = (uint8_t)n;
  memcpy(body + 2, text, n);
  uint8_t fr[300];
  size_t fl = top_frame(fr, sizeof fr, 1, body, n + 2);
  assert_int_equal(it_send_all(fd, fr, fl), 0);
}

/* A chat command that waits (sleep, then Redis) answers after its wait;
 * the player's next line waits behind it and reaches the server (the echo)
 * after the answer; the command line itself never does. A command that
 * fails after a wait is logged and still takes its line. */
static void test_command_that_waits(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[4]);
  char body[256];
  uint16_t op;
  send_say(fd, "/slow abc");
  send_say(fd, "after");
  int n = read_text(fd, &op, body, sizeof body, 3000);
  assert_true(n > 0);
  assert_int_equal(op, 501); /* MC_SAY from the proxy */
  assert_non_null(memmem(body, (size_t)n, "[proxy]", 7));
  assert_non_null(memmem(body, (size_t)n, "slow abc 1", 10));
  n = read_text(fd, &op, body, sizeof body, 3000);
  assert_true(n > 0);
  assert_int_equal(op, 1); /* "after", back from the echo: never the command */
  assert_non_null(memmem(body, (size_t)n, "after", 5));
  send_say(fd, "/bad");
  send_say(fd, "still here");
  n = read_text(fd, &op, body, sizeof body, 3000);
  assert_true(n > 0);
  assert_non_null(memmem(body, (size_t)n, "still here", 10));
  assert_true(it_log_wait(&f->g, "commands: command /bad:", 2000));
  assert_true(it_log_count(&f->g, "boom after a wait", NULL) >= 1);
  close(fd);
}

static void test_wait_bounds_apply_on_error(void **state) {
  fixture *f = *state;
  char body[256];
  uint16_t op;
  /* time: past timeouts.wait_ms the frame gets on_error (pass) */
  int fd = it_connect(f->port[0]);
  send_text(fd, 32, "slept too long");
  send_text(fd, 1, "behind it");
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "slept too long");
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "behind it");
  assert_true(it_log_wait(&f->g, "waited longer than timeouts.wait_ms (400 ms)", 2000));
  /* bytes: past limits.wait_bytes queued behind it, the same at once */
  send_text(fd, 32, "crowded out");
  uint8_t fr[256];
  char filler[200];
  memset(filler, 'f', sizeof filler - 1);
  filler[sizeof filler - 1] = 0;
  size_t n = top_frame(fr, sizeof fr, 1, filler, strlen(filler));
  for (int i = 0; i < 15; i++) assert_int_equal(it_send_all(fd, fr, n), 0);
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "crowded out");
  for (int i = 0; i < 15; i++) {
    assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
    assert_string_equal(body, filler);
  }
  assert_true(it_log_wait(&f->g, "queued behind a waiting handler (limits.wait_bytes 2000)", 2000));
  close(fd);
  /* on_error = "close": the session goes */
  fd = it_connect(f->port[1]);
  send_text(fd, 32, "closes");
  assert_int_equal(it_wait_eof(fd, 3000, NULL), 1);
  close(fd);
}

static void test_session_closed_mid_wait(void **state) {
  fixture *f = *state;
  for (int k = 0; k < 5; k++) {
    int fd = it_connect(f->port[0]);
    send_text(fd, 33, "sleeping");
    send_text(fd, 1, "queued");
    usleep(20 * 1000);
    /* a reset closes the session (a FIN would only end the client's
     * side: the queued frames would still go on after the wait) */
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd); /* its waits are cancelled with it */
  }
  int other = it_connect(f->port[0]);
  echo_text(other, "gangway goes on");
  usleep(600 * 1000); /* past the sleeps */
  assert_int_equal(it_log_count(&f->g, "woke ", NULL), 0);
  assert_int_equal(it_log_count(&f->g, "redis answered ", NULL), 0);
  echo_text(other, "still");
  close(other);
}

static void test_on_connect_and_timer_wait(void **state) {
  fixture *f = *state;
  int before = it_server_accepted(f->echo);
  uint64_t t0 = it_now_ms();
  int fd = it_connect(f->port[2]);
  usleep(100 * 1000);
  /* on_connect is sleeping: the upstream is not dialled yet */
  assert_int_equal(it_server_accepted(f->echo), before);
  char body[64];
  uint16_t op;
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_int_equal(op, 40);
  assert_non_null(strstr(body, "welcome "));
  printf("on_connect waited %llu ms (a sleep and a Redis call) before the upstream connect\n",
         (unsigned long long)(it_now_ms() - t0));
  echo_text(fd, "connected after on_connect");
  assert_int_equal(it_server_accepted(f->echo), before + 1);
  close(fd);
  /* refused after a wait: what it sent arrives, then the end */
  fd = it_connect(f->port[3]);
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "full");
  assert_int_equal(it_wait_eof(fd, 3000, NULL), 1);
  close(fd);
  assert_true(it_log_wait(&f->g, "timer waited: ticks 3", 3000));
}

/* gangway stats' total of a counter. */
static long long stat_total(fixture *f, const char *key) {
  char sock[600], js[16384];
  snprintf(sock, sizeof sock, "%s/ctl.sock", f->g.dir);
  if (it_control(sock, "stats", js, sizeof js, 3000) < 0) fail_msg("gangway stats did not answer");
  return it_json_int(js, key);
}

static void test_instruction_limit_across_waits(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port[0]);
  char body[64];
  uint16_t op;
  long long errors0 = stat_total(f, "handler_errors"), timeouts0 = stat_total(f, "handler_timeouts");
  /* 50,000 + 50,000 of 200,000: done */
  send_text(fd, 36, "light");
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "light done"); /* and dropped */
  /* 150,000 + 150,000: each slice fits, the call does not */
  send_text(fd, 35, "heavy");
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "heavy"); /* on_error pass */
  send_text(fd, 1, "next");
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "next"); /* "heavy done" never came */
  assert_true(it_log_wait(&f->g, "instruction limit exceeded (200000 per call)", 2000));
  /* Counted for the listener, though it failed after its wait, outside
   * the read that brought its frame. */
  assert_int_equal(stat_total(f, "handler_errors") - errors0, 1);
  assert_int_equal(stat_total(f, "handler_timeouts") - timeouts0, 1);
  close(fd);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_kept_while_others_stream),
      cmocka_unit_test(test_chain_after_a_wait),
      cmocka_unit_test(test_command_that_waits),
      cmocka_unit_test(test_wait_bounds_apply_on_error),
      cmocka_unit_test(test_session_closed_mid_wait),
      cmocka_unit_test(test_on_connect_and_timer_wait),
      cmocka_unit_test(test_instruction_limit_across_waits),
  };
  return cmocka_run_group_tests_name("handlers that wait", tests, setup, teardown);
}
