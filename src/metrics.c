/* metrics.c: the registry of counters, gauges and histograms, and its two
 * renderings (Prometheus text 0.0.4 and JSON with jansson). See metrics.h. */
#include "metrics.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct series {
  char *values[GW_METRIC_LABELS_MAX];
  uint64_t counter;             /* GW_METRIC_COUNTER */
  int64_t gauge;                /* GW_METRIC_GAUGE */
  gw_histogram *hist;           /* GW_METRIC_HISTOGRAM */
} series;

struct gw_metric {
  char *name, *help;
  gw_metric_type type;
  size_t nlabels;
  char *labels[GW_METRIC_LABELS_MAX];
  double scale;
  int cap_label;                /* -1: no cap */
  unsigned cap;
  uint64_t *bounds;
  size_t nbounds;
  series **series;
  size_t nseries, capseries;
};

typedef struct collector {
  gw_metrics_collect_fn fn;
  void *ud;
} collector;

typedef struct process_slots {
  uint64_t *cpu_us;
  int64_t *rss, *fds, *max_fds, *start_ms, *uptime_ms;
  uint64_t start_mono_ms;
} process_slots;

struct gw_metrics {
  gw_metric **families;
  size_t nfamilies, capfamilies;
  collector *collectors;
  size_t ncollectors, capcollectors;
  process_slots proc;
};

/* Grows *arr (of elements of size sz) to hold at least n; 0 or -ENOMEM. */
static int grow(void *arr, size_t *cap, size_t n, size_t sz) {
  if (n <= *cap) return 0;
  size_t nc = *cap ? *cap * 2 : 8;
  while (nc < n) nc *= 2;
  void *p = realloc(*(void **)arr, nc * sz);
  if (!p) return -ENOMEM;
  *(void **)arr = p;
  *cap = nc;
  return 0;
}

/* ---- names and values ---- */

