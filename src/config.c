/* config.c: loads config.lua into a gw_config and checks every value.
 *
 * The file runs in a throwaway Lua state: text only, in an _ENV that holds a
 * few pure libraries, under an instruction limit and a capped allocator, so a
 * broken or hostile config can neither hang nor exhaust the process. The
 * table it returns is then walked in a fixed order (in each table: unknown
 * keys first, then the known ones in schema order), and the first problem
 * becomes the one error message.
 *
 * Everything after lua_newstate runs inside one protected call: our own
 * errors, Lua's, and running out of memory all longjmp back to
 * gw_config_load, which frees whatever was half built. So memory taken here
 * is either Lua's (collected with the state) or hung off the gw_config
 * (freed by gw_config_free) at the moment it is taken. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "script_int.h" /* gw_meter_open: metered patterns and tables */
#include "suggest.h"

#define MIB (1024u * 1024u)

/* What a config may cost to run. Generous for any real config (they run a few
 * thousand instructions), small enough that a mistake fails in well under a
 * second. C work is charged too, as in the script state: pattern matching
 * and table functions (gw_meter_open) by the step, and every CFG_ALLOC_CHARGE
 * bytes allocated (string.rep, table.concat, .. build their results) as an
 * instruction. */
#define CFG_MAX_INSTRUCTIONS 10000000u
#define CFG_HOOK_STEP 1000 /* at most GW_HOOK_INTERVAL, for gw_meter_open */
#define CFG_ALLOC_CHARGE 32
#define CFG_MEMORY_MAX (64u * MIB)

#define NAME_MAX_LEN 64        /* listener names */
/* Listeners are sockets and scripts are files: real configs have a few. The
 * caps keep the checks (pairwise among listeners) cheap on any input. */
#define LISTENERS_MAX 1024
#define SCRIPTS_MAX 256
#define KEYPATH_MAX 256
#define SHOW_MAX 40            /* string bytes quoted in messages */

typedef struct cfg_ctx {
  lua_State *L;
  /* allocator */
  size_t used, limit;
  /* instruction hook */
  uint64_t instructions;
  size_t alloc_uncharged;      /* bytes allocated not yet charged */
  bool running;                /* the config's chunk runs: charge it */
  bool timed_out;
  /* the load */
  const char *file;            /* the path as given, for messages */
  char dir[PATH_MAX];          /* its directory, absolute */
  gw_config *cfg;
  char keypath[KEYPATH_MAX];   /* where the walk is, "listeners[1].framing" */
  size_t keylen;
  char *err;
  size_t errlen;
  bool failed;                 /* err holds our message */
} cfg_ctx;

/* ---- the throwaway state ---- */

static void cfg_hook(lua_State *L, lua_Debug *ar);

/* Past the limit, the hook fires at once and from then on at every
 * instruction, so a pcall in the config cannot swallow the error and carry
 * on: the next instruction after it fails again. */
static void over_limit(cfg_ctx *c) {
  if (!c->timed_out) {
    c->timed_out = true;
    lua_sethook(c->L, cfg_hook, LUA_MASKCOUNT, 1);
  }
}

/* Counts bytes and refuses to go past the limit; Lua turns the NULL into a
 * "not enough memory" error. ptr == NULL means osize is a type, not a size.
 * Growth is charged while the chunk runs; the hook raises, as an allocator
 * must not. */
static void *cfg_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  cfg_ctx *c = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    c->used -= old;
    return NULL;
  }
  if (nsize > old && nsize - old > c->limit - c->used)
    return NULL;
  void *p = realloc(ptr, nsize);
  if (!p)
    return NULL;
  c->used = c->used - old + nsize;
  if (c->running && nsize > old) {
    c->alloc_uncharged += nsize - old;
    c->instructions += c->alloc_uncharged / CFG_ALLOC_CHARGE;
    c->alloc_uncharged %= CFG_ALLOC_CHARGE;
    if (c->instructions >= CFG_MAX_INSTRUCTIONS)
      over_limit(c);
  }
  return p;
}

static void cfg_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  cfg_ctx *c;
  lua_getallocf(L, (void **)&c);
  c->instructions += c->timed_out ? 1 : CFG_HOOK_STEP;
  if (c->instructions < CFG_MAX_INSTRUCTIONS)
    return;
  over_limit(c);
  lua_pushliteral(L, "config took too long to run");
  lua_error(L);
}

/* The meter of the config's string and table functions (gw_meter_open). */
static void cfg_charge(lua_State *L, uint64_t cost) {
  cfg_ctx *c;
  lua_getallocf(L, (void **)&c);
  if (!c->running)
    return;
  c->instructions += cost;
  if (c->instructions < CFG_MAX_INSTRUCTIONS && !c->timed_out)
    return;
  over_limit(c);
  luaL_error(L, "config took too long to run");
}

static const char *const base_names[] = {
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall",
  "rawequal", "rawget", "rawlen", "rawset", "select", "tonumber", "tostring",
  "type", "_VERSION", NULL,
};

/* setmetatable without __gc. Lua runs finalizers with hooks off, so one
 * that loops would escape the instruction limit; and an object is only
 * finalized if its metatable has __gc when it is set, so checking here is
 * enough. Upvalue 1 is the real setmetatable. */
static int safe_setmetatable(lua_State *L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL)
      return luaL_error(L, "__gc metamethods are not allowed in the config");
    lua_pop(L, 1);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

static const luaL_Reg pure_libs[] = {
  {LUA_STRLIBNAME, luaopen_string},
  {LUA_TABLIBNAME, luaopen_table},
  {LUA_MATHLIBNAME, luaopen_math},
  {LUA_UTF8LIBNAME, luaopen_utf8},
  {NULL, NULL},
};

/* Pushes the config's _ENV: the pure base functions and libraries, and
 * nothing that reaches files, processes, other code or the GC. */
static void push_env(lua_State *L) {
  lua_newtable(L);
  int env = lua_gettop(L);
  luaL_requiref(L, LUA_GNAME, luaopen_base, 0);
  for (const char *const *n = base_names; *n; n++) {
    lua_getfield(L, -1, *n);
    lua_setfield(L, env, *n);
  }
  lua_getfield(L, -1, "setmetatable");
  lua_pushcclosure(L, safe_setmetatable, 1);
  lua_setfield(L, env, "setmetatable");
  lua_pop(L, 1);
  for (const luaL_Reg *lib = pure_libs; lib->name; lib++) {
    luaL_requiref(L, lib->name, lib->func, 0);
    lua_setfield(L, env, lib->name);
  }
  /* in place: the string metatable's __index is the same table */
  static const gw_meter meter = {cfg_charge};
  gw_meter_open(L, &meter);
}

/* ---- messages ---- */

/* Appends s (len bytes) to out as a quoted string, escaped the way Lua's %q
 * does, cut after SHOW_MAX bytes. */
static void quote(char *out, size_t cap, const char *s, size_t len) {
  size_t n = strlen(out);
  size_t shown = len < SHOW_MAX ? len : SHOW_MAX;
  if (n + 1 >= cap)
    return;
  out[n++] = '"';
  for (size_t i = 0; i < shown && n + 5 < cap; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\')
      n += (size_t)snprintf(out + n, cap - n, "\\%c", ch);
    else if (isprint(ch))
      out[n++] = (char)ch;
    else
      n += (size_t)snprintf(out + n, cap - n, "\\%u", ch);
  }
  snprintf(out + n, cap - n, "%s\"", shown < len ? "..." : "");
}

/* Writes the value at idx for a message: `string "abc"`, `number 5`, `table`
 * with its type, or `"abc"`, `5` without. Never calls a metamethod and never
 * allocates in Lua. */
static const char *show(lua_State *L, int idx, bool with_type, char *out,
                        size_t cap) {
  int t = lua_type(L, idx);
  bool has_value = t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN;
  out[0] = '\0';
  if (with_type || !has_value)
    snprintf(out, cap, "%s%s", lua_typename(L, t), has_value ? " " : "");
  size_t n = strlen(out);
  if (t == LUA_TSTRING) {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    quote(out, cap, s, len);
  } else if (t == LUA_TNUMBER && lua_isinteger(L, idx)) {
    snprintf(out + n, cap - n, "%lld", (long long)lua_tointeger(L, idx));
  } else if (t == LUA_TNUMBER) {
    /* Like Lua: a float that looks like an integer keeps its ".0". */
    char num[64];
    snprintf(num, sizeof num, "%.14g", (double)lua_tonumber(L, idx));
    if (strspn(num, "-0123456789") == strlen(num))
      strcat(num, ".0");
    snprintf(out + n, cap - n, "%s", num);
  } else if (t == LUA_TBOOLEAN) {
    snprintf(out + n, cap - n, "%s", lua_toboolean(L, idx) ? "true" : "false");
  }
  return out;
}

/* Raises the one error: "FILE: key.path: message", or "FILE: message" at the
 * top. Formats into the caller's buffer first, so it works even when Lua has
 * no memory left to make a string. */
