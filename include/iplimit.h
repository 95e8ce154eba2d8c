/* iplimit.h: sessions per client address, at once and per second.
 *
 * A table keyed by the client's IP address (port ignored) that the relay
 * asks before it lets a new session in. Pure: no libuv, the caller passes
 * the time. An address has an entry while it has open sessions or its
 * new-session budget is not yet full again, so the table holds no more
 * entries than addresses seen in about the last second plus those with
 * sessions open; stale entries are swept when the table would grow. */
#ifndef GW_IPLIMIT_H
#define GW_IPLIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct gw_iplimit gw_iplimit;

typedef enum {
  GW_IP_OK = 0,
  GW_IP_TOO_MANY,       /* sessions_per_ip open already */
  GW_IP_TOO_FAST,       /* new_sessions_per_ip_per_s used up */
  GW_IP_NOMEM,
} gw_ip_verdict;

gw_iplimit *gw_iplimit_new(void);
void gw_iplimit_free(gw_iplimit *t);
/* New limits (0 = none), from the next gw_iplimit_open on. */
void gw_iplimit_set(gw_iplimit *t, uint32_t per_ip, uint32_t per_ip_per_s);

/* A new session from addr at now_ms: counts it and returns GW_IP_OK, or
 * refuses it (nothing counted). */
gw_ip_verdict gw_iplimit_open(gw_iplimit *t, const struct sockaddr *addr,
                              uint64_t now_ms);
/* A session that gw_iplimit_open let in has ended. */
void gw_iplimit_close(gw_iplimit *t, const struct sockaddr *addr,
                      uint64_t now_ms);
/* Entries held (for tests and stats). */
size_t gw_iplimit_entries(const gw_iplimit *t);

#endif
