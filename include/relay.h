/* relay.h: the worker: listeners and sessions on a libuv loop.
 *
 * A session is one client connection and its upstream connection. Each
 * direction's bytes are read into pool buffers, cut into frames by the
 * listener's framing, handed to the script layer only when a handler asked
 * for that frame, and written on in one batched write per read.
 *
 * The worker owns no counters of its own: it adds to slots in a registry
 * the app made (gw_relay_metrics), and the app renders that registry for
 * /metrics and `gangway stats`. A second worker would get a registry of
 * its own, which the app merges (gw_metrics_merge). */
#ifndef GW_RELAY_H
#define GW_RELAY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "capture.h"
#include "config.h"
#include "metrics.h"
#include "script.h"

typedef struct gw_relay gw_relay;

/* Where the worker counts: the registry and gangway's families in it
 * (gw_metrics_add_gangway, gw_relay_add_families), all registered by the
 * app. The worker takes each listener's slots
 * (gw_listener_counters_init) and registers a collect hook (pool buffers,
 * Lua memory, per-opcode counts of the script layer). Both must outlive
 * the relay. */
typedef struct gw_relay_metrics {
  gw_metrics *registry;
  const gw_gangway_families *families;
  gw_metric *handler_frames;    /* gangway_handler_frames_total{listener}
                                   (gw_relay_add_families) */
} gw_relay_metrics;

/* Registers the families the worker fills besides gangway's own (frames
 * handed to handlers, per listener) into m. 0 or -ENOMEM. */
int gw_relay_add_families(gw_relay_metrics *m);

/* Creates the relay: loads every listener's scripts and binds every
 * listener. Takes ownership of cfg (also on failure). Returns 0 or a
 * negative errno with a message in err. */
int gw_relay_new(uv_loop_t *loop, gw_config *cfg, const gw_relay_metrics *m,
                 gw_relay **out, char *err, size_t errlen);

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

/* The script state, for the admin's script endpoints (gw_script_admin). */
gw_script *gw_relay_script(gw_relay *r);

/* Open sessions as a JSON array of objects: id, listener, client,
 * upstream, age_ms, bytes_client/bytes_server (read from each side),
 * frames_client/frames_server, last_opcode_client/last_opcode_server (of
 * the last frame handed to handlers, null before any), player (null: not
 * known to gangway yet). A new reference; NULL when out of memory. */
json_t *gw_relay_sessions_json(gw_relay *r);
/* Each listener's upstream pool and its servers now (GET /upstreams):
 * [{ listener, balance, health_checks, servers = [{ name, address,
 * addresses, up, sessions, weight, backup, last_error, resolve_error }] }]. */
json_t *gw_relay_upstreams_json(gw_relay *r);

/* Closes session id softly (what is queued is written first) with reason.
 * 0, or -ENOENT when no open session has that id. */
int gw_relay_close_session(gw_relay *r, uint64_t id, const char *reason);

/* ---- capture -------------------------------------------------------------
 * Frames of the sessions a filter takes, as they left gangway (and, with
 * originals, as they arrived, for the frames handed to handlers), written
 * into cap with each session's client and upstream addresses. While no
 * capture runs the relay's path has no capture code in it: sessions switch
 * to a capturing pipeline driver when one starts. */
typedef struct gw_relay_capture_filter {
  const char *listener;         /* NULL: every listener (copied) */
  uint64_t session;             /* 0: every session */
  bool has_opcode;              /* only frames of this opcode */
  uint32_t opcode;
  bool originals;               /* frames as they arrived, too */
} gw_relay_capture_filter;

/* Starts writing into cap (the caller keeps it; one capture at a time:
 * -EBUSY). done(ud, status) runs once cap is full (GW_CAPTURE_FULL) or a
 * write failed (negative errno); the caller then calls
 * gw_relay_capture_stop and closes cap. */
int gw_relay_capture_start(gw_relay *r, gw_capture *cap, const gw_relay_capture_filter *f,
                           void (*done)(void *ud, int status), void *ud);
/* Ends every captured session's flow and detaches cap (not closed). */
void gw_relay_capture_stop(gw_relay *r);

#endif