static _Noreturn void fail(cfg_ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static _Noreturn void fail(cfg_ctx *c, const char *fmt, ...) {
  int n = snprintf(c->err, c->errlen, c->keylen ? "%s: %s: " : "%s: ",
                   c->file, c->keypath);
  if (n >= 0 && (size_t)n < c->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  c->failed = true;
  lua_pushlightuserdata(c->L, c);
  lua_error(c->L);
  abort(); /* lua_error longjmps; lua.h just does not say so */
}

/* Fails with "expected WHAT, got VALUE", naming the type only if it is the
 * wrong one. */
static _Noreturn void fail_expected(cfg_ctx *c, int idx, const char *what,
                                    int want_type) {
  char got[SHOW_MAX + 32];
  show(c->L, idx, lua_type(c->L, idx) != want_type, got, sizeof got);
  fail(c, "expected %s, got %s", what, got);
}

/* ---- the key path ---- */

static bool is_identifier(const char *s, size_t len) {
  if (len == 0 || isdigit((unsigned char)s[0]))
    return false;
  for (size_t i = 0; i < len; i++)
    if (!isalnum((unsigned char)s[i]) && s[i] != '_')
      return false;
  return true;
}

/* Appends the key at idx to the path (".name", "[3]", ["odd key"]) and
 * returns the old length, for path_pop. */
static size_t path_push(cfg_ctx *c, int idx) {
  size_t mark = c->keylen;
  char buf[SHOW_MAX + 32] = "";
  lua_State *L = c->L;
  size_t len;
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *s = lua_tolstring(L, idx, &len);
    if (is_identifier(s, len) && len < sizeof buf - 1) {
      snprintf(buf, sizeof buf, "%s%s", mark ? "." : "", s);
    } else {
      strcpy(buf, "[");
      quote(buf, sizeof buf - 1, s, len);
      strcat(buf, "]");
    }
  } else {
    char v[SHOW_MAX + 16];
    snprintf(buf, sizeof buf, "[%s]", show(L, idx, false, v, sizeof v));
  }
  snprintf(c->keypath + mark, sizeof c->keypath - mark, "%s", buf);
  c->keylen = strlen(c->keypath);
  return mark;
}

static void path_pop(cfg_ctx *c, size_t mark) {
  c->keylen = mark;
  c->keypath[mark] = '\0';
}

/* Pushes t[key] (raw: no metamethod of the config runs) and appends key to
 * the path. Returns the value's type; undo with leave(). */
static int enter(cfg_ctx *c, int t, const char *key, size_t *mark) {
  luaL_checkstack(c->L, 4, NULL);
  lua_pushstring(c->L, key);
  *mark = path_push(c, -1);
  return lua_rawget(c->L, t);
}

static int enter_index(cfg_ctx *c, int t, lua_Integer i, size_t *mark) {
  luaL_checkstack(c->L, 4, NULL);
  lua_pushinteger(c->L, i);
  *mark = path_push(c, -1);
  lua_pop(c->L, 1);
  return lua_rawgeti(c->L, t, i);
}

static void leave(cfg_ctx *c, size_t mark) {
  lua_pop(c->L, 1);
  path_pop(c, mark);
}

/* ---- unknown keys ---- */

/* The known key closest to s, if it is close enough to be a typo. */
static const char *closest(const char *s, size_t len,
                           const char *const known[]) {
  const char *best = NULL;
  size_t best_d = len <= 3 ? 2 : 3;
  for (const char *const *k = known; *k; k++) {
    size_t d = gw_edit_distance(s, len, *k, strlen(*k));
    if (d < best_d) {
      best = *k;
      best_d = d;
    }
  }
  return best;
}

/* Orders keys for a deterministic report: strings by bytes, then numbers,
 * then the rest by type. Returns a < b. */
static bool key_less(lua_State *L, int a, int b) {
  static const int rank[LUA_NUMTYPES] = {
    [LUA_TSTRING] = 0, [LUA_TNUMBER] = 1, [LUA_TBOOLEAN] = 2,
    [LUA_TTABLE] = 3, [LUA_TFUNCTION] = 4, [LUA_TUSERDATA] = 5,
    [LUA_TLIGHTUSERDATA] = 6, [LUA_TTHREAD] = 7,
  };
  int ta = lua_type(L, a), tb = lua_type(L, b);
  if (ta != tb)
    return rank[ta] < rank[tb];
  if (ta == LUA_TSTRING) {
    size_t la, lb;
    const char *sa = lua_tolstring(L, a, &la), *sb = lua_tolstring(L, b, &lb);
    int d = memcmp(sa, sb, la < lb ? la : lb);
    return d < 0 || (d == 0 && la < lb);
  }
  if (ta == LUA_TNUMBER)
    return lua_compare(L, a, b, LUA_OPLT);
  if (ta == LUA_TBOOLEAN)
    return !lua_toboolean(L, a) && lua_toboolean(L, b);
  return false;
}

static bool is_known(lua_State *L, int key, const char *const known[],
                     lua_Integer list_n) {
  if (list_n >= 0) {
    lua_Integer i;
    return lua_isinteger(L, key) && (i = lua_tointeger(L, key)) >= 1 &&
           i <= list_n;
  }
  if (lua_type(L, key) != LUA_TSTRING)
    return false;
  size_t len;
  const char *s = lua_tolstring(L, key, &len);
  for (const char *const *k = known; *k; k++)
    if (strlen(*k) == len && memcmp(*k, s, len) == 0)
      return true;
  return false;
}

/* Fails on the smallest key of table t that is not one of known (a record),
 * or not one of 1..list_n (a list, when list_n >= 0). */
static void check_keys(cfg_ctx *c, int t, const char *const known[],
                       lua_Integer list_n) {
  lua_State *L = c->L;
  luaL_checkstack(L, 4, NULL);
  lua_pushnil(L); /* the smallest unknown key so far */
  int best = lua_gettop(L);
  bool found = false;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (!is_known(L, -1, known, list_n) && (!found || key_less(L, -1, best))) {
      lua_copy(L, -1, best);
      found = true;
    }
  }
  if (!found) {
    lua_pop(L, 1);
    return;
  }
  int kt = lua_type(L, best);
  if (kt != LUA_TSTRING && kt != LUA_TNUMBER)
    fail(c, "unexpected %s key", lua_typename(L, kt));
  path_push(c, best);
  if (list_n >= 0)
    fail(c, "unexpected key in a list");
  size_t len;
  const char *s = kt == LUA_TSTRING ? lua_tolstring(L, best, &len) : NULL;
  const char *guess = s ? closest(s, len, known) : NULL;
  if (guess)
    fail(c, "unknown key (did you mean \"%s\"?)", guess);
  fail(c, "unknown key");
}

/* ---- typed values (the value is on top, the path names it) ---- */

/* "a positive integer", "an integer from 1 to 4096"... for messages. Returns
 * whether it names the upper bound. */
static bool int_desc(lua_Integer min, lua_Integer max, char *out, size_t cap) {
  bool unbounded = max == UINT32_MAX || max == LUA_MAXINTEGER;
  if (unbounded && min == 0)
    snprintf(out, cap, "a non-negative integer");
  else if (unbounded && min == 1)
    snprintf(out, cap, "a positive integer");
  else if (unbounded)
    snprintf(out, cap, "an integer >= %lld", (long long)min);
  else
    snprintf(out, cap, "an integer from %lld to %lld", (long long)min,
             (long long)max);
  return !unbounded;
}

static lua_Integer want_int(cfg_ctx *c, lua_Integer min, lua_Integer max) {
  char desc[80];
  bool bounded = int_desc(min, max, desc, sizeof desc);
  if (!lua_isinteger(c->L, -1))
    fail_expected(c, -1, desc, LUA_TNUMBER);
  lua_Integer v = lua_tointeger(c->L, -1);
  if (v < min)
    fail_expected(c, -1, desc, LUA_TNUMBER);
  if (v > max && bounded)
    fail_expected(c, -1, desc, LUA_TNUMBER);
  if (v > max)
    fail(c, "expected %s up to %lld, got %lld", desc, (long long)max,
         (long long)v);
  return v;
}

/* One of a few integers, or a few strings standing for one. */
typedef struct choice {
  const char *name; /* NULL: the integer itself */
  lua_Integer value;
} choice;

static lua_Integer want_choice(cfg_ctx *c, const choice *ch, size_t n,
                               const char *desc) {
  lua_State *L = c->L;
  int t = lua_type(L, -1);
  for (size_t i = 0; i < n; i++) {
    if (ch[i].name && t == LUA_TSTRING) {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      if (len == strlen(ch[i].name) && memcmp(s, ch[i].name, len) == 0)
        return ch[i].value;
    }
    if (!ch[i].name && lua_isinteger(L, -1) && lua_tointeger(L, -1) == ch[i].value)
      return ch[i].value;
  }
  bool any_name = false, any_int = false;
  for (size_t i = 0; i < n; i++)
    *(ch[i].name ? &any_name : &any_int) = true;
  /* A value of a type the choices have is shown without its type. */
  bool right_type = (t == LUA_TSTRING && any_name) || (t == LUA_TNUMBER && any_int);
  fail_expected(c, -1, desc, right_type ? t : LUA_TNONE);
}

static bool want_bool(cfg_ctx *c) {
  if (!lua_isboolean(c->L, -1))
    fail_expected(c, -1, "a boolean", LUA_TBOOLEAN);
  return lua_toboolean(c->L, -1);
}

