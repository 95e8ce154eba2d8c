/* dissector.c: `gangway dissector`, a Wireshark Lua dissector generated
 * from listeners' packet definitions (see dissector.h).
 *
 * The output is a fixed runtime (the Lua below: framing, fields, expert
 * info) followed by one data table per listener that the runtime turns
 * into a Proto, its ProtoFields and its tcp.port registrations. Names from
 * packets.lua and config.lua only ever appear inside string literals
 * written by lua_string(), so none of them can end a string or a comment
 * early. The runtime must run on Wireshark's Lua 5.2: no integer division,
 * no bitwise operators, no \u escapes. */
#include "dissector.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>

#include "config.h"
#include "proto.h"

#define PROTO_PREFIX "gangway_"

/* The runtime: frames cut with dissect_tcp_pdus by the framing's length
 * field, sides from the ports, fields walked from the data tables; a frame
 * that does not fit its definition becomes an expert-info error. */
static const char runtime[] =
  "local gw = {}\n"
  "\n"
  "-- A frame that does not fit its definition raises { misfit = message }:\n"
  "-- the dissector turns it into an expert-info error, never a Lua error.\n"
  "function gw.misfit(fmt, ...)\n"
  "  error({ misfit = string.format(fmt, ...) }, 0)\n"
  "end\n"
  "\n"
  "function gw.need(st, n, path)\n"
  "  if st.off + n > st.stop then\n"
  "    gw.misfit(\"%s: %d byte(s) needed at offset %d, the frame has %d\", path, n, st.off, st.stop)\n"
  "  end\n"
  "end\n"
  "\n"
  "-- An integer of size bytes (1 to 4, or 8) as a Lua number.\n"
  "function gw.int(r, size, signed, le)\n"
  "  if size == 8 then\n"
  "    local v\n"
  "    if signed then\n"
  "      if le then v = r:le_int64() else v = r:int64() end\n"
  "    else\n"
  "      if le then v = r:le_uint64() else v = r:uint64() end\n"
  "    end\n"
  "    return v:tonumber()\n"
  "  end\n"
  "  if signed then\n"
  "    if le then return r:le_int() end\n"
  "    return r:int()\n"
  "  end\n"
  "  if le then return r:le_uint() end\n"
  "  return r:uint()\n"
  "end\n"
  "\n"
  "-- The length field at off: its value and its size in bytes; nil when a\n"
  "-- varint is still incomplete, false when it is longer than 5 bytes.\n"
  "function gw.length_field(fr, tvb, off)\n"
  "  local avail = tvb:len() - off\n"
  "  if fr.length_size > 0 then\n"
  "    if avail < fr.length_size then return nil end\n"
  "    return gw.int(tvb(off, fr.length_size), fr.length_size, false, fr.le), fr.length_size\n"
  "  end\n"
  "  local value = 0\n"
  "  for k = 0, 4 do\n"
  "    if k >= avail then return nil end\n"
  "    local b = tvb(off + k, 1):uint()\n"
  "    value = value + (b % 128) * 2 ^ (7 * k)\n"
  "    if b < 128 then return value, k + 1 end\n"
  "  end\n"
  "  return false\n"
  "end\n"
  "\n"
  "-- The most and the fewest bytes a frame from side (or either side: nil)\n"
  "-- may have; a keep-alive is exempt from the fewest.\n"
  "function gw.max_frame(fr, side)\n"
  "  if side then return fr.max_frame[side] end\n"
  "  return math.max(fr.max_frame.client, fr.max_frame.server)\n"
  "end\n"
  "\n"
  "function gw.min_frame(fr, side)\n"
  "  if side then return fr.min_frame[side] end\n"
  "  return math.min(fr.min_frame.client, fr.min_frame.server)\n"
  "end\n"
  "\n"
  "-- dissect_tcp_pdus' get_len: the whole frame's length from its header. A\n"
  "-- length shorter than the header gives a frame of the header alone, which\n"
  "-- the frame's dissection reports. A length past the framing's max_frame\n"
  "-- ends the session in gangway: the bytes at hand are that frame (waiting\n"
  "-- for all of it would swallow every frame captured after it).\n"
  "function gw.frame_len(fr, tvb, pinfo, off, side)\n"
  "  local lo = fr.length_offset\n"
  "  local value, size = gw.length_field(fr, tvb, off + lo)\n"
  "  if value == nil then\n"
  "    if pinfo.can_desegment > 0 then return 0 end -- one more segment\n"
  "    return tvb:len() - off\n"
  "  end\n"
  "  if value == false then return lo + 5 end\n"
  "  local header = lo + size\n"
  "  local len = header + value + fr.length_adjust\n"
  "  if len < header then return header end\n"
  "  if len > gw.max_frame(fr, side) then return tvb:len() - off end\n"
  "  return len\n"
  "end\n"
  "\n"
  "local dissect_struct\n"
  "\n"
  "local function dissect_field(tvb, tree, st, f, path, ints)\n"
  "  local k = f.kind\n"
  "  if k == \"int\" or k == \"float\" then\n"
  "    gw.need(st, f.size, path)\n"
  "    local r = tvb(st.off, f.size)\n"
  "    st.off = st.off + f.size\n"
  "    if k == \"float\" then\n"
  "      tree:add_le(f.pf, r) -- floats are little-endian whatever the framing's order\n"
  "      return nil\n"
  "    end\n"
  "    if st.le then tree:add_le(f.pf, r) else tree:add(f.pf, r) end\n"
  "    return gw.int(r, f.size, f.signed, st.le)\n"
  "  elseif k == \"str\" then\n"
  "    local start, shown, total\n"
  "    if st.str_size == 0 then\n"
  "      local raw = \"\"\n"
  "      if st.stop > st.off then raw = tvb(st.off, st.stop - st.off):raw() end\n"
  "      local nul = string.find(raw, \"\\0\", 1, true)\n"
  "      if not nul then\n"
  "        gw.misfit(\"%s: no NUL-terminated string at offset %d\", path, st.off)\n"
  "      end\n"
  "      start, shown, total = st.off, nul - 1, nul\n"
  "    else\n"
  "      gw.need(st, st.str_size, path)\n"
  "      local n = gw.int(tvb(st.off, st.str_size), st.str_size, false, st.le)\n"
  "      start = st.off + st.str_size\n"
  "      if n > st.stop - start then\n"
  "        gw.misfit(\"%s: a %d-byte string at offset %d runs past the end of the frame (%d bytes)\",\n"
  "                  path, n, st.off, st.stop)\n"
  "      end\n"
  "      shown = n\n"
  "      if st.str_nul and n > 0 and tvb(start + n - 1, 1):uint() == 0 then shown = n - 1 end\n"
  "      total = st.str_size + n\n"
  "    end\n"
  "    local text = \"\"\n"
  "    if shown > 0 then text = tvb(start, shown):string(ENC_UTF_8) end\n"
  "    tree:add(f.pf, tvb(st.off, total), text)\n"
  "    st.off = st.off + total\n"
  "  elseif k == \"bytes\" then\n"
  "    gw.need(st, f.size, path)\n"
  "    tree:add(f.pf, tvb(st.off, f.size))\n"
  "    st.off = st.off + f.size\n"
  "  elseif k == \"rest\" then\n"
  "    tree:add(f.pf, tvb(st.off, st.stop - st.off))\n"
  "    st.off = st.stop\n"
  "  elseif k == \"array\" then\n"
  "    local count\n"
  "    if f.count == \"field\" then\n"
  "      count = ints[f.count_index]\n"
  "      if count == nil or count < 0 then\n"
  "        gw.misfit(\"%s: no element count (%s)\", path, tostring(count))\n"
  "      end\n"
  "    elseif f.count == \"fixed\" then\n"
  "      count = f.n\n"
  "    end\n"
  "    -- Elements of no bytes cannot be told apart: a huge count of them is\n"
  "    -- a frame that does not fit rather than a reason to loop.\n"
  "    if count and count > st.stop - st.off and count > 1024 then\n"
  "      gw.misfit(\"%s: %d elements cannot fit the %d byte(s) left\", path, count, st.stop - st.off)\n"
  "    end\n"
  "    local start = st.off\n"
  "    local item = tree:add(f.pf, tvb(start, 0))\n"
  "    local i = 0\n"
  "    while (count and i < count) or (not count and st.off < st.stop) do\n"
  "      i = i + 1\n"
  "      local before = st.off\n"
  "      local el = item:add(tvb(before, 0), \"[\" .. i .. \"]\")\n"
  "      dissect_struct(tvb, el, st, f.fields, path .. \"[\" .. i .. \"]\")\n"
  "      el:set_len(st.off - before)\n"
  "      if not count and st.off == before then\n"
  "        gw.misfit(\"%s[%d]: an element of no bytes\", path, i)\n"
  "      end\n"
  "    end\n"
  "    item:set_len(st.off - start)\n"
  "    item:append_text(\" (\" .. i .. \")\")\n"
  "  end\n"
  "  return nil\n"
  "end\n"
  "\n"
  "dissect_struct = function(tvb, tree, st, fields, path)\n"
  "  local ints = {}\n"
  "  for i, f in ipairs(fields) do\n"
  "    -- Optional fields may be missing at the end of the body.\n"
  "    if f.opt and st.off >= st.stop then break end\n"
  "    ints[i] = dissect_field(tvb, tree, st, f, path .. \".\" .. f.name, ints)\n"
  "  end\n"
  "end\n"
  "\n"
  "local function add_fields(list, fields)\n"
  "  for _, f in ipairs(fields) do\n"
  "    list[#list + 1] = f.pf\n"
  "    if f.fields then add_fields(list, f.fields) end\n"
  "  end\n"
  "end\n"
  "\n"
  "-- The side a frame comes from: toward the listen or upstream port is the\n"
  "-- client's, from them the server's (a capture on either side of gangway).\n"
  "local function side_of(L, pinfo)\n"
  "  if L.port_set[pinfo.dst_port] then return \"client\" end\n"
  "  if L.port_set[pinfo.src_port] then return \"server\" end\n"
  "  return nil\n"
  "end\n"
  "\n"
  "local function find_def(L, side, has_opcode, op)\n"
  "  local sides = { side }\n"
  "  if not side then sides = { \"client\", \"server\" } end\n"
  "  for _, s in ipairs(sides) do\n"
  "    local def\n"
  "    if has_opcode then def = L.by_opcode[s][op] else def = L.keepalive[s] end\n"
  "    if def then return def end\n"
  "  end\n"
  "  return nil\n"
  "end\n"
  "\n"
  "local function dissect_frame(L, tvb, pinfo, tree)\n"
  "  local fr = L.framing\n"
  "  local len = tvb:len()\n"
  "  local side = side_of(L, pinfo)\n"
  "  local top = tree:add(L.proto, tvb())\n"
  "  local lo = fr.length_offset\n"
  "  local value, lsize = gw.length_field(fr, tvb, lo)\n"
  "  local name, def, misfit\n"
  "  local ok, err = pcall(function()\n"
  "    if not value then\n"
  "      gw.misfit(\"length field: incomplete or longer than 5 bytes\")\n"
  "    end\n"
  "    local header = lo + lsize\n"
  "    top:add(L.hf.length, tvb(lo, lsize), value)\n"
  "    local whole = header + value + fr.length_adjust\n"
  "    if whole > gw.max_frame(fr, side) then\n"
  "      gw.misfit(\"length field: %d, a %d-byte frame, longer than the %d bytes the framing \"\n"
  "                .. \"allows %s frames (gangway ends the session here)\", value, whole,\n"
  "                gw.max_frame(fr, side), side or \"client or server\")\n"
  "    end\n"
  "    local keepalive = fr.keepalive and whole == header\n"
  "    if not keepalive and whole < gw.min_frame(fr, side) and whole >= header then\n"
  "      gw.misfit(\"length field: %d, a %d-byte frame, shorter than the %d bytes the framing \"\n"
  "                .. \"allows %s frames (gangway ends the session here)\", value, whole,\n"
  "                gw.min_frame(fr, side), side or \"client or server\")\n"
  "    end\n"
  "    if whole ~= len then\n"
  "      gw.misfit(\"length field: %d, a frame shorter than its %d-byte header\", value, header)\n"
  "    end\n"
  "    local has_opcode = fr.opcode_size > 0 and fr.opcode_offset + fr.opcode_size <= len\n"
  "    local op\n"
  "    if has_opcode then\n"
  "      op = gw.int(tvb(fr.opcode_offset, fr.opcode_size), fr.opcode_size, false, fr.le)\n"
  "    end\n"
  "    -- a frame without an opcode is the keep-alive's only if it is one\n"
  "    if has_opcode or keepalive or not fr.keepalive then\n"
  "      def = find_def(L, side, has_opcode, op)\n"
  "    end\n"
  "    if def then\n"
  "      name = def.name\n"
  "    elseif has_opcode then\n"
  "      name = \"unknown opcode \" .. op\n"
  "    elseif keepalive then\n"
  "      name = \"keep-alive\"\n"
  "    else\n"
  "      name = \"frame without opcode\"\n"
  "    end\n"
  "    local at = tvb(0, len)\n"
  "    if has_opcode then at = tvb(fr.opcode_offset, fr.opcode_size) end\n"
  "    top:add(L.hf.name, at, name):set_generated()\n"
  "    if side then top:add(L.hf.side, tvb(0, 0), side):set_generated() end\n"
  "    if has_opcode then top:add(L.hf.opcode, at, op) end\n"
  "    local boff = fr.body_offset\n"
  "    if fr.length_size == 0 then boff = boff + lsize end\n"
  "    if boff > header and boff <= len then top:add(L.hf.header, tvb(0, boff)) end\n"
  "    if not def then\n"
  "      if has_opcode then top:add_proto_expert_info(L.ef.unknown, name) end\n"
  "      if boff < len then top:add(L.hf.body, tvb(boff, len - boff)) end\n"
  "      return\n"
  "    end\n"
  "    if boff > len then boff = len end\n"
  "    local body = top:add(tvb(boff, len - boff), def.name)\n"
  "    local st = { off = boff, stop = len, le = fr.le, str_size = fr.str_length_size,\n"
  "                 str_nul = fr.str_nul }\n"
  "    dissect_struct(tvb, body, st, def.fields, def.name)\n"
  "    if st.off < len then\n"
  "      -- a field a patch appended: gangway keeps it, the definition lacks it\n"
  "      body:add(L.hf.extra, tvb(st.off, len - st.off))\n"
  "    end\n"
  "  end)\n"
  "  if not ok then\n"
  "    if type(err) == \"table\" and err.misfit then misfit = err.misfit\n"
  "    else misfit = \"dissector error: \" .. tostring(err) end\n"
  "    top:add_proto_expert_info(L.ef.misfit, misfit)\n"
  "  end\n"
  "  name = name or \"frame\"\n"
  "  local text = name\n"
  "  if side then text = text .. \" (\" .. side .. \")\" end\n"
  "  top:append_text(\", \" .. text)\n"
  "  if misfit then name = name .. \" [does not fit: \" .. misfit .. \"]\" end\n"
  "  if L.first_in_packet then\n"
  "    pinfo.cols.protocol:set(L.column)\n"
  "    pinfo.cols.info:set(name)\n"
  "    L.first_in_packet = false\n"
  "  else\n"
  "    pinfo.cols.info:append(\", \" .. name)\n"
  "  end\n"
  "end\n"
  "\n"
  "-- Registers one listener's dissector from its spec (see below).\n"
  "function gw.listener(spec)\n"
  "  local L = { framing = spec.framing, column = spec.column, port_set = {},\n"
  "              by_opcode = { client = {}, server = {} }, keepalive = {} }\n"
  "  local p = Proto(spec.proto, spec.title)\n"
  "  L.proto = p\n"
  "  local a = spec.proto\n"
  "  L.hf = {\n"
  "    name = ProtoField.string(a .. \".name\", \"Packet\"),\n"
  "    side = ProtoField.string(a .. \".side\", \"Side\"),\n"
  "    length = ProtoField.uint32(a .. \".length\", \"Length field\", base.DEC),\n"
  "    opcode = ProtoField.uint32(a .. \".opcode\", \"Opcode\", base.DEC),\n"
  "    header = ProtoField.bytes(a .. \".header\", \"Header\"),\n"
  "    body = ProtoField.bytes(a .. \".body\", \"Body\"),\n"
  "    extra = ProtoField.bytes(a .. \".extra\", \"After the last defined field\"),\n"
  "  }\n"
  "  L.ef = {\n"
  "    misfit = ProtoExpert.new(a .. \".misfit\", \"Frame does not fit its definition\",\n"
  "                             expert.group.MALFORMED, expert.severity.ERROR),\n"
  "    unknown = ProtoExpert.new(a .. \".unknown\", \"Unknown opcode\",\n"
  "                              expert.group.UNDECODED, expert.severity.NOTE),\n"
  "  }\n"
  "  local list = {}\n"
  "  for _, k in ipairs({ \"name\", \"side\", \"length\", \"opcode\", \"header\", \"body\", \"extra\" }) do\n"
  "    list[#list + 1] = L.hf[k]\n"
  "  end\n"
  "  for _, def in ipairs(spec.packets) do\n"
  "    add_fields(list, def.fields)\n"
  "    for _, s in ipairs(def.sides) do\n"
  "      if def.keepalive then L.keepalive[s] = def else L.by_opcode[s][def.opcode] = def end\n"
  "    end\n"
  "  end\n"
  "  p.fields = list\n"
  "  p.experts = { L.ef.misfit, L.ef.unknown }\n"
  "  local fr = L.framing\n"
  "  local fixed = fr.length_offset + fr.length_size\n"
  "  if fr.length_size == 0 then fixed = fr.length_offset + 1 end\n"
  "  local function get_len(tvb, pinfo, off)\n"
  "    return gw.frame_len(fr, tvb, pinfo, off, side_of(L, pinfo))\n"
  "  end\n"
  "  local function dissect(tvb, pinfo, tree) dissect_frame(L, tvb, pinfo, tree) end\n"
  "  function p.dissector(tvb, pinfo, tree)\n"
  "    L.first_in_packet = true\n"
  "    dissect_tcp_pdus(tvb, tree, fixed, get_len, dissect)\n"
  "  end\n"
  "  local tcp = DissectorTable.get(\"tcp.port\")\n"
  "  for _, port in ipairs(spec.ports) do\n"
  "    L.port_set[port] = true\n"
  "    tcp:add(port, p)\n"
  "  end\n"
  "end\n"
  "\n";

