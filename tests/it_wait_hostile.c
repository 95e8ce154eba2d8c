/* it_wait_hostile.c: handlers that wait, attacked: clients that reset while
 * on_connect waits (the upstream is never dialled), sleeps of odd lengths
 * and in on_close, and a Redis that stops answering (SIGSTOP) while
 * hundreds of sessions wait on it: each gets its timeout once, a bystander
 * session's bytes go on, and after SIGCONT the late replies are ignored
 * and the connection is made again. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "it_redisd.h"

/* op 50: pcall(s.sleep, s, <the body as a number>), answered "slept" or
 * "raised:..."; op 51: GET k, answered with what came. on_close tries to
 * sleep and logs how that went. */
static const char rules_lua[] =
    "local gw = require 'gangway'\n"
    "gw.on('client', 50, function(pkt, s)\n"
    "  local ms = pkt:body() == 'nan' and 0/0 or tonumber(pkt:body())\n"
    "  local ok, err = pcall(s.sleep, s, ms)\n"
    "  s:send_to_client(gw.packet(11, ok and 'slept' or ('raised:' .. tostring(err))))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on('client', 51, function(pkt, s)\n"
    "  local v, err = gw.redis('GET', 'k')\n"
    "  gw.log.info('answered ' .. s.id)\n"
    "  s:send_to_client(gw.packet(11, v and ('value:' .. v) or ('error:' .. tostring(err))))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on_close(function(s)\n"
    "  if not s.state.sleep_on_close then return end\n"
    "  local ok, err = pcall(s.sleep, s, 10)\n"
    "  gw.log.info('sleep in on_close: ' .. (ok and 'slept' or tostring(err)))\n"
    "end)\n"
    "gw.on('client', 52, function(pkt, s) s.state.sleep_on_close = true return gw.DROP end)\n";

static const char greet_lua[] =
    "local gw = require 'gangway'\n"
    "gw.on_connect(function(s)\n"
    "  s:sleep(300)\n"
    "  gw.redis('INCR', 'greeted')\n"
    "  s:send_to_client(gw.packet(40, 'welcome'))\n"
    "end)\n";

typedef struct fixture {
  it_redisd redis;
  it_server *echo;
  int echo_port;
  it_gangway g;
  int port, greet_port;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  redisd_start(&f->redis, NULL, NULL);
  f->echo = it_server_start(IT_ECHO, 0, &f->echo_port);
  f->port = it_free_port();
  f->greet_port = it_free_port();
  it_gangway_prepare(&f->g);
  it_write(f->g.dir, "rules.lua", "%s", rules_lua);
  it_write(f->g.dir, "greet.lua", "%s", greet_lua);
  it_write(f->g.dir, "config.lua",
           "return {\n"
           "  listeners = {\n"
           "    { name = 'game', listen = '127.0.0.1:%d', upstream = '127.0.0.1:%d',\n"
           "      framing = 'top', scripts = { 'rules.lua' } },\n"
           "    { name = 'greet', listen = '127.0.0.1:%d', upstream = '127.0.0.1:%d',\n"
           "      framing = 'top', scripts = { 'greet.lua' } } },\n"
           "  redis = { addr = '127.0.0.1:%d', timeout_ms = 1000, connect_ms = 500 },\n"
           "  limits = { max_sessions = 2000 },\n"
           "  control = '',\n"
           "}\n",
           f->port, f->echo_port, f->greet_port, f->echo_port, f->redis.port);
  it_gangway_run(&f->g, f->port);
  assert_true(it_log_wait(&f->g, "(commands): connected", 3000));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  int code = it_gangway_stop(&f->g, SIGTERM, 5000);
  it_server_stop(f->echo);
  redisd_stop(&f->redis);
  free(f);
  assert_int_equal(code, 0);
  return 0;
}