/* A string without NUL bytes (they would cut it short in C). */
static const char *want_string(cfg_ctx *c, const char *desc) {
  if (lua_type(c->L, -1) != LUA_TSTRING)
    fail_expected(c, -1, desc, LUA_TSTRING);
  size_t len;
  const char *s = lua_tolstring(c->L, -1, &len);
  if (strlen(s) != len)
    fail_expected(c, -1, desc, LUA_TSTRING);
  return s;
}

/* The value on top must be a table with only the known keys; returns its
 * absolute index. */
static int want_record(cfg_ctx *c, const char *const known[]) {
  if (!lua_istable(c->L, -1))
    fail_expected(c, -1, "a table", LUA_TTABLE);
  int t = lua_gettop(c->L);
  check_keys(c, t, known, -1);
  return t;
}

/* The value on top must be a list (keys 1..n, nothing else) of at most max
 * items; returns n. */
static lua_Integer want_list(cfg_ctx *c, const char *desc, bool nonempty,
                             lua_Integer max) {
  lua_State *L = c->L;
  if (!lua_istable(L, -1))
    fail_expected(c, -1, desc, LUA_TTABLE);
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  check_keys(c, lua_gettop(L), NULL, n);
  if (nonempty && n == 0)
    fail(c, "expected %s, got an empty table", desc);
  if (n > max)
    fail(c, "expected at most %lld items, got %lld", (long long)max,
         (long long)n);
  return n;
}

/* Optional values: def when the key is missing. */
static lua_Integer get_int(cfg_ctx *c, int t, const char *key, lua_Integer min,
                           lua_Integer max, lua_Integer def) {
  size_t mark;
  if (enter(c, t, key, &mark) != LUA_TNIL)
    def = want_int(c, min, max);
  leave(c, mark);
  return def;
}

static bool get_bool(cfg_ctx *c, int t, const char *key, bool def) {
  size_t mark;
  if (enter(c, t, key, &mark) != LUA_TNIL)
    def = want_bool(c);
  leave(c, mark);
  return def;
}

static lua_Integer get_choice(cfg_ctx *c, int t, const char *key,
                              const choice *ch, size_t n, const char *desc,
                              lua_Integer def) {
  size_t mark;
  if (enter(c, t, key, &mark) != LUA_TNIL)
    def = want_choice(c, ch, n, desc);
  leave(c, mark);
  return def;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ---- files ---- */

/* NULL if path is a regular file we can open for reading, else why not. */
static const char *unreadable(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0)
    return strerror(errno);
  if (S_ISDIR(st.st_mode))
    return strerror(EISDIR);
  if (!S_ISREG(st.st_mode))
    return "not a regular file";
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return strerror(errno);
  close(fd);
  return NULL;
}

/* s as an absolute path: relative ones are taken from the config's
 * directory, so they still work if the process changes directory. */
static char *resolve_path(cfg_ctx *c, const char *s) {
  char *p;
  if (s[0] == '/')
    p = strdup(s);
  else if (asprintf(&p, "%s%s%s", c->dir, strcmp(c->dir, "/") ? "/" : "",
                    s) < 0)
    p = NULL;
  if (!p)
    fail(c, "out of memory");
  return p;
}

/* ---- framing ---- */

static const char *const framing_keys[] = {
  "preset", "length_offset", "length_size", "byte_order", "length_adjust",
  "opcode_offset", "opcode_size", "min_frame", "max_frame", "keepalive",
  "string", NULL,
};
static const char *const side_keys[] = {"client", "server", NULL};
static const char *const string_keys[] = {"length_size", "nul", NULL};

/* A table without a preset starts from this. */
static const gw_framing custom_framing = {
  .name = "custom",
  .big_endian = true,
  .max_frame = {16 * MIB, 16 * MIB},
};

/* Fills f with preset name, or fails listing the presets. */
static void framing_preset(cfg_ctx *c, const char *name, gw_framing *f) {
  if (gw_framing_preset(name, f) == 0)
    return;
  char list[256] = "";
  for (const char *const *p = gw_framing_presets; *p; p++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"",
             p == gw_framing_presets ? "" : ", ", *p);
  char got[SHOW_MAX + 8] = "";
  quote(got, sizeof got, name, strlen(name));
  const char *guess = closest(name, strlen(name), gw_framing_presets);
  if (guess)
    fail(c, "unknown preset %s (did you mean \"%s\"? presets: %s)", got, guess,
         list);
  fail(c, "unknown preset %s (presets: %s)", got, list);
}

/* min_frame / max_frame: one number for both sides, or { client, server }. */
static void frame_bounds(cfg_ctx *c, int t, const char *key, lua_Integer min,
                         uint32_t out[GW_SIDES]) {
  size_t mark;
  int type = enter(c, t, key, &mark);
  if (type == LUA_TTABLE) {
    int s = want_record(c, side_keys);
    for (int side = 0; side < GW_SIDES; side++)
      out[side] = (uint32_t)get_int(c, s, side_keys[side], min, UINT32_MAX,
                                    out[side]);
  } else if (type != LUA_TNIL) {
    if (type != LUA_TNUMBER) {
      char desc[96];
      snprintf(desc, sizeof desc, "%s or { client = N, server = N }",
               min ? "a positive integer" : "a non-negative integer");
      fail_expected(c, -1, desc, LUA_TNONE);
    }
    out[GW_CLIENT] = out[GW_SERVER] = (uint32_t)want_int(c, min, UINT32_MAX);
  }
  leave(c, mark);
}

/* Fields that mean nothing when no framing is done. */
static const char *const raw_ignores[] = {
  "length_offset", "length_size", "length_adjust", "opcode_offset",
  "opcode_size", "keepalive", NULL,
};

/* The framing table at t: a preset, then its overrides. */
static void framing_table(cfg_ctx *c, int t, gw_framing *f) {
  static const choice length_sizes[] = {
    {NULL, 1}, {NULL, 2}, {NULL, 3}, {NULL, 4}, {"varint", GW_LENGTH_VARINT},
  };
  static const choice opcode_sizes[] = {{NULL, 0}, {NULL, 1}, {NULL, 2}, {NULL, 4}};
  static const choice byte_orders[] = {{"big", 1}, {"little", 0}};
  size_t mark;

  *f = custom_framing;
  bool preset = enter(c, t, "preset", &mark) != LUA_TNIL;
  if (preset)
    framing_preset(c, want_string(c, "a preset name"), f);
  leave(c, mark);
  if (f->raw) {
    for (const char *const *k = raw_ignores; *k; k++) {
      if (enter(c, t, *k, &mark) != LUA_TNIL)
        fail(c, "means nothing with the \"raw\" preset, which does no framing");
      leave(c, mark);
    }
  }

  f->length_offset = (uint32_t)get_int(c, t, "length_offset", 0,
                                       GW_HEADER_TEMPLATE_MAX - 1,
                                       f->length_offset);
  /* Required without a preset: an all-zero length_size means varint. */
  if (enter(c, t, "length_size", &mark) != LUA_TNIL || !preset)
    f->length_size = (uint8_t)want_choice(c, length_sizes, COUNT(length_sizes),
                                          "1, 2, 3, 4 or \"varint\"");
  leave(c, mark);
  f->big_endian = get_choice(c, t, "byte_order", byte_orders,
                             COUNT(byte_orders), "\"big\" or \"little\"",
                             f->big_endian);
  f->length_adjust = (int32_t)get_int(c, t, "length_adjust", INT32_MIN,
                                      INT32_MAX, f->length_adjust);
  f->opcode_offset = (uint32_t)get_int(c, t, "opcode_offset", 0,
                                       GW_HEADER_TEMPLATE_MAX - 1,
                                       f->opcode_offset);
  f->opcode_size = (uint8_t)get_choice(c, t, "opcode_size", opcode_sizes,
                                       COUNT(opcode_sizes), "0, 1, 2 or 4",
                                       f->opcode_size);
  frame_bounds(c, t, "min_frame", 0, f->min_frame);
  frame_bounds(c, t, "max_frame", 1, f->max_frame);
  f->keepalive = get_bool(c, t, "keepalive", f->keepalive);
  if (enter(c, t, "string", &mark) != LUA_TNIL) {
    static const choice str_sizes[] = {{NULL, 0}, {NULL, 1}, {NULL, 2}, {NULL, 4}};
    int s = want_record(c, string_keys);
    f->str_length_size = (uint8_t)get_choice(c, s, "length_size", str_sizes,
                                             COUNT(str_sizes), "0, 1, 2 or 4",
                                             f->str_length_size);
    f->str_nul = get_bool(c, s, "nul", f->str_nul);
  }
  leave(c, mark);

  if (f->raw)
    return;
  /* The fixed header is the length field and the opcode, whichever ends
   * last; a varint has no fixed place, so it ends at the field's start. */
  uint32_t header = f->length_offset + f->length_size;
  if (f->length_size == GW_LENGTH_VARINT)
    header = f->length_offset;
  else if (f->opcode_size && f->opcode_offset + f->opcode_size > header)
    header = f->opcode_offset + f->opcode_size;
  if (header > GW_HEADER_TEMPLATE_MAX) {
    bool op = f->opcode_size && f->opcode_offset + f->opcode_size == header;
    enter(c, t, op ? "opcode_offset" : "length_offset", &mark);
    fail(c, "the %s (bytes %u..%u) must lie within the first %d bytes",
         op ? "opcode" : "length field", header - (op ? f->opcode_size : f->length_size),
         header - 1, GW_HEADER_TEMPLATE_MAX);
  }
  f->header_len = header;
}