typedef struct gen {
  FILE *out;
  char **abbrevs; /* every field abbreviation of the listener so far */
  size_t nabbrevs, cap;
  /* the same, hashed (open addressing, at most half full): a generated
   * packets.lua of every opcode has 65536 of them, which a scan of the
   * list for each took seconds to check */
  char **set;
  size_t set_cap;
  bool nomem;
} gen;

/* s as a Lua string literal: printable ASCII as is, every other byte (and
 * the quote and the backslash) as a three-digit decimal escape, which no
 * following digit can extend and which Lua 5.2 and 5.4 read alike. */
static void lua_string(FILE *out, const char *s)
{
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\')
      fputc(*p, out);
    else
      fprintf(out, "\\%03u", *p);
  }
  fputc('"', out);
}

/* A component of a filter name: [A-Za-z0-9_-], anything else as "_"
 * (lower case only for a protocol's name, as Wireshark wants). */
static void filter_component(char *dst, size_t cap, const char *s, bool lower)
{
  size_t i = 0;
  for (; s[i] && i + 1 < cap; i++) {
    unsigned char c = (unsigned char)s[i];
    bool ok = isascii(c) && (isalnum(c) || c == '_' || c == '-');
    dst[i] = !ok ? '_' : lower ? (char)tolower(c) : (char)c;
  }
  if (i == 0 && cap > 1)
    dst[i++] = '_';
  dst[i] = '\0';
}

