/* it_control.c: the control socket under a careless config and hostile
 * local clients: gangway removes only the socket it created, answers
 * `gangway stats`/`reload` whatever other control clients do, and keeps
 * answering at the process's open-files limit. Also what gangway tells
 * systemd through NOTIFY_SOCKET (READY, RELOADING, STOPPING). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"

#define LISTENER "return { listeners = { { name = \"c\", listen = \"127.0.0.1:%d\", upstream = \"127.0.0.1:%d\" } }"

/* An echo upstream, and a gangway in front of it with control = "ctl.sock". */
static it_server *start_gangway(it_gangway *g, int *port) {
  int up_port;
  *port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway_start(g, *port, LISTENER ", control = \"ctl.sock\" }\n", *port, up_port);
  return up;
}

/* SIGTERM: gangway must exit 0 (under ASan or valgrind: clean). */
static void stop_gangway(it_gangway *g, it_server *up) {
  assert_int_equal(it_gangway_stop(g, SIGTERM, 5000), 0);
  it_server_stop(up);
}

/* A client of the control socket at dir/name; -1 if connect fails. */
static int ctl_connect(const char *dir, const char *name) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  /* a path too long for sun_path is refused, not cut to another one */
  int n = snprintf(sa.sun_path, sizeof sa.sun_path, "%s/%s", dir, name);
  if (fd < 0 || n < 0 || (size_t)n >= sizeof sa.sun_path ||
      connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  return fd;
}

/* Reads what the server sends until it closes (or timeout_ms); returns the
 * text (malloc'd) and whether the end came (*closed). */
static char *ctl_read_all(int fd, int timeout_ms, bool *closed) {
  char *buf = calloc(1, 8192);
  size_t len = 0;
  uint64_t deadline = it_now_ms() + (uint64_t)timeout_ms;
  *closed = false;
  while (len < 8191) {
    uint64_t now = it_now_ms();
    if (now >= deadline) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(deadline - now)) <= 0) break;
    ssize_t n = recv(fd, buf + len, 8191 - len, 0);
    if (n <= 0) {
      *closed = true;
      break;
    }
    len += (size_t)n;
  }
  return buf;
}

/* `gangway cmd -c config`: exit code, output in *out. */
static int gangway_cmd(char **out, const char *cmd, const char *config) {
  const char *args[] = {cmd, "-c", config, NULL};
  return it_run_gangway(out, args);
}

static void expect_cmd(const char *cmd, const char *config, int code, const char *text) {
  char *out;
  int rc = gangway_cmd(&out, cmd, config);
  if (rc != code || !strstr(out, text))
    fail_msg("gangway %s: exit %d (want %d), output:\n%s(want \"%s\")", cmd, rc, code, out, text);
  free(out);
}

/* ---- issue 10.1: only the socket gangway created is ever removed ---- */

static void expect_refused_start(const char *dir, const char *want) {
  char cfg[256], *out;
  snprintf(cfg, sizeof cfg, "%s/config.lua", dir);
  const char *args[] = {"-c", cfg, NULL};
  int rc = it_run_gangway(&out, args);
  if (rc != 3 || !strstr(out, want))
    fail_msg("gangway started on a control path it does not own: exit %d (want 3), output:\n%s"
             "(want \"%s\")", rc, out, want);
  free(out);
}

static void test_existing_file_is_not_touched(void **state) {
  (void)state;
  char dir[128], path[256];
  it_mkdtemp(dir, sizeof dir);
  it_write(dir, "config.lua", LISTENER ", control = \"precious\" }\n", it_free_port(), it_free_port());
  it_write(dir, "precious", "keep me\n");
  snprintf(path, sizeof path, "%s/precious", dir);
  chmod(path, 0640);
  expect_refused_start(dir, "precious: the path exists and is a regular file, not a socket");
  char *text = it_slurp(path);
  assert_non_null(text);
  assert_string_equal(text, "keep me\n");
  free(text);
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0640); /* not chmod'ed either */
  it_rmdir(dir);
}

