/* metrics.h: one registry of counters, gauges and histograms for the
 * process, rendered as Prometheus text (GET /metrics) and as JSON
 * (`gangway stats`), so both read the same numbers.
 *
 * Registration (once, at startup or when a listener or opcode first
 * appears) looks things up and allocates; updates on the hot path do not:
 *
 *   gw_metric *f = gw_metrics_counter(m, "gangway_frames_total",
 *                                     "Frames read, per listener and side.",
 *                                     GW_LABELS("listener", "side"));
 *   uint64_t *slot = gw_metric_slot(f, GW_LABELS("game", "client"));
 *   ...
 *   (*slot)++;                       // per frame: one add, no lock
 *
 * Threads: a registry is written by one thread (the worker's loop) and
 * read by the same thread (the admin endpoint runs on that loop too). A
 * second worker gets a registry of its own, registered with the same code;
 * the app sums them with gw_metrics_merge() into a scratch registry and
 * renders that. Slots are aligned 64-bit words, so a merge run on another
 * thread reads each value whole (use relaxed atomic loads there), and a
 * value may be one update behind, which a scrape tolerates.
 *
 * Cardinality: a family may cap the number of values of one label (the
 * opcode) per combination of the others; values past the cap share the
 * series whose value is "other". */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_metrics gw_metrics;
typedef struct gw_metric gw_metric; /* a family: name, help, type, labels */

typedef enum gw_metric_type {
  GW_METRIC_COUNTER,
  GW_METRIC_GAUGE,
  GW_METRIC_HISTOGRAM,
} gw_metric_type;

#define GW_METRIC_LABELS_MAX 4
#define GW_METRIC_OTHER "other"     /* the value folded series carry */

/* A NULL-terminated list of label names or values. */
#define GW_LABELS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* One histogram series. counts[i] counts observations <= bounds[i] (and
 * above bounds[i-1]); counts[nbounds] those above the last bound. Raw units
 * (microseconds for the handler time); the family's scale turns them into
 * the base unit when rendered. */
typedef struct gw_histogram {
  const uint64_t *bounds;
  size_t nbounds;
  uint64_t sum, count;
  uint64_t counts[];
} gw_histogram;

static inline size_t gw_histogram_bucket(const gw_histogram *h, uint64_t v) {
  size_t i = 0;
  while (i < h->nbounds && v > h->bounds[i]) i++;
  return i;
}

static inline void gw_histogram_observe(gw_histogram *h, uint64_t v) {
  h->counts[gw_histogram_bucket(h, v)]++;
  h->sum += v;
  h->count++;
}

/* n observations that took total together, each unknown: when total is
 * within the first bucket, so is each of them, and the histogram is what n
 * observe calls would have made it. Else they are entered as one
 * observation of total and n - 1 of none: one slow frame among quick ones
 * (the usual outlier) stays in the bucket it belongs to, where equal
 * shares would hide it; frames all slow alike are overstated as one
 * slower. Returns whether it was exact. */
static inline bool gw_histogram_observe_run(gw_histogram *h, uint64_t n, uint64_t total) {
  if (!n) return true;
  h->sum += total;
  h->count += n;
  if (!h->nbounds || total <= h->bounds[0]) {
    h->counts[0] += n;
    return true;
  }
  h->counts[gw_histogram_bucket(h, total)]++;
  h->counts[0] += n - 1;
  return false;
}

gw_metrics *gw_metrics_new(void);
void gw_metrics_free(gw_metrics *m);

/* Register a family. name must match [a-zA-Z_:][a-zA-Z0-9_:]*, each label
 * name [a-zA-Z_][a-zA-Z0-9_]* (not "le", not "__..."), at most
 * GW_METRIC_LABELS_MAX of them; labels may be NULL for none. help is any
 * text (escaped when rendered). Registering a name twice with the same type
 * and labels returns the family already there (help kept); with another
 * type or labels, or a bad name, NULL (a programming error: check it once
 * at startup). A family without labels has its one series from the start,
 * so it renders 0 before its first update. */
gw_metric *gw_metrics_counter(gw_metrics *m, const char *name,
                              const char *help, const char *const *labels);
gw_metric *gw_metrics_gauge(gw_metrics *m, const char *name,
                            const char *help, const char *const *labels);
