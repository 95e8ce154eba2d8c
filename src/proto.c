/* proto.c: loads a protocol's packets.lua (docs/protocols.md) into the
 * plain structures of proto.h, checks them against the listener's framing,
 * and indexes them by (side, opcode).
 *
 * The file is data: it runs as text in an empty environment (no library,
 * not even the string metatable) under an instruction and a memory limit,
 * in a Lua state of its own that is closed before returning. The table it
 * returns is walked in name order, so the first problem is always the same
 * one error message.
 *
 * Everything after lua_newstate runs in one protected call: our errors and
 * Lua's longjmp back to gw_proto_load, which frees what was half built.
 * Memory taken here hangs off the gw_proto at the moment it is taken. */
#include "proto.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include "suggest.h"

/* What a packets.lua may cost: a real one is a few thousand instructions
 * and kilobytes; the caps stop a mistake in well under a second. */
#define PROTO_MAX_INSTRUCTIONS 10000000u
#define PROTO_HOOK_STEP 1000
#define PROTO_MEMORY_MAX (16u * 1024u * 1024u)
#define PROTO_NAME_MAX 64      /* packet and field names */
#define PROTO_DEPTH_MAX 8      /* arrays in arrays */
#define PROTO_FIELDS_MAX 1024  /* per struct */
#define PROTO_BYTES_MAX (1u << 24)
#define PROTO_COUNT_MAX 65535u /* count = N */
#define WHERE_MAX 160

const char *const gw_pkt_field_type_names[] = {
  [GW_PF_U8] = "u8", [GW_PF_U16] = "u16", [GW_PF_U32] = "u32",
  [GW_PF_U64] = "u64", [GW_PF_I8] = "i8", [GW_PF_I16] = "i16",
  [GW_PF_I32] = "i32", [GW_PF_I64] = "i64", [GW_PF_F32] = "f32",
  [GW_PF_F64] = "f64", [GW_PF_STR] = "str", [GW_PF_BYTES] = "bytes(N)",
  [GW_PF_REST] = "bytes", [GW_PF_ARRAY] = "array",
};

unsigned gw_pkt_field_int_size(gw_pkt_field_type t) {
  switch (t) {
  case GW_PF_U8: case GW_PF_I8: return 1;
  case GW_PF_U16: case GW_PF_I16: return 2;
  case GW_PF_U32: case GW_PF_I32: return 4;
  case GW_PF_U64: case GW_PF_I64: return 8;
  default: return 0;
  }
}

bool gw_pkt_field_is_signed(gw_pkt_field_type t) {
  return t == GW_PF_I8 || t == GW_PF_I16 || t == GW_PF_I32 || t == GW_PF_I64;
}

typedef struct index_entry {
  uint64_t key;          /* side << 32 | opcode */
  const gw_packet_def *p;
} index_entry;

typedef struct proto_index {
  index_entry *e;
  size_t n;
  const gw_packet_def *keepalive[GW_SIDES];
} proto_index;

typedef struct proto_ctx {
  lua_State *L;
  size_t used;
  uint64_t instructions;
  bool timed_out;
  const char *file;
  const gw_framing *f;
  gw_proto *out;
  char *err;
  size_t errlen;
  bool failed;           /* err holds our message */
} proto_ctx;

/* ---- the throwaway state ---- */

static void *proto_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  proto_ctx *c = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    c->used -= old;
    return NULL;
  }
  if (nsize > old && nsize - old > PROTO_MEMORY_MAX - c->used)
    return NULL;
  void *p = realloc(ptr, nsize);
  if (p)
    c->used = c->used - old + nsize;
  return p;
}

static void proto_hook(lua_State *L, lua_Debug *ar) {
  proto_ctx *c;
  lua_getallocf(L, (void **)&c);
  c->instructions += PROTO_HOOK_STEP;
  if (c->instructions < PROTO_MAX_INSTRUCTIONS)
    return;
  /* Data files have no pcall to swallow this; raising once is enough. */
  c->timed_out = true;
  lua_getinfo(L, "Sl", ar);
  lua_pushfstring(L, "%s:%d: packet definitions took too long to run",
                  ar->short_src, ar->currentline);
  lua_error(L);
}