static void test_symlink_is_not_followed(void **state) {
  (void)state;
  char dir[128], link[256], target[256];
  it_mkdtemp(dir, sizeof dir);
  it_write(dir, "config.lua", LISTENER ", control = \"ctl.sock\" }\n", it_free_port(), it_free_port());
  it_write(dir, "target", "keep me too\n");
  snprintf(link, sizeof link, "%s/ctl.sock", dir);
  snprintf(target, sizeof target, "%s/target", dir);
  chmod(target, 0640);
  assert_int_equal(symlink(target, link), 0);
  expect_refused_start(dir, "ctl.sock: the path exists and is a symbolic link, not a socket");
  struct stat st;
  assert_int_equal(lstat(link, &st), 0);
  assert_true(S_ISLNK(st.st_mode));
  assert_int_equal(stat(target, &st), 0);
  assert_int_equal(st.st_mode & 07777, 0640);
  char *text = it_slurp(target);
  assert_string_equal(text, "keep me too\n");
  free(text);
  /* A dangling symlink is refused the same way (bind would not follow it,
   * but the error must say why). */
  unlink(target);
  expect_refused_start(dir, "is a symbolic link, not a socket");
  assert_int_equal(lstat(link, &st), 0);
  it_rmdir(dir);
}

static void test_stale_socket_is_replaced_and_mode_is_0600(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua", LISTENER ", control = \"ctl.sock\" }\n", port, up_port);
  /* A socket file nobody listens on, as a killed gangway leaves behind. */
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  char path[256];
  snprintf(path, sizeof path, "%s/ctl.sock", g.dir);
  assert_true(strlen(path) < sizeof sa.sun_path);
  memcpy(sa.sun_path, path, strlen(path) + 1);
  assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
  close(s);
  it_gangway_run(&g, port);
  struct stat st;
  assert_int_equal(lstat(sa.sun_path, &st), 0);
  assert_true(S_ISSOCK(st.st_mode));
  assert_int_equal(st.st_mode & 0777, 0600);
  expect_cmd("stats", g.config, 0, "\"sessions_active\":0");
  stop_gangway(&g, up);
}

static void test_replaced_socket_is_not_removed_at_exit(void **state) {
  (void)state;
  int port;
  it_gangway g;
  it_server *up = start_gangway(&g, &port);
  char path[256], keep[256];
  snprintf(path, sizeof path, "%s/ctl.sock", g.dir);
  snprintf(keep, sizeof keep, "%s/keep", g.dir);
  it_write(g.dir, "keep", "someone else's file\n");
  /* Someone replaces the socket file while gangway runs. */
  assert_int_equal(rename(keep, path), 0);
  char dir[128];
  snprintf(dir, sizeof dir, "%s", g.dir);
  setenv("GW_IT_KEEP", "1", 1); /* look at the dir after the exit */
  int code = it_gangway_stop(&g, SIGTERM, 5000);
  unsetenv("GW_IT_KEEP");
  assert_int_equal(code, 0);
  char *text = it_slurp(path);
  assert_non_null(text);
  assert_string_equal(text, "someone else's file\n");
  free(text);
  it_rmdir(dir);

  it_server_stop(up);

  /* And the socket it did create is removed at exit. */
  up = start_gangway(&g, &port);
  snprintf(path, sizeof path, "%s/ctl.sock", g.dir);
  snprintf(dir, sizeof dir, "%s", g.dir);
  setenv("GW_IT_KEEP", "1", 1);
  code = it_gangway_stop(&g, SIGTERM, 5000);
  unsetenv("GW_IT_KEEP");
  assert_int_equal(code, 0);
  struct stat st;
  assert_int_equal(lstat(path, &st), -1);
  it_rmdir(dir);
  it_server_stop(up);
}

/* ---- issue 10.8: control clients are bounded in size, time and number ---- */

