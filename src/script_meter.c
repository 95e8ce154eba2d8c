/* script_meter.c: library functions whose C work the count hook cannot
 * see, charged to the instruction budget of the state they run in through
 * its gw_meter (each function holds it as an upvalue): gw__charge for the
 * script state, the config loader's own for config.lua. A charge past the
 * limit raises the limit's error, as the hook does.
 *
 * Patterns: Lua's string.find/match/gmatch/gsub backtrack in C, so
 * `text:find(".-.-.-x")` on a 16 KiB chat line from a player runs for
 * hours. These implement the same patterns (Lua 5.4 manual, 6.4.1), with
 * the same results and error messages, and charge every matching step.
 * Tables: table.sort, move, insert and remove do O(n) or O(n log n) work
 * per call; they are charged for it up front.
 * Bulk work: string.rep, byte, char, format, pack, unpack, table.unpack
 * and concat, utf8.char, codepoint and len, select do work in proportion to
 * the items they make or take (about one instruction's time each), out of
 * the hook's sight: `string.rep("", 1e15)` never returned. They are charged
 * one instruction per item (string.rep: per 64 copies, its bytes being
 * charged by the allocator), after the call: what they did is bounded by
 * the memory limit or Lua's stack size (1,000,000 values), and their own
 * errors ("not enough memory", "too many results") keep coming first.
 * Coroutines: each new thread starts its own hook count, so the up to
 * GW_HOOK_INTERVAL - 1 instructions it runs after its last hook go
 * uncounted (a loop of short coroutines ran ~90 times its budget).
 * coroutine.create and wrap charge one hook interval up front for them.
 *
 * gw_meter_open puts them in the state's library tables, before any
 * script's (or the config's) environment copies them; `s:gsub(...)`
 * uses them too. */
#include <ctype.h>
#include <lualib.h>
#include <string.h>

#include "script_int.h"

#define MAX_CAPTURES 32
#define MAX_DEPTH 200      /* recursion of the matcher: "pattern too complex" */
#define CHARGE_EVERY 256   /* steps charged to the budget at once */
#define CAP_OPEN (-1)      /* a capture still being matched */
#define CAP_POSITION (-2)  /* () */
#define ESC '%'
#define SPECIALS "^$*+?.([%-"

typedef struct matcher {
  lua_State *L;
  const gw_meter *meter;     /* who pays for the steps */
  const char *src, *src_end; /* the subject */
  const char *pat_end;
  int depth;                 /* recursion left */
  unsigned steps;            /* not charged yet */
  int level;                 /* captures open or closed */
  struct {
    const char *start;
    ptrdiff_t len;           /* or CAP_OPEN / CAP_POSITION */
  } cap[MAX_CAPTURES];
} matcher;

static void charge(matcher *m) {
  if (m->steps) m->meter->charge(m->L, m->steps);
  m->steps = 0;
}

static void step(matcher *m) {
  if (++m->steps >= CHARGE_EVERY) charge(m);
}

/* ---- single items ---- */

