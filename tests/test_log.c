/* test_log.c: src/log.c, events with fields in text, JSON and the journal. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "log.h"

#define MAX_LINES 16

static struct {
  char *line[MAX_LINES];
  gw_log_level level[MAX_LINES];
  size_t n;
} got;

static void sink(gw_log_level level, const char *line, void *ud) {
  (void)ud;
  if (got.n == MAX_LINES) return;
  got.level[got.n] = level;
  got.line[got.n++] = strdup(line);
}

static int setup(void **state) {
  (void)state;
  got.n = 0;
  gw_log_set_sink(sink, NULL);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (size_t i = 0; i < got.n; i++) free(got.line[i]);
  got.n = 0;
  gw_log_set_sink(NULL, NULL);
  gw_log_set_target(GW_LOG_STDERR);
  gw_log_setup(GW_LOG_INFO, GW_LOG_TEXT);
  return 0;
}

/* The line after "2026-11-25T13:15:19.123Z info  ". */
static const char *text_body(const char *line) {
  assert_int_equal(strlen(line) > 30, 1);
  assert_int_equal(line[4], '-');
  assert_int_equal(line[23], 'Z');
  assert_int_equal(line[24], ' ');
  return line + 31;
}

/* The session close line as relay.c writes it with gw_log today. */
static const char close_fmt[] =
    "session %" PRIu64 " close listener=%s client=%s upstream=%s client_bytes=%" PRIu64
    " server_bytes=%" PRIu64 " client_frames=%" PRIu64 " server_frames=%" PRIu64
    " duration_ms=%" PRIu64 " reason=\"%s\"";

static void log_close(uint64_t id, const char *reason) {
  gw_log_event(GW_LOG_INFO, "session_close",
               GW_FIELDS(GW_F_HIDE(GW_F_U64("session", id)), GW_F_STR("listener", "game"),
                         GW_F_STR("client", "127.0.0.1:40001"),
                         GW_F_STR("upstream", "[::1]:7000"), GW_F_U64("client_bytes", 1234),
                         GW_F_U64("server_bytes", 56789), GW_F_U64("client_frames", 12),
                         GW_F_U64("server_frames", 34), GW_F_U64("duration_ms", 5001),
                         GW_F_QSTR("reason", reason)),
               "session %" PRIu64 " close", id);
}

static void test_text_unchanged(void **state) {
  (void)state;
  log_close(7, "client closed");
  gw_log(GW_LOG_INFO, close_fmt, (uint64_t)7, "game", "127.0.0.1:40001", "[::1]:7000",
         (uint64_t)1234, (uint64_t)56789, (uint64_t)12, (uint64_t)34, (uint64_t)5001,
         "client closed");
  gw_warn("listener %s: accept failed: %s", "game", "too many open files");
  assert_int_equal(got.n, 3);
  assert_string_equal(text_body(got.line[0]), text_body(got.line[1]));
  assert_string_equal(text_body(got.line[0]),
                      "session 7 close listener=game client=127.0.0.1:40001 upstream=[::1]:7000 "
                      "client_bytes=1234 server_bytes=56789 client_frames=12 server_frames=34 "
                      "duration_ms=5001 reason=\"client closed\"");
  /* level padded to 5 as before */
  assert_memory_equal(got.line[0] + 24, " info  session", 14);
  assert_memory_equal(got.line[2] + 24, " warn  listener game: accept failed: too many", 45);
  assert_int_equal(got.level[2], GW_LOG_WARN);
}

static void test_text_fields_stay_on_one_line(void **state) {
  (void)state;
  static const char name[] = "a \"b\"\n2026 error forged\\\xff";
  gw_log_event(GW_LOG_INFO, "player", GW_FIELDS(GW_F_STR("name", name), GW_F_STR("plain", "x"),
                                                GW_F_STR("empty", ""), GW_F_STR("none", NULL),
                                                GW_F_I64("n", -3), GW_F_BOOL("ok", true),
                                                GW_F_F64("f", 0.25), GW_F_HEX("raw", "\x01\xab", 2)),
               NULL);
  assert_int_equal(got.n, 1);
  assert_string_equal(text_body(got.line[0]),
                      "player name=\"a \\\"b\\\"\\x0a2026 error forged\\\\\\xff\" plain=x empty=\"\" "
                      "none=- n=-3 ok=true f=0.25 raw=01ab");
}

