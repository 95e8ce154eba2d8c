/* script_packet.c: the packet and writer userdata that handlers use to read,
 * edit and build frames.
 *
 * A packet handed to a handler is a view of the relay's frame: reading a
 * field reads the relay's bytes, setting one writes them in place, and
 * nothing is copied into Lua unless bytes(), body(), str() or unpack() is
 * asked for. set_body() rebuilds the frame into storage of its own, with
 * the length field computed by the framing's encoder. Owned storage comes
 * from the state's allocator, so it counts toward the memory limit.
 *
 * Nothing here knows about gw_script: the busted module registers the same
 * types in its own state to let specs read frames. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <lualib.h>
#include <string.h>

#include "log.h"
#include "script_int.h"

/* ---- storage from the state's allocator ---- */

static void *state_alloc(lua_State *L, size_t n) {
  void *ud;
  lua_Alloc a = lua_getallocf(L, &ud);
  return a(ud, NULL, 0, n);
}

static void state_free(lua_State *L, void *p, size_t n) {
  if (!p) return;
  void *ud;
  lua_Alloc a = lua_getallocf(L, &ud);
  a(ud, p, n, 0);
}

/* ---- frame layout ---- */

/* Size of the length field as it is on the wire (a varint may be padded). */
static size_t length_field_size(const gw_framing *f, const uint8_t *data,
                                 size_t len) {
  if (f->raw) return 0;
  if (f->length_size != GW_LENGTH_VARINT) return f->length_size;
  size_t k = 0;
  while (k < GW_VARINT_MAX && f->length_offset + k < len)
    if (!(data[f->length_offset + k++] & 0x80)) break;
  return k;
}

/* Where the body starts; past the end for frames shorter than the header
 * (top's keep-alive). */
static size_t body_offset(const gw_framing *f, const uint8_t *data, size_t len) {
  if (f->raw) return 0;
  size_t off = gw_frame_body_offset(f);
  if (f->length_size == GW_LENGTH_VARINT)
    off += length_field_size(f, data, len);
  return off;
}

static bool frame_opcode(const gw_framing *f, const uint8_t *data, size_t len,
                         uint32_t *op) {
  if (!f->opcode_size || (uint64_t)f->opcode_offset + f->opcode_size > len)
    return false;
  *op = (uint32_t)gw_get_uint(data + f->opcode_offset, f->opcode_size,
                              f->big_endian);
  return true;
}

int gw_frame_check(const gw_framing *f, gw_side from, const uint8_t *data,
                   size_t len, char *why, size_t whylen) {
  gw_frame_info fi;
  int rc = gw_frame_next(f, from, data, len, &fi);
  if (rc == 1 && fi.len == len) return 0;
  if (rc == 1)
    snprintf(why, whylen, "%zu bytes hold more than one frame (the first is "
             "%zu bytes)", len, fi.len);
  else if (rc == -EAGAIN && fi.need)
    snprintf(why, whylen, "%zu bytes are an incomplete frame (its length "
             "field says %zu)", len, fi.need);
  else if (rc == -EAGAIN)
    snprintf(why, whylen, "%zu bytes are too short for the length field", len);
  else
    snprintf(why, whylen, "not a valid %s frame from the %s: %s", f->name,
             gw_side_name(from), gw_frame_strerror(fi.error));
  return -EPROTO;
}

/* ---- packets ----
 *
 * The frame being handled is a light userdata token, (serial << 1) | 1,
 * standing for the state's one current packet (gw__light_packet): handing a
 * frame to Lua allocates nothing, and a token kept past its handler no
 * longer matches. Copies are full userdata with storage of their own. */

/* A packet that is no longer valid, for tokens of frames gone by. */
static gw_packet expired = {.valid = false};

gw_packet *gw_packet_get(lua_State *L, int idx, bool light) {
  if (lua_type(L, idx) == LUA_TLIGHTUSERDATA) {
    uintptr_t token = (uintptr_t)lua_touserdata(L, idx);
    if (!light || !(token & 1)) return NULL; /* cjson.null and such */
    gw_packet *p = gw__light_packet(L, token);
    return p ? p : &expired;
  }
  return luaL_testudata(L, idx, GW_PACKET_MT);
}

