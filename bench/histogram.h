/* histogram.h: a log-linear latency histogram, in the manner of HdrHistogram.
 *
 * Values (nanoseconds) below 256 are counted exactly; above, each power of
 * two is split into 128 equal buckets, so any value is known to within
 * 1/128 (0.8%) whatever its size, in a fixed 42 KiB and O(1) per record.
 * Percentiles report a bucket's highest value, never less than the truth. */
#ifndef GW_BENCH_HISTOGRAM_H
#define GW_BENCH_HISTOGRAM_H

#include <stdint.h>
#include <string.h>

#define GW_HIST_SUB_BITS 8                          /* 256 exact values */
#define GW_HIST_SUB (1u << GW_HIST_SUB_BITS)
#define GW_HIST_HALF (GW_HIST_SUB / 2)
#define GW_HIST_MAX_MSB 47                          /* 2^48 ns: 3 days */
#define GW_HIST_BUCKETS \
  (GW_HIST_SUB + (GW_HIST_MAX_MSB - GW_HIST_SUB_BITS + 1) * GW_HIST_HALF)

typedef struct gw_hist {
  uint64_t total, max;
  uint64_t counts[GW_HIST_BUCKETS];
} gw_hist;

static inline void gw_hist_init(gw_hist *h) { memset(h, 0, sizeof *h); }

static inline unsigned gw_hist_index(uint64_t v) {
  if (v < GW_HIST_SUB) return (unsigned)v;
  unsigned msb = 63u - (unsigned)__builtin_clzll(v);
  if (msb > GW_HIST_MAX_MSB) return GW_HIST_BUCKETS - 1;
  unsigned top = (unsigned)(v >> (msb - (GW_HIST_SUB_BITS - 1))); /* 128..255 */
  return GW_HIST_SUB + (msb - GW_HIST_SUB_BITS) * GW_HIST_HALF + (top - GW_HIST_HALF);
}

/* The highest value that falls into bucket i. */
static inline uint64_t gw_hist_bucket_high(unsigned i) {
  if (i < GW_HIST_SUB) return i;
  unsigned k = i - GW_HIST_SUB;
  unsigned msb = k / GW_HIST_HALF + GW_HIST_SUB_BITS;
  uint64_t top = GW_HIST_HALF + k % GW_HIST_HALF;
  unsigned shift = msb - (GW_HIST_SUB_BITS - 1);
  return ((top + 1) << shift) - 1;
}

static inline void gw_hist_record(gw_hist *h, uint64_t v) {
  h->counts[gw_hist_index(v)]++;
  h->total++;
  if (v > h->max) h->max = v;
}

/* The value below which pct percent of the records fall (0 if empty). */
static inline double gw_hist_percentile(const gw_hist *h, double pct) {
  if (h->total == 0) return 0;
  uint64_t want = (uint64_t)(pct / 100.0 * (double)h->total + 0.999999);
  if (want == 0) want = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < GW_HIST_BUCKETS; i++) {
    seen += h->counts[i];
    if (seen >= want) {
      uint64_t hi = gw_hist_bucket_high(i);
      return (double)(hi < h->max ? hi : h->max);
    }
  }
  return (double)h->max;
}

#endif
