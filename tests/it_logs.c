/* it_logs.c: gangway's logs with log.format = "json" (issue 13.3): every
 * line of a real gangway's log is one JSON object that jq and jansson
 * parse, with real fields, even when a player's chat line carries invalid
 * UTF-8, control bytes or 10 KB of text that a script logs; and
 * log.target = "journald" applied at start and at reload. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "itest.h"

#define JOURNAL_SOCKET "/run/systemd/journal/socket"

/* A top CM_SAY-like frame (opcode 1) whose body is a top string. */
static size_t chat_frame(uint8_t *f, size_t cap, const uint8_t *text, size_t n) {
  size_t len = 8 + 2 + n + 1;
  assert_true(len <= cap && len <= 16384);
  f[0] = (uint8_t)(len >> 8), f[1] = (uint8_t)len;
  f[2] = 0x80, f[3] = f[4] = f[5] = 0;
  f[6] = 0, f[7] = 1;
  f[8] = (uint8_t)((n + 1) >> 8), f[9] = (uint8_t)(n + 1);
  memcpy(f + 10, text, n);
  f[10 + n] = 0;
  return len;
}

/* Every line of the log: one JSON object (jansson), the lot through jq.
 * Returns the lines parsed, in order (a JSON array). */
static json_t *parse_log(it_gangway *g) {
  char *log = it_slurp(g->log);
  assert_non_null(log);
  json_t *lines = json_array();
  int n = 0;
  for (char *line = log, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) fail_msg("the log's last line has no newline: %s", line);
    *nl = '\0';
    n++;
    json_error_t err;
    json_t *o = json_loads(line, JSON_REJECT_DUPLICATES, &err);
    if (!o || !json_is_object(o))
      fail_msg("log line %d is not a JSON object (%s): %s", n, err.text, line);
    json_array_append_new(lines, o);
  }
  free(log);
  /* jq: one object per line, nothing else. */
  char cmd[512], out[64] = "";
  snprintf(cmd, sizeof cmd, "jq -c 'if type == \"object\" then 1 else error(\"not an object\") end' '%s' | wc -l",
           g->log);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  if (!fgets(out, sizeof out, p)) out[0] = '\0';
  assert_int_equal(pclose(p), 0);
  if (atoi(out) != n) fail_msg("jq read %d objects, the log has %d lines", atoi(out), n);
  return lines;
}

/* The first line whose event is `event` (and whose field key holds a
 * string containing needle, unless key is NULL). */
static json_t *find(json_t *lines, const char *event, const char *key, const char *needle) {
  size_t i;
  json_t *o;
  json_array_foreach(lines, i, o) {
    const char *ev = json_string_value(json_object_get(o, "event"));
    if (!ev || strcmp(ev, event) != 0) continue;
    if (!key) return o;
    const char *v = json_string_value(json_object_get(o, key));
    if (v && strstr(v, needle)) return o;
  }
  return NULL;
}