/* The packet argument of a method: its first upvalue says whether light
 * userdata tokens stand for the frame being handled in this state. */
static gw_packet *check_packet(lua_State *L, int idx) {
  gw_packet *p = gw_packet_get(L, idx, lua_toboolean(L, lua_upvalueindex(1)));
  if (!p) luaL_typeerror(L, idx, "packet");
  if (!p->valid)
    luaL_error(L, "packet used after its handler returned (pkt:copy() "
               "makes one that stays valid)");
  return p;
}

gw_packet *gw__check_packet(lua_State *L, int idx) { return check_packet(L, idx); }

size_t gw__packet_body_offset(const gw_packet *p) {
  return body_offset(p->f, p->data, p->len);
}

/* A copy keeps its bytes in a plain userdata, its user value 1, so that it
 * needs no finalizer: garbage with finalizers is freed a collection cycle
 * late, and at one copy per frame piles up past the memory limit. User
 * value 2 holds the packet definitions it decodes with, if any. */
gw_packet *gw_packet_push_copy(lua_State *L, const gw_framing *f,
                               gw_side side, const uint8_t *data, size_t len) {
  gw_packet *p = lua_newuserdatauv(L, sizeof *p, 2);
  memset(p, 0, sizeof *p);
  p->own_f = *f;
  p->f = &p->own_f;
  p->side = side;
  p->valid = true;
  p->copy = true;
  luaL_setmetatable(L, GW_PACKET_MT);
  p->buf = p->data = lua_newuserdatauv(L, len ? len : 1, 0);
  lua_setiuservalue(L, -2, 1);
  p->cap = len ? len : 1;
  memcpy(p->buf, data, len);
  p->len = len;
  return p;
}

int gw_packet_replace(lua_State *L, gw_packet *p, const uint8_t *data,
                      size_t len) {
  if (!p->buf || p->cap < len) {
    uint8_t *b = state_alloc(L, len ? len : 1);
    if (!b) return -ENOMEM;
    state_free(L, p->buf, p->cap);
    p->buf = b;
    p->cap = len ? len : 1;
  }
  memmove(p->buf, data, len);
  p->data = p->buf;
  p->len = len;
  p->replaced = true;
  p->dirty = false;
  return 0;
}

void gw_packet_invalidate(lua_State *L, gw_packet *p) {
  state_free(L, p->buf, p->cap);
  p->buf = p->data = NULL;
  p->cap = p->len = 0;
  p->valid = false;
}

const uint8_t *gw_frame_arg(lua_State *L, int idx, size_t *len) {
  if (lua_type(L, idx) == LUA_TSTRING)
    return (const uint8_t *)lua_tolstring(L, idx, len);
  gw_packet *p = gw_packet_get(L, idx, true);
  if (!p)
    luaL_typeerror(L, idx, "frame (string or packet)");
  if (!p->valid)
    luaL_error(L, "packet used after its handler returned");
  *len = p->len;
  return p->data;
}

/* An offset argument for an access of size bytes. */
static size_t check_off(lua_State *L, const gw_packet *p, int idx, size_t size,
                        const char *what) {
  lua_Integer off = luaL_checkinteger(L, idx);
  if (off < 0 || (uint64_t)off > p->len || p->len - (size_t)off < size)
    luaL_error(L, "pkt:%s: offset %I out of range (the frame is %I bytes%s)",
               what, off, (lua_Integer)p->len,
               size > 1 ? ", the field wider than 1" : "");
  return (size_t)off;
}

/* Floats are IEEE 754 in little-endian order unless asked otherwise: the
 * old x86 game servers and clients copy them raw, whatever the order of
 * their integers. */
