/* script_session.c: sessions as scripts see them: the session userdata
 * (made the first time a session enters Lua, so sessions no handler looks
 * at cost no Lua object), gw.on_connect and gw.on_close, and the release
 * of a session's Lua side when it ends.
 *
 * After its session ends a userdata keeps id, client, upstream, listener
 * and state readable; its methods raise. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "script_int.h"

static gw_session_ud *check_session(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, GW_SESSION_MT);
}

/* The session's live gw_script_session, or an error naming the method. */
static gw_script_session *live(lua_State *L, gw_session_ud *u,
                               const char *method) {
  if (!u->ss)
    luaL_error(L, "session:%s: session %I has ended", method,
               (lua_Integer)u->id);
  return u->ss;
}

gw_session_ud *gw__push_session(lua_State *L, gw_script_session *ss) {
  if (ss->ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ss->ref);
    return lua_touserdata(L, -1);
  }
  gw_session_ud *u = lua_newuserdatauv(L, sizeof *u, 2); /* 1: state, 2: player */
  memset(u, 0, sizeof *u);
  u->ss = ss;
  u->id = ss->id;
  snprintf(u->client, sizeof u->client, "%s", ss->client);
  snprintf(u->upstream, sizeof u->upstream, "%s", ss->upstream);
  u->rt = gw__rt_of(ss->handlers);
  u->framing = u->rt->h.framing;
  luaL_setmetatable(L, GW_SESSION_MT);
  lua_pushvalue(L, -1);
  ss->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return u;
}

void gw__push_sessions(lua_State *L, gw_listener_rt *rt) {
  gw_script *s = gw_script_of(L);
  lua_createtable(L, (int)(s->nsessions < 1024 ? s->nsessions : 1024), 0);
  /* oldest first: the list is newest first */
  gw_script_session *ss = s->sessions;
  while (ss && ss->next) ss = ss->next;
  lua_Integer n = 0;
  for (; ss; ss = ss->prev) {
    if (ss->closed || ss->handlers != &rt->h) continue;
    gw__push_session(L, ss);
    lua_rawseti(L, -2, ++n);
  }
}

/* The player of the session userdata at idx is pushed; true when it has one. */
static bool push_player(lua_State *L, int idx) {
  if (lua_getiuservalue(L, idx, 2) != LUA_TNIL) return true;
  return false;
}