/* A message with a peer's bytes in it (a script's error about a chat line)
 * stays one line too: no forged line can start in it. */
static void test_text_message_stays_on_one_line(void **state) {
  (void)state;
  gw_error("game: command /find: no player x\n2026-11-26T10:00:00.000Z error forged\r\x7f\xff é");
  gw_log_event(GW_LOG_WARN, "script", GW_FIELDS(GW_F_STR("player", "bob")), "x.lua: %s",
               "line\none");
  assert_int_equal(got.n, 2);
  assert_string_equal(text_body(got.line[0]),
                      "game: command /find: no player x\\x0a2026-11-26T10:00:00.000Z error "
                      "forged\\x0d\\x7f\\xff é");
  assert_string_equal(text_body(got.line[1]), "x.lua: line\\x0aone player=bob");
}

static void test_level_filter(void **state) {
  (void)state;
  gw_log_setup(GW_LOG_WARN, GW_LOG_JSON);
  gw_info("not shown");
  gw_log_event(GW_LOG_INFO, "x", NULL, "not shown");
  gw_log_event(GW_LOG_ERROR, "x", NULL, "shown");
  assert_int_equal(got.n, 1);
  assert_int_equal(got.level[0], GW_LOG_ERROR);
}

/* Every line is JSON to python3's parser and to jq too, not only to
 * jansson: each line one object (jq -s counts them). */
static void assert_python_parses(void) {
  char path[] = "/tmp/test_log_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  for (size_t i = 0; i < got.n; i++) fprintf(f, "%s\n", got.line[i]);
  fclose(f);
  char cmd[512];
  snprintf(cmd, sizeof cmd,
           "python3 -c 'import json,sys\nfor l in open(sys.argv[1],encoding=\"utf-8\"):"
           " assert type(json.loads(l)) is dict' %s", path);
  int rc = system(cmd);
  int jq = 0;
  if (system("command -v jq >/dev/null") == 0) {
    snprintf(cmd, sizeof cmd, "test \"$(jq -s 'map(select(type == \"object\")) | length' %s)\" = %zu",
             path, got.n);
    jq = system(cmd);
  }
  unlink(path);
  assert_int_equal(rc, 0);
  assert_int_equal(jq, 0);
}

static json_t *parse(size_t i) {
  json_error_t err;
  json_t *j = json_loads(got.line[i], JSON_ALLOW_NUL, &err);
  if (!j) fail_msg("line %zu: %s: %s", i, err.text, got.line[i]);
  assert_int_equal(strchr(got.line[i], '\n') == NULL, 1);
  return j;
}

static void test_json_fields(void **state) {
  (void)state;
  gw_log_setup(GW_LOG_INFO, GW_LOG_JSON);
  log_close(7, "client closed");
  gw_info("plain %d", 42);
  assert_int_equal(got.n, 2);
  assert_memory_equal(got.line[0], "{\"ts\":\"", 7);
  assert_non_null(strstr(got.line[0], "\",\"level\":\"info\",\"event\":\"session_close\","
                                      "\"msg\":\"session 7 close\",\"session\":7,"
                                      "\"listener\":\"game\",\"client\":\"127.0.0.1:40001\""));
  json_t *j = parse(0);
  assert_int_equal(json_integer_value(json_object_get(j, "session")), 7);
  assert_int_equal(json_integer_value(json_object_get(j, "server_bytes")), 56789);
  assert_string_equal(json_string_value(json_object_get(j, "reason")), "client closed");
  assert_null(json_object_get(j, "truncated"));
  json_decref(j);
  j = parse(1);
  assert_int_equal(json_object_size(j), 4);
  assert_string_equal(json_string_value(json_object_get(j, "event")), "log");
  assert_string_equal(json_string_value(json_object_get(j, "msg")), "plain 42");
  assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
  json_decref(j);
  assert_python_parses();
}