/* listeners[i].framing: nil (raw), a preset name, or a table. */
static void listener_framing(cfg_ctx *c, int l, gw_framing *f) {
  size_t mark;
  int type = enter(c, l, "framing", &mark);
  if (type == LUA_TNIL)
    framing_preset(c, "raw", f);
  else if (type == LUA_TSTRING)
    framing_preset(c, want_string(c, "a preset name or a table"), f);
  else if (type == LUA_TTABLE)
    framing_table(c, want_record(c, framing_keys), f);
  else
    fail_expected(c, -1, "a preset name or a table", LUA_TNONE);

  char msg[256];
  if (gw_framing_validate(f, msg, sizeof msg) != 0) {
    /* The message starts with the field's name: hang it under framing. */
    const char *colon = strchr(msg, ':');
    if (colon) {
      size_t fl = (size_t)(colon - msg);
      snprintf(c->keypath + c->keylen, sizeof c->keypath - c->keylen, ".%.*s",
               (int)fl, msg);
      c->keylen = strlen(c->keypath);
      fail(c, "%s", colon + 2);
    }
    fail(c, "%s", msg);
  }
  leave(c, mark);
}

/* Protected: the framing at 3 (a preset name or a table) into the
 * gw_framing at 2, as listeners[i].framing, with the cfg_ctx at 1. */
static int framing_value(lua_State *L) {
  cfg_ctx *c = lua_touserdata(L, 1);
  gw_framing *f = lua_touserdata(L, 2);
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, 3);
  lua_setfield(L, -2, "framing");
  listener_framing(c, lua_gettop(L), f);
  return 0;
}

int gw_config_framing(lua_State *L, int idx, gw_framing *f, const char *who, char *err,
                      size_t errlen) {
  cfg_ctx c = {.L = L, .file = who, .err = err, .errlen = errlen};
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, framing_value);
  lua_pushlightuserdata(L, &c);
  lua_pushlightuserdata(L, f);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 3, 0, 0) == LUA_OK) return 0;
  if (!c.failed) /* not ours: Lua's (memory) */
    snprintf(err, errlen, "%s: %s", who,
             lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error");
  lua_pop(L, 1);
  return -EINVAL;
}

/* ---- listeners ---- */

static const char *const listener_keys[] = {
  "name", "listen", "upstream", "framing", "scripts", "on_error", "unsafe",
  "unfinished_frame", "phases", "proxy_protocol", "proxy_protocol_from", "upstream_proxy_protocol",
  "protocol", NULL,
};

static bool valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > NAME_MAX_LEN)
    return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && !strchr("_.-", *s))
      return false;
  return true;
}

static bool is_wildcard(const struct sockaddr_storage *a) {
  if (a->ss_family == AF_INET)
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr == htonl(INADDR_ANY);
  return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)a)->sin6_addr);
}

static uint16_t addr_port(const struct sockaddr_storage *a) {
  return a->ss_family == AF_INET ? ((const struct sockaddr_in *)a)->sin_port
                                 : ((const struct sockaddr_in6 *)a)->sin6_port;
}

/* Two listen addresses that cannot both be bound: the same, or the same port
 * with a wildcard on either side (Linux binds [::] dual-stack). */
static bool addrs_conflict(const struct sockaddr_storage *a,
                           const struct sockaddr_storage *b) {
  if (addr_port(a) != addr_port(b))
    return false;
  if (is_wildcard(a) || is_wildcard(b))
    return true;
  if (a->ss_family != b->ss_family)
    return false;
  if (a->ss_family == AF_INET)
    return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
           ((const struct sockaddr_in *)b)->sin_addr.s_addr;
  return IN6_ARE_ADDR_EQUAL(&((const struct sockaddr_in6 *)a)->sin6_addr,
                            &((const struct sockaddr_in6 *)b)->sin6_addr);
}

/* listen / upstream: "host:port" parsed into as-written and address. */
static void listener_addr(cfg_ctx *c, int l, const char *key, bool resolve,
                          char written[GW_ADDR_MAX],
                          struct sockaddr_storage *addr) {
  size_t mark;
  enter(c, l, key, &mark);
  const char *s = want_string(c, "\"host:port\"");
  char msg[256];
  if (gw_parse_addr(s, addr, resolve, msg, sizeof msg) != 0)
    fail(c, "%s", msg);
  snprintf(written, GW_ADDR_MAX, "%s", s);
  leave(c, mark);
}

/* ---- upstream ---- */

static const char *const upstream_keys[] = {"servers", "balance", "health", "resolve_ms", NULL};
static const char *const server_keys[] = {"name", "addr", "weight", "backup", NULL};
static const char *const health_keys[] = {"interval_ms", "timeout_ms", "rise", "fall", NULL};

/* A server's "host:port" (the value on top): numeric now, a name later. */
static void server_addr(cfg_ctx *c, gw_upstream_server_config *sv) {
  const char *s = want_string(c, "\"host:port\"");
  char msg[256];
  int rc = gw_parse_host_port(s, sv->host, sizeof sv->host, &sv->port, &sv->sockaddr, msg,
                              sizeof msg);
  if (rc < 0)
    fail(c, "%s", msg);
  if (rc == 0 && strcmp(sv->host, "localhost") == 0) { /* a name here, as /etc/hosts has it */
    memset(&sv->sockaddr, 0, sizeof sv->sockaddr);
    rc = 1;
  }
  snprintf(sv->addr, sizeof sv->addr, "%s", s);
  if (rc == 0) /* numeric: named by its canonical form, as logs show it */
    gw_format_addr((struct sockaddr *)&sv->sockaddr, sv->name, sizeof sv->name);
  else
    snprintf(sv->name, sizeof sv->name, "%.64s", s);
}

/* One item of a server list: "host:port" or { name, addr, weight, backup }. */
static void upstream_server(cfg_ctx *c, gw_upstream_server_config *sv) {
  sv->weight = 1;
  if (lua_type(c->L, -1) == LUA_TSTRING) {
    server_addr(c, sv);
    return;
  }
  if (!lua_istable(c->L, -1))
    fail_expected(c, -1, "\"host:port\" or { addr = \"host:port\", ... }", LUA_TNONE);
  int t = want_record(c, server_keys);
  size_t m;
  enter(c, t, "addr", &m);
  server_addr(c, sv);
  leave(c, m);
  if (enter(c, t, "name", &m) != LUA_TNIL) {
    const char *name = want_string(c, "a server name");
    if (!valid_name(name))
      fail_expected(c, -1, "a name of 1 to 64 letters, digits, \"_\", \".\" or \"-\"",
                    LUA_TSTRING);
    snprintf(sv->name, sizeof sv->name, "%s", name);
  }
  leave(c, m);
  sv->weight = (uint32_t)get_int(c, t, "weight", 1, 256, 1);
  sv->backup = get_bool(c, t, "backup", false);
}

static void upstream_servers(cfg_ctx *c, gw_upstream_config *u) {
  lua_Integer n = want_list(c, "a non-empty list of servers", true, GW_UPSTREAM_SERVERS_MAX);
  int list = lua_gettop(c->L);
  if (!(u->servers = calloc((size_t)n, sizeof *u->servers)))
    fail(c, "out of memory");
  u->nservers = (size_t)n;
  bool primary = false;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t m;
    enter_index(c, list, i, &m);
    gw_upstream_server_config *sv = &u->servers[i - 1];
    upstream_server(c, sv);
    for (lua_Integer j = 1; j < i; j++)
      if (strcmp(u->servers[j - 1].name, sv->name) == 0)
        fail(c, "\"%s\" already names server %lld (give each server its own name)",
             sv->name, (long long)j);
    primary |= !sv->backup;
    leave(c, m);
  }
  if (!primary)
    fail(c, "every server is a backup: at least one must not be");
}

/* health = true, or { interval_ms, timeout_ms, rise, fall } (HAProxy's
 * inter, timeout check, rise and fall). */
static void upstream_health(cfg_ctx *c, int t, gw_upstream_config *u) {
  u->health_interval_ms = 2000;
  u->health_timeout_ms = 1000;
  u->health_rise = 2;
  u->health_fall = 3;
  size_t mark;
  int type = enter(c, t, "health", &mark);
  if (type == LUA_TBOOLEAN) {
    u->health = lua_toboolean(c->L, -1);
  } else if (type != LUA_TNIL) {
    if (type != LUA_TTABLE)
      fail_expected(c, -1, "true or { interval_ms, timeout_ms, rise, fall }", LUA_TNONE);
    int h = want_record(c, health_keys);
    u->health = true;
    u->health_interval_ms = (uint32_t)get_int(c, h, "interval_ms", 10, 86400000, 2000);
    u->health_timeout_ms = (uint32_t)get_int(c, h, "timeout_ms", 1, 86400000,
                                             u->health_interval_ms < 1000 ? u->health_interval_ms : 1000);
    u->health_rise = (uint32_t)get_int(c, h, "rise", 1, 1000, 2);
    u->health_fall = (uint32_t)get_int(c, h, "fall", 1, 1000, 3);
    if (u->health_timeout_ms > u->health_interval_ms) {
      size_t m;
      enter(c, h, "timeout_ms", &m);
      fail(c, "must be at most interval_ms (%u), got %u", u->health_interval_ms,
           u->health_timeout_ms);
    }
  }
  leave(c, mark);
}

