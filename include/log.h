/* log.h: one line per event, text or JSON, to stderr (or a sink).
 *
 * A global logger: gangway has one event loop and one log. The busted
 * module swaps the sink to capture lines for specs. */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stdint.h>

#include "config.h"

typedef void (*gw_log_sink)(gw_log_level level, const char *line, void *ud);

void gw_log_setup(gw_log_level level, gw_log_format format);
/* NULL restores stderr. */
void gw_log_set_sink(gw_log_sink sink, void *ud);
bool gw_log_enabled(gw_log_level level);
const char *gw_log_level_name(gw_log_level level);

/* msg is printf-style. In text format the line is
 *   2026-11-25T13:15:19.123Z info  msg
 * in JSON format {"ts":"...","level":"info","msg":"..."}. */
void gw_log(gw_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* At most per_s lines a second (0: no limit); the rest are counted in
 * suppressed for the caller to report ("N lines suppressed"). */
typedef struct gw_ratelimit {
  uint32_t per_s;
  uint32_t in_window;
  uint64_t window_ms;           /* start of the current second */
  uint64_t suppressed;          /* since the caller last took the count */
} gw_ratelimit;
bool gw_ratelimit_allow(gw_ratelimit *rl, uint64_t now_ms);

#define gw_debug(...) do { if (gw_log_enabled(GW_LOG_DEBUG)) gw_log(GW_LOG_DEBUG, __VA_ARGS__); } while (0)
#define gw_info(...)  gw_log(GW_LOG_INFO, __VA_ARGS__)
#define gw_warn(...)  gw_log(GW_LOG_WARN, __VA_ARGS__)
#define gw_error(...) gw_log(GW_LOG_ERROR, __VA_ARGS__)

#endif
