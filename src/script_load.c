/* script_load.c: loading scripts: the sandbox each one runs in, its
 * `require`, the `gangway` module it gets (gw.on and the rest), and
 * generations: a reload loads every listener's scripts into new handler
 * tables in the same state and swaps them in only if all of them loaded.
 *
 * Each script gets its own _ENV: copies of the pure libraries, and a
 * metatable whose __index is a base of safe functions it cannot change or
 * reach. A listener with unsafe = true gets the whole standard library
 * instead. Scripts are loaded as text only. */
#include <ctype.h>
#include <errno.h>
#include <lualib.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "script_int.h"

LUALIB_API int luaopen_cjson(lua_State *L);
LUALIB_API int luaopen_cjson_safe(lua_State *L);

/* What one loaded script (or module) is bound to: its listener and the
 * generation that loaded it. User values: 1 its `gangway` table (made on
 * first require), 2 its directory. */
typedef struct gw_binding {
  gw_listener_rt *rt;    /* never freed before the state */
  unsigned gen;
  bool unsafe;
  bool module;           /* the listener's protocol module (init.lua) */
  char script[96];       /* file name, for log lines */
} gw_binding;

static gw_binding *check_binding(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, GW_BINDING_MT);
}

#define BINDING(L) check_binding(L, lua_upvalueindex(1))

static bool loading(const gw_script *s, const gw_binding *b) {
  return s->loading_gen && b->gen == s->loading_gen;
}

const gw_framing *gw__binding_framing(lua_State *L, int idx) {
  gw_binding *b = check_binding(L, idx);
  return loading(gw_script_of(L), b) ? &b->rt->next_framing
                                     : &b->rt->h.framing;
}

/* The generation a binding's calls go to: the one it loads in, else the
 * one running. */
static gw_gen_tables *binding_gen(lua_State *L, gw_binding *b) {
  return loading(gw_script_of(L), b) ? &b->rt->next : &b->rt->cur;
}

/* ---- the generation's extras ----
 * A table per listener and generation (its packet definitions, chat
 * commands, tell function), weakly keyed by the generation's client map:
 * it goes when the generation's tables are cleared. */

void gw__push_gen_extras(lua_State *L, const gw_gen_tables *g, bool create) {
  if (!luaL_getsubtable(L, LUA_REGISTRYINDEX, "gangway.gens")) {
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
  }
  if (g->map_ref[GW_CLIENT] == LUA_NOREF ||
      lua_rawgeti(L, LUA_REGISTRYINDEX, g->map_ref[GW_CLIENT]) != LUA_TTABLE) {
    if (g->map_ref[GW_CLIENT] != LUA_NOREF) lua_pop(L, 1);
    lua_pop(L, 1);
    lua_pushnil(L);
    return;
  }
  lua_pushvalue(L, -1);
  if (lua_rawget(L, -3) == LUA_TNIL && create) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushvalue(L, -2);  /* the map */
    lua_pushvalue(L, -2);  /* the extras */
    lua_rawset(L, -5);
  }
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* Pushes field k of the extras of g (nil when there is none). */
static int extras_field(lua_State *L, const gw_gen_tables *g, const char *k) {
  gw__push_gen_extras(L, g, false);
  if (!lua_istable(L, -1)) return LUA_TNIL; /* the nil pushed */
  int t = lua_getfield(L, -1, k);
  lua_remove(L, -2);
  return t;
}

/* ---- gw.on ---- */

static uint8_t *want_bits(lua_State *L, gw_gen_tables *g, gw_side side) {
  if (!g->bits[side]) {
    g->bits[side] = calloc(65536 / 8, 1);
    if (!g->bits[side]) luaL_error(L, "not enough memory");
  }
  return g->bits[side];
}

/* Appends the function at fidx to the array at tidx. */
static void append(lua_State *L, int tidx, int fidx) {
  lua_pushvalue(L, fidx);
  lua_rawseti(L, tidx, (lua_Integer)lua_rawlen(L, tidx) + 1);
}

/* Chains keep registration order across "*" and specific handlers: a new
 * opcode's chain starts as a copy of the "*" chain so far, and a new "*"
 * handler is appended to every chain. */
static void add_handler(lua_State *L, int map, lua_Integer key, int fidx) {
  if (key == -1) {
    lua_pushnil(L);
    while (lua_next(L, map)) {
      append(L, lua_gettop(L), fidx);
      lua_pop(L, 1);
    }
    if (lua_rawgeti(L, map, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      append(L, lua_gettop(L), fidx);
      lua_rawseti(L, map, -1);
    } else {
      lua_pop(L, 1);
    }
    return;
  }
  if (lua_rawgeti(L, map, key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    int chain = lua_gettop(L);
    if (lua_rawgeti(L, map, -1) == LUA_TTABLE) {
      lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_rawseti(L, chain, i);
      }
    }
    lua_pop(L, 1);
    lua_pushvalue(L, chain);
    lua_rawseti(L, map, key);
  }
  append(L, lua_gettop(L), fidx);
  lua_pop(L, 1);
}

static lua_Integer check_opcode(lua_State *L, const gw_framing *f, int idx) {
  int isnum;
  lua_Integer op = lua_tointegerx(L, idx, &isnum);
  if (!isnum)
    luaL_error(L, "gw.on: opcodes are integers or packet names, a list of "
               "them, or \"*\" (got %s)", luaL_typename(L, idx));
  if (!f->opcode_size)
    luaL_error(L, "gw.on: the %s framing has no opcode: use \"*\"", f->name);
  lua_Integer max = f->opcode_size >= 4
                        ? (lua_Integer)UINT32_MAX
                        : ((lua_Integer)1 << (8 * f->opcode_size)) - 1;
  if (op < 0 || op > max)
    luaL_error(L, "gw.on: opcode %I out of range 0..%I for the %s framing",
               op, max, f->name);
  return op;
}

/* The chain key of one opcode argument of gw.on: an integer, or a packet
 * name resolved with the listener's definitions (GW_KEEPALIVE_KEY for the
 * keep-alive). */
static lua_Integer handler_key(lua_State *L, gw_binding *b, gw_side side, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING && strcmp(lua_tostring(L, idx), "*"))
    return gw__proto_resolve(L, b->rt->next.proto, side, lua_tostring(L, idx),
                             b->rt->h.listener);
  return check_opcode(L, &b->rt->next_framing, idx);
}

