/* frame.h: describing a length-prefixed protocol and finding its frames.
 *
 * Pure code: bytes in, frames or an error out. No libuv, no Lua, no
 * allocation, so it can be unit-tested and fuzzed on its own. The relay
 * calls gw_frame_next() on its read buffer; the script layer calls the
 * encoders when a handler changes or builds a frame.
 *
 * The vocabulary is Netty's LengthFieldBasedFrameDecoder:
 *   frame length = length_offset + length_size + value + length_adjust
 * where length_size is the encoded size of the field (1..5 for varint). */
#ifndef GW_FRAME_H
#define GW_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The side a frame comes from. GW_CLIENT frames travel client -> server. */
typedef enum { GW_CLIENT = 0, GW_SERVER = 1 } gw_side;
#define GW_SIDES 2
const char *gw_side_name(gw_side side); /* "client" / "server" */

#define GW_LENGTH_VARINT 0   /* length_size value meaning unsigned LEB128 */
#define GW_VARINT_MAX 5      /* bytes; a longer varint is a protocol error */
#define GW_FRAMING_NAME_MAX 32
#define GW_HEADER_TEMPLATE_MAX 16

typedef struct gw_framing {
  char name[GW_FRAMING_NAME_MAX]; /* preset name, or "custom" */
  bool raw;                       /* no framing: chunks pass as they come */
  uint32_t length_offset;         /* bytes before the length field */
  uint8_t length_size;            /* 1, 2, 3, 4, or GW_LENGTH_VARINT */
  bool big_endian;                /* byte order of length, opcode, pkt:u16... */
  int32_t length_adjust;          /* see the formula above */
  uint32_t opcode_offset;         /* from the frame's first byte */
  uint8_t opcode_size;            /* 0 (no opcode), 1, 2 or 4 */
  /* A frame made of the length field alone (top's `00 02`) is a keep-alive:
   * it passes without an opcode and below min_frame. */
  bool keepalive;
  uint32_t min_frame[GW_SIDES];   /* whole-frame bounds, per side of origin */
  uint32_t max_frame[GW_SIDES];
  /* The string type of pkt:str() and writer:str(): a length prefix of
   * str_length_size bytes (0 = NUL-terminated, no prefix), which counts the
   * trailing NUL when str_nul is set (top: u16 length, "a" = 00 02 61 00). */
  uint8_t str_length_size;
  bool str_nul;
  /* Bytes that gw.packet() puts before the length field and between the
   * length field and the opcode (top: session 0x80000000). header_len is
   * the whole fixed header, opcode included (top: 8). The length field's and
   * the opcode's bytes in the template are ignored. */
  uint8_t header_template[GW_HEADER_TEMPLATE_MAX];
  uint32_t header_len;
} gw_framing;

/* Fills *f with a preset: "top", "u16be", "u32be", "u32le", "mysql",
 * "varint", "raw". Returns 0, or -ENOENT for an unknown name. */
int gw_framing_preset(const char *name, gw_framing *f);
/* Names of all presets, NULL-terminated, for error messages and docs. */
extern const char *const gw_framing_presets[];
/* Checks a custom framing for consistency. Returns 0, or -EINVAL with a
 * message naming the offending field ("length_size: must be ...") in msg. */
int gw_framing_validate(const gw_framing *f, char *msg, size_t msglen);

/* Why a stream is not valid for its framing. */
typedef enum {
  GW_FRAME_OK = 0,
  GW_FRAME_SHORT_HEADER,   /* frame length shorter than its own header */
  GW_FRAME_TOO_SMALL,      /* below min_frame */
  GW_FRAME_TOO_LARGE,      /* above max_frame (checked as soon as known) */
  GW_FRAME_VARINT_TOO_LONG,/* more than GW_VARINT_MAX bytes */
} gw_frame_error;
const char *gw_frame_strerror(gw_frame_error e);

typedef struct gw_frame_info {
  size_t len;           /* whole frame, header included */
  uint32_t opcode;      /* valid when has_opcode */
  bool has_opcode;
  gw_frame_error error; /* set when -EPROTO is returned */
  size_t need;          /* with -EAGAIN: total bytes this frame needs, or
                           0 when even the length field is incomplete */
} gw_frame_info;

/* Looks at the frame starting at p[0] with n bytes available.
 *  1       a whole frame of info->len bytes is at p;
 * -EAGAIN  more bytes are needed (info->need says how many in all, once
 *          the length field has been read, so the caller can wait for
 *          them without asking again);
 * -EPROTO  the stream is invalid (info->error says why; nothing after it
 *          can be trusted).
 * Limits are checked as soon as the length field is complete. */
int gw_frame_next(const gw_framing *f, gw_side side, const uint8_t *p,
                  size_t n, gw_frame_info *info);

/* Offset of the first byte after the opcode (top: 8); where the body starts. */
size_t gw_frame_body_offset(const gw_framing *f);
/* Encoded size of the length field of a frame whose whole length is
 * frame_len (fixed sizes return length_size; varint 1..5). */
size_t gw_frame_length_field_size(const gw_framing *f, size_t frame_len);

/* Builds a frame into out: the bytes before the length field (prefix, exactly
 * length_offset bytes; NULL for zeros), the length field (computed, never
 * copied), then rest.
 * Returns the frame length, -ENOBUFS if cap is too small, -ERANGE if the
 * length does not fit the field, or -EMSGSIZE if it breaks max_frame for
 * side. */
long gw_frame_encode(const gw_framing *f, gw_side side, uint8_t *out,
                     size_t cap, const uint8_t *prefix, const uint8_t *rest,
                     size_t rest_len);
/* Builds a new frame of opcode + body from the framing's header template
 * (gw.packet). Same returns as gw_frame_encode. */
long gw_frame_build(const gw_framing *f, gw_side side, uint8_t *out,
                    size_t cap, uint32_t opcode, const uint8_t *body,
                    size_t body_len);

/* Integer access in the framing's byte order; size is 1, 2, 3, 4 or 8. The
 * caller checks bounds. */
uint64_t gw_get_uint(const uint8_t *p, unsigned size, bool big_endian);
void gw_put_uint(uint8_t *p, unsigned size, bool big_endian, uint64_t v);

/* The framing's string type (str_length_size, str_nul), one reading and
 * writing of it for pkt:str, writer:str and packet definitions' "str". */
typedef struct gw_str_span {
  size_t size;          /* its bytes on the wire, length field and NUL included */
  size_t text_off;      /* the text: after the length field ... */
  size_t text_len;      /* ... without a trailing NUL */
  uint64_t declared;    /* the length field's value (0 when NUL-terminated) */
} gw_str_span;
/* The string at p[0..room): 0 and *span, or -ENODATA (room holds not even
 * its length field; NUL-terminated: no NUL) or -EOVERFLOW (its length,
 * span->declared, runs past room). */
int gw_str_get(const gw_framing *f, const uint8_t *p, size_t room, gw_str_span *span);
/* How many bytes text s[0..n) takes as a string: 0 and *size, or -EINVAL
 * (a NUL in a NUL-terminated string) or -ERANGE (too long for the length
 * field). */
int gw_str_size(const gw_framing *f, const void *s, size_t n, size_t *size);
/* Writes it at d, which has room for gw_str_size's size. */
void gw_str_put(const gw_framing *f, uint8_t *d, const void *s, size_t n);

#endif
