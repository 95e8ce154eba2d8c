/* proto.h: a protocol's packet definitions (docs/protocols.md), loaded
 * from a packets.lua data file into plain C structures.
 *
 * Pure: no libuv, no script state. The loader runs the file in a private
 * Lua state (empty environment, instruction and memory limits, like the
 * config), checks every packet against the listener's framing, and keeps
 * nothing of Lua. The script layer decodes and encodes with it
 * (src/script_proto.c); `gangway dissector` writes a Wireshark dissector
 * from it (src/dissector.c). */
#ifndef GW_PROTO_H
#define GW_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "frame.h"

typedef enum {
  GW_PF_U8, GW_PF_U16, GW_PF_U32, GW_PF_U64,
  GW_PF_I8, GW_PF_I16, GW_PF_I32, GW_PF_I64,
  GW_PF_F32, GW_PF_F64,   /* little-endian, whatever the framing's order */
  GW_PF_STR,              /* the framing's string type */
  GW_PF_BYTES,            /* exactly n bytes */
  GW_PF_REST,             /* the rest of the body (last field only) */
  GW_PF_ARRAY,            /* elements of fields[0..nfields) */
} gw_pkt_field_type;

typedef enum {
  GW_COUNT_FIELD,         /* an earlier integer field of the same struct */
  GW_COUNT_FIXED,         /* exactly n elements */
  GW_COUNT_REST,          /* until the body ends (last field only) */
} gw_count_kind;

typedef struct gw_pkt_field {
  char *name;
  gw_pkt_field_type type;
  bool optional;          /* may be missing at the end of the body (and so
                             is every field after it) */
  uint32_t n;             /* GW_PF_BYTES: its size; GW_COUNT_FIXED: count */
  /* arrays */
  gw_count_kind count_kind;
  size_t count_field;     /* GW_COUNT_FIELD: index in the same struct */
  struct gw_pkt_field *fields;
  size_t nfields;
  /* integer fields: index (in the same struct) of the array whose length
   * this field holds, written from the array on encode; -1 if none */
  long counts;
} gw_pkt_field;

typedef struct gw_packet_def {
  char *name;
  bool sides[GW_SIDES];   /* who sends it: "client", "server" or "both" */
  bool keepalive;         /* the framing's keep-alive frame: no opcode */
  uint32_t opcode;        /* valid unless keepalive */
  gw_pkt_field *fields;
  size_t nfields;
} gw_packet_def;

typedef struct gw_proto {
  char *path;             /* the packets.lua it came from */
  gw_packet_def *packets; /* sorted by name */
  size_t npackets;
  void *index;            /* private: (side, opcode) -> packet */
} gw_proto;

/* Loads path (a packets.lua) for framing f into *out (zeroed first).
 * Returns 0, or -EINVAL / -ENOMEM with one message in err:
 * "FILE:LINE: message" when the file does not load or run, else
 * "FILE: NAME.field: message" ("protocols/top/packets.lua: MC_SAY[2]:
 * unknown type \"string\" (expected u8 ... bytes)"). */
int gw_proto_load(const char *path, const gw_framing *f, gw_proto *out, char *err,
                  size_t errlen);
void gw_proto_free(gw_proto *p);

/* The packet called name, or NULL. */
const gw_packet_def *gw_proto_find(const gw_proto *p, const char *name);
/* The packet a frame from side `from` is: by opcode, or the keep-alive
 * when has_opcode is false. NULL when none is defined (the frame passes
 * unnamed). */
const gw_packet_def *gw_proto_lookup(const gw_proto *p, gw_side from, bool has_opcode,
                                     uint32_t opcode);
/* The defined name closest to name (edit distance), for "did you mean";
 * NULL when none is close. */
const char *gw_proto_suggest(const gw_proto *p, const char *name);

/* The fewest bytes fields fs[0..n) can take in a frame of framing f
 * (arrays with a count field or "*": none of their elements); SIZE_MAX
 * when that does not fit a size_t. */
size_t gw_pkt_fields_min_size(const gw_pkt_field *fs, size_t n, const gw_framing *f);

/* Type names as packets.lua spells them ("u16", "bytes(N)", "array"). */
extern const char *const gw_pkt_field_type_names[];
/* Size of an integer type (1, 2, 4, 8), 0 for the others. */
unsigned gw_pkt_field_int_size(gw_pkt_field_type t);
bool gw_pkt_field_is_signed(gw_pkt_field_type t);

#endif
