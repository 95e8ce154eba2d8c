-- online_command_spec.lua: scripts/online_command.lua answers /online from
-- the proxy (through the top protocol module's commands) with an MC_SAY to
-- that client only; the server never sees the command. It counts players:
-- sessions whose login the server accepted.
local testing = require "gangway.testing"
local top = testing.top

describe("online_command.lua", function()
  local t
  before_each(function()
    t = testing.new{ protocol = "top", scripts = { "scripts/online_command.lua" } }
  end)
  after_each(function() t:close() end)

  -- A session whose login the server accepted, as player `name`.
  local id = 1000
  local function player(name)
    local s = t:connect()
    s:from_client(t:frame("CM_LOGIN", { account = name, password = "secret", mac = "00",
                                         version = 136, marker = 911 }))
    id = id + 1
    s:from_server(t:frame("MC_LOGIN", { error = 0, player = id }))
    assert.equal(1, #s:to_server())
    assert.equal(1, #s:to_client())
    return s
  end

  local function said(frame)
    local pkt = t:parse(frame, "server")
    assert.equal("MC_SAY", pkt.name)
    local say = pkt:decode()
    return say.speaker, say.name, say.text
  end

  it("answers the player who asked, and only them", function()
    local a, b, c = player("ann"), player("bob"), player("cid")
    b:from_client(top.say("/online"))
    assert.same({}, b:to_server())
    local out = b:to_client()
    assert.equal(1, #out)
    local speaker, name, text = said(out[1])
    assert.equal(0, speaker)
    assert.equal("[proxy]", name)
    assert.equal("3 players online", text)
    assert.same({}, a:to_client())
    assert.same({}, c:to_client())
  end)

  it("counts players as they log in and leave, not bare connections", function()
    local a = player("ann")
    t:connect() -- connected, never logged in
    a:from_client(top.say("/online"))
    assert.equal("1 player online", select(3, said(a:to_client()[1])))
    local b = player("bob")
    player("cid"):close()
    a:from_client(top.say("/online "))
    assert.equal("2 players online", select(3, said(a:to_client()[1])))
    b:close()
  end)

  it("leaves other chat alone", function()
    local a = player("ann")
    a:from_client(top.say("/online please"))  -- a command with arguments still is /online
    assert.equal(1, #a:to_client())
    a:from_client(top.say("who is /online"))
    assert.same({ top.say("who is /online") }, a:to_server())
    a:from_client(top.say("/onlinex"))
    assert.same({ top.say("/onlinex") }, a:to_server())
    assert.same({}, a:to_client())
  end)

  it("orders the answer after frames already on their way", function()
    local a = player("ann")
    a:from_server(top.server_say(9, "npc", "welcome"))
    a:from_client(top.say("/online"))
    local out = a:to_client()
    assert.equal(2, #out)
    assert.equal("welcome", select(3, said(out[1])))
    assert.equal("1 player online", select(3, said(out[2])))
  end)
end)
