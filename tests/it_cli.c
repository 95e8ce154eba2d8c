/* it_cli.c: gangway's command line: check, reload, stats, --version,
 * --help, and the exit codes README.md documents (0 ok, 1 invalid config or
 * script, 2 usage, 3 runtime failure). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

static int run(char **out, const char *a0, const char *a1, const char *a2, const char *a3) {
  const char *args[] = {a0, a1, a2, a3, NULL};
  return it_run_gangway(out, args);
}

static void expect(const char *a0, const char *a1, const char *a2, int code, const char *text) {
  char *out;
  int rc = run(&out, a0, a1, a2, NULL);
  if (rc != code || !strstr(out, text))
    fail_msg("gangway %s %s %s: exit %d (want %d), output:\n%s\n(want \"%s\")", a0, a1 ? a1 : "",
             a2 ? a2 : "", rc, code, out, text);
  free(out);
}

static void test_version_and_help(void **state) {
  (void)state;
  expect("--version", NULL, NULL, 0, "gangway " GW_VERSION " (libuv ");
  expect("--help", NULL, NULL, 0, "gangway check [-c FILE]");
  expect("-h", NULL, NULL, 0, "Exit codes: 0 ok");
  expect("--bogus", NULL, NULL, 2, "usage: gangway");
  expect("frobnicate", NULL, NULL, 2, "unknown command \"frobnicate\"");
  expect("check", "-c", NULL, 2, "usage: gangway");
}

static void test_check(void **state) {
  (void)state;
  char dir[128];
  it_mkdtemp(dir, sizeof dir);
  char cfg[256], bad[256], missing[256];
  snprintf(cfg, sizeof cfg, "%s/good.lua", dir);
  snprintf(bad, sizeof bad, "%s/bad.lua", dir);
  snprintf(missing, sizeof missing, "%s/nope.lua", dir);
  it_write(dir, "rule.lua", "local gw = require \"gangway\"\ngw.on(\"client\", 1, function() end)\n");
  it_write(dir, "broken.lua", "local gw = require \"gangway\"\ngw.on(\"client\", 1, function()\n");
  it_write(dir, "good.lua",
           "return { listeners = { { name = \"g\", listen = \"127.0.0.1:1\", upstream = "
           "\"127.0.0.1:2\", framing = \"top\", scripts = { \"rule.lua\" } } } }\n");
  expect("check", "-c", cfg, 0, "ok (1 listener(s), 1 script(s))");

  /* A value error names the file and the key path. */
  it_write(dir, "bad.lua",
           "return { listeners = { { name = \"g\", listen = \"127.0.0.1:1\", upstream = 1974 } } }\n");
  char want[512];
  snprintf(want, sizeof want, "%s: listeners[1].upstream: expected \"host:port\", got number 1974", bad);
  expect("check", "-c", bad, 1, want);
  /* A syntax error names the file and the line. */
  it_write(dir, "bad.lua", "return {\n  listeners = {\n}\n");
  snprintf(want, sizeof want, "%s:4:", bad);
  expect("check", "-c", bad, 1, want);
  /* A script that does not load: file and line of the script. */
  it_write(dir, "bad.lua",
           "return { listeners = { { name = \"g\", listen = \"127.0.0.1:1\", upstream = "
           "\"127.0.0.1:2\", framing = \"top\", scripts = { \"broken.lua\" } } } }\n");
  expect("check", "-c", bad, 1, "broken.lua:3: 'end' expected");
  /* A script that errors while it runs. */
  it_write(dir, "broken.lua", "local x = nil\nx.y = 1\n");
  expect("check", "-c", bad, 1, "broken.lua:2:");
  /* The default file is ./config.lua; a missing file is an invalid config. */
  expect("check", "-c", missing, 1, "nope.lua");
  it_rmdir(dir);
}