static _Noreturn void fail(proto_ctx *c, const char *where, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static _Noreturn void fail(proto_ctx *c, const char *where, const char *fmt, ...) {
  char msg[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(c->err, c->errlen, "%s: %s%s%s", c->file, where ? where : "",
           where ? ": " : "", msg);
  c->failed = true;
  lua_pushnil(c->L); /* err holds the message */
  lua_error(c->L);
  abort();         /* lua_error longjmps */
}

static void *xcalloc(proto_ctx *c, size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p)
    luaL_error(c->L, "not enough memory");
  return p;
}

static char *xstrndup(proto_ctx *c, const char *s, size_t len) {
  char *p = xcalloc(c, len + 1, 1);
  memcpy(p, s, len);
  return p;
}

/* ---- names ---- */

static bool is_name(const char *s, size_t len) {
  if (len == 0 || len > PROTO_NAME_MAX || isdigit((unsigned char)s[0]))
    return false;
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '_')
      return false;
  return true;
}

/* A value as a message shows it: a short quoted string, or its type. */
static void show(lua_State *L, int idx, char *out, size_t cap) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    snprintf(out, cap, "\"%.*s%s\"", len > 40 ? 40 : (int)len, s,
             len > 40 ? "..." : "");
  } else if (lua_isinteger(L, idx)) {
    snprintf(out, cap, "%lld", (long long)lua_tointeger(L, idx));
  } else {
    snprintf(out, cap, "a %s", luaL_typename(L, idx));
  }
}

/* The closest of n names to s if it is close enough to be a typo. */
static const char *closest(const char *s, const char *const *names, size_t n,
                           size_t stride) {
  size_t len = strlen(s);
  size_t best_d = len <= 3 ? 2 : len <= 8 ? 3 : 4;
  const char *best = NULL;
  for (size_t i = 0; i < n; i++) {
    const char *name = *(const char *const *)((const char *)names + i * stride);
    size_t d = gw_edit_distance(s, len, name, strlen(name));
    if (d < best_d) {
      best = name;
      best_d = d;
    }
  }
  return best;
}

/* ---- fields ---- */

size_t gw_pkt_fields_min_size(const gw_pkt_field *fs, size_t nf, const gw_framing *f) {
  size_t n = 0;
  for (size_t i = 0; i < nf; i++) {
    const gw_pkt_field *fd = &fs[i];
    size_t add;
    switch (fd->type) {
    case GW_PF_F32: add = 4; break;
    case GW_PF_F64: add = 8; break;
    case GW_PF_BYTES: add = fd->n; break;
    case GW_PF_REST: add = 0; break;
    case GW_PF_STR: add = f->str_length_size ? f->str_length_size : 1; break;
    case GW_PF_ARRAY: {
      /* nested fixed counts multiply: 65535^5 is past any frame */
      size_t el = fd->count_kind == GW_COUNT_FIXED
                      ? gw_pkt_fields_min_size(fd->fields, fd->nfields, f) : 0;
      add = el && fd->n > SIZE_MAX / el ? SIZE_MAX : fd->n * el;
      break;
    }
    default: add = gw_pkt_field_int_size(fd->type); break;
    }
    if (add > SIZE_MAX - n)
      return SIZE_MAX;
    n += add;
  }
  return n;
}

typedef struct type_name {
  const char *name;
  gw_pkt_field_type type;
} type_name;

static const type_name types[] = {
  {"u8", GW_PF_U8}, {"u16", GW_PF_U16}, {"u32", GW_PF_U32}, {"u64", GW_PF_U64},
  {"i8", GW_PF_I8}, {"i16", GW_PF_I16}, {"i32", GW_PF_I32}, {"i64", GW_PF_I64},
  {"f32", GW_PF_F32}, {"f64", GW_PF_F64}, {"str", GW_PF_STR},
  {"bytes", GW_PF_REST},
};
#define TYPE_LIST "u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 str bytes(N) bytes"

/* Reads "bytes(N)"; false if s is not of that shape. */
static bool parse_bytes_n(const char *s, size_t len, uint64_t *n) {
  if (len < 8 || memcmp(s, "bytes(", 6) != 0 || s[len - 1] != ')')
    return false;
  *n = 0;
  for (size_t i = 6; i < len - 1; i++) {
    if (!isdigit((unsigned char)s[i]) || *n > PROTO_BYTES_MAX)
      return false;
    *n = *n * 10 + (uint64_t)(s[i] - '0');
  }
  return true;
}

