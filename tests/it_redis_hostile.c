/* it_redis_hostile.c: gw.redis attacked by a script, a Redis and a reload:
 * a pipeline of the most commands allowed, a reply far past
 * limits.lua_memory_mb, a reply nested deeper than a script may take, and
 * a reload with other redis settings while calls wait and their scripts
 * call Redis again at once, a pub/sub flood on a channel whose function
 * waits. Each time gangway answers with an error (or drops messages, and
 * says so), keeps relaying a bystander session's bytes and exits cleanly. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "itest.h"
#include "it_redisd.h"

/* op 10: the body is a command; the answer (op 11) describes the reply.
 * op 12: a pipeline of N (the body) INCR p. op 13: a command that waits
 * long (BLPOP), then, whatever it got, another one at once. op 14: an
 * array reply nested N (the body) deep. */
static const char rules_lua[] =
    "local gw = require 'gangway'\n"
    "local function describe(v, err)\n"
    "  if v == nil then return err and ('error:' .. err) or 'nil' end\n"
    "  if type(v) == 'table' then return 'table:' .. #v .. ':' .. tostring(v[#v]) end\n"
    "  return (math.type(v) or type(v)) .. ':' .. tostring(v)\n"
    "end\n"
    "local function words(s) local w = {} for x in s:gmatch('%S+') do w[#w + 1] = x end return w end\n"
    "gw.on('client', 10, function(pkt, s)\n"
    "  s:send_to_client(gw.packet(11, describe(gw.redis(table.unpack(words(pkt:body()))))))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on('client', 12, function(pkt, s)\n"
    "  local cmds = {}\n"
    "  for i = 1, tonumber(pkt:body()) do cmds[i] = { 'INCR', 'p' } end\n"
    "  local ok, res, err = pcall(gw.redis_pipeline, cmds)\n"
    "  s:send_to_client(gw.packet(11, ok and describe(res, err) or ('raised:' .. tostring(res))))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on('client', 13, function(pkt, s)\n"
    "  local v, err = gw.redis('BLPOP', 'never', '0')\n"
    "  local again, err2 = gw.redis('PING')\n"
    "  s:send_to_client(gw.packet(11, describe(v, err) .. ' then ' .. describe(again, err2)))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on('client', 14, function(pkt, s)\n"
    "  local lua = 'local t = {} local c = t for i = 1, ' .. pkt:body() ..\n"
    "              ' do c[1] = {} c = c[1] end return t'\n"
    "  s:send_to_client(gw.packet(11, describe(gw.redis('EVAL', lua, '0'))))\n"
    "  return gw.DROP\n"
    "end)\n"
    "-- op 18: N publishes of 1 MiB each, not waited for, in one handler\n"
    "gw.on('client', 18, function(pkt, s)\n"
    "  local big, sent, err = string.rep('x', 1 << 20), 0, nil\n"
    "  for i = 1, tonumber(pkt:body()) do\n"
    "    local ok, e = gw.publish('nobody', big)\n"
    "    if not ok then err = e break end\n"
    "    sent = i\n"
    "  end\n"
    "  s:send_to_client(gw.packet(11, sent .. ' ' .. tostring(err)))\n"
    "  return gw.DROP\n"
    "end)\n"
    "-- each message starts a function that waits, holding its coroutine\n"
    "gw.subscribe('flood', function(channel, msg)\n"
    "  local held = string.rep(msg, 64)\n"
    "  gw.sleep(3000)\n"
    "  return #held\n"
    "end)\n";

typedef redis_echo fixture;

static void write_config(it_gangway *g, fixture *f, int port, int timeout_ms, const char *extra) {
  it_write(g->dir, "config.lua",
           "return {\n"
           "  listeners = { { name = 'game', listen = '127.0.0.1:%d', upstream = '127.0.0.1:%d',\n"
           "                  framing = 'top', scripts = { 'rules.lua' } } },\n"
           "  redis = { addr = '127.0.0.1:%d', timeout_ms = %d, connect_ms = 500%s },\n"
           "  limits = { lua_memory_mb = 32 },\n"
           "  timeouts = { wait_ms = %d },\n"
           "  control = '',\n"
           "}\n",
           port, f->echo_port, f->redis.port, timeout_ms, extra, timeout_ms + 1000);
}

static void start_gangway(it_gangway *g, fixture *f, int port, int timeout_ms) {
  it_gangway_prepare(g);
  it_write(g->dir, "rules.lua", "%s", rules_lua);
  write_config(g, f, port, timeout_ms, "");
  it_gangway_run(g, port);
  assert_true(it_log_wait(g, "(commands): connected", 3000));
}

/* The script builds a pipeline of 1,024 commands (the most allowed) in one
 * handler: every command's table goes on the Lua stack at once, past the
 * room a C function is given (a stack overflow under ASan before). */