static bool float_big_endian(lua_State *L, int idx) {
  const char *o = luaL_optstring(L, idx, "<");
  if (o[0] == '<' && !o[1]) return false;
  if (o[0] == '>' && !o[1]) return true;
  return luaL_argerror(L, idx, "byte order must be \"<\" or \">\"");
}

static lua_Integer sign_extend(uint64_t v, unsigned size) {
  if (size < 8 && (v >> (8 * size - 1)) & 1) v |= ~UINT64_C(0) << (8 * size);
  return (lua_Integer)v;
}

static int pkt_read(lua_State *L, unsigned size, bool sgn, const char *what) {
  gw_packet *p = check_packet(L, 1);
  size_t off = check_off(L, p, 2, size, what);
  uint64_t v = gw_get_uint(p->data + off, size, p->f->big_endian);
  lua_pushinteger(L, sgn ? sign_extend(v, size) : (lua_Integer)v);
  return 1;
}

/* Range of an integer field: unsigned 0..2^n-1, signed -2^(n-1)..2^(n-1)-1;
 * 64-bit fields take any integer (bit pattern). */
static void check_range(lua_State *L, lua_Integer v, unsigned size, bool sgn,
                        const char *who, const char *what) {
  if (size >= 8) return;
  lua_Integer lo = sgn ? -((lua_Integer)1 << (8 * size - 1)) : 0;
  lua_Integer hi = sgn ? ((lua_Integer)1 << (8 * size - 1)) - 1
                       : ((lua_Integer)1 << (8 * size)) - 1;
  if (v < lo || v > hi)
    luaL_error(L, "%s:%s: value %I out of range %I..%I", who, what, v, lo, hi);
}

/* Whether writing size bytes at off may break the frame. Every framing
 * is length-prefixed (or raw), and whether the bytes are one frame
 * depends on its length field's bytes alone (frame.c): an edit elsewhere
 * (the opcode's, the body's) needs no check at the verdict. */
static bool edit_may_break(const gw_packet *p, size_t off, size_t size) {
  const gw_framing *f = p->f;
  if (f->raw) return false;
  size_t lo = f->length_offset;
  size_t hi = lo + (f->length_size == GW_LENGTH_VARINT ? GW_VARINT_MAX : f->length_size);
  return off < hi && off + size > lo;
}

static int pkt_write(lua_State *L, unsigned size, bool sgn, const char *what) {
  gw_packet *p = check_packet(L, 1);
  size_t off = check_off(L, p, 2, size, what);
  lua_Integer v = luaL_checkinteger(L, 3);
  check_range(L, v, size, sgn, "pkt", what);
  gw_put_uint(p->data + off, size, p->f->big_endian, (uint64_t)v);
  if (edit_may_break(p, off, size)) p->dirty = true;
  return 0;
}

#define PKT_INT(name, size, sgn)                                              \
  static int pkt_##name(lua_State *L) { return pkt_read(L, size, sgn, #name); } \
  static int pkt_set_##name(lua_State *L) {                                   \
    return pkt_write(L, size, sgn, "set_" #name);                             \
  }
PKT_INT(u8, 1, false)
PKT_INT(u16, 2, false)
PKT_INT(u32, 4, false)
PKT_INT(u64, 8, false)
PKT_INT(i8, 1, true)
PKT_INT(i16, 2, true)
PKT_INT(i32, 4, true)
PKT_INT(i64, 8, true)

/* Floats travel as their IEEE 754 bit pattern in the chosen order. */
static int pkt_getf(lua_State *L, unsigned size, const char *what) {
  gw_packet *p = check_packet(L, 1);
  size_t off = check_off(L, p, 2, size, what);
  uint64_t u = gw_get_uint(p->data + off, size, float_big_endian(L, 3));
  if (size == 4) {
    float v;
    uint32_t u32 = (uint32_t)u;
    memcpy(&v, &u32, 4);
    lua_pushnumber(L, v);
  } else {
    double v;
    memcpy(&v, &u, 8);
    lua_pushnumber(L, v);
  }
  return 1;
}

