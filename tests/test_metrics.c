/* test_metrics.c: src/metrics.c, the registry and its Prometheus and JSON
 * renderings. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "metrics.h"

static const uint64_t BOUNDS_US[] = {100, 1000, 10000};

/* A registry with each type, labels and scales, filled with known values. */
static gw_metrics *sample(void) {
  gw_metrics *m = gw_metrics_new();
  assert_non_null(m);
  gw_metric *frames = gw_metrics_counter(m, "gangway_frames_total",
      "Frames read, per listener and side.", GW_LABELS("listener", "side"));
  assert_non_null(frames);
  *gw_metric_slot(frames, GW_LABELS("game", "client")) += 7;
  *gw_metric_slot(frames, GW_LABELS("game", "server")) += 3;
  gw_metric *open = gw_metrics_gauge(m, "gangway_sessions_open", "Sessions open now.", NULL);
  *gw_metric_gauge(open, NULL) = 2;
  gw_metric *delta = gw_metrics_gauge(m, "gangway_test_delta", "A gauge below zero.", NULL);
  *gw_metric_gauge(delta, NULL) = -5;
  gw_metric *h = gw_metrics_histogram(m, "gangway_handler_seconds",
      "Time in handlers.", GW_LABELS("listener"), BOUNDS_US, 3);
  assert_non_null(h);
  gw_metric_set_scale(h, 1e6);
  gw_histogram *hg = gw_metric_hist(h, GW_LABELS("game"));
  gw_histogram_observe(hg, 50);
  gw_histogram_observe(hg, 100);   /* on the bound: le is inclusive */
  gw_histogram_observe(hg, 5000);
  gw_histogram_observe(hg, 20000); /* past the last bound: +Inf only */
  gw_metric *cpu = gw_metrics_counter(m, "gangway_test_seconds_total", "Scaled counter.", NULL);
  gw_metric_set_scale(cpu, 1e6);
  *gw_metric_slot(cpu, NULL) = 1500000;
  return m;
}

static const char SAMPLE_TEXT[] =
    "# HELP gangway_frames_total Frames read, per listener and side.\n"
    "# TYPE gangway_frames_total counter\n"
    "gangway_frames_total{listener=\"game\",side=\"client\"} 7\n"
    "gangway_frames_total{listener=\"game\",side=\"server\"} 3\n"
    "# HELP gangway_sessions_open Sessions open now.\n"
    "# TYPE gangway_sessions_open gauge\n"
    "gangway_sessions_open 2\n"
    "# HELP gangway_test_delta A gauge below zero.\n"
    "# TYPE gangway_test_delta gauge\n"
    "gangway_test_delta -5\n"
    "# HELP gangway_handler_seconds Time in handlers.\n"
    "# TYPE gangway_handler_seconds histogram\n"
    "gangway_handler_seconds_bucket{listener=\"game\",le=\"0.0001\"} 2\n"
    "gangway_handler_seconds_bucket{listener=\"game\",le=\"0.001\"} 2\n"
    "gangway_handler_seconds_bucket{listener=\"game\",le=\"0.01\"} 3\n"
    "gangway_handler_seconds_bucket{listener=\"game\",le=\"+Inf\"} 4\n"
    "gangway_handler_seconds_sum{listener=\"game\"} 0.02515\n"
    "gangway_handler_seconds_count{listener=\"game\"} 4\n"
    "# HELP gangway_test_seconds_total Scaled counter.\n"
    "# TYPE gangway_test_seconds_total counter\n"
    "gangway_test_seconds_total 1.5\n";

/* A run of observations entered at once: exactly what one call each
 * would give when the total is within the first bucket; else one
 * observation of the total and the rest in the first bucket (a slow one
 * among quick ones keeps its bucket), the sum and count exact either way. */
