-- testing_spec.lua: the test harness itself: a real config file and one of
-- its listeners, bad configs, the simulated clock, closing.
local testing = require "gangway.testing"
local top = testing.top

describe("gangway.testing", function()
  it("runs a listener of a real config file", function()
    local t = testing.new{ config = "spec/fixtures/config.lua", listener = "game" }
    local s = t:connect()
    s:from_client(top.say("noob") .. top.say("/online"))
    assert.same({ top.say("new friend") }, s:to_server())
    assert.equal(1, #s:to_client())
    assert.is_false(t:want("client", 6)) -- speed_limit is the other listener's
    t:close()
    local w = testing.new{ config = "spec/fixtures/config.lua", listener = "world" }
    assert.is_true(w:want("client", 6))
    assert.is_true(w:want("client", 1))   -- CM_SAY: the protocol module's commands
    assert.is_false(w:want("client", 15)) -- CM_PING: nobody's
    w:close()
  end)

  it("reports config and script errors", function()
    local t, err = testing.try{ config = "spec/fixtures/missing.lua" }
    assert.is_nil(t)
    assert.matches("missing.lua", err, 1, true)
    t, err = testing.try{ config = "spec/fixtures/config.lua", listener = "nope" }
    assert.is_nil(t)
    assert.matches("no listener named nope", err, 1, true)
    t, err = testing.try{ framing = "topp", source = "" }
    assert.is_nil(t)
    assert.matches('unknown preset "topp" (did you mean "top"?', err, 1, true)
    assert.has_error(function() testing.new{ source = "error('x')" } end)
  end)

  it("closes sessions on a protocol error", function()
    local t = testing.new{ source = "" }
    local s = t:connect()
    s:from_client("\0\1")
    assert.matches("protocol error from the client", s:closed(), 1, true)
    assert.is_false(s:from_client(top.say("late")))
    t:close()
  end)

  it("moves the clock only when asked", function()
    local t = testing.inline([[gw.after(1000, function() gw.log.info("fired at " .. gw.now()) end)]])
    assert.equal(0, t:now())
    t:advance(999)
    assert.is_false(t:logged("fired"))
    t:advance(5)
    assert.is_true(t:logged("fired at 1000"))
    assert.equal(1004, t:now())
    t:close()
  end)

  it("builds and parses frames of the listener's framing", function()
    local t = testing.new{ framing = "top", source = "" }
    assert.equal(top.frame(501, "x"), t:frame(501, "x"))
    assert.equal("\0\2a\0", t:writer():str("a"):build())
    local p = t:parse(top.say("hey"), "client")
    assert.equal("hey", p:str(8))
    assert.equal("client", p.side)
    t:close()
  end)

  it("refuses use after close", function()
    local t = testing.new{ source = "" }
    local s = t:connect()
    t:close()
    assert.has_error(function() s:from_client("x") end)
    assert.has_error(function() t:connect() end)
  end)
end)