typedef struct walk {
  char where[WHERE_MAX]; /* "MC_ITEMS[2][1]" */
  size_t wlen;
  bool top;              /* the packet's own fields, not an array's */
  bool seen_optional;
} walk;

static size_t where_push(walk *w, lua_Integer i) {
  size_t mark = w->wlen;
  int n = snprintf(w->where + w->wlen, sizeof w->where - w->wlen, "[%lld]",
                   (long long)i);
  if (n > 0 && (size_t)n < sizeof w->where - w->wlen)
    w->wlen += (size_t)n;
  return mark;
}

static void where_pop(walk *w, size_t mark) {
  w->wlen = mark;
  w->where[mark] = '\0';
}

/* Splits a field's name: a trailing '?' makes it optional. */
static void take_name(proto_ctx *c, walk *w, gw_pkt_field *fd, const char *s, size_t len) {
  bool opt = len > 0 && s[len - 1] == '?';
  if (opt)
    len--;
  if (!is_name(s, len))
    fail(c, w->where, "bad field name \"%.*s\" (letters, digits and _, not "
         "starting with a digit, at most %d)", (int)(len > 64 ? 64 : len), s,
         PROTO_NAME_MAX);
  fd->name = xstrndup(c, s, len);
  if (opt) {
    if (!w->top)
      fail(c, w->where, "field %s: optional fields are for the end of the "
           "body, not inside an array", fd->name);
    fd->optional = true;
    w->seen_optional = true;
  } else if (w->seen_optional) {
    fail(c, w->where, "field %s must be optional (\"%s?\"): it comes after "
         "an optional field", fd->name, fd->name);
  }
}

static void parse_struct(proto_ctx *c, walk *w, int t, lua_Integer first,
                         gw_pkt_field **fields, size_t *nfields, int depth);

/* "type name" at the top of the stack into fd. */
static void parse_scalar(proto_ctx *c, walk *w, gw_pkt_field *fd) {
  size_t len;
  const char *s = lua_tolstring(c->L, -1, &len);
  const char *sp = memchr(s, ' ', len);
  if (!sp)
    fail(c, w->where, "a field is \"type name\", got \"%.*s\"",
         (int)(len > 40 ? 40 : len), s);
  size_t tlen = (size_t)(sp - s);
  const char *name = sp + 1;
  size_t nlen = len - tlen - 1;
  while (nlen && *name == ' ') {
    name++;
    nlen--;
  }
  uint64_t n;
  bool found = false;
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
    if (strlen(types[i].name) == tlen && memcmp(types[i].name, s, tlen) == 0) {
      fd->type = types[i].type;
      found = true;
    }
  }
  if (!found && parse_bytes_n(s, tlen, &n)) {
    if (n == 0 || n > PROTO_BYTES_MAX)
      fail(c, w->where, "bytes(%llu): the size must be 1 to %u",
           (unsigned long long)n, PROTO_BYTES_MAX);
    fd->type = GW_PF_BYTES;
    fd->n = (uint32_t)n;
    found = true;
  }
  if (!found)
    fail(c, w->where, "unknown type \"%.*s\" (expected " TYPE_LIST ")",
         (int)(tlen > 40 ? 40 : tlen), s);
  take_name(c, w, fd, name, nlen);
  if (fd->type == GW_PF_STR && !c->f->str_length_size && !c->f->str_nul)
    fail(c, w->where, "field %s: the framing \"%s\" has no string type",
         fd->name, c->f->name);
}

static const char *const array_keys[] = {"count", NULL};

/* An unknown key of table t (at the top: its key), with a suggestion. */
static _Noreturn void fail_key(proto_ctx *c, walk *w, const char *const known[],
                               size_t nknown, const char *what) {
  char shown[64];
  show(c->L, -1, shown, sizeof shown);
  const char *near = NULL;
  if (lua_type(c->L, -1) == LUA_TSTRING)
    near = closest(lua_tostring(c->L, -1), known, nknown, sizeof *known);
  if (near)
    fail(c, w->where, "unknown key %s in %s (did you mean \"%s\"?)", shown,
         what, near);
  fail(c, w->where, "unknown key %s in %s", shown, what);
}