static int gw_on(lua_State *L) {
  static const char *const sides[] = {"client", "server", NULL};
  gw_script *s = gw_script_of(L);
  gw_binding *b = BINDING(L);
  if (!loading(s, b))
    return luaL_error(L, "gw.on: handlers are registered while the script "
                      "loads, not later");
  gw_side side = (gw_side)luaL_checkoption(L, 1, NULL, sides);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  gw_gen_tables *g = &b->rt->next;
  lua_settop(L, 3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->map_ref[side]); /* 4 */
  if (lua_type(L, 2) == LUA_TSTRING && !strcmp(lua_tostring(L, 2), "*")) {
    add_handler(L, 4, -1, 3);
    g->any[side] = g->all[side] = true;
    if (g->star_ref[side] == LUA_NOREF) {
      lua_rawgeti(L, 4, -1);
      g->star_ref[side] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
  }
  /* Check every opcode before registering any. */
  lua_Integer n = 1;
  if (lua_istable(L, 2)) {
    n = (lua_Integer)lua_rawlen(L, 2);
    if (n == 0) return luaL_error(L, "gw.on: empty list of opcodes");
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, 2, i);
      handler_key(L, b, side, -1);
      lua_pop(L, 1);
    }
  } else {
    handler_key(L, b, side, 2);
  }
  for (lua_Integer i = 1; i <= n; i++) {
    lua_Integer op;
    if (lua_istable(L, 2)) {
      lua_rawgeti(L, 2, i);
      op = handler_key(L, b, side, -1);
      lua_pop(L, 1);
    } else {
      op = handler_key(L, b, side, 2);
    }
    add_handler(L, 4, op, 3);
    if (op == GW_KEEPALIVE_KEY) {
      g->keepalive[side] = true;
    } else if (op < 65536) {
      uint8_t *bits = want_bits(L, g, side);
      bits[op >> 3] |= (uint8_t)(1u << (op & 7));
    } else {
      g->wide[side] = true;
    }
    g->any[side] = true;
  }
  return 0;
}

/* Appends the function at 1 to the list behind *ref (made on first use). */
static void add_to_list(lua_State *L, int *ref) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (*ref == LUA_NOREF) {
    lua_newtable(L);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
  append(L, lua_gettop(L), 1);
}

static void check_loading(lua_State *L, const char *fn) {
  if (!loading(gw_script_of(L), BINDING(L)))
    luaL_error(L, "gw.%s: functions are registered while the script loads, "
               "not later", fn);
}

static int gw_on_connect(lua_State *L) {
  check_loading(L, "on_connect");
  add_to_list(L, &BINDING(L)->rt->next.connect_ref);
  return 0;
}

/* gw.admin(name, fn): serves /scripts/<name> on the admin endpoint. */
static int gw_admin_endpoint(lua_State *L) {
  check_loading(L, "admin");
  size_t n;
  const char *name = luaL_checklstring(L, 1, &n);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!n || n > 64 || strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != n)
    return luaL_error(L, "gw.admin: a name of 1 to 64 letters, digits, '_', '-' or '.', got \"%s\"", name);
  int *ref = &BINDING(L)->rt->next.admin_ref;
  if (*ref == LUA_NOREF) {
    lua_newtable(L);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, *ref);
  if (lua_getfield(L, -1, name) != LUA_TNIL)
    return luaL_error(L, "gw.admin: \"%s\" is served already", name);
  lua_pop(L, 1);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, name);
  return 0;
}

static int gw_on_close(lua_State *L) {
  check_loading(L, "on_close");
  add_to_list(L, &BINDING(L)->rt->next.close_ref);
  return 0;
}

static int gw_on_reload(lua_State *L) {
  check_loading(L, "on_reload");
  add_to_list(L, &gw_script_of(L)->reload_ref);
  return 0;
}

/* ---- the rest of gw ---- */

static int gw_build(lua_State *L) {
  const gw_framing *f = gw__binding_framing(L, lua_upvalueindex(1));
  if (lua_type(L, 1) == LUA_TSTRING) {
    lua_settop(L, 2);
    gw__proto_build(L, binding_gen(L, BINDING(L))->proto, f, 1, 2, true);
    return 1;
  }
  lua_Integer op = lua_isnil(L, 1) ? -1 : luaL_checkinteger(L, 1);
  size_t n = 0;
  const uint8_t *body = lua_isnoneornil(L, 2)
                            ? (const uint8_t *)""
                            : gw_body_arg(L, 2, &n);
  gw_frame_push_built(L, f, op, body, n);
  return 1;
}

static int gw_writer(lua_State *L) {
  gw_writer_push(L, gw__binding_framing(L, lua_upvalueindex(1)));
  return 1;
}

static lua_Integer check_ms(lua_State *L, int idx) {
  lua_Number ms = luaL_checknumber(L, idx);
  if (!(ms >= 0 && ms < 1e15)) luaL_argerror(L, idx, "milliseconds >= 0");
  return (lua_Integer)ms;
}

static int gw_after(lua_State *L) {
  gw__timer_start(L, BINDING(L)->rt, NULL, check_ms(L, 1), false, 2);
  return 1;
}

static int gw_every(lua_State *L) {
  gw__timer_start(L, BINDING(L)->rt, NULL, check_ms(L, 1), true, 2);
  return 1;
}

static int gw_now(lua_State *L) {
  gw_script *s = gw_script_of(L);
  lua_pushinteger(L, (lua_Integer)s->ops.now_ms(s->host));
  return 1;
}