/* bounds: nbounds ascending upper bounds in raw units (copied); "+Inf" is
 * implicit. */
gw_metric *gw_metrics_histogram(gw_metrics *m, const char *name,
                                const char *help, const char *const *labels,
                                const uint64_t *bounds, size_t nbounds);

/* Values are rendered as raw / scale: e.g. a histogram observed in
 * microseconds with scale 1e6 renders in seconds. Default 1. */
void gw_metric_set_scale(gw_metric *f, double scale);

/* Cap the label `label` at `cap` distinct values per combination of the
 * other labels; a new value past the cap gets the value "other" (which does
 * not count toward the cap). Set before the first series. Returns 0, or
 * -EINVAL if the family has no such label. */
int gw_metric_set_cap(gw_metric *f, const char *label, unsigned cap);

/* The series for these label values (one per label name, NULL-terminated;
 * NULL for a family without labels), created at its first call. Values may
 * be any bytes: invalid UTF-8 is stored as U+FFFD. Returns NULL only when
 * out of memory or the count of values is wrong.
 *   gw_metric_slot: a counter's uint64_t, add to it;
 *   gw_metric_gauge: a gauge's int64_t, set or add to it;
 *   gw_metric_hist: a histogram's series, for gw_histogram_observe. */
uint64_t *gw_metric_slot(gw_metric *f, const char *const *values);
int64_t *gw_metric_gauge(gw_metric *f, const char *const *values);
gw_histogram *gw_metric_hist(gw_metric *f, const char *const *values);

/* Per-opcode counters of one family for one combination of the other
 * labels (e.g. listener "game", side "client"): a small open-addressing
 * table from opcode to slot, so the hot path pays a hash probe, not a
 * label lookup. The family's opcode label must be its last one and capped
 * (gw_metric_set_cap); past the cap every new opcode returns the slot of
 * opcode="other". */
typedef struct gw_opcode_counters gw_opcode_counters;
/* values: the family's labels except the last (the opcode). */
gw_opcode_counters *gw_opcode_counters_new(gw_metric *f,
                                           const char *const *values);
uint64_t *gw_opcode_counters_slot(gw_opcode_counters *t, uint32_t opcode);
void gw_opcode_counters_free(gw_opcode_counters *t);

/* Called at the start of every rendering, in registration order, so that
 * gauges pulled from elsewhere (Lua memory, pool buffers) are fresh.
 * Returns 0 or -ENOMEM. */
typedef void (*gw_metrics_collect_fn)(gw_metrics *m, void *ud);
int gw_metrics_on_collect(gw_metrics *m, gw_metrics_collect_fn fn, void *ud);

/* The process families, refreshed at each rendering:
 *   process_cpu_seconds_total (getrusage user + system),
 *   process_resident_memory_bytes (/proc/self/statm),
 *   process_open_fds (/proc/self/fd), process_max_fds (RLIMIT_NOFILE),
 *   process_start_time_seconds (Unix time of this call),
 *   gangway_uptime_seconds (since this call).
 * Call once at startup. Returns 0 or a negative errno. */
int gw_metrics_add_process(gw_metrics *m);

/* Prometheus text exposition format 0.0.4 (Content-Type
 * GW_METRICS_CONTENT_TYPE), NUL-terminated, malloc'd; *len (may be NULL)
 * gets its length. NULL when out of memory. */
#define GW_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
char *gw_metrics_prometheus(gw_metrics *m, size_t *len);

/* The registry as a JSON object:
 *   {"gangway_frames_total": {"type": "counter", "help": "...",
 *      "series": [{"labels": {"listener": "game", "side": "client"},
 *                  "value": 12}]},
 *    "gangway_handler_seconds": {"type": "histogram", "help": "...",
 *      "series": [{"labels": {...}, "count": 3, "sum": 0.00042,
 *                  "buckets": [{"le": 1e-05, "count": 1}, ...,
 *                              {"le": "+Inf", "count": 3}]}]}}
 * Integers stay integers when the scale is 1; bucket counts are cumulative
 * as in Prometheus. A new reference (json_decref it), NULL when out of
 * memory. */
json_t *gw_metrics_json(gw_metrics *m);