static uint64_t float_bits(lua_Number n, unsigned size) {
  if (size == 4) {
    float v = (float)n;
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
  }
  double v = n;
  uint64_t u;
  memcpy(&u, &v, 8);
  return u;
}

static int pkt_setf(lua_State *L, unsigned size, const char *what) {
  gw_packet *p = check_packet(L, 1);
  size_t off = check_off(L, p, 2, size, what);
  uint64_t u = float_bits(luaL_checknumber(L, 3), size);
  gw_put_uint(p->data + off, size, float_big_endian(L, 4), u);
  if (edit_may_break(p, off, size)) p->dirty = true;
  return 0;
}

static int pkt_f32(lua_State *L) { return pkt_getf(L, 4, "f32"); }
static int pkt_f64(lua_State *L) { return pkt_getf(L, 8, "f64"); }
static int pkt_set_f32(lua_State *L) { return pkt_setf(L, 4, "set_f32"); }
static int pkt_set_f64(lua_State *L) { return pkt_setf(L, 8, "set_f64"); }

/* pkt:str(off) -> the string, the offset after it. */
static int pkt_str(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  size_t off = check_off(L, p, 2, 0, "str");
  const gw_framing *f = p->f;
  const uint8_t *d = p->data;
  gw_str_span sp;
  int rc = gw_str_get(f, d + off, p->len - off, &sp);
  if (rc == -ENODATA && !f->str_length_size)
    return luaL_error(L, "pkt:str: no NUL-terminated string at offset %I "
                      "(the frame is %I bytes)", (lua_Integer)off,
                      (lua_Integer)p->len);
  if (rc == -ENODATA)
    return luaL_error(L, "pkt:str: offset %I out of range (the frame is %I "
                      "bytes, the length field %d)", (lua_Integer)off,
                      (lua_Integer)p->len, (int)f->str_length_size);
  if (rc < 0)
    return luaL_error(L, "pkt:str: a %I-byte string at offset %I runs past the "
                      "end of the frame (%I bytes)", (lua_Integer)sp.declared,
                      (lua_Integer)off, (lua_Integer)p->len);
  lua_pushlstring(L, (const char *)d + off + sp.text_off, sp.text_len);
  lua_pushinteger(L, (lua_Integer)(off + sp.size));
  return 2;
}

/* pkt:unpack(fmt [, off]): string.unpack over the frame from off (default:
 * the body), in the framing's byte order unless fmt says otherwise; the
 * last result is the offset after what was read. */
static int pkt_unpack(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  const char *fmt = luaL_checkstring(L, 2);
  size_t off = lua_isnoneornil(L, 3) ? body_offset(p->f, p->data, p->len)
                                     : check_off(L, p, 3, 0, "unpack");
  if (off > p->len) off = p->len;
  lua_settop(L, 2);
  lua_pushvalue(L, lua_upvalueindex(2)); /* string.unpack */
  lua_pushfstring(L, "%c%s", p->f->big_endian ? '>' : '<', fmt);
  lua_pushlstring(L, (const char *)p->data + off, p->len - off);
  lua_call(L, 2, LUA_MULTRET);
  int n = lua_gettop(L) - 2;
  lua_Integer pos = lua_tointeger(L, -1);
  lua_pushinteger(L, (lua_Integer)off + pos - 1);
  lua_replace(L, -2);
  return n;
}

static int pkt_bytes(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  lua_pushlstring(L, (const char *)p->data, p->len);
  return 1;
}

/* Lowercase hex of n bytes, made in C (a Lua loop over string.format costs
 * a call per byte); charged like string.rep. */
void gw__push_hex(lua_State *L, const uint8_t *p, size_t n) {
  if (n > (SIZE_MAX - 1) / 2) luaL_error(L, "hex: too long");
  gw__charge(L, n / 32 + 1);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, 2 * n + 1);
  gw_hex(p, n, out, 2 * n + 1);
  luaL_pushresultsize(&b, 2 * n);
}

/* pkt:hex() -> the whole frame in hex, for logs */
static int pkt_hex(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  gw__push_hex(L, p->data, p->len);
  return 1;
}

