/* test_clock.c: unit tests for src/clock.c: ticks never go back, and a
 * span in ticks converts to what CLOCK_MONOTONIC saw over the same span
 * (the handler-time histogram's numbers), whichever source was chosen. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include <cmocka.h>

#include "clock.h"

static void test_never_goes_back(void **state) {
  (void)state;
  uint64_t last = gw_ticks();
  for (int i = 0; i < 100000; i++) {
    uint64_t t = gw_ticks();
    assert_true(t >= last);
    last = t;
  }
}

/* Busy spans of 5, 20 and 50 ms: the ticks' nanoseconds agree with the
 * monotonic clock's to 1 % (both read side by side at each end). */
static void test_spans_convert(void **state) {
  (void)state;
  printf("  clock source: %s\n", gw_clock_is_tsc() ? "TSC" : "CLOCK_MONOTONIC");
  const uint64_t spans_ms[] = {5, 20, 50};
  /* Both reads run once before: under valgrind a first run of code is
   * translated, which would fall between the two reads of one end. */
  for (int i = 0; i < 1000; i++) (void)gw__clock_mono_ns(), (void)gw_ticks();
  for (size_t i = 0; i < sizeof spans_ms / sizeof spans_ms[0]; i++) {
    uint64_t m0 = gw__clock_mono_ns(), t0 = gw_ticks(), m1, t1;
    do {
      m1 = gw__clock_mono_ns();
      t1 = gw_ticks();
    } while (m1 - m0 < spans_ms[i] * 1000000u);
    double mono = (double)(m1 - m0), ticks = (double)gw_ticks_ns(t1 - t0);
    printf("  %3llu ms: monotonic %.0f ns, ticks %.0f ns (%+.3f %%)\n",
           (unsigned long long)spans_ms[i], mono, ticks, (ticks - mono) / mono * 100);
    assert_true(ticks > mono * 0.99 && ticks < mono * 1.01);
  }
}

/* Long spans do not overflow the conversion (a handler may run seconds
 * under a large instruction limit). */
static void test_long_span(void **state) {
  (void)state;
  uint64_t t0 = gw_ticks();
  struct timespec ts = {0, 10 * 1000000};
  nanosleep(&ts, NULL);
  uint64_t span = gw_ticks() - t0;
  uint64_t ns = gw_ticks_ns(span);
  /* 1,000 times the span: about 10 s, past 2^32 ticks and 2^32 ns. */
  uint64_t big = gw_ticks_ns(span * 1000);
  assert_true(big > ns * 990 && big < ns * 1010);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_never_goes_back),
      cmocka_unit_test(test_spans_convert),
      cmocka_unit_test(test_long_span),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
