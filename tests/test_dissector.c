/* test_dissector.c: src/dissector.c, the Wireshark dissector generator.
 *
 * The generated text is loaded by a plain Lua state (a syntax check of the
 * whole file), then run against stand-ins of Wireshark's Lua API (Proto,
 * ProtoField, tvb ranges, tree items) that record what it registers and
 * what it adds to the tree for frames that fit their definitions and
 * frames that do not. tshark itself reads it in tests/it_dissector.sh. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "dissector.h"
#include "proto.h"

/* A definition with every field type, an array in an array, an optional
 * field, the rest of the body, a keep-alive, and names no loader would
 * accept: quotes, brackets, a newline, a backslash, bytes above 0x7f. */
#define HOSTILE_PACKET "EVIL\"]] pwned = true --\n\\\"; pwned = true --\xc3\xa9"
#define HOSTILE_FIELD "t\"e\nx]]t\\"

static gw_pkt_field inner_fields[] = {
  {.name = "v", .type = GW_PF_U8, .counts = -1},
};
static gw_pkt_field item_fields[] = {
  {.name = "id", .type = GW_PF_U32, .counts = -1},
  {.name = "name", .type = GW_PF_STR, .counts = -1},
  {.name = "pair", .type = GW_PF_ARRAY, .count_kind = GW_COUNT_FIXED, .n = 2,
   .fields = inner_fields, .nfields = 1, .counts = -1},
};
static gw_pkt_field all_fields[] = {
  {.name = "a", .type = GW_PF_U8, .counts = -1},
  {.name = "b", .type = GW_PF_U16, .counts = -1},
  {.name = "c", .type = GW_PF_U32, .counts = -1},
  {.name = "d", .type = GW_PF_U64, .counts = -1},
  {.name = "e", .type = GW_PF_I8, .counts = -1},
  {.name = "f", .type = GW_PF_I16, .counts = -1},
  {.name = "g", .type = GW_PF_I32, .counts = -1},
  {.name = "h", .type = GW_PF_I64, .counts = -1},
  {.name = "x", .type = GW_PF_F32, .counts = -1},
  {.name = "y", .type = GW_PF_F64, .counts = -1},
  {.name = "s", .type = GW_PF_STR, .counts = -1},
  {.name = "raw", .type = GW_PF_BYTES, .n = 4, .counts = -1},
  {.name = "count", .type = GW_PF_U16, .counts = 13},
  {.name = "items", .type = GW_PF_ARRAY, .count_kind = GW_COUNT_FIELD, .count_field = 12,
   .fields = item_fields, .nfields = 3, .counts = -1},
  {.name = "tail", .type = GW_PF_ARRAY, .count_kind = GW_COUNT_REST,
   .fields = inner_fields, .nfields = 1, .counts = -1},
};
static gw_pkt_field login_fields[] = {
  {.name = "error", .type = GW_PF_U16, .counts = -1},
  {.name = "player", .type = GW_PF_U32, .optional = true, .counts = -1},
};
static gw_pkt_field rest_fields[] = {
  {.name = "kind", .type = GW_PF_U8, .counts = -1},
  {.name = "data", .type = GW_PF_REST, .counts = -1},
};
static gw_pkt_field hostile_fields[] = {
  {.name = HOSTILE_FIELD, .type = GW_PF_STR, .counts = -1},
};
static gw_packet_def packets[] = {
  {.name = "ALL", .sides = {true, false}, .opcode = 7, .fields = all_fields, .nfields = 15},
  {.name = HOSTILE_PACKET, .sides = {true, false}, .opcode = 9, .fields = hostile_fields,
   .nfields = 1},
  {.name = "KEEPALIVE", .sides = {true, true}, .keepalive = true},
  {.name = "LOGIN", .sides = {false, true}, .opcode = 931, .fields = login_fields, .nfields = 2},
  {.name = "REST", .sides = {false, true}, .opcode = 7, .fields = rest_fields, .nfields = 2},
};
static gw_proto proto = {.path = "packets.lua", .packets = packets, .npackets = 5};

