/* script_proto.c: packets by name (docs/protocols.md) in the script layer:
 * the listener's definitions as a Lua value, names in gw.on, pkt.name,
 * pkt:decode(), pkt:encode(t) and gw.packet(name, fields).
 *
 * Decoding reads the frame's bytes where they are (the relay's buffer for
 * the frame being handled) straight into a Lua table; encoding writes the
 * new body into one scratch userdata and hands it to the set_body path,
 * which recomputes the length. A frame that does not fit its definition is
 * an error raised to the handler that asked, naming the packet, the field
 * and its offset; the packet is never left half changed.
 *
 * Like script_packet.c this works in any state: the busted module decodes
 * copies in its own (light = false), where nothing is charged to the
 * instruction limit because there is none. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "script_int.h"

/* ---- the definitions as a Lua value ---- */

static int proto_gc(lua_State *L) {
  gw_proto_free(luaL_checkudata(L, 1, GW_PROTO_MT));
  return 0;
}

const gw_proto *gw__proto_push_new(lua_State *L, const char *path,
                                   const gw_framing *f) {
  gw_proto *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  if (luaL_newmetatable(L, GW_PROTO_MT)) {
    lua_pushcfunction(L, proto_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
  }
  lua_setmetatable(L, -2);
  char err[512];
  if (gw_proto_load(path, f, p, err, sizeof err) != 0)
    luaL_error(L, "%s", err);
  return p;
}

/* The packet called name, or an error of who's with a suggestion. */
static const gw_packet_def *find_named(lua_State *L, const gw_proto *p, const char *name,
                                       const char *who, const char *listener) {
  if (!p)
    luaL_error(L, "%s: opcodes are integers, or packet names with a protocol "
               "(protocol = \"top\" in config.lua), which %s%s has not: "
               "got \"%s\"", who, listener ? "listener " : "this listener",
               listener ? listener : "", name);
  const gw_packet_def *d = gw_proto_find(p, name);
  if (!d) {
    const char *near = gw_proto_suggest(p, name);
    if (near)
      luaL_error(L, "%s: no packet \"%s\" (did you mean \"%s\"?)", who, name, near);
    luaL_error(L, "%s: no packet \"%s\" in %s", who, name, p->path);
  }
  return d;
}

lua_Integer gw__proto_resolve(lua_State *L, const gw_proto *p, gw_side side,
                              const char *name, const char *listener) {
  const gw_packet_def *d = find_named(L, p, name, "gw.on", listener);
  if (!d->sides[side])
    luaL_error(L, "gw.on: %s is sent by the %s, not the %s", d->name,
               gw_side_name(side == GW_CLIENT ? GW_SERVER : GW_CLIENT),
               gw_side_name(side));
  return d->keepalive ? GW_KEEPALIVE_KEY : (lua_Integer)d->opcode;
}

/* ---- which definition a packet is ---- */

static const gw_proto *packet_proto(lua_State *L, const gw_packet *p, bool light) {
  if (p->copy)
    return p->proto;
  if (light) {
    gw_script *s = gw_script_of(L);
    if (p == &s->pkt && s->cur.rt)
      return s->cur.rt->cur.proto;
  }
  return NULL;
}

static bool packet_opcode(const gw_packet *p, uint32_t *op) {
  const gw_framing *f = p->f;
  if (!f->opcode_size || (uint64_t)f->opcode_offset + f->opcode_size > p->len)
    return false;
  *op = (uint32_t)gw_get_uint(p->data + f->opcode_offset, f->opcode_size,
                              f->big_endian);
  return true;
}

static const gw_packet_def *packet_def(const gw_proto *proto, const gw_packet *p) {
  uint32_t op = 0;
  bool has = packet_opcode(p, &op);
  return proto ? gw_proto_lookup(proto, p->side, has, op) : NULL;
}

/* The definition of p, or an error saying why there is none. */
static const gw_packet_def *need_def(lua_State *L, const gw_packet *p, bool light,
                                     const char *who) {
  const gw_proto *proto = packet_proto(L, p, light);
  if (!proto)
    luaL_error(L, "%s: no packet definitions for this frame (the listener "
               "has no protocol = ... in config.lua)", who);
  const gw_packet_def *d = packet_def(proto, p);
  uint32_t op;
  if (!d && packet_opcode(p, &op))
    luaL_error(L, "%s: %s opcode %I is not in %s", who, gw_side_name(p->side),
               (lua_Integer)op, proto->path);
  if (!d)
    luaL_error(L, "%s: a %s frame without an opcode is not in %s", who,
               gw_side_name(p->side), proto->path);
  return d;
}

void gw__pkt_push_name(lua_State *L, const gw_packet *p, bool light) {
  const gw_packet_def *d = packet_def(packet_proto(L, p, light), p);
  if (d)
    lua_pushstring(L, d->name);
  else
    lua_pushnil(L);
}

void gw__pkt_adopt_proto(lua_State *L, int src, int dst, bool light) {
  gw_packet *sp = gw_packet_get(L, src, light);
  gw_packet *dp = gw_packet_get(L, dst, false);
  if (!sp || !dp)
    return;
  dst = lua_absindex(L, dst);
  if (sp->copy) {
    lua_getiuservalue(L, src, 2);
    dp->proto = sp->proto;
    lua_setiuservalue(L, dst, 2);
    return;
  }
  gw_script *s = light ? gw_script_of(L) : NULL;
  if (!s || sp != &s->pkt || !s->cur.rt || !s->cur.rt->cur.proto)
    return;
  gw__push_gen_extras(L, &s->cur.rt->cur, false);
  if (lua_type(L, -1) == LUA_TTABLE && lua_getfield(L, -1, "proto") == LUA_TUSERDATA) {
    dp->proto = s->cur.rt->cur.proto;
    lua_setiuservalue(L, dst, 2);
  } else {
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* ---- walking a frame ---- */

typedef struct walk_ctx {
  lua_State *L;
  const gw_framing *f;
  const uint8_t *d;      /* the frame */
  size_t len;
  const char *who;       /* "pkt:decode" */
  const gw_packet_def *def;
  bool charge;           /* a script state: charge the instruction limit */
  bool push;             /* decode: build tables; else only measure */
  /* where the walk is, formatted only for messages ("items[2].name"):
   * field names, and element numbers (name NULL) */
  struct { const char *name; size_t elem; } path[34];
  size_t depth;
} walk_ctx;

/* Arrays nest at most 8 deep in a definition: a field and an element
 * number per level fit. */
static size_t path_push(walk_ctx *c, const char *name, size_t elem) {
  size_t mark = c->depth;
  if (c->depth < sizeof c->path / sizeof c->path[0]) {
    c->path[c->depth].name = name;
    c->path[c->depth].elem = elem;
    c->depth++;
  }
  return mark;
}

static void path_pop(walk_ctx *c, size_t mark) { c->depth = mark; }

static void path_format(const walk_ctx *c, char *out, size_t cap) {
  size_t n = 0;
  out[0] = '\0';
  for (size_t i = 0; i < c->depth && n < cap; i++) {
    int r = c->path[i].name
                ? snprintf(out + n, cap - n, "%s%s", i ? "." : "", c->path[i].name)
                : snprintf(out + n, cap - n, "[%zu]", c->path[i].elem);
    if (r < 0) break;
    n += (size_t)r;
  }
}

/* A frame that does not fit: raised when decoding; when measuring, the
 * walk just stops there. Returns false. */
static bool misfit(walk_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool misfit(walk_ctx *c, const char *fmt, ...) {
  if (!c->push)
    return false;
  char msg[200], path[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  path_format(c, path, sizeof path);
  luaL_error(c->L, "%s: %s: field %s %s", c->who, c->def->name, path, msg);
  return false;
}

static bool past_end(walk_ctx *c, const gw_pkt_field *fd, size_t off) {
  return misfit(c, "(%s at offset %zu) runs past the end of the %zu-byte frame",
                gw_pkt_field_type_names[fd->type], off, c->len);
}

/* The bytes a scalar field takes at off, or false. */
static bool scalar_size(walk_ctx *c, const gw_pkt_field *fd, size_t off, size_t *size) {
  size_t room = c->len - off;
  switch (fd->type) {
  case GW_PF_F32: *size = 4; break;
  case GW_PF_F64: *size = 8; break;
  case GW_PF_BYTES: *size = fd->n; break;
  case GW_PF_REST: *size = room; break;
  case GW_PF_STR: {
    gw_str_span sp;
    int rc = gw_str_get(c->f, c->d + off, room, &sp);
    if (rc == -ENODATA && !c->f->str_length_size)
      return misfit(c, "(str at offset %zu) has no NUL before the end of the "
                    "%zu-byte frame", off, c->len);
    if (rc == -ENODATA)
      return past_end(c, fd, off);
    if (rc < 0)
      return misfit(c, "(str at offset %zu) of %llu bytes runs past the end of "
                    "the %zu-byte frame", off, (unsigned long long)sp.declared, c->len);
    *size = sp.size;
    return true;
  }
  default: *size = gw_pkt_field_int_size(fd->type); break;
  }
  if (*size > room)
    return past_end(c, fd, off);
  return true;
}

static lua_Integer read_int(const walk_ctx *c, const gw_pkt_field *fd, size_t off) {
  unsigned size = gw_pkt_field_int_size(fd->type);
  uint64_t v = gw_get_uint(c->d + off, size, c->f->big_endian);
  if (gw_pkt_field_is_signed(fd->type) && size < 8 && (v >> (8 * size - 1)) & 1)
    v |= ~UINT64_C(0) << (8 * size);
  return (lua_Integer)v;
}

/* Pushes the scalar field at off (size bytes) as Lua sees it. */
static void push_scalar(walk_ctx *c, const gw_pkt_field *fd, size_t off, size_t size) {
  lua_State *L = c->L;
  const uint8_t *p = c->d + off;
  switch (fd->type) {
  case GW_PF_F32: {
    uint32_t u = (uint32_t)gw_get_uint(p, 4, false);
    float v;
    memcpy(&v, &u, 4);
    lua_pushnumber(L, v);
    break;
  }
  case GW_PF_F64: {
    uint64_t u = gw_get_uint(p, 8, false);
    double v;
    memcpy(&v, &u, 8);
    lua_pushnumber(L, v);
    break;
  }
  case GW_PF_STR: {
    gw_str_span sp; /* scalar_size found it whole */
    gw_str_get(c->f, p, size, &sp);
    lua_pushlstring(L, (const char *)p + sp.text_off, sp.text_len);
    break;
  }
  case GW_PF_BYTES:
  case GW_PF_REST:
    lua_pushlstring(L, (const char *)p, size);
    break;
  default:
    lua_pushinteger(L, read_int(c, fd, off));
    break;
  }
}

static bool walk_struct(walk_ctx *c, const gw_pkt_field *fs, size_t nf, size_t *off,
                        size_t *starts, size_t *present);

/* The elements of array fd at *off; its count field (if any) starts at
 * count_off. Pushes a list of tables when decoding. */
static bool walk_array(walk_ctx *c, const gw_pkt_field *fd, size_t *off, size_t count_off,
                       const gw_pkt_field *count_fd) {
  uint64_t n = fd->n;
  size_t at = *off;
  if (fd->count_kind == GW_COUNT_FIELD) {
    lua_Integer v = read_int(c, count_fd, count_off);
    if (v < 0 && !gw_pkt_field_is_signed(count_fd->type)) /* a u64 past 2^63 */
      return misfit(c, "(array at offset %zu): %llu elements run past the end of "
                    "the %zu-byte frame", at, (unsigned long long)v, c->len);
    if (v < 0)
      return misfit(c, "(array at offset %zu): its count field %s is %lld", at,
                    count_fd->name, (long long)v);
    n = (uint64_t)v;
  }
  size_t minsz = gw_pkt_fields_min_size(fd->fields, fd->nfields, c->f);
  size_t room = c->len - at;
  if (fd->count_kind != GW_COUNT_REST &&
      (minsz ? n > room / minsz : n > 65535))
    return misfit(c, "(array at offset %zu): %llu elements of at least %zu byte%s "
                  "run past the end of the %zu-byte frame", at,
                  (unsigned long long)n, minsz, minsz == 1 ? "" : "s", c->len);
  if (c->push) {
    luaL_checkstack(c->L, 4, "pkt:decode: too deep");
    lua_createtable(c->L, fd->count_kind == GW_COUNT_REST ? 0 : (int)n, 0);
  }
  for (uint64_t i = 0; fd->count_kind == GW_COUNT_REST ? *off < c->len : i < n; i++) {
    size_t mark = path_push(c, NULL, (size_t)i + 1);
    size_t before = *off;
    if (c->push)
      lua_createtable(c->L, 0, (int)fd->nfields);
    if (!walk_struct(c, fd->fields, fd->nfields, off, NULL, NULL))
      return false;
    if (c->push)
      lua_rawseti(c->L, -2, (lua_Integer)i + 1);
    path_pop(c, mark);
    if (fd->count_kind == GW_COUNT_REST && *off == before)
      return misfit(c, "(array at offset %zu): an element takes no bytes, so "
                    "\"*\" never ends", at);
  }
  return true;
}

/* The fields of one struct from *off; when decoding, into the table on
 * top of the stack. starts (nf + 1 entries, or NULL) gets where each field
 * starts and where the last ends; present how many were there (the rest
 * are optional fields missing at the end of the body). */
static bool walk_struct(walk_ctx *c, const gw_pkt_field *fs, size_t nf, size_t *off,
                        size_t *starts, size_t *present) {
  size_t st_local[nf ? nf : 1];
  size_t *st = starts ? starts : st_local;
  if (present)
    *present = 0;
  for (size_t i = 0; i < nf; i++) {
    const gw_pkt_field *fd = &fs[i];
    st[i] = *off;
    if (fd->optional && *off == c->len) {
      if (starts)
        starts[nf] = *off;
      return true;
    }
    if (c->charge)
      gw__charge(c->L, 1);
    size_t mark = path_push(c, fd->name, 0);
    if (fd->type == GW_PF_ARRAY) {
      const gw_pkt_field *cf = fd->count_kind == GW_COUNT_FIELD ? &fs[fd->count_field] : NULL;
      if (!walk_array(c, fd, off, cf ? st[fd->count_field] : 0, cf))
        return false;
    } else {
      size_t size = 0;
      if (!scalar_size(c, fd, *off, &size))
        return false;
      if (c->push) {
        if (c->charge && size > 16)
          gw__charge(c->L, size / 16);
        push_scalar(c, fd, *off, size);
      }
      *off += size;
    }
    if (c->push)
      lua_setfield(c->L, -2, fd->name);
    path_pop(c, mark);
    if (present)
      *present = i + 1;
  }
  if (starts)
    starts[nf] = *off;
  return true;
}

/* Sets every field but path (kept out of the way: it is only read up to
 * depth). */
static void walk_init(walk_ctx *c, lua_State *L, const gw_packet *p,
                      const gw_packet_def *def, const char *who, bool light) {
  c->depth = 0;
  c->push = false;
  c->L = L;
  c->f = p->f;
  c->d = p->data;
  c->len = p->len;
  c->who = who;
  c->def = def;
  c->charge = light;
}

/* pkt:decode() -> { field = value, ... } */
int gw__pkt_decode(lua_State *L) {
  gw_packet *p = gw__check_packet(L, 1);
  bool light = lua_toboolean(L, lua_upvalueindex(1));
  const gw_packet_def *def = need_def(L, p, light, "pkt:decode");
  walk_ctx c;
  walk_init(&c, L, p, def, "pkt:decode", light);
  c.push = true;
  size_t off = gw__packet_body_offset(p);
  if (off > p->len)
    off = p->len; /* a keep-alive: no body, no fields */
  lua_createtable(L, 0, (int)def->nfields);
  walk_struct(&c, def->fields, def->nfields, &off, NULL, NULL);
  return 1;
}

/* ---- encoding ---- */

/* The new body, in a userdata kept at a fixed stack slot (replaced as it
 * grows), so an error anywhere leaks nothing. */
typedef struct enc_buf {
  uint8_t *p;
  size_t len, cap;
  int slot;
} enc_buf;

static uint8_t *enc_room(lua_State *L, enc_buf *b, size_t n) {
  if (n > SIZE_MAX / 4 - b->len)
    luaL_error(L, "body too large");
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n) cap *= 2;
    uint8_t *np = lua_newuserdatauv(L, cap, 0);
    if (b->len)
      memcpy(np, b->p, b->len);
    lua_replace(L, b->slot);
    b->p = np;
    b->cap = cap;
  }
  return b->p + b->len;
}

static void enc_put(lua_State *L, enc_buf *b, const void *p, size_t n) {
  if (!n)
    return;
  memcpy(enc_room(L, b, n), p, n);
  b->len += n;
}

typedef struct enc_ctx {
  walk_ctx w;            /* the frame's current bytes (old), for messages */
  enc_buf b;
  const gw_packet *old;  /* the packet whose bytes fill in, or NULL */
  const size_t *old_starts; /* top level of the old frame, or NULL */
  size_t old_present;
} enc_ctx;

static _Noreturn void enc_fail(enc_ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static _Noreturn void enc_fail(enc_ctx *c, const char *fmt, ...) {
  char msg[200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char path[160];
  path_format(&c->w, path, sizeof path);
  luaL_error(c->w.L, "%s: %s: field %s: %s", c->w.who, c->w.def->name, path, msg);
  abort();
}

/* Reading t runs its metamethods, and one may set the packet's body (its
 * old storage is then freed): the old bytes are read only while they are
 * still the packet's. */
static void old_bytes_check(enc_ctx *c) {
  if (c->old->data != c->w.d || c->old->len != c->w.len)
    enc_fail(c, "the packet changed while it was being encoded (a metamethod "
             "of the table set its body)");
}

static void enc_int(enc_ctx *c, const gw_pkt_field *fd, lua_Integer v) {
  unsigned size = gw_pkt_field_int_size(fd->type);
  bool sgn = gw_pkt_field_is_signed(fd->type);
  if (size < 8) {
    lua_Integer lo = sgn ? -((lua_Integer)1 << (8 * size - 1)) : 0;
    lua_Integer hi = sgn ? ((lua_Integer)1 << (8 * size - 1)) - 1
                         : ((lua_Integer)1 << (8 * size)) - 1;
    if (v < lo || v > hi)
      enc_fail(c, "%lld is out of range for %s (%lld..%lld)", (long long)v,
               gw_pkt_field_type_names[fd->type], (long long)lo, (long long)hi);
  }
  uint8_t tmp[8];
  gw_put_uint(tmp, size, c->w.f->big_endian, (uint64_t)v);
  enc_put(c->w.L, &c->b, tmp, size);
}

static void enc_struct(enc_ctx *c, const gw_pkt_field *fs, size_t nf, int t, bool top);

/* Writes the value at v (not nil) as field fd. */
static void enc_value(enc_ctx *c, const gw_pkt_field *fd, int v) {
  lua_State *L = c->w.L;
  const gw_framing *f = c->w.f;
  int ty = lua_type(L, v);
  const char *tname = gw_pkt_field_type_names[fd->type];
  if (c->w.charge)
    gw__charge(L, 1);
  switch (fd->type) {
  case GW_PF_F32:
  case GW_PF_F64: {
    if (ty != LUA_TNUMBER)
      enc_fail(c, "expected a number (%s), got %s", tname, lua_typename(L, ty));
    uint8_t tmp[8];
    if (fd->type == GW_PF_F32) {
      float x = (float)lua_tonumber(L, v);
      uint32_t u;
      memcpy(&u, &x, 4);
      gw_put_uint(tmp, 4, false, u);
      enc_put(L, &c->b, tmp, 4);
    } else {
      double x = lua_tonumber(L, v);
      uint64_t u;
      memcpy(&u, &x, 8);
      gw_put_uint(tmp, 8, false, u);
      enc_put(L, &c->b, tmp, 8);
    }
    return;
  }
  case GW_PF_STR:
  case GW_PF_BYTES:
  case GW_PF_REST: {
    if (ty != LUA_TSTRING)
      enc_fail(c, "expected a string (%s), got %s", tname, lua_typename(L, ty));
    size_t n;
    const char *s = lua_tolstring(L, v, &n);
    if (c->w.charge && n > 16)
      gw__charge(L, n / 16);
    if (fd->type == GW_PF_BYTES && n != fd->n)
      enc_fail(c, "bytes(%u) needs exactly %u bytes, got %zu", fd->n, fd->n, n);
    if (fd->type != GW_PF_STR) {
      enc_put(L, &c->b, s, n);
      return;
    }
    size_t size;
    int rc = gw_str_size(f, s, n, &size);
    if (rc == -EINVAL)
      enc_fail(c, "a NUL-terminated string cannot hold a NUL byte");
    if (rc < 0)
      enc_fail(c, "a %zu-byte string does not fit a %u-byte length", n,
               (unsigned)f->str_length_size);
    gw_str_put(f, enc_room(L, &c->b, size), s, n);
    c->b.len += size;
    return;
  }
  case GW_PF_ARRAY: {
    if (ty != LUA_TTABLE)
      enc_fail(c, "expected a list of tables (array), got %s", lua_typename(L, ty));
    size_t n = lua_rawlen(L, v);
    if (fd->count_kind == GW_COUNT_FIXED && n != fd->n)
      enc_fail(c, "the array needs exactly %u elements, got %zu", fd->n, n);
    luaL_checkstack(L, 4, "pkt:encode: too deep");
    for (size_t i = 1; i <= n; i++) {
      size_t mark = path_push(&c->w, NULL, i);
      if (lua_rawgeti(L, v, (lua_Integer)i) != LUA_TTABLE)
        enc_fail(c, "expected a table, got %s", luaL_typename(L, -1));
      enc_struct(c, fd->fields, fd->nfields, lua_gettop(L), false);
      lua_pop(L, 1);
      path_pop(&c->w, mark);
    }
    return;
  }
  default: {
    int isint = 0;
    lua_Integer x = ty == LUA_TNUMBER ? lua_tointegerx(L, v, &isint) : 0;
    if (!isint)
      enc_fail(c, "expected an integer (%s), got %s", tname,
               ty == LUA_TNUMBER ? "a float" : lua_typename(L, ty));
    enc_int(c, fd, x);
    return;
  }
  }
}

/* The value of the count field fd (of the array fs[fd->counts]) when the
 * array is written from t or from the frame's old bytes; false when the
 * field is optional and there is nothing to count. */
static bool count_value(enc_ctx *c, const gw_pkt_field *fs, size_t i, int t, bool old,
                        lua_Integer *n) {
  lua_State *L = c->w.L;
  const gw_pkt_field *fd = &fs[i];
  int at = lua_getfield(L, t, fs[fd->counts].name);
  lua_Integer len = at == LUA_TTABLE ? (lua_Integer)lua_rawlen(L, -1) : 0;
  lua_pop(L, 1);
  if (at == LUA_TTABLE)
    *n = len;
  else if (at == LUA_TNIL && old && (size_t)fd->counts < c->old_present) {
    old_bytes_check(c);
    *n = read_int(&c->w, fd, c->old_starts[i]); /* the old array stays */
  }
  else if (at == LUA_TNIL && fd->optional)
    return false;
  else
    *n = 0; /* the array's own check reports what is wrong with it */
  return true;
}

/* Writes the fields of table t. At the top level a field t lacks keeps
 * the frame's value (its old bytes); in arrays every field is needed.
 * Count fields are computed from their arrays, never taken from t. */
static void enc_struct(enc_ctx *c, const gw_pkt_field *fs, size_t nf, int t, bool top) {
  lua_State *L = c->w.L;
  bool old = top && c->old_starts;
  const char *stopped = NULL; /* the optional field the body ends before */
  for (size_t i = 0; i < nf; i++) {
    const gw_pkt_field *fd = &fs[i];
    size_t mark = path_push(&c->w, fd->name, 0);
    int ty = lua_getfield(L, t, fd->name);
    lua_Integer n;
    if (stopped) {
      if (ty != LUA_TNIL && fd->counts < 0)
        enc_fail(c, "set, but the optional field %s before it is not", stopped);
    } else if (fd->counts >= 0) {
      if (count_value(c, fs, i, t, old, &n))
        enc_int(c, fd, n);
      else
        stopped = fd->name;
    } else if (ty != LUA_TNIL) {
      enc_value(c, fd, lua_gettop(L));
    } else if (old && i < c->old_present) {
      old_bytes_check(c);
      enc_put(L, &c->b, c->w.d + c->old_starts[i], c->old_starts[i + 1] - c->old_starts[i]);
    } else if (fd->optional) {
      stopped = fd->name;
    } else {
      enc_fail(c, "missing (%s, required)", gw_pkt_field_type_names[fd->type]);
    }
    lua_pop(L, 1);
    path_pop(&c->w, mark);
  }
  /* Bytes after the last defined field (a field a patch appended) stay. */
  if (old && !stopped && c->old_present == nf) {
    old_bytes_check(c);
    enc_put(L, &c->b, c->w.d + c->old_starts[nf], c->w.len - c->old_starts[nf]);
  }
}

/* Encodes table t (index) for def into a body on the stack's new top slot;
 * old: the packet whose current fields fill in what t lacks, or NULL. */
static void encode(lua_State *L, const gw_packet_def *def, const gw_framing *f, int t,
                   const gw_packet *old, const char *who, bool light, enc_buf *out) {
  enc_ctx c;
  gw_packet none = {.f = f};
  walk_init(&c.w, L, old ? old : &none, def, who, light);
  c.b = (enc_buf){NULL, 0, 0, 0};
  c.old = old;
  c.old_starts = NULL;
  c.old_present = 0;
  lua_pushnil(L);
  c.b.slot = lua_gettop(L);
  size_t starts_local[def->nfields + 1];
  if (old) {
    size_t off = gw__packet_body_offset(old);
    if (off > old->len)
      off = old->len;
    /* Measure what the frame holds now: a frame that does not fit its
     * definition gives the fields it has up to where it stops fitting. */
    walk_struct(&c.w, def->fields, def->nfields, &off, starts_local, &c.old_present);
    c.w.depth = 0;
    c.old_starts = starts_local;
  }
  enc_struct(&c, def->fields, def->nfields, t, true);
  *out = c.b;
}

/* pkt:encode(t): the body rebuilt from t over the frame's current fields. */
int gw__pkt_encode(lua_State *L) {
  gw_packet *p = gw__check_packet(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  bool light = lua_toboolean(L, lua_upvalueindex(1));
  const gw_packet_def *def = need_def(L, p, light, "pkt:encode");
  if (def->keepalive)
    return luaL_error(L, "pkt:encode: %s is a keep-alive: it has no body", def->name);
  lua_settop(L, 2);
  enc_buf b;
  encode(L, def, p->f, 2, p, "pkt:encode", light, &b);
  gw__packet_set_body(L, 1, p, b.p ? b.p : (const uint8_t *)"", b.len, "pkt:encode");
  lua_settop(L, 1);
  return 1;
}

void gw__proto_build(lua_State *L, const gw_proto *p, const gw_framing *f,
                     int name_idx, int t_idx, bool charge) {
  const gw_packet_def *def = find_named(L, p, luaL_checkstring(L, name_idx), "gw.packet",
                                        NULL);
  t_idx = lua_absindex(L, t_idx);
  if (lua_isnoneornil(L, t_idx)) {
    lua_newtable(L);
    lua_replace(L, t_idx);
  }
  luaL_checktype(L, t_idx, LUA_TTABLE);
  gw_side side = def->sides[GW_SERVER] ? GW_SERVER : GW_CLIENT;
  if (def->keepalive) {
    uint8_t frame[16];
    long r = gw_frame_encode(f, side, frame, sizeof frame, NULL, NULL, 0);
    if (r < 0)
      luaL_error(L, "gw.packet: the %s framing cannot build a keep-alive", f->name);
    lua_pushlstring(L, (const char *)frame, (size_t)r);
    return;
  }
  enc_buf b;
  encode(L, def, f, t_idx, NULL, "gw.packet", charge, &b);
  gw_frame_push_built(L, f, (lua_Integer)def->opcode, b.p ? b.p : (const uint8_t *)"",
                      b.len);
}