static int gw_sessions(lua_State *L) {
  gw__push_sessions(L, BINDING(L)->rt);
  return 1;
}

/* ---- players and chat commands: the protocol module's contract ---- */

static void check_module(lua_State *L, const char *fn) {
  if (!BINDING(L)->module)
    luaL_error(L, "gw.%s: only the listener's protocol module (its init.lua) "
               "may call it", fn);
}

/* gw.players(): the sessions with a player, oldest first. */
static int gw_players(lua_State *L) {
  gw__push_players(L, BINDING(L)->rt, NULL);
  return 1;
}

/* gw.player(name): the session whose player.name is name, or nil. */
static int gw_player(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  if (strlen(name) != len) { /* a NUL inside: nobody's name */
    lua_pushnil(L);
    return 1;
  }
  gw__push_players(L, BINDING(L)->rt, name);
  return 1;
}

static int gw_set_player(lua_State *L) {
  check_module(L, "set_player");
  return gw__session_set_player(L);
}

/* gw.on_tell(fn): fn(session, text) is how session:tell speaks in the
 * game's chat (one per generation). */
static int gw_on_tell(lua_State *L) {
  check_loading(L, "on_tell");
  check_module(L, "on_tell");
  luaL_checktype(L, 1, LUA_TFUNCTION);
  gw__push_gen_extras(L, &BINDING(L)->rt->next, true);
  if (lua_getfield(L, -1, "tell") != LUA_TNIL)
    return luaL_error(L, "gw.on_tell: a tell function is registered already");
  lua_pop(L, 1);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "tell");
  return 0;
}

#define COMMAND_MAX 32

/* gw.command("/online", fn): fn(session, args) takes the chat lines whose
 * first word is "/online" (args: the rest of the line, trimmed). */
static int gw_command(lua_State *L) {
  check_loading(L, "command");
  size_t n;
  const char *name = luaL_checklstring(L, 1, &n);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  bool ok = n >= 2 && n <= COMMAND_MAX && ispunct((unsigned char)name[0]);
  for (size_t i = 1; ok && i < n; i++)
    ok = isgraph((unsigned char)name[i]);
  if (!ok)
    return luaL_error(L, "gw.command: a command is a sign and a word, like "
                      "\"/online\" (at most %d bytes, no spaces), got \"%s\"",
                      COMMAND_MAX, name);
  gw__push_gen_extras(L, &BINDING(L)->rt->next, true);
  luaL_getsubtable(L, -1, "commands");
  if (lua_getfield(L, -1, name) != LUA_TNIL)
    return luaL_error(L, "gw.command: %s is registered already", name);
  lua_pop(L, 1);
  lua_pushvalue(L, 2);
  lua_setfield(L, -2, name);
  return 0;
}

/* After the command's call, at once or once a command that waited (a
 * gw.redis call, a sleep) is over: the stack is session, line, word, and
 * on an error its message. */