static void test_json_types(void **state) {
  (void)state;
  gw_log_setup(GW_LOG_DEBUG, GW_LOG_JSON);
  gw_log_event(GW_LOG_DEBUG, "types",
               GW_FIELDS(GW_F_I64("i", -5), GW_F_U64("big", UINT64_MAX), GW_F_F64("f", 1.5),
                         GW_F_F64("nan", NAN), GW_F_BOOL("b", false), GW_F_STR("none", NULL),
                         GW_F_HEX("hex", "\x00\xff", 2), GW_F_U64("level", 3),
                         GW_F_STR("msg", "field")),
               "m");
  assert_int_equal(got.n, 1);
  json_t *j = parse(0);
  assert_int_equal(json_integer_value(json_object_get(j, "i")), -5);
  assert_string_equal(json_string_value(json_object_get(j, "big")), "18446744073709551615");
  assert_true(json_real_value(json_object_get(j, "f")) == 1.5);
  assert_string_equal(json_string_value(json_object_get(j, "nan")), "nan");
  assert_true(json_is_false(json_object_get(j, "b")));
  assert_true(json_is_null(json_object_get(j, "none")));
  assert_string_equal(json_string_value(json_object_get(j, "hex")), "00ff");
  /* a field never overwrites the line's own keys */
  assert_string_equal(json_string_value(json_object_get(j, "level")), "debug");
  assert_int_equal(json_integer_value(json_object_get(j, "_level")), 3);
  assert_string_equal(json_string_value(json_object_get(j, "msg")), "m");
  assert_string_equal(json_string_value(json_object_get(j, "_msg")), "field");
  json_decref(j);
  assert_python_parses();
}

static void test_json_any_bytes(void **state) {
  (void)state;
  gw_log_setup(GW_LOG_INFO, GW_LOG_JSON);
  static const char quotes[] = "say \"hi\" \\ /";
  static const char nul[] = "a\0b";
  static const char bad[] = "\xff\xfe name \xe2\x82"; /* a euro sign cut short */
  static const char surrogate[] = "\xed\xa0\x80 \xc0\xaf ok \xe2\x82\xac";
  gw_log_event(GW_LOG_INFO, "chat",
               GW_FIELDS(GW_F_STR("quotes", quotes), GW_F_STR("newline", "one\ntwo\r\t"),
                         GW_F_STRN("nul", nul, 3), GW_F_STR("bad", bad),
                         GW_F_STR("surrogate", surrogate), GW_F_STR("\xff key", "v")),
               "player %s said", bad);
  assert_int_equal(got.n, 1);
  json_t *j = parse(0);
  assert_string_equal(json_string_value(json_object_get(j, "quotes")), quotes);
  assert_string_equal(json_string_value(json_object_get(j, "newline")), "one\ntwo\r\t");
  json_t *v = json_object_get(j, "nul");
  assert_int_equal(json_string_length(v), 3);
  assert_memory_equal(json_string_value(v), nul, 3);
  assert_string_equal(json_string_value(json_object_get(j, "bad")),
                      "\xef\xbf\xbd\xef\xbf\xbd name \xef\xbf\xbd\xef\xbf\xbd");
  assert_string_equal(json_string_value(json_object_get(j, "surrogate")),
                      "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd ok \xe2\x82\xac");
  assert_string_equal(json_string_value(json_object_get(j, "msg")),
                      "player \xef\xbf\xbd\xef\xbf\xbd name \xef\xbf\xbd\xef\xbf\xbd said");
  assert_string_equal(json_string_value(json_object_get(j, "\xef\xbf\xbd key")), "v");
  json_decref(j);
  assert_python_parses();
}