/* End of the single-character class starting at p. */
static const char *item_end(matcher *m, const char *p) {
  char c = *p++;
  if (c == ESC) {
    if (p == m->pat_end)
      luaL_error(m->L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (c == '[') {
    if (*p == '^') p++;
    do { /* the first character is part of the set, even ']' */
      if (p == m->pat_end) luaL_error(m->L, "malformed pattern (missing ']')");
      if (*p++ == ESC && p < m->pat_end) p++;
    } while (*p != ']');
    return p + 1;
  }
  return p;
}

/* c against %a, %d... (upper case: the complement); other letters stand
 * for themselves. */
static bool class_match(int c, int cl) {
  bool r;
  switch (tolower(cl)) {
  case 'a': r = isalpha(c); break;
  case 'c': r = iscntrl(c); break;
  case 'd': r = isdigit(c); break;
  case 'g': r = isgraph(c); break;
  case 'l': r = islower(c); break;
  case 'p': r = ispunct(c); break;
  case 's': r = isspace(c); break;
  case 'u': r = isupper(c); break;
  case 'w': r = isalnum(c); break;
  case 'x': r = isxdigit(c); break;
  case 'z': r = c == 0; break; /* deprecated, still in 5.4 */
  default: return cl == c;
  }
  return isupper(cl) ? !r : r;
}

/* c against the set [..] from p (at '[') to close (at ']'). */
static bool set_match(int c, const char *p, const char *close) {
  bool in = true;
  if (p[1] == '^') {
    in = false;
    p++;
  }
  while (++p < close) {
    if (*p == ESC) {
      p++;
      if (class_match(c, (unsigned char)*p)) return in;
    } else if (p[1] == '-' && p + 2 < close) {
      p += 2;
      if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p) return in;
    } else if ((unsigned char)*p == c) {
      return in;
    }
  }
  return !in;
}

/* Whether the subject character at s matches the item p..ep. */
static bool single(const matcher *m, const char *s, const char *p,
                   const char *ep) {
  if (s >= m->src_end) return false;
  int c = (unsigned char)*s;
  switch (*p) {
  case '.': return true;
  case ESC: return class_match(c, (unsigned char)p[1]);
  case '[': return set_match(c, p, ep - 1);
  default: return (unsigned char)*p == c;
  }
}

/* ---- the matcher ---- */

static const char *match(matcher *m, const char *s, const char *p);

/* %bxy from s: x, then up to the y that balances it. */
static const char *balance(matcher *m, const char *s, const char *p) {
  if (p >= m->pat_end - 1)
    luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
  if (s >= m->src_end || *s != *p) return NULL;
  char open = p[0], close = p[1];
  int nest = 1;
  while (++s < m->src_end) {
    step(m);
    if (*s == close) {
      if (--nest == 0) return s + 1;
    } else if (*s == open) {
      nest++;
    }
  }
  return NULL;
}

/* item* (greedy): as many as match, then back off one at a time. */
static const char *expand_max(matcher *m, const char *s, const char *p,
                              const char *ep) {
  ptrdiff_t n = 0;
  while (single(m, s + n, p, ep)) {
    step(m);
    n++;
  }
  for (; n >= 0; n--) {
    const char *r = match(m, s + n, ep + 1);
    if (r) return r;
  }
  return NULL;
}

/* item- (lazy): as few as the rest of the pattern allows. */
static const char *expand_min(matcher *m, const char *s, const char *p,
                              const char *ep) {
  for (;;) {
    const char *r = match(m, s, ep + 1);
    if (r) return r;
    if (!single(m, s, p, ep)) return NULL;
    step(m);
    s++;
  }
}

static const char *capture_open(matcher *m, const char *s, const char *p,
                                ptrdiff_t what) {
  if (m->level >= MAX_CAPTURES) luaL_error(m->L, "too many captures");
  m->cap[m->level].start = s;
  m->cap[m->level].len = what;
  m->level++;
  const char *r = match(m, s, p);
  if (!r) m->level--;
  return r;
}

static const char *capture_close(matcher *m, const char *s, const char *p) {
  int l = m->level - 1;
  while (l >= 0 && m->cap[l].len != CAP_OPEN) l--;
  if (l < 0) luaL_error(m->L, "invalid pattern capture");
  m->cap[l].len = s - m->cap[l].start;
  const char *r = match(m, s, p);
  if (!r) m->cap[l].len = CAP_OPEN;
  return r;
}

/* %1..%9: the text of a closed capture again. */
static const char *backref(matcher *m, const char *s, int digit) {
  int l = digit - '1';
  if (l < 0 || l >= m->level || m->cap[l].len == CAP_OPEN)
    luaL_error(m->L, "invalid capture index %%%d", l + 1);
  ptrdiff_t len = m->cap[l].len;
  if (len < 0) return NULL; /* a position capture holds no text */
  if (m->src_end - s >= len && !memcmp(m->cap[l].start, s, (size_t)len)) {
    m->steps += (unsigned)(len / 64);
    return s + len;
  }
  return NULL;
}

/* Matches the pattern from p against the subject from s: the end of the
 * match, or NULL. Tail positions loop instead of recursing. */
static const char *match(matcher *m, const char *s, const char *p) {
  if (m->depth-- == 0) luaL_error(m->L, "pattern too complex");
  while (p != m->pat_end) {
    step(m);
    const char *ep;
    switch (*p) {
    case '(':
      s = p[1] == ')' ? capture_open(m, s, p + 2, CAP_POSITION)
                      : capture_open(m, s, p + 1, CAP_OPEN);
      goto done;
    case ')':
      s = capture_close(m, s, p + 1);
      goto done;
    case '$':
      if (p + 1 != m->pat_end) break; /* a literal '$' */
      s = s == m->src_end ? s : NULL;
      goto done;
    case ESC:
      if (p[1] == 'b') {
        if (!(s = balance(m, s, p + 2))) goto done;
        p += 4;
        continue;
      }
      if (p[1] == 'f') {
        p += 2;
        if (*p != '[')
          luaL_error(m->L, "missing '[' after '%%f' in pattern");
        ep = item_end(m, p);
        int prev = s == m->src ? 0 : (unsigned char)s[-1];
        int cur = s < m->src_end ? (unsigned char)*s : 0;
        if (set_match(prev, p, ep - 1) || !set_match(cur, p, ep - 1)) {
          s = NULL;
          goto done;
        }
        p = ep;
        continue;
      }
      if (isdigit((unsigned char)p[1])) {
        if (!(s = backref(m, s, (unsigned char)p[1]))) goto done;
        p += 2;
        continue;
      }
      break;
    default:
      break;
    }
    /* a single-character item, maybe with a quantifier */
    ep = item_end(m, p);
    if (!single(m, s, p, ep)) {
      if (*ep == '*' || *ep == '?' || *ep == '-') { /* zero is fine */
        p = ep + 1;
        continue;
      }
      s = NULL;
      goto done;
    }
    switch (*ep) {
    case '?': {
      const char *r = match(m, s + 1, ep + 1);
      if (r) {
        s = r;
        goto done;
      }
      p = ep + 1;
      continue;
    }
    case '+':
      s = expand_max(m, s + 1, p, ep);
      goto done;
    case '*':
      s = expand_max(m, s, p, ep);
      goto done;
    case '-':
      s = expand_min(m, s, p, ep);
      goto done;
    default:
      s++;
      p = ep;
      continue;
    }
  }
done:
  m->depth++;
  return s;
}

/* The meter of the library function running: its first upvalue for the
 * string functions, its second for the others. */
static const gw_meter *meter_of(lua_State *L, int up) {
  return lua_touserdata(L, lua_upvalueindex(up));
}

static void matcher_init(matcher *m, lua_State *L, const char *s, size_t ls,
                         const char *p, size_t lp) {
  m->L = L;
  m->meter = meter_of(L, 1);
  m->src = s;
  m->src_end = s + ls;
  m->pat_end = p + lp;
  m->steps = 0;
}

static void matcher_reset(matcher *m) {
  m->level = 0;
  m->depth = MAX_DEPTH;
}

/* ---- captures ---- */

/* Pushes capture i (the whole match s..e when there are none). */
static void push_capture(matcher *m, int i, const char *s, const char *e) {
  if (i >= m->level) {
    if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
    lua_pushlstring(m->L, s, (size_t)(e - s));
    return;
  }
  ptrdiff_t len = m->cap[i].len;
  if (len == CAP_OPEN) luaL_error(m->L, "unfinished capture");
  if (len == CAP_POSITION)
    lua_pushinteger(m->L, (m->cap[i].start - m->src) + 1);
  else
    lua_pushlstring(m->L, m->cap[i].start, (size_t)len);
}

/* Pushes every capture, or the whole match when s is given and there are
 * none. Returns how many. */
static int push_captures(matcher *m, const char *s, const char *e) {
  int n = m->level == 0 && s ? 1 : m->level;
  luaL_checkstack(m->L, n, "too many captures");
  for (int i = 0; i < n; i++) push_capture(m, i, s, e);
  return n;
}

/* ---- plain search ---- */

static const char *find_plain(matcher *m, const char *s, size_t ls,
                              const char *p, size_t lp) {
  if (lp == 0) return s;
  if (lp > ls) return NULL;
  const char *end = s + (ls - lp) + 1;
  while (s < end) {
    const char *hit = memchr(s, *p, (size_t)(end - s));
    m->steps += (unsigned)((hit ? (size_t)(hit - s) : (size_t)(end - s)) / 64);
    if (!hit) return NULL;
    if (!memcmp(hit + 1, p + 1, lp - 1)) return hit;
    step(m);
    s = hit + 1;
  }
  return NULL;
}

static bool has_specials(const char *p, size_t lp) {
  for (size_t i = 0; i < lp; i++)
    if (strchr(SPECIALS, p[i]) && p[i]) return true;
  return false;
}

/* A 1-based position, negative from the end, clipped to 1. */
static size_t start_at(lua_Integer pos, size_t len) {
  if (pos > 0) return (size_t)pos;
  if (pos == 0) return 1;
  if (pos < -(lua_Integer)len) return 1;
  return len + (size_t)pos + 1;
}

static int find_aux(lua_State *L, bool find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_at(luaL_optinteger(L, 3, 1), ls);
  if (init > ls + 1) {
    luaL_pushfail(L);
    return 1;
  }
  matcher m;
  matcher_init(&m, L, s, ls, p, lp);
  if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
    const char *hit = find_plain(&m, s + init - 1, ls - init + 1, p, lp);
    charge(&m);
    if (hit) {
      lua_pushinteger(L, (hit - s) + 1);
      lua_pushinteger(L, (lua_Integer)((hit - s) + lp));
      return 2;
    }
    luaL_pushfail(L);
    return 1;
  }
  const char *s1 = s + init - 1;
  bool anchor = *p == '^';
  if (anchor) {
    p++;
    lp--;
    m.pat_end = p + lp;
  }
  do {
    matcher_reset(&m);
    const char *e = match(&m, s1, p);
    if (e) {
      charge(&m);
      if (find) {
        lua_pushinteger(L, (s1 - s) + 1);
        lua_pushinteger(L, e - s);
        return push_captures(&m, NULL, NULL) + 2;
      }
      return push_captures(&m, s1, e);
    }
  } while (s1++ < m.src_end && !anchor);
  charge(&m);
  luaL_pushfail(L);
  return 1;
}