static int run_command_done(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  if (status != LUA_OK && status != LUA_YIELD) {
    gw_script *s = gw_script_of(L);
    if (gw__over_limit(s)) return lua_error(L); /* the limit's, not ours */
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    s->stats.errors++;
    gw_error("%s: command %s: %s", BINDING(L)->rt->h.listener, lua_tostring(L, 3), msg);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* gw.run_command(session, line) -> true when a registered command took
 * the line (the protocol module then never forwards it). A command that
 * fails is logged and still took the line. A command may wait (its call
 * yields through this one, whose continuation finishes it). */
static int gw_run_command(lua_State *L) {
  gw_binding *b = BINDING(L);
  luaL_checkudata(L, 1, GW_SESSION_MT);
  size_t n;
  const char *line = luaL_checklstring(L, 2, &n);
  size_t w = 0;
  while (w < n && !isspace((unsigned char)line[w])) w++;
  lua_settop(L, 2);
  if (w < 2 || w > COMMAND_MAX || extras_field(L, binding_gen(L, b), "commands") != LUA_TTABLE ||
      (lua_pushlstring(L, line, w), lua_rawget(L, -2)) != LUA_TFUNCTION) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_replace(L, 3);               /* session, line, fn */
  lua_settop(L, 3);
  lua_pushlstring(L, line, w);     /* the word, for the error line */
  lua_insert(L, 3);                /* session, line, word, fn */
  size_t a = w, e = n;
  while (a < e && isspace((unsigned char)line[a])) a++;
  while (e > a && isspace((unsigned char)line[e - 1])) e--;
  lua_pushvalue(L, 1);
  lua_pushlstring(L, line + a, e - a);
  return run_command_done(L, lua_pcallk(L, 2, 0, 0, 0, run_command_done), 0);
}

static void set_count(lua_State *L, const char *k, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* gw.stats(): the state's counters, and this listener's per opcode. */
static int gw_stats(lua_State *L) {
  gw_script *s = gw_script_of(L);
  gw_listener_rt *rt = BINDING(L)->rt;
  lua_createtable(L, 0, 11);
  set_count(L, "frames", s->stats.frames);
  set_count(L, "dropped", s->stats.dropped);
  set_count(L, "replaced", s->stats.replaced);
  set_count(L, "injected", s->stats.injected);
  set_count(L, "injected_refused", s->stats.injected_refused);
  set_count(L, "errors", s->stats.errors);
  set_count(L, "timeouts", s->stats.timeouts);
  set_count(L, "memory", s->mem);
  set_count(L, "sessions", s->nsessions);
  set_count(L, "timers", s->nheap);
  lua_createtable(L, 0, 2); /* opcodes.client[op] = {...} */
  lua_newtable(L);
  lua_setfield(L, -2, "client");
  lua_newtable(L);
  lua_setfield(L, -2, "server");
  for (size_t i = 0; i < rt->capops; i++) {
    const gw_opstat *o = &rt->ops[i];
    if (o->key == UINT64_MAX) continue;
    lua_getfield(L, -1, gw_side_name((gw_side)(o->key >> 33)));
    lua_createtable(L, 0, 4);
    set_count(L, "frames", o->frames);
    set_count(L, "dropped", o->dropped);
    set_count(L, "replaced", o->replaced);
    set_count(L, "errors", o->errors);
    if (o->key >> 32 & 1)
      lua_setfield(L, -2, "none"); /* frames without an opcode */
    else
      lua_rawseti(L, -2, (lua_Integer)(o->key & UINT32_MAX));
    lua_pop(L, 1);
  }
  lua_setfield(L, -2, "opcodes");
  return 1;
}

/* gw.log.info(...) and print(...): the arguments as print shows them,
 * prefixed with the script's name. */
#define LOG_FIELDS_MAX 32

/* gw.log.info{ event = "ban", player = name, count = 3 }: one event whose
 * fields are the table's (strings, numbers, booleans; others as text), as
 * JSON fields in log.format = "json" and key=value in text. */
static void log_fields(lua_State *L, gw_log_level level, gw_binding *b) {
  gw_field f[LOG_FIELDS_MAX + 1];
  size_t n = 0;
  const char *event = "script";
  luaL_checkstack(L, LOG_FIELDS_MAX + 4, "gw.log: too many fields");
  lua_pushnil(L);
  while (lua_next(L, 1)) { /* key, value */
    if (lua_type(L, -2) != LUA_TSTRING || n == LOG_FIELDS_MAX) {
      lua_pop(L, 1);
      continue;
    }
    /* Keys and string values live in the table, which outlives the call. */
    const char *k = lua_tostring(L, -2);
    size_t len;
    switch (lua_type(L, -1)) {
    case LUA_TBOOLEAN: f[n++] = GW_F_BOOL(k, lua_toboolean(L, -1)); break;
    case LUA_TNUMBER:
      f[n++] = lua_isinteger(L, -1) ? GW_F_I64(k, lua_tointeger(L, -1))
                                    : GW_F_F64(k, lua_tonumber(L, -1));
      break;
    case LUA_TSTRING: {
      const char *v = lua_tolstring(L, -1, &len);
      if (!strcmp(k, "event")) event = v;
      else f[n++] = GW_F_STRN(k, v, len);
      break;
    }
    default: {
      /* as text, kept on the stack below the key until the event is out */
      const char *v = luaL_tolstring(L, -1, &len); /* key, value, text */
      f[n++] = GW_F_STRN(k, v, len);
      lua_replace(L, -2);                          /* key, text */
      lua_insert(L, -2);                           /* text, key */
      continue;
    }
    }
    lua_pop(L, 1);
  }
  f[n] = GW_F_END;
  gw_log_event(level, event, f, "%s:", b->script);
}

static int log_at(lua_State *L, gw_log_level level) {
  if (!gw_log_enabled(level)) return 0;
  gw_binding *b = BINDING(L);
  if (lua_gettop(L) == 1 && lua_istable(L, 1)) {
    log_fields(L, level, b);
    return 0;
  }
  int n = lua_gettop(L);
  luaL_Buffer buf;
  luaL_buffinit(L, &buf);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&buf, ' ');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&buf);
  }
  luaL_pushresult(&buf);
  gw_log(level, "%s: %s", b->script, lua_tostring(L, -1));
  return 0;
}

static int log_debug(lua_State *L) { return log_at(L, GW_LOG_DEBUG); }
static int log_info(lua_State *L) { return log_at(L, GW_LOG_INFO); }
static int log_warn(lua_State *L) { return log_at(L, GW_LOG_WARN); }
static int log_error(lua_State *L) { return log_at(L, GW_LOG_ERROR); }

/* gw.hex(s) -> lowercase hex of s */
static int gw_hex_fn(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  gw__push_hex(L, (const uint8_t *)s, n);
  return 1;
}

static const luaL_Reg gw_funcs[] = {
  {"on", gw_on},           {"on_connect", gw_on_connect},
  {"on_close", gw_on_close}, {"on_reload", gw_on_reload},
  {"packet", gw_build},   {"writer", gw_writer},
  {"after", gw_after},     {"every", gw_every},
  {"now", gw_now},         {"sessions", gw_sessions},
  {"stats", gw_stats},     {"codec", gw__lua_codec},
  {"admin", gw_admin_endpoint}, {"hex", gw_hex_fn},
  {"players", gw_players}, {"player", gw_player},
  {"set_player", gw_set_player}, {"on_tell", gw_on_tell},
  {"command", gw_command}, {"run_command", gw_run_command},
  {NULL, NULL},
};

static const luaL_Reg log_funcs[] = {
  {"debug", log_debug}, {"info", log_info}, {"warn", log_warn},
  {"error", log_error}, {NULL, NULL},
};

/* Pushes the `gangway` table of the binding at bidx, made once. */
static void push_gw(lua_State *L, int bidx) {
  if (lua_getiuservalue(L, bidx, 1) == LUA_TTABLE) return;
  lua_pop(L, 1);
  gw_script *s = gw_script_of(L);
  gw_binding *b = check_binding(L, bidx);
  lua_createtable(L, 0, 24);
  lua_pushvalue(L, bidx);
  luaL_setfuncs(L, gw_funcs, 1);
  gw__redis_funcs(L); /* gw.redis and the other waits (script_redis.c) */
  lua_createtable(L, 0, 4);
  lua_pushvalue(L, bidx);
  luaL_setfuncs(L, log_funcs, 1);
  lua_setfield(L, -2, "log");
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->shared_ref);
  lua_setfield(L, -2, "shared");
  static const char *const names[] = {"PASS", "DROP", "CLOSE"};
  luaL_getsubtable(L, LUA_REGISTRYINDEX, "gangway.verdicts");
  for (int i = 0; i < GW_VERDICTS; i++) {
    lua_rawgeti(L, -1, i + 1);
    lua_setfield(L, -3, names[i]);
  }
  lua_pop(L, 1);
  lua_pushstring(L, b->rt->h.listener);
  lua_setfield(L, -2, "listener");
  lua_pushstring(L, gw__binding_framing(L, bidx)->name);
  lua_setfield(L, -2, "framing");
  lua_pushinteger(L, b->gen);
  lua_setfield(L, -2, "generation");
  lua_pushliteral(L, GW_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, bidx, 1);
}

