/* relay.h: listeners and sessions on a libuv loop.
 *
 * A session is one client connection and its upstream connection. Each
 * direction's bytes are read into pool buffers, cut into frames by the
 * listener's framing, handed to the script layer only when a handler asked
 * for that frame, and written on in one batched write per read. */
#ifndef GW_RELAY_H
#define GW_RELAY_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"

typedef struct gw_relay gw_relay;

/* Creates the relay: loads every listener's scripts and binds every
 * listener. Takes ownership of cfg (also on failure). Returns 0 or a
 * negative errno with a message in err. */
int gw_relay_new(uv_loop_t *loop, gw_config *cfg, gw_relay **out, char *err,
                 size_t errlen);

/* Applies a new configuration: scripts first (all or nothing), then
 * listeners added, removed or changed. Live sessions keep their framing and
 * upstream and use the new handlers from their next frame. Takes ownership
 * of cfg. On failure nothing changes; returns a negative errno and err. */
int gw_relay_reload(gw_relay *r, gw_config *cfg, char *err, size_t errlen);

/* Stops accepting, lets sessions finish for up to drain_ms, then closes the
 * rest. done runs once every session is gone. */
void gw_relay_drain(gw_relay *r, void (*done)(gw_relay *r, void *ud), void *ud);

/* Closes every handle the relay owns; the loop then runs to completion and
 * gw_relay_free releases the memory. */
void gw_relay_close(gw_relay *r);
void gw_relay_free(gw_relay *r);

const gw_config *gw_relay_config(const gw_relay *r);

typedef struct gw_relay_stats {
  uint64_t sessions_total;
  uint64_t sessions_refused;    /* limits.max_sessions, per client address */
  uint32_t sessions_active;
  uint64_t bytes[2];            /* read from each side */
  uint64_t frames[2];           /* framed listeners only */
  uint64_t protocol_errors;
  size_t pool_live, pool_free;
} gw_relay_stats;
void gw_relay_get_stats(const gw_relay *r, gw_relay_stats *st);
/* Appends a JSON object of the relay and script counters to out. */
int gw_relay_stats_json(const gw_relay *r, char *out, size_t outlen);

#endif
