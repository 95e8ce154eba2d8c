/* fuzz_frame.c: libFuzzer harness for the framing engine (src/frame.c).
 *
 * The first DESC_LEN bytes of an input describe a custom framing; the rest is
 * a stream. The stream is walked frame by frame with that framing (when it
 * validates) and with every preset, on both sides, checking what the relay
 * relies on: a frame lies within the bytes given and within its limits, a
 * frame cut short asks for more and says how much, and what the parser finds
 * the encoder writes back the same. ASan catches any read past the stream,
 * which is a copy of exactly its own size. Run it with fuzz/run.sh. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

#define DESC_LEN 16
#define OUT_MAX (1u << 20) /* larger frames are walked but not re-encoded */

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s (framing %s)\n", __FILE__, \
              __LINE__, #cond, f->name);                                   \
      abort();                                                             \
    }                                                                      \
  } while (0)

static uint8_t out[OUT_MAX];

/* The custom framing an input's first bytes describe, chosen so that the
 * interesting corners (varints, huge or negative adjustments, limits near
 * 2^32, keep-alives, opcodes past short frames) come up often. */
static void describe(const uint8_t *d, gw_framing *f)
{
  static const uint8_t opcode_sizes[4] = {0, 1, 2, 4};
  memset(f, 0, sizeof *f);
  strcpy(f->name, "custom");
  f->length_size = d[0] % 5;
  f->big_endian = d[0] & 0x80;
  f->keepalive = d[0] & 0x40;
  f->length_offset = d[1] % 8;
  int32_t adjust = (int16_t)(d[2] << 8 | d[3]);
  f->length_adjust = (d[1] & 0x80) ? adjust * 65536 : adjust;
  if ((d[1] & 0x60) == 0x60)
    f->length_adjust = (d[1] & 0x10) ? INT32_MAX : INT32_MIN;
  f->opcode_size = opcode_sizes[d[4] % 4];
  f->opcode_offset = (d[4] >> 2) % 16;
  for (int s = 0; s < GW_SIDES; s++) {
    const uint8_t *b = d + 5 + 4 * s;
    f->min_frame[s] = b[0] < 0x80 ? b[0] : (uint32_t)b[0] << 8;
    f->max_frame[s] = (uint32_t)b[1] << 8 | b[2];
    if (b[3] & 0x80)
      f->max_frame[s] = UINT32_MAX - (b[3] & 0x7f);
  }
  if (f->length_size == GW_LENGTH_VARINT) {
    f->opcode_size = 0;
    f->header_len = f->length_offset;
  } else {
    uint32_t end = f->length_offset + f->length_size;
    uint32_t op_end = f->opcode_offset + f->opcode_size;
    f->header_len = (end > op_end ? end : op_end) + d[13] % 4;
    if (f->header_len > GW_HEADER_TEMPLATE_MAX)
      f->header_len = GW_HEADER_TEMPLATE_MAX;
  }
  for (int i = 0; i < GW_HEADER_TEMPLATE_MAX; i++)
    f->header_template[i] = (uint8_t)(d[14] * (i + 1) + d[15]);
}

/* The size of the length field of the frame at p, as it is on the wire, and
 * the size of the shortest encoding of its value. */
static size_t field_size(const gw_framing *f, const uint8_t *p, size_t *shortest)
{
  if (f->length_size != GW_LENGTH_VARINT)
    return *shortest = f->length_size;
  const uint8_t *q = p + f->length_offset;
  uint64_t value = 0;
  size_t k = 0;
  do
    value |= (uint64_t)(q[k] & 0x7f) << (7 * k);
  while (q[k++] & 0x80);
  for (*shortest = 1; value >= 0x80; value >>= 7)
    (*shortest)++;
  return k;
}