/* Stand-ins for Wireshark's Lua API, recording into REC. */
static const char stubs[] =
  "REC = { fields = {}, protos = {}, ports = {}, items = {}, experts = {} }\n"
  "base = { DEC = 'DEC' }\n"
  "ENC_UTF_8 = 'utf8'\n"
  "expert = { group = { MALFORMED = 'malformed', UNDECODED = 'undecoded' },\n"
  "           severity = { ERROR = 'error', NOTE = 'note' } }\n"
  "ProtoField = setmetatable({}, { __index = function(_, ctor)\n"
  "  return function(abbrev, name)\n"
  "    assert(not REC.fields[abbrev], 'abbreviation used twice: ' .. abbrev)\n"
  "    local f = { ctor = ctor, abbrev = abbrev, name = name }\n"
  "    REC.fields[#REC.fields + 1] = f\n"
  "    REC.fields[abbrev] = f\n"
  "    return f\n"
  "  end end })\n"
  "ProtoExpert = { new = function(abbrev, text) return { abbrev = abbrev, text = text } end }\n"
  "function Proto(name, desc)\n"
  "  local p = { name = name, desc = desc }\n"
  "  REC.protos[#REC.protos + 1] = p\n"
  "  return p\n"
  "end\n"
  "DissectorTable = { get = function(t)\n"
  "  assert(t == 'tcp.port')\n"
  "  return { add = function(_, port, p) REC.ports[#REC.ports + 1] = port .. '=' .. p.name end }\n"
  "end }\n"
  "local Range = {}\n"
  "Range.__index = Range\n"
  "local function range(s, off, len)\n"
  "  assert(off >= 0 and len >= 0 and off + len <= #s, 'Range is out of bounds')\n"
  "  return setmetatable({ s = s, off = off, len = len }, Range)\n"
  "end\n"
  "function Range:raw() return self.s:sub(self.off + 1, self.off + self.len) end\n"
  "function Range:string(enc) assert(enc == 'utf8') return self:raw() end\n"
  "local function get(r, fmt) return (string.unpack(fmt, r:raw())) end\n"
  "function Range:uint() assert(self.len <= 4) return get(self, '>I' .. self.len) end\n"
  "function Range:le_uint() assert(self.len <= 4) return get(self, '<I' .. self.len) end\n"
  "function Range:int() assert(self.len <= 4) return get(self, '>i' .. self.len) end\n"
  "function Range:le_int() assert(self.len <= 4) return get(self, '<i' .. self.len) end\n"
  "local I64 = { __index = { tonumber = function(self) return self.v end } }\n"
  "local function i64(v) return setmetatable({ v = v }, I64) end\n"
  "function Range:uint64() return i64(get(self, '>I8')) end\n"
  "function Range:le_uint64() return i64(get(self, '<I8')) end\n"
  "function Range:int64() return i64(get(self, '>i8')) end\n"
  "function Range:le_int64() return i64(get(self, '<i8')) end\n"
  "function tvb_of(s)\n"
  "  return setmetatable({ s = s }, {\n"
  "    __call = function(t, off, len) off = off or 0; return range(t.s, off, len or #t.s - off) end,\n"
  "    __index = { len = function(t) return #t.s end } })\n"
  "end\n"
  /* What a field shows: the value given, else read from its range. */
  "local ints = { uint8 = 'I1', uint16 = 'I2', uint32 = 'I4', uint64 = 'I8', int8 = 'i1',\n"
  "               int16 = 'i2', int32 = 'i4', int64 = 'i8', float = 'f', double = 'd' }\n"
  "local Item = {}\n"
  "Item.__index = Item\n"
  "local function item(label) return setmetatable({ label = label }, Item) end\n"
  "local function add(self, le, a, b, c)\n"
  "  if getmetatable(a) == Range then return item(b) end\n"
  "  if a.desc then return item(a.desc) end\n"
  "  local v = c\n"
  "  if v == nil and ints[a.ctor] then\n"
  "    assert(#ints[a.ctor] == 1 or tonumber(ints[a.ctor]:sub(2)) == b.len, a.abbrev)\n"
  "    v = get(b, (le and '<' or '>') .. ints[a.ctor])\n"
  "  elseif v == nil and a.ctor == 'bytes' then v = b:raw() end\n"
  "  REC.items[#REC.items + 1] = { abbrev = a.abbrev, value = v }\n"
  "  REC.items[a.abbrev] = v\n"
  "  return item(a.name)\n"
  "end\n"
  "function Item:add(...) return add(self, false, ...) end\n"
  "function Item:add_le(...) return add(self, true, ...) end\n"
  "function Item:set_len(n) assert(n >= 0) end\n"
  "function Item:set_generated() end\n"
  "function Item:append_text(t) self.label = self.label .. t end\n"
  "function Item:add_proto_expert_info(e, text) REC.experts[#REC.experts + 1] = text end\n"
  "function dissect_tcp_pdus(tvb, tree, fixed, get_len, dissect)\n"
  "  local off = 0\n"
  "  while tvb:len() - off >= fixed do\n"
  "    local len = get_len(tvb, PINFO, off)\n"
  "    assert(len > 0 and off + len <= tvb:len(), 'bad frame length')\n"
  "    dissect(tvb_of(tvb.s:sub(off + 1, off + len)), PINFO, tree)\n"
  "    off = off + len\n"
  "  end\n"
  "end\n"
  "local function col() return { text = '', set = function(c, t) c.text = t end,\n"
  "                              append = function(c, t) c.text = c.text .. t end } end\n"
  /* Dissects bytes sent by the client (to port 1973) or the server. */
  "function run(bytes, from_client)\n"
  "  REC.items, REC.experts = {}, {}\n"
  "  PINFO = { src_port = from_client and 40000 or 1973, dst_port = from_client and 1973 or 40000,\n"
  "            can_desegment = 1, cols = { info = col(), protocol = col() } }\n"
  "  REC.protos[1].dissector(tvb_of(bytes), PINFO, item('root'))\n"
  "  return PINFO.cols.info.text\n"
  "end\n"
  /* A top frame: u16 BE length of the whole frame, session, u16 opcode. */
  "function frame(op, body) return string.pack('>I2I4I2', 8 + #body, 0x80000000, op) .. body end\n"
  "function str(s) return string.pack('>s2', s .. '\\0') end\n";

