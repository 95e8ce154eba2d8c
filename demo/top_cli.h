/* top_cli.h: what the demo programs' command lines and consoles share. */
#ifndef TOP_CLI_H
#define TOP_CLI_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

/* "127.0.0.1:1973" or "[::1]:1973" into *out. Returns 0 or -EINVAL. */
int top_parse_addr(const char *s, struct sockaddr_storage *out);
/* "127.0.0.1:1973" back from an address (for logs). */
void top_format_addr(const struct sockaddr *sa, char *out, size_t cap);
/* A decimal number in [min, max]. Returns 0 or -EINVAL. */
int top_parse_uint(const char *s, unsigned long min, unsigned long max,
                   unsigned long *out);
/* One line to stdout, "hh:mm:ss.mmm " first, flushed so that a person or a
 * script reading a pipe sees it at once. */
void top_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* SIGINT and SIGTERM to cb, with data in each handle's data. A handle
 * closed by top_signals_close restores the default action, so a second
 * signal during a slow shutdown ends the process at once. */
void top_signals_start(uv_loop_t *loop, uv_signal_t sigs[2], uv_signal_cb cb,
                       void *data);
void top_signals_close(uv_signal_t sigs[2]);

#endif