/* ---- the sandbox ---- */

static void push_env(lua_State *L, int bidx);

/* Loads the text file at path into a new _ENV for the binding at bidx and
 * calls it with the given args. Returns lua_load's status (the file's
 * results on the stack when LUA_OK, an error message otherwise). */
static int load_in_env(lua_State *L, int bidx, const char *path) {
  int st = luaL_loadfilex(L, path, "t");
  if (st != LUA_OK) return st;
  push_env(L, bidx);
  if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  return LUA_OK;
}

/* A module name: [A-Za-z0-9_-] words joined by dots, so it can never
 * leave the script's directory. */
static bool module_name_ok(const char *name) {
  bool word = false;
  for (const char *p = name; *p; p++) {
    if (*p == '.') {
      if (!word) return false;
      word = false;
    } else if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
               (*p >= '0' && *p <= '9') || *p == '_' || *p == '-') {
      word = true;
    } else {
      return false;
    }
  }
  return word;
}

/* lua-cjson works in C with its own malloc'd buffer: neither the count hook
 * nor the capped allocator sees it, and a table that repeats a subtable
 * encodes it again each time (2^n output from n levels). So scripts get a
 * fresh copy of the module (changes to it stay theirs) whose encode first
 * walks the value, charging each node visited and each 16 bytes of string
 * to the instruction limit, and whose decode charges its input. */
static void charge_value(lua_State *L, int idx, int depth) {
  size_t len = 0;
  if (lua_type(L, idx) == LUA_TSTRING) lua_tolstring(L, idx, &len);
  gw__charge(L, 1 + len / 16);
  if (lua_type(L, idx) != LUA_TTABLE || depth > 1000) return; /* cjson stops at 1000 */
  luaL_checkstack(L, 3, "cjson.encode: value too deep");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    charge_value(L, lua_gettop(L) - 1, depth + 1); /* key */
    charge_value(L, lua_gettop(L), depth + 1);     /* value */
    lua_pop(L, 1);
  }
}