/* The array of structs at the top of the stack into fd. */
static void parse_array(proto_ctx *c, walk *w, gw_pkt_field *fd, gw_pkt_field *siblings,
                        size_t index, int depth) {
  lua_State *L = c->L;
  int t = lua_gettop(L);
  if (depth >= PROTO_DEPTH_MAX)
    fail(c, w->where, "arrays nest at most %d deep", PROTO_DEPTH_MAX);
  fd->type = GW_PF_ARRAY;
  fd->counts = -1;
  /* Keys: 1.. and count, nothing else. */
  lua_Integer n = (lua_Integer)lua_rawlen(L, t);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    bool ok = lua_isinteger(L, -1) ? lua_tointeger(L, -1) >= 1 &&
                                         lua_tointeger(L, -1) <= n
              : lua_type(L, -1) == LUA_TSTRING &&
                    strcmp(lua_tostring(L, -1), "count") == 0;
    if (!ok)
      fail_key(c, w, array_keys, 1, "an array");
  }
  if (lua_rawgeti(L, t, 1) != LUA_TSTRING || strchr(lua_tostring(L, -1), ' '))
    fail(c, w->where, "an array starts with its name: { \"items\", count = "
         "\"field\", fields... }");
  size_t len;
  const char *s = lua_tolstring(L, -1, &len);
  take_name(c, w, fd, s, len);
  lua_pop(L, 1);
  if (n < 2)
    fail(c, w->where, "array %s has no fields", fd->name);
  int ct = lua_getfield(L, t, "count");
  if (ct == LUA_TSTRING && strcmp(lua_tostring(L, -1), "*") == 0) {
    fd->count_kind = GW_COUNT_REST;
  } else if (ct == LUA_TSTRING) {
    const char *cname = lua_tostring(L, -1);
    size_t i = 0;
    while (i < index && strcmp(siblings[i].name, cname) != 0)
      i++;
    if (i == index)
      fail(c, w->where, "array %s: count field \"%s\" is not a field before "
           "it in the same struct", fd->name, cname);
    if (!gw_pkt_field_int_size(siblings[i].type))
      fail(c, w->where, "array %s: count field \"%s\" is %s, not an integer",
           fd->name, cname, gw_pkt_field_type_names[siblings[i].type]);
    if (siblings[i].counts >= 0)
      fail(c, w->where, "array %s: count field \"%s\" already counts array %s",
           fd->name, cname, siblings[siblings[i].counts].name);
    fd->count_kind = GW_COUNT_FIELD;
    fd->count_field = i;
    siblings[i].counts = (long)index;
  } else if (ct == LUA_TNUMBER && lua_isinteger(L, -1) &&
             lua_tointeger(L, -1) >= 0 &&
             lua_tointeger(L, -1) <= (lua_Integer)PROTO_COUNT_MAX) {
    fd->count_kind = GW_COUNT_FIXED;
    fd->n = (uint32_t)lua_tointeger(L, -1);
  } else {
    char shown[64];
    show(L, -1, shown, sizeof shown);
    fail(c, w->where, "array %s: count must be the name of an earlier integer "
         "field, a number of elements (0 to %u) or \"*\", got %s", fd->name,
         PROTO_COUNT_MAX, shown);
  }
  lua_pop(L, 1);
  walk inner = *w;
  inner.top = false;
  inner.seen_optional = false;
  parse_struct(c, &inner, t, 2, &fd->fields, &fd->nfields, depth + 1);
  /* Elements of no bytes cannot be told apart: a tiny frame could claim
   * 65535 of them, and "*" would never end. */
  if (gw_pkt_fields_min_size(fd->fields, fd->nfields, c->f) == 0)
    fail(c, w->where, "array %s: an element takes no bytes (its fields are "
         "arrays of no elements)", fd->name);
}