static char *generate(const gw_dissector_listener *l, size_t n, size_t *len) {
  char *text = NULL, err[256] = "";
  int rc = gw_dissector_generate(l, n, &text, len, err, sizeof err);
  if (rc != 0) fail_msg("gw_dissector_generate: %d %s", rc, err);
  assert_non_null(text);
  assert_int_equal(strlen(text), *len);
  return text;
}

static gw_framing top(void) {
  gw_framing f;
  assert_int_equal(gw_framing_preset("top", &f), 0);
  return f;
}

/* A Lua state with the stubs and the generated text run. */
static lua_State *load_generated(const char *text, size_t len) {
  lua_State *L = luaL_newstate();
  assert_non_null(L);
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, text, len, "=generated") != LUA_OK)
    fail_msg("the generated text does not load: %s", lua_tostring(L, -1));
  if (luaL_dostring(L, stubs) != LUA_OK) fail_msg("stubs: %s", lua_tostring(L, -1));
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) fail_msg("the generated text fails: %s", lua_tostring(L, -1));
  return L;
}

/* Runs a Lua check in L; its error fails the test. */
static void check(lua_State *L, const char *code) {
  if (luaL_dostring(L, code) != LUA_OK) fail_msg("%s", lua_tostring(L, -1));
}

/* Every field type gets its ProtoField, names escape into literals and
 * filter names only, the ports are registered. */
