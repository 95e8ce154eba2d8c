/* frame.c: the framing engine. Finds length-prefixed frames in a byte
 * stream, checks them against the framing's limits, and encodes the length
 * field of frames that a handler changed or built.
 *
 * Pure: no libuv, no Lua, no allocation. gw_frame_next() runs once per frame
 * on the relay's fast path, so it looks at the header only (a few bytes) and
 * never at the body. All length arithmetic is done in 64 bits, so no field
 * value, offset or adjustment can wrap around. */
#include "frame.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#define KIB 1024u
#define MIB (1024u * 1024u)

/* The generic presets cap frames at 16 MiB by default: a u32 length field
 * could claim 4 GiB, and the relay must hold a whole frame in memory before a
 * handler sees it. A config can raise it. */
#define DEFAULT_MAX_FRAME (16u * MIB)

/* Minecraft's frame decoder reads a varint of at most 3 bytes, so a length
 * value of at most 2^21 - 1: with its 3-byte field, 2 MiB + 2 bytes. */
#define VARINT_PRESET_MAX (3u + ((1u << 21) - 1u))

static const gw_framing presets[] = {
  {
    /* Tales of Pirates: u16 BE length counting the whole frame, u32 session,
     * u16 command. See shared/protocols/tales-of-pirates.md. */
    .name = "top",
    .length_offset = 0,
    .length_size = 2,
    .big_endian = true,
    .length_adjust = -2,
    .opcode_offset = 6,
    .opcode_size = 2,
    .keepalive = true,
    .min_frame = {8, 8},
    .max_frame = {16 * KIB, 64 * KIB}, /* GateServer's and client's limits */
    .str_length_size = 2,
    .str_nul = true,
    .header_template = {0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00},
    .header_len = 8,
  },
  {
    .name = "u16be",
    .length_size = 2,
    .big_endian = true,
    .max_frame = {65535 + 2, 65535 + 2},
    .str_length_size = 2,
    .header_len = 2,
  },
  {
    .name = "u32be",
    .length_size = 4,
    .big_endian = true,
    .max_frame = {DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME},
    .str_length_size = 2,
    .header_len = 4,
  },
  {
    .name = "u32le",
    .length_size = 4,
    .big_endian = false,
    .max_frame = {DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME},
    .str_length_size = 2,
    .header_len = 4,
  },
  {
    /* MySQL: u24 LE payload length, the sequence id, then the payload,
     * whose first byte (the command, COM_QUERY...) is the opcode. A packet
     * with an empty payload is 4 bytes and has none. Strings are
     * NUL-terminated, as in the handshake. */
    .name = "mysql",
    .length_size = 3,
    .big_endian = false,
    .length_adjust = 1,
    .opcode_offset = 4,
    .opcode_size = 1,
    .min_frame = {4, 4},
    .max_frame = {16 * MIB + 4, 16 * MIB + 4},
    .str_length_size = 0,
    .str_nul = true,
    .header_len = 5,
  },
  {
    /* Unsigned LEB128 counting the rest of the frame (Minecraft). A varint
     * field has no fixed place in a template: header_len is the bytes
     * before it. */
    .name = "varint",
    .length_size = GW_LENGTH_VARINT,
    .big_endian = true,
    .max_frame = {VARINT_PRESET_MAX, VARINT_PRESET_MAX},
    .str_length_size = 2,
    .header_len = 0,
  },
  {
    /* MQTT 3.1.1 and 5.0: the fixed header's first byte (the packet type in
     * the high nibble, its flags in the low one) is the opcode, then the
     * remaining length as a variable byte integer (LEB128, 4 bytes at most
     * in MQTT). Strings are u16 BE length-prefixed. */
    .name = "mqtt",
    .length_offset = 1,
    .length_size = GW_LENGTH_VARINT,
    .big_endian = true,
    .opcode_offset = 0,
    .opcode_size = 1,
    .min_frame = {2, 2},
    .max_frame = {DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME},
    .str_length_size = 2,
    .header_len = 1,
  },
  {
    .name = "raw",
    .raw = true,
    .big_endian = true,
    .max_frame = {DEFAULT_MAX_FRAME, DEFAULT_MAX_FRAME},
    .str_length_size = 2,
  },
};

