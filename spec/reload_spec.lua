-- reload_spec.lua: a reload loads every script into a new generation of
-- the same Lua state and swaps it in only if all of them load. Handlers
-- switch at once for live sessions; session.state and gw.shared survive;
-- the old generation's timers stop; gw.on_reload runs in the new one. A
-- failing reload changes nothing and says FILE:LINE: message.
local testing = require "gangway.testing"
local top = testing.top

local function version(n, extra)
  return ([[
    local gw = require "gangway"
    gw.on("client", 1, function(pkt, session)
      local st = session.state
      st.count = (st.count or 0) + 1
      gw.shared.total = (gw.shared.total or 0) + 1
      return gw.packet(100 + %d, gw.writer():u32(st.count):u32(gw.shared.total)
        :u32(gw.generation))
    end)
  ]]):format(n) .. (extra or "")
end

local function answer(frame)
  local p = top.parse(frame, "client")
  return p.opcode, p:u32(8), p:u32(12), p:u32(16)
end

describe("reload", function()
  it("swaps handlers for live sessions, keeping session.state and gw.shared", function()
    local t = testing.new{ source = version(1) }
    local s = t:connect()
    s:from_client(top.say("a") .. top.say("b"))
    local out = s:to_server()
    assert.same({ 101, 2, 2, 1 }, { answer(out[2]) })
    assert.is_true(t:reload{ source = version(2) })
    s:from_client(top.say("c"))
    assert.same({ 102, 3, 3, 2 }, { answer(s:to_server()[1]) })
    local s2 = t:connect()
    s2:from_client(top.say("d"))
    assert.same({ 102, 1, 4, 2 }, { answer(s2:to_server()[1]) })
    t:close()
  end)

  it("keeps everything as it was when a script fails to load", function()
    local t = testing.new{ source = version(1) }
    local s = t:connect()
    for _, bad in ipairs({
      { "local x = = 1", "inline1.lua:1: unexpected symbol near '='" },
      { "error('nope')", "inline1.lua:1: nope" },
      { "local gw = require 'gangway'\ngw.on('client', 2, print)\nlocal t = nil\nt.x = 1",
        "inline1.lua:4: attempt to index a nil value (local 't')" },
      { "while true do end", "inline1.lua:1: instruction limit exceeded" },
    }) do
      local ok, err = t:reload{ source = bad[1] }
      assert.is_nil(ok)
      assert.matches(bad[2], err, 1, true)
      assert.is_true(t:logged("scripts: ", "error"))
      assert.is_false(t:want("client", 2))
      s:from_client(top.say("x"))
      assert.equal(101, (answer(s:to_server()[1])))
    end
    t:close()
  end)

  it("fails as a whole when one of several scripts fails", function()
    local t = testing.new{ sources = { version(1), "local gw = require 'gangway'\ngw.on('client', 2, function() return gw.DROP end)" } }
    local ok, err = t:reload{ sources = { version(2), "error('second one is broken')" } }
    assert.is_nil(ok)
    assert.matches("inline2.lua:1: second one is broken", err, 1, true)
    local s = t:connect()
    s:from_client(top.say("x") .. top.frame(2, ""))
    local out = s:to_server()
    assert.equal(1, #out)
    assert.equal(101, (answer(out[1])))
    t:close()
  end)

  it("stops the old generation's timers and runs on_reload in the new one", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      gw.every(100, function() gw.shared.ticks = (gw.shared.ticks or 0) + 1 end)
      gw.on("client", 1, function(pkt, session)
        session:every(100, function(s) s:send_to_client(gw.packet(501, "old")) end)
      end)
      gw.on_reload(function() gw.shared.old_reload_ran = true end)
    ]] }
    local s = t:connect()
    s:from_client(top.say("x"))
    t:advance(200)
    assert.equal(2, #s:to_client())
    assert.is_true(t:reload{ source = [[
      local gw = require "gangway"
      gw.on_reload(function()
        gw.shared.reloaded = "ticks=" .. gw.shared.ticks .. " old_reload=" .. tostring(gw.shared.old_reload_ran)
        gw.after(50, function() gw.shared.new_timer = true end)
      end)
      gw.on("client", 2, function(pkt, session)
        session:send_to_client(gw.packet(999, gw.shared.reloaded .. " new_timer=" .. tostring(gw.shared.new_timer)))
      end)
    ]] })
    t:advance(1000)
    assert.same({}, s:to_client())
    s:from_client(top.frame(2, ""))
    assert.equal("ticks=2 old_reload=nil new_timer=true", top.parse(s:to_client()[1]):body())
    t:close()
  end)

  it("cancels the timers a failed generation started", function()
    local t = testing.new{ source = "" }
    local ok = t:reload{ source = [[
      local gw = require "gangway"
      gw.after(10, function() gw.shared.leaked = true end)
      error("broken after starting a timer")
    ]] }
    assert.is_nil(ok)
    t:advance(100)
    assert.is_true(t:reload{ source = [[
      local gw = require "gangway"
      gw.on("client", 1, function(pkt, session)
        session:send_to_client(gw.packet(999, tostring(gw.shared.leaked)))
      end)
    ]] })
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.equal("nil", top.parse(s:to_client()[1]):body())
    t:close()
  end)

  it("does not run on_reload at the first load", function()
    local t = testing.inline([[
      gw.on_reload(function() gw.shared.ran = true end)
      gw.on("client", 1, function(pkt, session)
        session:send_to_client(gw.packet(999, tostring(gw.shared.ran)))
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.equal("nil", top.parse(s:to_client()[1]):body())
    assert.is_true(t:reload())
    s:from_client(top.say("x"))
    assert.equal("true", top.parse(s:to_client()[1]):body())
    t:close()
  end)

  it("re-reads the modules scripts require", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      local ids = require "ids"
      gw.on("client", ids.CM_SAY, function() return gw.DROP end)
    ]], files = { ["ids.lua"] = "return { CM_SAY = 1 }" } }
    assert.is_true(t:want("client", 1))
    assert.is_true(t:reload{ files = { ["ids.lua"] = "return { CM_SAY = 7 }" } })
    assert.is_false(t:want("client", 1))
    assert.is_true(t:want("client", 7))
    t:close()
  end)

  it("runs the new gw.on_close for sessions opened before", function()
    local t = testing.new{ source = "" }
    local s = t:connect()
    assert.is_true(t:reload{ source = [[
      local gw = require "gangway"
      gw.on_close(function(session, reason) gw.log.info("closed " .. session.id .. " " .. reason) end)
    ]] })
    s:close("bye")
    assert.is_true(t:logged("closed 1 bye", "info"))
    t:close()
  end)

  it("leaves old functions unable to register handlers", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      gw.shared.register = function() gw.on("client", 5, print) end
    ]] }
    assert.is_true(t:reload{ source = [[
      local gw = require "gangway"
      local ok, err = pcall(gw.shared.register)
      assert(not ok and err:find("while the script loads"), err)
    ]] })
    assert.is_false(t:want("client", 5))
    t:close()
  end)

  it("changes the framing for new sessions only", function()
    local script = [[
      local gw = require "gangway"
      gw.on("client", "*", function(pkt) pkt:set_body(pkt:body() .. "!") end)
    ]]
    local t = testing.new{ framing = "top", source = script }
    local old = t:connect()
    assert.is_true(t:reload{ framing = "u32le" })
    local new = t:connect()
    old:from_client(top.frame(1, "a"))
    assert.same({ top.frame(1, "a!") }, old:to_server())
    new:from_client(string.pack("<I4", 1) .. "b")
    assert.same({ string.pack("<I4", 2) .. "b!" }, new:to_server())
    t:close()
  end)

  it("lets no script send or close while a reload loads (it may still fail)", function()
    local t = testing.new{ source = version(1) }
    local s = t:connect()
    local ok, err = t:reload{ sources = {
      [[local gw = require "gangway"
        for _, x in ipairs(gw.sessions()) do x:close("too early") end]],
      "syntax error here",
    } }
    assert.is_nil(ok)
    assert.matches("session:close while scripts load: use gw.on_reload", err, 1, true)
    assert.is_nil(s:closed())
    s:from_client(top.say("x"))
    assert.equal(101, (answer(s:to_server()[1])))
    t:close()
  end)
end)