static void test_fields_and_names(void **state) {
  (void)state;
  gw_framing f = top();
  static const uint16_t ports[] = {1973, 0, 1974, 1973};
  gw_dissector_listener l = {"Game.1", &f, &proto, ports, 4};
  size_t len;
  char *text = generate(&l, 1, &len);
  /* The hostile name is one literal: quotes, backslash, newline and
   * bytes above 0x7f escaped. */
  assert_non_null(strstr(text, "{ name = \"EVIL\\034]] pwned = true --\\010\\092\\034; "
                               "pwned = true --\\195\\169\", sides"));
  lua_State *L = load_generated(text, len);
  check(L, "assert(pwned == nil, 'a name ran as code')\n"
           "local p = REC.protos[1]\n"
           "assert(p.name == 'gangway_game_1', p.name)\n"
           "assert(p.desc == 'gangway listener Game.1', p.desc)\n"
           "assert(#REC.protos == 1)\n"
           "assert(#REC.ports == 2 and REC.ports[1] == '1973=gangway_game_1' and\n"
           "       REC.ports[2] == '1974=gangway_game_1', table.concat(REC.ports, ' '))\n"
           "local want = { a = 'uint8', b = 'uint16', c = 'uint32', d = 'uint64', e = 'int8',\n"
           "  f = 'int16', g = 'int32', h = 'int64', x = 'float', y = 'double', s = 'string',\n"
           "  raw = 'bytes', count = 'uint16', items = 'none', ['items.id'] = 'uint32',\n"
           "  ['items.name'] = 'string', ['items.pair'] = 'none', ['items.pair.v'] = 'uint8',\n"
           "  tail = 'none', ['tail.v'] = 'uint8' }\n"
           "for k, ctor in pairs(want) do\n"
           "  local fl = REC.fields['gangway_game_1.ALL.' .. k]\n"
           "  assert(fl, 'no field ' .. k)\n"
           "  assert(fl.ctor == ctor, k .. ': ' .. fl.ctor)\n"
           "end\n"
           "assert(REC.fields['gangway_game_1.REST.data'].ctor == 'bytes')\n"
           "assert(REC.fields['gangway_game_1.name'].ctor == 'string')\n"
           "assert(REC.fields['gangway_game_1.opcode'].ctor == 'uint32')\n"
           /* The hostile names: exact as display names, tamed as filters. */
           "local evil\n"
           "for _, fl in ipairs(REC.fields) do\n"
           "  assert(fl.abbrev:match('^[%w_.-]+$'), 'not a filter name: ' .. fl.abbrev)\n"
           "  if fl.name == " "'t\"e\\nx]]t\\\\'" " then evil = fl end\n"
           "end\n"
           "assert(evil, 'the hostile field name did not come through whole')\n"
           "assert(evil.abbrev == 'gangway_game_1.EVIL____pwned___true_--_____pwned___true_--__.t_e_x__t_',\n"
           "       evil.abbrev)\n");
  lua_close(L);
  free(text);
}