static void test_reload_and_stats_need_a_running_gangway(void **state) {
  (void)state;
  char dir[128], cfg[256];
  it_mkdtemp(dir, sizeof dir);
  snprintf(cfg, sizeof cfg, "%s/config.lua", dir);
  it_write(dir, "config.lua",
           "return { listeners = { { name = \"g\", listen = \"127.0.0.1:1\", upstream = "
           "\"127.0.0.1:2\" } } }\n");
  expect("reload", "-c", cfg, 3, "no gangway answers on");
  expect("stats", "-c", cfg, 3, "no gangway answers on");
  it_write(dir, "config.lua",
           "return { listeners = { { name = \"g\", listen = \"127.0.0.1:1\", upstream = "
           "\"127.0.0.1:2\" } }, control = \"\" }\n");
  expect("reload", "-c", cfg, 3, "control socket disabled");
  it_rmdir(dir);
}

static void expect_json(const char *out, const char *cond);

static void test_stats_of_a_running_gangway(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_start(&g, port,
                   "return { listeners = { { name = \"s\", listen = \"127.0.0.1:%d\", "
                   "upstream = \"127.0.0.1:%d\" } }, control = \"ctl.sock\" }\n",
                   port, up_port);
  int fd = it_connect(port);
  char m[1000] = {0}, back[1000];
  it_send_all(fd, m, sizeof m);
  assert_int_equal(it_recv_exact(fd, back, sizeof back, 2000), sizeof back);
  expect("stats", "-c", g.config, 0, "{\"summary\":{\"sessions_active\":1,\"sessions_total\":1,\"client_bytes\":1000,\"server_bytes\":1000");
  /* The registry behind it, per listener, and the reload history. */
  expect("stats", "-c", g.config, 0,
         "\"gangway_bytes_total\":{\"type\":\"counter\",\"help\":\"Bytes read from each side.\","
         "\"series\":[{\"labels\":{\"listener\":\"s\",\"side\":\"client\"},\"value\":1000}");
  expect("stats", "-c", g.config, 0, "\"generation\":1,\"reloads\":[],");
  expect("reload", "-c", g.config, 0, "ok: generation 2 active after");
  expect("stats", "-c", g.config, 0, "\"generation\":2,\"reloads\":[{\"unix_ms\":");
  expect("stats", "-c", g.config, 0, "\"trigger\":\"control socket\",\"ok\":true,\"generation\":2,"
         "\"result\":\"generation 2 active after");
  char *js;
  const char *const stats_args[] = {"stats", "-c", g.config, NULL};
  assert_int_equal(it_run_gangway(&js, stats_args), 0);
  expect_json(js, "list(d) == ['summary', 'uptime_seconds', 'generation', 'reloads', 'metrics'] and "
                  "d['summary']['sessions_active'] == 1 and d['generation'] == 2 and "
                  "[r['trigger'] for r in d['reloads']] == ['control socket'] and "
                  "isinstance(d['uptime_seconds'], float) and "
                  "d['metrics']['gangway_sessions_open']['series'] == "
                  "[{'labels': {'listener': 's'}, 'value': 1}] and "
                  "d['metrics']['gangway_reloads_total']['series'][0]['value'] == 1");
  free(js);
  /* A second gangway on the same control socket refuses to start. */
  it_write(g.dir, "second.lua",
           "return { listeners = { { name = \"s\", listen = \"127.0.0.1:%d\", "
           "upstream = \"127.0.0.1:%d\" } }, control = \"ctl.sock\" }\n",
           it_free_port(), up_port);
  char second[256], *out;
  snprintf(second, sizeof second, "%s/second.lua", g.dir);
  int rc = run(&out, "-c", second, NULL, NULL);
  assert_int_equal(rc, 3);
  assert_non_null(strstr(out, "another gangway is running there"));
  free(out);
  close(fd);
  assert_int_equal(it_gangway_stop(&g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

static void test_cannot_listen(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway a;
  it_gangway_start(&a, port,
                   "return { listeners = { { name = \"a\", listen = \"127.0.0.1:%d\", "
                   "upstream = \"127.0.0.1:%d\" } }, control = \"\" }\n",
                   port, up_port);
  it_gangway b;
  it_gangway_start(&b, 0,
                   "return { listeners = { { name = \"b\", listen = \"127.0.0.1:%d\", "
                   "upstream = \"127.0.0.1:%d\" } }, control = \"\" }\n",
                   port, up_port);
  assert_int_equal(it_gangway_stop(&b, 0, 5000), 3);
  assert_int_equal(it_gangway_stop(&a, SIGTERM, 5000), 0);
  it_server_stop(up);
}

/* Runs python3 on the JSON text out: it must parse (UTF-8, one value) and
 * satisfy the Python expression cond about it (d). */
static void expect_json(const char *out, const char *cond) {
  char dir[128], path[256], cmd[1024];
  it_mkdtemp(dir, sizeof dir);
  it_write(dir, "out.json", "%s", out);
  snprintf(path, sizeof path, "%s/out.json", dir);
  it_write(dir, "check.py",
           "import json, sys\n"
           "d = json.load(open(sys.argv[1], encoding='utf-8'))\n"
           "if not (%s):\n"
           "    sys.exit('condition false for %%r' %% (d,))\n",
           cond);
  snprintf(cmd, sizeof cmd, "python3 %s/check.py %s", dir, path);
  int rc = system(cmd);
  if (rc != 0) fail_msg("JSON from gangway check --json:\n%s\ndoes not satisfy: %s", out, cond);
  it_rmdir(dir);
}

static void test_check_json(void **state) {
  (void)state;
  char dir[128], cfg[512], *out;
  it_mkdtemp(dir, sizeof dir);
  /* A path with a quote, a newline and a byte that is not UTF-8. */
  char odd[256];
  snprintf(odd, sizeof odd, "%s/we\"ird\nname\xff", dir);
  assert_int_equal(mkdir(odd, 0755), 0);
  snprintf(cfg, sizeof cfg, "%s/config.lua", odd);
  it_write(odd, "rule.lua",
           "local gw = require \"gangway\"\n"
           "gw.log.warn(\"a \\\"quoted\\\"\\nwarning\")\n"
           "gw.on(\"client\", 1, function() end)\n");
  it_write(odd, "config.lua",
           "return { listeners = { { name = \"g\", listen = \"127.0.0.1:1\", upstream = "
           "\"127.0.0.1:2\", framing = \"top\", scripts = { \"rule.lua\" } } } }\n");
  const char *args[] = {"check", "--json", "-c", cfg, NULL};
  assert_int_equal(it_run_gangway(&out, args), 0);
  expect_json(out, "d['ok'] is True and d['listeners'] == 1 and d['scripts'] == 1 and "
                   "d['config'].endswith('/we\"ird\\nname\\ufffd/config.lua') and "
                   "any('a \"quoted\"\\nwarning' in w for w in d['warnings'])");
  free(out);

  /* A syntax error: file and line, exit 1. */
  it_write(odd, "config.lua", "return {\n  listeners = {\n}\n");
  assert_int_equal(it_run_gangway(&out, args), 1);
  expect_json(out, "d['ok'] is False and 'we\"ird\\nname\\ufffd/config.lua:4: \\'}\\' expected' in "
                   "d['error'] and d['warnings'] == [] and 'listeners' not in d");
  free(out);
  /* A script that does not load, with a byte that is not UTF-8 in its
   * message. */
  it_write(dir, "rule.lua", "error(\"bad \\255 byte\")\n");
  it_write(dir, "config.lua",
           "return { listeners = { { name = \"g\", listen = \"127.0.0.1:1\", upstream = "
           "\"127.0.0.1:2\", scripts = { \"rule.lua\" } } } }\n");
  snprintf(cfg, sizeof cfg, "%s/config.lua", dir);
  assert_int_equal(it_run_gangway(&out, args), 1);
  expect_json(out, "d['ok'] is False and 'rule.lua:1: bad \\ufffd byte' in d['error'] and "
                   "not any('rule.lua' in w for w in d['warnings'])");
  free(out);
  /* A missing file. */
  snprintf(cfg, sizeof cfg, "%s/nope.lua", dir);
  assert_int_equal(it_run_gangway(&out, args), 1);
  expect_json(out, "d['ok'] is False and 'nope.lua' in d['error'] and d['warnings'] == []");
  free(out);
  it_rmdir(dir);
  expect("stats", "--json", NULL, 2, "--json goes with check only");
  expect("stats", "-w", "x.pcap", 2, "go with capture only");
  expect("capture", "--seconds", "3", 2, "capture needs -w FILE.pcap");
}

/* Runs script with sh (popen), stdout and stderr into *out; dir, bin and
 * bindir reach it as $DIR, $BIN and $BINDIR, quoting and all. */
static int sh(char **out, const char *script, const char *dir, const char *bin, const char *bindir) {
  setenv("DIR", dir, 1);
  setenv("BIN", bin, 1);
  setenv("BINDIR", bindir, 1);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "(%s) 2>&1", script);
  FILE *p = popen(cmd, "r");
  if (!p) fail_msg("popen: %s", script);
  size_t len = 0, cap = 65536;
  char *buf = malloc(cap);
  size_t k;
  while (len < cap - 1 && (k = fread(buf + len, 1, cap - 1 - len, p)) > 0) len += k;
  buf[len] = '\0';
  int status = pclose(p);
  unsetenv("DIR");
  unsetenv("BIN");
  unsetenv("BINDIR");
  *out = buf;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* A gangway run from anywhere but the install's bindir reads ./config.lua. */
static void test_default_config_of_a_checkout(void **state) {
  (void)state;
  expect("--help", NULL, NULL, 0, "run the proxy (default config: ./config.lua)");
  char dir[128], *out;
  it_mkdtemp(dir, sizeof dir);
  it_write(dir, "config.lua",
           "return { listeners = { { name = \"here\", listen = \"127.0.0.1:1\", upstream = "
           "\"127.0.0.1:2\" } } }\n");
  int rc = sh(&out, "cd \"$DIR\" && exec \"$BIN\" check", dir, GW_BIN, "");
  if (rc != 0 || !strstr(out, "config.lua: ok (1 listener(s), 0 script(s))"))
    fail_msg("gangway check in a directory with config.lua: exit %d:\n%s", rc, out);
  free(out);
  it_rmdir(dir);
}

/* The same binary, run from the install's bindir, reads the installed
 * config. Without installing anything: in a private mount namespace (a user
 * namespace: no root needed), a temp dir holding a copy of the binary is
 * mounted over GW_INSTALL_BINDIR. Skipped where namespaces are not allowed. */
static void test_default_config_when_installed(void **state) {
  (void)state;
  char dir[128], *out;
  it_mkdtemp(dir, sizeof dir);
  int rc = sh(&out, "cp \"$BIN\" \"$DIR/gangway\"", dir, GW_BIN, GW_INSTALL_BINDIR);
  assert_int_equal(rc, 0);
  free(out);
  static const char script[] =
      "unshare -r -m sh -c 'mount --bind \"$DIR\" \"$BINDIR\" || exit 99; cd /; "
      "\"$BINDIR/gangway\" --help; "
      "echo \"check exit $(\"$BINDIR/gangway\" check >/dev/null 2>&1; echo $?)\"; "
      "\"$BINDIR/gangway\" check'";
  rc = sh(&out, script, dir, GW_BIN, GW_INSTALL_BINDIR);
  it_rmdir(dir);
  if (rc == 99 || strstr(out, "unshare:")) {
    free(out);
    skip(); /* no user or mount namespaces here */
  }
  if (!strstr(out, "run the proxy (default config: " GW_INSTALL_CONFIG ")") ||
      !strstr(out, "check exit 1") || !strstr(out, GW_INSTALL_CONFIG ": cannot open"))
    fail_msg("gangway in %s does not default to %s:\n%s", GW_INSTALL_BINDIR, GW_INSTALL_CONFIG, out);
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version_and_help),
      cmocka_unit_test(test_check),
      cmocka_unit_test(test_check_json),
      cmocka_unit_test(test_default_config_of_a_checkout),
      cmocka_unit_test(test_default_config_when_installed),
      cmocka_unit_test(test_reload_and_stats_need_a_running_gangway),
      cmocka_unit_test(test_stats_of_a_running_gangway),
      cmocka_unit_test(test_cannot_listen),
  };
  return cmocka_run_group_tests_name("command line", tests, NULL, NULL);
}