/* upstream = "host:port" | { server, ... } | { servers = {...}, balance,
 * health, resolve_ms }: always a pool of servers in lc->pool. A table with
 * any key other than 1..n is the record form. */
static void listener_upstream(cfg_ctx *c, int l, gw_listener_config *lc) {
  static const choice balances[] = {
    {"round_robin", GW_BALANCE_ROUND_ROBIN}, {"least_sessions", GW_BALANCE_LEAST_SESSIONS},
    {"hash", GW_BALANCE_HASH},
  };
  gw_upstream_config *u = &lc->pool;
  u->resolve_ms = 30000;
  size_t mark;
  int type = enter(c, l, "upstream", &mark);
  if (type == LUA_TSTRING) {
    if (!(u->servers = calloc(1, sizeof *u->servers)))
      fail(c, "out of memory");
    u->nservers = 1;
    u->servers[0].weight = 1;
    server_addr(c, &u->servers[0]);
    snprintf(lc->upstream, sizeof lc->upstream, "%s", u->servers[0].addr);
  } else if (type == LUA_TTABLE) {
    bool record = false;
    lua_Integer n = (lua_Integer)lua_rawlen(c->L, -1);
    lua_pushnil(c->L);
    while (lua_next(c->L, -2)) {
      lua_pop(c->L, 1);
      lua_Integer k;
      if (!lua_isinteger(c->L, -1) || (k = lua_tointeger(c->L, -1)) < 1 || k > n)
        record = true;
    }
    if (record) {
      int t = want_record(c, upstream_keys);
      size_t m;
      if (enter(c, t, "servers", &m) == LUA_TNIL)
        fail(c, "missing (a list of \"host:port\" or { addr = ..., name = ..., weight = ..., "
             "backup = ... })");
      upstream_servers(c, u);
      leave(c, m);
      u->balance = (gw_balance)get_choice(c, t, "balance", balances, COUNT(balances),
                                          "\"round_robin\", \"least_sessions\" or \"hash\"",
                                          GW_BALANCE_ROUND_ROBIN);
      upstream_health(c, t, u);
      u->resolve_ms = (uint32_t)get_int(c, t, "resolve_ms", 100, 86400000, 30000);
    } else {
      upstream_servers(c, u);
    }
    snprintf(lc->upstream, sizeof lc->upstream, "%s", u->servers[0].name);
  } else {
    fail_expected(c, -1, "\"host:port\"", LUA_TSTRING); /* as before lists */
  }
  lc->upstream_addr = u->servers[0].sockaddr;
  leave(c, mark);
}

static void listener_scripts(cfg_ctx *c, int l, gw_listener_config *lc) {
  size_t mark;
  if (enter(c, l, "scripts", &mark) != LUA_TNIL) {
    lua_Integer n = want_list(c, "a list of script paths", false,
                              SCRIPTS_MAX);
    int list = lua_gettop(c->L);
    if (n > 0) {
      lc->scripts = calloc((size_t)n, sizeof *lc->scripts);
      if (!lc->scripts)
        fail(c, "out of memory");
      lc->nscripts = (size_t)n;
    }
    for (lua_Integer i = 1; i <= n; i++) {
      size_t m;
      enter_index(c, list, i, &m);
      const char *s = want_string(c, "a script path");
      if (!*s)
        fail(c, "expected a script path, got an empty string");
      char *p = lc->scripts[i - 1] = resolve_path(c, s);
      const char *why = unreadable(p);
      if (why) {
        char shown[SHOW_MAX + 8] = "";
        quote(shown, sizeof shown, s, strlen(s));
        fail(c, "cannot open %s: %s", shown, why);
      }
      leave(c, m);
    }
  }
  leave(c, mark);
}

/* "10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1": the block's bits
 * past the prefix must be zero, as a route's would. */
static bool parse_cidr(const char *s, gw_cidr *out) {
  char buf[64];
  const char *slash = strchr(s, '/');
  size_t n = slash ? (size_t)(slash - s) : strlen(s);
  if (n == 0 || n >= sizeof buf) return false;
  memcpy(buf, s, n);
  buf[n] = '\0';
  memset(out, 0, sizeof *out);
  unsigned max;
  uint8_t v4[4];
  if (inet_pton(AF_INET, buf, v4) == 1) {
    out->addr[10] = out->addr[11] = 0xff;
    memcpy(out->addr + 12, v4, 4);
    max = 32;
  } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
    max = 128;
  } else {
    return false;
  }
  unsigned bits = max;
  if (slash) {
    char *end;
    errno = 0;
    unsigned long b = strtoul(slash + 1, &end, 10);
    if (!slash[1] || *end || errno || b > max || !isdigit((unsigned char)slash[1])) return false;
    bits = (unsigned)b;
  }
  out->bits = (uint8_t)(bits + (128 - max));
  for (unsigned i = out->bits; i < 128; i++)
    if (out->addr[i / 8] & (0x80 >> (i % 8))) return false;
  return true;
}

bool gw_cidr_match(const gw_cidr *blocks, size_t n, const struct sockaddr *addr) {
  uint8_t a[16] = {0};
  if (addr->sa_family == AF_INET) {
    a[10] = a[11] = 0xff;
    memcpy(a + 12, &((const struct sockaddr_in *)addr)->sin_addr, 4);
  } else if (addr->sa_family == AF_INET6) {
    memcpy(a, &((const struct sockaddr_in6 *)addr)->sin6_addr, 16);
  } else {
    return false;
  }
  for (size_t k = 0; k < n; k++) {
    unsigned bits = blocks[k].bits, whole = bits / 8, rest = bits % 8;
    if (memcmp(a, blocks[k].addr, whole)) continue;
    if (rest && ((a[whole] ^ blocks[k].addr[whole]) & (0xff00 >> rest) & 0xff)) continue;
    return true;
  }
  return false;
}

#define PHASES_MAX 16

/* phases = { client = { { raw = 4 }, { framing = "u16be", frames = 1 } },
 *            server = { { raw = 1 } } }: each side's steps before the
 * listener's framing applies. */
static void listener_phases(cfg_ctx *c, int l, gw_listener_config *lc) {
  static const char *const side_keys[] = {"client", "server", NULL};
  static const char *const step_keys[] = {"raw", "framing", "frames", NULL};
  size_t mark;
  if (enter(c, l, "phases", &mark) == LUA_TNIL) {
    leave(c, mark);
    return;
  }
  int t = want_record(c, side_keys);
  for (int side = 0; side < GW_SIDES; side++) {
    size_t m;
    if (enter(c, t, side_keys[side], &m) != LUA_TNIL) {
      lua_Integer n = want_list(c, "a list of steps ({ raw = n } or { framing = ..., frames = n })",
                                true, PHASES_MAX);
      int list = lua_gettop(c->L);
      if (!(lc->phases[side] = calloc((size_t)n, sizeof *lc->phases[side])))
        fail(c, "out of memory");
      lc->nphases[side] = (size_t)n;
      for (lua_Integer i = 1; i <= n; i++) {
        size_t sm;
        enter_index(c, list, i, &sm);
        int st = want_record(c, step_keys);
        gw_phase *ph = &lc->phases[side][i - 1];
        ph->raw = (uint64_t)get_int(c, st, "raw", 0, LUA_MAXINTEGER, 0);
        lua_getfield(c->L, st, "framing");
        bool has_framing = !lua_isnil(c->L, -1);
        lua_pop(c->L, 1);
        if (ph->raw && has_framing)
          fail(c, "a step is either { raw = n } or { framing = ..., frames = n }, not both");
        if (!ph->raw && !has_framing)
          fail(c, "a step needs raw = n (bytes) or framing = a preset or a table");
        if (has_framing) listener_framing(c, st, &ph->framing);
        ph->frames = (uint32_t)get_int(c, st, "frames", 0, UINT32_MAX, 0);
        if (ph->raw && ph->frames) fail(c, "frames = n goes with framing, not raw");
        leave(c, sm);
      }
    }
    leave(c, m);
  }
  leave(c, mark);
}

static void listener_proxy(cfg_ctx *c, int l, gw_listener_config *lc) {
  static const choice versions[] = {{"v1", 1}, {"v2", 2}};
  lc->proxy_protocol = get_bool(c, l, "proxy_protocol", false);
  size_t mark;
  if (enter(c, l, "proxy_protocol_from", &mark) != LUA_TNIL) {
    lua_Integer n = want_list(c, "a list of addresses or blocks (\"10.0.0.0/8\")", true, 1024);
    int list = lua_gettop(c->L);
    if (!(lc->proxy_from = calloc((size_t)n, sizeof *lc->proxy_from)))
      fail(c, "out of memory");
    lc->nproxy_from = (size_t)n;
    for (lua_Integer i = 1; i <= n; i++) {
      size_t m;
      enter_index(c, list, i, &m);
      const char *s = want_string(c, "an address or block (\"10.0.0.0/8\")");
      if (!parse_cidr(s, &lc->proxy_from[i - 1]))
        fail_expected(c, -1, "an address or block such as \"10.0.0.0/8\" or \"::1\"",
                      LUA_TSTRING);
      leave(c, m);
    }
    if (!lc->proxy_protocol)
      fail(c, "needs proxy_protocol = true");
  }
  leave(c, mark);
  lc->upstream_proxy_protocol = (uint8_t)get_choice(
      c, l, "upstream_proxy_protocol", versions, COUNT(versions), "\"v1\" or \"v2\"", 0);
}