/* A frame of every field type, read field by field. */
static void test_dissect_all(void **state) {
  (void)state;
  gw_framing f = top();
  static const uint16_t ports[] = {1973};
  gw_dissector_listener l = {"game", &f, &proto, ports, 1};
  size_t len;
  char *text = generate(&l, 1, &len);
  lua_State *L = load_generated(text, len);
  check(L, "local body = string.pack('>I1I2I4I8i1i2i4i8', 200, 60000, 4000000000, 2^40 + 5,\n"
           "  -3, -300, -70000, -(2^40)) .. string.pack('<fd', 1.5, -2.25) .. str('he said \"hi\"')\n"
           "  .. 'ABCD' .. string.pack('>I2', 2)\n"
           "  .. string.pack('>I4', 11) .. str('one') .. '\\1\\2'\n"
           "  .. string.pack('>I4', 12) .. str('') .. '\\3\\4' .. '\\9\\8\\7'\n"
           "local info = run(frame(7, body), true)\n"
           "assert(info == 'ALL', info)\n"
           "assert(#REC.experts == 0, REC.experts[1])\n"
           "local v = REC.items\n"
           "local function is(k, want)\n"
           "  local got = v['gangway_game.ALL.' .. k]\n"
           "  assert(got == want, k .. ': ' .. tostring(got))\n"
           "end\n"
           "assert(v['gangway_game.name'] == 'ALL' and v['gangway_game.side'] == 'client')\n"
           "assert(v['gangway_game.opcode'] == 7 and v['gangway_game.length'] == #body + 8)\n"
           "is('a', 200) is('b', 60000) is('c', 4000000000) is('d', 2^40 + 5) is('e', -3)\n"
           "is('f', -300) is('g', -70000) is('h', -(2^40)) is('x', 1.5) is('y', -2.25)\n"
           "is('s', 'he said \"hi\"') is('raw', 'ABCD') is('count', 2)\n"
           "local ids, names, vs, tails = {}, {}, {}, {}\n"
           "for _, it in ipairs(v) do\n"
           "  if it.abbrev == 'gangway_game.ALL.items.id' then ids[#ids + 1] = it.value end\n"
           "  if it.abbrev == 'gangway_game.ALL.items.name' then names[#names + 1] = it.value end\n"
           "  if it.abbrev == 'gangway_game.ALL.items.pair.v' then vs[#vs + 1] = it.value end\n"
           "  if it.abbrev == 'gangway_game.ALL.tail.v' then tails[#tails + 1] = it.value end\n"
           "end\n"
           "assert(table.concat(ids, ',') == '11,12', table.concat(ids, ','))\n"
           "assert(table.concat(names, ',') == 'one,', table.concat(names, ','))\n"
           "assert(table.concat(vs, ',') == '1,2,3,4', table.concat(vs, ','))\n"
           "assert(table.concat(tails, ',') == '9,8,7', table.concat(tails, ','))\n"
           /* The same opcode from the server is another packet. */
           "info = run(frame(7, '\\5xyz'), false)\n"
           "assert(info == 'REST', info)\n"
           "assert(REC.items['gangway_game.REST.data'] == 'xyz')\n");
  lua_close(L);
  free(text);
}

/* Optional fields absent, keep-alives, unknown opcodes, several frames in
 * one segment, frames that do not fit: expert info, never a Lua error. */