static int str_find(lua_State *L) { return find_aux(L, true); }
static int str_match(lua_State *L) { return find_aux(L, false); }

/* ---- gmatch ---- */

typedef struct gmatch_state {
  const char *next;      /* where the next search starts */
  const char *pat;
  const char *lastmatch; /* end of the last match: no empty match there */
  matcher m;
} gmatch_state;

/* Upvalues: the subject, the pattern, the state. */
static int gmatch_next(lua_State *L) {
  gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
  g->m.L = L;
  for (const char *src = g->next; src <= g->m.src_end; src++) {
    matcher_reset(&g->m);
    const char *e = match(&g->m, src, g->pat);
    if (e && e != g->lastmatch) {
      g->next = g->lastmatch = e;
      charge(&g->m);
      return push_captures(&g->m, src, e);
    }
  }
  charge(&g->m);
  g->next = g->m.src_end + 1;
  return 0;
}

static int str_gmatch(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = start_at(luaL_optinteger(L, 3, 1), ls);
  lua_settop(L, 2); /* the closure keeps both strings alive */
  gmatch_state *g = lua_newuserdatauv(L, sizeof *g, 0);
  if (init > ls + 1) init = ls + 2; /* past the end: nothing to find */
  matcher_init(&g->m, L, s, ls, p, lp);
  g->next = s + init - 1;
  g->pat = p;
  g->lastmatch = NULL;
  lua_pushcclosure(L, gmatch_next, 3);
  return 1;
}

