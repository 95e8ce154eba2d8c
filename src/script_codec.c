/* script_codec.c: codecs and the session pipeline from Lua.
 *
 *   local xor = gw.codec{ name = "xor",
 *     decode = function(bytes, state) ... return clear end,
 *     encode = function(bytes, state) ... return wire end }
 *   session:set_codec("client", xor, { body = true, offset = 6,
 *                                      ways = "both", state = { key = k } })
 *   session:set_codec("server", "zlib")             -- C, a stream codec
 *   session:set_codec("client", "xor", { body = true, key = "k" }) -- C
 *   session:set_framing("client", "top")            -- a preset or "raw"
 *   session:expect_raw("server", 1)                 -- one unframed byte
 *
 * A Lua codec is a gw_codec whose decode and encode call the script's
 * functions under the same limits as a handler (instructions, memory); an
 * error in one is the session's protocol error (decode) or a failed write
 * (encode), never the process's. Requests go to the host's pipeline in
 * order with the session's sends, after the frame being handled. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "pipe.h"
#include "script_int.h"

#define CODEC_MT "gangway.codec"

typedef struct lua_codec {
  gw_codec base;
  gw_script *s;
  int fn[2];                    /* decode, encode: registry refs */
  int state;                    /* the state table: a registry ref */
  char name[32];
} lua_codec;

/* Calls fn(bytes, state) and appends the string it returns to out. */
static int call(lua_codec *c, int fn, const uint8_t *in, size_t n, gw_bytes *out, char *err,
                size_t errlen) {
  gw_script *s = c->s;
  lua_State *L = s->L;
  if (s->depth) { /* codecs run between script calls, never inside one */
    snprintf(err, errlen, "codec %s called from inside a script call", c->name);
    return -EDEADLK;
  }
  int top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
  lua_pushlstring(L, (const char *)in, n);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->state);
  int st = gw__pcall(s, 2, 1);
  int rc = 0;
  if (st != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    /* the first line: the traceback is for the debug log */
    size_t len = msg ? strcspn(msg, "\n") : 0;
    snprintf(err, errlen, "codec %s: %.*s", c->name, (int)len, msg ? msg : "error");
    gw_debug("codec %s: %s", c->name, msg ? msg : "error");
    rc = -EPROTO;
  } else if (lua_type(L, -1) != LUA_TSTRING) {
    snprintf(err, errlen, "codec %s: %s returned %s, not a string", c->name,
             fn == c->fn[0] ? "decode" : "encode", luaL_typename(L, -1));
    rc = -EPROTO;
  } else {
    size_t len;
    const char *p = lua_tolstring(L, -1, &len);
    rc = gw_bytes_append(out, p, len);
  }
  lua_settop(L, top);
  return rc;
}

static int lc_decode(gw_codec *base, const uint8_t *in, size_t n, size_t *used, gw_bytes *out,
                     size_t max_out, char *err, size_t errlen) {
  (void)max_out; /* a Lua function returns its whole result */
  lua_codec *c = (lua_codec *)base;
  *used = n;
  return call(c, c->fn[0], in, n, out, err, errlen);
}

static int lc_encode(gw_codec *base, const uint8_t *in, size_t n, gw_bytes *out, char *err,
                     size_t errlen) {
  lua_codec *c = (lua_codec *)base;
  return call(c, c->fn[1], in, n, out, err, errlen);
}

static void lc_free(gw_codec *base) {
  lua_codec *c = (lua_codec *)base;
  lua_State *L = c->s->L;
  luaL_unref(L, LUA_REGISTRYINDEX, c->fn[0]);
  luaL_unref(L, LUA_REGISTRYINDEX, c->fn[1]);
  luaL_unref(L, LUA_REGISTRYINDEX, c->state);
  free(c);
}

static const gw_codec_type lua_codec_type = {"lua", lc_decode, lc_encode, lc_free};