static size_t abbrev_hash(const char *s)
{
  uint64_t h = 14695981039346656037u; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211u;
  return (size_t)h;
}

/* The slot of a in the set: where it is, or the empty one it would take. */
static char **abbrev_slot(char **set, size_t cap, const char *a)
{
  size_t i = abbrev_hash(a) & (cap - 1);
  while (set[i] && strcmp(set[i], a) != 0)
    i = (i + 1) & (cap - 1);
  return &set[i];
}

static bool abbrev_used(const gen *g, const char *a)
{
  return g->set_cap && *abbrev_slot(g->set, g->set_cap, a);
}

/* Adds the list's last abbreviation to the set, growing it first. */
static bool abbrev_add(gen *g)
{
  if (2 * g->nabbrevs > g->set_cap) {
    size_t cap = g->set_cap ? 2 * g->set_cap : 64;
    char **set = calloc(cap, sizeof *set);
    if (!set)
      return false;
    for (size_t i = 0; i + 1 < g->nabbrevs; i++)
      *abbrev_slot(set, cap, g->abbrevs[i]) = g->abbrevs[i];
    free(g->set);
    g->set = set;
    g->set_cap = cap;
  }
  char *a = g->abbrevs[g->nabbrevs - 1];
  *abbrev_slot(g->set, g->set_cap, a) = a;
  return true;
}