static void test_json_lines_with_hostile_bytes(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "chat.lua",
           "local gw = require \"gangway\"\n"
           "gw.on(\"client\", 1, function(pkt, session)\n"
           "  local text = pkt:str(8)\n"
           "  gw.log.info(\"said: \" .. text)\n"
           "  gw.log.warn{ event = \"chat\", session = session.id, text = text, len = #text }\n"
           "end)\n");
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\", framing = \"top\", scripts = { \"chat.lua\" } } },\n"
           "  control = \"ctl.sock\", log = { format = \"json\" } }\n",
           port, up_port);
  it_gangway_run(&g, port);
  int fd = it_connect(port);
  assert_true(fd >= 0);
  /* Invalid UTF-8 (a lone continuation byte, a truncated sequence, an
   * overlong NUL, a surrogate), control bytes, quotes and backslashes. */
  static const uint8_t hostile[] = "bad \x80 \xc3( \xc0\x80 \xed\xa0\x80 \xff\xfe ctl \x01\x1b[31m "
                                   "line\nbreak \"quoted\" back\\slash \t tab";
  static uint8_t frame[16384], back[16384];
  size_t n = chat_frame(frame, sizeof frame, hostile, sizeof hostile - 1);
  assert_int_equal(it_send_all(fd, frame, n), 0);
  assert_int_equal(it_recv_exact(fd, back, n, 3000), n);
  /* A long line: cut in the log, and marked so. */
  static uint8_t longtext[10000];
  memset(longtext, 'x', sizeof longtext);
  longtext[5000] = 0xff;
  n = chat_frame(frame, sizeof frame, longtext, sizeof longtext);
  assert_int_equal(it_send_all(fd, frame, n), 0);
  assert_int_equal(it_recv_exact(fd, back, n, 3000), n);
  /* A protocol error, so the relay's own lines are there too. */
  static const uint8_t bad[8] = {0, 1, 0xff, 0xfe};
  assert_int_equal(it_send_all(fd, bad, sizeof bad), 0);
  assert_int_equal(it_wait_eof(fd, 3000, NULL), 1);
  close(fd);
  assert_true(it_log_wait(&g, "session_close", 3000));
  /* Read the log once gangway has written its last line, before the stop
   * removes the directory. */
  kill(g.pid, SIGTERM);
  assert_true(it_log_wait(&g, "drained, exiting", 5000));
  usleep(200 * 1000);
  json_t *lines = parse_log(&g);
  assert_int_equal(it_gangway_stop(&g, 0, 10000), 0);
  json_t *o = find(lines, "session_open", NULL, NULL);
  assert_non_null(o);
  assert_true(json_is_integer(json_object_get(o, "session")));
  assert_string_equal(json_string_value(json_object_get(o, "listener")), "game");
  assert_non_null(strstr(json_string_value(json_object_get(o, "client")), "127.0.0.1:"));
  assert_non_null(json_object_get(o, "ts"));
  assert_string_equal(json_string_value(json_object_get(o, "level")), "info");
  /* The chat line as fields: its text with U+FFFD for the bad bytes and
   * the control bytes kept as characters. */
  o = find(lines, "chat", "text", "bad ");
  if (!o) fail_msg("no chat event with the text");
  const char *text = json_string_value(json_object_get(o, "text"));
  assert_non_null(strstr(text, "\xef\xbf\xbd"));
  assert_non_null(strstr(text, "line\nbreak \"quoted\" back\\slash"));
  assert_non_null(strstr(text, "\x1b[31m"));
  assert_true(json_is_integer(json_object_get(o, "session")));
  assert_int_equal(json_integer_value(json_object_get(o, "len")), sizeof hostile - 1);
  assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
  /* The long one: cut, marked, still one line. */
  o = find(lines, "chat", "text", "xxxxxxxxxx");
  assert_non_null(o);
  assert_true(json_is_true(json_object_get(o, "truncated")));
  assert_true(strlen(json_string_value(json_object_get(o, "text"))) < sizeof longtext);
  assert_non_null(strstr(json_string_value(json_object_get(o, "text")), "(cut)"));
  /* The plain gw.log.info line: in msg. */
  size_t i;
  bool said = false;
  json_array_foreach(lines, i, o) {
    const char *msg = json_string_value(json_object_get(o, "msg"));
    if (msg && strstr(msg, "said: bad ") && strstr(msg, "\xef\xbf\xbd")) said = true;
  }
  assert_true(said);
  o = find(lines, "protocol_error", NULL, NULL);
  assert_non_null(o);
  assert_true(json_is_integer(json_object_get(o, "session")));
  o = find(lines, "session_close", NULL, NULL);
  assert_non_null(o);
  assert_true(json_is_integer(json_object_get(o, "client_bytes")));
  assert_non_null(strstr(json_string_value(json_object_get(o, "reason")), "protocol error"));
  json_decref(lines);
  it_server_stop(up);
}

/* log.target = "journald" takes effect at start and at reload: without a
 * journal here, gangway says so and goes on on stderr. */
static void test_journald_target_at_start_and_reload(void **state) {
  (void)state;
  if (access(JOURNAL_SOCKET, F_OK) == 0) skip(); /* a real journal would take the lines */
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  const char *fmt = "return { listeners = { { name = \"game\", listen = \"127.0.0.1:%d\", upstream = "
                    "\"127.0.0.1:%d\" } }, control = \"ctl.sock\", log = { target = \"%s\" } }\n";
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua", fmt, port, up_port, "stderr");
  it_gangway_run(&g, port);
  assert_int_equal(it_log_count(&g, "no journal at", NULL), 0);
  it_write(g.dir, "config.lua", fmt, port, up_port, "journald");
  char out[256], sock[256];
  snprintf(sock, sizeof sock, "%s/ctl.sock", g.dir);
  assert_true(it_control(sock, "reload", out, sizeof out, 3000) > 0);
  assert_non_null(strstr(out, "ok: generation 2"));
  assert_true(it_log_wait(&g, "log.target = \"journald\": no journal at", 2000));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
  /* And from the start. */
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua", fmt, port, up_port, "journald");
  it_gangway_run(&g, port);
  assert_true(it_log_wait(&g, "log.target = \"journald\": no journal at", 2000));
  assert_true(it_log_wait(&g, " running (config ", 2000));
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 10000), 0);
  it_server_stop(up);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_json_lines_with_hostile_bytes),
      cmocka_unit_test(test_journald_target_at_start_and_reload),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
