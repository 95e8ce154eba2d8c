/* clock.h: a cheap monotonic clock for timing short spans, such as a
 * frame's handlers (gangway_handler_seconds): the TSC where the CPU says
 * it is invariant (a read costs 9.5 ns on these VMs, against 23 ns for
 * clock_gettime through the vDSO, and gangway reads one per handled
 * frame), else CLOCK_MONOTONIC. Ticks mean nothing across processes; use
 * gw_ticks_ns for spans. */
#ifndef GW_CLOCK_H
#define GW_CLOCK_H

#include <stdbool.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <x86intrin.h>
#endif

/* Chooses the source and calibrates it (about 2 ms the first time, by
 * watching CLOCK_MONOTONIC; longer where clock reads are slow, as under
 * valgrind, up to 200 ms). gw_ticks calls it on first use; call it at
 * start so that no timed span pays for it. */
void gw_clock_init(void);

extern int gw__clock_tsc; /* 1: the TSC, 0: CLOCK_MONOTONIC, -1: not chosen yet */
uint64_t gw__clock_mono_ns(void);

static inline uint64_t gw_ticks(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_expect(gw__clock_tsc == 1, 1)) return __rdtsc();
  if (gw__clock_tsc < 0) {
    gw_clock_init();
    if (gw__clock_tsc == 1) return __rdtsc();
  }
#endif
  return gw__clock_mono_ns();
}

/* A span of ticks in nanoseconds. */
uint64_t gw_ticks_ns(uint64_t ticks);

/* Whether gw_ticks reads the TSC (for the record in logs and benchmarks). */
bool gw_clock_is_tsc(void);

#endif