static void test_dissect_edges(void **state) {
  (void)state;
  gw_framing f = top();
  static const uint16_t ports[] = {1973, 1974};
  gw_dissector_listener l = {"game", &f, &proto, ports, 2};
  size_t len;
  char *text = generate(&l, 1, &len);
  lua_State *L = load_generated(text, len);
  check(L, "local info = run(frame(931, string.pack('>I2', 2)), false)\n"
           "assert(info == 'LOGIN', info)\n"
           "assert(REC.items['gangway_game.LOGIN.error'] == 2)\n"
           "assert(REC.items['gangway_game.LOGIN.player'] == nil, 'an absent optional field shown')\n"
           "assert(#REC.experts == 0)\n"
           "run(frame(931, string.pack('>I2I4', 0, 1001)), false)\n"
           "assert(REC.items['gangway_game.LOGIN.player'] == 1001)\n"
           /* keep-alive, unknown opcode, and LOGIN in one segment */
           "info = run('\\0\\2' .. frame(5555, 'zz') .. frame(931, '\\0\\0'), false)\n"
           "assert(info == 'KEEPALIVE, unknown opcode 5555, LOGIN', info)\n"
           "assert(REC.experts[1] == 'unknown opcode 5555', REC.experts[1])\n"
           "assert(REC.items['gangway_game.body'] == 'zz')\n"
           /* a string running past the frame */
           "info = run(frame(7, string.pack('>I1I2', 1, 2)), true)\n"
           "assert(info:find('^ALL %[does not fit: ALL.c: 4 byte%(s%) needed at offset 11'), info)\n"
           "assert(REC.experts[1]:find('ALL.c: 4 byte'), REC.experts[1])\n"
           /* an array count no frame can hold, an optional field cut short */
           "local b = string.pack('>I1I2I4I8i1i2i4i8', 0, 0, 0, 0, 0, 0, 0, 0) .. string.pack('<fd', 0, 0)\n"
           "  .. str('') .. 'ABCD' .. string.pack('>I2', 65535)\n"
           "info = run(frame(7, b), true)\n"
           "assert(#REC.experts == 1 and REC.experts[1]:find('items'), REC.experts[1])\n"
           "info = run(frame(931, '\\0\\0\\1'), false)\n"
           "assert(REC.experts[1]:find('LOGIN.player: 4 byte'), REC.experts[1])\n"
           /* a length field shorter than the header */
           "info = run('\\0\\1' .. frame(931, '\\0\\0'), false)\n"
           "assert(REC.experts[1]:find('shorter than its'), REC.experts[1])\n"
           "assert(info:find('LOGIN$'), info)\n"
           /* the hostile packet's string, from the client */
           "info = run(frame(9, str('x')), true)\n"
           "assert(#REC.experts == 0, REC.experts[1])\n"
           "assert(info:find('^EVIL\"%]%] pwned'), info)\n");
  lua_close(L);
  free(text);
}

/* A framing with a varint length, little-endian integers, NUL-terminated
 * strings and no keep-alive; two listeners in one file. */
static void test_other_framings(void **state) {
  (void)state;
  gw_framing top_f = top(), mysql;
  assert_int_equal(gw_framing_preset("mysql", &mysql), 0);
  static gw_pkt_field fields[] = {
    {.name = "n", .type = GW_PF_U16, .counts = -1},
    {.name = "s", .type = GW_PF_STR, .counts = -1},
  };
  static gw_packet_def defs[] = {
    {.name = "QUERY", .sides = {true, false}, .opcode = 3, .fields = fields, .nfields = 2},
  };
  gw_proto p = {.path = "x", .packets = defs, .npackets = 1};
  static const uint16_t db_ports[] = {3306, 3307}, game_ports[] = {1973};
  gw_dissector_listener l[] = {{"db", &mysql, &p, db_ports, 2}, {"game", &top_f, &proto, game_ports, 1}};
  size_t len;
  char *text = generate(l, 2, &len);
  lua_State *L = load_generated(text, len);
  /* mysql: u24 LE payload length, sequence id, then the command byte */
  check(L, "assert(#REC.protos == 2 and REC.protos[2].name == 'gangway_game')\n"
           "local body = string.pack('<I2', 513) .. 'select 1\\0'\n"
           "local pdu = string.pack('<I3', #body + 1) .. '\\0' .. '\\3' .. body\n"
           "local info = run(pdu, true)\n"
           "assert(info == 'QUERY', info)\n"
           "assert(#REC.experts == 0, REC.experts[1])\n"
           "assert(REC.items['gangway_db.QUERY.n'] == 513)\n"
           "assert(REC.items['gangway_db.QUERY.s'] == 'select 1')\n"
           "info = run(string.pack('<I3', 4) .. '\\0\\3\\1\\0x', true)\n"
           "assert(REC.experts[1]:find('no NUL%-terminated string'), REC.experts[1])\n");
  lua_close(L);
  free(text);

  /* varint: a length split over two bytes */
  gw_framing varint;
  assert_int_equal(gw_framing_preset("varint", &varint), 0);
  static gw_pkt_field vf[] = {{.name = "data", .type = GW_PF_REST, .counts = -1}};
  static gw_packet_def vdefs[] = {{.name = "BLOB", .sides = {true, true}, .keepalive = true,
                                   .fields = vf, .nfields = 1}};
  gw_proto vp = {.path = "x", .packets = vdefs, .npackets = 1};
  static const uint16_t mc_ports[] = {25565};
  gw_dissector_listener vl = {"mc", &varint, &vp, mc_ports, 1};
  text = generate(&vl, 1, &len);
  L = load_generated(text, len);
  check(L, "local data = string.rep('z', 200)\n"
           "local info = run('\\200\\1' .. data .. '\\1q', true)\n"
           "assert(info == 'BLOB, BLOB', info)\n"
           "assert(#REC.experts == 0, REC.experts[1])\n"
           "assert(REC.items[#REC.items].value == 'q')\n");
  lua_close(L);
  free(text);
}