/* Fields [first..#t] of table t into *fields. */
static void parse_struct(proto_ctx *c, walk *w, int t, lua_Integer first,
                         gw_pkt_field **fields, size_t *nfields, int depth) {
  lua_State *L = c->L;
  luaL_checkstack(L, 8, NULL);
  lua_Integer n = (lua_Integer)lua_rawlen(L, t);
  if (n - first + 1 > PROTO_FIELDS_MAX)
    fail(c, w->where, "more than %d fields", PROTO_FIELDS_MAX);
  size_t count = n >= first ? (size_t)(n - first + 1) : 0;
  gw_pkt_field *fs = xcalloc(c, count, sizeof *fs);
  *fields = fs;
  *nfields = count;
  for (size_t i = 0; i < count; i++)
    fs[i].counts = -1;
  for (size_t i = 0; i < count; i++) {
    size_t mark = where_push(w, first + (lua_Integer)i);
    int ty = lua_rawgeti(L, t, first + (lua_Integer)i);
    if (ty == LUA_TSTRING) {
      parse_scalar(c, w, &fs[i]);
    } else if (ty == LUA_TTABLE) {
      parse_array(c, w, &fs[i], fs, i, depth);
    } else {
      char shown[64];
      show(L, -1, shown, sizeof shown);
      fail(c, w->where, "a field is \"type name\" or an array { \"name\", "
           "count = ..., fields... }, got %s", shown);
    }
    lua_pop(L, 1);
    for (size_t j = 0; j < i; j++)
      if (strcmp(fs[j].name, fs[i].name) == 0)
        fail(c, w->where, "field %s is defined twice (also [%lld])", fs[i].name,
             (long long)(first + (lua_Integer)j));
    bool rest = fs[i].type == GW_PF_REST ||
                (fs[i].type == GW_PF_ARRAY && fs[i].count_kind == GW_COUNT_REST);
    if (rest && (!w->top || i + 1 < count))
      fail(c, w->where, "field %s takes the rest of the body: it must be the "
           "packet's last field%s", fs[i].name, w->top ? "" : ", not inside an array");
    where_pop(w, mark);
  }
}

/* ---- packets ---- */

static const char *const packet_keys[] = {"side", "opcode", "keepalive"};

static void parse_packet(proto_ctx *c, gw_packet_def *p, int t) {
  lua_State *L = c->L;
  walk w = {.top = true};
  snprintf(w.where, sizeof w.where, "%s", p->name);
  w.wlen = strlen(w.where);
  if (lua_type(L, t) != LUA_TTABLE) {
    char shown[64];
    show(L, t, shown, sizeof shown);
    fail(c, w.where, "a packet is a table { side = ..., opcode = ..., "
         "fields... }, got %s", shown);
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, t);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    bool ok;
    if (lua_isinteger(L, -1)) {
      ok = lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= n;
    } else {
      ok = false;
      for (size_t i = 0; i < 3 && lua_type(L, -1) == LUA_TSTRING; i++)
        ok = ok || strcmp(lua_tostring(L, -1), packet_keys[i]) == 0;
    }
    if (!ok)
      fail_key(c, &w, packet_keys, 3, "a packet");
  }
  /* side */
  lua_getfield(L, t, "side");
  const char *side = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
  if (strcmp(side, "client") == 0)
    p->sides[GW_CLIENT] = true;
  else if (strcmp(side, "server") == 0)
    p->sides[GW_SERVER] = true;
  else if (strcmp(side, "both") == 0)
    p->sides[GW_CLIENT] = p->sides[GW_SERVER] = true;
  else {
    char shown[64];
    show(L, -1, shown, sizeof shown);
    fail(c, w.where, "side must be \"client\", \"server\" or \"both\", got %s",
         lua_isnil(L, -1) ? "nothing" : shown);
  }
  lua_pop(L, 1);
  /* keepalive or opcode */
  int kt = lua_getfield(L, t, "keepalive");
  int ot = lua_getfield(L, t, "opcode");
  if (kt != LUA_TNIL && !(kt == LUA_TBOOLEAN && lua_toboolean(L, -2)))
    fail(c, w.where, "keepalive must be true or absent");
  if (kt != LUA_TNIL) {
    p->keepalive = true;
    if (ot != LUA_TNIL)
      fail(c, w.where, "a keepalive packet has no opcode");
    if (!c->f->keepalive)
      fail(c, w.where, "the framing \"%s\" has no keep-alive frame", c->f->name);
    if (n > 0)
      fail(c, w.where, "a keepalive packet has no fields (the frame is its "
           "length field alone)");
  } else {
    if (ot == LUA_TNIL)
      fail(c, w.where, "opcode missing (or keepalive = true)");
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0) {
      char shown[64];
      show(L, -1, shown, sizeof shown);
      fail(c, w.where, "opcode must be an integer of 0 or more, got %s", shown);
    }
    lua_Integer op = lua_tointeger(L, -1);
    unsigned size = c->f->opcode_size;
    if (!size)
      fail(c, w.where, "the framing \"%s\" has no opcode", c->f->name);
    uint64_t max = size >= 4 ? UINT32_MAX : (1ull << (8 * size)) - 1;
    if ((uint64_t)op > max)
      fail(c, w.where, "opcode %lld does not fit the framing's %u-byte opcode "
           "(at most %llu)", (long long)op, size, (unsigned long long)max);
    p->opcode = (uint32_t)op;
  }
  lua_pop(L, 2);
  parse_struct(c, &w, t, 1, &p->fields, &p->nfields, 0);
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(((const gw_packet_def *)a)->name, ((const gw_packet_def *)b)->name);
}