/* protocol = "top": the directory protocols/top next to the config, else
 * the installed one; a value with a slash is a directory path. Either must
 * hold packets.lua (init.lua, the module's code, is optional). */
static void listener_protocol(cfg_ctx *c, int l, gw_listener_config *lc) {
  size_t mark;
  if (enter(c, l, "protocol", &mark) != LUA_TNIL) {
    const char *s = want_string(c, "a protocol name (\"top\") or directory");
    bool path = strchr(s, '/') != NULL;
    if (!*s || (!path && !valid_name(s)))
      fail_expected(c, -1, "a protocol name of letters, digits, \"_\", \".\" or \"-\", "
                    "or a directory path", LUA_TSTRING);
    if (!(lc->protocol = strdup(s))) fail(c, "out of memory");
    char *local = NULL, *file = NULL;
    if (path) {
      local = resolve_path(c, s);
    } else if (asprintf(&local, "%s%sprotocols/%s", c->dir, strcmp(c->dir, "/") ? "/" : "",
                        s) < 0) {
      local = NULL;
    }
    if (!local || asprintf(&file, "%s/packets.lua", local) < 0) {
      free(local);
      fail(c, "out of memory");
    }
    const char *why = unreadable(file);
    free(file);
    if (why && !path) {
      /* not next to the config: the installed protocols */
      char *shared = NULL;
      if (asprintf(&shared, "%s/%s", GW_PROTOCOLS_DIR, s) < 0 ||
          asprintf(&file, "%s/packets.lua", shared) < 0) {
        free(local);
        free(shared);
        fail(c, "out of memory");
      }
      if (!unreadable(file)) {
        free(local);
        local = shared;
        why = NULL;
      } else {
        free(shared);
      }
      free(file);
    }
    if (why) {
      char shown[PATH_MAX + 32];
      snprintf(shown, sizeof shown, "%s/packets.lua", local);
      free(local);
      if (path)
        fail(c, "cannot open %s: %s", shown, why);
      fail(c, "no protocol \"%s\": cannot open %s (nor %s/%s/packets.lua): %s", s, shown,
           GW_PROTOCOLS_DIR, s, why);
    }
    lc->protocol_dir = local;
  }
  leave(c, mark);
}

static void parse_listener(cfg_ctx *c, int l, size_t i) {
  static const choice on_errors[] = {
    {"pass", GW_ON_ERROR_PASS}, {"drop", GW_ON_ERROR_DROP},
    {"close", GW_ON_ERROR_CLOSE},
  };
  gw_listener_config *lc = &c->cfg->listeners[i];
  size_t mark;

  enter(c, l, "name", &mark);
  const char *name = want_string(c, "a listener name");
  if (!valid_name(name))
    fail_expected(c, -1, "a name of 1 to 64 letters, digits, \"_\", \".\" or \"-\"",
                  LUA_TSTRING);
  for (size_t j = 0; j < i; j++)
    if (strcmp(c->cfg->listeners[j].name, name) == 0)
      fail(c, "\"%s\" is already the name of listeners[%zu]", name, j + 1);
  if (!(lc->name = strdup(name)))
    fail(c, "out of memory");
  leave(c, mark);

  listener_addr(c, l, "listen", false, lc->listen, &lc->listen_addr);
  for (size_t j = 0; j < i; j++) {
    const gw_listener_config *o = &c->cfg->listeners[j];
    if (addrs_conflict(&o->listen_addr, &lc->listen_addr)) {
      enter(c, l, "listen", &mark);
      fail(c, "\"%s\" conflicts with listeners[%zu].listen \"%s\"", lc->listen,
           j + 1, o->listen);
    }
  }
  listener_upstream(c, l, lc);
  listener_framing(c, l, &lc->framing);
  listener_scripts(c, l, lc);
  lc->on_error = (gw_on_error)get_choice(c, l, "on_error", on_errors,
                                         COUNT(on_errors),
                                         "\"pass\", \"drop\" or \"close\"",
                                         GW_ON_ERROR_PASS);
  lc->unsafe = get_bool(c, l, "unsafe", false);
  listener_proxy(c, l, lc);
  listener_phases(c, l, lc);
  listener_protocol(c, l, lc);
  static const choice unfinished[] = {{"drop", 0}, {"pass", 1}};
  lc->unfinished_frame_pass = get_choice(c, l, "unfinished_frame", unfinished,
                                         COUNT(unfinished),
                                         "\"drop\" or \"pass\"", 0) == 1;
}

static void parse_listeners(cfg_ctx *c, int top) {
  size_t mark;
  enter(c, top, "listeners", &mark);
  lua_Integer n = want_list(c, "a non-empty list of listener tables", true,
                            LISTENERS_MAX);
  int list = lua_gettop(c->L);
  c->cfg->listeners = calloc((size_t)n, sizeof *c->cfg->listeners);
  if (!c->cfg->listeners)
    fail(c, "out of memory");
  c->cfg->nlisteners = (size_t)n;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t m;
    enter_index(c, list, i, &m);
    parse_listener(c, want_record(c, listener_keys), (size_t)(i - 1));
    leave(c, m);
  }
  leave(c, mark);
}

/* ---- the rest of the top level ---- */

static const char *const top_keys[] = {
  "listeners", "timeouts", "limits", "log", "watch", "control", "admin", "capture_dir",
  "redis", NULL,
};
static const char *const redis_keys[] = {"addr", "password", "user", "db", "timeout_ms",
                                         "connect_ms", NULL};
static const char *const admin_keys[] = {"listen", "token", "token_for_reads", NULL};
static const char *const log_keys[] = {"level", "format", "target",
                                       "session_lines_per_s", NULL};

/* Pushes top[key] and returns its index as a checked record, or 0 (with nil
 * pushed) when it is missing. */
static int enter_record(cfg_ctx *c, int top, const char *key,
                        const char *const known[], size_t *mark) {
  if (enter(c, top, key, mark) == LUA_TNIL)
    return 0;
  return want_record(c, known);
}

/* An integer setting in a section of the top level: its bounds, its default
 * and where it goes in gw_config. */
typedef struct int_setting {
  const char *key;
  lua_Integer min, max, def;
  size_t offset, size;
} int_setting;

#define INT_SETTING(key, field, min, max, def)                                  \
  {key, min, max, def, offsetof(gw_config, field), sizeof(((gw_config *)0)->field)}

static const int_setting timeout_settings[] = {
  INT_SETTING("connect_ms", connect_ms, 1, UINT32_MAX, 5000),
  INT_SETTING("idle_ms", idle_ms, 0, UINT32_MAX, 300000),
  INT_SETTING("drain_ms", drain_ms, 0, UINT32_MAX, 10000),
  INT_SETTING("frame_ms", frame_ms, 0, UINT32_MAX, 10000),
  INT_SETTING("first_frame_ms", first_frame_ms, 0, UINT32_MAX, 30000),
  INT_SETTING("wait_ms", wait_ms, 1, UINT32_MAX, 5000),
  {NULL, 0, 0, 0, 0, 0},
};

static const int_setting limit_settings[] = {
  INT_SETTING("max_sessions", max_sessions, 0, UINT32_MAX, 10000),
  INT_SETTING("handler_instructions", handler_instructions, 1000,
              LUA_MAXINTEGER, 1000000),
  INT_SETTING("lua_memory_mb", lua_memory_mb, 1, 4096, 64),
  INT_SETTING("write_high_water", write_high_water, 1, UINT32_MAX, 256 * 1024),
  INT_SETTING("write_low_water", write_low_water, 0, UINT32_MAX, 64 * 1024),
  INT_SETTING("write_max", write_max, 1, UINT32_MAX, 1024 * 1024),
  INT_SETTING("sessions_per_ip", sessions_per_ip, 0, UINT32_MAX, 0),
  INT_SETTING("new_sessions_per_ip_per_s", new_sessions_per_ip_per_s, 0,
              UINT32_MAX, 0),
  INT_SETTING("wait_bytes", wait_bytes, 0, UINT32_MAX, 256 * 1024),
  {NULL, 0, 0, 0, 0, 0},
};

#define SECTION_MAX 12

/* Reads section top[name], a table of integer settings. */
static void parse_int_section(cfg_ctx *c, int top, const char *name,
                              const int_setting *set) {
  const char *known[SECTION_MAX + 1];
  size_t n = 0;
  for (; set[n].key; n++)
    known[n] = set[n].key;
  known[n] = NULL;
  size_t mark;
  int t = enter_record(c, top, name, known, &mark);
  for (const int_setting *s = set; s->key; s++) {
    lua_Integer v = t ? get_int(c, t, s->key, s->min, s->max, s->def) : s->def;
    char *field = (char *)c->cfg + s->offset;
    if (s->size == sizeof(uint64_t))
      *(uint64_t *)field = (uint64_t)v;
    else
      *(uint32_t *)field = (uint32_t)v;
  }
  leave(c, mark);
}