static void test_unfinished_request_times_out(void **state) {
  (void)state;
  int port;
  it_gangway g;
  it_server *up = start_gangway(&g, &port);
  int slow = ctl_connect(g.dir, "ctl.sock");
  assert_true(slow >= 0);
  assert_int_equal(it_send_all(slow, "rel", 3), 0);
  uint64_t t0 = it_now_ms();
  /* Another client is answered meanwhile. */
  expect_cmd("stats", g.config, 0, "\"sessions_active\":0");
  expect_cmd("reload", g.config, 0, "ok: generation 2 active");
  bool closed;
  char *text = ctl_read_all(slow, 10000, &closed);
  uint64_t waited = it_now_ms() - t0;
  if (!closed || strcmp(text, "error: request timed out\n") != 0)
    fail_msg("a client that never ends its request: got \"%s\", closed %d after %llu ms", text,
             closed, (unsigned long long)waited);
  free(text);
  print_message("a client that sent \"rel\" was answered and closed after %llu ms\n",
                (unsigned long long)waited);
  close(slow);
  stop_gangway(&g, up);
}

static void test_bad_requests_get_errors(void **state) {
  (void)state;
  int port;
  it_gangway g;
  it_server *up = start_gangway(&g, &port);
  static const struct {
    const char *req;
    size_t len;
    const char *want;
  } cases[] = {
      {"sta\0ts\n", 7, "error: NUL byte in request\n"},
      {"\0", 1, "error: NUL byte in request\n"},
      {"stats\r\n", 7, "error: unknown command \"stats\r\" (reload, stats)\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int fd = ctl_connect(g.dir, "ctl.sock");
    assert_true(fd >= 0);
    assert_int_equal(it_send_all(fd, cases[i].req, cases[i].len), 0);
    bool closed;
    char *text = ctl_read_all(fd, 5000, &closed);
    assert_string_equal(text, cases[i].want);
    assert_true(closed);
    free(text);
    close(fd);
  }
  /* 300 bytes and no newline: too long, answered at once. */
  char big[300];
  memset(big, 's', sizeof big);
  int fd = ctl_connect(g.dir, "ctl.sock");
  assert_int_equal(it_send_all(fd, big, sizeof big), 0);
  bool closed;
  char *text = ctl_read_all(fd, 2000, &closed);
  assert_string_equal(text, "error: request too long (256 bytes at most)\n");
  free(text);
  close(fd);
  expect_cmd("stats", g.config, 0, "\"sessions_active\":0");
  stop_gangway(&g, up);
}

static void test_idle_clients_do_not_lock_out_stats(void **state) {
  (void)state;
  int port;
  it_gangway g;
  it_server *up = start_gangway(&g, &port);
  enum { IDLE = 100, CLIENTS_MAX = 16 };
  int idle[IDLE];
  for (int i = 0; i < IDLE; i++) {
    idle[i] = ctl_connect(g.dir, "ctl.sock");
    assert_true(idle[i] >= 0);
  }
  /* Twice: right away, and once every idle client has been accepted. */
  expect_cmd("stats", g.config, 0, "\"sessions_active\":0");
  expect_cmd("stats", g.config, 0, "\"sessions_active\":0");
  expect_cmd("reload", g.config, 0, "ok: generation 2 active");
  /* All but the newest few were sent away; none was answered otherwise. */
  int refused = 0;
  for (int i = 0; i < IDLE; i++) {
    bool closed;
    char *text = ctl_read_all(idle[i], i < IDLE - 20 ? 2000 : 300, &closed);
    if (closed) {
      assert_string_equal(text, "error: too many control clients\n");
      refused++;
    } else {
      assert_string_equal(text, "");
    }
    free(text);
    close(idle[i]);
  }
  if (refused < IDLE - CLIENTS_MAX) fail_msg("%d idle clients sent away, want %d", refused, IDLE - CLIENTS_MAX);
  stop_gangway(&g, up);
}

/* ---- issue 10.7: the control socket answers at the open-files limit ---- */

/* Starts `gangway args...` with an open-files limit of nofile (soft; the
 * hard limit too unless keep_hard), stdout and stderr to log. */
static pid_t spawn_limits(rlim_t nofile, bool keep_hard, const char *dir, const char *log,
                          const char *const args[]) {
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = nofile;
    if (!keep_hard) rl.rlim_max = nofile;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0 || setrlimit(RLIMIT_NOFILE, &rl) < 0 || chdir(dir) < 0) _exit(126);
    dup2(fd, 1);
    dup2(fd, 2);
    /* Nothing of the test's may count against the limit. */
    for (int i = 3; i < 1024; i++) close(i);
    const char *argv[16] = {GW_BIN};
    for (int i = 0; args[i] && i < 14; i++) argv[i + 1] = args[i];
    execv(GW_BIN, (char *const *)argv);
    _exit(127);
  }
  return pid;
}

