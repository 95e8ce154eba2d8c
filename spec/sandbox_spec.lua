-- sandbox_spec.lua: what a script can and cannot reach. Each script has
-- its own _ENV over a read-only base; no io, os.execute, debug, files or C
-- modules unless its listener is unsafe; require loads gangway, cjson and
-- Lua modules next to the script, as text.
local testing = require "gangway.testing"
local top = testing.top

-- Loads source and returns what it leaves in gw.shared.out, read back
-- through a handler.
local function run(source, opts)
  local t = testing.inline(source .. [[

    gw.on("client", 1, function(pkt, session)
      session:send_to_client(gw.packet(999, tostring(gw.shared.out)))
    end)
  ]], opts)
  local s = t:connect()
  s:from_client(top.say("?"))
  local out = top.parse(s:to_client()[1]):body()
  t:close()
  return out
end

describe("sandbox", function()
  it("has no io, os.execute, debug, files, package or collectgarbage", function()
    assert.equal("nil nil nil nil nil nil nil nil nil nil nil nil", run([[
      gw.shared.out = table.concat({ tostring(io), tostring(os.execute),
        tostring(os.exit), tostring(os.getenv), tostring(os.remove),
        tostring(debug), tostring(loadfile), tostring(dofile),
        tostring(package), tostring(collectgarbage), tostring(string.dump and nil),
        tostring(rawget(_G, "io")) }, " ")
    ]]))
  end)

  it("has os.time, os.clock, os.date and the pure libraries", function()
    assert.equal("true", run([[
      gw.shared.out = tostring(type(os.time()) == "number" and type(os.clock()) == "number"
        and type(os.date("!%Y")) == "string" and math.max(1, 2) == 2
        and utf8.char(72) == "H" and table.concat({ "a", "b" }) == "ab"
        and ("x"):rep(3) == "xxx" and coroutine.wrap(function() return 1 end)() == 1)
    ]]))
  end)

  it("refuses binary chunks, and load defaults to the script's _ENV", function()
    assert.equal("true|attempt to load a binary chunk|42", run([[
      secret = 42
      local ok, err = load(string.dump(function() end))
      local f = load("return secret")
      gw.shared.out = tostring(ok == nil) .. "|" .. tostring(err):match("attempt to load a binary chunk") .. "|" .. f()
    ]]))
  end)

  it("keeps each script's globals and library changes to itself", function()
    local t = testing.new{ sources = {
      [[
        local gw = require "gangway"
        counter = 1
        string.upper = function() return "patched" end
        gw.on("client", 1, function(pkt, session)
          session:send_to_client(gw.packet(999, tostring(counter) .. string.upper("a")))
        end)
      ]],
      [[
        local gw = require "gangway"
        gw.on("client", 1, function(pkt, session)
          session:send_to_client(gw.packet(998, tostring(counter) .. string.upper("a")
            .. ("b"):upper() .. tostring(getmetatable("")) .. tostring(getmetatable(_ENV))))
        end)
      ]],
    } }
    local s = t:connect()
    s:from_client(top.say("?"))
    local out = s:to_client()
    assert.equal("1patched", top.parse(out[1]):body())
    assert.equal("nilABfalsefalse", top.parse(out[2]):body())
    t:close()
  end)

  it("cannot replace its _ENV's metatable or reach the base", function()
    assert.equal("false", run([[
      local ok = pcall(setmetatable, _ENV, {})
      gw.shared.out = tostring(ok)
    ]]))
  end)

  it("refuses __gc (finalizers run outside the instruction limit)", function()
    local t, err = testing.try{ source = [[
      setmetatable({}, { __gc = function() while true do end end })
    ]] }
    assert.is_nil(t)
    assert.matches("inline1.lua:1: setmetatable: __gc is not allowed in scripts", err, 1, true)
  end)

  it("routes print to the log with the script's name", function()
    local t = testing.inline([[print("hello", 1, nil, true)]])
    assert.is_true(t:logged("info inline1.lua: hello 1 nil true"))
    t:close()
  end)

  it("logs through gw.log at each level", function()
    local t = testing.inline([[
      gw.log.debug("d") gw.log.info("i", 2) gw.log.warn("w") gw.log.error("e")
    ]])
    assert.is_true(t:logged("inline1.lua: d", "debug"))
    assert.is_true(t:logged("inline1.lua: i 2", "info"))
    assert.is_true(t:logged("inline1.lua: w", "warn"))
    assert.is_true(t:logged("inline1.lua: e", "error"))
    t:close()
  end)
end)