static void test_pipeline_of_the_most_commands(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, 3000);
  int fd = it_connect(port), bystander = it_connect(port);
  assert_string_equal(ask_answer(fd, 10, "DEL p", 3000), "integer:0");
  assert_string_equal(ask_answer(fd, 12, "1024", 5000), "table:1024:1024");
  echo_text(bystander, "still here");
  const char *e = ask_answer(fd, 12, "1025", 3000);
  assert_non_null(strstr(e, "raised:"));
  assert_non_null(strstr(e, "1 to 1024 commands"));
  assert_string_equal(ask_answer(fd, 10, "GET p", 3000), "string:1024");
  close(fd);
  close(bystander);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

/* A 100 MB string from GET, with limits.lua_memory_mb = 32: the call
 * fails with a message that says so; gangway and the session go on. A
 * reply nested 100 deep (EVAL returns it) is past hiredis' reader: the
 * command connection is lost and made again. */
static void test_replies_past_the_limits(void **state) {
  fixture *f = *state;
  char out[256];
  const char *big[] = {"SETRANGE", "big", "99999999", "x"};
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 4, big), 0);
  assert_string_equal(out, ":100000000\r\n");
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, 20000); /* reading 100 MB is slow under ASan */
  int fd = it_connect(port), bystander = it_connect(port);
  const char *e = ask_answer(fd, 10, "GET big", 25000);
  if (!strstr(e, "error:redis: not enough memory")) fail_msg("GET big: %s", e);
  echo_text(bystander, "after the big reply");
  assert_string_equal(ask_answer(fd, 10, "STRLEN big", 3000), "integer:100000000");
  assert_non_null(strstr(ask_answer(fd, 14, "5", 3000), "table:1:table: "));
  /* Deeper than hiredis' reader goes: the connection is lost (its commands
   * fail), it comes back after the backoff, the bystander never noticed. */
  e = ask_answer(fd, 14, "100", 3000);
  assert_non_null(strstr(e, "error:redis: connection lost"));
  echo_text(bystander, "after the deep reply");
  uint64_t until = it_now_ms() + 3000;
  while (strcmp(ask_answer(fd, 10, "PING", 3000), "string:PONG") && it_now_ms() < until)
    usleep(50 * 1000);
  assert_string_equal(ask_answer(fd, 10, "PING", 3000), "string:PONG");
  close(fd);
  close(bystander);
  const char *del[] = {"DEL", "big"};
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 2, del), 0);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

/* A reload with other redis settings drops the command connection: every
 * waiting call gets its error once, and its script, calling Redis again
 * right then, gets an answer or an error (it crashed gangway: the command
 * went to the connection being freed). */
static void test_reload_while_calls_wait(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, 3000);
  enum { N = 20 };
  int fds[N];
  for (int i = 0; i < N; i++) {
    fds[i] = it_connect(port);
    send_text(fds[i], 13, "wait");
  }
  int bystander = it_connect(port);
  echo_text(bystander, "before");
  usleep(300 * 1000);
  write_config(&g, f, port, 3000, ", db = 3");
  kill(g.pid, SIGHUP);
  assert_true(it_log_wait(&g, "redis: new settings", 3000));
  for (int i = 0; i < N; i++) {
    char body[1024];
    uint16_t op = 0;
    assert_true(read_text(fds[i], &op, body, sizeof body, 5000) >= 0);
    assert_non_null(strstr(body, "error:redis: connection lost"));
    assert_non_null(strstr(body, " then "));
    assert_true(strstr(body, "then string:PONG") || strstr(body, "then error:redis: not connected"));
    close(fds[i]);
  }
  echo_text(bystander, "after");
  close(bystander);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

/* Sends count PUBLISH flood <msg> in one write after another, without
 * reading the replies (the connection is closed after). */
static void publish_flood(int port, int count) {
  int fd = it_connect(port);
  assert_true(fd >= 0);
  static const char cmd[] = "*3\r\n$7\r\nPUBLISH\r\n$5\r\nflood\r\n$32\r\n"
                            "0123456789abcdef0123456789abcdef\r\n";
  enum { BATCH = 1000 };
  static char buf[BATCH * (sizeof cmd - 1)];
  for (int i = 0; i < BATCH; i++) memcpy(buf + i * (sizeof cmd - 1), cmd, sizeof cmd - 1);
  for (int sent = 0; sent < count; sent += BATCH) {
    assert_int_equal(it_send_all(fd, buf, sizeof buf), 0);
    char sink[65536];
    while (recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0) {
    }
  }
  close(fd);
}

/* 200,000 messages on a channel whose function waits: each would hold a
 * coroutine until the scripts' memory is full, and then every further
 * message cost a full collection, so the loop spent seconds on them and
 * a bystander session's round trips stalled (14 s seen). Messages are
 * dropped, and said so, while the memory stays near its limit; the
 * bystander's frames come back in time and intact. */
static void test_pubsub_flood_with_waiting_functions(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, 3000);
  assert_true(it_log_wait(&g, "(pub/sub): connected", 3000));
  int bystander = it_connect(port);
  echo_text(bystander, "before the flood");
  publish_flood(f->redis.port, 200000);
  uint64_t until = it_now_ms() + 4000;
  int rounds = 0;
  while (it_now_ms() < until) {
    char text[32], body[1024];
    snprintf(text, sizeof text, "round %d", rounds++);
    send_text(bystander, 1, text);
    assert_true(read_text(bystander, NULL, body, sizeof body, 1500) >= 0);
    assert_string_equal(body, text);
    usleep(20 * 1000);
  }
  assert_true(it_log_wait(&g, "redis messages dropped", 1000));
  close(bystander);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 8000), 0);
}