static void test_histogram_runs(void **state) {
  (void)state;
  static const uint64_t bounds[] = {10, 100, 1000};
  uint64_t mem[(sizeof(gw_histogram) + 4 * sizeof(uint64_t)) / sizeof(uint64_t) + 1] = {0};
  gw_histogram *h = (gw_histogram *)mem;
  h->bounds = bounds;
  h->nbounds = 3;
  /* within the first bucket: as 16 observe calls of values adding to 10 */
  assert_true(gw_histogram_observe_run(h, 16, 10));
  assert_int_equal(h->counts[0], 16);
  assert_int_equal(h->sum, 10);
  assert_int_equal(h->count, 16);
  assert_true(gw_histogram_observe_run(h, 0, 500)); /* nothing: no frames */
  assert_int_equal(h->count, 16);
  assert_int_equal(h->sum, 10);
  /* over it: 500 us in 4 frames, one of 500 and three of none */
  assert_false(gw_histogram_observe_run(h, 4, 500));
  assert_int_equal(h->counts[0], 19);
  assert_int_equal(h->counts[1], 0);
  assert_int_equal(h->counts[2], 1);
  assert_int_equal(h->sum, 510);
  assert_int_equal(h->count, 20);
  /* past the last bound: +Inf */
  assert_false(gw_histogram_observe_run(h, 2, 4001));
  assert_int_equal(h->counts[3], 1);
  assert_int_equal(h->counts[0], 20);
  assert_int_equal(h->count, 22);
  /* no bounds: everything is in +Inf, exactly */
  memset(mem, 0, sizeof mem);
  h->bounds = bounds;
  h->nbounds = 0;
  assert_true(gw_histogram_observe_run(h, 3, 1u << 20));
  assert_int_equal(h->counts[0], 3);
  assert_int_equal(h->sum, 1u << 20);
}

static void test_exposition_every_type(void **state) {
  (void)state;
  gw_metrics *m = sample();
  size_t len = 0;
  char *text = gw_metrics_prometheus(m, &len);
  assert_non_null(text);
  assert_string_equal(text, SAMPLE_TEXT);
  assert_int_equal(len, strlen(SAMPLE_TEXT));
  free(text);
  gw_metrics_free(m);
}

static void test_label_escaping(void **state) {
  (void)state;
  gw_metrics *m = gw_metrics_new();
  gw_metric *f = gw_metrics_counter(m, "gangway_test_total", "back\\slash\nnew \"line\"",
                                    GW_LABELS("listener"));
  *gw_metric_slot(f, GW_LABELS("a\"b\\c\nd")) = 1;
  *gw_metric_slot(f, GW_LABELS("bad\xff\xc0utf8")) = 2;
  /* the same bytes find the same series again */
  *gw_metric_slot(f, GW_LABELS("bad\xff\xc0utf8")) += 1;
  char *text = gw_metrics_prometheus(m, NULL);
  assert_string_equal(text,
      "# HELP gangway_test_total back\\\\slash\\nnew \"line\"\n"
      "# TYPE gangway_test_total counter\n"
      "gangway_test_total{listener=\"a\\\"b\\\\c\\nd\"} 1\n"
      "gangway_test_total{listener=\"bad\xEF\xBF\xBD\xEF\xBF\xBDutf8\"} 3\n");
  free(text);
  gw_metrics_free(m);
}

static void test_bad_names_and_reregistration(void **state) {
  (void)state;
  gw_metrics *m = gw_metrics_new();
  assert_null(gw_metrics_counter(m, "9starts_with_digit", "", NULL));
  assert_null(gw_metrics_counter(m, "has space", "", NULL));
  assert_null(gw_metrics_counter(m, "ok_total", "", GW_LABELS("bad-label")));
  assert_null(gw_metrics_counter(m, "ok_total", "", GW_LABELS("__reserved")));
  assert_null(gw_metrics_counter(m, "ok_total", "", GW_LABELS("a", "a")));
  assert_null(gw_metrics_counter(m, "ok_total", "", GW_LABELS("a", "b", "c", "d", "e")));
  assert_null(gw_metrics_histogram(m, "h_seconds", "", GW_LABELS("le"), BOUNDS_US, 3));
  const uint64_t unsorted[] = {5, 3};
  assert_null(gw_metrics_histogram(m, "h_seconds", "", NULL, unsorted, 2));
  gw_metric *a = gw_metrics_counter(m, "ns:ok_total", "first", GW_LABELS("x"));
  assert_non_null(a);
  assert_ptr_equal(gw_metrics_counter(m, "ns:ok_total", "second", GW_LABELS("x")), a);
  assert_null(gw_metrics_gauge(m, "ns:ok_total", "", GW_LABELS("x")));
  assert_null(gw_metrics_counter(m, "ns:ok_total", "", GW_LABELS("y")));
  /* wrong count of values, wrong type of slot */
  assert_null(gw_metric_slot(a, GW_LABELS("1", "2")));
  assert_null(gw_metric_slot(a, NULL));
  assert_null(gw_metric_gauge(a, GW_LABELS("1")));
  assert_ptr_equal(gw_metric_slot(a, GW_LABELS("1")), gw_metric_slot(a, GW_LABELS("1")));
  gw_metrics_free(m);
}