/* A field abbreviation not used yet in this listener: two names that only
 * differ in characters a filter cannot hold get "_2", "_3"... */
static char *unique_abbrev(gen *g, const char *base)
{
  size_t len = strlen(base);
  char *a = malloc(len + 24);
  if (!a) {
    g->nomem = true;
    return NULL;
  }
  memcpy(a, base, len + 1);
  for (unsigned k = 2; abbrev_used(g, a); k++)
    snprintf(a + len, 24, "_%u", k);
  if (g->nabbrevs == g->cap) {
    size_t cap = g->cap ? 2 * g->cap : 32;
    char **grown = realloc(g->abbrevs, cap * sizeof *grown);
    if (!grown) {
      free(a);
      g->nomem = true;
      return NULL;
    }
    g->abbrevs = grown;
    g->cap = cap;
  }
  g->abbrevs[g->nabbrevs++] = a;
  if (!abbrev_add(g)) {
    g->nomem = true; /* a stays in the list, freed with it */
    return NULL;
  }
  return a;
}

/* "prefix.name" with name made a filter component (malloc'd), or NULL. */
static char *join_abbrev(gen *g, const char *prefix, const char *name)
{
  size_t plen = strlen(prefix), nlen = strlen(name);
  char *s = malloc(plen + nlen + 3);
  if (!s) {
    g->nomem = true;
    return NULL;
  }
  memcpy(s, prefix, plen);
  s[plen] = '.';
  filter_component(s + plen + 1, nlen + 2, name, false);
  return s;
}

