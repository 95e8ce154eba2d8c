/* clock.c: see clock.h. */
#include "clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

int gw__clock_tsc = -1;
static uint64_t ns_per_tick_q32; /* nanoseconds per TSC tick, 32.32 fixed point */

uint64_t gw__clock_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Where the kernel does not keep time with the TSC (it found it unstable,
 * or a VM's host says so), neither does gangway. */
static bool kernel_uses_tsc(void) {
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
  if (!f) return false;
  char name[32] = "";
  bool tsc = fgets(name, sizeof name, f) && !strcmp(name, "tsc\n");
  fclose(f);
  return tsc;
}

#define CALIBRATE_NS 2000000      /* at least: short at start */
#define CALIBRATE_MAX_NS 200000000 /* at most */

#if defined(__x86_64__) && defined(__GNUC__)
/* The TSC and a monotonic reading at the same moment: the TSC read
 * between two clock reads, their midpoint; the tightest of a few tries.
 * Returns how far apart the two clock reads were (ns): a slow
 * clock_gettime (under valgrind, a system call) or a preemption widens it. */
static uint64_t paired_read(uint64_t *mono, uint64_t *tsc) {
  uint64_t best = UINT64_MAX;
  for (int i = 0; i < 5; i++) {
    uint64_t a = gw__clock_mono_ns(), t = __rdtsc(), b = gw__clock_mono_ns();
    if (b - a < best) {
      best = b - a;
      *mono = a + (b - a) / 2;
      *tsc = t;
    }
  }
  return best;
}
#endif

void gw_clock_init(void) {
  if (gw__clock_tsc >= 0) return;
  gw__clock_tsc = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  /* CPUID 0x80000007 EDX bit 8: the TSC runs at one rate in every
   * power state (Linux's nonstop_tsc); without it, spans could shrink. */
  unsigned a, b, c, d;
  if (!__get_cpuid(0x80000007, &a, &b, &c, &d) || !(d & (1u << 8)) || !kernel_uses_tsc()) return;
  uint64_t m0 = 0, t0 = 0, m1 = 0, t1 = 0;
  uint64_t err = paired_read(&m0, &t0);
  /* Long enough that both ends' uncertainty is 0.1 % of the span. */
  for (;;) {
    uint64_t now = gw__clock_mono_ns();
    uint64_t want = 1000 * 2 * err;
    if (want < CALIBRATE_NS) want = CALIBRATE_NS;
    if (now - m0 >= want || now - m0 >= CALIBRATE_MAX_NS) {
      uint64_t err1 = paired_read(&m1, &t1);
      if (err1 > err) err = err1;
      if (m1 - m0 >= 1000 * 2 * err || m1 - m0 >= CALIBRATE_MAX_NS) break;
    }
  }
  if (t1 <= t0 || m1 <= m0) return;
  ns_per_tick_q32 = (uint64_t)(((unsigned __int128)(m1 - m0) << 32) / (t1 - t0));
  if (ns_per_tick_q32) gw__clock_tsc = 1;
#endif
}

uint64_t gw_ticks_ns(uint64_t ticks) {
  if (gw__clock_tsc != 1) return ticks;
#if defined(__x86_64__) && defined(__GNUC__)
  return (uint64_t)(((unsigned __int128)ticks * ns_per_tick_q32) >> 32);
#else
  return ticks;
#endif
}

bool gw_clock_is_tsc(void) {
  gw_clock_init();
  return gw__clock_tsc == 1;
}