static int entry_cmp(const void *a, const void *b) {
  uint64_t x = ((const index_entry *)a)->key, y = ((const index_entry *)b)->key;
  return x < y ? -1 : x > y;
}

/* Entries by key, and in name order (the packets array's) among equals. */
static int entry_order(const void *a, const void *b) {
  const index_entry *x = a, *y = b;
  if (x->key != y->key)
    return x->key < y->key ? -1 : 1;
  return x->p < y->p ? -1 : x->p > y->p;
}

/* Builds the (side, opcode) index: sorted, so a file of every opcode loads
 * in n log n (comparing each with all the others took seconds at 65536).
 * The packets are in name order; a clash reports the first packet, in
 * that order, whose opcode an earlier one has, as a walk in name order
 * would. */
static void build_index(proto_ctx *c) {
  gw_proto *pr = c->out;
  proto_index *ix = xcalloc(c, 1, sizeof *ix);
  pr->index = ix;
  ix->e = xcalloc(c, pr->npackets * GW_SIDES, sizeof *ix->e);
  for (size_t i = 0; i < pr->npackets; i++) {
    const gw_packet_def *p = &pr->packets[i];
    for (int s = 0; s < GW_SIDES; s++) {
      if (!p->sides[s])
        continue;
      if (p->keepalive) {
        if (ix->keepalive[s])
          fail(c, p->name, "%s keep-alive is %s's too", gw_side_name((gw_side)s),
               ix->keepalive[s]->name);
        ix->keepalive[s] = p;
        continue;
      }
      ix->e[ix->n++] = (index_entry){(uint64_t)s << 32 | p->opcode, p};
    }
  }
  qsort(ix->e, ix->n, sizeof *ix->e, entry_order);
  const index_entry *clash = NULL, *first = NULL;
  for (size_t j = 1, g = 0; j < ix->n; j++) {
    if (ix->e[j].key != ix->e[g].key) {
      g = j;
      continue;
    }
    /* e[j] clashes with its group's first; keep the earliest packet (then
     * the client side, as the walk checks it first) */
    if (!clash || ix->e[j].p < clash->p ||
        (ix->e[j].p == clash->p && ix->e[j].key < clash->key)) {
      clash = &ix->e[j];
      first = &ix->e[g];
    }
  }
  if (clash)
    fail(c, clash->p->name, "%s opcode %u is %s's too",
         gw_side_name((gw_side)(clash->key >> 32)), clash->p->opcode, first->p->name);
}