void gw__push_players(lua_State *L, gw_listener_rt *rt, const char *name) {
  gw_script *s = gw_script_of(L);
  if (!name) lua_newtable(L);
  gw_script_session *ss = s->sessions;
  while (ss && ss->next) ss = ss->next;
  lua_Integer n = 0;
  for (; ss; ss = ss->prev) {
    /* no userdata yet: never in Lua, so no player */
    if (ss->closed || ss->handlers != &rt->h || ss->ref == LUA_NOREF) continue;
    gw__push_session(L, ss);
    bool has = push_player(L, -1);
    if (has && name) {
      has = lua_type(L, -1) == LUA_TTABLE;
      if (has) {
        /* byte for byte: a name with a NUL inside is not the name before it */
        size_t len;
        has = lua_getfield(L, -1, "name") == LUA_TSTRING &&
              !strcmp(lua_tolstring(L, -1, &len), name) && len == strlen(name);
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
    if (has && name) return; /* the session */
    if (has) lua_rawseti(L, -2, ++n);
    else lua_pop(L, 1);
  }
  if (name) lua_pushnil(L);
}

int gw__session_set_player(lua_State *L) {
  /* a reload that fails later must leave every session as it was */
  if (gw_script_of(L)->loading_gen)
    return luaL_error(L, "gw.set_player while scripts load: use gw.on_reload");
  check_session(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, 2);
  return 0;
}

/* ---- methods ---- */

/* While a generation loads nothing may leave: a load that fails later must
 * change nothing. gw.on_reload runs after the swap, for such work. */
static void not_loading(lua_State *L, const char *method) {
  if (gw_script_of(L)->loading_gen)
    luaL_error(L, "session:%s while scripts load: use gw.on_reload", method);
}

static int send_to(lua_State *L, gw_side to, const char *method) {
  not_loading(L, method);
  gw_session_ud *u = check_session(L, 1);
  gw_script_session *ss = live(L, u, method);
  size_t len;
  const uint8_t *data = gw_frame_arg(L, 2, &len);
  if (ss->closed) {
    lua_pushboolean(L, 0); /* closing: nothing more goes out */
    return 1;
  }
  /* A frame toward the client comes from the server side, and the other
   * way round: check it against that side's limits. */
  gw_side from = to == GW_CLIENT ? GW_SERVER : GW_CLIENT;
  char why[160];
  if (gw_frame_check(gw__session_framing(u, from), from, data, len, why, sizeof why))
    return luaL_error(L, "session:%s: %s", method, why);
  gw__send(L, ss, to, data, len);
  lua_pushboolean(L, 1);
  return 1;
}

static int s_send_to_client(lua_State *L) {
  return send_to(L, GW_CLIENT, "send_to_client");
}

static int s_send_to_server(lua_State *L) {
  return send_to(L, GW_SERVER, "send_to_server");
}

static int s_close(lua_State *L) {
  not_loading(L, "close");
  gw_session_ud *u = check_session(L, 1);
  const char *reason = luaL_optstring(L, 2, "closed by a script");
  bool open = u->ss && !u->ss->closed;
  if (open) gw__request_close(gw_script_of(L), u->ss, reason);
  lua_pushboolean(L, open);
  return 1;
}

/* After the module's tell function, also when it waited. */
static int s_tell_done(lua_State *L, int status, lua_KContext ctx) {
  (void)L, (void)status, (void)ctx;
  return 0;
}

/* session:tell(text): a line in the game's chat to this session's
 * player, the way the protocol module's gw.on_tell says. The tell function
 * may wait (a chat relayed through Redis): the call yields through here. */
static int s_tell(lua_State *L) {
  gw_session_ud *u = check_session(L, 1);
  live(L, u, "tell");
  luaL_checkstring(L, 2);
  lua_settop(L, 2);
  gw__push_gen_extras(L, &u->rt->cur, false);
  if (!lua_istable(L, -1) || lua_getfield(L, -1, "tell") != LUA_TFUNCTION)
    return luaL_error(L, "session:tell: listener %s has no protocol module "
                      "that tells (gw.on_tell in its init.lua)", u->rt->h.listener);
  lua_insert(L, 1);
  lua_settop(L, 3);
  lua_callk(L, 2, 0, 0, s_tell_done);
  return 0;
}

static int s_timer(lua_State *L, bool repeat, const char *method) {
  gw_session_ud *u = check_session(L, 1);
  live(L, u, method);
  lua_Number ms = luaL_checknumber(L, 2);
  if (!(ms >= 0 && ms < 1e15)) luaL_argerror(L, 2, "milliseconds >= 0");
  gw__timer_start(L, u->rt, u, (lua_Integer)ms, repeat, 3);
  return 1;
}

static int s_after(lua_State *L) { return s_timer(L, false, "after"); }
static int s_every(lua_State *L) { return s_timer(L, true, "every"); }

static int s_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  gw_session_ud *u = check_session(L, 1);
  const char *k = lua_tostring(L, 2);
  if (!k) {
  } else if (!strcmp(k, "id")) {
    lua_pushinteger(L, (lua_Integer)u->id);
    return 1;
  } else if (!strcmp(k, "client")) {
    lua_pushstring(L, u->client);
    return 1;
  } else if (!strcmp(k, "upstream")) {
    /* the live session's: a failover or the pool may have changed it */
    lua_pushstring(L, u->ss ? u->ss->upstream : u->upstream);
    return 1;
  } else if (!strcmp(k, "listener")) {
    lua_pushstring(L, u->rt->h.listener);
    return 1;
  } else if (!strcmp(k, "closed")) {
    lua_pushboolean(L, !u->ss || u->ss->closed);
    return 1;
  } else if (!strcmp(k, "player")) {
    push_player(L, 1);
    return 1;
  } else if (!strcmp(k, "state")) {
    if (lua_getiuservalue(L, 1, 1) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_setiuservalue(L, 1, 1);
    }
    return 1;
  }
  return luaL_error(L, "session has no field %s", luaL_tolstring(L, 2, NULL));
}

static int s_newindex(lua_State *L) {
  const char *k = lua_tostring(L, 2);
  if (k && !strcmp(k, "player"))
    return luaL_error(L, "session.player is set by the protocol module "
                      "(gw.set_player in its init.lua)");
  return luaL_error(L, "session fields cannot be set (keep your data in "
                    "session.state)");
}

static int s_tostring(lua_State *L) {
  gw_session_ud *u = check_session(L, 1);
  lua_pushfstring(L, "gangway.session %I (%s%s)", (lua_Integer)u->id,
                  u->client, u->ss ? "" : ", ended");
  return 1;
}

/* session:capture(name, { seconds = 60, max_mb = 16, originals = false })
 * -> true | nil, why: the session's frames as they leave gangway (and as
 * they came, with originals) into <capture_dir>/<name>.pcap. One capture
 * runs at a time; capture_dir must be set in config.lua. */
static int s_capture(lua_State *L) {
  gw_session_ud *u = check_session(L, 1);
  gw_script_session *ss = live(L, u, "capture");
  size_t n;
  const char *name = luaL_checklstring(L, 2, &n);
  if (!n || n > 64 || name[0] == '.' ||
      strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.") != n)
    return luaL_argerror(L, 2, "a name of 1 to 64 letters, digits, '_', '-' or '.'");
  lua_Integer seconds = 60, max_mb = 16;
  bool originals = false;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "seconds");
    seconds = luaL_optinteger(L, -1, 60);
    lua_getfield(L, 3, "max_mb");
    max_mb = luaL_optinteger(L, -1, 16);
    lua_getfield(L, 3, "originals");
    originals = lua_toboolean(L, -1);
  }
  if (seconds < 1 || seconds > 86400) return luaL_error(L, "session:capture: seconds out of 1..86400");
  if (max_mb < 1 || max_mb > 4096) return luaL_error(L, "session:capture: max_mb out of 1..4096");
  gw_script *s = gw_script_of(L);
  char err[200] = "this host cannot capture";
  if (s->ops.capture && s->ops.capture(ss, name, (uint32_t)seconds, (uint32_t)max_mb, originals,
                                       err, sizeof err) == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, err);
  return 2;
}