static void gen_reset(gen *g)
{
  for (size_t i = 0; i < g->nabbrevs; i++)
    free(g->abbrevs[i]);
  free(g->abbrevs);
  free(g->set);
  g->abbrevs = g->set = NULL;
  g->nabbrevs = g->cap = g->set_cap = 0;
}

/* The runtime's kind, the ProtoField constructor and the size of a type. */
static void field_kind(const gw_pkt_field *f, const char **kind, const char **ctor,
                       unsigned *size)
{
  static const struct {
    const char *kind, *ctor;
    unsigned size;
  } kinds[] = {
    [GW_PF_U8] = {"int", "uint8", 1},     [GW_PF_U16] = {"int", "uint16", 2},
    [GW_PF_U32] = {"int", "uint32", 4},   [GW_PF_U64] = {"int", "uint64", 8},
    [GW_PF_I8] = {"int", "int8", 1},      [GW_PF_I16] = {"int", "int16", 2},
    [GW_PF_I32] = {"int", "int32", 4},    [GW_PF_I64] = {"int", "int64", 8},
    [GW_PF_F32] = {"float", "float", 4},  [GW_PF_F64] = {"float", "double", 8},
    [GW_PF_STR] = {"str", "string", 0},   [GW_PF_BYTES] = {"bytes", "bytes", 0},
    [GW_PF_REST] = {"rest", "bytes", 0},  [GW_PF_ARRAY] = {"array", "none", 0},
  };
  *kind = kinds[f->type].kind;
  *ctor = kinds[f->type].ctor;
  *size = kinds[f->type].size;
}

