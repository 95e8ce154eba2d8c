/* script_admin.c: script endpoints on the admin API (gw.admin).
 *
 *   gw.admin("bans", function(req)
 *     if req.method == "POST" then bans[req.body.name] = true end
 *     return { bans = bans }            -- or: return 201, { ... }
 *   end)
 *
 * served as GET/POST/DELETE /scripts/bans: the request's JSON body comes in
 * decoded, what the function returns goes out encoded, both with lua-cjson,
 * under the handlers' limits. An admin edits a ban list or switches an
 * event on without a reload, the way HAProxy's runtime API edits maps. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "script_int.h"

LUALIB_API int luaopen_cjson_safe(lua_State *L);

/* Protected: upvalue-free; args: fn, method, body (string or nil), cjson.
 * Returns status (integer) and the encoded answer (string). */
static int run_admin(lua_State *L) {
  int cj = 4;
  lua_createtable(L, 0, 2);
  int req = lua_gettop(L);
  lua_pushvalue(L, 2);
  lua_setfield(L, req, "method");
  if (!lua_isnil(L, 3)) {
    lua_getfield(L, cj, "decode");
    lua_pushvalue(L, 3);
    lua_call(L, 1, 2); /* cjson.safe: nil, err on bad JSON */
    if (lua_isnil(L, -2)) {
      lua_pushinteger(L, 400);
      lua_pushfstring(L, "{\"error\":\"the body is not JSON\"}");
      return 2;
    }
    lua_pop(L, 1);
    lua_setfield(L, req, "body");
  }
  lua_pushvalue(L, 1);
  lua_pushvalue(L, req);
  lua_call(L, 1, 2);
  lua_Integer status = 200;
  int val = lua_gettop(L) - 1;
  if (lua_isinteger(L, val)) {
    status = lua_tointeger(L, val);
    if (status < 100 || status > 599) luaL_error(L, "gw.admin: status %I out of 100..599", status);
    val++;
  }
  lua_getfield(L, cj, "encode");
  lua_pushvalue(L, val);
  lua_call(L, 1, 2);
  if (lua_isnil(L, -2))
    luaL_error(L, "gw.admin: the answer cannot be encoded as JSON: %s", lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_pushinteger(L, status);
  lua_insert(L, -2);
  return 2;
}

static int answer(char **out, size_t *outlen, int status, const char *fmt, const char *arg) {
  char buf[512];
  int n = snprintf(buf, sizeof buf, fmt, arg);
  if (n < 0) n = 0;
  if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
  *out = malloc((size_t)n + 1);
  if (!*out) return 500;
  memcpy(*out, buf, (size_t)n + 1);
  *outlen = (size_t)n;
  return status;
}

/* A JSON string's inside for an error message: no quotes, backslashes or
 * control bytes. */
static void json_safe(char *s) {
  for (; *s; s++)
    if (*s == '"' || *s == '\\' || (unsigned char)*s < 0x20) *s = '\'';
}

int gw_script_admin(gw_script *s, const char *name, const char *method, const char *body,
                    size_t len, char **out, size_t *outlen) {
  *out = NULL;
  *outlen = 0;
  lua_State *L = s->L;
  if (s->depth) return answer(out, outlen, 503, "{\"error\":\"%s\"}", "busy");
  int top = lua_gettop(L);
  /* The endpoint, from the running generation of any listener. */
  bool found = false;
  for (size_t i = 0; i < s->nlisteners && !found; i++) {
    int ref = s->listeners[i]->cur.admin_ref;
    if (ref == LUA_NOREF) continue;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    if (lua_getfield(L, -1, name) == LUA_TFUNCTION) {
      lua_remove(L, -2);
      found = true;
    } else {
      lua_pop(L, 2);
    }
  }
  if (!found) return answer(out, outlen, 404, "{\"error\":\"no script endpoint \\\"%s\\\"\"}", name);
  if (s->cjson_ref == LUA_NOREF) {
    luaL_requiref(L, "cjson.safe", luaopen_cjson_safe, 0);
    s->cjson_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  int fn = lua_gettop(L);
  lua_pushcfunction(L, run_admin);
  lua_pushvalue(L, fn);
  lua_pushstring(L, method);
  if (body && len) lua_pushlstring(L, body, len);
  else lua_pushnil(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->cjson_ref);
  int st = gw__pcall(s, 4, 2);
  int status;
  if (st != LUA_OK) {
    char msg[300];
    const char *m = lua_tostring(L, -1);
    snprintf(msg, sizeof msg, "%.*s", (int)(m ? strcspn(m, "\n") : 0), m ? m : "error");
    json_safe(msg);
    gw_warn("admin endpoint %s: %s", name, msg);
    status = answer(out, outlen, 500, "{\"error\":\"%s\"}", msg);
  } else {
    size_t n;
    const char *p = lua_tolstring(L, -1, &n);
    status = (int)lua_tointeger(L, -2);
    *out = malloc(n + 1);
    if (*out) {
      memcpy(*out, p, n + 1);
      *outlen = n;
    } else {
      status = 500;
    }
  }
  lua_settop(L, top);
  gw__flush(s); /* what the function sent to sessions */
  return status;
}
