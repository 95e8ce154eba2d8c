/* it_redis.c: gw.redis against a redis-server of the test's own: replies of
 * each type, pipelining in order, a ban published at one gangway closing
 * the named session at another within a second, Redis killed under live
 * sessions (bytes keep flowing, handlers get an error, commands come back
 * after a restart), and a refused AUTH reported. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "itest.h"
#include "it_redisd.h"

/* op 10: the body is a command ("SET k v"); the answer (op 11) describes
 * the reply: "<lua type>:<value>", "nil", "table:a,b", "error:<message>".
 * op 12: a pipeline of the commands split on ';'. op 20: the session's
 * name (first frame); op 21: ban the name in the body, fleet-wide. */
static const char rules_lua[] =
    "local gw = require 'gangway'\n"
    "local function describe(v, err)\n"
    "  if v == nil then return err and ('error:' .. err) or 'nil' end\n"
    "  if type(v) == 'table' then\n"
    "    local parts = {}\n"
    "    for _, x in ipairs(v) do\n"
    "      parts[#parts + 1] = type(x) == 'table' and ('err=' .. tostring(x.err)) or tostring(x)\n"
    "    end\n"
    "    return 'table:' .. table.concat(parts, ',')\n"
    "  end\n"
    "  return (math.type(v) or type(v)) .. ':' .. tostring(v)\n"
    "end\n"
    "local function words(s) local w = {} for x in s:gmatch('%S+') do w[#w + 1] = x end return w end\n"
    "gw.on('client', 10, function(pkt, s)\n"
    "  local v, err = gw.redis(table.unpack(words(pkt:body())))\n"
    "  s:send_to_client(gw.packet(11, describe(v, err)))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on('client', 12, function(pkt, s)\n"
    "  local cmds = {}\n"
    "  for c in pkt:body():gmatch('[^;]+') do cmds[#cmds + 1] = words(c) end\n"
    "  local res, err = gw.redis_pipeline(cmds)\n"
    "  s:send_to_client(gw.packet(11, describe(res, err) .. (res and err and (' first error: ' .. err) or '')))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.shared.by_name = gw.shared.by_name or {} -- kept across reloads\n"
    "local by_name = gw.shared.by_name\n"
    "gw.on('client', 20, function(pkt, s)\n"
    "  s.state.name = pkt:body()\n"
    "  by_name[s.state.name] = s\n"
    "end)\n"
    "gw.on_close(function(s) if s.state.name then by_name[s.state.name] = nil end end)\n"
    "gw.on('client', 21, function(pkt, s)\n"
    "  local ok, err = gw.publish('bans', pkt:body())\n"
    "  s:send_to_client(gw.packet(11, ok and 'published' or ('error:' .. err)))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.on('client', 13, function(pkt, s)\n"
    "  s:sleep(300)\n"
    "  s:send_to_client(gw.packet(11, 'generation ' .. gw.generation))\n"
    "  return gw.DROP\n"
    "end)\n"
    "gw.subscribe('bans', function(channel, name)\n"
    "  local s = by_name[name]\n"
    "  gw.log.info('ban of ' .. name .. ' on ' .. channel .. (s and ': closing' or ': not here'))\n"
    "  if s then s:close('banned') end\n"
    "end)\n";

typedef redis_echo fixture;

static void start_gangway(it_gangway *g, fixture *f, int port, const char *redis_extra) {
  it_gangway_prepare(g);
  it_write(g->dir, "rules.lua", "%s", rules_lua);
  it_write(g->dir, "config.lua",
           "return {\n"
           "  listeners = { { name = 'game', listen = '127.0.0.1:%d', upstream = '127.0.0.1:%d',\n"
           "                  framing = 'top', scripts = { 'rules.lua' } } },\n"
           "  redis = { addr = '127.0.0.1:%d', timeout_ms = 1000, connect_ms = 500%s },\n"
           "  control = 'gangway.sock',\n"
           "}\n",
           port, f->echo_port, f->redis.port, redis_extra ? redis_extra : "");
  it_gangway_run(g, port);
}

/* A gangway on a free port whose Redis command connection is up. */
static int start_connected(it_gangway *g, fixture *f) {
  int port = it_free_port();
  start_gangway(g, f, port, NULL);
  assert_true(it_log_wait(g, "(commands): connected", 3000));
  return port;
}

