/* itest.h: what integration tests share. They start real gangway processes
 * (GW_BIN, the build's binary) on loopback ports, talk to them with blocking
 * sockets that always have a timeout, and run upstream servers in threads of
 * the test process. Every wait is bounded; a failed wait fails the test.
 *
 * Set GW_VALGRIND=1 to run gangway under valgrind (errors and leaks make its
 * exit status non-zero, which it_gangway_stop reports). */
#ifndef GW_ITEST_H
#define GW_ITEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <cmocka.h>

/* ---- processes ---- */
typedef struct it_gangway {
  pid_t pid;
  char dir[128];      /* private temp dir: config.lua, gangway.log, scripts */
  char config[192];
  char log[192];
} it_gangway;

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int it_free_port(void);
/* A fresh temp directory (removed by it_gangway_stop, or it_rmdir). */
void it_mkdtemp(char *out, size_t outlen);
void it_rmdir(const char *dir);
/* Writes text to dir/name (creating it), fails the test on error. */
void it_write(const char *dir, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Whole file, NUL-terminated, malloc'd; NULL if missing. */
char *it_slurp(const char *path);

/* Writes config_fmt to g->dir/config.lua and starts `gangway -c` on it, with
 * stderr to g->log. Unless wait_port is 0, waits (5 s at most) until the log
 * says gangway is running, i.e. every listener is bound. Fails the test if
 * it does not. */
void it_gangway_start(it_gangway *g, int wait_port, const char *config_fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Like it_gangway_start, with the temp dir already made and files written
 * into it (g->dir set by it_gangway_prepare). */
void it_gangway_prepare(it_gangway *g);
void it_gangway_run(it_gangway *g, int wait_port);
/* Sends sig (0: none) and waits up to timeout_ms for the exit. Returns the
 * exit code, 128+signal if killed, or -1 if it had to be SIGKILLed. Removes
 * the temp dir unless the test failed (it prints the log then). */
int it_gangway_stop(it_gangway *g, int sig, int timeout_ms);
/* Polls the log until needle appears (true) or timeout_ms passes. */
bool it_log_wait(it_gangway *g, const char *needle, int timeout_ms);
/* Milliseconds on a monotonic clock. */
uint64_t it_now_ms(void);
/* Resident set size of pid in KiB (VmRSS), -1 if unknown. */
long it_rss_kb(pid_t pid);
/* Runs `gangway args...` to completion (10 s at most), capturing stdout and
 * stderr together into out (malloc'd). Returns the exit code. */
int it_run_gangway(char **out, const char *const args[]);

/* ---- sockets ---- */
int it_connect(int port);                         /* 127.0.0.1, 5 s; -1 */
int it_connect_addr(const char *host, int port);  /* any numeric host */
/* All of buf, or -1. */
int it_send_all(int fd, const void *buf, size_t len);
/* Reads until len bytes, EOF, error or timeout_ms. Returns the count read. */
size_t it_recv_exact(int fd, void *buf, size_t len, int timeout_ms);
/* Sends the byte c through fd and asserts the same byte comes back within a
 * second (an echo upstream behind gangway: the session is alive). */
void it_echo_byte(int fd, char c);
/* Waits for the peer's end: 1 = FIN, -1 = RST or error, 0 = timeout. Any
 * bytes that arrive first are discarded and counted into *extra (if set). */
int it_wait_eof(int fd, int timeout_ms, size_t *extra);

/* ---- upstream servers, each in its own thread ---- */
typedef enum {
  IT_ECHO,        /* writes back what it reads; FIN answered with FIN */
  IT_SINK,        /* reads and counts, never writes */
  IT_FLOOD,       /* writes `param` bytes (0: forever) as fast as it can */
  IT_CLOSE_AFTER, /* reads `param` bytes, then closes the connection */
  IT_REFUSE,      /* nothing listens: the port is free (connect refused) */
} it_server_kind;
typedef struct it_server it_server;
it_server *it_server_start(it_server_kind kind, uint64_t param, int *port);
void it_server_stop(it_server *s);
uint64_t it_server_bytes_in(it_server *s);  /* bytes read, all connections */
int it_server_accepted(it_server *s);

/* ---- data ---- */
/* Deterministic pseudo-random bytes from seed. */
void it_fill(void *buf, size_t len, uint64_t seed);
uint64_t it_fnv1a(const void *buf, size_t len, uint64_t h);
#define IT_FNV_INIT 0xcbf29ce484222325ULL

#endif