static void reset_close(int fd) {
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

/* Clients that reset while on_connect sleeps: once on_connect is done
 * their sessions end, and the upstream is never dialled for them (it was,
 * and only then was the reset seen). */
static void test_reset_while_on_connect_waits(void **state) {
  fixture *f = *state;
  int before = it_server_accepted(f->echo);
  int bystander = it_connect(f->port);
  for (int i = 0; i < 50; i++) {
    int fd = it_connect(f->greet_port);
    assert_true(fd >= 0);
    usleep(1000);
    reset_close(fd);
  }
  echo_text(bystander, "meanwhile");
  usleep(700 * 1000); /* past the sleeps */
  /* on_connect ran to its end (nothing reads the client before the
   * connect), but no upstream connect was made for a client gone */
  char out[64];
  const char *get[] = {"GET", "greeted"};
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 2, get), 0);
  assert_string_equal(out, "$2\r\n50\r\n");
  assert_int_equal(it_server_accepted(f->echo), before + 1); /* the bystander's */
  echo_text(bystander, "after");
  close(bystander);
}

/* session:sleep of odd lengths: 0 sleeps (a turn of the loop), the rest
 * raise; and a sleep in on_close raises (nothing waits there). */
static void test_odd_sleeps(void **state) {
  fixture *f = *state;
  int fd = it_connect(f->port);
  assert_string_equal(ask_answer(fd, 50, "0", 3000), "slept");
  assert_string_equal(ask_answer(fd, 50, "0.5", 3000), "slept");
  assert_non_null(strstr(ask_answer(fd, 50, "-1", 3000), "raised:"));
  assert_non_null(strstr(ask_answer(fd, 50, "1e12", 3000), "raised:"));
  assert_non_null(strstr(ask_answer(fd, 50, "nan", 3000), "raised:"));
  assert_non_null(strstr(ask_answer(fd, 50, "inf", 3000), "raised:"));
  send_text(fd, 52, "sleep when closed");
  usleep(50 * 1000);
  close(fd);
  assert_true(it_log_wait(&f->g, "sleep in on_close: ", 3000));
  assert_int_equal(it_log_count(&f->g, "sleep in on_close: slept", NULL), 0);
  int other = it_connect(f->port);
  echo_text(other, "gangway goes on");
  close(other);
}

/* Redis stops answering while 300 sessions each wait on it: each gets
 * its error once (the first call past redis.timeout_ms, the rest with the
 * connection dropped then), a bystander's round trips go on; after
 * SIGCONT the connection is made again and commands work. */
static void test_redis_stalls_under_many_waits(void **state) {
  fixture *f = *state;
  enum { N = 300 };
  static int fds[N];
  int bystander = it_connect(f->port);
  echo_text(bystander, "before");
  kill(f->redis.pid, SIGSTOP);
  int base_answered = it_log_count(&f->g, "answered ", NULL);
  for (int i = 0; i < N; i++) {
    fds[i] = it_connect(f->port);
    assert_true(fds[i] >= 0);
    send_text(fds[i], 51, "get");
  }
  echo_text(bystander, "while redis is stopped");
  for (int i = 0; i < N; i++) {
    char body[256];
    uint16_t op = 0;
    assert_true(read_text(fds[i], &op, body, sizeof body, 5000) >= 0);
    /* the first past its time; those behind it fail with the connection
     * dropped then */
    assert_non_null(strstr(body, "error:redis: "));
    assert_non_null(strstr(body, "no reply within 1000 ms"));
  }
  echo_text(bystander, "after the timeouts");
  kill(f->redis.pid, SIGCONT);
  usleep(300 * 1000); /* the late replies arrive, and are ignored */
  assert_int_equal(it_log_count(&f->g, "answered ", NULL) - base_answered, N);
  for (int i = 0; i < N; i++) {
    char body[64];
    assert_int_equal(read_text(fds[i], NULL, body, sizeof body, 1), -1); /* nothing more */
    close(fds[i]);
  }
  int fd = it_connect(f->port);
  const char *e;
  uint64_t until = it_now_ms() + 5000;
  while (strstr(e = ask_answer(fd, 51, "get", 3000), "not connected") && it_now_ms() < until)
    usleep(50 * 1000);
  assert_string_equal(e, "error:nil");
  close(fd);
  echo_text(bystander, "the end");
  close(bystander);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reset_while_on_connect_waits),
      cmocka_unit_test(test_odd_sleeps),
      cmocka_unit_test(test_redis_stalls_under_many_waits),
  };
  return cmocka_run_group_tests_name("handlers that wait, attacked", tests, setup, teardown);
}