static void emit_fields(gen *g, const gw_pkt_field *fs, size_t n, const char *prefix,
                        int depth)
{
  FILE *o = g->out;
  for (size_t i = 0; i < n; i++) {
    const gw_pkt_field *f = &fs[i];
    const char *kind, *ctor;
    unsigned size;
    field_kind(f, &kind, &ctor, &size);
    char *base = join_abbrev(g, prefix, f->name);
    char *abbrev = base ? unique_abbrev(g, base) : NULL;
    free(base);
    if (!abbrev)
      return;
    fprintf(o, "%*s{ name = ", 2 * depth, "");
    lua_string(o, f->name);
    fprintf(o, ", kind = \"%s\"", kind);
    if (f->optional)
      fputs(", opt = true", o);
    if (size)
      fprintf(o, ", size = %u", size);
    if (f->type == GW_PF_BYTES)
      fprintf(o, ", size = %" PRIu32, f->n);
    if (f->type >= GW_PF_I8 && f->type <= GW_PF_I64)
      fputs(", signed = true", o);
    fprintf(o, ",\n%*s  pf = ProtoField.%s(", 2 * depth, "", ctor);
    lua_string(o, abbrev);
    fputs(", ", o);
    lua_string(o, f->name);
    if (!strcmp(kind, "int"))
      fputs(", base.DEC", o);
    fputs(")", o);
    if (f->type == GW_PF_ARRAY) {
      switch (f->count_kind) {
      case GW_COUNT_FIELD:
        fprintf(o, ",\n%*s  count = \"field\", count_index = %zu", 2 * depth, "",
                f->count_field + 1);
        break;
      case GW_COUNT_FIXED:
        fprintf(o, ",\n%*s  count = \"fixed\", n = %" PRIu32, 2 * depth, "", f->n);
        break;
      case GW_COUNT_REST:
        fprintf(o, ",\n%*s  count = \"rest\"", 2 * depth, "");
        break;
      }
      fprintf(o, ", fields = {\n");
      emit_fields(g, f->fields, f->nfields, abbrev, depth + 2);
      fprintf(o, "%*s  }", 2 * depth, "");
    }
    fputs(" },\n", o);
  }
}

