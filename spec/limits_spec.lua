-- limits_spec.lua: the instruction limit, the stack depth limit and the
-- memory cap. A handler that loops forever, recurses without end or eats
-- memory is stopped with a logged error, its frame goes the on_error way,
-- and every other session carries on.
local testing = require "gangway.testing"
local top = testing.top

local host = testing.inline

local FINE = [[
  gw.on("client", 2, function(pkt) pkt:set_body("fine") end)
]]

-- Runs FINE and source (a handler on opcode 1) with opts (on_error =
-- "drop"), sends an opcode 1 frame on a first session and checks that the
-- call failed with message: frame dropped, error logged and counted.
-- Returns the host and two sessions.
local function fails_on_frame(source, opts, message, timeouts)
  local t = host(FINE .. source, opts)
  local a, b = t:connect(), t:connect()
  a:from_client(top.say("x"))
  assert.same({}, a:to_server())
  assert.is_true(t:logged(message, "error"), table.concat(t:logs(), "\n"))
  assert.is_true(t:logged("inline1.lua:", "error"))
  local st = t:stats()
  assert.equal(1, st.errors)
  assert.equal(timeouts, st.timeouts)
  return t, a, b
end

-- Lua text of an opcode 3 handler that sends the value of var to the
-- client and resets it to 0; reported(s) asks it.
local function reporter(var)
  return (([[
    gw.on("client", 3, function(pkt, session)
      session:send_to_client(gw.packet(3, tostring(VAR)))
      VAR = 0
      return gw.DROP
    end)
  ]]):gsub("VAR", var))
end

local function reported(s)
  s:from_client(top.frame(3, ""))
  return tonumber(top.parse(s:to_client()[1]):body())
end

-- The state is fine after a failed call: both sessions go on.
local function both_go_on(t, a, b)
  a:from_client(top.frame(2, ""))
  b:from_client(top.frame(2, ""))
  assert.same({ top.frame(2, "fine") }, a:to_server())
  assert.same({ top.frame(2, "fine") }, b:to_server())
  t:close()
end

