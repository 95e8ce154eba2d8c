/* echo.h: the echo upstream of gangway's benchmarks (bench/echo.c) as a
 * part of a libuv loop: gw-echo runs it alone, gw-loadgen --echo beside its
 * sessions. One instance per process. */
#ifndef GW_BENCH_ECHO_H
#define GW_BENCH_ECHO_H

#include <netinet/in.h>
#include <uv.h>

/* Listens on addr and echoes every connection; negative errno on failure. */
int echo_listen(uv_loop_t *loop, const struct sockaddr_in *addr);

/* Closes the listener and every connection, so the loop can end. */
void echo_stop(void);

#endif