/* Sends a command frame and returns the description that comes back. */
static const char *ask(int fd, uint16_t op, const char *cmd) { return ask_answer(fd, op, cmd, 3000); }

static void test_replies_of_each_type(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = start_connected(&g, f);
  int fd = it_connect(port);
  assert_string_equal(ask(fd, 10, "SET k hello"), "string:OK");          /* status */
  assert_string_equal(ask(fd, 10, "GET k"), "string:hello");             /* bulk */
  assert_string_equal(ask(fd, 10, "INCR n"), "integer:1");               /* integer */
  assert_string_equal(ask(fd, 10, "GET nothing-here"), "nil");           /* nil */
  assert_string_equal(ask(fd, 10, "RPUSH l a b c"), "integer:3");
  assert_string_equal(ask(fd, 10, "LRANGE l 0 -1"), "table:a,b,c");     /* array */
  assert_string_equal(ask(fd, 10, "MGET k nothing-here"), "table:hello,false");
  const char *e = ask(fd, 10, "HGET k field");                          /* error */
  assert_non_null(strstr(e, "error:WRONGTYPE"));
  /* pipelining: sent together, replies in order */
  assert_string_equal(ask(fd, 12, "DEL p;INCR p;INCR p;INCRBY p 10;GET p"),
                      "table:0,1,2,12,12");
  e = ask(fd, 12, "INCR p;HGET k f;INCR p");
  assert_non_null(strstr(e, "table:13,err=WRONGTYPE"));
  assert_non_null(strstr(e, ",14 first error: WRONGTYPE"));
  /* what the test sees in Redis itself */
  char out[256];
  const char *get[] = {"GET", "p"};
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 2, get), 0);
  assert_non_null(strstr(out, "14"));
  echo_text(fd, "frames nobody handles still pass");
  close(fd);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

static void test_ban_across_two_gangways(void **state) {
  fixture *f = *state;
  it_gangway a = {0}, b = {0};
  int pa = it_free_port(), pb = it_free_port();
  start_gangway(&a, f, pa, NULL);
  start_gangway(&b, f, pb, NULL);
  assert_true(it_log_wait(&a, "(pub/sub): connected", 3000));
  assert_true(it_log_wait(&b, "(pub/sub): connected", 3000));
  int bob = it_connect(pb), alice = it_connect(pb), admin = it_connect(pa);
  send_text(bob, 20, "bob");
  send_text(alice, 20, "alice");
  send_text(admin, 20, "admin");
  char body[64];
  for (int i = 0; i < 3; i++) { /* each name frame comes back through the echo */
    int fd = i == 0 ? bob : i == 1 ? alice : admin;
    assert_true(read_text(fd, NULL, body, sizeof body, 2000) >= 0);
  }
  usleep(200 * 1000); /* the subscriptions are in place once both are up */
  uint64_t t0 = it_now_ms();
  assert_string_equal(ask(admin, 21, "bob"), "published");
  assert_int_equal(it_wait_eof(bob, 1000, NULL), 1); /* closed within 1 s */
  uint64_t took = it_now_ms() - t0;
  printf("ban published at one gangway closed the session at the other in %llu ms\n",
         (unsigned long long)took);
  assert_true(it_log_wait(&b, "ban of bob on bans: closing", 1000));
  assert_true(it_log_wait(&a, "ban of bob on bans: not here", 1000));
  echo_text(alice, "alice stays");
  close(bob);
  close(alice);
  close(admin);
  assert_int_equal(it_gangway_stop(&a, SIGTERM, 5000), 0);
  assert_int_equal(it_gangway_stop(&b, SIGTERM, 5000), 0);
}