static void emit_listener(gen *g, const gw_dissector_listener *l, const char *pname)
{
  FILE *o = g->out;
  const gw_framing *f = l->framing;
  fputs("gw.listener{\n  proto = ", o);
  lua_string(o, pname);
  fputs(", column = ", o);
  lua_string(o, pname);
  fputs(",\n  title = ", o);
  /* The description names the listener as written (Wireshark wants it
   * unique too: listener names are). */
  char *title = malloc(strlen(l->name) + 32);
  if (!title) {
    g->nomem = true;
    return;
  }
  sprintf(title, "gangway listener %s", l->name);
  lua_string(o, title);
  free(title);
  fputs(",\n  ports = {", o);
  for (size_t i = 0; i < l->nports; i++) {
    bool seen = !l->ports[i];
    for (size_t j = 0; j < i && !seen; j++)
      seen = l->ports[j] == l->ports[i];
    if (!seen)
      fprintf(o, " %u,", (unsigned)l->ports[i]);
  }
  fprintf(o, " },\n  framing = { length_offset = %" PRIu32 ", length_size = %u, le = %s, "
          "length_adjust = %" PRId32 ",\n    opcode_offset = %" PRIu32 ", opcode_size = %u, "
          "keepalive = %s, body_offset = %zu,\n    str_length_size = %u, str_nul = %s,\n"
          "    min_frame = { client = %" PRIu32 ", server = %" PRIu32 " },\n"
          "    max_frame = { client = %" PRIu32 ", server = %" PRIu32 " } },\n",
          f->length_offset, (unsigned)f->length_size, f->big_endian ? "false" : "true",
          f->length_adjust, f->opcode_offset, (unsigned)f->opcode_size,
          f->keepalive ? "true" : "false", gw_frame_body_offset(f),
          (unsigned)f->str_length_size, f->str_nul ? "true" : "false",
          f->min_frame[GW_CLIENT], f->min_frame[GW_SERVER],
          f->max_frame[GW_CLIENT], f->max_frame[GW_SERVER]);
  fputs("  packets = {\n", o);
  for (size_t i = 0; i < l->proto->npackets && !g->nomem; i++) {
    const gw_packet_def *d = &l->proto->packets[i];
    fputs("    { name = ", o);
    lua_string(o, d->name);
    fputs(", sides = {", o);
    for (int s = 0; s < GW_SIDES; s++)
      if (d->sides[s])
        fprintf(o, " \"%s\",", gw_side_name((gw_side)s));
    fputs(" }, ", o);
    if (d->keepalive)
      fputs("keepalive = true", o);
    else
      fprintf(o, "opcode = %" PRIu32, d->opcode);
    fputs(", fields = {\n", o);
    char *prefix = join_abbrev(g, pname, d->name);
    if (!prefix)
      return;
    emit_fields(g, d->fields, d->nfields, prefix, 4);
    free(prefix);
    fputs("    } },\n", o);
  }
  fputs("  },\n}\n", o);
}