static pid_t spawn_limited(rlim_t nofile, const char *dir, const char *log, const char *const args[]) {
  return spawn_limits(nofile, false, dir, log, args);
}

static void start_limited(it_gangway *g, rlim_t nofile) {
  const char *args[] = {"-c", g->config, NULL};
  g->pid = spawn_limited(nofile, g->dir, g->log, args);
  if (!it_log_wait(g, " running (config ", 5000)) {
    it_gangway_stop(g, SIGKILL, 1000);
    fail_msg("gangway with %llu open files did not start", (unsigned long long)nofile);
  }
}

/* The value "using N" in the clamp warning of text, or -1. */
static int clamped_to(const char *text, const char *want) {
  const char *p = strstr(text, want);
  if (!p || !(p = strstr(p, ": using "))) return -1;
  return atoi(p + 8);
}

static void test_check_reports_the_clamp(void **state) {
  (void)state;
  char dir[128], log[256], *text;
  it_mkdtemp(dir, sizeof dir);
  snprintf(log, sizeof log, "%s/out", dir);
  it_write(dir, "config.lua", LISTENER " }\n", 1, 2);
  const char *args[] = {"check", "-c", "config.lua", NULL};
  int status;
  pid_t pid = spawn_limited(20000, dir, log, args);
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  text = it_slurp(log);
  /* 2 x 10000 sessions + the fds kept for listeners and control. */
  if (clamped_to(text, "config.lua: warning: limits.max_sessions 10000 needs 200") < 9900)
    fail_msg("no clamp in the output of check:\n%s", text);
  assert_non_null(strstr(text, "open files, the limit is 20000: using "));
  assert_non_null(strstr(text, "config.lua: ok (1 listener(s), 0 script(s))"));
  free(text);
  /* max_sessions = 0 (no limit) is fitted the same way. */
  unlink(log);
  it_write(dir, "config.lua", LISTENER ", limits = { max_sessions = 0 } }\n", 1, 2);
  pid = spawn_limited(64, dir, log, args);
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_int_equal(WEXITSTATUS(status), 0);
  text = it_slurp(log);
  if (clamped_to(text, "limits.max_sessions 0 (no limit) would exceed the open-files limit 64") < 1)
    fail_msg("no clamp of max_sessions = 0 under 64 open files:\n%s", text);
  free(text);
  it_write(dir, "config.lua", LISTENER " }\n", 1, 2);
  /* Under a limit that is high enough, nothing to say. */
  unlink(log);
  pid = spawn_limited(21000, dir, log, args);
  assert_int_equal(waitpid(pid, &status, 0), pid);
  text = it_slurp(log);
  assert_null(strstr(text, "warning"));
  free(text);
  it_rmdir(dir);
}

static void test_stats_and_reload_at_the_fd_limit(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua", LISTENER ", control = \"ctl.sock\" }\n", port, up_port);
  start_limited(&g, 64);
  char *log = it_slurp(g.log);
  int max = clamped_to(log, "limits.max_sessions 10000 needs ");
  if (max < 1 || !strstr(log, "the limit is 64: using"))
    fail_msg("the log does not say max_sessions was clamped:\n%s", log);
  free(log);
  /* Fill it with sessions until one is refused. */
  int fds[64], n = 0;
  for (; n < 64; n++) {
    fds[n] = it_connect(port);
    assert_true(fds[n] >= 0);
    char c = 'a', back = 0;
    assert_int_equal(it_send_all(fds[n], &c, 1), 0);
    if (it_recv_exact(fds[n], &back, 1, 2000) != 1) break;
    assert_int_equal(back, c);
  }
  assert_int_equal(n, max);
  close(fds[n]);
  assert_true(it_log_wait(&g, "connection refused", 2000));
  char want[64];
  snprintf(want, sizeof want, "\"sessions_active\":%d,", max);
  expect_cmd("stats", g.config, 0, want);
  expect_cmd("reload", g.config, 0, "ok: generation 2 active");
  expect_cmd("stats", g.config, 0, want);
  /* Every session still works. */
  for (int i = 0; i < n; i++) {
    it_echo_byte(fds[i], 'b');
    close(fds[i]);
  }
  stop_gangway(&g, up);
}