static bool valid_name(const char *s, bool colon) {
  if (!s || !*s) return false;
  for (const char *p = s; *p; p++) {
    char c = *p;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (colon && c == ':') || (p != s && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid:
 * no overlong forms, no surrogates, nothing past U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  if (s[0] < 0x80) return 1;
  size_t len;
  uint32_t cp;
  if (s[0] >= 0xC2 && s[0] <= 0xDF) len = 2, cp = s[0] & 0x1F;
  else if (s[0] >= 0xE0 && s[0] <= 0xEF) len = 3, cp = s[0] & 0x0F;
  else if (s[0] >= 0xF0 && s[0] <= 0xF4) len = 4, cp = s[0] & 0x07;
  else return 0;
  if (n < len) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return len;
}

/* A copy of s with every invalid UTF-8 byte replaced by U+FFFD. */
static char *utf8_clean(const char *s) {
  size_t n = strlen(s);
  char *out = malloc(n * 3 + 1);
  if (!out) return NULL;
  const unsigned char *p = (const unsigned char *)s;
  size_t o = 0;
  for (size_t i = 0; i < n;) {
    size_t l = utf8_seq(p + i, n - i);
    if (l) {
      memcpy(out + o, p + i, l);
      o += l, i += l;
    } else {
      memcpy(out + o, "\xEF\xBF\xBD", 3);
      o += 3, i++;
    }
  }
  out[o] = '\0';
  return out;
}

static size_t count_list(const char *const *l) {
  size_t n = 0;
  while (l && l[n]) n++;
  return n;
}

/* ---- registry ---- */

gw_metrics *gw_metrics_new(void) { return calloc(1, sizeof(gw_metrics)); }

static void series_free(series *s, size_t nlabels) {
  for (size_t i = 0; i < nlabels; i++) free(s->values[i]);
  free(s->hist);
  free(s);
}

static void family_free(gw_metric *f) {
  for (size_t i = 0; i < f->nseries; i++) series_free(f->series[i], f->nlabels);
  for (size_t i = 0; i < f->nlabels; i++) free(f->labels[i]);
  free(f->series);
  free(f->bounds);
  free(f->name);
  free(f->help);
  free(f);
}

void gw_metrics_free(gw_metrics *m) {
  if (!m) return;
  for (size_t i = 0; i < m->nfamilies; i++) family_free(m->families[i]);
  free(m->families);
  free(m->collectors);
  free(m);
}

static gw_metric *find_family(const gw_metrics *m, const char *name) {
  for (size_t i = 0; i < m->nfamilies; i++)
    if (strcmp(m->families[i]->name, name) == 0) return m->families[i];
  return NULL;
}

static series *series_new(gw_metric *f, const char *const *values);

static gw_metric *family_add(gw_metrics *m, const char *name, const char *help,
                             gw_metric_type type, const char *const *labels,
                             const uint64_t *bounds, size_t nbounds) {
  size_t nl = count_list(labels);
  if (!valid_name(name, true) || nl > GW_METRIC_LABELS_MAX) return NULL;
  for (size_t i = 0; i < nl; i++) {
    if (!valid_name(labels[i], false) || strncmp(labels[i], "__", 2) == 0 ||
        (type == GW_METRIC_HISTOGRAM && strcmp(labels[i], "le") == 0))
      return NULL;
    for (size_t j = 0; j < i; j++)
      if (strcmp(labels[i], labels[j]) == 0) return NULL;
  }
  for (size_t i = 1; i < nbounds; i++)
    if (bounds[i] <= bounds[i - 1]) return NULL;
  gw_metric *old = find_family(m, name);
  if (old) {
    if (old->type != type || old->nlabels != nl || old->nbounds != nbounds ||
        (nbounds && memcmp(old->bounds, bounds, nbounds * sizeof *bounds) != 0))
      return NULL;
    for (size_t i = 0; i < nl; i++)
      if (strcmp(old->labels[i], labels[i]) != 0) return NULL;
    return old;
  }
  if (grow(&m->families, &m->capfamilies, m->nfamilies + 1, sizeof(gw_metric *)) < 0)
    return NULL;
  gw_metric *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->type = type;
  f->scale = 1;
  f->cap_label = -1;
  f->name = strdup(name);
  f->help = utf8_clean(help ? help : "");
  bool ok = f->name && f->help;
  for (size_t i = 0; ok && i < nl; i++) {
    f->labels[i] = strdup(labels[i]);
    ok = f->labels[i] != NULL;
    f->nlabels = i + 1;
  }
  if (ok && nbounds) {
    f->bounds = malloc(nbounds * sizeof *bounds);
    ok = f->bounds != NULL;
    if (ok) memcpy(f->bounds, bounds, nbounds * sizeof *bounds);
    f->nbounds = nbounds;
  }
  /* the one series of a family without labels exists from the start */
  if (ok && nl == 0) ok = series_new(f, NULL) != NULL;
  if (!ok) {
    family_free(f);
    return NULL;
  }
  m->families[m->nfamilies++] = f;
  return f;
}

gw_metric *gw_metrics_counter(gw_metrics *m, const char *name,
                              const char *help, const char *const *labels) {
  return family_add(m, name, help, GW_METRIC_COUNTER, labels, NULL, 0);
}

gw_metric *gw_metrics_gauge(gw_metrics *m, const char *name,
                            const char *help, const char *const *labels) {
  return family_add(m, name, help, GW_METRIC_GAUGE, labels, NULL, 0);
}

gw_metric *gw_metrics_histogram(gw_metrics *m, const char *name,
                                const char *help, const char *const *labels,
                                const uint64_t *bounds, size_t nbounds) {
  return family_add(m, name, help, GW_METRIC_HISTOGRAM, labels, bounds, nbounds);
}

void gw_metric_set_scale(gw_metric *f, double scale) {
  if (scale > 0) f->scale = scale;
}

int gw_metric_set_cap(gw_metric *f, const char *label, unsigned cap) {
  for (size_t i = 0; i < f->nlabels; i++) {
    if (strcmp(f->labels[i], label) == 0) {
      f->cap_label = (int)i;
      f->cap = cap;
      return 0;
    }
  }
  return -EINVAL;
}

/* ---- series ---- */

static series *series_find(const gw_metric *f, const char *const *values) {
  for (size_t i = 0; i < f->nseries; i++) {
    series *s = f->series[i];
    size_t j = 0;
    while (j < f->nlabels && strcmp(s->values[j], values[j]) == 0) j++;
    if (j == f->nlabels) return s;
  }
  return NULL;
}

/* Distinct values of the capped label among series whose other labels
 * equal values (each series is one distinct value). */
static unsigned capped_values(const gw_metric *f, const char *const *values) {
  unsigned n = 0;
  for (size_t i = 0; i < f->nseries; i++) {
    series *s = f->series[i];
    size_t j = 0;
    while (j < f->nlabels &&
           ((int)j == f->cap_label || strcmp(s->values[j], values[j]) == 0))
      j++;
    if (j == f->nlabels && strcmp(s->values[f->cap_label], GW_METRIC_OTHER) != 0)
      n++;
  }
  return n;
}

static series *series_new(gw_metric *f, const char *const *values) {
  if (grow(&f->series, &f->capseries, f->nseries + 1, sizeof(series *)) < 0)
    return NULL;
  series *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  for (size_t i = 0; i < f->nlabels; i++) {
    s->values[i] = strdup(values[i]);
    if (!s->values[i]) {
      series_free(s, i);
      return NULL;
    }
  }
  if (f->type == GW_METRIC_HISTOGRAM) {
    s->hist = calloc(1, sizeof *s->hist + (f->nbounds + 1) * sizeof(uint64_t));
    if (!s->hist) {
      series_free(s, f->nlabels);
      return NULL;
    }
    s->hist->bounds = f->bounds;
    s->hist->nbounds = f->nbounds;
  }
  f->series[f->nseries++] = s;
  return s;
}

/* Find or create the series, with values cleaned to UTF-8 and the capped
 * label folded into "other" past its cap. */
static series *series_get(gw_metric *f, const char *const *values) {
  if (count_list(values) != f->nlabels) return NULL;
  if (f->nlabels == 0) return f->series[0];
  char *clean[GW_METRIC_LABELS_MAX] = {0};
  const char *v[GW_METRIC_LABELS_MAX + 1] = {0};
  series *s = NULL;
  for (size_t i = 0; i < f->nlabels; i++) {
    clean[i] = utf8_clean(values[i]);
    if (!clean[i]) goto out;
    v[i] = clean[i];
  }
  s = series_find(f, v);
  if (!s && f->cap_label >= 0 && capped_values(f, v) >= f->cap) {
    v[f->cap_label] = GW_METRIC_OTHER;
    s = series_find(f, v);
  }
  if (!s) s = series_new(f, v);
out:
  for (size_t i = 0; i < f->nlabels; i++) free(clean[i]);
  return s;
}

uint64_t *gw_metric_slot(gw_metric *f, const char *const *values) {
  if (f->type != GW_METRIC_COUNTER) return NULL;
  series *s = series_get(f, values);
  return s ? &s->counter : NULL;
}

int64_t *gw_metric_gauge(gw_metric *f, const char *const *values) {
  if (f->type != GW_METRIC_GAUGE) return NULL;
  series *s = series_get(f, values);
  return s ? &s->gauge : NULL;
}

gw_histogram *gw_metric_hist(gw_metric *f, const char *const *values) {
  if (f->type != GW_METRIC_HISTOGRAM) return NULL;
  series *s = series_get(f, values);
  return s ? s->hist : NULL;
}

/* ---- per-opcode counters ---- */

typedef struct opcode_entry {
  uint32_t opcode;
  uint64_t *slot;               /* NULL: empty */
} opcode_entry;

struct gw_opcode_counters {
  gw_metric *f;
  char *values[GW_METRIC_LABELS_MAX];
  size_t nvalues;
  opcode_entry *table;
  uint32_t mask;
  unsigned used;
  uint64_t *other;
};

void gw_opcode_counters_free(gw_opcode_counters *t) {
  if (!t) return;
  for (size_t i = 0; i < t->nvalues; i++) free(t->values[i]);
  free(t->table);
  free(t);
}

gw_opcode_counters *gw_opcode_counters_new(gw_metric *f,
                                           const char *const *values) {
  size_t nv = count_list(values);
  if (f->type != GW_METRIC_COUNTER || f->nlabels == 0 ||
      f->cap_label != (int)f->nlabels - 1 || nv != f->nlabels - 1)
    return NULL;
  gw_opcode_counters *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->f = f;
  uint32_t size = 8;
  while (size < 2u * f->cap && size < (1u << 30)) size *= 2; /* load <= 1/2 */
  t->mask = size - 1;
  t->table = calloc(size, sizeof *t->table);
  bool ok = t->table != NULL;
  for (size_t i = 0; ok && i < nv; i++) {
    t->values[i] = strdup(values[i]);
    ok = t->values[i] != NULL;
    t->nvalues = i + 1;
  }
  if (!ok) {
    gw_opcode_counters_free(t);
    return NULL;
  }
  return t;
}

static uint64_t *opcode_series(gw_opcode_counters *t, const char *opcode) {
  const char *v[GW_METRIC_LABELS_MAX + 1] = {0};
  for (size_t i = 0; i < t->nvalues; i++) v[i] = t->values[i];
  v[t->nvalues] = opcode;
  return gw_metric_slot(t->f, v);
}

uint64_t *gw_opcode_counters_slot(gw_opcode_counters *t, uint32_t opcode) {
  uint32_t i = (opcode * 2654435761u) & t->mask;
  for (; t->table[i].slot; i = (i + 1) & t->mask)
    if (t->table[i].opcode == opcode) return t->table[i].slot;
  if (t->used < t->f->cap) {
    char buf[16];
    snprintf(buf, sizeof buf, "%" PRIu32, opcode);
    uint64_t *slot = opcode_series(t, buf);
    if (slot) {
      t->table[i].opcode = opcode;
      t->table[i].slot = slot;
      t->used++;
    }
    return slot;
  }
  /* past the cap: not cached, so the table stays bounded */
  if (!t->other) t->other = opcode_series(t, GW_METRIC_OTHER);
  return t->other;
}

/* ---- collection ---- */

int gw_metrics_on_collect(gw_metrics *m, gw_metrics_collect_fn fn, void *ud) {
  if (grow(&m->collectors, &m->capcollectors, m->ncollectors + 1, sizeof(collector)) < 0)
    return -ENOMEM;
  m->collectors[m->ncollectors++] = (collector){fn, ud};
  return 0;
}

static void collect(gw_metrics *m) {
  for (size_t i = 0; i < m->ncollectors; i++)
    m->collectors[i].fn(m, m->collectors[i].ud);
}

static uint64_t clock_ms(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Entries of /proc/self/fd but the directory's own; -1 if it cannot be
 * opened (at the open-files limit, for one). */
static int64_t count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  int64_t n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1;
}

static void collect_process(gw_metrics *m, void *ud) {
  (void)ud;
  process_slots *p = &m->proc;
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) == 0)
    *p->cpu_us = (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
                 (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  FILE *fp = fopen("/proc/self/statm", "r");
  if (fp) {
    unsigned long size, resident;
    if (fscanf(fp, "%lu %lu", &size, &resident) == 2)
      *p->rss = (int64_t)resident * sysconf(_SC_PAGESIZE);
    fclose(fp);
  }
  int64_t fds = count_fds();
  if (fds >= 0) *p->fds = fds; /* at the limit: the last count stays */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
    *p->max_fds = rl.rlim_cur == RLIM_INFINITY ? INT64_MAX : (int64_t)rl.rlim_cur;
  *p->uptime_ms = (int64_t)(clock_ms(CLOCK_MONOTONIC) - p->start_mono_ms);
}

int gw_metrics_add_process(gw_metrics *m) {
  process_slots *p = &m->proc;
  const struct {
    const char *name, *help;
    double scale;
    int64_t **gauge;            /* NULL: the CPU counter */
  } fams[] = {
      {"process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", 1e6, NULL},
      {"process_resident_memory_bytes", "Resident memory size in bytes.", 1, &p->rss},
      {"process_open_fds", "Number of open file descriptors.", 1, &p->fds},
      {"process_max_fds", "Maximum number of open file descriptors.", 1, &p->max_fds},
      {"process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
       1e3, &p->start_ms},
      {"gangway_uptime_seconds", "Seconds since gangway started.", 1e3, &p->uptime_ms},
  };
  for (size_t i = 0; i < sizeof fams / sizeof fams[0]; i++) {
    gw_metric *f = fams[i].gauge ? gw_metrics_gauge(m, fams[i].name, fams[i].help, NULL)
                                 : gw_metrics_counter(m, fams[i].name, fams[i].help, NULL);
    if (!f) return -ENOMEM;
    gw_metric_set_scale(f, fams[i].scale);
    if (fams[i].gauge) *fams[i].gauge = gw_metric_gauge(f, NULL);
    else p->cpu_us = gw_metric_slot(f, NULL);
  }
  p->start_mono_ms = clock_ms(CLOCK_MONOTONIC);
  *p->start_ms = (int64_t)clock_ms(CLOCK_REALTIME);
  return gw_metrics_on_collect(m, collect_process, NULL);
}

/* ---- Prometheus text ---- */

typedef struct buf {
  char *p;
  size_t len, cap;
  bool oom;
} buf;

static void buf_add(buf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (grow(&b->p, &b->cap, b->len + n + 1, 1) < 0) {
    b->oom = true;
    return;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void buf_str(buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_fmt(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_fmt(buf *b, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Backslash and newline always, the double quote in label values. */
static void buf_escaped(buf *b, const char *s, bool quote) {
  for (; *s; s++) {
    if (*s == '\\') buf_add(b, "\\\\", 2);
    else if (*s == '\n') buf_add(b, "\\n", 2);
    else if (quote && *s == '"') buf_add(b, "\\\"", 2);
    else buf_add(b, s, 1);
  }
}

/* The shortest text that reads back as the same double. */
static void fmt_double(char *out, size_t n, double v) {
  if (isinf(v)) {
    snprintf(out, n, v > 0 ? "+Inf" : "-Inf");
    return;
  }
  if (isnan(v)) {
    snprintf(out, n, "NaN");
    return;
  }
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(out, n, "%.*g", prec, v);
    if (strtod(out, NULL) == v) return;
  }
}

static void buf_scaled(buf *b, double v, double scale) {
  char tmp[32];
  fmt_double(tmp, sizeof tmp, v / scale);
  buf_str(b, tmp);
}

static void buf_value_u(buf *b, uint64_t v, double scale) {
  if (scale == 1) buf_fmt(b, "%" PRIu64, v);
  else buf_scaled(b, (double)v, scale);
}

/* name{a="x",b="y"(,le="...")}, braces left out when there is no label. */
static void buf_series_name(buf *b, const gw_metric *f, const series *s,
                            const char *suffix, const char *le) {
  buf_str(b, f->name);
  buf_str(b, suffix);
  if (f->nlabels == 0 && !le) return;
  buf_str(b, "{");
  for (size_t i = 0; i < f->nlabels; i++) {
    if (i) buf_str(b, ",");
    buf_str(b, f->labels[i]);
    buf_str(b, "=\"");
    buf_escaped(b, s->values[i], true);
    buf_str(b, "\"");
  }
  if (le) {
    if (f->nlabels) buf_str(b, ",");
    buf_str(b, "le=\"");
    buf_str(b, le);
    buf_str(b, "\"");
  }
  buf_str(b, "}");
}

static const char *type_name(gw_metric_type t) {
  return t == GW_METRIC_COUNTER ? "counter" : t == GW_METRIC_GAUGE ? "gauge" : "histogram";
}

static void render_histogram(buf *b, const gw_metric *f, const series *s) {
  const gw_histogram *h = s->hist;
  uint64_t cum = 0;
  char le[32];
  for (size_t i = 0; i <= f->nbounds; i++) {
    cum += h->counts[i];
    if (i < f->nbounds) fmt_double(le, sizeof le, (double)f->bounds[i] / f->scale);
    else snprintf(le, sizeof le, "+Inf");
    buf_series_name(b, f, s, "_bucket", le);
    buf_fmt(b, " %" PRIu64 "\n", cum);
  }
  buf_series_name(b, f, s, "_sum", NULL);
  buf_str(b, " ");
  buf_value_u(b, h->sum, f->scale);
  buf_str(b, "\n");
  buf_series_name(b, f, s, "_count", NULL);
  buf_fmt(b, " %" PRIu64 "\n", h->count);
}

char *gw_metrics_prometheus(gw_metrics *m, size_t *len) {
  collect(m);
  buf b = {0};
  buf_add(&b, "", 0); /* an empty registry still renders "" */
  for (size_t i = 0; i < m->nfamilies; i++) {
    const gw_metric *f = m->families[i];
    buf_str(&b, "# HELP ");
    buf_str(&b, f->name);
    buf_str(&b, " ");
    buf_escaped(&b, f->help, false);
    buf_str(&b, "\n# TYPE ");
    buf_str(&b, f->name);
    buf_str(&b, " ");
    buf_str(&b, type_name(f->type));
    buf_str(&b, "\n");
    for (size_t j = 0; j < f->nseries; j++) {
      const series *s = f->series[j];
      if (f->type == GW_METRIC_HISTOGRAM) {
        render_histogram(&b, f, s);
        continue;
      }
      buf_series_name(&b, f, s, "", NULL);
      buf_str(&b, " ");
      if (f->type == GW_METRIC_COUNTER) buf_value_u(&b, s->counter, f->scale);
      else if (f->scale == 1) buf_fmt(&b, "%" PRId64, s->gauge);
      else buf_scaled(&b, (double)s->gauge, f->scale);
      buf_str(&b, "\n");
    }
  }
  if (b.oom) {
    free(b.p);
    return NULL;
  }
  if (len) *len = b.len;
  return b.p;
}

/* ---- JSON ---- */

static json_t *json_u(uint64_t v, double scale) {
  return scale == 1 ? json_integer((json_int_t)v) : json_real((double)v / scale);
}

static json_t *series_json(const gw_metric *f, const series *s) {
  json_t *o = json_object(), *labels = json_object();
  json_object_set_new(o, "labels", labels);
  for (size_t i = 0; i < f->nlabels; i++)
    json_object_set_new(labels, f->labels[i], json_string(s->values[i]));
  if (f->type == GW_METRIC_COUNTER) {
    json_object_set_new(o, "value", json_u(s->counter, f->scale));
  } else if (f->type == GW_METRIC_GAUGE) {
    json_object_set_new(o, "value", f->scale == 1 ? json_integer(s->gauge)
                                                  : json_real((double)s->gauge / f->scale));
  } else {
    const gw_histogram *h = s->hist;
    json_object_set_new(o, "count", json_integer((json_int_t)h->count));
    json_object_set_new(o, "sum", json_u(h->sum, f->scale));
    json_t *bk = json_array();
    json_object_set_new(o, "buckets", bk);
    uint64_t cum = 0;
    for (size_t i = 0; i <= f->nbounds; i++) {
      cum += h->counts[i];
      json_t *e = json_object();
      json_object_set_new(e, "le", i < f->nbounds ? json_real((double)f->bounds[i] / f->scale)
                                                  : json_string("+Inf"));
      json_object_set_new(e, "count", json_integer((json_int_t)cum));
      json_array_append_new(bk, e);
    }
  }
  return o;
}

/* jansson's setters ignore NULL values and fail quietly when out of
 * memory, so a full tree is checked once at the end by counting. */
json_t *gw_metrics_json(gw_metrics *m) {
  collect(m);
  json_t *root = json_object();
  if (!root) return NULL;
  size_t want = 0;
  for (size_t i = 0; i < m->nfamilies; i++) {
    const gw_metric *f = m->families[i];
    json_t *fam = json_object(), *arr = json_array();
    json_object_set_new(fam, "type", json_string(type_name(f->type)));
    json_object_set_new(fam, "help", json_string(f->help));
    for (size_t j = 0; j < f->nseries; j++)
      json_array_append_new(arr, series_json(f, f->series[j]));
    bool whole = json_array_size(arr) == f->nseries;
    json_object_set_new(fam, "series", arr);
    if (whole && json_object_size(fam) == 3) json_object_set_new(root, f->name, fam);
    else json_decref(fam);
    want++;
  }
  if (json_object_size(root) != want) {
    json_decref(root);
    return NULL;
  }
  return root;
}

/* ---- merging registries ---- */

int gw_metrics_merge(gw_metrics *dst, gw_metrics *src) {
  collect(src);
  for (size_t i = 0; i < src->nfamilies; i++) {
    const gw_metric *sf = src->families[i];
    const char *labels[GW_METRIC_LABELS_MAX + 1] = {0};
    for (size_t j = 0; j < sf->nlabels; j++) labels[j] = sf->labels[j];
    bool existed = find_family(dst, sf->name) != NULL;
    gw_metric *df = family_add(dst, sf->name, sf->help, sf->type, labels,
                               sf->bounds, sf->nbounds);
    if (!df) return existed ? -EINVAL : -ENOMEM;
    if (!existed) {
      df->scale = sf->scale;
      df->cap_label = sf->cap_label;
      df->cap = sf->cap;
    } else if (df->scale != sf->scale) {
      return -EINVAL;
    }
    for (size_t j = 0; j < sf->nseries; j++) {
      const series *ss = sf->series[j];
      const char *values[GW_METRIC_LABELS_MAX + 1] = {0};
      for (size_t k = 0; k < sf->nlabels; k++) values[k] = ss->values[k];
      series *ds = series_get(df, sf->nlabels ? values : NULL);
      if (!ds) return -ENOMEM;
      ds->counter += ss->counter;
      ds->gauge += ss->gauge;
      if (ss->hist) {
        for (size_t k = 0; k <= sf->nbounds; k++) ds->hist->counts[k] += ss->hist->counts[k];
        ds->hist->sum += ss->hist->sum;
        ds->hist->count += ss->hist->count;
      }
    }
  }
  return 0;
}

/* ---- gangway's own families ---- */

const uint64_t GW_HANDLER_BUCKETS_US[] = {10,   25,    50,    100,   250,    500,   1000,
                                          2500, 5000, 10000, 25000, 100000, 1000000};
const size_t GW_HANDLER_NBUCKETS = sizeof GW_HANDLER_BUCKETS_US / sizeof GW_HANDLER_BUCKETS_US[0];

static const char *const REFUSALS[GW_REFUSED_COUNT] = {
    "max_sessions", "sessions_per_ip", "new_sessions_per_ip_per_s", "on_connect"};

const char *gw_refusal_name(gw_refusal r) {
  return (unsigned)r < GW_REFUSED_COUNT ? REFUSALS[r] : "unknown";
}

static const char *const SIDES[2] = {"client", "server"};

int gw_metrics_add_gangway(gw_metrics *m, gw_gangway_families *f) {
  memset(f, 0, sizeof *f);
  const char *const *L = GW_LABELS("listener");
  const char *const *LS = GW_LABELS("listener", "side");
  const char *const *LSO = GW_LABELS("listener", "side", "opcode");
  gw_metric *lua, *pool, *gen, *reloads, *info;
  enum { C = GW_METRIC_COUNTER, G = GW_METRIC_GAUGE, H = GW_METRIC_HISTOGRAM };
  const struct {
    gw_metric **dst;
    int type;
    const char *name, *help;
    const char *const *labels;
  } defs[] = {
      {&f->sessions_open, G, "gangway_sessions_open", "Sessions open now.", L},
      {&f->sessions_total, C, "gangway_sessions_total",
       "Sessions accepted (refused ones included).", L},
      {&f->sessions_refused, C, "gangway_sessions_refused_total",
       "Connections refused, per reason.", GW_LABELS("listener", "reason")},
      {&f->bytes, C, "gangway_bytes_total", "Bytes read from each side.", LS},
      {&f->frames, C, "gangway_frames_total",
       "Frames cut from each side's bytes (framed listeners).", LS},
      {&f->passed, C, "gangway_frames_passed_total",
       "Frames a handler saw and let pass unchanged, per opcode.", LSO},
      {&f->dropped, C, "gangway_frames_dropped_total", "Frames a handler dropped, per opcode.", LSO},
      {&f->replaced, C, "gangway_frames_replaced_total",
       "Frames a handler replaced, per opcode.", LSO},
      {&f->injected, C, "gangway_frames_injected_total",
       "Frames scripts sent toward a side, per opcode.", LSO},
      {&f->injected_refused, C, "gangway_frames_injected_refused_total",
       "Frames scripts sent that were refused (past limits.write_max).", L},
      {&f->protocol_errors, C, "gangway_protocol_errors_total",
       "Sessions closed for bytes the framing could not cut.", L},
      {&f->handler_errors, C, "gangway_handler_errors_total", "Handler calls that raised an error.", L},
      {&f->handler_timeouts, C, "gangway_handler_timeouts_total",
       "Handler calls stopped at their instruction or time limit.", L},
      {&f->handler_time, H, "gangway_handler_seconds", "Time spent in handler calls.", L},
      {&lua, G, "gangway_lua_memory_bytes", "Memory of the script state.", NULL},
      {&pool, G, "gangway_pool_buffers", "Read buffers of the pool, in use or free.",
       GW_LABELS("state")},
      {&gen, G, "gangway_script_generation",
       "Generation of the scripts in use (1 at start, +1 per reload that succeeded).", NULL},
      {&reloads, C, "gangway_reloads_total", "Reloads of the configuration and scripts, per result.",
       GW_LABELS("result")},
      {&info, G, "gangway_info", "The gangway version (value 1).", GW_LABELS("version")},
  };
  for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
    bool hist = defs[i].type == H;
    *defs[i].dst = family_add(m, defs[i].name, defs[i].help, (gw_metric_type)defs[i].type,
                              defs[i].labels, hist ? GW_HANDLER_BUCKETS_US : NULL,
                              hist ? GW_HANDLER_NBUCKETS : 0);
    if (!*defs[i].dst) return -ENOMEM;
  }
  gw_metric_set_scale(f->handler_time, 1e6);
  gw_metric *ops[] = {f->passed, f->dropped, f->replaced, f->injected};
  for (size_t i = 0; i < 4; i++) gw_metric_set_cap(ops[i], "opcode", GW_OPCODE_CAP);
  f->lua_memory = gw_metric_gauge(lua, NULL);
  f->pool_in_use = gw_metric_gauge(pool, GW_LABELS("in_use"));
  f->pool_free = gw_metric_gauge(pool, GW_LABELS("free"));
  f->script_generation = gw_metric_gauge(gen, NULL);
  f->reloads_ok = gw_metric_slot(reloads, GW_LABELS("ok"));
  f->reloads_failed = gw_metric_slot(reloads, GW_LABELS("failed"));
#ifdef GW_VERSION
  int64_t *v = gw_metric_gauge(info, GW_LABELS(GW_VERSION));
#else
  int64_t *v = gw_metric_gauge(info, GW_LABELS("unknown"));
#endif
  if (!f->lua_memory || !f->pool_in_use || !f->pool_free || !f->script_generation ||
      !f->reloads_ok || !f->reloads_failed || !v)
    return -ENOMEM;
  *v = 1;
  return gw_metrics_add_process(m);
}

void gw_listener_counters_free(gw_listener_counters *lc) {
  for (int side = 0; side < 2; side++) {
    gw_opcode_counters_free(lc->passed[side]);
    gw_opcode_counters_free(lc->dropped[side]);
    gw_opcode_counters_free(lc->replaced[side]);
    gw_opcode_counters_free(lc->injected[side]);
  }
  memset(lc, 0, sizeof *lc);
}

int gw_listener_counters_init(gw_listener_counters *lc, const gw_gangway_families *f,
                              const char *listener) {
  memset(lc, 0, sizeof *lc);
  const char *const *L = GW_LABELS(listener);
  lc->sessions_open = gw_metric_gauge(f->sessions_open, L);
  lc->sessions_total = gw_metric_slot(f->sessions_total, L);
  lc->protocol_errors = gw_metric_slot(f->protocol_errors, L);
  lc->handler_errors = gw_metric_slot(f->handler_errors, L);
  lc->handler_timeouts = gw_metric_slot(f->handler_timeouts, L);
  lc->injected_refused = gw_metric_slot(f->injected_refused, L);
  lc->handler_time = gw_metric_hist(f->handler_time, L);
  bool ok = lc->sessions_open && lc->sessions_total && lc->protocol_errors &&
            lc->handler_errors && lc->handler_timeouts && lc->injected_refused &&
            lc->handler_time;
  for (int r = 0; ok && r < GW_REFUSED_COUNT; r++)
    ok = (lc->refused[r] = gw_metric_slot(f->sessions_refused,
                                          GW_LABELS(listener, REFUSALS[r]))) != NULL;
  for (int side = 0; ok && side < 2; side++) {
    const char *const *LS = GW_LABELS(listener, SIDES[side]);
    lc->bytes[side] = gw_metric_slot(f->bytes, LS);
    lc->frames[side] = gw_metric_slot(f->frames, LS);
    lc->passed[side] = gw_opcode_counters_new(f->passed, LS);
    lc->dropped[side] = gw_opcode_counters_new(f->dropped, LS);
    lc->replaced[side] = gw_opcode_counters_new(f->replaced, LS);
    lc->injected[side] = gw_opcode_counters_new(f->injected, LS);
    ok = lc->bytes[side] && lc->frames[side] && lc->passed[side] && lc->dropped[side] &&
         lc->replaced[side] && lc->injected[side];
  }
  if (!ok) {
    gw_listener_counters_free(lc);
    return -ENOMEM;
  }
  return 0;
}
