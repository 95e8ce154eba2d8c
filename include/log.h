/* log.h: one line per event, text or JSON, to stderr, the journal (or a
 * sink).
 *
 * A global logger: gangway has one event loop and one log. The busted
 * module swaps the sink to capture lines for specs.
 *
 * An event is a name, a message and typed fields:
 *
 *   gw_log_event(GW_LOG_INFO, "session_close",
 *                GW_FIELDS(GW_F_HIDE(GW_F_U64("session", id)),
 *                          GW_F_STR("listener", name),
 *                          GW_F_QSTR("reason", reason)),
 *                "session %" PRIu64 " close", id);
 *
 * text (log.format = "text"): the message, then each field not hidden as
 * key=value:
 *   2026-11-25T13:15:19.123Z info  session 7 close listener=game reason="client closed"
 * JSON (log.format = "json"): one object per line, the fields with their
 * JSON types, in order after ts, level, event and msg:
 *   {"ts":"2026-11-25T13:15:19.123Z","level":"info","event":"session_close",
 *    "msg":"session 7 close","session":7,"listener":"game","reason":"client closed"}
 * journald (log.target = "journald"): MESSAGE is the text rendering without
 * the time and level, PRIORITY the level as syslog has it (debug 7, info 6,
 * warn 4, error 3), GW_EVENT the event, and each field GW_<KEY> (the key
 * upper-cased, anything but A-Z 0-9 turned into _): GW_SESSION=7.
 *
 * Any bytes are safe in a string field or the message: in JSON invalid
 * UTF-8 becomes U+FFFD and control bytes are escaped by the JSON encoder
 * (jansson); in text a field's control bytes, invalid UTF-8 and (quoted)
 * '"' and '\' are written as \xNN / \" / \\. A string value or message
 * longer than GW_LOG_VALUE_MAX bytes is cut at a character boundary and
 * ends in GW_LOG_CUT_MARK; the JSON object then has "truncated":true. The
 * message of plain gw_log() calls is written as given in text format (as
 * it always was). */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef void (*gw_log_sink)(gw_log_level level, const char *line, void *ud);

/* log.target: where lines go when no sink is set. */
typedef enum { GW_LOG_STDERR = 0, GW_LOG_JOURNALD } gw_log_target;

#define GW_LOG_VALUE_MAX 4096           /* bytes of one string value or message */
#define GW_LOG_CUT_MARK "\xe2\x80\xa6(cut)" /* "…(cut)" */

void gw_log_setup(gw_log_level level, gw_log_format format);
/* Where lines go. GW_LOG_JOURNALD with no journal socket
 * (/run/systemd/journal/socket) falls back to stderr, warns once on
 * stderr and returns -ENOENT; otherwise 0. The format does not matter to
 * the journal: its entries always carry the fields. */
int gw_log_set_target(gw_log_target target);
gw_log_target gw_log_get_target(void); /* in effect, after any fallback */
/* NULL restores stderr (or the journal). */
void gw_log_set_sink(gw_log_sink sink, void *ud);
/* Messages reach the sink as they are, control bytes included, instead of
 * escaped as in a log (gangway check --json, which encodes them itself).
 * Reset by the next gw_log_set_sink. */
void gw_log_sink_raw(bool raw);
bool gw_log_enabled(gw_log_level level);
const char *gw_log_level_name(gw_log_level level);

/* ---- fields ------------------------------------------------------------- */

typedef enum {
  GW_FT_END = 0, /* ends a field list */
  GW_FT_STR,     /* p, len bytes (len SIZE_MAX: NUL-terminated); NULL: JSON null, text - */
  GW_FT_HEX,     /* p, len bytes written as lowercase hex (a string) */
  GW_FT_I64,
  GW_FT_U64,
  GW_FT_F64,     /* NaN and infinities are JSON strings "nan", "inf", "-inf" */
  GW_FT_BOOL,
} gw_field_type;

enum {
  GW_FF_QUOTE = 1, /* text: always key="value" (else quoted only when needed) */
  GW_FF_HIDE = 2,  /* text: not written (the message says it already) */
};

typedef struct gw_field {
  const char *key; /* JSON key; ts, level, event, msg and truncated become _ts ... */
  const void *p;
  size_t len;
  union {
    int64_t i;
    uint64_t u;
    double f;
    bool b;
  } v;
  uint8_t type;  /* gw_field_type */
  uint8_t flags; /* GW_FF_* */
} gw_field;

#define GW_F_STR(k, s) ((gw_field){.key = (k), .p = (s), .len = SIZE_MAX, .type = GW_FT_STR})
#define GW_F_STRN(k, s, n) ((gw_field){.key = (k), .p = (s), .len = (n), .type = GW_FT_STR})
#define GW_F_QSTR(k, s)                                                                   \
  ((gw_field){.key = (k), .p = (s), .len = SIZE_MAX, .type = GW_FT_STR, .flags = GW_FF_QUOTE})
#define GW_F_HEX(k, b, n) ((gw_field){.key = (k), .p = (b), .len = (n), .type = GW_FT_HEX})
#define GW_F_I64(k, x) ((gw_field){.key = (k), .v.i = (int64_t)(x), .type = GW_FT_I64})
#define GW_F_U64(k, x) ((gw_field){.key = (k), .v.u = (uint64_t)(x), .type = GW_FT_U64})
#define GW_F_F64(k, x) ((gw_field){.key = (k), .v.f = (double)(x), .type = GW_FT_F64})
#define GW_F_BOOL(k, x) ((gw_field){.key = (k), .v.b = (x), .type = GW_FT_BOOL})
#define GW_F_END ((gw_field){.type = GW_FT_END})
/* The field, in JSON and the journal only. */
#define GW_F_HIDE(f) gw_field_hidden(f)
/* A field list ending in GW_F_END, for gw_log_event. */
#define GW_FIELDS(...) ((const gw_field[]){__VA_ARGS__, GW_F_END})

static inline gw_field gw_field_hidden(gw_field f) {
  f.flags |= GW_FF_HIDE;
  return f;
}

/* ---- writing ------------------------------------------------------------ */

/* An event: fields ends in GW_F_END (NULL: none); fmt is the printf-style
 * message, NULL for none (text then starts with the event's name). */
void gw_log_event(gw_log_level level, const char *event, const gw_field *fields,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* msg is printf-style: the event "log" with no fields. In text format the
 * line is
 *   2026-11-25T13:15:19.123Z info  msg
 * in JSON format {"ts":"...","level":"info","event":"log","msg":"..."}. */
void gw_log(gw_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* p[0..n) as lowercase hex ("0a1b"), NUL-terminated in out. Writes as many
 * whole bytes as fit in outlen - 1 characters; returns the characters
 * written (2 n when out holds 2 n + 1). */
size_t gw_hex(const uint8_t *p, size_t n, char *out, size_t outlen);

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