/* A soft limit below what max_sessions needs is raised (the hard limit
 * allows it): nothing clamped. */
static void test_soft_limit_is_raised(void **state) {
  (void)state;
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 1000) skip();
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua", LISTENER ", limits = { max_sessions = 100 } }\n", port, up_port);
  const char *args[] = {"-c", g.config, NULL};
  g.pid = spawn_limits(64, true, g.dir, g.log, args);
  assert_true(it_log_wait(&g, " running (config ", 5000));
  char *log = it_slurp(g.log);
  const char *p = strstr(log, "open-files limit raised from 64 to ");
  /* 2 x 100 sessions and what is kept for listeners and the control socket. */
  if (!p || atoi(p + 35) <= 200 || strstr(log, "limits.max_sessions 100 needs"))
    fail_msg("the soft limit was not raised enough:\n%s", log);
  free(log);
  stop_gangway(&g, up);
}

/* A script (unsafe) that takes every fd left: the control socket answers
 * through its spare. */
static void test_stats_with_every_fd_taken(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "hog.lua",
           "local gw = require \"gangway\"\n"
           "held = {}\n"
           "gw.every(20, function()\n"
           "  for i = 1, 1000 do\n"
           "    local f = io.open(\"/dev/null\")\n"
           "    if not f then break end\n"
           "    held[#held + 1] = f\n"
           "  end\n"
           "end)\n");
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"c\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\", unsafe = true, scripts = { \"hog.lua\" } } }, control = \"ctl.sock\" }\n",
           port, up_port);
  start_limited(&g, 64);
  /* Once the timer has run (every 20 ms), a session cannot even be
   * accepted: libuv drops it. */
  struct timespec ts = {0, 300 * 1000000};
  nanosleep(&ts, NULL);
  int fd = it_connect(port);
  assert_true(fd >= 0);
  assert_int_equal(it_wait_eof(fd, 3000, NULL), 1);
  close(fd);
  for (int i = 0; i < 3; i++) expect_cmd("stats", g.config, 0, "\"sessions_active\":0,");
  /* A reload cannot open the config without an fd, but it is answered. */
  expect_cmd("reload", g.config, 1, "error: ");
  stop_gangway(&g, up);
}

/* ---- issue 15.3: systemd's readiness protocol (sd_notify) ---- */

/* The next datagram on fd within timeout_ms ("" if none). */
static void notify_next(int fd, char *out, size_t outlen, int timeout_ms) {
  out[0] = '\0';
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) <= 0) return;
  ssize_t n = recv(fd, out, outlen - 1, 0);
  out[n > 0 ? n : 0] = '\0';
}

static void expect_notify(int fd, const char *want) {
  char got[1024];
  notify_next(fd, got, sizeof got, 5000);
  if (strncmp(got, want, strlen(want)) != 0)
    fail_msg("NOTIFY_SOCKET: got \"%s\", want \"%s...\"", got, want);
}

/* A datagram socket at dir/notify.sock, as systemd gives a Type=notify
 * service; NOTIFY_SOCKET names it for the gangway started next. */
static int notify_socket(const char *dir) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  char path[256];
  snprintf(path, sizeof path, "%s/notify.sock", dir);
  assert_true(strlen(path) < sizeof sa.sun_path);
  memcpy(sa.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  setenv("NOTIFY_SOCKET", path, 1);
  return fd;
}

