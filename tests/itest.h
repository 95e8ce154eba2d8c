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

/* ---- hostile clients (it_hostile.c, it_replay.c) ---- */
/* Peak resident set size of pid in KiB (VmHWM), -1 if unknown. */
long it_hwm_kb(pid_t pid);
/* Open file descriptors of pid, -1 if unknown. */
int it_fd_count(pid_t pid);
/* Like it_connect_addr, from the local address src (e.g. "127.0.0.2"), so
 * that per-address limits see a different client. */
int it_connect_from(const char *src, const char *host, int port);
/* Sends one line to the control socket at path and reads the answer (up to
 * cap - 1 bytes, NUL-terminated) within timeout_ms. Returns the answer's
 * length, or -1 if nothing came. */
int it_control(const char *path, const char *cmd, char *out, size_t cap, int timeout_ms);
/* The integer after "key": in a flat JSON object, or -1 if absent. */
long long it_json_int(const char *json, const char *key);
/* Lines of the log that contain needle (and needle2 too, unless NULL). */
int it_log_count(it_gangway *g, const char *needle, const char *needle2);

/* A bystander: a thread that keeps one session through gangway busy with
 * framed messages carrying sequence numbers, one at a time, each checked
 * byte for byte when the echo upstream sends it back, and the round trips
 * timed. It stops at the first error, which it keeps. */
struct gw_framing;
typedef struct it_bystander it_bystander;
typedef struct {
  uint64_t frames;         /* echoed intact */
  uint64_t bytes_sent, bytes_ok;
  uint64_t lost;           /* bytes_sent - bytes_ok */
  uint64_t worst_rtt_ms;
  char error[160];         /* "" while all is well */
} it_bystander_result;
/* Connects from src to 127.0.0.1:port; frames of framing f with opcode. */
it_bystander *it_bystander_start(const char *src, int port, const struct gw_framing *f,
                                 uint32_t opcode);
/* Stops it (after the message in flight), closes its socket, fills *res. */
void it_bystander_stop(it_bystander *b, it_bystander_result *res);
/* Prints the summary line of one attack and asserts the bystander was
 * intact (no error, nothing lost) with a worst round trip under
 * max_rtt_ms. */
void it_bystander_report(const char *name, const char *inputs, long hwm_kb,
                         const it_bystander_result *res, uint64_t max_rtt_ms);

#endif