static int pkt_body(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  size_t off = body_offset(p->f, p->data, p->len);
  if (off > p->len) off = p->len;
  lua_pushlstring(L, (const char *)p->data + off, p->len - off);
  return 1;
}

/* Rebuilds the frame around a new body: the bytes before the length field
 * and between it and the body are kept, the length field is computed by
 * the encoder. Always into fresh storage, so a refused body leaves the
 * packet as it was. */
void gw__packet_set_body(lua_State *L, int idx, gw_packet *p,
                         const uint8_t *body, size_t blen, const char *who) {
  const gw_framing *f = p->f;
  idx = lua_absindex(L, idx);
  size_t boff = body_offset(f, p->data, p->len);
  if (boff > p->len)
    luaL_error(L, "%s: a %I-byte frame has no body (keep-alive)", who,
               (lua_Integer)p->len);
  size_t off = f->raw ? 0 : f->length_offset;
  size_t field = length_field_size(f, p->data, p->len);
  size_t room = f->raw ? 0
                : f->length_size == GW_LENGTH_VARINT ? GW_VARINT_MAX
                                                     : f->length_size;
  size_t tail = boff - off - field;
  if (blen > SIZE_MAX / 2)
    luaL_error(L, "%s: body too large", who);
  size_t need = off + room + tail + blen;
  /* A copy's new storage is a userdata pushed here (user value 1 once
   * built); the handled frame's is C memory freed when its handlers
   * return. */
  uint8_t *dst = p->copy ? lua_newuserdatauv(L, need, 0) : state_alloc(L, need);
  if (!dst) luaL_error(L, "not enough memory");
  uint8_t *rest = dst + off + room;
  memcpy(dst, p->data, off);
  memcpy(rest, p->data + off + field, tail);
  if (blen) memcpy(rest + tail, body, blen);
  long r = gw_frame_encode(f, p->side, dst, need, dst, rest, tail + blen);
  if (r < 0) {
    if (!p->copy) state_free(L, dst, need); /* before luaL_error longjmps */
    if (r == -EMSGSIZE)
      luaL_error(L, "%s: a %I-byte body makes a frame outside the %s "
                 "framing's limits for %s frames (%I..%I bytes)", who,
                 (lua_Integer)blen, f->name, gw_side_name(p->side),
                 (lua_Integer)f->min_frame[p->side],
                 (lua_Integer)f->max_frame[p->side]);
    luaL_error(L, "%s: a %I-byte body does not fit the length field", who,
               (lua_Integer)blen);
  }
  if (p->copy)
    lua_setiuservalue(L, idx, 1);
  else
    state_free(L, p->buf, p->cap);
  p->buf = p->data = dst;
  p->cap = need;
  p->len = (size_t)r;
  p->replaced = true;
}

static int pkt_set_body(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  size_t blen;
  const uint8_t *body = gw_body_arg(L, 2, &blen);
  gw__packet_set_body(L, 1, p, body, blen, "pkt:set_body");
  return 0;
}

static int pkt_set_opcode(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  const gw_framing *f = p->f;
  lua_Integer v = luaL_checkinteger(L, 2);
  if (!f->opcode_size || (uint64_t)f->opcode_offset + f->opcode_size > p->len)
    return luaL_error(L, "pkt:set_opcode: this frame has no opcode");
  check_range(L, v, f->opcode_size, false, "pkt", "set_opcode");
  gw_put_uint(p->data + f->opcode_offset, f->opcode_size, f->big_endian,
              (uint64_t)v);
  p->dirty = true;
  return 0;
}

static int pkt_copy(lua_State *L) {
  gw_packet *p = check_packet(L, 1);
  gw_packet_push_copy(L, p->f, p->side, p->data, p->len);
  gw__pkt_adopt_proto(L, 1, -1, lua_toboolean(L, lua_upvalueindex(1)));
  return 1;
}

static int pkt_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_packet(L, 1)->len);
  return 1;
}