describe("instruction limit", function()
  local loops = {
    plain = "while true do end",
    ["pcall inside"] = "while true do pcall(function() while true do end end) end",
    ["error handler"] = "while true do xpcall(function() while true do end end, function() while true do end end) end",
    coroutine = "local co = coroutine.wrap(function() while true do end end) co()",
    ["pcall around coroutines"] = [[
      while true do
        pcall(coroutine.wrap(function() while true do pcall(error) end end))
      end]],
    recursion = "local function f() return f() end f()",
    ["string work"] = "local s = '' while true do s = ('x'):rep(10) .. s:sub(1, 100) end",
  }
  for name, loop in pairs(loops) do
    it("stops an endless loop (" .. name .. ")", function()
      both_go_on(fails_on_frame([[
        gw.on("client", 1, function() ]] .. loop .. [[ end)
      ]], { instructions = 100000, on_error = "drop" },
        "instruction limit exceeded (100000 per call)", 1))
    end)
  end

  it("gives each call its own budget", function()
    local t = host([[
      gw.on("client", 1, function()
        local x = 0
        for i = 1, 20000 do x = x + i end -- about 80000 instructions
      end)
    ]], { instructions = 100000 })
    local s = t:connect()
    for _ = 1, 20 do s:from_client(top.say("x")) end
    assert.equal(20, #s:to_server())
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("applies to timers, on_connect and loading", function()
    local t = host([[
      gw.after(10, function() while true do end end)
      gw.on_connect(function() while true do end end)
    ]], { instructions = 50000 })
    t:connect()
    t:advance(10)
    assert.equal(2, t:stats().timeouts)
    t:close()
    local bad, err = testing.try{ instructions = 50000, source = "while true do end" }
    assert.is_nil(bad)
    assert.matches("inline1.lua:1: instruction limit exceeded (50000 per call)", err, 1, true)
  end)
end)

describe("instruction limit and coroutines", function()
  -- Each loop counts its rounds in `n`; a round runs about 1,000
  -- instructions in a new or resumed coroutine. Opcode 3 reports n.
  local COUNT = "local n = 0\n" .. reporter("n") .. [[
    local function work() for i = 1, 990 do end end
  ]]

  local loops = {
    ["new coroutines"] = "while true do coroutine.resume(coroutine.create(work)) n = n + 1 end",
    ["new wrapped coroutines"] = "while true do coroutine.wrap(work)() n = n + 1 end",
    ["one coroutine resumed"] = [[
      local co = coroutine.wrap(function() while true do work() coroutine.yield() end end)
      while true do co() n = n + 1 end]],
    ["nested coroutines"] = [[
      while true do
        coroutine.wrap(function() coroutine.wrap(work)() end)()
        n = n + 1
      end]],
  }
  for name, loop in pairs(loops) do
    it("charges every coroutine's instructions (" .. name .. ")", function()
      local t, a, b = fails_on_frame(COUNT .. [[
        gw.on("client", 1, function() ]] .. loop .. [[ end)
      ]], { instructions = 1000000, on_error = "drop" },
        "instruction limit exceeded (1000000 per call)", 1)
      -- at most the budget, plus one hook interval per coroutine charged
      -- up front: like a plain loop (unmetered, it ran ~125,000 rounds)
      local r = reported(a)
      assert.is_true(r > 400 and r <= 1000, "ran " .. r .. " rounds")
      both_go_on(t, a, b)
    end)
  end

  it("charges a coroutine resumed in a later call to that call", function()
    local t = host(COUNT .. [[
      local co
      gw.on("client", 1, function()
        co = coroutine.create(function()
          coroutine.yield()
          while true do work() n = n + 1 end
        end)
        coroutine.resume(co)
      end)
      gw.on("client", 2, function() coroutine.resume(co) end)
    ]], { instructions = 1000000, on_error = "drop" })
    local s = t:connect()
    s:from_client(top.frame(1, ""))
    assert.equal(0, t:stats().errors)
    for round = 1, 2 do
      s:from_client(top.frame(2, ""))
      -- the first resume is stopped by its call's limit; the coroutine is
      -- dead after, so the second one returns at once
      assert.equal(1, t:stats().timeouts)
      local r = reported(s)
      if round == 1 then
        assert.is_true(r > 900 and r <= 1011, "ran " .. r .. " rounds")
      else
        assert.equal(0, r)
      end
    end
    t:close()
  end)

  it("lets a few coroutines be", function()
    local t = host([[
      gw.on("client", 1, function(pkt)
        local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
        local out = {}
        for i in gen do out[#out + 1] = i end
        for _ = 1, 100 do coroutine.resume(coroutine.create(function() end)) end
        pkt:set_body(table.concat(out, ","))
      end)
    ]], { instructions = 200000 })
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.frame(1, "1,2,3") }, s:to_server())
    assert.equal(0, t:stats().errors)
    t:close()
  end)
end)

describe("stack depth limit", function()
  -- deepest: the deepest level a recursion reached
  local RECURSE = "local deepest = 0\n" .. reporter("deepest") .. [[
    local function f(n) if n > deepest then deepest = n end return f(n + 1) + 1 end
  ]]

  local cases = {
    plain = "return f(1)",
    ["in a coroutine"] = "return coroutine.wrap(f)(1)",
    ["in a metamethod"] = "return setmetatable({}, { __index = function() return f(1) end }).x",
  }
  for name, body in pairs(cases) do
    it("stops a deep recursion early, under any instruction limit (" .. name .. ")", function()
      local t, a, b = fails_on_frame(RECURSE .. [[
        gw.on("client", 1, function() ]] .. body .. [[ end)
      ]], { instructions = 1000000000, on_error = "drop" },
        "stack depth limit exceeded (1000 levels)", 0)
      -- stopped within one hook interval (1000 instructions) of the limit,
      -- far from Lua's own ~200,000 levels
      local d = reported(a)
      assert.is_true(d >= 990 and d <= 1000 + 1000, "reached " .. d)
      both_go_on(t, a, b)
    end)
  end

  it("lets a pcall catch it, as Lua's own stack overflow, and lets legit recursion be", function()
    local t = host(RECURSE .. [[
      local function sum(n) if n == 0 then return 0 end return n + sum(n - 1) end
      gw.on("client", 1, function(pkt)
        local ok, err = pcall(f, 1)
        pkt:set_body(tostring(ok) .. " " .. err:gsub("^.-:%d+: ", "") .. " " .. sum(900))
      end)
    ]], { instructions = 100000000 })
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.frame(1, "false stack depth limit exceeded (1000 levels) 405450") }, s:to_server())
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("keeps a failing deep recursion's traceback short", function()
    local t = host(RECURSE .. [[
      gw.on("client", 1, function() return f(1) end)
    ]], { instructions = 1000000000, on_error = "drop" })
    local s = t:connect()
    s:from_client(top.say("x"))
    local tb = t:logs("debug")
    assert.equal(1, #tb)
    assert.matches("stack traceback:", tb[1], 1, true)
    assert.matches("...(skipping ", tb[1], 1, true)
    assert.is_true(#tb[1] < 4000, #tb[1])
    t:close()
  end)
end)

describe("memory cap", function()
  local bombs = {
    table = "local t = {} for i = 1, 1e9 do t[i] = i end",
    ["string.rep"] = "local s = string.rep('x', 64 * 1024 * 1024)",
    concat = "local s = 'x' while true do s = s .. s end",
    ["pcall inside"] = "local t = {} while true do pcall(function() t[#t + 1] = {} end) end",
    writer = "local w = gw.writer() while true do w:bytes(string.rep('y', 65536)) end",
    inject = "local f = gw.packet(501, string.rep('z', 60000)) while true do session:send_to_client(f) end",
  }
  for name, bomb in pairs(bombs) do
    it("catches a memory bomb (" .. name .. ")", function()
      local t = host(FINE .. [[
        gw.on("client", 1, function(pkt, session) ]] .. bomb .. [[ end)
      ]], { memory = 8 * 1024 * 1024, instructions = 100000000, on_error = "close" })
      local a, b = t:connect(), t:connect()
      a:from_client(top.say("eat"))
      assert.equal("handler error", a:closed())
      assert.is_true(t:logged("not enough memory", "error"), table.concat(t:logs(), "\n"))
      assert.same({}, a:to_client())
      assert.is_true(t:stats().memory <= 8 * 1024 * 1024)
      b:from_client(top.frame(2, ""))
      assert.same({ top.frame(2, "fine") }, b:to_server())
      t:close()
    end)
  end

  it("names the limit in the message", function()
    local t = host([[gw.on("client", 1, function() local t = {} while true do t[#t+1] = {} end end)]],
                   { memory = 4 * 1024 * 1024, instructions = 100000000 })
    t:connect():from_client(top.say("x"))
    assert.is_true(t:logged("not enough memory (the scripts' limit is 4 MiB)", "error"))
    t:close()
  end)

  it("keeps state that fits across a failed call", function()
    local t = host([[
      local keep = {}
      gw.on("client", 1, function(pkt, session)
        keep[#keep + 1] = pkt:str(8)
        if pkt:str(8) == "bomb" then local x = string.rep("x", 64 * 1024 * 1024) end
        session:send_to_client(gw.packet(999, table.concat(keep, ",")))
      end)
    ]], { memory = 8 * 1024 * 1024 })
    local s = t:connect()
    s:from_client(top.say("a") .. top.say("bomb") .. top.say("b"))
    local out = s:to_client()
    assert.equal(2, #out)
    assert.equal("a,bomb,b", top.parse(out[2]):body())
    t:close()
  end)

  it("collects what handlers make for every frame, under load", function()
    -- Writers and copies need no finalizers: garbage with finalizers is
    -- freed a cycle late and, at one per frame, outruns a small limit.
    local t = host([[
      local kept
      gw.on("client", 1, function(pkt, session)
        kept = pkt:copy()
        kept:set_body(gw.writer():str("copy"):u32(#kept))
        pkt:set_body(gw.writer():str("hello"):bytes(string.rep("x", 200)))
        session:send_to_client(gw.packet(501, gw.writer():str("echo")))
      end)
    ]], { memory = 2 * 1024 * 1024 })
    local s = t:connect()
    local batch = string.rep(top.say("hi"), 500)
    for _ = 1, 100 do
      s:from_client(batch)
      s:to_server()
      s:to_client()
    end
    local st = t:stats()
    assert.equal(50000, st.frames)
    assert.equal(0, st.errors, table.concat(t:logs("error"), "\n"))
    t:close()
  end)
end)

describe("output limit (write_max)", function()
  local BIG = string.rep("x", 1000) -- a 1008-byte frame

  it("refuses sends past it, counts them, and the session goes on", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        local all = true
        for i = 1, 10 do
          all = session:send_to_client(gw.packet(501, ("x"):rep(1000))) and all
        end
        pkt:set_body(tostring(all))
      end)
    ]], { write_max = 8000 })
    local s = t:connect()
    -- the client reads nothing: 7 frames fit in 8000 bytes, 3 do not
    s:from_client(top.say("a"))
    -- queued in the outbox during the call, so each send said true
    assert.same({ top.frame(1, "true") }, s:to_server())
    local st = t:stats()
    assert.equal(7, st.injected)
    assert.equal(3, st.injected_refused)
    s:from_client(top.say("b"))
    assert.equal(13, t:stats().injected_refused)
    assert.is_nil(s:closed())
    -- what was queued arrives, whole and in order; then there is room again
    local out = s:to_client()
    assert.equal(7, #out)
    for _, f in ipairs(out) do assert.equal(top.frame(501, BIG), f) end
    s:from_client(top.say("c"))
    assert.equal(7, #s:to_client())
    assert.equal(16, t:stats().injected_refused)
    t:close()
  end)

  it("refuses timer sends past it too", function()
    local t = host([[
      gw.on_connect(function(session)
        session:every(10, function(s) s:send_to_client(gw.packet(501, ("x"):rep(1000))) end)
      end)
    ]], { write_max = 3000 })
    local s = t:connect()
    t:advance(100)
    assert.equal(2, t:stats().injected)
    assert.equal(8, t:stats().injected_refused)
    assert.equal(2, #s:to_client())
    assert.is_nil(s:closed())
    t:close()
  end)

  it("closes a session whose handled frame cannot be passed on", function()
    local t = host([[
      gw.on("client", 1, function(pkt) pkt:set_body(("y"):rep(1000)) end)
    ]], { write_max = 3000 })
    local s = t:connect()
    -- the server reads nothing: the third replacement does not fit
    s:from_client(top.say("a") .. top.say("b"))
    assert.is_nil(s:closed())
    s:from_client(top.say("c"))
    assert.equal("output limit exceeded toward the server side", s:closed())
    assert.equal(2, #s:to_server())
    t:close()
  end)
end)

describe("escapes that the limits close", function()
  it("keeps gangway's metatables out of reach (a __gc there would run unmetered)", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        session:send_to_client(gw.packet(2, tostring(getmetatable(pkt)) .. ","
          .. tostring(getmetatable(session)) .. "," .. tostring(getmetatable(gw.writer()))
          .. "," .. tostring(getmetatable(session:after(10, function() end)))))
      end)
      gw.on("client", 3, function()
        rawset(getmetatable(gw.writer()), "__gc", function() while true do end end)
      end)
    ]], { instructions = 100000 })
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.equal("false,false,false,false", top.parse(s:to_client()[1]):body())
    s:from_client(top.frame(3, ""))
    assert.is_true(t:logged("bad argument #1 to 'rawset' (table expected, got boolean)", "error"))
    t:close()
  end)

  it("charges cjson.encode for every node it visits, repeats included", function()
    local t = host([[
      local cjson = require "cjson"
      gw.on("client", 1, function()
        local a = { 1 }
        for i = 1, 30 do a = { a, a } end -- 2^30 leaves if encoded
        cjson.encode(a)
      end)
      gw.on("client", 2, function(pkt) pkt:set_body(cjson.encode({ ok = true })) end)
    ]], { instructions = 100000 })
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.is_true(t:logged("instruction limit exceeded", "error"))
    s:from_client(top.frame(2, ""))
    assert.same({ top.say("x"), top.frame(2, '{"ok":true}') }, s:to_server())
    t:close()
  end)

  it("gives each script its own cjson table", function()
    local t = testing.new{ sources = {
      'local cjson = require "cjson" cjson.encode = function() return "hijacked" end',
      [[local gw = require "gangway" local cjson = require "cjson"
        gw.on("client", 1, function(pkt) pkt:set_body(cjson.encode({ 1 })) end)]],
    } }
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.frame(1, "[1]") }, s:to_server())
    t:close()
  end)

  it("undoes the closes of a call that fails, as it drops its sends", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        session:send_to_client(gw.packet(2, "bye"))
        session:close("kicked")
        error("changed my mind")
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.is_nil(s:closed())
    assert.same({}, s:to_client())
    assert.same({ top.say("x") }, s:to_server()) -- on_error = "pass"
    t:close()
  end)
end)

describe("a wait where Lua cannot yield", function()
  -- table.sort's comparator and string.gsub's function are called from C:
  -- a wait there is an error of that call (it crashed the proxy when the
  -- wait was recorded before the yield failed). A metamethod the VM calls
  -- (__index) may wait: Lua 5.4 yields across it.
  for name, body in pairs({
    ["table.sort"] = "table.sort({3, 1, 2}, function(a, b) session:sleep(5) return a < b end)",
    ["string.gsub"] = "(\"ab\"):gsub(\".\", function(c) session:sleep(5) return c end)",
  }) do
    it("raises inside " .. name .. ", and the frame and the session go on", function()
      local t = testing.inline(([[
gw.on("client", "CM_SAY", function(pkt, session)
  local ok, err = pcall(function() %s end)
  gw.log.info("waited", ok, err)
end)]]):format(body), { protocol = "top" })
      local s = t:connect()
      local by = t:connect()
      s:from_client(top.say("x"))
      t:advance(50)
      assert.same({ top.say("x") }, s:to_server())
      assert.is_true(t:logged("cannot wait here (inside a function called from C", "info"))
      by:from_client(top.say("y"))
      assert.same({ top.say("y") }, by:to_server())
      s:from_client(top.say("z"))
      t:advance(50)
      assert.same({ top.say("z") }, s:to_server())
      t:close()
    end)
  end
end)