describe("require", function()
  it("loads cjson", function()
    assert.equal('{"a":1}|2|nil', run([[
      local cjson = require "cjson"
      local safe = require "cjson.safe"
      gw.shared.out = cjson.encode({ a = 1 }) .. "|" .. math.tointeger(cjson.decode("[1,2]")[2]) .. "|" .. tostring(safe.decode("{"))
    ]]))
  end)

  it("loads modules next to the script, sandboxed, once per generation", function()
    assert.equal("501|1|nil|true", run([[
      local ids = require "ids"
      local again = require "ids"
      gw.shared.out = ids.MC_SAY .. "|" .. ids.loads .. "|" .. tostring(ids.io) .. "|" .. tostring(ids == again)
    ]], { files = {
      ["ids.lua"] = "LOADS = (LOADS or 0) + 1\nreturn { MC_SAY = 501, loads = LOADS, io = io }",
    } }))
  end)

  it("refuses names that leave the directory, and C modules", function()
    for _, name in ipairs({ "../etc/passwd", "/etc/passwd", "a..b", "lfs", "" }) do
      local t, err = testing.try{ source = ("require %q"):format(name) }
      assert.is_nil(t, name)
      assert.matches("module '" .. name .. "' not found", err, 1, true)
    end
  end)

  it("reports a module's syntax error with its file and line", function()
    local t, err = testing.try{ source = 'require "broken"',
                                files = { ["broken.lua"] = "local x = \n\n = 1" } }
    assert.is_nil(t)
    assert.matches("broken.lua:3: unexpected symbol", err, 1, true)
  end)

  it("reports a module that requires itself", function()
    local t, err = testing.try{ source = 'require "a"',
                                files = { ["a.lua"] = 'require "b"', ["b.lua"] = 'require "a"' } }
    assert.is_nil(t)
    assert.matches("b.lua:1: module 'a' requires itself while loading", err, 1, true)
  end)

  it("tries a module that failed again at the next require", function()
    local t = testing.inline([[
      gw.on("client", 1, function(pkt, session)
        local ok, err = pcall(require, "flaky")
        session:send_to_client(gw.packet(999, tostring(ok) .. " " .. tostring(err)))
      end)
    ]], { files = { ["flaky.lua"] = "error('not today')" } })
    local s = t:connect()
    s:from_client(top.say("x") .. top.say("x"))
    local out = s:to_client()
    assert.matches("false .*flaky.lua:1: not today", top.parse(out[1]):body())
    assert.matches("false .*flaky.lua:1: not today", top.parse(out[2]):body())
    t:close()
  end)

  it("gives a module the requiring script's gangway", function()
    local t = testing.new{ source = [[
      local gw = require "gangway"
      require "handlers"
    ]], files = { ["handlers.lua"] = [[
      local gw = require "gangway"
      gw.on("client", 1, function() return gw.DROP end)
    ]] } }
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({}, s:to_server())
    t:close()
  end)
end)

describe("unsafe listeners", function()
  it("get the whole standard library", function()
    assert.equal("function function table function", run([[
      gw.shared.out = table.concat({ type(io.open), type(os.execute),
        type(debug), type(require("string").format) }, " ")
    ]], { unsafe = true }))
  end)

  it("still require gangway and local modules", function()
    assert.equal("7", run([[
      gw.shared.out = require("seven")
    ]], { unsafe = true, files = { ["seven.lua"] = "return 7" } }))
  end)
end)