int gw_dissector_generate(const gw_dissector_listener *l, size_t n, char **out,
                          size_t *outlen, char *err, size_t errlen)
{
  *out = NULL;
  *outlen = 0;
  char (*names)[64 + sizeof PROTO_PREFIX] = calloc(n ? n : 1, sizeof *names);
  if (!names) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  for (size_t i = 0; i < n; i++) {
    if (l[i].framing->raw) {
      snprintf(err, errlen, "listener \"%s\": no framing, no frames to dissect", l[i].name);
      free(names);
      return -EINVAL;
    }
    memcpy(names[i], PROTO_PREFIX, sizeof PROTO_PREFIX - 1);
    filter_component(names[i] + sizeof PROTO_PREFIX - 1, 65, l[i].name, true);
    for (size_t j = 0; j < i; j++) {
      if (strcmp(names[i], names[j]) == 0) {
        snprintf(err, errlen, "listeners \"%s\" and \"%s\" would both be Wireshark's \"%s\"",
                 l[j].name, l[i].name, names[i]);
        free(names);
        return -EINVAL;
      }
    }
  }
  char *buf = NULL;
  size_t len = 0;
  gen g = {.out = open_memstream(&buf, &len)};
  if (!g.out) {
    free(names);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  fputs("-- A Wireshark dissector written by `gangway dissector` (gangway " GW_VERSION ")\n"
        "-- from listeners' packet definitions; write it again when they change.\n"
        "-- Use: wireshark -X lua_script:THIS_FILE, or copy it into Wireshark's\n"
        "-- personal Lua plugins folder (Help > About > Folders).\n", g.out);
  fputs(runtime, g.out);
  for (size_t i = 0; i < n && !g.nomem; i++) {
    fputc('\n', g.out);
    emit_listener(&g, &l[i], names[i]);
    gen_reset(&g);
  }
  gen_reset(&g);
  free(names);
  bool failed = ferror(g.out) || g.nomem;
  if (fclose(g.out) != 0)
    failed = true;
  if (failed) {
    free(buf);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  *out = buf;
  *outlen = len;
  return 0;
}

/* The port of an address, or 0 when there is none. */
static uint16_t addr_port(const struct sockaddr_storage *ss)
{
  if (ss->ss_family == AF_INET)
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
  if (ss->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  return 0;
}

int gw_dissector_from_config(const gw_config *cfg, const char *listener, char **out,
                             size_t *outlen, char *err, size_t errlen)
{
  *out = NULL;
  *outlen = 0;
  size_t n = 0, nl = cfg->nlisteners;
  gw_proto *protos = calloc(nl ? nl : 1, sizeof *protos);
  gw_dissector_listener *dl = calloc(nl ? nl : 1, sizeof *dl);
  /* per listener: its listen port, then its upstream servers' */
  uint16_t *ports = calloc(nl ? nl : 1, (1 + GW_UPSTREAM_SERVERS_MAX) * sizeof *ports);
  int rc = 0;
  if (!protos || !dl || !ports) {
    snprintf(err, errlen, "out of memory");
    rc = -ENOMEM;
  }
  bool named = false;
  for (size_t i = 0; i < nl && rc == 0; i++) {
    const gw_listener_config *lc = &cfg->listeners[i];
    if (listener && strcmp(lc->name, listener) != 0)
      continue;
    named = true;
    if (!lc->protocol_dir)
      continue;
    char *path = malloc(strlen(lc->protocol_dir) + sizeof "/packets.lua");
    if (!path) {
      snprintf(err, errlen, "out of memory");
      rc = -ENOMEM;
      break;
    }
    sprintf(path, "%s/packets.lua", lc->protocol_dir);
    rc = gw_proto_load(path, &lc->framing, &protos[n], err, errlen);
    free(path);
    if (rc < 0)
      break;
    uint16_t *lp = ports + n * (1 + GW_UPSTREAM_SERVERS_MAX);
    size_t np = 0;
    lp[np++] = addr_port(&lc->listen_addr);
    for (size_t j = 0; j < lc->pool.nservers && j < GW_UPSTREAM_SERVERS_MAX; j++)
      lp[np++] = lc->pool.servers[j].port;
    dl[n] = (gw_dissector_listener){lc->name, &lc->framing, &protos[n], lp, np};
    n++;
  }
  if (rc == 0 && listener && !named) {
    snprintf(err, errlen, "%s: no listener is called \"%s\"", cfg->path, listener);
    rc = -EINVAL;
  } else if (rc == 0 && n == 0 && listener) {
    snprintf(err, errlen, "%s: listener \"%s\" has no protocol = ... (no packet definitions)",
             cfg->path, listener);
    rc = -EINVAL;
  } else if (rc == 0 && n == 0) {
    snprintf(err, errlen, "%s: no listener has protocol = ... (no packet definitions)",
             cfg->path);
    rc = -EINVAL;
  }
  if (rc == 0)
    rc = gw_dissector_generate(dl, n, out, outlen, err, errlen);
  for (size_t i = 0; i < n; i++)
    gw_proto_free(&protos[i]);
  free(protos);
  free(dl);
  free(ports);
  return rc;
}
