/* log.c: the process's one log, one line per event, text or JSON. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static gw_log_level g_level = GW_LOG_INFO;
static gw_log_format g_format = GW_LOG_TEXT;
static gw_log_sink g_sink;
static void *g_sink_ud;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void gw_log_setup(gw_log_level level, gw_log_format format) {
  g_level = level;
  g_format = format;
}

void gw_log_set_sink(gw_log_sink sink, void *ud) {
  g_sink = sink;
  g_sink_ud = ud;
}

bool gw_log_enabled(gw_log_level level) { return level >= g_level; }

const char *gw_log_level_name(gw_log_level level) {
  return (unsigned)level < 4 ? level_names[level] : "?";
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

/* Writes s into out as the inside of a JSON string. */
static void json_escape(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      out[n++] = '\\';
      out[n++] = (char)c;
    } else if (c == '\n') {
      out[n++] = '\\';
      out[n++] = 'n';
    } else if (c < 0x20) {
      n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
    } else {
      out[n++] = (char)c;
    }
  }
  out[n] = '\0';
}

void gw_log(gw_log_level level, const char *fmt, ...) {
  if (level < g_level) return;
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);

  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char stamp[48];
  size_t sl = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(stamp + sl, sizeof stamp - sl, ".%03ldZ", ts.tv_nsec / 1000000);

  char line[4600];
  int n;
  if (g_format == GW_LOG_JSON) {
    char esc[4400];
    json_escape(esc, sizeof esc, msg);
    n = snprintf(line, sizeof line - 1, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}",
                 stamp, gw_log_level_name(level), esc);
  } else {
    n = snprintf(line, sizeof line - 1, "%s %-5s %s", stamp, gw_log_level_name(level), msg);
  }
  if (n < 0) return;
  if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
  if (g_sink) {
    g_sink(level, line, g_sink_ud);
    return;
  }
  /* One write per line so lines never interleave with another writer's. */
  line[n] = '\n';
  fwrite(line, 1, (size_t)n + 1, stderr);
  fflush(stderr);
}