/* Commands that would change what the shared command connection is: a
 * SUBSCRIBE made it a subscriber (hiredis then called the command's
 * callback again for every message: freed memory), MONITOR a stream of
 * replies nobody asked for (hiredis asserts), SELECT moved every other
 * script to another database, HELLO 3 spoke a protocol hiredis cannot
 * read. Each is refused with a message; the connection stays as it was. */
static void test_commands_that_change_the_connection(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, 3000);
  int fd = it_connect(port), bystander = it_connect(port);
  static const char *const refused[] = {"SUBSCRIBE chan", "psubscribe ch*", "MONITOR",
                                        "SELECT 5",       "HELLO 3",        "CLIENT REPLY OFF",
                                        "RESET",          "QUIT",           "UNSUBSCRIBE"};
  for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
    const char *e = ask_answer(fd, 10, refused[i], 3000);
    if (!strstr(e, "error:redis: ") || !strstr(e, "not allowed on the shared connection"))
      fail_msg("%s: %s", refused[i], e);
  }
  assert_string_equal(ask_answer(fd, 10, "CLIENT SETNAME x", 3000), "string:OK");
  char out[64];
  const char *pub[] = {"PUBLISH", "chan", "hello"};
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 3, pub), 0);
  assert_string_equal(ask_answer(fd, 10, "SET k v", 3000), "string:OK");
  const char *get[] = {"GET", "k"}; /* in db 0 still */
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 2, get), 0);
  assert_string_equal(out, "$1\r\nv\r\n");
  echo_text(bystander, "still here");
  close(fd);
  close(bystander);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

/* A blocking command that never returns (BLPOP of a list nobody fills,
 * timeout 0) held the shared connection: every later command of every
 * script queued behind it in Redis and timed out, for good. A command
 * past redis.timeout_ms now drops the connection (what was behind it
 * fails at once) and the next one is made. */
static void test_blocking_command_does_not_hold_the_connection(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, 500);
  int fd = it_connect(port), other = it_connect(port);
  send_text(fd, 10, "BLPOP nobody-fills-this 0");
  usleep(100 * 1000);
  send_text(other, 10, "INCR behind");
  char body[1024];
  uint16_t op;
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_non_null(strstr(body, "error:redis: no reply within 500 ms"));
  assert_true(read_text(other, &op, body, sizeof body, 3000) >= 0);
  assert_non_null(strstr(body, "error:redis: connection lost"));
  uint64_t until = it_now_ms() + 3000;
  while (strcmp(ask_answer(other, 10, "PING", 3000), "string:PONG") && it_now_ms() < until)
    usleep(50 * 1000);
  assert_string_equal(ask_answer(other, 10, "INCR behind", 3000), "integer:1");
  close(fd);
  close(other);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

/* A handler publishing 1 MiB 300 times (not waited for, well within the
 * instruction limit): each command was copied into the connection's
 * output at once, 300 MiB of gangway's memory outside lua_memory_mb
 * (and 65,536 of them were allowed). The bytes under way are bounded: the
 * publishes past it fail with a message, the memory stays bounded, and
 * once the bytes are out the next publish goes. */
static void test_bytes_under_way_are_bounded(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, 3000);
  int fd = it_connect(port), bystander = it_connect(port);
  const char *e = ask_answer(fd, 18, "300", 10000);
  int sent = atoi(e);
  printf("published %d MiB before: %s\n", sent, strchr(e, ' ') + 1);
  assert_true(sent >= 1 && sent < 300);
  assert_non_null(strstr(e, "redis: too many bytes under way"));
  long hwm = it_hwm_kb(g.pid);
  printf("gangway's peak memory: %ld KiB\n", hwm);
#ifndef __SANITIZE_ADDRESS__ /* its shadow and quarantine count there too */
  assert_true(hwm < 200 * 1024);
#endif
  echo_text(bystander, "still here");
  uint64_t until = it_now_ms() + 5000;
  while (strncmp(e = ask_answer(fd, 18, "1", 3000), "1 ", 2) && it_now_ms() < until)
    usleep(50 * 1000);
  assert_string_equal(e, "1 nil");
  close(fd);
  close(bystander);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pipeline_of_the_most_commands),
      cmocka_unit_test(test_replies_past_the_limits),
      cmocka_unit_test(test_reload_while_calls_wait),
      cmocka_unit_test(test_pubsub_flood_with_waiting_functions),
      cmocka_unit_test(test_commands_that_change_the_connection),
      cmocka_unit_test(test_blocking_command_does_not_hold_the_connection),
      cmocka_unit_test(test_bytes_under_way_are_bounded),
  };
  return cmocka_run_group_tests_name("gw.redis attacked", tests, redis_echo_setup,
                                     redis_echo_teardown);
}
