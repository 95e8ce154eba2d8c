/* lua_floor_bench.c: what Lua 5.4 itself costs to call a handler, with
 * nothing of gangway around it: the floor under any handled frame.
 *
 * Each case calls a Lua function from C the way a proxy must (the function
 * and a session table from the registry, the packet as a light userdata),
 * with and without a count hook (the instruction limit: Lua 5.4 then traps
 * every VM instruction), through lua_pcall and through lua_resume on a
 * coroutine (a handler that may wait needs one). The method cases add what
 * a rewriting handler does: pkt:set_u32(8, X), a C function reached
 * through the packet's metatable (__index a table, the cheapest; or a C
 * function, as gangway's packets need for pkt.opcode and such).
 *
 *   build/bench/lua_floor_bench [calls per run, default 2000000] [relay ns]
 *
 * Prints the median of 5 runs per case, ns per call, and, given the CPU a
 * plain relay spends per frame relayed (default 364 ns: gw-top in
 * BENCHMARKS.md run E), the ratio a handler on every frame, both ways (two
 * calls per frame relayed), could reach if gangway's own dispatch cost
 * nothing at all. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUNS 5

static uint8_t frame[64];

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void hook(lua_State *L, lua_Debug *ar) {
  (void)L;
  (void)ar;
}

/* pkt:set_u32(off, v): what gangway's does, less its range messages. */
static int set_u32(lua_State *L) {
  uint8_t *p = lua_touserdata(L, 1);
  lua_Integer off = luaL_checkinteger(L, 2);
  lua_Integer v = luaL_checkinteger(L, 3);
  if (p != frame || off < 0 || off > 60) return luaL_error(L, "bad packet or offset");
  uint32_t u = (uint32_t)v;
  memcpy(p + off, &u, 4);
  return 0;
}

static int index_fn(lua_State *L) {
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  return 1;
}

typedef struct floor_case {
  const char *name;
  const char *fn;    /* the handler's source */
  int c_index;       /* the light userdata's __index: a C function */
  int resume;        /* through lua_resume on a coroutine */
  int hooked;        /* a count hook set (interval 1000) */
} floor_case;

static const floor_case cases[] = {
  {"empty handler, lua_pcall", "return function(pkt, s) end", 0, 0, 0},
  {"empty handler, lua_pcall, count hook", "return function(pkt, s) end", 0, 0, 1},
  {"empty handler, lua_resume", "return function(pkt, s) end", 0, 1, 0},
  {"empty handler, lua_resume, count hook", "return function(pkt, s) end", 0, 1, 1},
  {"pkt:set_u32, __index table, lua_pcall", "return function(pkt, s) pkt:set_u32(8, 0x67617779) end", 0, 0, 0},
  {"pkt:set_u32, __index table, lua_resume, count hook",
   "return function(pkt, s) pkt:set_u32(8, 0x67617779) end", 0, 1, 1},
  {"pkt:set_u32, __index C function, lua_resume, count hook",
   "return function(pkt, s) pkt:set_u32(8, 0x67617779) end", 1, 1, 1},
};

static double run_case(const floor_case *fc, long calls) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  /* the light userdata metatable: methods, through a table or a function */
  lua_newtable(L);
  lua_newtable(L);
  lua_pushcfunction(L, set_u32);
  lua_setfield(L, -2, "set_u32");
  if (fc->c_index) lua_pushcclosure(L, index_fn, 1);
  lua_setfield(L, -2, "__index");
  lua_pushlightuserdata(L, frame);
  lua_insert(L, -2);
  lua_setmetatable(L, -2);
  lua_pop(L, 1);
  if (luaL_dostring(L, fc->fn)) {
    fprintf(stderr, "%s: %s\n", fc->name, lua_tostring(L, -1));
    exit(1);
  }
  int fn = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_newtable(L);
  int session = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_State *co = lua_newthread(L);
  int co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (fc->hooked) {
    lua_sethook(L, hook, LUA_MASKCOUNT, 1000);
    lua_sethook(co, hook, LUA_MASKCOUNT, 1000);
  }
  double t0 = now();
  for (long i = 0; i < calls; i++) {
    lua_State *T = fc->resume ? co : L;
    lua_rawgeti(T, LUA_REGISTRYINDEX, fn);
    lua_pushlightuserdata(T, frame);
    lua_rawgeti(T, LUA_REGISTRYINDEX, session);
    int st, nres = 0;
    if (fc->resume) st = lua_resume(co, L, 2, &nres);
    else st = lua_pcall(L, 2, 0, 0);
    if (st != LUA_OK) {
      fprintf(stderr, "%s: %s\n", fc->name, lua_tostring(T, -1));
      exit(1);
    }
    if (nres) lua_pop(co, nres);
  }
  double ns = (now() - t0) * 1e9 / (double)calls;
  luaL_unref(L, LUA_REGISTRYINDEX, co_ref);
  lua_close(L);
  return ns;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  long calls = argc > 1 ? atol(argv[1]) : 2000000;
  double relay = argc > 2 ? atof(argv[2]) : 364.0;
  if (calls <= 0 || relay <= 0) {
    fprintf(stderr, "usage: lua_floor_bench [calls per run] [relay ns per frame]\n");
    return 2;
  }
  printf("%s, %ld calls per run, median of %d runs; floor ratio: a plain relay's "
         "%.0f ns per frame relayed plus two calls (one each way)\n",
         LUA_RELEASE, calls, RUNS, relay);
  printf("%-56s %8s %12s\n", "case", "ns/call", "floor ratio");
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    double t[RUNS];
    for (int r = 0; r < RUNS; r++) t[r] = run_case(&cases[c], calls);
    qsort(t, RUNS, sizeof t[0], cmp);
    double med = t[RUNS / 2];
    printf("%-56s %8.1f %11.2fx\n", cases[c].name, med, (relay + 2 * med) / relay);
  }
  uint32_t u;
  memcpy(&u, frame + 8, 4);
  return u == 0x67617779 || u == 0 ? 0 : 1;
}