static void test_long_values_cut(void **state) {
  (void)state;
  gw_log_setup(GW_LOG_INFO, GW_LOG_JSON);
  char *big = malloc(10241);
  /* multibyte characters, so that the cut must fall between them */
  for (size_t i = 0; i < 10240; i += 3) memcpy(big + i, "\xe2\x82\xac", 10240 - i < 3 ? 10240 - i : 3);
  big[10240] = '\0';
  gw_log_event(GW_LOG_INFO, "big", GW_FIELDS(GW_F_STR("value", big), GW_F_STR("small", "s")),
               NULL);
  gw_info("%s", big);
  gw_log_event(GW_LOG_INFO, "fits", GW_FIELDS(GW_F_STRN("value", big, 4095)), NULL);
  assert_int_equal(got.n, 3);
  for (size_t i = 0; i < 2; i++) {
    json_t *j = parse(i);
    const char *v = json_string_value(json_object_get(j, i ? "msg" : "value"));
    size_t n = strlen(v);
    assert_true(n <= GW_LOG_VALUE_MAX + strlen(GW_LOG_CUT_MARK));
    assert_true(n > GW_LOG_VALUE_MAX - 4);
    assert_string_equal(v + n - strlen(GW_LOG_CUT_MARK), GW_LOG_CUT_MARK);
    assert_memory_equal(v, big, n - strlen(GW_LOG_CUT_MARK)); /* whole characters */
    assert_true(json_is_true(json_object_get(j, "truncated")));
    if (i == 0) assert_null(json_object_get(j, "msg")); /* an event without a message */
    json_decref(j);
  }
  json_t *j = parse(2);
  assert_null(json_object_get(j, "truncated"));
  json_decref(j);
  assert_python_parses();

  /* text: the same mark */
  teardown(NULL);
  setup(NULL);
  gw_log_event(GW_LOG_INFO, "big", GW_FIELDS(GW_F_STR("value", big)), NULL);
  assert_int_equal(got.n, 1);
  const char *end = got.line[0] + strlen(got.line[0]) - strlen(GW_LOG_CUT_MARK);
  assert_string_equal(end, GW_LOG_CUT_MARK);
  free(big);
}

/* Runs fn with stderr going to a file; returns what it wrote. */
static char *capture_stderr(void (*fn)(void)) {
  char path[] = "/tmp/test_log_err_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  fflush(stderr);
  int saved = dup(2);
  dup2(fd, 2);
  fn();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  static char buf[8192];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  buf[n > 0 ? n : 0] = '\0';
  close(fd);
  unlink(path);
  return buf;
}

static int journal_rc[3];

static void journal_steps(void) {
  journal_rc[0] = gw_log_set_target(GW_LOG_JOURNALD);
  journal_rc[1] = gw_log_set_target(GW_LOG_JOURNALD); /* a reload: no second warning */
  gw_log_event(GW_LOG_INFO, "after", GW_FIELDS(GW_F_U64("session", 9)), "still logged");
}

static void test_journald_or_fallback(void **state) {
  (void)state;
  gw_log_set_sink(NULL, NULL);
  bool journal = access("/run/systemd/journal/socket", W_OK) == 0;
  char *err = capture_stderr(journal_steps);
  if (journal) { /* a journal to write to: the entry went there */
    assert_int_equal(journal_rc[0], 0);
    assert_int_equal(gw_log_get_target(), GW_LOG_JOURNALD);
    assert_null(strstr(err, "still logged"));
    return;
  }
  assert_int_equal(journal_rc[0], -ENOENT);
  assert_int_equal(journal_rc[1], -ENOENT);
  assert_int_equal(gw_log_get_target(), GW_LOG_STDERR);
  const char *w = strstr(err, " warn  log.target = \"journald\": no journal at "
                              "/run/systemd/journal/socket");
  assert_non_null(w);
  assert_null(strstr(strchr(w, '\n'), "log.target")); /* once */
  assert_non_null(strstr(err, " info  still logged session=9\n"));
}

/* In a mount namespace of its own with a fresh /run: binds the journal's
 * socket itself, logs through it, and prints the datagrams it received. */