static gw_metric *opcode_family(gw_metrics *m, unsigned cap) {
  gw_metric *f = gw_metrics_counter(m, "gangway_frames_passed_total", "Frames passed.",
                                    GW_LABELS("listener", "side", "opcode"));
  assert_int_equal(gw_metric_set_cap(f, "opcode", cap), 0);
  return f;
}

static void test_opcode_fold_at_cap(void **state) {
  (void)state;
  gw_metrics *m = gw_metrics_new();
  gw_metric *f = opcode_family(m, 3);
  assert_int_equal(gw_metric_set_cap(f, "nope", 3), -EINVAL);
  gw_opcode_counters *c = gw_opcode_counters_new(f, GW_LABELS("game", "client"));
  gw_opcode_counters *s = gw_opcode_counters_new(f, GW_LABELS("game", "server"));
  assert_non_null(c);
  assert_null(gw_opcode_counters_new(f, GW_LABELS("game")));
  uint64_t *op[8];
  for (uint32_t i = 0; i < 8; i++) op[i] = gw_opcode_counters_slot(c, 1000 + i);
  for (uint32_t i = 0; i < 8; i++) (*op[i])++;
  (*gw_opcode_counters_slot(c, 1000))++;
  /* 1000..1002 have their own series; 1003..1007 share "other" */
  assert_ptr_not_equal(op[0], op[1]);
  for (int i = 4; i < 8; i++) assert_ptr_equal(op[i], op[3]);
  assert_ptr_equal(gw_opcode_counters_slot(c, 1001), op[1]);
  /* the server side has a cap of its own */
  (*gw_opcode_counters_slot(s, 7))++;
  /* the label path folds too, into the same series */
  assert_ptr_equal(gw_metric_slot(f, GW_LABELS("game", "client", "99")), op[3]);
  char *text = gw_metrics_prometheus(m, NULL);
  assert_string_equal(text,
      "# HELP gangway_frames_passed_total Frames passed.\n"
      "# TYPE gangway_frames_passed_total counter\n"
      "gangway_frames_passed_total{listener=\"game\",side=\"client\",opcode=\"1000\"} 2\n"
      "gangway_frames_passed_total{listener=\"game\",side=\"client\",opcode=\"1001\"} 1\n"
      "gangway_frames_passed_total{listener=\"game\",side=\"client\",opcode=\"1002\"} 1\n"
      "gangway_frames_passed_total{listener=\"game\",side=\"client\",opcode=\"other\"} 5\n"
      "gangway_frames_passed_total{listener=\"game\",side=\"server\",opcode=\"7\"} 1\n");
  free(text);
  gw_opcode_counters_free(c);
  gw_opcode_counters_free(s);
  gw_metrics_free(m);
}

/* Many opcodes through a table with the default-sized cap: exactly cap + 1
 * series per side, however many opcodes arrive. */
static void test_opcode_cap_bounds_series(void **state) {
  (void)state;
  gw_metrics *m = gw_metrics_new();
  gw_metric *f = opcode_family(m, 256);
  gw_opcode_counters *c = gw_opcode_counters_new(f, GW_LABELS("game", "client"));
  for (uint32_t i = 0; i < 100000; i++) (*gw_opcode_counters_slot(c, i * 7919u))++;
  json_t *j = gw_metrics_json(m);
  json_t *series = json_object_get(json_object_get(j, "gangway_frames_passed_total"), "series");
  assert_int_equal(json_array_size(series), 257);
  json_int_t total = 0;
  for (size_t i = 0; i < json_array_size(series); i++)
    total += json_integer_value(json_object_get(json_array_get(series, i), "value"));
  assert_int_equal(total, 100000);
  json_decref(j);
  gw_opcode_counters_free(c);
  gw_metrics_free(m);
}

/* Writes text to a command's stdin; returns its exit status, its output in
 * out. */
