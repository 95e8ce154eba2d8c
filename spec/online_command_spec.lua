-- online_command_spec.lua: scripts/online_command.lua answers /online from
-- the proxy with an MC_SAY to that client only; the server never sees it.
local testing = require "gangway.testing"
local top = testing.top

describe("online_command.lua", function()
  local t
  before_each(function()
    t = testing.new{ scripts = { "scripts/online_command.lua" } }
  end)
  after_each(function() t:close() end)

  local function said(frame)
    local pkt = top.parse(frame, "server")
    assert.equal(501, pkt.opcode)
    local id = pkt:u32(8)
    local name, off = pkt:str(12)
    local text, fin = pkt:str(off)
    assert.equal(#pkt, fin)
    return id, name, text
  end

  it("answers the player who asked, and only them", function()
    local a = t:connect("10.0.0.1:1000")
    local b = t:connect("10.0.0.2:1000")
    local c = t:connect("10.0.0.3:1000")
    b:from_client(top.say("/online"))
    assert.same({}, b:to_server())
    local out = b:to_client()
    assert.equal(1, #out)
    local id, name, text = said(out[1])
    assert.equal(0, id)
    assert.equal("[proxy]", name)
    assert.equal("3 players online", text)
    assert.same({}, a:to_client())
    assert.same({}, c:to_client())
  end)

  it("counts sessions as they come and go", function()
    local a = t:connect()
    a:from_client(top.say("/online"))
    assert.equal("1 player online", select(3, said(a:to_client()[1])))
    local b = t:connect()
    b:close()
    local c = t:connect()
    a:from_client(top.say("  /online "))
    assert.equal("2 players online", select(3, said(a:to_client()[1])))
    c:close()
  end)

  it("leaves other chat alone", function()
    local a = t:connect()
    a:from_client(top.say("/online please"))
    assert.same({ top.say("/online please") }, a:to_server())
    assert.same({}, a:to_client())
  end)

  it("orders the answer after frames already on their way", function()
    local a = t:connect()
    a:from_server(top.server_say(9, "npc", "welcome"))
    a:from_client(top.say("/online"))
    local out = a:to_client()
    assert.equal(2, #out)
    assert.equal("welcome", select(3, said(out[1])))
    assert.equal("1 player online", select(3, said(out[2])))
  end)
end)