/* ---- gsub ---- */

/* Appends the replacement string at 3, with %0..%9 and %%. */
static void add_string(matcher *m, luaL_Buffer *b, const char *s,
                       const char *e) {
  size_t l;
  lua_State *L = m->L;
  const char *r = lua_tolstring(L, 3, &l);
  const char *end = r + l;
  const char *pc;
  while ((pc = memchr(r, ESC, (size_t)(end - r))) != NULL) {
    luaL_addlstring(b, r, (size_t)(pc - r));
    pc++;
    if (*pc == ESC) {
      luaL_addchar(b, *pc);
    } else if (isdigit((unsigned char)*pc)) {
      if (*pc == '0')
        luaL_addlstring(b, s, (size_t)(e - s));
      else {
        push_capture(m, *pc - '1', s, e);
        luaL_tolstring(L, -1, NULL);
        lua_remove(L, -2);
        luaL_addvalue(b);
      }
    } else {
      luaL_error(L, "invalid use of '%c' in replacement string", ESC);
    }
    r = pc + 1;
    step(m);
  }
  luaL_addlstring(b, r, (size_t)(end - r));
}

/* Appends the replacement of the match s..e. Returns whether it changed
 * anything (a nil or false from a table or function keeps the match). */
static bool add_value(matcher *m, luaL_Buffer *b, const char *s, const char *e,
                      int tr) {
  lua_State *L = m->L;
  if (tr == LUA_TFUNCTION) {
    lua_pushvalue(L, 3);
    int n = push_captures(m, s, e);
    lua_call(L, n, 1);
  } else if (tr == LUA_TTABLE) {
    push_capture(m, 0, s, e);
    lua_gettable(L, 3);
  } else {
    add_string(m, b, s, e);
    return true;
  }
  if (!lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
    return false;
  }
  if (!lua_isstring(L, -1))
    return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return true;
}