/* session:route(name): from gw.on_connect, the upstream server (a name or
 * "host:port" of the listener's upstream) gangway connects this session
 * to; raises for a name the upstream does not have. */
static int s_route(lua_State *L) {
  gw_session_ud *u = check_session(L, 1);
  gw_script_session *ss = live(L, u, "route");
  const char *name = luaL_checkstring(L, 2);
  gw_script *s = gw_script_of(L);
  char err[512] = "this host cannot route";
  if (!s->ops.route || s->ops.route(ss, name, err, sizeof err) < 0)
    return luaL_error(L, "session:route: %s", err);
  snprintf(u->upstream, sizeof u->upstream, "%s", ss->upstream);
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg s_methods[] = {
  {"send_to_client", s_send_to_client}, {"send_to_server", s_send_to_server},
  {"close", s_close}, {"after", s_after}, {"every", s_every},
  {"set_framing", gw__session_set_framing}, {"expect_raw", gw__session_expect_raw},
  {"set_codec", gw__session_set_codec}, {"capture", s_capture},
  {"tell", s_tell}, {"route", s_route},
  {NULL, NULL},
};

void gw__session_open_lib(lua_State *L) {
  luaL_newmetatable(L, GW_SESSION_MT);
  lua_pushcfunction(L, s_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, s_newindex);
  lua_setfield(L, -2, "__newindex");
  lua_newtable(L);
  luaL_setfuncs(L, s_methods, 0);
  lua_pushcclosure(L, s_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0); /* out of scripts' reach, as the packet's */
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  gw__codec_open_lib(L);
}

/* ---- open and close ---- */

/* Protected: the on_connect functions for the session (arg 1). Sets
 * s->cur.verdict to CLOSE when one refuses it. */
static int run_connect(lua_State *L) {
  gw_script *s = gw_script_of(L);
  gw_script_session *ss = lua_touserdata(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, gw__rt_of(ss->handlers)->cur.connect_ref);
  gw__push_session(L, ss);
  lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
  for (lua_Integer i = 1; i <= n && !ss->closed; i++) {
    lua_rawgeti(L, 2, i);
    lua_pushvalue(L, 3);
    lua_call(L, 1, 1);
    if (lua_touserdata(L, -1) == s->verdicts[GW_VERDICT_CLOSE]) {
      s->cur.verdict = GW_VERDICT_CLOSE;
      break;
    }
    lua_settop(L, 3);
  }
  return 0;
}

/* Protected: the on_close functions. Args: the session, the reason. */
static int run_close(lua_State *L) {
  gw_script_session *ss = lua_touserdata(L, 1);
  const char *reason = lua_touserdata(L, 2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, gw__rt_of(ss->handlers)->cur.close_ref);
  gw__push_session(L, ss);
  lua_pushstring(L, reason ? reason : "closed");
  lua_Integer n = (lua_Integer)lua_rawlen(L, 3);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, 3, i);
    lua_pushvalue(L, 4);
    lua_pushvalue(L, 5);
    lua_call(L, 2, 0);
  }
  return 0;
}

