/* log.c: the process's one log, one line per event: text or JSON on stderr,
 * or an entry with fields in the systemd journal. */
#include "log.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
/* The code location of this file says nothing about the event. */
#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#define JOURNAL_SOCKET "/run/systemd/journal/socket"
#define TEXT_LINE_MAX 16384 /* bytes of a text line before it is cut */
#define KEY_MAX 60          /* bytes of a field's key (journald allows 64) */
#define CUT_LEN (sizeof GW_LOG_CUT_MARK - 1)

static gw_log_level g_level = GW_LOG_INFO;
static gw_log_format g_format = GW_LOG_TEXT;
static gw_log_target g_target = GW_LOG_STDERR; /* in effect */
static bool g_journal_warned;                  /* the fallback was reported */
static gw_log_sink g_sink;
static void *g_sink_ud;
static bool g_sink_raw;       /* messages unescaped (check --json) */

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const reserved_keys[] = {"ts", "level", "event", "msg", "truncated"};

void gw_log_setup(gw_log_level level, gw_log_format format) {
  g_level = level;
  g_format = format;
}

void gw_log_set_sink(gw_log_sink sink, void *ud) {
  g_sink = sink;
  g_sink_ud = ud;
  g_sink_raw = false;
}

void gw_log_sink_raw(bool raw) { g_sink_raw = raw; }

bool gw_log_enabled(gw_log_level level) { return level >= g_level; }

const char *gw_log_level_name(gw_log_level level) {
  return (unsigned)level < 4 ? level_names[level] : "?";
}

gw_log_target gw_log_get_target(void) { return g_target; }

int gw_log_set_target(gw_log_target target) {
  if (target != GW_LOG_JOURNALD) {
    g_target = GW_LOG_STDERR;
    g_journal_warned = false;
    return 0;
  }
  if (access(JOURNAL_SOCKET, W_OK) == 0) {
    g_target = GW_LOG_JOURNALD;
    return 0;
  }
  int err = errno;
  g_target = GW_LOG_STDERR;
  /* Reloads set the target again: one warning while it stays unreachable. */
  if (!g_journal_warned) {
    g_journal_warned = true;
    gw_warn("log.target = \"journald\": no journal at " JOURNAL_SOCKET " (%s), logging to stderr",
            strerror(err));
  }
  return -ENOENT;
}

bool gw_ratelimit_allow(gw_ratelimit *rl, uint64_t now_ms) {
  if (!rl->per_s) return true;
  if (now_ms - rl->window_ms >= 1000) {
    rl->window_ms = now_ms;
    rl->in_window = 0;
  }
  if (rl->in_window < rl->per_s) {
    rl->in_window++;
    return true;
  }
  rl->suppressed++;
  return false;
}

size_t gw_hex(const uint8_t *p, size_t n, char *out, size_t outlen) {
  static const char digits[] = "0123456789abcdef";
  if (!outlen) return 0;
  size_t fit = (outlen - 1) / 2;
  if (n > fit) n = fit;
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  out[2 * n] = '\0';
  return 2 * n;
}

/* ---- a growing buffer ---------------------------------------------------- */

/* Starts in the caller's memory and moves to the heap when it must. Past
 * max bytes it stops taking bytes and sets cut. */
typedef struct sbuf {
  char *p;
  size_t n, cap, max;
  bool heap, cut, failed;
} sbuf;

static void sb_init(sbuf *b, char *mem, size_t cap, size_t max) {
  *b = (sbuf){.p = mem, .cap = cap, .max = max};
  b->p[0] = '\0';
}

static void sb_free(sbuf *b) {
  if (b->heap) free(b->p);
}

/* Room for more bytes and a NUL, ignoring max. */
static bool sb_room(sbuf *b, size_t more) {
  if (b->n + more + 1 <= b->cap) return true;
  if (b->failed) return false;
  size_t cap = b->cap * 2;
  while (cap < b->n + more + 1) cap *= 2;
  char *p = b->heap ? realloc(b->p, cap) : malloc(cap);
  if (!p) {
    b->failed = true;
    return false;
  }
  if (!b->heap) memcpy(p, b->p, b->n + 1);
  b->p = p;
  b->cap = cap;
  b->heap = true;
  return true;
}

/* Appends len bytes, or the part under max. */
static void sb_put(sbuf *b, const void *s, size_t len) {
  if (b->n + len > b->max) {
    len = b->max > b->n ? b->max - b->n : 0;
    b->cut = true;
  }
  if (!len || !sb_room(b, len)) return;
  memcpy(b->p + b->n, s, len);
  b->n += len;
  b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* Past max: the mark goes on anyway, max is for content. */
static void sb_put_mark(sbuf *b) {
  if (!sb_room(b, CUT_LEN)) return;
  memcpy(b->p + b->n, GW_LOG_CUT_MARK, CUT_LEN + 1);
  b->n += CUT_LEN;
}

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* ---- bytes to text --------------------------------------------------------- */

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no
 * overlong forms, surrogates or code points past U+10FFFF), 0 if none. */