static int pkt_tostring(lua_State *L) {
  gw_packet *p = gw_packet_get(L, 1, lua_toboolean(L, lua_upvalueindex(1)));
  uint32_t op;
  if (!p)
    lua_pushfstring(L, "userdata: %p", lua_touserdata(L, 1));
  else if (!p->valid)
    lua_pushliteral(L, "gangway.packet (expired)");
  else if (frame_opcode(p->f, p->data, p->len, &op))
    lua_pushfstring(L, "gangway.packet (%s frame, opcode %I, %I bytes)",
                    gw_side_name(p->side), (lua_Integer)op, (lua_Integer)p->len);
  else
    lua_pushfstring(L, "gangway.packet (%s frame, %I bytes)",
                    gw_side_name(p->side), (lua_Integer)p->len);
  return 1;
}

/* Methods first (one rawget), then the fields. */
static int pkt_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 1;
  gw_packet *p = check_packet(L, 1);
  const char *k = lua_tostring(L, 2);
  uint32_t op;
  if (!k) {
  } else if (!strcmp(k, "opcode")) {
    if (frame_opcode(p->f, p->data, p->len, &op))
      lua_pushinteger(L, op);
    else
      lua_pushnil(L);
    return 1;
  } else if (!strcmp(k, "side")) {
    lua_pushstring(L, gw_side_name(p->side));
    return 1;
  } else if (!strcmp(k, "name")) {
    gw__pkt_push_name(L, p, lua_toboolean(L, lua_upvalueindex(1)));
    return 1;
  } else if (!strcmp(k, "body_offset")) {
    lua_pushinteger(L, (lua_Integer)body_offset(p->f, p->data, p->len));
    return 1;
  }
  return luaL_error(L, "packet has no field %s", luaL_tolstring(L, 2, NULL));
}

static int pkt_newindex(lua_State *L) {
  check_packet(L, 1);
  const char *k = lua_tostring(L, 2);
  if (k && !strcmp(k, "opcode")) {
    lua_settop(L, 3);
    lua_remove(L, 2);
    return pkt_set_opcode(L);
  }
  return luaL_error(L, "packet field %s cannot be set (only opcode can)",
                    luaL_tolstring(L, 2, NULL));
}

static const luaL_Reg pkt_methods[] = {
  {"bytes", pkt_bytes},   {"body", pkt_body},     {"set_body", pkt_set_body},
  {"copy", pkt_copy},     {"str", pkt_str},       {"unpack", NULL},
  {"hex", pkt_hex},
  {"set_opcode", pkt_set_opcode},
  {"decode", gw__pkt_decode}, {"encode", gw__pkt_encode},
  {"u8", pkt_u8},         {"u16", pkt_u16},       {"u32", pkt_u32},
  {"u64", pkt_u64},       {"i8", pkt_i8},         {"i16", pkt_i16},
  {"i32", pkt_i32},       {"i64", pkt_i64},       {"f32", pkt_f32},
  {"f64", pkt_f64},
  {"set_u8", pkt_set_u8},   {"set_u16", pkt_set_u16}, {"set_u32", pkt_set_u32},
  {"set_u64", pkt_set_u64}, {"set_i8", pkt_set_i8},   {"set_i16", pkt_set_i16},
  {"set_i32", pkt_set_i32}, {"set_i64", pkt_set_i64}, {"set_f32", pkt_set_f32},
  {"set_f64", pkt_set_f64},
  {NULL, NULL},
};

static const luaL_Reg pkt_meta[] = {
  {"__len", pkt_len}, {"__tostring", pkt_tostring},
  {"__newindex", pkt_newindex}, {NULL, NULL},
};

/* ---- writers ---- */

/* A writer's bytes are a plain userdata, its user value 1 (no finalizer,
 * as for copies). */
typedef struct gw_writer {
  uint8_t *buf;          /* in user value 1, or NULL */
  size_t len, cap;
  gw_framing f;
} gw_writer;

static gw_writer *check_writer(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, GW_WRITER_MT);
}