static int journal_child(void) {
  int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX, .sun_path = "/run/systemd/journal/socket"};
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) return 2;
  gw_log_setup(GW_LOG_DEBUG, GW_LOG_JSON); /* the journal takes fields whatever the format */
  if (gw_log_set_target(GW_LOG_JOURNALD) != 0) return 3;
  gw_log_event(GW_LOG_WARN, "session_close",
               GW_FIELDS(GW_F_HIDE(GW_F_U64("session", 7)), GW_F_STR("listener", "game"),
                         GW_F_QSTR("reason", "client closed"), GW_F_STR("bad-key.x", "\xff")),
               "session %d close", 7);
  gw_log(GW_LOG_ERROR, "plain %s", "line");
  static char buf[65536];
  for (int i = 0; i < 2; i++) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return 4;
    printf("%.*s----\n", (int)n, buf);
  }
  return 0;
}

static void test_journald_fields(void **state) {
  (void)state;
  char self[512];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  assert_true(n > 0);
  self[n] = '\0';
  if (geteuid() != 0 || system("command -v unshare >/dev/null") != 0) {
    fprintf(stderr, "test_journald_fields: needs root and unshare(1) for a private /run\n");
    skip();
  }
  char cmd[1200];
  snprintf(cmd, sizeof cmd,
           "unshare -m sh -c 'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && "
           "exec \"$0\" journal-child' '%s'", self);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  static char out[8192];
  size_t len = fread(out, 1, sizeof out - 1, p);
  out[len] = '\0';
  int status = pclose(p);
  if (status != 0) fail_msg("%s: status %d, output: %s", cmd, status, out);
  const char *second = strstr(out, "----\n");
  assert_non_null(second);
  /* libsystemd adds SYSLOG_IDENTIFIER after these */
  static const char first[] = "MESSAGE=session 7 close listener=game reason=\"client closed\" "
                              "bad-key.x=\\xff\nGW_EVENT=session_close\nGW_SESSION=7\n"
                              "GW_LISTENER=game\nGW_REASON=client closed\n"
                              "GW_BAD_KEY_X=\xef\xbf\xbd\nPRIORITY=4\n";
  assert_memory_equal(out, first, sizeof first - 1);
  static const char plain[] = "MESSAGE=plain line\nPRIORITY=3\n";
  assert_memory_equal(second + 5, plain, sizeof plain - 1);
}

static void test_hex(void **state) {
  (void)state;
  char out[16];
  assert_int_equal(gw_hex((const uint8_t *)"\x00\x7f\xff\x10", 4, out, sizeof out), 8);
  assert_string_equal(out, "007fff10");
  /* only whole bytes that fit */
  assert_int_equal(gw_hex((const uint8_t *)"\x01\x02\x03", 3, out, 6), 4);
  assert_string_equal(out, "0102");
  assert_int_equal(gw_hex((const uint8_t *)"\x01", 1, out, 1), 0);
  assert_string_equal(out, "");
  assert_int_equal(gw_hex(NULL, 0, out, sizeof out), 0);
}

static void test_ratelimit(void **state) {
  (void)state;
  gw_ratelimit rl = {.per_s = 2};
  assert_true(gw_ratelimit_allow(&rl, 1000));
  assert_true(gw_ratelimit_allow(&rl, 1100));
  assert_false(gw_ratelimit_allow(&rl, 1200));
  assert_int_equal(rl.suppressed, 1);
  assert_true(gw_ratelimit_allow(&rl, 2000));
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "journal-child") == 0) return journal_child();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_text_unchanged, setup, teardown),
      cmocka_unit_test_setup_teardown(test_text_fields_stay_on_one_line, setup, teardown),
      cmocka_unit_test_setup_teardown(test_text_message_stays_on_one_line, setup, teardown),
      cmocka_unit_test_setup_teardown(test_level_filter, setup, teardown),
      cmocka_unit_test_setup_teardown(test_json_fields, setup, teardown),
      cmocka_unit_test_setup_teardown(test_json_types, setup, teardown),
      cmocka_unit_test_setup_teardown(test_json_any_bytes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_long_values_cut, setup, teardown),
      cmocka_unit_test_setup_teardown(test_journald_or_fallback, setup, teardown),
      cmocka_unit_test_setup_teardown(test_journald_fields, setup, teardown),
      cmocka_unit_test(test_hex),
      cmocka_unit_test(test_ratelimit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