static int pipe_through(const char *cmd, const char *text, char *out, size_t outlen) {
  char tmpl[] = "/tmp/gw-metrics-XXXXXX";
  int fd = mkstemp(tmpl);
  assert_true(fd >= 0);
  size_t n = strlen(text);
  assert_int_equal(write(fd, text, n), (ssize_t)n);
  close(fd);
  char full[512];
  snprintf(full, sizeof full, "%s < %s 2>&1", cmd, tmpl);
  FILE *p = popen(full, "r");
  assert_non_null(p);
  size_t got = fread(out, 1, outlen - 1, p);
  out[got] = '\0';
  int st = pclose(p);
  unlink(tmpl);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_json_parses(void **state) {
  (void)state;
  gw_metrics *m = sample();
  gw_metric *f = gw_metrics_counter(m, "gangway_odd_total", "", GW_LABELS("listener"));
  *gw_metric_slot(f, GW_LABELS("q\"uo\\te\n\xff")) = 1;
  json_t *j = gw_metrics_json(m);
  assert_non_null(j);
  char *text = json_dumps(j, JSON_COMPACT);
  char out[4096];
  assert_int_equal(pipe_through("python3 -m json.tool", text, out, sizeof out), 0);
  /* and the values read back */
  json_error_t err;
  json_t *back = json_loads(text, 0, &err);
  assert_non_null(back);
  json_t *fr = json_object_get(back, "gangway_frames_total");
  assert_string_equal(json_string_value(json_object_get(fr, "type")), "counter");
  json_t *s0 = json_array_get(json_object_get(fr, "series"), 0);
  assert_string_equal(json_string_value(json_object_get(json_object_get(s0, "labels"), "side")),
                      "client");
  assert_int_equal(json_integer_value(json_object_get(s0, "value")), 7);
  json_t *h = json_array_get(json_object_get(json_object_get(back, "gangway_handler_seconds"),
                                             "series"), 0);
  assert_int_equal(json_integer_value(json_object_get(h, "count")), 4);
  assert_true(json_real_value(json_object_get(h, "sum")) == 0.02515);
  json_t *bk = json_object_get(h, "buckets");
  assert_int_equal(json_array_size(bk), 4);
  assert_string_equal(json_string_value(json_object_get(json_array_get(bk, 3), "le")), "+Inf");
  assert_int_equal(json_integer_value(json_object_get(json_array_get(bk, 3), "count")), 4);
  assert_true(json_real_value(json_object_get(json_array_get(bk, 0), "le")) == 0.0001);
  assert_int_equal(json_integer_value(json_object_get(json_array_get(bk, 0), "count")), 2);
  assert_int_equal(json_integer_value(json_object_get(
      json_array_get(json_object_get(json_object_get(back, "gangway_test_delta"), "series"), 0),
      "value")), -5);
  json_decref(back);
  free(text);
  json_decref(j);
  gw_metrics_free(m);
}

static void test_promtool_check(void **state) {
  (void)state;
  if (system("command -v promtool >/dev/null 2>&1") != 0) {
    print_message("promtool not installed (Debian package prometheus): skipped\n");
    skip();
  }
  gw_metrics *m = sample();
  assert_int_equal(gw_metrics_add_process(m), 0);
  gw_metric *f = opcode_family(m, 2);
  for (int i = 0; i < 5; i++)
    (*gw_metric_slot(f, GW_LABELS("x\"y\\z\n\xfe", "client", i % 2 ? "1" : "2")))++;
  *gw_metric_slot(f, GW_LABELS("game", "server", "9")) = 1;
  char *text = gw_metrics_prometheus(m, NULL);
  char out[8192];
  int rc = pipe_through("promtool check metrics", text, out, sizeof out);
  if (rc != 0 || out[0]) print_message("%s---\n%s\n", text, out);
  assert_int_equal(rc, 0);
  assert_string_equal(out, ""); /* no lint problem either */
  free(text);
  gw_metrics_free(m);
}

static json_t *series_of(json_t *j, const char *name, size_t i) {
  return json_array_get(json_object_get(json_object_get(j, name), "series"), i);
}

static void test_process_gauges(void **state) {
  (void)state;
  gw_metrics *m = gw_metrics_new();
  assert_int_equal(gw_metrics_add_process(m), 0);
  json_t *a = gw_metrics_json(m);
  int fd = open("/dev/null", O_RDONLY);
  int fd2 = open("/dev/null", O_RDONLY);
  json_t *b = gw_metrics_json(m);
  close(fd);
  close(fd2);
  json_int_t fa = json_integer_value(json_object_get(series_of(a, "process_open_fds", 0), "value"));
  json_int_t fb = json_integer_value(json_object_get(series_of(b, "process_open_fds", 0), "value"));
  assert_true(fa >= 3);
  assert_int_equal(fb, fa + 2);
  assert_true(json_integer_value(json_object_get(series_of(a, "process_resident_memory_bytes", 0),
                                                 "value")) > 100000);
  assert_true(json_integer_value(json_object_get(series_of(a, "process_max_fds", 0), "value")) >= fb);
  double start = json_number_value(json_object_get(series_of(a, "process_start_time_seconds", 0),
                                                   "value"));
  assert_true(start > 1.7e9); /* a Unix time of this century */
  assert_true(json_number_value(json_object_get(series_of(b, "gangway_uptime_seconds", 0),
                                                "value")) >= 0);
  json_decref(a);
  json_decref(b);
  gw_metrics_free(m);
}

static void test_merge_sums_workers(void **state) {
  (void)state;
  gw_metrics *w1 = sample(), *w2 = sample(), *sum = gw_metrics_new();
  gw_metric *ops1 = opcode_family(w1, 2), *ops2 = opcode_family(w2, 2);
  *gw_metric_slot(ops1, GW_LABELS("game", "client", "1")) = 1;
  *gw_metric_slot(ops1, GW_LABELS("game", "client", "2")) = 1;
  *gw_metric_slot(ops2, GW_LABELS("game", "client", "3")) = 1;
  *gw_metric_slot(ops2, GW_LABELS("game", "client", "1")) = 1;
  assert_int_equal(gw_metrics_merge(sum, w1), 0);
  assert_int_equal(gw_metrics_merge(sum, w2), 0);
  json_t *j = gw_metrics_json(sum);
  assert_int_equal(json_integer_value(json_object_get(series_of(j, "gangway_frames_total", 0),
                                                      "value")), 14);
  assert_int_equal(json_integer_value(json_object_get(series_of(j, "gangway_test_delta", 0),
                                                      "value")), -10);
  json_t *h = series_of(j, "gangway_handler_seconds", 0);
  assert_int_equal(json_integer_value(json_object_get(h, "count")), 8);
  assert_true(json_real_value(json_object_get(h, "sum")) == 0.0503);
  /* opcode 3, new to the sum past its cap of 2, folded */
  assert_int_equal(json_integer_value(json_object_get(series_of(j, "gangway_frames_passed_total", 0),
                                                      "value")), 2);
  json_t *other = series_of(j, "gangway_frames_passed_total", 2);
  assert_string_equal(json_string_value(json_object_get(json_object_get(other, "labels"), "opcode")),
                      "other");
  assert_int_equal(json_integer_value(json_object_get(other, "value")), 1);
  json_decref(j);
  /* a family of the same name with other labels is refused */
  gw_metrics *bad = gw_metrics_new();
  gw_metrics_counter(bad, "gangway_frames_total", "", GW_LABELS("listener"));
  assert_int_equal(gw_metrics_merge(sum, bad), -EINVAL);
  gw_metrics_free(bad);
  gw_metrics_free(w1);
  gw_metrics_free(w2);
  gw_metrics_free(sum);
}

static int collected;
static void on_collect(gw_metrics *m, void *ud) {
  (void)m;
  collected++;
  *(int64_t *)ud = 42;
}

static void test_collect_hook_refreshes(void **state) {
  (void)state;
  gw_metrics *m = gw_metrics_new();
  gw_metric *g = gw_metrics_gauge(m, "gangway_lua_memory_bytes", "Lua memory.", NULL);
  assert_int_equal(gw_metrics_on_collect(m, on_collect, gw_metric_gauge(g, NULL)), 0);
  char *text = gw_metrics_prometheus(m, NULL);
  assert_non_null(strstr(text, "\ngangway_lua_memory_bytes 42\n"));
  assert_int_equal(collected, 1);
  free(text);
  json_decref(gw_metrics_json(m));
  assert_int_equal(collected, 2);
  gw_metrics_free(m);
}

/* gangway's families: what a worker does with a listener's slots shows in
 * both renderings, and the whole exposition passes promtool. */
static void test_gangway_families(void **state) {
  (void)state;
  gw_metrics *m = gw_metrics_new();
  gw_gangway_families f;
  assert_int_equal(gw_metrics_add_gangway(m, &f), 0);
  gw_listener_counters game, chat;
  assert_int_equal(gw_listener_counters_init(&game, &f, "game"), 0);
  assert_int_equal(gw_listener_counters_init(&chat, &f, "chat"), 0);
  /* a session on game: 3 frames from the client, opcodes 1, 1, 2 */
  (*game.sessions_total)++;
  (*game.sessions_open)++;
  *game.bytes[0] += 30;
  *game.frames[0] += 3;
  (*gw_opcode_counters_slot(game.passed[0], 1)) += 2;
  (*gw_opcode_counters_slot(game.dropped[0], 2))++;
  (*gw_opcode_counters_slot(game.injected[1], 9))++;
  gw_histogram_observe(game.handler_time, 40);
  gw_histogram_observe(game.handler_time, 2000000);
  (*game.refused[GW_REFUSED_SESSIONS_PER_IP])++;
  (*f.reloads_ok)++;
  *f.script_generation = 2;
  *f.pool_in_use = 4;
  /* 1000 opcodes on chat: 256 series and "other" */
  for (uint32_t op = 0; op < 1000; op++) (*gw_opcode_counters_slot(chat.passed[1], op))++;
  char *text = gw_metrics_prometheus(m, NULL);
  const char *want[] = {
      "gangway_sessions_total{listener=\"game\"} 1\n",
      "gangway_sessions_open{listener=\"game\"} 1\n",
      "gangway_sessions_open{listener=\"chat\"} 0\n",
      "gangway_bytes_total{listener=\"game\",side=\"client\"} 30\n",
      "gangway_bytes_total{listener=\"game\",side=\"server\"} 0\n",
      "gangway_frames_total{listener=\"game\",side=\"client\"} 3\n",
      "gangway_frames_passed_total{listener=\"game\",side=\"client\",opcode=\"1\"} 2\n",
      "gangway_frames_dropped_total{listener=\"game\",side=\"client\",opcode=\"2\"} 1\n",
      "gangway_frames_injected_total{listener=\"game\",side=\"server\",opcode=\"9\"} 1\n",
      "gangway_frames_passed_total{listener=\"chat\",side=\"server\",opcode=\"255\"} 1\n",
      "gangway_frames_passed_total{listener=\"chat\",side=\"server\",opcode=\"other\"} 744\n",
      "gangway_sessions_refused_total{listener=\"game\",reason=\"sessions_per_ip\"} 1\n",
      "gangway_sessions_refused_total{listener=\"chat\",reason=\"max_sessions\"} 0\n",
      "gangway_handler_seconds_bucket{listener=\"game\",le=\"1e-05\"} 0\n",
      "gangway_handler_seconds_bucket{listener=\"game\",le=\"5e-05\"} 1\n",
      "gangway_handler_seconds_bucket{listener=\"game\",le=\"1\"} 1\n",
      "gangway_handler_seconds_bucket{listener=\"game\",le=\"+Inf\"} 2\n",
      "gangway_handler_seconds_sum{listener=\"game\"} 2.00004\n",
      "gangway_reloads_total{result=\"ok\"} 1\n",
      "gangway_reloads_total{result=\"failed\"} 0\n",
      "gangway_script_generation 2\n",
      "gangway_pool_buffers{state=\"in_use\"} 4\n",
      "gangway_info{version=\"" GW_VERSION "\"} 1\n",
      "# TYPE process_cpu_seconds_total counter\n",
  };
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(text, want[i])) fail_msg("missing: %s", want[i]);
  assert_null(strstr(text, "opcode=\"256\""));
  if (system("command -v promtool >/dev/null 2>&1") == 0) {
    char out[8192];
    int rc = pipe_through("promtool check metrics", text, out, sizeof out);
    if (rc != 0 || out[0]) print_message("%s\n", out);
    assert_int_equal(rc, 0);
    assert_string_equal(out, "");
  }
  free(text);
  /* a listener removed and added again continues its series */
  gw_listener_counters_free(&game);
  assert_int_equal(gw_listener_counters_init(&game, &f, "game"), 0);
  (*game.sessions_total)++;
  (*gw_opcode_counters_slot(game.passed[0], 1))++;
  json_t *j = gw_metrics_json(m);
  assert_int_equal(json_integer_value(json_object_get(series_of(j, "gangway_sessions_total", 0),
                                                      "value")), 2);
  assert_int_equal(json_integer_value(json_object_get(
      series_of(j, "gangway_frames_passed_total", 0), "value")), 3);
  json_decref(j);
  gw_listener_counters_free(&game);
  gw_listener_counters_free(&chat);
  gw_metrics_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_histogram_runs),
      cmocka_unit_test(test_exposition_every_type),
      cmocka_unit_test(test_label_escaping),
      cmocka_unit_test(test_bad_names_and_reregistration),
      cmocka_unit_test(test_opcode_fold_at_cap),
      cmocka_unit_test(test_opcode_cap_bounds_series),
      cmocka_unit_test(test_json_parses),
      cmocka_unit_test(test_promtool_check),
      cmocka_unit_test(test_process_gauges),
      cmocka_unit_test(test_merge_sums_workers),
      cmocka_unit_test(test_collect_hook_refreshes),
      cmocka_unit_test(test_gangway_families),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