void gw_writer_push(lua_State *L, const gw_framing *f) {
  gw_writer *w = lua_newuserdatauv(L, sizeof *w, 1);
  w->buf = NULL;
  w->len = w->cap = 0;
  w->f = *f;
  luaL_setmetatable(L, GW_WRITER_MT);
}

/* Room for n more bytes in the writer at 1; returns where they go. */
static uint8_t *writer_room(lua_State *L, gw_writer *w, size_t n) {
  if (n > SIZE_MAX / 4 - w->len) luaL_error(L, "writer: body too large");
  if (w->len + n > w->cap) {
    size_t cap = w->cap ? w->cap : 64;
    while (cap < w->len + n) cap *= 2;
    uint8_t *b = lua_newuserdatauv(L, cap, 0);
    if (w->len) memcpy(b, w->buf, w->len);
    lua_setiuservalue(L, 1, 1);
    w->buf = b;
    w->cap = cap;
  }
  return w->buf + w->len;
}

static int w_int(lua_State *L, unsigned size, bool sgn, const char *what) {
  gw_writer *w = check_writer(L, 1);
  lua_Integer v = luaL_checkinteger(L, 2);
  check_range(L, v, size, sgn, "writer", what);
  gw_put_uint(writer_room(L, w, size), size, w->f.big_endian, (uint64_t)v);
  w->len += size;
  lua_settop(L, 1);
  return 1;
}

#define W_INT(name, size, sgn) \
  static int w_##name(lua_State *L) { return w_int(L, size, sgn, #name); }
W_INT(u8, 1, false)
W_INT(u16, 2, false)
W_INT(u32, 4, false)
W_INT(u64, 8, false)
W_INT(i8, 1, true)
W_INT(i16, 2, true)
W_INT(i32, 4, true)
W_INT(i64, 8, true)

static int w_float(lua_State *L, unsigned size) {
  gw_writer *w = check_writer(L, 1);
  uint64_t u = float_bits(luaL_checknumber(L, 2), size);
  bool be = float_big_endian(L, 3);
  gw_put_uint(writer_room(L, w, size), size, be, u);
  w->len += size;
  lua_settop(L, 1);
  return 1;
}

static int w_f32(lua_State *L) { return w_float(L, 4); }
static int w_f64(lua_State *L) { return w_float(L, 8); }

/* The framing's string type (top: u16 length counting the NUL, bytes, NUL). */
static int w_str(lua_State *L) {
  gw_writer *w = check_writer(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  size_t size;
  int rc = gw_str_size(&w->f, s, n, &size);
  if (rc == -EINVAL)
    return luaL_error(L, "writer:str: a NUL-terminated string cannot hold a "
                      "NUL byte");
  if (rc < 0)
    return luaL_error(L, "writer:str: a %I-byte string does not fit a %d-byte "
                      "length", (lua_Integer)n, (int)w->f.str_length_size);
  gw_str_put(&w->f, writer_room(L, w, size), s, n);
  w->len += size;
  lua_settop(L, 1);
  return 1;
}

static int w_bytes(lua_State *L) {
  gw_writer *w = check_writer(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (n) memcpy(writer_room(L, w, n), s, n);
  w->len += n;
  lua_settop(L, 1);
  return 1;
}

static int w_build(lua_State *L) {
  gw_writer *w = check_writer(L, 1);
  lua_pushlstring(L, w->buf ? (const char *)w->buf : "", w->len);
  return 1;
}

static int w_packet(lua_State *L) {
  gw_writer *w = check_writer(L, 1);
  lua_Integer op = lua_isnoneornil(L, 2) ? -1 : luaL_checkinteger(L, 2);
  gw_frame_push_built(L, &w->f, op, w->buf, w->len);
  return 1;
}

static int w_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_writer(L, 1)->len);
  return 1;
}

static int w_tostring(lua_State *L) {
  lua_pushfstring(L, "gangway.writer (%I bytes)",
                  (lua_Integer)check_writer(L, 1)->len);
  return 1;
}

