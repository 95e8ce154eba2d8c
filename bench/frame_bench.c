/* frame_bench.c: how fast gw_frame_next() walks a buffer of frames, the work
 * the relay does on every read. Fills a large in-memory buffer with frames of
 * one size, walks it several times and prints the median rate in frames/s and
 * GB/s (10^9 bytes) per framing and frame size.
 *   usage: frame_bench [RUNS (default 7)] [MIB per buffer (default 64)] */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "frame.h"

typedef struct {
  const char *framing;
  size_t frame_len;
} bench_case;

/* top for every size (its frames are 8 bytes and up); u16be, mysql and
 * varint for comparison. */
static const bench_case cases[] = {
  {"top", 16}, {"top", 64}, {"top", 1024},
  {"u16be", 16}, {"mysql", 16}, {"varint", 16}, {"varint", 1024},
};

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Fills buf with frames of frame_len bytes; returns how many, or 0. */
static size_t fill(const gw_framing *f, uint8_t *buf, size_t cap, size_t frame_len)
{
  /* A varint's field is not part of the fixed header. */
  size_t header = gw_frame_body_offset(f);
  if (f->length_size == GW_LENGTH_VARINT)
    header += gw_frame_length_field_size(f, frame_len);
  uint8_t body[4096] = {0};
  size_t n = 0, at = 0;
  while (cap - at >= frame_len) {
    long len = gw_frame_build(f, GW_CLIENT, buf + at, cap - at,
                              f->opcode_size ? (uint32_t)(n % 200) : 0, body,
                              frame_len - header);
    if (len != (long)frame_len)
      return 0;
    at += frame_len;
    n++;
  }
  return n;
}

/* One pass over the buffer as the relay makes it. Returns the frames found,
 * or 0 if the walk did not end exactly at the end of the buffer. */
static size_t walk(const gw_framing *f, const uint8_t *buf, size_t n,
                   uint64_t *sink)
{
  size_t at = 0, frames = 0;
  gw_frame_info info;
  while (gw_frame_next(f, GW_CLIENT, buf + at, n - at, &info) == 1) {
    *sink += info.opcode;
    at += info.len;
    frames++;
  }
  return at == n ? frames : 0;
}

int main(int argc, char **argv)
{
  int runs = argc > 1 ? atoi(argv[1]) : 7;
  size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 64;
  if (runs < 1 || runs > 1000 || mib < 1 || mib > 4096) {
    fprintf(stderr, "usage: frame_bench [RUNS 1..1000] [MIB 1..4096]\n");
    return 2;
  }
  size_t cap = mib << 20;
  uint8_t *buf = malloc(cap);
  double *rates = calloc((size_t)runs, sizeof *rates);
  if (!buf || !rates) {
    fprintf(stderr, "frame_bench: %s\n", strerror(ENOMEM));
    return 1;
  }
  uint64_t sink = 0;
  printf("gw_frame_next over a %zu MiB buffer, median of %d runs\n", mib, runs);
  printf("%-8s %6s %12s %10s %9s\n", "framing", "bytes", "Mframes/s", "GB/s",
         "ns/frame");
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    gw_framing f;
    if (gw_framing_preset(cases[c].framing, &f) != 0)
      return 1;
    size_t frame_len = cases[c].frame_len;
    size_t count = fill(&f, buf, cap, frame_len);
    if (count == 0) {
      fprintf(stderr, "frame_bench: cannot build %zu-byte %s frames\n",
              frame_len, cases[c].framing);
      return 1;
    }
    size_t bytes = count * frame_len;
    walk(&f, buf, bytes, &sink); /* warm the caches and the page tables */
    for (int r = 0; r < runs; r++) {
      double t0 = now();
      size_t found = walk(&f, buf, bytes, &sink);
      double dt = now() - t0;
      if (found != count) {
        fprintf(stderr, "frame_bench: found %zu of %zu frames\n", found, count);
        return 1;
      }
      rates[r] = (double)count / dt;
    }
    qsort(rates, (size_t)runs, sizeof *rates, cmp_double);
    double rate = rates[runs / 2];
    printf("%-8s %6zu %12.1f %10.2f %9.2f\n", cases[c].framing, frame_len,
           rate / 1e6, rate * (double)frame_len / 1e9, 1e9 / rate);
  }
  /* Keeps the compiler from dropping the walks. */
  fprintf(stderr, "(checksum %llu)\n", (unsigned long long)sink);
  free(buf);
  free(rates);
  return 0;
}