static void parse_limits(cfg_ctx *c, int top) {
  gw_config *cfg = c->cfg;
  parse_int_section(c, top, "limits", limit_settings);
  size_t mark, m;
  if (cfg->write_max < cfg->write_high_water) {
    /* blame write_max if it was set, as below */
    enter(c, top, "limits", &mark);
    if (enter(c, lua_gettop(c->L), "write_max", &m) != LUA_TNIL)
      fail(c, "must be at least limits.write_high_water (%u), got %u",
           cfg->write_high_water, cfg->write_max);
    leave(c, m);
    enter(c, lua_gettop(c->L), "write_high_water", &m);
    fail(c, "must be at most limits.write_max (%u), got %u", cfg->write_max,
         cfg->write_high_water);
  }
  if (cfg->write_low_water < cfg->write_high_water)
    return;
  /* The defaults are in order, so the admin set one of them: blame low
   * water if it was set. */
  enter(c, top, "limits", &mark);
  if (enter(c, lua_gettop(c->L), "write_low_water", &m) != LUA_TNIL)
    fail(c, "must be below limits.write_high_water (%u), got %u",
         cfg->write_high_water, cfg->write_low_water);
  leave(c, m);
  enter(c, lua_gettop(c->L), "write_high_water", &m);
  fail(c, "must be above limits.write_low_water (%u), got %u",
       cfg->write_low_water, cfg->write_high_water);
}

static void parse_log(cfg_ctx *c, int top) {
  static const choice levels[] = {
    {"debug", GW_LOG_DEBUG}, {"info", GW_LOG_INFO}, {"warn", GW_LOG_WARN},
    {"error", GW_LOG_ERROR},
  };
  static const choice formats[] = {{"text", GW_LOG_TEXT}, {"json", GW_LOG_JSON}};
  gw_config *cfg = c->cfg;
  size_t mark;
  int t = enter_record(c, top, "log", log_keys, &mark);
  cfg->log_level = GW_LOG_INFO;
  cfg->log_format = GW_LOG_TEXT;
  if (t) {
    cfg->log_level = (gw_log_level)get_choice(
        c, t, "level", levels, COUNT(levels),
        "\"debug\", \"info\", \"warn\" or \"error\"", cfg->log_level);
    cfg->log_format = (gw_log_format)get_choice(
        c, t, "format", formats, COUNT(formats), "\"text\" or \"json\"",
        cfg->log_format);
  }
  static const choice targets[] = {{"stderr", 0}, {"journald", 1}};
  cfg->log_target = t ? (uint8_t)get_choice(c, t, "target", targets, COUNT(targets),
                                            "\"stderr\" or \"journald\"", 0) : 0;
  cfg->log_session_lines_per_s =
      t ? (uint32_t)get_int(c, t, "session_lines_per_s", 0, UINT32_MAX, 100) : 100;
  leave(c, mark);
}