const uint8_t *gw_body_arg(lua_State *L, int idx, size_t *len) {
  gw_writer *w = luaL_testudata(L, idx, GW_WRITER_MT);
  if (w) {
    *len = w->len;
    return w->buf ? w->buf : (const uint8_t *)"";
  }
  if (lua_type(L, idx) != LUA_TSTRING)
    luaL_typeerror(L, idx, "body (string or writer)");
  return (const uint8_t *)lua_tolstring(L, idx, len);
}

static const luaL_Reg w_methods[] = {
  {"u8", w_u8},   {"u16", w_u16}, {"u32", w_u32}, {"u64", w_u64},
  {"i8", w_i8},   {"i16", w_i16}, {"i32", w_i32}, {"i64", w_i64},
  {"f32", w_f32}, {"f64", w_f64}, {"str", w_str}, {"bytes", w_bytes},
  {"build", w_build}, {"tostring", w_build}, {"packet", w_packet},
  {NULL, NULL},
};

static const luaL_Reg w_meta[] = {
  {"__len", w_len}, {"__tostring", w_tostring},
  {"__index", NULL}, {NULL, NULL},
};

/* ---- building frames ---- */

void gw_frame_push_built(lua_State *L, const gw_framing *f, lua_Integer opcode,
                         const uint8_t *body, size_t body_len) {
  if (f->opcode_size) {
    if (opcode < 0)
      luaL_error(L, "an opcode is needed to build a %s frame", f->name);
    check_range(L, opcode, f->opcode_size, false, "gw", "packet");
  } else if (opcode >= 0) {
    luaL_error(L, "the %s framing has no opcode", f->name);
  }
  if (body_len > SIZE_MAX / 2) luaL_error(L, "gw.packet: body too large");
  /* A built frame may go either way: check it against the larger limit;
   * sending it checks the limit of its direction. */
  gw_side side = f->max_frame[GW_SERVER] >= f->max_frame[GW_CLIENT] ? GW_SERVER
                                                                    : GW_CLIENT;
  size_t cap = f->header_len + GW_VARINT_MAX + body_len;
  luaL_Buffer b;
  uint8_t *out = (uint8_t *)luaL_buffinitsize(L, &b, cap);
  long r = gw_frame_build(f, side, out, cap, opcode < 0 ? 0 : (uint32_t)opcode,
                          body, body_len);
  if (r < 0)
    luaL_error(L, "gw.packet: a %I-byte body makes a frame outside the %s "
               "framing's limits (%I..%I bytes)", (lua_Integer)body_len,
               f->name, (lua_Integer)f->min_frame[side],
               (lua_Integer)f->max_frame[side]);
  luaL_pushresultsize(&b, (size_t)r);
}

/* ---- registration ---- */

void gw_packet_open(lua_State *L, bool light) {
  if (luaL_newmetatable(L, GW_PACKET_MT)) {
    lua_pushboolean(L, light);
    luaL_setfuncs(L, pkt_meta, 1);
    lua_pushboolean(L, light);
    lua_newtable(L); /* methods */
    lua_pushboolean(L, light);
    luaL_setfuncs(L, pkt_methods, 1);
    /* unpack keeps string.unpack as an upvalue: scripts cannot swap it. */
    lua_pushboolean(L, light);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, LUA_STRLIBNAME);
    lua_getfield(L, -1, "unpack");
    lua_remove(L, -2);
    lua_remove(L, -2);
    lua_pushcclosure(L, pkt_unpack, 2);
    lua_setfield(L, -2, "unpack");
    lua_pushcclosure(L, pkt_index, 2);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "gangway.packet");
    lua_setfield(L, -2, "__name");
    /* Shared by every listener: getmetatable must not hand it to a script
     * (a __gc added there would run with hooks off). */
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    if (light) {
      /* Light userdata share one metatable: this one, in a script state. */
      lua_pushlightuserdata(L, NULL);
      lua_pushvalue(L, -2);
      lua_setmetatable(L, -2);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, GW_WRITER_MT)) {
    luaL_setfuncs(L, w_meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, w_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
}