/* gw.codec{ name =, decode =, encode = }: checks the table and returns it
 * marked as a codec (a fresh table, so later changes to the argument do
 * not reach sessions halfway). */
int gw__lua_codec(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_createtable(L, 0, 3);
  static const char *const fns[] = {"decode", "encode"};
  for (int i = 0; i < 2; i++) {
    if (lua_getfield(L, 1, fns[i]) != LUA_TFUNCTION)
      return luaL_error(L, "gw.codec: %s must be a function", fns[i]);
    lua_setfield(L, -2, fns[i]);
  }
  if (lua_getfield(L, 1, "name") == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushliteral(L, "lua");
  } else if (!lua_isstring(L, -1)) {
    return luaL_error(L, "gw.codec: name must be a string");
  }
  lua_setfield(L, -2, "name");
  luaL_setmetatable(L, CODEC_MT);
  return 1;
}

static bool is_codec(lua_State *L, int idx) {
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return false;
  luaL_getmetatable(L, CODEC_MT);
  bool yes = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return yes;
}

/* A gw_codec for the value at idx: "zlib", or a gw.codec table whose
 * instance gets the state table at sidx (a new one if none). */
static gw_codec *codec_for(lua_State *L, int idx, int sidx, int oidx) {
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *name = lua_tostring(L, idx);
    gw_codec *c;
    if (strcmp(name, "zlib") == 0) {
      c = gw_codec_zlib_new();
    } else if (strcmp(name, "xor") == 0) {
      size_t n = 0;
      const char *key = NULL;
      if (oidx) {
        lua_getfield(L, oidx, "key");
        key = lua_tolstring(L, -1, &n);
      }
      if (!key || !n) luaL_error(L, "session:set_codec: \"xor\" needs a key (a non-empty string)");
      c = gw_codec_xor_new((const uint8_t *)key, n);
    } else {
      luaL_error(L, "session:set_codec: unknown codec \"%s\" (C codecs: \"zlib\", \"xor\")", name);
      return NULL;
    }
    if (!c) luaL_error(L, "not enough memory");
    return c;
  }
  if (!is_codec(L, idx))
    luaL_argerror(L, idx, "a codec from gw.codec, \"zlib\", or nil to remove one");
  lua_codec *c = calloc(1, sizeof *c);
  if (!c) luaL_error(L, "not enough memory");
  c->base.type = &lua_codec_type;
  c->s = gw_script_of(L);
  lua_getfield(L, idx, "name");
  snprintf(c->name, sizeof c->name, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, idx, "decode");
  c->fn[0] = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, idx, "encode");
  c->fn[1] = luaL_ref(L, LUA_REGISTRYINDEX);
  if (sidx && lua_istable(L, sidx)) lua_pushvalue(L, sidx);
  else lua_newtable(L);
  c->state = luaL_ref(L, LUA_REGISTRYINDEX);
  return &c->base;
}

static gw_side check_side(lua_State *L, int idx) {
  static const char *const sides[] = {"client", "server", NULL};
  return (gw_side)luaL_checkoption(L, idx, NULL, sides);
}

/* The live session at 1 of a host with a pipeline. */
static gw_script_session *piped(lua_State *L, const char *method) {
  gw_session_ud *u = luaL_checkudata(L, 1, GW_SESSION_MT);
  gw_script *s = gw_script_of(L);
  if (!u->ss) luaL_error(L, "session:%s: session %I has ended", method, (lua_Integer)u->id);
  if (!s->ops.pipe) luaL_error(L, "session:%s: this host has no pipeline", method);
  if (s->loading_gen) luaL_error(L, "session:%s while scripts load: use gw.on_reload", method);
  return u->ss;
}

/* session:set_codec(side, codec | "zlib" | nil, { body =, offset =,
 * ways = "in" | "out" | "both", state = }) */
