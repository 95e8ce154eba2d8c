/* app.h: the running gangway, apart from its worker.
 *
 * The app owns the config, the one registry of counters (metrics.h), the
 * control socket (`gangway reload`, `stats`, `capture`), the admin HTTP
 * endpoint (admin.h), signals, systemd notifications and reload
 * orchestration. The worker (relay.h: loop, listeners, sessions, pool,
 * pipelines, script state) only adds to counter slots the app registered
 * for it, and is asked for sessions, closes and captures through
 * relay.h's calls; nothing on the admin side touches a session.
 *
 * The control socket speaks one line in, one answer out:
 *   reload            "ok: generation N active after X ms" / "error: ..."
 *   stats             one line of JSON: {"summary": {...}, "uptime_seconds",
 *                     "generation", "reloads": [...], "metrics": {...}}
 *   capture k=v ...   writes a pcap until a limit; the answer comes at the
 *                     end (keys: path, listener, session, opcode, seconds,
 *                     max_bytes, originals; see docs/admin.md) */
#ifndef GW_APP_H
#define GW_APP_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

#define GW_EXIT_INVALID 1 /* invalid config or script, failed reload */
#define GW_EXIT_USAGE 2
#define GW_EXIT_RUNTIME 3 /* cannot listen, no running gangway... */

/* Control socket requests: at most this long, newline included. */
#define GW_CONTROL_LINE_MAX 256

/* Runs the proxy on config_path until a signal drains it. Returns the
 * process's exit code. */
int gw_app_run(const char *config_path);

/* gw_config_load into a new struct (free it with gw_config_free + free). */
int gw_app_load_config(const char *path, gw_config **out, char *err, size_t errlen);

/* Fits limits.max_sessions under the open-files limit so that sessions can
 * never take the descriptors the control socket and the admin endpoint
 * need. apply: raise the soft limit first, as a run does (check only says
 * what a run would do). note gets what was clamped ("" if nothing). */
void gw_app_fd_fit(gw_config *cfg, bool apply, char *note, size_t notelen);

#endif