/* What cannot be generated is an error, not a broken file. */
static void test_errors(void **state) {
  (void)state;
  gw_framing f = top(), raw;
  assert_int_equal(gw_framing_preset("raw", &raw), 0);
  char *text = (char *)1, err[256];
  size_t len = 1;
  static const uint16_t ports[] = {1, 2};
  gw_dissector_listener same[] = {{"Game", &f, &proto, ports, 2}, {"game", &f, &proto, ports, 2}};
  assert_int_equal(gw_dissector_generate(same, 2, &text, &len, err, sizeof err), -EINVAL);
  assert_null(text);
  assert_string_equal(err, "listeners \"Game\" and \"game\" would both be Wireshark's \"gangway_game\"");
  gw_dissector_listener unframed = {"plain", &raw, &proto, ports, 2};
  assert_int_equal(gw_dissector_generate(&unframed, 1, &text, &len, err, sizeof err), -EINVAL);
  assert_string_equal(err, "listener \"plain\": no framing, no frames to dissect");
}

/* 300 packets whose names only differ in characters a filter cannot hold:
 * their fields get "_2" ... "_300", each once (and the set of names grows
 * past its first size on the way). */
static void test_many_alike_names(void **state) {
  (void)state;
  enum { N = 300 };
  static gw_pkt_field one[] = {{.name = "f", .type = GW_PF_U8, .counts = -1}};
  static gw_packet_def many[N];
  static char names[N][8];
  for (int i = 0; i < N; i++) {
    /* "X" and a byte above 0x7f, or punctuation: all "X_" as a filter */
    snprintf(names[i], sizeof names[i], "X%c%c", 0x80 + i % 64, '!' + i / 64);
    many[i] = (gw_packet_def){.name = names[i], .sides = {true, false},
                              .opcode = (uint32_t)i, .fields = one, .nfields = 1};
  }
  gw_proto p = {.path = "packets.lua", .packets = many, .npackets = N};
  gw_framing f = top();
  static const uint16_t port[] = {1973};
  gw_dissector_listener l = {"game", &f, &p, port, 1};
  size_t len;
  char *text = generate(&l, 1, &len);
  lua_State *L = load_generated(text, len);
  check(L, "local seen, n = {}, 0\n"
           "for _, fl in ipairs(REC.fields) do\n"
           "  if fl.abbrev:match('^gangway_game%.X') then\n"
           "    assert(not seen[fl.abbrev], 'twice: ' .. fl.abbrev)\n"
           "    seen[fl.abbrev], n = true, n + 1\n"
           "  end\n"
           "end\n"
           "assert(n == 300, n)\n"
           "local first = 'gangway_game.X__.f'\n"
           "assert(seen[first], 'no ' .. first)\n"
           "for k = 2, 300 do assert(seen[first .. '_' .. k], 'no ' .. first .. '_' .. k) end\n");
  lua_close(L);
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fields_and_names),
      cmocka_unit_test(test_dissect_all),
      cmocka_unit_test(test_dissect_edges),
      cmocka_unit_test(test_other_framings),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_many_alike_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