/* capture_dir: the directory session:capture writes pcap files into. */
static void parse_capture_dir(cfg_ctx *c, int top) {
  size_t mark;
  if (enter(c, top, "capture_dir", &mark) != LUA_TNIL) {
    const char *s = want_string(c, "a directory path");
    if (*s) {
      if (!(c->cfg->capture_dir = resolve_path(c, s)))
        fail(c, "out of memory");
      struct stat st;
      if (stat(c->cfg->capture_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        fail(c, "\"%s\" is not a directory", c->cfg->capture_dir);
    }
  }
  leave(c, mark);
}

static void parse_control(cfg_ctx *c, int top) {
  size_t mark;
  const char *s = "gangway.sock";
  if (enter(c, top, "control", &mark) != LUA_TNIL)
    s = want_string(c, "a socket path (\"\" for none)");
  if (!*s)
    c->cfg->control = strdup("");
  else
    c->cfg->control = resolve_path(c, s);
  if (!c->cfg->control)
    fail(c, "out of memory");
  if (strlen(c->cfg->control) >= sizeof(((struct sockaddr_un *)0)->sun_path))
    fail(c, "socket path \"%s\" is longer than %zu bytes", c->cfg->control,
         sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
  leave(c, mark);
}

#define ADMIN_DEFAULT_LISTEN "127.0.0.1:9973"
#define ADMIN_TOKEN_MIN 16
#define ADMIN_TOKEN_MAX 256

static bool is_loopback(const struct sockaddr_storage *a) {
  if (a->ss_family == AF_INET)
    return (ntohl(((const struct sockaddr_in *)a)->sin_addr.s_addr) >> 24) == 127;
  const struct in6_addr *in6 = &((const struct sockaddr_in6 *)a)->sin6_addr;
  return IN6_IS_ADDR_LOOPBACK(in6) || (IN6_IS_ADDR_V4MAPPED(in6) && in6->s6_addr[12] == 127);
}

/* admin = { listen, token, token_for_reads }: absent, no endpoint. A token
 * goes in an HTTP header and must be hard to guess: visible ASCII, no
 * spaces, at least ADMIN_TOKEN_MIN characters. */
static void parse_admin(cfg_ctx *c, int top) {
  gw_config *cfg = c->cfg;
  size_t mark, m;
  int t = enter_record(c, top, "admin", admin_keys, &mark);
  if (!t) {
    leave(c, mark);
    return;
  }
  const char *listen = ADMIN_DEFAULT_LISTEN;
  if (enter(c, t, "listen", &m) != LUA_TNIL) listen = want_string(c, "\"host:port\"");
  char msg[256];
  if (gw_parse_addr(listen, &cfg->admin_addr, false, msg, sizeof msg) != 0) fail(c, "%s", msg);
  snprintf(cfg->admin_listen, sizeof cfg->admin_listen, "%s", listen);
  for (size_t i = 0; i < cfg->nlisteners; i++)
    if (addrs_conflict(&cfg->listeners[i].listen_addr, &cfg->admin_addr))
      fail(c, "\"%s\" conflicts with listeners[%zu].listen \"%s\"", listen, i + 1,
           cfg->listeners[i].listen);
  leave(c, m);
  if (enter(c, t, "token", &m) != LUA_TNIL) {
    const char *tok = want_string(c, "a string");
    size_t n = strlen(tok);
    for (const char *p = tok; *p; p++)
      if (*p <= ' ' || *p > '~')
        fail(c, "must be visible ASCII without spaces (it goes in an HTTP header)");
    if (n < ADMIN_TOKEN_MIN || n > ADMIN_TOKEN_MAX)
      fail(c, "expected %d to %d characters, got %zu", ADMIN_TOKEN_MIN, ADMIN_TOKEN_MAX, n);
    if (!(cfg->admin_token = strdup(tok))) fail(c, "out of memory");
  }
  leave(c, m);
  cfg->admin_token_for_reads = get_bool(c, t, "token_for_reads", false);
  if (cfg->admin_token_for_reads && !cfg->admin_token) {
    enter(c, t, "token_for_reads", &m);
    fail(c, "needs admin.token");
  }
  if (!cfg->admin_token && !is_loopback(&cfg->admin_addr)) {
    enter(c, t, "listen", &m);
    fail(c, "\"%s\" is not a loopback address: set admin.token (requests from other "
         "hosts must prove who they are)", listen);
  }
  leave(c, mark);
}

/* redis = { addr, password, user, db, timeout_ms, connect_ms }: absent, no
 * store. The address is resolved here, like an upstream's. */
static void parse_redis(cfg_ctx *c, int top) {
  gw_config *cfg = c->cfg;
  size_t mark, m;
  int t = enter_record(c, top, "redis", redis_keys, &mark);
  if (!t) {
    leave(c, mark);
    return;
  }
  const char *addr = "127.0.0.1:6379";
  if (enter(c, t, "addr", &m) != LUA_TNIL) addr = want_string(c, "\"host:port\"");
  char msg[256];
  if (gw_parse_addr(addr, &cfg->redis_sockaddr, true, msg, sizeof msg) != 0) fail(c, "%s", msg);
  snprintf(cfg->redis_addr, sizeof cfg->redis_addr, "%s", addr);
  leave(c, m);
  const char *const secrets[] = {"password", "user"};
  char **dest[] = {&cfg->redis_password, &cfg->redis_user};
  for (size_t k = 0; k < COUNT(secrets); k++) {
    if (enter(c, t, secrets[k], &m) != LUA_TNIL) {
      const char *v = want_string(c, "a string");
      if (!*v || strlen(v) > 512) fail(c, "expected 1 to 512 bytes");
      if (!(*dest[k] = strdup(v))) fail(c, "out of memory");
    }
    leave(c, m);
  }
  if (cfg->redis_user && !cfg->redis_password) {
    enter(c, t, "user", &m);
    fail(c, "needs redis.password");
  }
  cfg->redis_db = (uint32_t)get_int(c, t, "db", 0, 65535, 0);
  cfg->redis_timeout_ms = (uint32_t)get_int(c, t, "timeout_ms", 1, 600000, 1000);
  cfg->redis_connect_ms = (uint32_t)get_int(c, t, "connect_ms", 1, 600000, 1000);
  leave(c, mark);
}

/* ---- the load ---- */

/* The protected part: argument 1 is the cfg_ctx. */
static int cfg_main(lua_State *L) {
  cfg_ctx *c = lua_touserdata(L, 1);
  const char *why = unreadable(c->file);
  if (why)
    fail(c, "cannot open: %s", why);
  /* dirname may modify its argument; realpath makes it absolute. */
  char copy[PATH_MAX];
  snprintf(copy, sizeof copy, "%s", c->file);
  if (!realpath(dirname(copy), c->dir))
    fail(c, "cannot find its directory: %s", strerror(errno));

  push_env(L);
  if (luaL_loadfilex(L, c->file, "t") != LUA_OK)
    lua_error(L);
  lua_pushvalue(L, -2);
  lua_setupvalue(L, -2, 1); /* the chunk's only upvalue is _ENV */
  lua_sethook(L, cfg_hook, LUA_MASKCOUNT, CFG_HOOK_STEP);
  c->running = true;
  lua_call(L, 0, 1);
  c->running = false;
  lua_sethook(L, NULL, 0, 0);

  if (!lua_istable(L, -1))
    fail_expected(c, -1, "the config to return a table", LUA_TTABLE);
  int top = lua_gettop(L);
  check_keys(c, top, top_keys, -1);
  parse_listeners(c, top);
  parse_int_section(c, top, "timeouts", timeout_settings);
  parse_limits(c, top);
  parse_log(c, top);
  c->cfg->watch = get_bool(c, top, "watch", false);
  parse_capture_dir(c, top);
  parse_control(c, top);
  parse_admin(c, top);
  parse_redis(c, top);
  return 0;
}

/* What luaO_chunkid makes of "@path" in messages: the path, or its tail
 * after "..." when it does not fit LUA_IDSIZE. */
static void chunk_id(const char *path, char *out, size_t cap) {
  size_t len = strlen(path);
  if (len + 1 <= LUA_IDSIZE)
    snprintf(out, cap, "%s", path);
  else
    snprintf(out, cap, "...%s", path + len - (LUA_IDSIZE - 4));
}

/* Turns a Lua error into "FILE:LINE: message" or "FILE: message". */
static void lua_message(cfg_ctx *c, int status) {
  lua_State *L = c->L;
  if (c->timed_out) {
    snprintf(c->err, c->errlen, "%s: config took too long to run", c->file);
    return;
  }
  if (status == LUA_ERRMEM) {
    snprintf(c->err, c->errlen, "%s: config used more than %u MiB of memory",
             c->file, CFG_MEMORY_MAX / MIB);
    return;
  }
  if (lua_type(L, -1) != LUA_TSTRING) {
    snprintf(c->err, c->errlen, "%s: error object is a %s value", c->file,
             luaL_typename(L, -1));
    return;
  }
  const char *msg = lua_tostring(L, -1);
  char id[LUA_IDSIZE + 4];
  chunk_id(c->file, id, sizeof id);
  size_t idlen = strlen(id);
  if (strncmp(msg, id, idlen) == 0 && msg[idlen] == ':')
    snprintf(c->err, c->errlen, "%s%s", c->file, msg + idlen);
  else
    snprintf(c->err, c->errlen, "%s: %s", c->file, msg);
}

int gw_config_load(const char *path, gw_config *cfg, char *err, size_t errlen) {
  memset(cfg, 0, sizeof *cfg);
  if (errlen)
    err[0] = '\0';
  cfg_ctx c = {
    .limit = CFG_MEMORY_MAX, .file = path, .cfg = cfg, .err = err,
    .errlen = errlen,
  };
  cfg->path = strdup(path);
  c.L = cfg->path ? lua_newstate(cfg_alloc, &c) : NULL;
  if (!c.L) {
    snprintf(err, errlen, "%s: out of memory", path);
    gw_config_free(cfg);
    return -ENOMEM;
  }
  lua_pushcfunction(c.L, cfg_main);
  lua_pushlightuserdata(c.L, &c);
  int status = lua_pcall(c.L, 1, 0, 0);
  c.running = false; /* the chunk may have raised */
  if (status != LUA_OK && !c.failed)
    lua_message(&c, status);
  lua_close(c.L);
  if (status != LUA_OK) {
    gw_config_free(cfg);
    return -EINVAL;
  }
  return 0;
}

void gw_config_free(gw_config *cfg) {
  if (!cfg)
    return;
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    gw_listener_config *l = &cfg->listeners[i];
    free(l->name);
    for (size_t j = 0; j < l->nscripts; j++)
      free(l->scripts[j]);
    free(l->scripts);
    free(l->proxy_from);
    for (int s = 0; s < GW_SIDES; s++) free(l->phases[s]);
    free(l->protocol);
    free(l->protocol_dir);
    free(l->pool.servers);
  }
  free(cfg->listeners);
  free(cfg->path);
  free(cfg->control);
  free(cfg->capture_dir);
  free(cfg->admin_token);
  free(cfg->redis_password);
  free(cfg->redis_user);
  memset(cfg, 0, sizeof *cfg);
}

/* ---- addresses ---- */

#define ADDR_FAIL(...) (snprintf(err, errlen, __VA_ARGS__), -EINVAL)

int gw_parse_host_port(const char *s, char *host, size_t hostlen, uint16_t *portp,
                       struct sockaddr_storage *addr, char *err, size_t errlen) {
  memset(addr, 0, sizeof *addr);
  if (errlen)
    err[0] = '\0';
  size_t len = strlen(s);
  if (len >= GW_ADDR_MAX)
    return ADDR_FAIL("expected \"host:port\", got a string of %zu bytes "
                     "(at most %d)", len, GW_ADDR_MAX - 1);
  const char *port;
  bool bracketed = s[0] == '[';
  if (bracketed) {
    const char *end = strchr(s, ']');
    if (!end || end[1] != ':')
      return ADDR_FAIL("expected \"[IPv6]:port\", got \"%s\"", s);
    snprintf(host, hostlen, "%.*s", (int)(end - s - 1), s + 1);
    port = end + 2;
  } else {
    const char *colon = strrchr(s, ':');
    if (!colon)
      return ADDR_FAIL("expected \"host:port\", got \"%s\"", s);
    if (memchr(s, ':', (size_t)(colon - s)))
      return ADDR_FAIL("an IPv6 address needs brackets, as in \"[::1]:1973\", "
                       "got \"%s\"", s);
    snprintf(host, hostlen, "%.*s", (int)(colon - s), s);
    port = colon + 1;
  }
  if (!*host)
    return ADDR_FAIL("missing host in \"%s\"", s);

  unsigned long pn = 0;
  size_t digits = strspn(port, "0123456789");
  if (digits > 0 && digits <= 5 && !port[digits])
    pn = strtoul(port, NULL, 10);
  if (pn < 1 || pn > 65535)
    return ADDR_FAIL("port must be 1 to 65535, got \"%s\"", port);
  *portp = (uint16_t)pn;

  struct sockaddr_in *in = (struct sockaddr_in *)addr;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
  if (bracketed) {
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
      return ADDR_FAIL("\"%s\" is not an IPv6 address", host);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)pn);
    return 0;
  }
  /* "localhost" is always IPv4 loopback, whatever /etc/hosts puts first. */
  if (inet_pton(AF_INET, strcmp(host, "localhost") ? host : "127.0.0.1",
                &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)pn);
    return 0;
  }
  /* A host name: letters, digits, '-', '_' and dots, as DNS has them. */
  size_t hl = strlen(host);
  if (hl > 253 || strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                "0123456789-_.") != hl)
    return ADDR_FAIL("\"%s\" is neither a numeric address nor a host name", host);
  return 1;
}

int gw_parse_addr(const char *s, struct sockaddr_storage *addr, bool resolve,
                  char *err, size_t errlen) {
  char host[GW_ADDR_MAX];
  uint16_t pn;
  int rc = gw_parse_host_port(s, host, sizeof host, &pn, addr, err, errlen);
  if (rc <= 0)
    return rc;
  if (!resolve)
    return ADDR_FAIL("\"%s\" is not a numeric address (expected an IPv4 "
                     "address, [IPv6] or localhost)", host);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  struct addrinfo *res;
  rc = getaddrinfo(host, NULL, &hints, &res);
  if (rc != 0)
    return ADDR_FAIL("cannot resolve \"%s\": %s", host,
                     rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
  memcpy(addr, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (addr->ss_family == AF_INET)
    ((struct sockaddr_in *)addr)->sin_port = htons(pn);
  else
    ((struct sockaddr_in6 *)addr)->sin6_port = htons(pn);
  return 0;
}

void gw_format_addr(const struct sockaddr *addr, char *out, size_t outlen) {
  char ip[INET6_ADDRSTRLEN];
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    snprintf(out, outlen, "%s:%u", ip, ntohs(in->sin_port));
  } else if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
    snprintf(out, outlen, "[%s]:%u", ip, ntohs(in6->sin6_port));
  } else {
    snprintf(out, outlen, "(address family %d)", addr->sa_family);
  }
}
