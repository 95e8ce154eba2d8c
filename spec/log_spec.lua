-- log_spec.lua: what scripts log: gw.log with a table becomes one event
-- with fields (JSON fields in log.format = "json"), gw.hex and pkt:hex
-- make hex in C.
local testing = require "gangway.testing"

describe("gw.log with a table", function()
  it("logs one event whose fields are the table's", function()
    local t = testing.inline([[
      gw.on("client", "*", function(pkt, session)
        gw.log.info{ event = "ban", player = "bob", count = 3, ratio = 0.5, vip = false,
                     where = { 1 } }
      end)
    ]], { framing = "u16be" })
    local s = t:connect()
    s:from_client("\0\1x")
    local line = t:logs("info")[#t:logs("info")]
    -- text: the script's name, then key=value pairs (in the table's order)
    assert.matches("inline1.lua:", line, 1, true)
    assert.matches("player=bob", line, 1, true)
    assert.matches("count=3", line, 1, true)
    assert.matches("ratio=0.5", line, 1, true)
    assert.matches("vip=false", line, 1, true)
    assert.matches('where="table: ', line, 1, true)
    assert.not_matches("event=", line, 1, true)
    t:close()
  end)

  it("keeps plain lines as they were", function()
    local t = testing.inline([[ gw.on("client", "*", function() gw.log.warn("plain", 1) end) ]],
                             { framing = "u16be" })
    local s = t:connect()
    s:from_client("\0\1x")
    assert.is_true(t:logged("inline1.lua: plain 1", "warn"))
    t:close()
  end)
end)

describe("hex", function()
  it("gw.hex and pkt:hex", function()
    local t = testing.inline([[
      gw.on("client", "*", function(pkt)
        assert(gw.hex("\0\1\255ab") == "0001ff6162")
        assert(gw.hex("") == "")
        assert(pkt:hex() == "000378697a", pkt:hex())
      end)
    ]], { framing = "u16be" })
    local s = t:connect()
    s:from_client("\0\3xiz")
    assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
    t:close()
  end)
end)
