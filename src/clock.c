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

#define CALIBRATE_NS 2000000 /* long enough for 0.1 %, short at start */

void gw_clock_init(void) {
  if (gw__clock_tsc >= 0) return;
  gw__clock_tsc = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  /* CPUID 0x80000007 EDX bit 8: the TSC runs at one rate in every
   * power state (Linux's nonstop_tsc); without it, spans could shrink. */
  unsigned a, b, c, d;
  if (!__get_cpuid(0x80000007, &a, &b, &c, &d) || !(d & (1u << 8)) || !kernel_uses_tsc()) return;
  uint64_t m0 = gw__clock_mono_ns(), t0 = __rdtsc(), m1, t1;
  do {
    m1 = gw__clock_mono_ns();
    t1 = __rdtsc();
  } while (m1 - m0 < CALIBRATE_NS);
  if (t1 <= t0) return;
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