static size_t utf8_seq(const uint8_t *s, size_t n) {
  uint8_t c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t cp, min;
  if (c >= 0xc2 && c <= 0xdf) len = 2, cp = c & 0x1f, min = 0x80;
  else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4) len = 4, cp = c & 0x07, min = 0x10000;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

static size_t str_len(const gw_field *f) {
  return f->len == SIZE_MAX ? strlen(f->p) : f->len;
}

/* s as valid UTF-8, each ill-formed byte as U+FFFD, at most max bytes of
 * it (then cut at a character and marked). Returns whether it was cut. */
static bool put_utf8(sbuf *b, const uint8_t *s, size_t n, size_t max) {
  static const char replacement[] = "\xef\xbf\xbd";
  size_t out = 0;
  for (size_t i = 0; i < n;) {
    size_t len = utf8_seq(s + i, n - i);
    size_t w = len ? len : 3;
    if (out + w > max) {
      sb_put_mark(b);
      return true;
    }
    sb_put(b, len ? (const char *)s + i : replacement, w);
    out += w;
    i += len ? len : 1;
  }
  return false;
}

/* A text (key=value) value: quoted when asked or when it holds a space, '"',
 * '=' or nothing; control bytes and ill-formed UTF-8 as \xNN, and inside
 * quotes '"' and '\' escaped, so that one event stays one line. */
/* s with control bytes and ill-formed UTF-8 as \xNN (and, in quotes, '"'
 * and '\' escaped): what a peer or a script put in it cannot start a
 * line of its own in the log. */
static void put_escaped(sbuf *b, const uint8_t *s, size_t n, bool quote) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    size_t len = utf8_seq(s + i, n - i);
    if (len > 1) {
      sb_put(b, s + i, len);
      i += len;
      continue;
    }
    if (!len || c < 0x20 || c == 0x7f) sb_printf(b, "\\x%02x", c);
    else if (quote && (c == '"' || c == '\\')) sb_printf(b, "\\%c", c);
    else sb_put(b, &s[i], 1);
    i++;
  }
}

static bool put_text_value(sbuf *b, const uint8_t *s, size_t n, bool quote) {
  bool cut = n > GW_LOG_VALUE_MAX;
  if (cut) n = GW_LOG_VALUE_MAX;
  if (!n) quote = true;
  for (size_t i = 0; i < n && !quote; i++)
    quote = s[i] == ' ' || s[i] == '"' || s[i] == '=';
  if (quote) sb_put(b, "\"", 1);
  put_escaped(b, s, n, quote);
  if (cut) sb_put_mark(b);
  if (quote) sb_put(b, "\"", 1);
  return cut;
}

static bool put_hex(sbuf *b, const uint8_t *p, size_t n) {
  size_t shown = n > GW_LOG_VALUE_MAX / 2 ? GW_LOG_VALUE_MAX / 2 : n;
  for (size_t i = 0; i < shown; i++) sb_printf(b, "%02x", p[i]);
  if (shown < n) sb_put_mark(b);
  return shown < n;
}

static void put_double(sbuf *b, double f) {
  if (isnan(f)) sb_puts(b, "nan");
  else if (isinf(f)) sb_puts(b, f < 0 ? "-inf" : "inf");
  else sb_printf(b, "%.15g", f);
}

/* A field's value as text (not the quoted text form: journald's). */
static bool put_plain_value(sbuf *b, const gw_field *f) {
  switch (f->type) {
  case GW_FT_STR: return f->p ? put_utf8(b, f->p, str_len(f), GW_LOG_VALUE_MAX) : false;
  case GW_FT_HEX: return put_hex(b, f->p, f->len);
  case GW_FT_I64: sb_printf(b, "%" PRId64, f->v.i); break;
  case GW_FT_U64: sb_printf(b, "%" PRIu64, f->v.u); break;
  case GW_FT_F64: put_double(b, f->v.f); break;
  case GW_FT_BOOL: sb_puts(b, f->v.b ? "true" : "false"); break;
  }
  return false;
}

/* The text rendering without time and level: the message (or the event's
 * name), then key=value for each field not hidden. */