static void check_frame(const gw_framing *f, gw_side side, const uint8_t *p,
                        const gw_frame_info *info)
{
  size_t len = info->len, shortest;
  size_t header = f->length_offset + field_size(f, p, &shortest);
  CHECK(info->error == GW_FRAME_OK && info->need == 0);
  CHECK(len >= header);
  CHECK(len <= f->max_frame[side]);
  CHECK(len >= f->min_frame[side] || (f->keepalive && len == header));
  bool opcode = f->opcode_size && f->opcode_offset + f->opcode_size <= len;
  CHECK(info->has_opcode == opcode);
  if (opcode)
    CHECK(info->opcode == gw_get_uint(p + f->opcode_offset, f->opcode_size,
                                      f->big_endian));

  /* A frame cut by one byte is not a frame yet. */
  gw_frame_info cut;
  int rc = gw_frame_next(f, side, p, len - 1, &cut);
  CHECK(rc == -EAGAIN);
  CHECK(cut.need == (len - 1 >= header ? len : 0));

  /* Re-encoding gives the same frame. An overlong varint comes back in its
   * shortest form, which may then be under min_frame. */
  if (len > OUT_MAX)
    return;
  size_t rest = len - header;
  size_t want = f->length_offset + shortest + rest;
  long n = gw_frame_encode(f, side, out, OUT_MAX, p, p + header, rest);
  if (want < f->min_frame[side] && !(f->keepalive && rest == 0)) {
    CHECK(n == -EMSGSIZE && want < len);
    return;
  }
  CHECK(n > 0 && (size_t)n == want);
  CHECK(shortest == gw_frame_length_field_size(f, want));
  CHECK(memcmp(out, p, f->length_offset) == 0);
  CHECK(memcmp(out + f->length_offset + shortest, p + header, rest) == 0);
  if (want == len)
    CHECK(memcmp(out, p, len) == 0);
  gw_frame_info again;
  CHECK(gw_frame_next(f, side, out, (size_t)n, &again) == 1);
  CHECK(again.len == (size_t)n);
  CHECK(again.has_opcode == info->has_opcode && again.opcode == info->opcode);
}

/* Walks a stream as the relay does, until it needs more or stops. */
static void walk(const gw_framing *f, gw_side side, const uint8_t *p, size_t n)
{
  size_t at = 0;
  for (;;) {
    gw_frame_info info;
    int rc = gw_frame_next(f, side, p + at, n - at, &info);
    if (rc == 1) {
      CHECK(info.len > 0 && info.len <= n - at);
      if (f->raw) {
        CHECK(info.len == n - at && !info.has_opcode);
      } else {
        check_frame(f, side, p + at, &info);
      }
      at += info.len;
    } else if (rc == -EAGAIN) {
      CHECK(info.error == GW_FRAME_OK);
      CHECK(info.need == 0 || (info.need > n - at &&
                               info.need <= f->max_frame[side]));
      CHECK(!f->raw || at == n);
      return;
    } else {
      CHECK(rc == -EPROTO);
      CHECK(info.error > GW_FRAME_OK && info.error <= GW_FRAME_VARINT_TOO_LONG);
      CHECK(gw_frame_strerror(info.error)[0] != '\0');
      return;
    }
  }
}

/* gw.packet: what gw_frame_build makes parses back as that opcode. */
static void build(const gw_framing *f, gw_side side, const uint8_t *p, size_t n)
{
  uint32_t opcode = n >= 4 ? (uint32_t)gw_get_uint(p, 4, true) : 0;
  if (f->opcode_size == 0)
    opcode = 0;
  else if (f->opcode_size < 4)
    opcode &= (1u << (8 * f->opcode_size)) - 1;
  long len = gw_frame_build(f, side, out, OUT_MAX, opcode, p, n);
  if (len <= 0) {
    CHECK(len == -EMSGSIZE || len == -ERANGE || (len == 0 && f->raw));
    return;
  }
  gw_frame_info info;
  CHECK(gw_frame_next(f, side, out, (size_t)len, &info) == 1);
  CHECK(info.len == (size_t)len);
  if (!f->raw) {
    CHECK(info.has_opcode == (f->opcode_size != 0));
    CHECK(info.opcode == opcode);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const uint8_t *body = data;
  size_t n = size;
  gw_framing custom;
  bool have_custom = false;
  if (size >= DESC_LEN) {
    char msg[200];
    describe(data, &custom);
    have_custom = gw_framing_validate(&custom, msg, sizeof msg) == 0;
    body += DESC_LEN;
    n -= DESC_LEN;
  }
  /* An exact-size copy, so that ASan sees a read one byte past the end. */
  uint8_t *stream = malloc(n ? n : 1);
  if (!stream)
    return 0;
  memcpy(stream, body, n);
  for (const char *const *name = gw_framing_presets; *name; name++) {
    gw_framing f;
    if (gw_framing_preset(*name, &f) != 0)
      abort();
    for (int s = 0; s < GW_SIDES; s++) {
      walk(&f, (gw_side)s, stream, n);
      build(&f, (gw_side)s, stream, n);
    }
  }
  if (have_custom) {
    for (int s = 0; s < GW_SIDES; s++) {
      walk(&custom, (gw_side)s, stream, n);
      build(&custom, (gw_side)s, stream, n);
    }
  }
  free(stream);
  return 0;
}
