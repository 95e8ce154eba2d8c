-- timer_spec.lua: gw.after/gw.every and session:after/session:every on the
-- simulated clock: when they fire, in what order, cancel, and their end
-- with their session.
local testing = require "gangway.testing"
local top = testing.top

local host = testing.inline

-- A listener whose scripts append to gw.shared.log; a CM_SAY "log" frame
-- makes it send the log back (opcode 999) and clear it.
local LOG = [[
  local function log(x) gw.shared.log = (gw.shared.log or "") .. x .. " " end
  gw.on("client", 1, function(pkt, session)
    if pkt:str(8) == "log" then
      session:send_to_client(gw.packet(999, gw.shared.log or ""))
      gw.shared.log = nil
      return gw.DROP
    end
  end)
]]

local function log_of(t)
  local s = t:connect()
  s:from_client(top.say("log"))
  local f = s:to_client()[1]
  s:close()
  return top.parse(f):body()
end

describe("timers", function()
  it("fire when due, in time order, with gw.now() at their time", function()
    local t = host(LOG .. [[
      gw.after(300, function() log("c@" .. gw.now()) end)
      gw.after(100, function() log("a@" .. gw.now()) end)
      gw.after(100, function() log("b@" .. gw.now()) end)
      gw.after(0, function() log("z@" .. gw.now()) end)
    ]])
    t:advance(99)
    assert.equal("z@0 ", log_of(t))
    t:advance(1)
    assert.equal("a@100 b@100 ", log_of(t))
    t:advance(1000)
    assert.equal("c@300 ", log_of(t))
    t:close()
  end)

  it("every repeats until cancelled; cancel reports whether it was active", function()
    local t = host(LOG .. [[
      local n = 0
      local tm
      tm = gw.every(100, function(timer)
        n = n + 1
        log(n .. "@" .. gw.now())
        if n == 3 then log(tostring(timer:cancel()) .. tostring(tm:active())) end
      end)
    ]])
    t:advance(1000)
    assert.equal("1@100 2@200 3@300 truefalse ", log_of(t))
    t:close()
  end)

  it("can be cancelled before they fire", function()
    local t = host(LOG .. [[
      local a = gw.after(50, function() log("a") end)
      gw.after(10, function() log("cancel:" .. tostring(a:cancel())) end)
    ]])
    t:advance(100)
    assert.equal("cancel:true ", log_of(t))
    t:close()
  end)

  it("a 0 ms timer started by a timer runs on the next round", function()
    local t = host(LOG .. [[
      local n = 0
      local function again()
        n = n + 1
        log(n)
        if n < 5 then gw.after(0, again) end
      end
      gw.after(10, again)
    ]])
    t:advance(10)
    assert.equal("1 2 3 4 5 ", log_of(t))
    t:close()
  end)

  it("session timers get the session and end with it", function()
    local t = host(LOG .. [[
      gw.on("client", 2, function(pkt, session)
        session:every(100, function(s, timer)
          s:send_to_client(gw.packet(501, "tick " .. gw.now()))
        end)
      end)
    ]])
    local s = t:connect()
    s:from_client(top.frame(2, ""))
    t:advance(250)
    assert.same({ top.frame(501, "tick 100"), top.frame(501, "tick 200") }, s:to_client())
    s:close()
    t:advance(1000)
    assert.same({}, s:to_client())
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("a failing session timer is logged; on_error close closes its session", function()
    local t = host([[
      gw.on("client", 2, function(pkt, session)
        session:after(10, function() error("tock") end)
      end)
    ]], { on_error = "close" })
    local s = t:connect()
    s:from_client(top.frame(2, ""))
    t:advance(10)
    assert.is_true(t:logged("timer of session 1: ", "error"))
    assert.is_true(t:logged("inline1.lua:3: tock", "error"))
    assert.equal("handler error", s:closed())
    t:close()
  end)

  it("validates arguments", function()
    for _, case in ipairs({
      { "gw.after(-1, print)", "milliseconds >= 0" },
      { "gw.every(0, print)", "an interval of 1 ms or more" },
      { "gw.after(10)", "function expected" },
    }) do
      local t, err = testing.try{ source = "local gw = require 'gangway'\n" .. case[1] }
      assert.is_nil(t)
      assert.matches(case[2], err, 1, true)
    end
  end)
end)
