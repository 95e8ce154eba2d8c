-- framing_spec.lua: packets follow their listener's framing: byte order of
-- pkt:u16 and writers, the string type of pkt:str and writer:str, the
-- length field set_body recomputes, and what gw.packet builds.
local testing = require "gangway.testing"

-- Runs source (with gw) on a listener of framing, feeds frame from the
-- client, returns what reached the server.
local function through(framing, source, frame)
  local t = testing.inline(source, { framing = framing })
  local s = t:connect()
  s:from_client(frame)
  local out = s:to_server()
  assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
  t:close()
  return out
end

describe("framings", function()
  it("u32le: little-endian integers and length", function()
    local frame = string.pack("<I4I2", 2, 0x1234) -- the length counts what follows it
    local out = through("u32le", [[
      gw.on("client", "*", function(pkt)
        assert(pkt:u16(4) == 0x1234 and pkt:u32(0) == 2 and pkt.opcode == nil)
        assert(pkt.body_offset == 4)
        pkt:set_body(gw.writer():u16(0xabcd):str("hi"))
      end)
    ]], frame)
    -- u32le strings: u16 length, no NUL
    assert.same({ string.pack("<I4I2I2", 6, 0xabcd, 2) .. "hi" }, out)
  end)

  it("mysql: u24 LE length, one-byte opcode, NUL-terminated strings", function()
    -- COM_QUERY "select 1": length 9, sequence 0, 0x03, query
    local frame = "\9\0\0\0\3select 1"
    local out = through("mysql", [[
      gw.on("client", 3, function(pkt)
        local q = pkt:body()
        assert(q == "select 1", q)
        pkt:set_body("select 2 -- rewritten")
        assert(pkt.opcode == 3)
      end)
    ]], frame)
    assert.same({ "\22\0\0\0\3select 2 -- rewritten" }, out)
    local w = testing.core.writer("mysql"):str("ab"):build()
    assert.equal("ab\0", w)
  end)

  it("varint: the length field grows with the frame", function()
    local out = through("varint", [[
      gw.on("client", "*", function(pkt)
        assert(#pkt == 4 and pkt.body_offset == 1)
        pkt:set_body(string.rep("x", 200))
        assert(pkt.body_offset == 2 and #pkt == 202)
      end)
    ]], "\3abc")
    assert.same({ "\200\1" .. string.rep("x", 200) }, out)
  end)

  it("u16be: a custom framing table", function()
    local framing = { preset = "u16be", opcode_offset = 2, opcode_size = 1 }
    local out = through(framing, [[
      gw.on("client", 7, function(pkt)
        return gw.packet(8, "zz")
      end)
    ]], "\0\2\7a")
    assert.same({ "\0\3\8zz" }, out)
  end)

  it("raw: chunks as they come, to '*' handlers", function()
    local out = through("raw", [[
      gw.on("client", "*", function(pkt)
        pkt:set_body(pkt:bytes():upper())
      end)
    ]], "hello")
    assert.same({ "HELLO" }, out)
  end)
end)