static void render_text_body(sbuf *b, const char *event, const char *msg,
                             const gw_field *fields, bool escape_msg) {
  size_t start = b->n;
  /* A message may hold a peer's bytes (a script's error about a chat
   * line): in a log, escaped so that it cannot start a line of its own. */
  const char *m = msg ? msg : event;
  if (escape_msg)
    put_escaped(b, (const uint8_t *)m, strlen(m), false);
  else
    sb_puts(b, m);
  for (const gw_field *f = fields; f && f->type != GW_FT_END; f++) {
    if (f->flags & GW_FF_HIDE) continue;
    if (b->n > start) sb_put(b, " ", 1);
    sb_puts(b, f->key);
    sb_put(b, "=", 1);
    if (f->type == GW_FT_STR && f->p)
      put_text_value(b, f->p, str_len(f), f->flags & GW_FF_QUOTE);
    else if (f->type == GW_FT_STR)
      sb_put(b, "-", 1);
    else
      put_plain_value(b, f);
  }
}

static void stamp(char out[48]) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  size_t sl = strftime(out, 48, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + sl, 48 - sl, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* ---- JSON ------------------------------------------------------------------ */

static json_t *json_bytes(const uint8_t *s, size_t n, bool hex, bool *cut) {
  char mem[256];
  sbuf v;
  sb_init(&v, mem, sizeof mem, SIZE_MAX);
  *cut |= hex ? put_hex(&v, s, n) : put_utf8(&v, s, n, GW_LOG_VALUE_MAX);
  json_t *j = json_stringn(v.p, v.n);
  sb_free(&v);
  return j;
}

static json_t *json_value(const gw_field *f, bool *cut) {
  switch (f->type) {
  case GW_FT_STR: return f->p ? json_bytes(f->p, str_len(f), false, cut) : json_null();
  case GW_FT_HEX: return json_bytes(f->p, f->len, true, cut);
  case GW_FT_I64: return json_integer(f->v.i);
  case GW_FT_U64:
    if (f->v.u <= (uint64_t)INT64_MAX) return json_integer((json_int_t)f->v.u);
    break; /* past json_int_t: a string of the number */
  case GW_FT_F64:
    if (isfinite(f->v.f)) return json_real(f->v.f);
    break;
  case GW_FT_BOOL: return json_boolean(f->v.b);
  }
  char mem[64];
  sbuf v;
  sb_init(&v, mem, sizeof mem, sizeof mem - 1);
  put_plain_value(&v, f);
  return json_stringn(v.p, v.n);
}

/* A field's key as valid UTF-8, renamed with a leading _ where it would
 * overwrite one of the line's own keys. */
static void json_key(const char *key, char out[KEY_MAX + 8]) {
  sbuf k;
  sb_init(&k, out, KEY_MAX + 8, KEY_MAX);
  for (size_t i = 0; i < sizeof reserved_keys / sizeof *reserved_keys; i++)
    if (strcmp(key, reserved_keys[i]) == 0) sb_put(&k, "_", 1);
  const uint8_t *s = (const uint8_t *)key;
  size_t n = strlen(key);
  for (size_t i = 0; i < n;) { /* cut keys stay unmarked: a key is a name */
    size_t len = utf8_seq(s + i, n - i);
    if (k.n + (len ? len : 3) > KEY_MAX) break;
    if (len) sb_put(&k, s + i, len);
    else sb_put(&k, "\xef\xbf\xbd", 3);
    i += len ? len : 1;
  }
}

static int dump_cb(const char *buf, size_t size, void *ud) {
  sbuf *b = ud;
  sb_put(b, buf, size);
  return b->failed ? -1 : 0;
}

static void render_json(sbuf *b, const char *ts, gw_log_level level, const char *event,
                        const char *msg, bool msg_cut, const gw_field *fields) {
  json_t *o = json_object();
  if (!o) return;
  bool cut = msg_cut;
  json_object_set_new(o, "ts", json_string(ts));
  json_object_set_new(o, "level", json_string(gw_log_level_name(level)));
  json_object_set_new(o, "event", json_bytes((const uint8_t *)event, strlen(event), false, &cut));
  if (msg) json_object_set_new(o, "msg", json_bytes((const uint8_t *)msg, strlen(msg), false, &cut));
  for (const gw_field *f = fields; f && f->type != GW_FT_END; f++) {
    char key[KEY_MAX + 8];
    json_key(f->key, key);
    json_object_set_new(o, key, json_value(f, &cut));
  }
  if (cut) json_object_set_new(o, "truncated", json_true());
  json_dump_callback(o, dump_cb, b, JSON_COMPACT | JSON_REAL_PRECISION(15));
  json_decref(o);
}

/* ---- the journal ------------------------------------------------------------- */

/* journald's priorities are syslog's. */
static const char *const priorities[] = {"PRIORITY=7", "PRIORITY=6", "PRIORITY=4", "PRIORITY=3"};

static int journal_send(gw_log_level level, const char *event, const char *msg,
                        const gw_field *fields) {
  size_t nf = 0;
  for (const gw_field *f = fields; f && f->type != GW_FT_END; f++) nf++;
  char mem[4096];
  sbuf a; /* every KEY=value, one after another */
  sb_init(&a, mem, sizeof mem, SIZE_MAX);
  size_t *at = malloc((nf + 3) * sizeof *at);
  struct iovec *iov = malloc((nf + 3) * sizeof *iov);
  int rc = -ENOMEM;
  if (!at || !iov) goto out;

  size_t n = 0;
  at[n++] = a.n;
  sb_puts(&a, "MESSAGE=");
  render_text_body(&a, event, msg, fields, true);
  if (strcmp(event, "log") != 0) {
    at[n++] = a.n;
    sb_puts(&a, "GW_EVENT=");
    put_utf8(&a, (const uint8_t *)event, strlen(event), KEY_MAX);
  }
  for (const gw_field *f = fields; f && f->type != GW_FT_END; f++) {
    if (f->type == GW_FT_STR && !f->p) continue;
    at[n++] = a.n;
    sb_puts(&a, "GW_");
    size_t kl = strnlen(f->key, KEY_MAX);
    for (size_t i = 0; i < kl; i++) {
      char c = f->key[i];
      c = c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
      sb_put(&a, (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ? &c : "_", 1);
    }
    sb_put(&a, "=", 1);
    put_plain_value(&a, f);
  }
  if (a.failed) goto out;
  for (size_t i = 0; i < n; i++)
    iov[i] = (struct iovec){a.p + at[i], (i + 1 < n ? at[i + 1] : a.n) - at[i]};
  iov[n++] = (struct iovec){(void *)priorities[level & 3], strlen(priorities[level & 3])};
  rc = sd_journal_sendv(iov, (int)n);
out:
  free(at);
  free(iov);
  sb_free(&a);
  return rc;
}

/* ---- writing ------------------------------------------------------------------ */

static void emit(gw_log_level level, const char *event, const gw_field *fields, const char *msg,
                 bool msg_cut) {
  if (!g_sink && g_target == GW_LOG_JOURNALD) {
    if (journal_send(level, event, msg, fields) >= 0) return;
    /* The journal went away: this line goes to stderr. */
  }
  char ts[48];
  stamp(ts);
  char mem[4608];
  sbuf line;
  if (g_format == GW_LOG_JSON) {
    sb_init(&line, mem, sizeof mem, SIZE_MAX);
    render_json(&line, ts, level, event, msg, msg_cut, fields);
  } else {
    sb_init(&line, mem, sizeof mem, TEXT_LINE_MAX);
    sb_printf(&line, "%s %-5s ", ts, gw_log_level_name(level));
    render_text_body(&line, event, msg, fields, !(g_sink && g_sink_raw));
    if (line.cut) sb_put_mark(&line);
  }
  if (!line.failed) {
    if (g_sink) {
      g_sink(level, line.p, g_sink_ud);
    } else if (sb_room(&line, 1)) {
      /* One write per line so lines never interleave with another writer's. */
      line.p[line.n++] = '\n';
      fwrite(line.p, 1, line.n, stderr);
      fflush(stderr);
    }
  }
  sb_free(&line);
}

static void logv(gw_log_level level, const char *event, const gw_field *fields, const char *fmt,
                 va_list ap) {
  char msg[GW_LOG_VALUE_MAX + CUT_LEN + 1];
  bool cut = false;
  if (fmt) {
    /* one byte past the limit, to see whether the cut splits a character */
    int n = vsnprintf(msg, GW_LOG_VALUE_MAX + 2, fmt, ap);
    if (n > GW_LOG_VALUE_MAX) { /* cut at a character, and say so */
      size_t end = GW_LOG_VALUE_MAX;
      for (int back = 0; back < 3 && end && ((uint8_t)msg[end] & 0xc0) == 0x80; back++) end--;
      memcpy(msg + end, GW_LOG_CUT_MARK, CUT_LEN + 1);
      cut = true;
    }
  }
  emit(level, event, fields, fmt ? msg : NULL, cut);
}

void gw_log_event(gw_log_level level, const char *event, const gw_field *fields,
                  const char *fmt, ...) {
  if (level < g_level) return;
  va_list ap;
  va_start(ap, fmt);
  logv(level, event, fields, fmt, ap);
  va_end(ap);
}

void gw_log(gw_log_level level, const char *fmt, ...) {
  if (level < g_level) return;
  va_list ap;
  va_start(ap, fmt);
  logv(level, "log", NULL, fmt, ap);
  va_end(ap);
}