/* Lets go of ss: its timers, its userdata (which outlives it, ended), and
 * anything queued for it. Never raises. */
static void release(gw_script *s, gw_script_session *ss) {
  lua_State *L = s->L;
  if (ss->prev)
    ss->prev->next = ss->next;
  else if (s->sessions == ss)
    s->sessions = ss->next;
  if (ss->next) ss->next->prev = ss->prev;
  ss->prev = ss->next = NULL;
  s->nsessions--;
  gw__outbox_forget(s, ss);
  if (ss->ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ss->ref);
    gw_session_ud *u = lua_touserdata(L, -1);
    gw__timers_cancel_session(s, u);
    snprintf(u->upstream, sizeof u->upstream, "%s", ss->upstream); /* the last one */
    u->ss = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, ss->ref);
    ss->ref = LUA_NOREF;
  }
  ss->closed = true;
  ss->handlers = NULL;
}

int gw_script_session_open(gw_script *s, gw_handlers *h,
                           gw_script_session *ss) {
  ss->prev = NULL;
  ss->next = s->sessions;
  if (s->sessions) s->sessions->prev = ss;
  s->sessions = ss;
  s->nsessions++;
  ss->handlers = h;
  ss->ref = LUA_NOREF;
  ss->closed = false;
  gw_listener_rt *rt = gw__rt_of(h);
  if (rt->cur.connect_ref == LUA_NOREF || s->depth) return 0;

  lua_State *L = s->L;
  s->cur.verdict = GW_VERDICT_PASS;
  lua_pushcfunction(L, run_connect);
  lua_pushlightuserdata(L, ss);
  int st = gw__pcall(s, 1, 0);
  bool refused = s->cur.verdict == GW_VERDICT_CLOSE || ss->closed;
  if (st != LUA_OK) {
    char what[64];
    snprintf(what, sizeof what, "on_connect of session %" PRIu64, ss->id);
    gw__report_error(s, st, h->listener, what);
    if (h->on_error == GW_ON_ERROR_CLOSE) refused = true;
  }
  if (refused) {
    /* What on_connect sent goes out; no close request: the host closes a
     * refused session itself. */
    for (size_t i = 0; i < s->ncloses; i++)
      if (s->closes[i].ss == ss) s->closes[i].ss = NULL;
    ss->closed = true;
    gw__flush(s);
    release(s, ss);
    gw__timers_wake(s);
    return -ECONNREFUSED;
  }
  gw__flush(s);
  gw__timers_wake(s);
  return 0;
}

void gw_script_session_close(gw_script *s, gw_script_session *ss,
                             const char *reason) {
  if (!ss->handlers) return; /* released already, or never opened */
  ss->closed = true;
  gw_listener_rt *rt = gw__rt_of(ss->handlers);
  if (rt->cur.close_ref != LUA_NOREF && !s->depth) {
    lua_State *L = s->L;
    lua_pushcfunction(L, run_close);
    lua_pushlightuserdata(L, ss);
    lua_pushlightuserdata(L, (void *)reason);
    int st = gw__pcall(s, 2, 0);
    if (st != LUA_OK) {
      char what[64];
      snprintf(what, sizeof what, "on_close of session %" PRIu64, ss->id);
      gw__report_error(s, st, rt->h.listener, what);
    }
  }
  release(s, ss);
  gw__flush(s);
  gw__timers_wake(s);
}