#define NPRESETS (sizeof presets / sizeof presets[0])

const char *const gw_framing_presets[] = {
  "top", "u16be", "u32be", "u32le", "mysql", "varint", "mqtt", "raw", NULL,
};

const char *gw_side_name(gw_side side)
{
  switch (side) {
  case GW_CLIENT: return "client";
  case GW_SERVER: return "server";
  }
  return "unknown";
}

int gw_framing_preset(const char *name, gw_framing *f)
{
  for (size_t i = 0; i < NPRESETS; i++) {
    if (strcmp(presets[i].name, name) == 0) {
      *f = presets[i];
      return 0;
    }
  }
  return -ENOENT;
}

const char *gw_frame_strerror(gw_frame_error e)
{
  switch (e) {
  case GW_FRAME_OK: return "no error";
  case GW_FRAME_SHORT_HEADER: return "frame length shorter than its header";
  case GW_FRAME_TOO_SMALL: return "frame below min_frame";
  case GW_FRAME_TOO_LARGE: return "frame above max_frame";
  case GW_FRAME_VARINT_TOO_LONG: return "varint length field longer than 5 bytes";
  }
  return "unknown frame error";
}

/* The parser's integer reader: static so that it is inlined even in the
 * position-independent gw_core, with the sizes framings use spelled out. */
static inline uint64_t get_uint(const uint8_t *p, unsigned size, bool big_endian)
{
  switch (size) {
  case 1:
    return p[0];
  case 2:
    return big_endian ? (uint64_t)p[0] << 8 | p[1] : (uint64_t)p[1] << 8 | p[0];
  case 4:
    return big_endian ? (uint64_t)p[0] << 24 | (uint64_t)p[1] << 16 |
                            (uint64_t)p[2] << 8 | p[3]
                      : (uint64_t)p[3] << 24 | (uint64_t)p[2] << 16 |
                            (uint64_t)p[1] << 8 | p[0];
  }
  uint64_t v = 0;
  if (big_endian) {
    for (unsigned i = 0; i < size; i++)
      v = (v << 8) | p[i];
  } else {
    for (unsigned i = size; i-- > 0;)
      v = (v << 8) | p[i];
  }
  return v;
}

uint64_t gw_get_uint(const uint8_t *p, unsigned size, bool big_endian)
{
  return get_uint(p, size, big_endian);
}

void gw_put_uint(uint8_t *p, unsigned size, bool big_endian, uint64_t v)
{
  for (unsigned i = 0; i < size; i++) {
    p[big_endian ? size - 1 - i : i] = (uint8_t)v;
    v >>= 8;
  }
}

static unsigned varint_size(uint64_t v)
{
  unsigned k = 1;
  while (v >= 0x80) {
    v >>= 7;
    k++;
  }
  return k;
}