static int metered_encode(lua_State *L) {
  luaL_checkany(L, 1);
  charge_value(L, 1, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int metered_decode(lua_State *L) {
  size_t len;
  luaL_checklstring(L, 1, &len);
  gw__charge(L, 1 + len / 16);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* Replaces the module at idx (top) with a metered copy. */
static void push_metered_cjson(lua_State *L, int idx) {
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  lua_getfield(L, idx, "encode");
  lua_pushcclosure(L, metered_encode, 1);
  lua_setfield(L, -2, "encode");
  lua_getfield(L, idx, "decode");
  lua_pushcclosure(L, metered_decode, 1);
  lua_setfield(L, -2, "decode");
  lua_remove(L, idx);
}

/* require in a script: "gangway", "cjson", "cjson.safe", or a Lua module
 * in the script's directory (loaded as text, once per generation, in a
 * sandbox of its own). Unsafe listeners fall back to the real require.
 * Upvalues: 1 the binding, 2 the real require (unsafe only). */
static int sandbox_require(lua_State *L) {
  gw_script *s = gw_script_of(L);
  const char *name = luaL_checkstring(L, 1);
  int bidx = lua_upvalueindex(1);
  gw_binding *b = check_binding(L, bidx);
  if (!strcmp(name, "gangway")) {
    push_gw(L, bidx);
    return 1;
  }
  if (!strcmp(name, "cjson") || !strcmp(name, "cjson.safe")) {
    luaL_requiref(L, name, name[5] ? luaopen_cjson_safe : luaopen_cjson, 0);
    push_metered_cjson(L, lua_gettop(L));
    return 1;
  }
  lua_getiuservalue(L, bidx, 2); /* dir */
  const char *dir = lua_tostring(L, -1);
  if (!module_name_ok(name)) {
    if (b->unsafe) goto real;
    return luaL_error(L, "module '%s' not found: a sandboxed require takes "
                      "gangway, cjson, or a module name next to the script",
                      name);
  }
  luaL_gsub(L, name, ".", "/");
  lua_pushfstring(L, "%s/%s.lua", dir, lua_tostring(L, -1));
  const char *path = lua_tostring(L, -1);
  int cache = loading(s, b) ? s->next_modules_ref : s->modules_ref;
  lua_rawgeti(L, LUA_REGISTRYINDEX, cache);
  int cidx = lua_gettop(L);
  int cached = lua_getfield(L, cidx, path);
  if (cached == LUA_TLIGHTUSERDATA) /* the mark below */
    return luaL_error(L, "module '%s' requires itself while loading", name);
  if (cached != LUA_TNIL) return 1;
  lua_pop(L, 1);
  lua_pushlightuserdata(L, (void *)sandbox_require); /* loading: a mark */
  lua_setfield(L, cidx, path);
  int st = load_in_env(L, bidx, path);
  if (st != LUA_OK) { /* not loaded: forget the mark */
    lua_pushnil(L);
    lua_setfield(L, cidx, path);
  }
  if (st == LUA_ERRFILE) {
    if (b->unsafe) goto real;
    return luaL_error(L, "module '%s' not found: no file %s (a sandboxed "
                      "require takes gangway, cjson, or a module next to "
                      "the script)", name, path);
  }
  if (st != LUA_OK) return lua_error(L);
  lua_pushstring(L, name);
  lua_pushstring(L, path);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) { /* forget the mark, raise again */
    lua_pushnil(L);
    lua_setfield(L, cidx, path);
    return lua_error(L);
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
  }
  lua_pushvalue(L, -1);
  lua_setfield(L, cidx, path);
  return 1;
real:
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_insert(L, 1);
  lua_call(L, 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* load in a script: text only, and the script's own _ENV by default.
 * Upvalues: 1 the real load, 2 the _ENV. */
static int sandbox_load(lua_State *L) {
  int env = !lua_isnone(L, 4);
  lua_settop(L, 4);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 2);
  lua_pushliteral(L, "t");
  lua_pushvalue(L, env ? 4 : lua_upvalueindex(2));
  lua_call(L, 4, 2);
  if (lua_isnil(L, -2)) return 2; /* nil, message */
  lua_pop(L, 1);
  return 1;
}

static int sandbox_print(lua_State *L) { return log_at(L, GW_LOG_INFO); }

static const char *const libs[] = {
  LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME, LUA_UTF8LIBNAME,
  LUA_COLIBNAME, NULL,
};

static void copy_fields(lua_State *L, int from, int to) {
  lua_pushnil(L);
  while (lua_next(L, from)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, to);
  }
}

/* Pushes a new _ENV for the binding at bidx. */
static void push_env(lua_State *L, int bidx) {
  gw_script *s = gw_script_of(L);
  bidx = lua_absindex(L, bidx);
  gw_binding *b = check_binding(L, bidx);
  lua_createtable(L, 0, 16);
  int env = lua_gettop(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  int loaded = lua_gettop(L);
  if (!b->unsafe) {
    /* Copies: a script that changes string.format changes its own. */
    for (int i = 0; libs[i]; i++) {
      lua_getfield(L, loaded, libs[i]);
      lua_newtable(L);
      copy_fields(L, lua_gettop(L) - 1, lua_gettop(L));
      lua_setfield(L, env, libs[i]);
      lua_pop(L, 1);
    }
    static const char *const os_ok[] = {"time", "clock", "date", "difftime",
                                        NULL};
    lua_getfield(L, loaded, LUA_OSLIBNAME);
    lua_createtable(L, 0, 4);
    for (int i = 0; os_ok[i]; i++) {
      lua_getfield(L, -2, os_ok[i]);
      lua_setfield(L, -2, os_ok[i]);
    }
    lua_setfield(L, env, LUA_OSLIBNAME);
    lua_pop(L, 1);
    lua_getfield(L, loaded, LUA_GNAME);
    lua_getfield(L, -1, "load");
    lua_pushvalue(L, env);
    lua_pushcclosure(L, sandbox_load, 2);
    lua_setfield(L, env, "load");
    lua_pop(L, 1);
  }
  lua_pushvalue(L, bidx);
  lua_getfield(L, loaded, LUA_GNAME);
  lua_getfield(L, -1, "require");
  lua_remove(L, -2);
  lua_pushcclosure(L, sandbox_require, 2);
  lua_setfield(L, env, "require");
  lua_pushvalue(L, bidx);
  lua_pushcclosure(L, sandbox_print, 1);
  lua_setfield(L, env, "print");
  lua_pushvalue(L, env);
  lua_setfield(L, env, "_G");
  lua_createtable(L, 0, 2);
  if (b->unsafe)
    lua_getfield(L, loaded, LUA_GNAME);
  else
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->base_ref);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable"); /* the base stays out of reach */
  lua_setmetatable(L, env);
  lua_settop(L, env);
}

/* The base every sandboxed _ENV reads through. */
static const char *const base_names[] = {
  "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
  "rawget", "rawlen", "rawset", "select", "getmetatable", "tonumber",
  "tostring", "type", "_VERSION", NULL,
};

/* Lua runs two kinds of script code with hooks off, out of the
 * instruction limit's reach: finalizers, and the message handler of an
 * error raised from a hook (the limit's own error). The base takes both
 * away: setmetatable refuses __gc, and xpcall's handler is skipped once the
 * call is over its limit. */

/* setmetatable, refusing __gc. */
static int sandbox_setmetatable(lua_State *L) {
  int t = lua_type(L, 2);
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
  if (t == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
    return luaL_error(L, "setmetatable: __gc is not allowed in scripts "
                      "(finalizers run outside the instruction limit)");
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
    return luaL_error(L, "cannot change a protected metatable");
  lua_settop(L, 2);
  lua_setmetatable(L, 1);
  return 1;
}

/* The handler xpcall gets: the script's, unless the call is over a
 * limit. Upvalue 1: the script's handler. */
static int guarded_handler(lua_State *L) {
  if (gw__over_limit(gw_script_of(L))) return 1; /* the limit's error, as is */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static int guard(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_pushcclosure(L, guarded_handler, 1);
  return 1;
}

/* In Lua, so that xpcall stays a tail call and can yield. */
static const char sandbox_xpcall[] =
  "local xpcall, guard = ...\n"
  "return function(f, handler, ...)\n"
  "  return xpcall(f, guard(handler), ...)\n"
  "end\n";

int gw__load_init(lua_State *L) {
  gw_script *s = gw_script_of(L);
  lua_createtable(L, 0, 20);
  lua_pushglobaltable(L);
  for (int i = 0; base_names[i]; i++) {
    lua_getfield(L, -1, base_names[i]);
    lua_setfield(L, -3, base_names[i]);
  }
  lua_pushcfunction(L, sandbox_setmetatable);
  lua_setfield(L, -3, "setmetatable");
  if (luaL_loadbufferx(L, sandbox_xpcall, sizeof sandbox_xpcall - 1,
                       "=xpcall", "t") != LUA_OK)
    return lua_error(L);
  lua_getfield(L, -2, "xpcall");
  lua_pushcfunction(L, guard);
  lua_call(L, 2, 1);
  lua_setfield(L, -3, "xpcall");
  lua_pop(L, 1);
  s->base_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  s->shared_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  s->modules_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  luaL_newmetatable(L, GW_BINDING_MT);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  /* The strings' metatable is shared by every script: keep it out of
   * their reach. */
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 2);
  return 0;
}

/* ---- loading ---- */

static gw_listener_rt *find_rt(gw_script *s, const char *name) {
  for (size_t i = 0; i < s->nlisteners; i++)
    if (!strcmp(s->listeners[i]->h.listener, name)) return s->listeners[i];
  return NULL;
}

void gw_script_count_errors(gw_script *s, const char *listener, uint64_t *errors,
                            uint64_t *timeouts) {
  gw_listener_rt *rt = find_rt(s, listener);
  if (!rt) return;
  rt->errors_slot = errors;
  rt->timeouts_slot = timeouts;
}

gw_listener_rt *gw__find_rt(gw_script *s, const char *name) { return find_rt(s, name); }

gw_handlers *gw_script_handlers(gw_script *s, const char *name) {
  gw_listener_rt *rt = find_rt(s, name);
  return rt && rt->published ? &rt->h : NULL;
}

static gw_listener_rt *new_rt(gw_script *s, const char *name) {
  gw_listener_rt **l = realloc(s->listeners, (s->nlisteners + 1) * sizeof *l);
  if (!l) return NULL;
  s->listeners = l;
  gw_listener_rt *rt = calloc(1, sizeof *rt);
  if (!rt || !(rt->h.listener = strdup(name))) {
    free(rt);
    return NULL;
  }
  rt->s = s;
  rt->h.priv = rt;
  gw__gen_tables_init(&rt->cur);
  gw__gen_tables_init(&rt->next);
  s->listeners[s->nlisteners++] = rt;
  return rt;
}

/* Protected: the new generation's tables of rt (arg 1). */
static int prep_listener(lua_State *L) {
  gw_listener_rt *rt = lua_touserdata(L, 1);
  for (int i = 0; i < GW_SIDES; i++) {
    lua_newtable(L);
    rt->next.map_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return 0;
}

/* Protected: the module cache and on_reload list of the new generation. */
static int prep_gen(lua_State *L) {
  gw_script *s = gw_script_of(L);
  lua_newtable(L);
  s->next_modules_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  s->reload_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* Protected: loads and runs one script. Args: rt, path, unsafe. */
static int load_script(lua_State *L) {
  gw_script *s = gw_script_of(L);
  gw_listener_rt *rt = lua_touserdata(L, 1);
  const char *path = lua_tostring(L, 2);
  bool unsafe = lua_toboolean(L, 3), module = lua_toboolean(L, 4);
  gw_binding *b = lua_newuserdatauv(L, sizeof *b, 2);
  memset(b, 0, sizeof *b);
  b->rt = rt;
  b->gen = s->loading_gen;
  b->unsafe = unsafe;
  b->module = module;
  const char *base = strrchr(path, '/');
  snprintf(b->script, sizeof b->script, "%s", base ? base + 1 : path);
  luaL_setmetatable(L, GW_BINDING_MT);
  int bidx = lua_gettop(L);
  if (base)
    lua_pushlstring(L, path, base == path ? 1 : (size_t)(base - path));
  else
    lua_pushliteral(L, ".");
  lua_setiuservalue(L, bidx, 2);
  if (load_in_env(L, bidx, path) != LUA_OK) return lua_error(L);
  lua_call(L, 0, 0);
  return 0;
}

/* Protected: the packet definitions of listener config lc (arg 2) into
 * the new generation of rt (arg 1). */
static int load_protocol(lua_State *L) {
  gw_listener_rt *rt = lua_touserdata(L, 1);
  const gw_listener_config *lc = lua_touserdata(L, 2);
  lua_pushfstring(L, "%s/packets.lua", lc->protocol_dir);
  const struct gw_proto *p = gw__proto_push_new(L, lua_tostring(L, -1), &lc->framing);
  gw__push_gen_extras(L, &rt->next, true);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "proto");
  rt->next.proto = p;
  return 0;
}

/* Protected: gives every live session of rt (arg 1) its userdata, which
 * keeps the framing it was opened with, before rt's framing changes. */
static int pin_framings(lua_State *L) {
  gw_script *s = gw_script_of(L);
  gw_listener_rt *rt = lua_touserdata(L, 1);
  for (gw_script_session *ss = s->sessions; ss; ss = ss->next) {
    if (ss->handlers != &rt->h || ss->ref != LUA_NOREF) continue;
    gw__push_session(L, ss);
    lua_pop(L, 1);
  }
  return 0;
}

/* Protected: the on_reload functions of the new generation. */
static int run_reload(lua_State *L) {
  gw_script *s = gw_script_of(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->reload_ref);
  lua_Integer i = lua_tointeger(L, 1);
  lua_rawgeti(L, -1, i);
  lua_call(L, 0, 0);
  return 0;
}

static void unref(gw_script *s, int *ref) {
  luaL_unref(s->L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
}

/* Copies the first line of the message on the stack into err. */
static void take_error(gw_script *s, int st, char *err, size_t errlen,
                       const char *what) {
  lua_State *L = s->L;
  const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
  if (st == LUA_ERRMEM) {
    char lim[32];
    gw__format_bytes(lim, sizeof lim, s->limits.memory_bytes);
    snprintf(err, errlen, "%s: not enough memory (the scripts' limit is %s)",
             what, lim);
  } else {
    const char *nl = strchr(msg, '\n');
    snprintf(err, errlen, "%.*s", nl ? (int)(nl - msg) : (int)strlen(msg), msg);
  }
  gw_debug("scripts: %s: %s", what, msg);
  lua_settop(L, GW_SLOT_BASE);
}

static void publish(gw_script *s, gw_listener_rt *rt) {
  gw_handlers *h = &rt->h;
  gw__gen_tables_clear(s, &rt->cur);
  rt->cur = rt->next;
  gw__gen_tables_init(&rt->next);
  for (int i = 0; i < GW_SIDES; i++) {
    h->bits[i] = rt->cur.bits[i];
    h->any[i] = rt->cur.any[i];
    h->all[i] = rt->cur.all[i];
    h->wide[i] = rt->cur.wide[i];
    h->keepalive[i] = rt->cur.keepalive[i];
  }
  h->framing = rt->next_framing;
  h->on_error = rt->next_on_error;
  rt->published = true;
}

static void retire(gw_script *s, gw_listener_rt *rt) {
  gw__gen_tables_clear(s, &rt->cur);
  gw_handlers *h = &rt->h;
  for (int i = 0; i < GW_SIDES; i++) {
    h->bits[i] = NULL;
    h->any[i] = h->all[i] = h->wide[i] = h->keepalive[i] = false;
  }
  rt->published = false;
}

int gw_script_load(gw_script *s, const gw_config *cfg, char *err,
                   size_t errlen) {
  if (s->depth) {
    snprintf(err, errlen, "scripts: cannot reload from inside a script");
    return -EDEADLK;
  }
  lua_State *L = s->L;
  int rc = 0, st;
  s->loading_gen = s->gen + 1;
  lua_pushcfunction(L, prep_gen);
  if ((st = gw__pcall(s, 0, 0)) != LUA_OK) {
    take_error(s, st, err, errlen, "scripts");
    rc = -ENOMEM;
    goto fail;
  }
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    const gw_listener_config *lc = &cfg->listeners[i];
    gw_listener_rt *rt = find_rt(s, lc->name);
    if (!rt && !(rt = new_rt(s, lc->name))) {
      snprintf(err, errlen, "scripts: out of memory");
      rc = -ENOMEM;
      goto fail;
    }
    if (rt->in_next) {
      snprintf(err, errlen, "scripts: two listeners named %s", lc->name);
      rc = -EINVAL;
      goto fail;
    }
    rt->in_next = true;
    rt->next_framing = lc->framing;
    rt->next_on_error = lc->on_error;
    lua_pushcfunction(L, prep_listener);
    lua_pushlightuserdata(L, rt);
    if ((st = gw__pcall(s, 1, 0)) != LUA_OK) {
      take_error(s, st, err, errlen, lc->name);
      rc = -ENOMEM;
      goto fail;
    }
    /* The protocol: its definitions, then its module, before the scripts
     * (a session that logs in before any script loads still gets its
     * player). */
    if (lc->protocol_dir) {
      lua_pushcfunction(L, load_protocol);
      lua_pushlightuserdata(L, rt);
      lua_pushlightuserdata(L, (void *)lc);
      if ((st = gw__pcall(s, 2, 0)) != LUA_OK) {
        take_error(s, st, err, errlen, lc->protocol_dir);
        rc = -EINVAL;
        goto fail;
      }
      char init[4096];
      snprintf(init, sizeof init, "%s/init.lua", lc->protocol_dir);
      if (access(init, F_OK) == 0) {
        lua_pushcfunction(L, load_script);
        lua_pushlightuserdata(L, rt);
        lua_pushstring(L, init);
        lua_pushboolean(L, lc->unsafe);
        lua_pushboolean(L, 1);
        if ((st = gw__pcall(s, 4, 0)) != LUA_OK) {
          take_error(s, st, err, errlen, init);
          rc = -EINVAL;
          goto fail;
        }
      }
    }
    for (size_t j = 0; j < lc->nscripts; j++) {
      lua_pushcfunction(L, load_script);
      lua_pushlightuserdata(L, rt);
      lua_pushstring(L, lc->scripts[j]);
      lua_pushboolean(L, lc->unsafe);
      if ((st = gw__pcall(s, 3, 0)) != LUA_OK) {
        take_error(s, st, err, errlen, lc->scripts[j]);
        rc = -EINVAL;
        goto fail;
      }
    }
  }

  for (size_t i = 0; i < s->nlisteners; i++) {
    gw_listener_rt *rt = s->listeners[i];
    if (!rt->in_next || !rt->published ||
        !memcmp(&rt->h.framing, &rt->next_framing, sizeof rt->next_framing))
      continue;
    lua_pushcfunction(L, pin_framings);
    lua_pushlightuserdata(L, rt);
    if ((st = gw__pcall(s, 1, 0)) != LUA_OK) {
      take_error(s, st, err, errlen, rt->h.listener);
      rc = -ENOMEM;
      goto fail;
    }
  }

  /* Everything loaded: swap. */
  for (size_t i = 0; i < s->nlisteners; i++) {
    gw_listener_rt *rt = s->listeners[i];
    if (rt->in_next)
      publish(s, rt);
    else if (rt->published)
      retire(s, rt);
    rt->in_next = false;
  }
  bool reload = s->loaded;
  s->gen = s->loading_gen;
  s->loading_gen = 0;
  s->loaded = true;
  unref(s, &s->modules_ref);
  s->modules_ref = s->next_modules_ref;
  s->next_modules_ref = LUA_NOREF;
  gw__timers_cancel_gen(s, s->gen, false);
  if (reload) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->reload_ref);
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    lua_pop(L, 1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_pushcfunction(L, run_reload);
      lua_pushinteger(L, i);
      if ((st = gw__pcall(s, 1, 0)) != LUA_OK)
        gw__report_error(s, st, "scripts", "on_reload");
    }
  }
  unref(s, &s->reload_ref);
  gw__flush(s);
  gw__timers_wake(s);
  gw_info("scripts: generation %u loaded (%zu listeners)", s->gen,
          cfg->nlisteners);
  return 0;

fail:
  gw_error("scripts: %s", err);
  for (size_t i = 0; i < s->nlisteners; i++) {
    gw_listener_rt *rt = s->listeners[i];
    gw__gen_tables_clear(s, &rt->next);
    rt->in_next = false;
  }
  gw__timers_cancel_gen(s, s->loading_gen, true);
  s->loading_gen = 0;
  unref(s, &s->next_modules_ref);
  unref(s, &s->reload_ref);
  gw__flush(s);
  gw__timers_wake(s);
  return rc;
}