/* Runs src's collect hooks, then adds every series of src into dst
 * (created there as needed, with src's help, scale and caps): counters,
 * gauges and histogram buckets are summed; dst's caps apply, so opcodes
 * seen by different workers may fold into "other". For a registry per
 * worker, summed into a scratch registry before rendering. Returns 0,
 * -EINVAL if a family has another type, labels, buckets or scale in dst, or
 * -ENOMEM (dst then holds part of src). */
int gw_metrics_merge(gw_metrics *dst, gw_metrics *src);

/* ---- gangway's own families ----
 *
 * Registered once by the app (gw_metrics_add_gangway); each listener then
 * takes its slots (gw_listener_counters_init) when it is created, and the
 * worker adds to them on the hot path:
 *   (*lc->bytes[side]) += n;  (*lc->frames[side])++;
 *   (*gw_opcode_counters_slot(lc->passed[side], opcode))++;
 *   gw_histogram_observe(lc->handler_time, us);
 * Arrays [2] are indexed by gw_side (frame.h: 0 client, 1 server). */

/* Why a connection was refused: the label values of
 * gangway_sessions_refused_total{reason}. */
typedef enum gw_refusal {
  GW_REFUSED_MAX_SESSIONS,      /* "max_sessions": limits.max_sessions */
  GW_REFUSED_SESSIONS_PER_IP,   /* "sessions_per_ip" */
  GW_REFUSED_NEW_PER_IP,        /* "new_sessions_per_ip_per_s" */
  GW_REFUSED_SCRIPT,            /* "on_connect": a script's on_connect */
  GW_REFUSED_COUNT
} gw_refusal;
const char *gw_refusal_name(gw_refusal r);

#define GW_OPCODE_CAP 256 /* opcode series per listener and side */

typedef struct gw_gangway_families {
  /* per listener */
  gw_metric *sessions_open;     /* gauge {listener} */
  gw_metric *sessions_total;    /* {listener} */
  gw_metric *sessions_refused;  /* {listener, reason} */
  gw_metric *bytes;             /* {listener, side}: read from that side */
  gw_metric *frames;            /* {listener, side}: cut by the framing */
  gw_metric *passed, *dropped, *replaced, *injected; /* {listener, side, opcode} */
  gw_metric *injected_refused;  /* {listener}: sends past limits.write_max */
  gw_metric *protocol_errors;   /* {listener} */
  gw_metric *handler_errors;    /* {listener} */
  gw_metric *handler_timeouts;  /* {listener} */
  gw_metric *handler_time;      /* histogram {listener}, observed in us */
  /* process-wide, with their slots */
  int64_t *lua_memory;          /* gangway_lua_memory_bytes */
  int64_t *pool_in_use, *pool_free; /* gangway_pool_buffers{state} */
  int64_t *script_generation;   /* gangway_script_generation */
  uint64_t *reloads_ok, *reloads_failed; /* gangway_reloads_total{result} */
} gw_gangway_families;

/* Handler-time buckets, in microseconds. */
extern const uint64_t GW_HANDLER_BUCKETS_US[];
extern const size_t GW_HANDLER_NBUCKETS;

/* Registers every family above, gangway_info{version} and the process
 * families (gw_metrics_add_process). 0 or -ENOMEM. */
int gw_metrics_add_gangway(gw_metrics *m, gw_gangway_families *f);

/* One listener's slots. The series exist from this call on, so /metrics
 * shows a new listener's zeros at once. */
typedef struct gw_listener_counters {
  int64_t *sessions_open;
  uint64_t *sessions_total, *protocol_errors, *handler_errors, *handler_timeouts,
      *injected_refused;
  uint64_t *refused[GW_REFUSED_COUNT];
  uint64_t *bytes[2], *frames[2];
  gw_opcode_counters *passed[2], *dropped[2], *replaced[2], *injected[2];
  gw_histogram *handler_time;
} gw_listener_counters;

/* 0 or -ENOMEM (then nothing to free). A listener removed by a reload
 * keeps its series (counters never go back); gw_listener_counters_free
 * frees only the opcode tables, and a listener of the same name added
 * again continues them. */
int gw_listener_counters_init(gw_listener_counters *lc, const gw_gangway_families *f,
                              const char *listener);
void gw_listener_counters_free(gw_listener_counters *lc);

#endif