static void put_varint(uint8_t *p, uint64_t v)
{
  while (v >= 0x80) {
    *p++ = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  *p = (uint8_t)v;
}

/* Largest value a fixed length field of size bytes holds. */
static uint64_t field_max(unsigned size)
{
  return size >= 8 ? UINT64_MAX : (UINT64_C(1) << (8 * size)) - 1;
}

int gw_frame_next(const gw_framing *f, gw_side side, const uint8_t *p,
                  size_t n, gw_frame_info *info)
{
  *info = (gw_frame_info){0};
  if (f->raw) {
    if (n == 0)
      return -EAGAIN;
    info->len = n;
    return 1;
  }

  uint64_t off = f->length_offset;
  uint64_t value = 0;
  uint64_t field;
  if (f->length_size != GW_LENGTH_VARINT) {
    field = f->length_size;
    if (n < off + field)
      return -EAGAIN;
    value = get_uint(p + off, f->length_size, f->big_endian);
  } else {
    /* Overlong encodings (0x80 0x00 for 0) are accepted, as Minecraft and
     * protobuf do; a continuation bit on the 5th byte is refused at once. */
    if (n <= off)
      return -EAGAIN;
    const uint8_t *q = p + off;
    size_t avail = n - off;
    for (field = 0;; field++) {
      if (field == GW_VARINT_MAX) {
        info->error = GW_FRAME_VARINT_TOO_LONG;
        return -EPROTO;
      }
      if (field == avail)
        return -EAGAIN;
      value |= (uint64_t)(q[field] & 0x7f) << (7 * field);
      if (!(q[field] & 0x80)) {
        field++;
        break;
      }
    }
    /* Five bytes carry 35 bits; the length field is 32 bits, like the
     * encoder's. A value beyond that is a length no framing accepts. */
    if (value > UINT32_MAX) {
      info->error = GW_FRAME_TOO_LARGE;
      return -EPROTO;
    }
  }

  /* Both terms fit easily in 64 bits: off and value are at most 2^32 - 1,
   * field at most 5, the adjustment within +-2^31. */
  uint64_t header = off + field;
  int64_t len = (int64_t)(header + value) + f->length_adjust;
  if (len < (int64_t)header) {
    info->error = GW_FRAME_SHORT_HEADER;
    return -EPROTO;
  }
  /* A keep-alive (the length field alone) is exempt from min_frame only. */
  if ((uint64_t)len < f->min_frame[side] &&
      !(f->keepalive && (uint64_t)len == header)) {
    info->error = GW_FRAME_TOO_SMALL;
    return -EPROTO;
  }
  if ((uint64_t)len > f->max_frame[side]) {
    info->error = GW_FRAME_TOO_LARGE;
    return -EPROTO;
  }
  if ((uint64_t)len > n) {
    info->need = (size_t)len;
    return -EAGAIN;
  }
  info->len = (size_t)len;
  if (f->opcode_size &&
      (uint64_t)f->opcode_offset + f->opcode_size <= (uint64_t)len) {
    info->opcode =
        (uint32_t)get_uint(p + f->opcode_offset, f->opcode_size, f->big_endian);
    info->has_opcode = true;
  }
  return 1;
}

size_t gw_frame_body_offset(const gw_framing *f)
{
  /* A varint framing's body starts after a field of varying size: this is
   * only the part before it (header_len == length_offset); the caller adds
   * gw_frame_length_field_size(). */
  return f->raw ? 0 : f->header_len;
}

size_t gw_frame_length_field_size(const gw_framing *f, size_t frame_len)
{
  if (f->raw)
    return 0;
  if (f->length_size != GW_LENGTH_VARINT)
    return f->length_size;
  /* The field's size k and the value it encodes depend on each other: the
   * smallest k whose value fits in k bytes is the one the encoder writes. */
  for (unsigned k = 1; k < GW_VARINT_MAX; k++) {
    int64_t v = (int64_t)frame_len - (int64_t)f->length_offset - k - f->length_adjust;
    if (v < 0 || varint_size((uint64_t)v) <= k)
      return k;
  }
  return GW_VARINT_MAX;
}

/* Works out a frame whose bytes after the length field are rest_len long:
 * the length field's value and encoded size, and the frame's length (the
 * return), or a negative errno. */
static long frame_layout(const gw_framing *f, gw_side side, size_t rest_len,
                         uint64_t *value, unsigned *field)
{
  uint64_t len;
  *value = 0;
  *field = 0;
  if (f->raw) {
    len = rest_len;
  } else {
    /* Bounds rest_len so that the signed arithmetic below cannot wrap. */
    if (rest_len > UINT32_MAX * UINT64_C(4))
      return -ERANGE;
    int64_t v = (int64_t)rest_len - f->length_adjust;
    if (v < 0)
      return -ERANGE;
    if (f->length_size == GW_LENGTH_VARINT) {
      if ((uint64_t)v > UINT32_MAX)
        return -ERANGE;
      *field = varint_size((uint64_t)v);
    } else {
      if ((uint64_t)v > field_max(f->length_size))
        return -ERANGE;
      *field = f->length_size;
    }
    *value = (uint64_t)v;
    len = f->length_offset + *field + (uint64_t)rest_len;
  }
  /* A frame the other side would refuse is refused here, so a handler
   * learns of it at once rather than the session dying later. */
  bool keepalive = f->keepalive && rest_len == 0 && !f->raw;
  if (len > f->max_frame[side] || (!keepalive && len < f->min_frame[side]) ||
      len > LONG_MAX)
    return -EMSGSIZE;
  return (long)len;
}

static void put_length(const gw_framing *f, uint8_t *p, unsigned field,
                       uint64_t value)
{
  if (f->length_size == GW_LENGTH_VARINT)
    put_varint(p, value);
  else
    gw_put_uint(p, field, f->big_endian, value);
}

long gw_frame_encode(const gw_framing *f, gw_side side, uint8_t *out,
                     size_t cap, const uint8_t *prefix, const uint8_t *rest,
                     size_t rest_len)
{
  uint64_t value;
  unsigned field;
  long len = frame_layout(f, side, rest_len, &value, &field);
  if (len < 0)
    return len;
  if ((size_t)len > cap)
    return -ENOBUFS;
  if (f->raw) {
    if (rest_len)
      memmove(out, rest, rest_len);
    return len;
  }
  size_t off = f->length_offset;
  /* rest first: it may already sit in out (a rewrite in place). */
  if (rest_len)
    memmove(out + off + field, rest, rest_len);
  if (off && prefix)
    memmove(out, prefix, off);
  else if (off)
    memset(out, 0, off); /* no prefix given: zeros (MQTT's type byte too) */
  put_length(f, out + off, field, value);
  return len;
}

long gw_frame_build(const gw_framing *f, gw_side side, uint8_t *out,
                    size_t cap, uint32_t opcode, const uint8_t *body,
                    size_t body_len)
{
  if (f->opcode_size < 4 && opcode > field_max(f->opcode_size))
    return -ERANGE;
  if (f->raw)
    return gw_frame_encode(f, side, out, cap, NULL, body, body_len);

  /* The template's bytes after the length field belong to the rest. For a
   * varint framing there are none: header_len == length_offset. */
  size_t off = f->length_offset;
  size_t tail = 0;
  if (f->length_size != GW_LENGTH_VARINT && f->header_len > off + f->length_size)
    tail = f->header_len - off - f->length_size;
  if (body_len > SIZE_MAX - tail)
    return -ERANGE;
  uint64_t value;
  unsigned field;
  long len = frame_layout(f, side, tail + body_len, &value, &field);
  if (len < 0)
    return len;
  if ((size_t)len > cap)
    return -ENOBUFS;
  size_t head = off + field + tail;
  if (body_len)
    memmove(out + head, body, body_len);
  memcpy(out, f->header_template, off);
  memcpy(out + off + field, f->header_template + off + field, tail);
  put_length(f, out + off, field, value);
  if (f->opcode_size)
    gw_put_uint(out + f->opcode_offset, f->opcode_size, f->big_endian, opcode);
  return len;
}

#define FAIL(...) (snprintf(msg, msglen, __VA_ARGS__), -EINVAL)

static int validate_side(const gw_framing *f, gw_side s, uint32_t smallest,
                         char *msg, size_t msglen)
{
  const char *name = gw_side_name(s);
  if (f->min_frame[s] > f->max_frame[s])
    return FAIL("min_frame.%s: must be at most max_frame.%s (%u), got %u",
                name, name, f->max_frame[s], f->min_frame[s]);
  if (f->max_frame[s] < smallest)
    return FAIL("max_frame.%s: must be at least the header's size (%u), got %u",
                name, smallest, f->max_frame[s]);
  return 0;
}

int gw_framing_validate(const gw_framing *f, char *msg, size_t msglen)
{
  if (msglen)
    msg[0] = '\0';
  if (!memchr(f->name, '\0', sizeof f->name))
    return FAIL("name: must be at most %d bytes", GW_FRAMING_NAME_MAX - 1);
  if (f->str_length_size > 4)
    return FAIL("str_length_size: must be 0, 1, 2, 3 or 4, got %u",
                f->str_length_size);
  if (f->raw) {
    for (int s = 0; s < GW_SIDES; s++) {
      int rc = validate_side(f, (gw_side)s, 0, msg, msglen);
      if (rc)
        return rc;
    }
    return 0;
  }

  bool varint = f->length_size == GW_LENGTH_VARINT;
  if (f->length_size > 4)
    return FAIL("length_size: must be 1, 2, 3, 4 or \"varint\", got %u",
                f->length_size);
  if (f->opcode_size == 3 || f->opcode_size > 4)
    return FAIL("opcode_size: must be 0, 1, 2 or 4, got %u", f->opcode_size);
  if (f->header_len > GW_HEADER_TEMPLATE_MAX)
    return FAIL("header_len: must be at most %d, got %u",
                GW_HEADER_TEMPLATE_MAX, f->header_len);

  uint64_t off = f->length_offset;
  uint64_t field_end = off + f->length_size;
  if (varint) {
    /* After a field of varying size an opcode has no fixed offset; before
     * it, it has (MQTT's packet type). */
    if (f->opcode_size && (uint64_t)f->opcode_offset + f->opcode_size > off)
      return FAIL("opcode_offset: with a varint length field the opcode must "
                  "end before it (byte %u), got bytes %u..%u", f->length_offset,
                  f->opcode_offset, f->opcode_offset + f->opcode_size - 1);
    if (f->header_len != off)
      return FAIL("header_len: must equal length_offset (%u) with a varint "
                  "length field, got %u", f->length_offset, f->header_len);
  } else if (f->header_len < field_end) {
    return FAIL("header_len: must cover the length field (bytes %u..%u), "
                "got %u", f->length_offset, (unsigned)field_end - 1,
                f->header_len);
  }
  if (f->opcode_size) {
    uint64_t op_end = (uint64_t)f->opcode_offset + f->opcode_size;
    if (op_end > off && f->opcode_offset < field_end)
      return FAIL("opcode_offset: the opcode (bytes %u..%u) overlaps the "
                  "length field (bytes %u..%u)", f->opcode_offset,
                  (unsigned)op_end - 1, f->length_offset,
                  (unsigned)field_end - 1);
    if (op_end > f->header_len)
      return FAIL("header_len: must cover the opcode (bytes %u..%u), got %u",
                  f->opcode_offset, (unsigned)op_end - 1, f->header_len);
  }
  /* The smallest frame: the header, or a 1-byte varint after the prefix. */
  uint32_t smallest = varint ? f->length_offset + 1 : f->header_len;
  for (int s = 0; s < GW_SIDES; s++) {
    int rc = validate_side(f, (gw_side)s, smallest, msg, msglen);
    if (rc)
      return rc;
  }
  return 0;
}

int gw_str_get(const gw_framing *f, const uint8_t *p, size_t room, gw_str_span *span) {
  unsigned ls = f->str_length_size;
  span->declared = 0;
  if (!ls) {
    const uint8_t *nul = memchr(p, 0, room);
    if (!nul) return -ENODATA;
    span->text_off = 0;
    span->text_len = (size_t)(nul - p);
    span->size = span->text_len + 1;
    return 0;
  }
  if (room < ls) return -ENODATA;
  span->declared = gw_get_uint(p, ls, f->big_endian);
  if (span->declared > room - ls) return -EOVERFLOW;
  span->text_off = ls;
  span->text_len = (size_t)span->declared;
  span->size = ls + span->text_len;
  if (f->str_nul && span->text_len && p[span->size - 1] == 0) span->text_len--;
  return 0;
}

int gw_str_size(const gw_framing *f, const void *s, size_t n, size_t *size) {
  unsigned ls = f->str_length_size;
  size_t nul = f->str_nul || !ls ? 1 : 0;
  if (!ls && memchr(s, 0, n)) return -EINVAL;
  if (ls && ls < 8 && (uint64_t)n + nul > (UINT64_C(1) << (8 * ls)) - 1) return -ERANGE;
  *size = ls + n + nul;
  return 0;
}

void gw_str_put(const gw_framing *f, uint8_t *d, const void *s, size_t n) {
  unsigned ls = f->str_length_size;
  size_t nul = f->str_nul || !ls ? 1 : 0;
  if (ls) gw_put_uint(d, ls, f->big_endian, n + nul);
  memcpy(d + ls, s, n);
  if (nul) d[ls + n] = 0;
}