static int proto_main(lua_State *L) {
  proto_ctx *c = lua_touserdata(L, 1);
  if (luaL_loadfilex(L, c->file, "t") != LUA_OK)
    return lua_error(L);
  lua_newtable(L); /* the chunk's _ENV: nothing */
  lua_setupvalue(L, -2, 1);
  lua_sethook(L, proto_hook, LUA_MASKCOUNT, PROTO_HOOK_STEP);
  lua_call(L, 0, 1);
  lua_sethook(L, NULL, 0, 0);
  int t = lua_gettop(L);
  if (lua_type(L, t) != LUA_TTABLE) {
    char shown[64];
    show(L, t, shown, sizeof shown);
    fail(c, NULL, "must return a table of packets by name, got %s",
         lua_isnil(L, t) ? "nothing" : shown);
  }
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
      char shown[64];
      show(L, -1, shown, sizeof shown);
      fail(c, NULL, "packets are named: NAME = { ... }, got the key %s", shown);
    }
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    if (!is_name(s, len))
      fail(c, NULL, "bad packet name \"%.*s\" (letters, digits and _, not "
           "starting with a digit, at most %d)", (int)(len > 64 ? 64 : len), s,
           PROTO_NAME_MAX);
    n++;
  }
  c->out->packets = xcalloc(c, n, sizeof *c->out->packets);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    c->out->packets[c->out->npackets++].name =
        xstrndup(c, lua_tostring(L, -1), lua_rawlen(L, -1));
  }
  qsort(c->out->packets, n, sizeof *c->out->packets, name_cmp);
  for (size_t i = 0; i < n; i++) {
    gw_packet_def *p = &c->out->packets[i];
    lua_getfield(L, t, p->name);
    parse_packet(c, p, lua_gettop(L));
    lua_pop(L, 1);
  }
  build_index(c);
  return 0;
}

/* The message of a failed load that is not ours: Lua's own already start
 * "path:LINE:" or read "cannot open path: why". */
static void lua_message(const char *path, const char *msg, char *err, size_t errlen) {
  if (!msg)
    msg = "error";
  bool placed = strncmp(msg, path, strlen(path)) == 0 ||
                strncmp(msg, "cannot open ", 12) == 0;
  snprintf(err, errlen, "%s%s%s", placed ? "" : path, placed ? "" : ": ", msg);
}

int gw_proto_load(const char *path, const gw_framing *f, gw_proto *out, char *err,
                  size_t errlen) {
  proto_ctx c = {.file = path, .f = f, .out = out, .err = err, .errlen = errlen};
  memset(out, 0, sizeof *out);
  if (errlen)
    err[0] = '\0';
  if (!(out->path = strdup(path)) || !(c.L = lua_newstate(proto_alloc, &c))) {
    free(out->path);
    out->path = NULL;
    snprintf(err, errlen, "%s: out of memory", path);
    return -ENOMEM;
  }
  lua_pushcfunction(c.L, proto_main);
  lua_pushlightuserdata(c.L, &c);
  bool ok = lua_pcall(c.L, 1, 0, 0) == LUA_OK;
  if (!ok && !c.failed)
    lua_message(path, lua_tostring(c.L, -1), err, errlen);
  lua_close(c.L);
  if (ok)
    return 0;
  gw_proto_free(out);
  return -EINVAL;
}

static void free_fields(gw_pkt_field *fs, size_t n) {
  if (!fs)
    return;
  for (size_t i = 0; i < n; i++) {
    free(fs[i].name);
    free_fields(fs[i].fields, fs[i].nfields);
  }
  free(fs);
}

void gw_proto_free(gw_proto *p) {
  if (!p)
    return;
  for (size_t i = 0; i < p->npackets; i++) {
    free(p->packets[i].name);
    free_fields(p->packets[i].fields, p->packets[i].nfields);
  }
  free(p->packets);
  proto_index *ix = p->index;
  if (ix)
    free(ix->e);
  free(ix);
  free(p->path);
  memset(p, 0, sizeof *p);
}

const gw_packet_def *gw_proto_find(const gw_proto *p, const char *name) {
  if (!p || !name)
    return NULL;
  gw_packet_def key = {.name = (char *)name};
  return bsearch(&key, p->packets, p->npackets, sizeof *p->packets, name_cmp);
}

const gw_packet_def *gw_proto_lookup(const gw_proto *p, gw_side from, bool has_opcode,
                                     uint32_t opcode) {
  const proto_index *ix = p ? p->index : NULL;
  if (!ix)
    return NULL;
  if (!has_opcode)
    return ix->keepalive[from];
  index_entry key = {.key = (uint64_t)from << 32 | opcode};
  const index_entry *e = bsearch(&key, ix->e, ix->n, sizeof *ix->e, entry_cmp);
  return e ? e->p : NULL;
}

const char *gw_proto_suggest(const gw_proto *p, const char *name) {
  if (!p || !name || !p->npackets)
    return NULL;
  return closest(name, (const char *const *)&p->packets[0].name, p->npackets,
                 sizeof *p->packets);
}