static void test_redis_killed_and_back(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = start_connected(&g, f);
  int fd = it_connect(port), by = it_connect(port);
  assert_string_equal(ask(fd, 10, "SET k before"), "string:OK");
  redisd_stop(&f->redis);
  /* sessions keep relaying */
  for (int i = 0; i < 20; i++) echo_text(by, "still relaying");
  /* handlers get an error string, at once */
  const char *e = ask(fd, 10, "GET k");
  assert_non_null(strstr(e, "error:redis: "));
  uint64_t t0 = it_now_ms();
  e = ask(fd, 10, "GET k");
  assert_true(it_now_ms() - t0 < 500); /* not queued behind a dead Redis */
  assert_non_null(strstr(e, "error:redis: not connected ("));
  assert_non_null(strstr(e, "retrying in "));
  printf("while Redis is down: %s\n", e);
  /* back on the same port: commands work again after the reconnect */
  redisd_start(&f->redis, NULL, NULL);
  uint64_t until = it_now_ms() + 8000;
  bool back = false;
  while (!back && it_now_ms() < until) {
    e = ask(fd, 10, "SET k after");
    back = !strcmp(e, "string:OK");
    if (!back) usleep(100 * 1000);
  }
  assert_true(back);
  printf("commands back %llu ms after the restart\n", (unsigned long long)(it_now_ms() - t0));
  assert_string_equal(ask(fd, 10, "GET k"), "string:after");
  echo_text(by, "and after");
  close(fd);
  close(by);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

static void test_auth_failure_reported(void **state) {
  fixture *f = *state;
  it_redisd locked = {0};
  redisd_start(&locked, "--requirepass", "right-password");
  it_gangway g = {0};
  int port = it_free_port();
  int saved = f->redis.port;
  f->redis.port = locked.port;
  start_gangway(&g, f, port, ", password = 'wrong-password'");
  f->redis.port = saved;
  assert_true(it_log_wait(&g, "AUTH failed", 3000));
  int fd = it_connect(port);
  const char *e = ask(fd, 10, "PING");
  printf("with a wrong password: %s\n", e);
  assert_non_null(strstr(e, "error:redis: not connected (AUTH failed: "));
  close(fd);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  /* the right one works */
  it_gangway ok = {0};
  f->redis.port = locked.port;
  start_gangway(&ok, f, port, ", password = 'right-password', db = 3");
  f->redis.port = saved;
  assert_true(it_log_wait(&ok, "(commands): connected", 3000));
  fd = it_connect(port);
  assert_string_equal(ask(fd, 10, "SET in-db-3 yes"), "string:OK");
  close(fd);
  const char *sel[] = {"AUTH", "right-password"};
  char out[128];
  assert_int_equal(redis_cmd(locked.port, out, sizeof out, 2, sel), 0);
  assert_int_equal(it_gangway_stop(&ok, SIGTERM, 5000), 0);
  redisd_stop(&locked);
}

static void test_command_timeout(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = start_connected(&g, f);
  int fd = it_connect(port);
  assert_string_equal(ask(fd, 10, "SET t before"), "string:OK");
  kill(f->redis.pid, SIGSTOP); /* up, but answers nothing */
  const char *e = ask(fd, 10, "SET t during");
  assert_string_equal(e, "error:redis: no reply within 1000 ms (redis.timeout_ms)");
  echo_text(fd, "relaying meanwhile");
  /* the late reply is ignored; the connection, dropped at the timeout
   * (what waited behind that command would have waited as long), is made
   * again once Redis answers */
  kill(f->redis.pid, SIGCONT);
  uint64_t until = it_now_ms() + 5000;
  while (strstr(e = ask(fd, 10, "GET t"), "not connected") && it_now_ms() < until)
    usleep(50 * 1000);
  assert_string_equal(e, "string:during");
  /* counted, in `gangway stats` (the registry /metrics renders too) */
  char sock[256], *out = malloc(65536);
  snprintf(sock, sizeof sock, "%s/gangway.sock", g.dir);
  assert_true(it_control(sock, "stats", out, 65536, 2000) > 0);
  static const char *const want[] = {
      "\"gangway_redis_commands_total\":{\"type\":\"counter\"", "\"value\":3}",
      "\"gangway_redis_timeouts_total\":{\"type\":\"counter\"", "\"value\":1}",
      "\"gangway_redis_up\":{\"type\":\"gauge\"", "\"value\":1}"};
  for (int i = 0; i < 6; i += 2) {
    const char *at = strstr(out, want[i]);
    assert_non_null(at);
    const char *v = strstr(at, "\"value\":");
    assert_non_null(v);
    assert_memory_equal(v, want[i + 1], strlen(want[i + 1]));
  }
  free(out);
  close(fd);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

/* The running generation's rules with another ban channel. */
static void write_rules_for(it_gangway *g, const char *channel) {
  const char *at = strstr(rules_lua, "gw.subscribe('bans'");
  assert_non_null(at);
  it_write(g->dir, "rules.lua", "%.*sgw.subscribe('%s'%s", (int)(at - rules_lua), rules_lua,
           channel, at + strlen("gw.subscribe('bans'"));
}

static int count_subscribers(int port, const char *channel) {
  char out[64];
  const char *argv[] = {"PUBLISH", channel, "nobody"};
  assert_int_equal(redis_cmd(port, out, sizeof out, 3, argv), 0);
  return atoi(out + 1); /* ":N" */
}

static void test_reloads(void **state) {
  fixture *f = *state;
  it_gangway g = {0};
  int port = it_free_port();
  start_gangway(&g, f, port, NULL);
  assert_true(it_log_wait(&g, "(pub/sub): connected", 3000));
  int fd = it_connect(port), bob = it_connect(port);
  send_text(bob, 20, "bob");
  char body[64];
  assert_true(read_text(bob, NULL, body, sizeof body, 2000) >= 0);
  usleep(100 * 1000);
  assert_int_equal(count_subscribers(f->redis.port, "bans"), 1);
  /* a call waiting across a reload finishes with its generation's code */
  send_text(fd, 13, "old");
  usleep(50 * 1000);
  write_rules_for(&g, "bans2");
  kill(g.pid, SIGHUP);
  assert_true(it_log_wait(&g, "generation 2 active", 3000));
  uint16_t op;
  assert_true(read_text(fd, &op, body, sizeof body, 3000) >= 0);
  assert_string_equal(body, "generation 1"); /* started before the reload */
  assert_string_equal(ask(fd, 13, "new"), "generation 2");
  /* same redis settings: the connections stay; subscriptions follow */
  assert_int_equal(it_log_count(&g, "(commands): connected", NULL), 1);
  assert_int_equal(count_subscribers(f->redis.port, "bans"), 0);
  assert_int_equal(count_subscribers(f->redis.port, "bans2"), 1);
  const char *pub[] = {"PUBLISH", "bans2", "bob"};
  char out[64];
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 3, pub), 0);
  assert_int_equal(it_wait_eof(bob, 1000, NULL), 1);
  /* other settings: both connections made anew */
  it_write(g.dir, "config.lua",
           "return {\n"
           "  listeners = { { name = 'game', listen = '127.0.0.1:%d', upstream = '127.0.0.1:%d',\n"
           "                  framing = 'top', scripts = { 'rules.lua' } } },\n"
           "  redis = { addr = '127.0.0.1:%d', db = 5 },\n"
           "  control = '',\n"
           "}\n",
           port, f->echo_port, f->redis.port);
  kill(g.pid, SIGHUP);
  assert_true(it_log_wait(&g, "generation 3 active", 3000));
  assert_true(it_log_wait(&g, "redis: new settings", 1000));
  uint64_t until = it_now_ms() + 3000;
  while (it_log_count(&g, "(commands): connected", NULL) < 2 && it_now_ms() < until)
    usleep(20 * 1000);
  assert_int_equal(it_log_count(&g, "(commands): connected", NULL), 2);
  assert_string_equal(ask(fd, 10, "SET in-db-5 yes"), "string:OK");
  const char *sel[] = {"GET", "in-db-5"}; /* not in db 0, where the test looks */
  assert_int_equal(redis_cmd(f->redis.port, out, sizeof out, 2, sel), 0);
  assert_non_null(strstr(out, "$-1"));
  close(fd);
  close(bob);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_replies_of_each_type),
      cmocka_unit_test(test_ban_across_two_gangways),
      cmocka_unit_test(test_redis_killed_and_back),
      cmocka_unit_test(test_auth_failure_reported),
      cmocka_unit_test(test_reloads),
      cmocka_unit_test(test_command_timeout),
  };
  return cmocka_run_group_tests_name("gw.redis against redis-server", tests, redis_echo_setup,
                                     redis_echo_teardown);
}