static int str_gsub(lua_State *L) {
  size_t ls, lp;
  const char *src = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  const char *lastmatch = NULL;
  int tr = lua_type(L, 3);
  lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
  bool anchor = *p == '^';
  lua_Integer n = 0;
  bool changed = false;
  luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING ||
                          tr == LUA_TFUNCTION || tr == LUA_TTABLE,
                   3, "string/function/table");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (anchor) {
    p++;
    lp--;
  }
  matcher m;
  matcher_init(&m, L, src, ls, p, lp);
  while (n < max) {
    matcher_reset(&m);
    const char *e = match(&m, src, p);
    if (e && e != lastmatch) {
      n++;
      changed = add_value(&m, &b, src, e, tr) | changed;
      src = lastmatch = e;
    } else if (src < m.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  charge(&m);
  if (!changed) {
    lua_pushvalue(L, 1); /* nothing replaced: the subject itself */
  } else {
    luaL_addlstring(&b, src, (size_t)(m.src_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

/* ---- tables ---- */

static uint64_t log2_ceil(uint64_t n) {
  uint64_t k = 0;
  while (((uint64_t)1 << k) < n && k < 63) k++;
  return k;
}

/* Charges cost to the meter of the running wrapper (upvalue 2). */
static void wrapped_charge(lua_State *L, uint64_t cost) {
  meter_of(L, 2)->charge(L, cost);
}

/* Calls the original function (upvalue 1) with the same arguments. */
static int call_original(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* The length of the table at idx, as the functions below see it (raw:
 * a __len metamethod would run Lua, which the hook meters anyway). */
static lua_Integer len_of(lua_State *L, int idx) {
  return lua_istable(L, idx) ? (lua_Integer)lua_rawlen(L, idx) : 0;
}

/* table.sort(t [, comp]): n log n comparisons. */
static int tab_sort(lua_State *L) {
  uint64_t n = (uint64_t)len_of(L, 1);
  wrapped_charge(L, n * log2_ceil(n));
  return call_original(L);
}

/* table.move(a1, f, e, t [, a2]): e - f + 1 elements. */
static int tab_move(lua_State *L) {
  lua_Integer f = luaL_optinteger(L, 2, 1), e = luaL_optinteger(L, 3, 0);
  if (e >= f && e - f < LUA_MAXINTEGER) wrapped_charge(L, (uint64_t)(e - f) + 1);
  return call_original(L);
}

/* The elements after pos shift by one. */
static void charge_shift(lua_State *L, int posidx) {
  lua_Integer n = len_of(L, 1);
  if (!lua_isinteger(L, posidx)) return;
  lua_Integer pos = lua_tointeger(L, posidx);
  if (pos >= 1 && pos <= n) wrapped_charge(L, (uint64_t)(n - pos) + 1);
}

/* table.insert(t, [pos,] v) */
static int tab_insert(lua_State *L) {
  if (lua_gettop(L) == 3) charge_shift(L, 2);
  return call_original(L);
}

/* table.remove(t [, pos]) */
static int tab_remove(lua_State *L) {
  if (lua_gettop(L) >= 2) charge_shift(L, 2);
  return call_original(L);
}

/* coroutine.create(f) and coroutine.wrap(f): a new thread's own hook count
 * may end before it reaches the hook. States metered use a hook interval
 * of at most GW_HOOK_INTERVAL, so this is an upper bound. */
static int co_new(lua_State *L) {
  wrapped_charge(L, GW_HOOK_INTERVAL);
  return call_original(L);
}

/* ---- bulk work ---- */

/* Calls the original with the same arguments, then charges one instruction
 * per result and extra: what it did, once it did it. */
static int charge_after(lua_State *L, uint64_t extra) {
  int n = call_original(L);
  wrapped_charge(L, (uint64_t)n + extra);
  return n;
}

static lua_Integer opt_int(lua_State *L, int idx, lua_Integer def) {
  int ok;
  lua_Integer v = lua_tointegerx(L, idx, &ok);
  return ok ? v : def;
}

/* Bytes of the string argument at idx (0 if it is none). */
static uint64_t str_len(lua_State *L, int idx) {
  size_t len = 0;
  if (lua_type(L, idx) == LUA_TSTRING) lua_tolstring(L, idx, &len);
  return len;
}

/* string.byte, table.unpack, utf8.codepoint, string.unpack: their results;
 * string.unpack scans its format too. */
static int results_cost(lua_State *L) {
  return charge_after(L, 0);
}

static int fmt_cost(lua_State *L) {
  uint64_t fmt = str_len(L, 1);
  return charge_after(L, fmt + (uint64_t)lua_gettop(L));
}

/* string.char, utf8.char, select: their arguments. */
static int args_cost(lua_State *L) {
  return charge_after(L, (uint64_t)lua_gettop(L));
}

/* utf8.len(s [, i [, j]]): the bytes it decodes (at most #s). */
static int bytes_cost(lua_State *L) {
  return charge_after(L, str_len(L, 1) / 2);
}

/* string.rep(s, n [, sep]): n copies, charged one instruction per 64 (the
 * bytes are charged by the allocator; a copy of a few bytes costs less
 * than an instruction). An empty result takes no memory, so no limit would
 * stop it: it is made here. */
static int str_rep(lua_State *L) {
  lua_Integer n = opt_int(L, 2, 0);
  bool sep_empty = lua_isnoneornil(L, 3) ||
                   (lua_type(L, 3) == LUA_TSTRING && str_len(L, 3) == 0);
  if (n > 0 && lua_type(L, 1) == LUA_TSTRING && str_len(L, 1) == 0 &&
      sep_empty) {
    lua_pushliteral(L, "");
    return 1;
  }
  return charge_after(L, n > 0 ? (uint64_t)n / 64 : 0);
}

/* table.concat(t [, sep [, i [, j]]]): one step per element. */
static int tab_concat(lua_State *L) {
  lua_Integer i = opt_int(L, 3, 1), j = opt_int(L, 4, len_of(L, 1));
  return charge_after(L, j >= i ? (lua_Unsigned)j - (lua_Unsigned)i : 0);
}

typedef struct wrapped {
  const char *name;
  lua_CFunction func;
} wrapped;

/* Replaces each function of library lib, if the state has it, with a
 * closure of the original and the meter. The original stays in the loaded
 * table (at the top of the stack) as "lib.name": Lua names a C function
 * called from C by where it finds it there, so its argument errors read
 * "bad argument #1 to 'string.rep'" rather than "to '?'". A sandboxed
 * require never looks there. */
static void wrap_lib(lua_State *L, const char *lib, const wrapped *w,
                     const gw_meter *meter) {
  int loaded = lua_gettop(L);
  if (lua_getfield(L, loaded, lib) == LUA_TTABLE) {
    for (; w->name; w++) {
      lua_getfield(L, -1, w->name); /* the original, as upvalue 1 */
      lua_pushfstring(L, "%s.%s", lib, w->name);
      lua_pushvalue(L, -2);
      lua_rawset(L, loaded);
      lua_pushlightuserdata(L, (void *)meter);
      lua_pushcclosure(L, w->func, 2);
      lua_setfield(L, -2, w->name);
    }
  }
  lua_settop(L, loaded);
}

void gw_meter_open(lua_State *L, const gw_meter *meter) {
  static const luaL_Reg str_funcs[] = {
    {"find", str_find}, {"match", str_match}, {"gmatch", str_gmatch},
    {"gsub", str_gsub}, {NULL, NULL},
  };
  static const wrapped str_bulk[] = {
    {"rep", str_rep}, {"byte", results_cost}, {"char", args_cost},
    {"format", fmt_cost}, {"pack", fmt_cost}, {"unpack", fmt_cost},
    {NULL, NULL},
  };
  static const wrapped tab_funcs[] = {
    {"sort", tab_sort}, {"move", tab_move}, {"insert", tab_insert},
    {"remove", tab_remove}, {"unpack", results_cost}, {"concat", tab_concat},
    {NULL, NULL},
  };
  static const wrapped utf8_funcs[] = {
    {"char", args_cost}, {"codepoint", results_cost}, {"len", bytes_cost},
    {NULL, NULL},
  };
  static const wrapped co_funcs[] = {
    {"create", co_new}, {"wrap", co_new}, {NULL, NULL},
  };
  static const wrapped base_funcs[] = {{"select", args_cost}, {NULL, NULL}};
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_STRLIBNAME) == LUA_TTABLE) {
    lua_pushlightuserdata(L, (void *)meter);
    luaL_setfuncs(L, str_funcs, 1);
  }
  lua_pop(L, 1);
  wrap_lib(L, LUA_STRLIBNAME, str_bulk, meter);
  wrap_lib(L, LUA_TABLIBNAME, tab_funcs, meter);
  wrap_lib(L, LUA_UTF8LIBNAME, utf8_funcs, meter);
  wrap_lib(L, LUA_COLIBNAME, co_funcs, meter);
  wrap_lib(L, LUA_GNAME, base_funcs, meter);
  lua_pop(L, 1);
}
