-- packet_spec.lua: the packet a handler gets: fields, typed readers and
-- writers at offsets from the frame's first byte, strings, unpack, set_body
-- with the length recomputed, copies, and its life ending with the call.
local testing = require "gangway.testing"
local top = testing.top

-- Runs `body` as a client handler for opcode 1 of a top listener, feeds it
-- `frame`, and returns the test host and session.
local function with_handler(body, frame, opts)
  opts = opts or {}
  opts.source = "local gw = require 'gangway'\n" ..
    "gw.on('client', " .. (opts.opcode or 1) .. ", function(pkt, session)\n" ..
    body .. "\nend)"
  local t = testing.new(opts)
  local s = t:connect()
  s:from_client(frame)
  return t, s
end

-- 00 0d 80 00 00 00 00 01 00 03 68 69 00: "hi" in CM_SAY, from the doc.
local HI = "\0\13\128\0\0\0\0\1\0\3hi\0"

describe("packet", function()
  it("builds the doc's test vector", function()
    assert.equal(HI, top.say("hi"))
  end)

  it("reads every integer type in the framing's byte order", function()
    local frame = top.frame(1, "\1\2\3\4\5\6\7\8\255\254\253\252\251\250\249\248")
    local t, s = with_handler([[
      local r = {}
      r[1] = pkt:u8(8) r[2] = pkt:u16(8) r[3] = pkt:u32(8) r[4] = pkt:u64(8)
      r[5] = pkt:i8(16) r[6] = pkt:i16(16) r[7] = pkt:i32(16) r[8] = pkt:i64(16)
      r[9] = pkt.opcode r[10] = pkt.side r[11] = #pkt r[12] = pkt.body_offset
      return gw.packet(2, gw.writer():str(table.concat(r, ",")))
    ]], frame)
    local out = s:to_server()[1]
    assert.equal(2, top.parse(out).opcode)
    assert.equal(table.concat({ 1, 0x0102, 0x01020304, 0x0102030405060708,
      -1, -2, -66052, -283686952306184, 1, "client", 24, 8 }, ","),
      top.parse(out):str(8))
    t:close()
  end)

  it("writes integers in place, and the edit is what passes", function()
    local t, s = with_handler([[
      pkt:set_u8(10, 0x41) pkt:set_u16(8, 3) pkt:set_i8(11, -1)
    ]], HI)
    assert.same({ "\0\13\128\0\0\0\0\1\0\3A\255\0" }, s:to_server())
    t:close()
  end)

  it("round-trips every writer through its reader", function()
    local frame = top.frame(1, string.rep("\0", 42))
    local t, s = with_handler([[
      pkt:set_u8(8, 250) pkt:set_u16(9, 65000) pkt:set_u32(11, 4000000000)
      pkt:set_u64(15, -2) pkt:set_i8(23, -100) pkt:set_i16(24, -30000)
      pkt:set_i32(26, -2000000000) pkt:set_i64(30, math.mininteger)
      pkt:set_f32(38, 1.5) pkt:set_f64(42, -0.25)
      assert(pkt:u8(8) == 250 and pkt:u16(9) == 65000 and pkt:u32(11) == 4000000000)
      assert(pkt:u64(15) == -2 and pkt:i8(23) == -100 and pkt:i16(24) == -30000)
      assert(pkt:i32(26) == -2000000000 and pkt:i64(30) == math.mininteger)
      assert(pkt:f32(38) == 1.5 and pkt:f64(42) == -0.25)
    ]], frame)
    local out = s:to_server()[1]
    assert.is_not_nil(out)
    assert.equal(0, t:stats().errors)
    -- top: integers big-endian, floats little-endian
    assert.equal("\250\253\232\238\107\40\0", out:sub(9, 15))
    assert.equal(string.pack("<f", 1.5), out:sub(39, 42))
    assert.equal(string.pack("<d", -0.25), out:sub(43, 50))
    t:close()
  end)

  it("reads and writes floats big-endian when asked", function()
    local frame = top.frame(1, string.pack(">f", 2.5) .. string.rep("\0", 4))
    local t, s = with_handler([[
      assert(pkt:f32(8, ">") == 2.5)
      pkt:set_f32(12, -3.0, ">")
    ]], frame)
    local out = s:to_server()[1]
    assert.equal(string.pack(">f", -3.0), out:sub(13, 16))
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("raises clear errors for out-of-range offsets and values", function()
    local cases = {
      { "pkt:u8(13)", "pkt:u8: offset 13 out of range (the frame is 13 bytes" },
      { "pkt:u16(12)", "pkt:u16: offset 12 out of range" },
      { "pkt:u32(-1)", "pkt:u32: offset -1 out of range" },
      { "pkt:set_u8(8, 256)", "pkt:set_u8: value 256 out of range 0..255" },
      { "pkt:set_i16(8, 40000)", "pkt:set_i16: value 40000 out of range -32768..32767" },
      { "pkt:set_u8(8, -1)", "value -1 out of range" },
      { "pkt:f32(8, 'x')", "byte order must be" },
      { "pkt:str(11)", "pkt:str: a 26880-byte string at offset 11 runs past the end" },
      { "pkt:str(12)", "pkt:str: offset 12 out of range" },
      { "pkt.nope = 1", "packet field nope cannot be set" },
      { "local x = pkt.nope", "packet has no field nope" },
      { "pkt:u8(1.5)", "number has no integer representation" },
    }
    for _, case in ipairs(cases) do
      local t, s = with_handler(case[1], HI)
      assert.is_true(t:logged(case[2], "error"), case[1] .. "\n" ..
        table.concat(t:logs(), "\n"))
      -- on_error = "pass": the frame still goes through
      assert.same({ HI }, s:to_server())
      t:close()
    end
  end)

  it("reads strings of the framing's type with the next offset", function()
    local frame = top.frame(1, top.writer():str("killt1"):str(""):str("a"):build())
    local t, s = with_handler([[
      local a, o1 = pkt:str(8)
      local b, o2 = pkt:str(o1)
      local c, o3 = pkt:str(o2)
      assert(a == "killt1" and b == "" and c == "a", a .. b .. c)
      assert(o1 == 17 and o2 == 20 and o3 == #pkt, o1 .. " " .. o2 .. " " .. o3)
    ]], frame)
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("unpacks like string.unpack, in the framing's order, offsets from 0", function()
    local frame = top.frame(1, "\0\1\0\0\0\2xyz")
    local t, s = with_handler([[
      local a, b, c, nxt = pkt:unpack("I2 I4 c3")
      assert(a == 1 and b == 2 and c == "xyz" and nxt == #pkt, tostring(nxt))
      local d, n2 = pkt:unpack("<I2", 8)
      assert(d == 256 and n2 == 10)
      local op = pkt:unpack("I2", 6)
      assert(op == 1)
    ]], frame)
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("returns bytes and body as strings", function()
    local t, s = with_handler([[
      assert(pkt:bytes() == ]] .. string.format("%q", HI) .. [[)
      assert(pkt:body() == "\0\3hi\0")
    ]], HI)
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("set_body rebuilds the frame with its length recomputed", function()
    local t, s = with_handler([[
      local text = pkt:str(8)
      pkt:set_body(gw.writer():str(text == "hi" and "hello" or text))
      assert(#pkt == 16 and pkt:u16(0) == 16 and pkt:str(8) == "hello")
      assert(pkt.opcode == 1 and pkt:u32(2) == 0x80000000)
    ]], HI)
    -- the doc: "hi" -> "hello" is 16 bytes and its length field reads 00 10
    assert.same({ "\0\16\128\0\0\0\0\1\0\6hello\0" }, s:to_server())
    assert.equal(1, t:stats().replaced)
    t:close()
  end)

  it("set_body keeps the header bytes, and takes a string too", function()
    local frame = "\0\13\18\52\86\120\0\1\0\3hi\0" -- session 0x12345678
    local t, s = with_handler([[
      pkt:set_body("")
      pkt:set_u8(2, 0x99)
    ]], frame)
    assert.same({ "\0\8\153\52\86\120\0\1" }, s:to_server())
    t:close()
  end)

  it("set_body refuses a frame the framing cannot carry, and the packet stays", function()
    local t, s = with_handler([[
      local ok, err = pcall(pkt.set_body, pkt, string.rep("x", 16 * 1024))
      assert(not ok and err:find("outside the top framing's limits for client frames"), err)
      assert(#pkt == 13 and pkt:str(8) == "hi")
    ]], HI)
    assert.equal(0, t:stats().errors)
    assert.same({ HI }, s:to_server())
    t:close()
  end)

  it("can change the opcode", function()
    local t, s = with_handler([[
      pkt.opcode = 77
      assert(pkt.opcode == 77)
      pkt:set_opcode(78)
    ]], HI)
    assert.equal(78, top.parse(s:to_server()[1]).opcode)
    t:close()
  end)

  it("expires when its handler returns; a copy does not", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      local kept, copy
      gw.on("client", 1, function(pkt) kept = pkt; copy = pkt:copy() end)
      gw.on("client", 2, function(pkt, session)
        local ok, err = pcall(function() return kept:u8(0) end)
        assert(not ok and err:find("packet used after its handler returned"), err)
        ok, err = pcall(function() return kept.opcode end)
        assert(not ok and err:find("packet used after its handler returned"))
        assert(tostring(kept) == "gangway.packet (expired)")
        assert(copy:str(8) == "hi" and copy.opcode == 1 and #copy == 13)
        copy:set_u8(10, 0x48)
        session:send_to_server(copy)
      end)
    ]] }
    local s = t:connect()
    s:from_client(HI)
    s:from_client(top.frame(2, ""))
    assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
    assert.same({ HI, top.frame(2, ""), "\0\13\128\0\0\0\0\1\0\3Hi\0" }, s:to_server())
    t:close()
  end)

  it("replaces the frame with a returned string or packet", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      local saved
      gw.on("client", 1, function(pkt) saved = pkt:copy(); return gw.packet(9, "abc") end)
      gw.on("client", 2, function(pkt) return saved end)
    ]] }
    local s = t:connect()
    s:from_client(HI)
    s:from_client(top.frame(2, ""))
    assert.same({ top.frame(9, "abc"), HI }, s:to_server())
    assert.equal(2, t:stats().replaced)
    t:close()
  end)

  it("refuses a replacement that is not exactly one frame", function()
    for _, bad in ipairs({ "'junk'", "gw.packet(2, '') .. gw.packet(3, '')",
                           "string.sub(gw.packet(2, 'abc'), 1, 9)", "42", "true" }) do
      local t, s = with_handler("return " .. bad, HI)
      assert.equal(1, t:stats().errors, bad)
      assert.is_true(t:logged("handler returned", "error"), bad)
      assert.same({ HI }, s:to_server()) -- on_error = "pass": the original
      t:close()
    end
  end)

  it("never passes a frame whose edits broke its framing", function()
    local t, s = with_handler("pkt:set_u16(0, 3)", HI)
    assert.same({}, s:to_server())
    assert.is_true(t:logged("handler edits broke the frame", "error"))
    assert.equal(1, t:stats().errors)
    t:close()
  end)

  it("does not copy the frame into Lua for field access", function()
    -- A 16 KiB frame read 1000 times: far less memory than one copy each.
    local body = string.rep("x", 16000)
    local t = testing.new{ memory = 2 * 1024 * 1024, source = [[
      local gw = require "gangway"
      gw.on("client", 1, function(pkt)
        for i = 1, 1000 do assert(pkt:u8(8 + i) == 120) end
      end)
    ]] }
    local s = t:connect()
    local frame = top.frame(1, body)
    for _ = 1, 50 do s:from_client(frame) end
    assert.equal(50, #s:to_server())
    assert.equal(0, t:stats().errors)
    t:close()
  end)
end)

describe("gw.writer and gw.packet", function()
  it("builds bodies of the framing's types", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      gw.on("client", 1, function(pkt, session)
        local w = gw.writer():u8(1):u16(2):u32(3):u64(4):i8(-1):i16(-2):i32(-3):i64(-4)
          :f32(0.5):f64(0.25):str("a"):bytes("zz")
        assert(#w == 1+2+4+8+1+2+4+8+4+8+4+2)
        assert(w:build() == w:tostring())
        return w:packet(3)
      end)
    ]] }
    local s = t:connect()
    s:from_client(HI)
    local want = top.frame(3, string.pack(">I1I2I4I8i1i2i4i8", 1, 2, 3, 4, -1, -2, -3, -4)
      .. string.pack("<fd", 0.5, 0.25) .. "\0\2a\0zz")
    assert.same({ want }, s:to_server())
    t:close()
  end)

  it("writes top strings as u16 length counting the NUL", function()
    assert.equal("\0\2a\0", top.writer():str("a"):build())
    assert.equal("\0\1\0", top.writer():str(""):build())
  end)

  it("builds frames with the listener's header template", function()
    assert.equal("\0\8\128\0\0\0\1\245", top.frame(501, ""))
    assert.equal("\0\11\128\0\0\0\0\1abc", top.frame(1, "abc"))
  end)

  it("raises for values that do not fit", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      local ok, err = pcall(function() return gw.writer():u8(256) end)
      assert(not ok and err:find("writer:u8: value 256 out of range 0..255"), err)
      ok, err = pcall(gw.packet, 70000, "")
      assert(not ok and err:find("out of range"), err)
      ok, err = pcall(gw.packet, 1, string.rep("x", 70000))
      assert(not ok and err:find("outside the top framing's limits"), err)
      ok, err = pcall(function() return gw.writer():str(string.rep("x", 65535)) end)
      assert(not ok and err:find("does not fit a 2%-byte length"), err)
      ok, err = pcall(gw.packet, nil, "")
      assert(not ok and err:find("an opcode is needed"), err)
    ]] }
    assert.equal(0, t:stats().errors)
    t:close()
  end)
end)
