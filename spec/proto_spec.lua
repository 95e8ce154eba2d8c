-- proto_spec.lua: packets by name (docs/protocols.md). The shipped Tales of
-- Pirates definitions decode and encode the byte vectors of
-- shared/protocols/tales-of-pirates.md and docs/demo.md; a test protocol
-- (spec/fixtures/proto_test) covers every field type, arrays, optional
-- fields and the errors; names work in gw.on and gw.packet; a bad
-- packets.lua fails a reload and keeps the old generation.
local testing = require "gangway.testing"
local top = testing.top

local function unhex(s)
  return (s:gsub("%s", ""):gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

local function hex(s)
  return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local FIXTURE = "spec/fixtures/proto_test"

-- A host whose listener speaks the test protocol (no init.lua: no module).
local function fixture_host(opts)
  local o = { protocol = FIXTURE }
  for k, v in pairs(opts or {}) do o[k] = v end
  return testing.new(o)
end

local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

-- Frames of the shipped definitions, as the docs and the demo programs
-- have them, with what they decode to.
local vectors = {
  { "CM_SAY", "client", "00 0d 80 00 00 00 00 01 00 03 68 69 00", { text = "hi" } },
  { "CM_LOGIN", "client", [[00 30 80 00 00 00 01 af 00 05 62 6f 74 31 00 00 07 73 65 63 72
      65 74 00 00 12 30 30 2d 30 30 2d 30 30 2d 30 30 2d 30 30 2d 30 30 00 00 88 03 8f]],
    { account = "bot1", password = "secret", mac = "00-00-00-00-00-00", version = 136,
      marker = 911 } },
  { "MC_LOGIN", "server", "00 0e 80 00 00 00 03 a3 00 00 00 00 03 e9",
    { error = 0, player = 1001 } },
  { "MC_SAY", "server", [[00 18 80 00 00 00 01 f5 00 00 03 e9 00 05 62 6f 74 31 00 00 03
      68 69 00]], { speaker = 1001, name = "bot1", text = "hi" } },
  { "CM_BEGINACTION", "client", "00 15 80 00 00 00 00 06 00 00 03 e9 01 00 00 08 99 00 00 0a be",
    { world = 1001, action = 1, data = unhex("00 00 08 99 00 00 0a be") } },
  { "KEEPALIVE", "client", "00 02", {} },
  { "KEEPALIVE", "server", "00 02", {} },
}

-- The packets whose body is opaque bytes, by opcode.
local opaque = {
  CM_PING = { "client", 15 }, CM_CHECK_PING = { "client", 17 }, CM_LOGOUT = { "client", 432 },
  CM_BGNPLAY = { "client", 433 }, MC_MAPCRASH = { "server", 503 }, MC_PING = { "server", 515 },
  MC_ENTERMAP = { "server", 516 }, MC_CHECK_PING = { "server", 537 },
  CP_PING = { "client", 6020 }, CP_SAY2ALL = { "client", 6402 },
  PC_PING = { "server", 5020 }, PC_SAY2ALL = { "server", 5402 },
}

describe("packet definitions of top", function()
  local t
  before_each(function() t = testing.new{ protocol = "top" } end)
  after_each(function() t:close() end)

  it("decode and encode the documented byte vectors", function()
    for _, v in ipairs(vectors) do
      local name, side, frame, fields = v[1], v[2], unhex(v[3]), v[4]
      local p = t:parse(frame, side)
      assert.equal(name, p.name)
      assert.same(fields, p:decode())
      assert.equal(hex(frame), hex(t:frame(name, fields)))
      if name ~= "KEEPALIVE" then
        p:encode(fields)
        assert.equal(hex(frame), hex(p:bytes()))
      end
    end
  end)

  it("cover every packet of packets.lua", function()
    local defs = assert(loadfile("protocols/top/packets.lua", "t", {}))()
    local samples = {
      MC_CHAPSTR = { "server", { chap = "[11-26 07:25:00:000]" } },
    }
    for _, v in ipairs(vectors) do samples[v[1]] = { v[2], v[4] } end
    for name, o in pairs(opaque) do samples[name] = { o[1], { data = "\1\2\3" } } end
    for name, def in pairs(defs) do
      local s = samples[name]
      assert(s, "no sample for " .. name)
      local frame = t:frame(name, s[2])
      local p = t:parse(frame, s[1])
      assert.equal(name, p.name)
      assert.same(s[2], p:decode())
      if def.opcode then assert.equal(def.opcode, p.opcode) end
    end
    -- the chap string as topd sends it
    assert.equal("00 1f 80 00 00 00 03 ac 00 15" .. " 5b 31 31 2d 32 36 20 30 37 3a 32 35 3a 30"
                 .. " 30 3a 30 30 30 5d 00",
                 hex(t:frame("MC_CHAPSTR", samples.MC_CHAPSTR[2])):gsub("..", " %0"):sub(2))
  end)

  it("leave unknown opcodes unnamed, and say so when asked to decode them", function()
    local frame = unhex("00 28 80 00 00 00 05 ea 00 07 6b 69 6c 6c 74 31 00 00 06 4c 6f 63 61 6c 00"
                        .. "00 02 61 00 00 00 00 00 00 00 00 00 00 00 00 00")
    local p = t:parse(frame, "server")
    assert.equal(1514, p.opcode)
    assert.is_nil(p.name)
    assert.matches("pkt:decode: server opcode 1514 is not in .*packets.lua", err_of(p.decode, p))
    -- CM_SAY's opcode from the server is not CM_SAY
    assert.is_nil(t:parse(top.say("x"), "server").name)
  end)

  it("rewrite one field with pkt:encode, the length computed (hi -> hello: 00 10)", function()
    local p = t:parse(unhex("00 0d 80 00 00 00 00 01 00 03 68 69 00"), "client")
    p:encode{ text = "hello" }
    assert.equal("001080000000000100066865 6c6c6f00", hex(p:bytes()):sub(1, 24) .. " " .. hex(p:bytes()):sub(25))
    local m = t:parse(unhex("00 18 80 00 00 00 01 f5 00 00 03 e9 00 05 62 6f 74 31 00 00 03 68 69 00"))
    m:encode{ name = "[gm]" }
    assert.same({ speaker = 1001, name = "[gm]", text = "hi" }, m:decode())
  end)
end)

describe("decoding", function()
  local t
  before_each(function() t = fixture_host() end)
  after_each(function() t:close() end)

  local function all_body()
    return top.writer():u8(250):u16(65000):u32(4000000000):u64(-1):i8(-2):i16(-300)
      :i32(-70000):i64(-5):f32(1.5):f64(-2.25):str("s"):bytes("xyz"):build()
  end

  it("reads every field type", function()
    local frame = top.frame(100, all_body())
    assert.equal(frame, t:frame("ALL", { a = 250, b = 65000, c = 4000000000, d = -1, e = -2,
      f = -300, g = -70000, h = -5, x = 1.5, y = -2.25, s = "s", raw = "xyz" }))
    assert.same({ a = 250, b = 65000, c = 4000000000, d = -1, e = -2, f = -300, g = -70000,
      h = -5, x = 1.5, y = -2.25, s = "s", raw = "xyz" }, t:parse(frame, "client"):decode())
  end)

  it("names the field, its type and offset when a frame is too short for it", function()
    local body = all_body()
    -- field: where it starts in the body; cut inside it
    local cuts = {
      { "a", "u8", 0 }, { "b", "u16", 1 }, { "c", "u32", 3 }, { "d", "u64", 7 },
      { "e", "i8", 15 }, { "f", "i16", 16 }, { "g", "i32", 18 }, { "h", "i64", 22 },
      { "x", "f32", 30 }, { "y", "f64", 34 }, { "s", "str", 42 }, { "raw", "bytes(N)", 46 },
    }
    for _, c in ipairs(cuts) do
      local frame = top.frame(100, body:sub(1, c[3] + ((c[2] == "u8" or c[2] == "i8") and 0 or 1)))
      local p = t:parse(frame, "client")
      assert.equal(("pkt:decode: ALL: field %s (%s at offset %d) runs past the end of the %d-byte frame")
                   :format(c[1], c[2], 8 + c[3], #frame), err_of(p.decode, p):match("pkt:decode.*"))
    end
    -- a string whose length runs past the frame
    local p = t:parse(top.frame(100, body:sub(1, 42) .. "\0\9ab"), "client")
    assert.matches("field s %(str at offset 50%) of 9 bytes runs past the end of the 54%-byte frame",
                   err_of(p.decode, p))
  end)

  it("reads arrays with a count field, a fixed count and \"*\"", function()
    local w = top.writer():u16(2)
      :u32(7):str("sword"):u8(1):u8(2)
      :u32(8):str("shield"):u8(3):u8(4)
      :bytes("zz")
    local frame = top.frame(200, w)
    local want = { count = 2, rest = "zz", items = {
      { id = 7, name = "sword", tags = { { tag = 1 }, { tag = 2 } } },
      { id = 8, name = "shield", tags = { { tag = 3 }, { tag = 4 } } },
    } }
    local p = t:parse(frame)
    assert.same(want, p:decode())
    assert.equal(frame, t:frame("ITEMS", want))
    -- the count is computed from the array, whatever the table says
    table.insert(want.items, { id = 9, name = "bow", tags = { { tag = 5 }, { tag = 6 } } })
    p:encode(want)
    local d = p:decode()
    assert.equal(3, d.count)
    assert.equal("bow", d.items[3].name)
    assert.equal("zz", d.rest)
    -- "*": elements until the body ends
    local pairs_frame = top.frame(201, top.writer():u8(1):i16(-1):str("a"):i16(2):str("b"))
    assert.same({ kind = 1, pairs = { { a = -1, b = "a" }, { a = 2, b = "b" } } },
                t:parse(pairs_frame):decode())
    assert.same({ kind = 1, pairs = {} }, t:parse(top.frame(201, "\1")):decode())
    -- a count larger than the frame can hold, and a "*" element cut short
    local big = t:parse(top.frame(200, top.writer():u16(1000):u32(1)))
    assert.matches("field items %(array at offset 10%): 1000 elements of at least 8 bytes run past "
                   .. "the end of the 14%-byte frame", err_of(big.decode, big))
    local cut = t:parse(top.frame(201, top.writer():u8(1):i16(-1):str("a"):i16(2)))
    assert.matches("field pairs%[2%]%.b %(str at offset 17%) runs past the end of the 17%-byte frame",
                   err_of(cut.decode, cut))
    local inner = t:parse(top.frame(200, top.writer():u16(1):u32(7):str("x"):u8(1)))
    assert.matches("field items%[1%]%.tags %(array at offset 18%): 2 elements of at least 1 byte run past the end of the 19%-byte frame",
                   err_of(inner.decode, inner))
  end)

  it("leaves optional trailing fields nil, and writes them when given", function()
    assert.same({ a = 1 }, t:parse(top.frame(300, "\0\1")):decode())
    assert.same({ a = 1, b = 2 }, t:parse(top.frame(300, "\0\1\0\0\0\2")):decode())
    assert.equal(top.frame(300, "\0\1"), t:frame("OPT", { a = 1 }))
    assert.equal(top.frame(300, top.writer():u16(1):u32(2):str("c")), t:frame("OPT", { a = 1, b = 2, c = "c" }))
    assert.matches("gw.packet: OPT: field c: set, but the optional field b before it is not",
                   err_of(t.frame, t, "OPT", { a = 1, c = "x" }))
    -- half an optional field is a misfit, not a missing field
    local p = t:parse(top.frame(300, "\0\1\0\0"))
    assert.matches("field b %(u32 at offset 10%) runs past the end", err_of(p.decode, p))
    -- MC_LOGIN's player is there only when error is 0
    local top_host = testing.new{ protocol = "top" }
    assert.same({ error = 2 }, top_host:parse(top.frame(931, "\0\2")):decode())
    top_host:close()
  end)

  it("keeps the bytes after the last field (a field a patch added)", function()
    local frame = top.frame(300, top.writer():u16(1):u32(2):str("c"):bytes("NEW"))
    local p = t:parse(frame)
    assert.same({ a = 1, b = 2, c = "c" }, p:decode())
    p:encode{ c = "longer" }
    assert.equal(top.frame(300, top.writer():u16(1):u32(2):str("longer"):bytes("NEW")), p:bytes())
  end)
end)

describe("encoding errors", function()
  local t
  before_each(function() t = fixture_host() end)
  after_each(function() t:close() end)

  it("name the packet and the field, and leave the packet as it was", function()
    local frame = top.frame(300, top.writer():u16(1):u32(2):str("c"))
    local p = t:parse(frame)
    for _, c in ipairs({
      { { a = "x" }, "pkt:encode: OPT: field a: expected an integer (u16), got string" },
      { { a = 1.5 }, "pkt:encode: OPT: field a: expected an integer (u16), got a float" },
      { { a = 65536 }, "pkt:encode: OPT: field a: 65536 is out of range for u16 (0..65535)" },
      { { a = -1 }, "pkt:encode: OPT: field a: -1 is out of range for u16 (0..65535)" },
      { { c = 5 }, "pkt:encode: OPT: field c: expected a string (str), got number" },
    }) do
      assert.equal(c[2], err_of(p.encode, p, c[1]):match("pkt:encode.*"))
      assert.equal(frame, p:bytes())
    end
    assert.matches("gw.packet: ALL: field raw: bytes%(3%) needs exactly 3 bytes, got 2",
                   err_of(t.frame, t, "ALL", { a = 1, b = 1, c = 1, d = 1, e = 1, f = 1, g = 1,
                                               h = 1, x = 1, y = 1, s = "", raw = "ab" }))
    assert.matches("gw.packet: ALL: field b: missing %(u16, required%)",
                   err_of(t.frame, t, "ALL", { a = 1 }))
    assert.matches("gw.packet: ALL: field e: %-129 is out of range for i8 %(%-128..127%)",
                   err_of(t.frame, t, "ALL", { a = 1, b = 1, c = 1, d = 1, e = -129 }))
    assert.matches("gw.packet: ITEMS: field items%[1%]%.tags: the array needs exactly 2 elements, got 1",
                   err_of(t.frame, t, "ITEMS", { items = { { id = 1, name = "a", tags = { { tag = 1 } } } }, rest = "" }))
    assert.matches("gw.packet: ITEMS: field items%[1%]%.name: missing",
                   err_of(t.frame, t, "ITEMS", { items = { { id = 1 } }, rest = "" }))
    assert.matches('gw.packet: no packet "OTP" %(did you mean "OPT"%?%)', err_of(t.frame, t, "OTP", {}))
  end)
end)

describe("names in scripts", function()
  it("register handlers by name, in lists with opcodes, checked at load", function()
    local t = testing.inline([[
      gw.on("client", { "CM_SAY", 431 }, function(pkt, session)
        session:send_to_client(gw.packet("MC_SAY", { speaker = 0, name = pkt.name, text = "seen" }))
      end)
    ]], { protocol = "top" })
    assert.is_true(t:want("client", 1))
    assert.is_true(t:want("client", 431))
    assert.is_false(t:want("client", 432))
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.server_say(0, "CM_SAY", "seen") }, s:to_client())
    t:close()
    for _, case in ipairs({
      { [[gw.on("client", "CM_SAYY", print)]], 'inline1.lua:2: gw.on: no packet "CM_SAYY" (did you mean "CM_SAY"?)' },
      { [[gw.on("server", "CM_SAY", print)]], "inline1.lua:2: gw.on: CM_SAY is sent by the client, not the server" },
      { [[gw.on("client", { 1, "NOPE_AT_ALL" }, print)]], 'gw.on: no packet "NOPE_AT_ALL" in ' },
    }) do
      local h, err = testing.try{ protocol = "top", source = "local gw = require 'gangway'\n" .. case[1] }
      assert.is_nil(h)
      assert.matches(case[2], err, 1, true)
    end
    local h, err = testing.try{ source = "local gw = require 'gangway'\ngw.on('client', 'CM_SAY', print)" }
    assert.is_nil(h)
    assert.matches('gw.on: opcodes are integers, or packet names with a protocol', err, 1, true)
  end)

  it("decode and encode the handled frame in place, and raise only to the handler", function()
    local t = testing.inline([[
      gw.on("client", "CM_SAY", function(pkt)
        local say = pkt:decode()
        pkt:encode{ text = say.text:upper() }
      end)
      gw.on("server", "MC_SAY", function(pkt) pkt:decode() end)
    ]], { protocol = "top" })
    local s = t:connect()
    s:from_client(top.say("hi"))
    assert.equal(hex(unhex("00 0d 80 00 00 00 00 01 00 03 48 49 00")), hex(s:to_server()[1]))
    -- a frame that does not fit: the handler fails, the frame passes (on_error
    -- = "pass"), the session goes on
    local short = top.frame(501, "\0\0\0\1\0\9ab")
    s:from_server(short)
    assert.same({ short }, s:to_client())
    assert.is_true(t:logged("pkt:decode: MC_SAY: field name (str at offset 12) of 9 bytes runs past "
                            .. "the end of the 16-byte frame", "error"))
    s:from_client(top.say("ok"))
    assert.equal(top.say("OK"), s:to_server()[1])
    assert.is_nil(s:closed())
    t:close()
  end)

  it("build frames by name with gw.packet, opcodes still working; copies keep their names", function()
    local t = testing.inline([[
      gw.on("client", "CM_SAY", function(pkt, session)
        if not session.state.first then session.state.first = pkt:copy() return gw.DROP end
        local first = session.state.first
        local a = gw.packet("MC_SAY", { speaker = 0, name = "[proxy]", text = first:decode().text })
        local b = gw.packet(501, gw.writer():u32(0):str("[proxy]"):str(first:decode().text))
        assert(a == b)
        session:send_to_client(a)
        first:encode{ text = "again" }
        session:send_to_server(first)
        session:send_to_server(gw.packet("KEEPALIVE"))
        return gw.DROP
      end)
    ]], { protocol = "top" })
    local s = t:connect()
    s:from_client(top.say("one"))
    s:from_client(top.say("two"))
    assert.same({ top.server_say(0, "[proxy]", "one") }, s:to_client())
    assert.same({ top.say("again"), "\0\2" }, s:to_server())
    t:close()
  end)

  it("give keep-alives a name and a handler of their own", function()
    local t = testing.inline([[
      gw.on("server", "KEEPALIVE", function(pkt, session)
        session.state.seen = (session.state.seen or 0) + 1
        assert(pkt.name == "KEEPALIVE" and pkt.opcode == nil)
        session:send_to_server(gw.packet("KEEPALIVE")) -- answer it here
        return gw.DROP
      end)
    ]], { protocol = "top" })
    assert.is_true(t:want("server"))
    assert.is_false(t:want("client"))
    assert.is_false(t:want("server", 501))
    local s = t:connect()
    s:from_server("\0\2")
    assert.same({}, s:to_client())
    assert.same({ "\0\2" }, s:to_server())
    s:from_client("\0\2")
    assert.same({ "\0\2" }, s:to_server())
    t:close()
  end)
end)

describe("a bad packets.lua", function()
  it("fails the load or reload with its message and keeps the old generation", function()
    local dir = testing.core.mkdtemp()
    local function write(text)
      local f = assert(io.open(dir .. "/packets.lua", "wb"))
      f:write(text)
      f:close()
    end
    write('return { CM_SAY = { side = "client", opcode = 1, "str text" } }')
    local t = testing.inline([[
      gw.on("client", "CM_SAY", function(pkt) pkt:encode{ text = "v1" } end)
    ]], { protocol = dir })
    local s = t:connect()
    write('return { CM_SAY = { side = "client", opcode = 1, "string text" } }')
    local ok, err = t:reload()
    assert.is_nil(ok)
    assert.equal(dir .. '/packets.lua: CM_SAY[1]: unknown type "string" (expected u8 u16 u32 u64 '
                 .. 'i8 i16 i32 i64 f32 f64 str bytes(N) bytes)', err)
    s:from_client(top.say("x"))
    assert.same({ top.say("v1") }, s:to_server())
    write('return { CM_SAY = { side = "client", opcode = 1, "str text", "u8 extra?" } }')
    assert.is_true(t:reload())
    s:from_client(top.say("y"))
    assert.same({ top.say("v1") }, s:to_server())
    write('return { CM_SAY = { side = "client", opcod = 1 } }')
    local h, err2 = testing.try{ protocol = dir }
    assert.is_nil(h)
    assert.matches('CM_SAY: unknown key "opcod" in a packet (did you mean "opcode"?)', err2, 1, true)
    t:close()
    os.remove(dir .. "/packets.lua")
    testing.core.rmdir(dir)
  end)
end)