int gw__session_set_codec(lua_State *L) {
  gw_script_session *ss = piped(L, "set_codec");
  gw_side side = check_side(L, 2);
  bool body = false;
  lua_Integer offset = 0;
  int ways = GW_CODEC_BOTH, sidx = 0;
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TTABLE);
    lua_getfield(L, 4, "body");
    body = lua_toboolean(L, -1);
    lua_getfield(L, 4, "offset");
    offset = luaL_optinteger(L, -1, 0);
    if (offset < 0 || offset > 65535) luaL_error(L, "session:set_codec: offset out of 0..65535");
    lua_getfield(L, 4, "ways");
    static const char *const names[] = {"in", "out", "both", NULL};
    static const int values[] = {GW_CODEC_IN, GW_CODEC_OUT, GW_CODEC_BOTH};
    if (!lua_isnil(L, -1)) ways = values[luaL_checkoption(L, -1, NULL, names)];
    lua_getfield(L, 4, "state");
    sidx = lua_gettop(L);
    if (!lua_isnil(L, sidx) && !lua_istable(L, sidx)) luaL_error(L, "session:set_codec: state must be a table");
  }
  gw_codec *c = lua_isnoneornil(L, 3) || (lua_isboolean(L, 3) && !lua_toboolean(L, 3))
                    ? NULL
                    : codec_for(L, 3, sidx, lua_istable(L, 4) ? 4 : 0);
  if (c) c->offset = (uint32_t)offset;
  gw_pipe_op op = {.kind = body ? GW_PIPE_OP_BODY_CODEC : GW_PIPE_OP_STREAM_CODEC,
                   .side = side, .codec = c, .ways = ways};
  /* The outbox holds the codec (a reference of its own) until the host
   * takes it, or drops it with a failed call. */
  gw_codec_ref(c);
  gw__pipe_request(L, ss, &op);
  gw_codec_unref(c);
  return 0;
}

/* session:set_framing(side, "preset" | "raw" | { framing table }): the
 * framing as config.lua's listeners[i].framing takes it, checked the same
 * way (a handshake that ends in a length-prefixed protocol of its own). */
#define FRAMING_TABLE_COST 100 /* instructions: reading a table costs ~2.5 us */

int gw__session_set_framing(lua_State *L) {
  gw_script_session *ss = piped(L, "set_framing");
  gw_side side = check_side(L, 2);
  if (lua_type(L, 3) != LUA_TSTRING && !lua_istable(L, 3))
    luaL_typeerror(L, 3, "a preset name or a framing table");
  gw_framing f;
  /* A preset by name is a look-up; a table is walked by the config's own
   * code, charged to the instruction limit like the C work it is. */
  if (lua_type(L, 3) != LUA_TSTRING || gw_framing_preset(lua_tostring(L, 3), &f) < 0) {
    if (lua_istable(L, 3)) gw__charge(L, FRAMING_TABLE_COST);
    char err[512];
    if (gw_config_framing(L, 3, &f, "session:set_framing", err, sizeof err) < 0)
      return luaL_error(L, "%s", err);
  }
  gw_pipe_op op = {.kind = GW_PIPE_OP_FRAMING, .side = side, .framing = &f};
  gw__pipe_request(L, ss, &op);
  return 0;
}

/* session:expect_raw(side, n) */
int gw__session_expect_raw(lua_State *L) {
  gw_script_session *ss = piped(L, "expect_raw");
  gw_side side = check_side(L, 2);
  lua_Integer n = luaL_checkinteger(L, 3);
  if (n < 0) luaL_argerror(L, 3, "bytes >= 0");
  gw_pipe_op op = {.kind = GW_PIPE_OP_RAW, .side = side, .n = (uint64_t)n};
  gw__pipe_request(L, ss, &op);
  return 0;
}

void gw__codec_open_lib(lua_State *L) {
  luaL_newmetatable(L, CODEC_MT);
  lua_pushboolean(L, 0); /* out of scripts' reach */
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}