static void test_sd_notify(void **state) {
  (void)state;
  int up_port, port = it_free_port();
  it_server *up = it_server_start(IT_ECHO, 0, &up_port);
  it_gangway g;
  it_gangway_prepare(&g);
  it_write(g.dir, "config.lua", LISTENER ", control = \"ctl.sock\" }\n", port, up_port);
  int nfd = notify_socket(g.dir);
  it_gangway_run(&g, 0);
  unsetenv("NOTIFY_SOCKET");
  /* READY=1 comes once the listener accepts: a session works at once. */
  expect_notify(nfd, "READY=1\nSTATUS=generation 1 running, 1 listener(s)");
  int fd = it_connect(port);
  assert_true(fd >= 0);
  it_echo_byte(fd, 'r');
  close(fd);
  char got[1024];
  expect_cmd("reload", g.config, 0, "ok: generation 2 active");
  notify_next(nfd, got, sizeof got, 5000);
  if (strncmp(got, "RELOADING=1\nMONOTONIC_USEC=", 27) != 0 || strtoull(got + 27, NULL, 10) == 0)
    fail_msg("NOTIFY_SOCKET at reload: \"%s\"", got);
  expect_notify(nfd, "READY=1\nSTATUS=generation 2 running (reload: control socket)");
  /* A reload that fails is framed the same way: systemd waits for READY=1. */
  it_write(g.dir, "broken.lua", "error(\"no\\nway\")\n");
  it_write(g.dir, "config.lua",
           "return { listeners = { { name = \"c\", listen = \"127.0.0.1:%d\", upstream = "
           "\"127.0.0.1:%d\", scripts = { \"broken.lua\" } } }, control = \"ctl.sock\" }\n",
           port, up_port);
  expect_cmd("reload", g.config, 1, "error: ");
  expect_notify(nfd, "RELOADING=1\nMONOTONIC_USEC=");
  expect_notify(nfd, "READY=1\nSTATUS=generation 2 running; reload (control socket) failed: ");
  it_write(g.dir, "config.lua", LISTENER ", control = \"ctl.sock\" }\n", port, up_port);
  kill(g.pid, SIGHUP);
  expect_notify(nfd, "RELOADING=1\nMONOTONIC_USEC=");
  expect_notify(nfd, "READY=1\nSTATUS=generation 3 running (reload: SIGHUP)");
  kill(g.pid, SIGTERM);
  expect_notify(nfd, "STOPPING=1");
  /* The SIGTERM above is the stop: wait for it to end with 0. A second one
   * could land after the signal handlers are closed on the way out. */
  assert_int_equal(it_gangway_stop(&g, 0, 5000), 0);
  it_server_stop(up);
  notify_next(nfd, got, sizeof got, 0);
  assert_string_equal(got, "");
  close(nfd);
}

/* A gangway that cannot start never says READY=1. */
static void test_sd_notify_not_ready_on_failure(void **state) {
  (void)state;
  char dir[128], cfg[256], *out;
  it_mkdtemp(dir, sizeof dir);
  it_write(dir, "config.lua", LISTENER ", control = \"taken\" }\n", it_free_port(), it_free_port());
  it_write(dir, "taken", "a file\n");
  snprintf(cfg, sizeof cfg, "%s/config.lua", dir);
  int nfd = notify_socket(dir);
  const char *args[] = {"-c", cfg, NULL};
  int rc = it_run_gangway(&out, args);
  unsetenv("NOTIFY_SOCKET");
  assert_int_equal(rc, 3);
  free(out);
  char got[1024];
  notify_next(nfd, got, sizeof got, 0);
  assert_string_equal(got, "");
  close(nfd);
  it_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_existing_file_is_not_touched),
      cmocka_unit_test(test_symlink_is_not_followed),
      cmocka_unit_test(test_stale_socket_is_replaced_and_mode_is_0600),
      cmocka_unit_test(test_replaced_socket_is_not_removed_at_exit),
      cmocka_unit_test(test_unfinished_request_times_out),
      cmocka_unit_test(test_bad_requests_get_errors),
      cmocka_unit_test(test_idle_clients_do_not_lock_out_stats),
      cmocka_unit_test(test_check_reports_the_clamp),
      cmocka_unit_test(test_stats_and_reload_at_the_fd_limit),
      cmocka_unit_test(test_soft_limit_is_raised),
      cmocka_unit_test(test_stats_with_every_fd_taken),
      cmocka_unit_test(test_sd_notify),
      cmocka_unit_test(test_sd_notify_not_ready_on_failure),
  };
  return cmocka_run_group_tests_name("control socket", tests, NULL, NULL);
}
