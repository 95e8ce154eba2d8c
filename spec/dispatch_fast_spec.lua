-- dispatch_fast_spec.lua: attacks on the dispatcher's fast path (run D):
-- the per-generation cache of chains (64 slots a side, direct-mapped), a
-- one-function chain's handler pushed straight onto the runner, a shared
-- clock read for frames back to back, and no framing check after an edit
-- off the length field. A chain is cached at its first frame and taken
-- from the cache only for a session already in Lua, so every case sends
-- each kind of frame several times, in one read and in several.
local testing = require "gangway.testing"
local top = testing.top

local host = testing.inline

-- The cache's slot of a key (chain_hash in script.c): the top 6 bits of
-- key * 0x9E3779B97F4A7C15 (Lua integers wrap as uint64_t does).
local function slot(key) return ((key * -7046029254386353131) >> 58) & 63 end

-- Opcodes in 0..65535 whose keys share key's slot.
local function colliding(key, n)
  local out = {}
  for op = 0, 65535 do
    if op ~= key and slot(op) == slot(key) then
      out[#out + 1] = op
      if #out == n then break end
    end
  end
  return out
end

local function body_text(frame) return frame:sub(9) end

local function texts(frames)
  local out = {}
  for i, f in ipairs(frames) do out[i] = body_text(f) end
  return out
end

local function opstats(t)
  local _, body = t:admin("opstats", "GET")
  return require("cjson").decode(body)
end

local OPSTATS = [[
  gw.admin("opstats", function()
    local st = gw.stats()
    local out = { frames = st.frames, dropped = st.dropped, replaced = st.replaced,
                  errors = st.errors, client = {}, server = {} }
    for side, ops in pairs(st.opcodes) do
      for op, o in pairs(ops) do out[side][tostring(op)] = o end
    end
    return out
  end)
]]

describe("the chain cache", function()
  it("keeps opcodes apart whose keys share a slot, '*' and one or several functions", function()
    local a = colliding(-1, 3) -- share the "*" chain's slot
    assert.equal(3, #a)
    local t = host(string.format([[
      local function tag(s)
        return function(pkt) pkt:set_body(gw.writer():bytes(pkt:body()):bytes(s)) end
      end
      gw.on("client", %d, tag("A"))
      gw.on("client", %d, tag("B"))
      gw.on("client", %d, tag("C1"))
      gw.on("client", %d, tag("C2"))
      gw.on("client", "*", tag("*"))
    ]], a[1], a[2], a[3], a[3]))
    local s = t:connect()
    local frames, want = "", {}
    for _ = 1, 4 do
      -- "*" handlers join the opcodes' chains in registration order
      for _, c in ipairs{ { a[1], "A*" }, { 7, "*" }, { a[2], "B*" }, { a[3], "C1C2*" }, { a[1], "A*" } } do
        frames = frames .. top.frame(c[1], "")
        want[#want + 1] = top.frame(c[1], c[2])
      end
    end
    s:from_client(frames) -- one read
    assert.same(want, s:to_server())
    for i = 1, #want do -- one frame a read
      s:from_client(top.frame(({ a[1], 7, a[2], a[3] })[i % 4 + 1], ""))
    end
    assert.same({ top.frame(7, "*"), top.frame(a[2], "B*"), top.frame(a[3], "C1C2*"), top.frame(a[1], "A*") },
                { table.unpack(s:to_server(), 1, 4) })
    t:close()
  end)

  it("keeps the client side's chain of an opcode apart from the server side's", function()
    local t = host([[
      gw.on("server", "*", function(pkt) if pkt.opcode ~= 9 then return gw.DROP end end)
      gw.on("client", 9, function(pkt) pkt:set_body(gw.writer():bytes("c")) end)
      gw.on("server", 9, function(pkt) pkt:set_body(gw.writer():bytes("s")) end)
    ]])
    local s = t:connect()
    for _ = 1, 3 do
      s:from_client(top.frame(9, "") .. top.frame(9, ""))
      s:from_server(top.frame(9, "") .. top.frame(10, "") .. top.frame(9, ""))
    end
    assert.same({ top.frame(9, "c"), top.frame(9, "c"), top.frame(9, "c"), top.frame(9, "c"),
                  top.frame(9, "c"), top.frame(9, "c") }, s:to_server())
    assert.same({ top.frame(9, "s"), top.frame(9, "s"), top.frame(9, "s"), top.frame(9, "s"),
                  top.frame(9, "s"), top.frame(9, "s") }, s:to_client())
    t:close()
  end)

  it("keeps the keep-alive chain apart from '*' and the opcodes' chains", function()
    local ka = colliding(-2, 1)[1] -- an opcode in the keep-alive chain's slot
    local t = testing.inline(string.format([[
      gw.on("client", "*", function(pkt) if pkt.opcode then pkt:set_body(gw.writer():bytes("star")) end end)
      gw.on("client", "KEEPALIVE", function() return gw.DROP end)
      gw.on("client", %d, function(pkt) pkt:set_body(gw.writer():bytes("op")) end)
    ]], ka), { protocol = "top" })
    local s = t:connect()
    for _ = 1, 3 do
      s:from_client(top.keepalive .. top.frame(ka, "") .. top.keepalive .. top.frame(3, ""))
    end
    assert.same({ top.frame(ka, "op"), top.frame(3, "star"), top.frame(ka, "op"),
                  top.frame(3, "star"), top.frame(ka, "op"), top.frame(3, "star") }, s:to_server())
    assert.equal(6, #s:dropped())
    t:close()
  end)

  it("is dropped at a reload, a handler's chain changing length both ways", function()
    local function v(n, two)
      return string.format([[
        local gw = require "gangway"
        local function tag(s) return function(pkt) pkt:set_body(gw.writer():bytes(pkt:body()):bytes(s)) end end
        gw.on("client", 1, tag("%d"))
        %s
        gw.on("client", "*", tag("*%d"))
      ]], n, two and string.format('gw.on("client", 1, tag("+%d"))', n) or "", n)
    end
    local t = testing.new{ source = v(1, false) }
    local s = t:connect()
    local function round(want1, wantstar)
      s:from_client(top.frame(1, "") .. top.frame(2, "") .. top.frame(1, ""))
      s:from_client(top.frame(2, ""))
      assert.same({ top.frame(1, want1), top.frame(2, wantstar), top.frame(1, want1),
                    top.frame(2, wantstar) }, s:to_server())
    end
    round("1*1", "*1")
    round("1*1", "*1")
    assert.is_true(t:reload{ source = v(2, true) })
    round("2+2*2", "*2")
    round("2+2*2", "*2")
    assert.is_nil((t:reload{ source = "error('no')" })) -- a failed reload: the cache stays
    round("2+2*2", "*2")
    assert.is_true(t:reload{ source = v(3, false) })
    round("3*3", "*3")
    assert.is_true(t:reload{ source = [[require("gangway").on("client", 2, function() end)]] })
    s:from_client(top.frame(1, "") .. top.frame(1, ""))
    assert.same({ top.frame(1, ""), top.frame(1, "") }, s:to_server())
    local s2 = t:connect()
    s2:from_client(top.frame(1, "x") .. top.frame(1, "y"))
    assert.same({ top.frame(1, "x"), top.frame(1, "y") }, s2:to_server())
    t:close()
  end)
end)

describe("the chain cache under churn", function()
  it("hands 300 opcodes, the keep-alive and '*' frames each their own chain, in any order", function()
    -- 300 keys over 64 slots: most frames evict another key's chain
    local t = testing.inline([[
      for op = 1, 300 do
        if op % 3 == 0 then -- several functions
          gw.on("client", op, function(pkt) pkt:set_body(gw.writer():bytes(pkt:body() .. "<")) end)
        end
        gw.on("client", op, function(pkt) pkt:set_body(gw.writer():bytes(pkt:body() .. op)) end)
      end
      gw.on("client", "KEEPALIVE", function() return gw.DROP end)
      gw.on("server", "*", function(pkt) pkt:set_body(gw.writer():bytes("s" .. pkt.opcode)) end)
    ]], { protocol = "top" })
    local s = t:connect()
    local seed = 12345
    local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end
    for _ = 1, 20 do
      local read, want, back, wantback = "", {}, "", {}
      for _ = 1, 50 do
        local op = rnd(310) -- 301..310: no chain of their own, no "*" on the client side
        if op == 310 then
          read = read .. top.keepalive
        else
          read = read .. top.frame(op, "")
          want[#want + 1] = top.frame(op, op > 300 and "" or (op % 3 == 0 and "<" or "") .. op)
        end
        local sop = rnd(400)
        back = back .. top.frame(sop, "")
        wantback[#wantback + 1] = top.frame(sop, "s" .. sop)
      end
      s:from_client(read)
      s:from_server(back)
      assert.same(want, s:to_server())
      assert.same(wantback, s:to_client())
    end
    assert.equal(0, t:stats().errors)
    t:close()
  end)
end)

describe("a one-function chain on the fast path", function()
  it("takes every result a handler may return", function()
    local t = host([[
      gw.on("client", 1, function(pkt)
        local what = pkt:body()
        if what == "drop" then return gw.DROP end
        if what == "pass" then return gw.PASS end
        if what == "str" then return gw.packet(2, gw.writer():bytes("S")) end
        if what == "copy" then
          local c = pkt:copy()
          c:set_body(gw.writer():bytes("C"))
          return c
        end
        if what == "self" then return pkt end
        if what == "bad" then return 42 end
        if what == "err" then error("boom") end
        if what == "false" then return false end
      end)
    ]], { on_error = "drop" })
    local s = t:connect()
    local order = { "plain", "drop", "pass", "str", "copy", "self", "bad", "err", "false", "plain" }
    for round = 1, 3 do
      local all = ""
      for _, w in ipairs(order) do all = all .. top.frame(1, w) end
      if round == 2 then
        for _, w in ipairs(order) do s:from_client(top.frame(1, w)) end
      else
        s:from_client(all)
      end
      assert.same({ top.frame(1, "plain"), top.frame(1, "pass"), top.frame(2, "S"), top.frame(1, "C"),
                    top.frame(1, "self"), top.frame(1, "plain") }, s:to_server())
    end
    local st = t:stats()
    assert.equal(30, st.frames)
    assert.equal(9, st.errors) -- "bad", "err" and "false" (a boolean), three times
    assert.equal(12, st.dropped) -- "drop", "bad", "err", "false"
    assert.equal(6, st.replaced) -- "str", "copy"
    assert.is_true(t:logged("handler returned number"))
    assert.is_true(t:logged("boom"))
    t:close()
  end)

  it("closes the session and runs no handler for the rest of the read", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        gw.shared.n = (gw.shared.n or 0) + 1
        if pkt:body() == "close" then session:close("bye") end
        if pkt:body() == "CLOSE" then return gw.CLOSE end
      end)
      gw.admin("n", function() return { n = gw.shared.n } end)
    ]])
    local function count() return require("cjson").decode(select(2, t:admin("n", "GET"))).n or 0 end
    for _, how in ipairs{ "close", "CLOSE" } do
      local before = count()
      local s = t:connect()
      s:from_client(top.frame(1, "a") .. top.frame(1, "b")) -- the session in Lua, the chain cached
      s:from_client(top.frame(1, how) .. top.frame(1, "c") .. top.frame(1, "d"))
      local sent = s:to_server()
      assert.is_not_nil(s:closed())
      -- "c" and "d" come after the session is gone: no handler sees them
      assert.equal(3, count() - before)
      for _, f in ipairs(sent) do assert.is_not_true(body_text(f) == "c" or body_text(f) == "d") end
    end
    t:close()
  end)

  it("waits (session:sleep) and keeps the order, again and again", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        local b = pkt:body()
        if b:sub(1, 1) == "z" then session:sleep(10) end
        pkt:set_body(gw.writer():bytes(b .. "!"))
      end)
    ]])
    local s = t:connect()
    for _ = 1, 3 do
      s:from_client(top.frame(1, "a") .. top.frame(1, "zb") .. top.frame(1, "c"))
      s:from_client(top.frame(1, "d"))
      assert.same({ top.frame(1, "a!") }, s:to_server())
      t:advance(10)
      assert.same({ top.frame(1, "zb!"), top.frame(1, "c!"), top.frame(1, "d!") }, s:to_server())
    end
    t:close()
  end)

  it("keeps the instruction limit and the stack depth limit", function()
    local t = host([[
      gw.on("client", 1, function(pkt)
        if pkt:body() == "loop" then while true do end end
        if pkt:body() == "deep" then local function f(n) return 1 + f(n + 1) end f(1) end
      end)
    ]], { instructions = 100000, on_error = "drop" })
    local s = t:connect()
    for _ = 1, 3 do
      s:from_client(top.frame(1, "a") .. top.frame(1, "loop") .. top.frame(1, "deep") .. top.frame(1, "b"))
      assert.same({ top.frame(1, "a"), top.frame(1, "b") }, s:to_server())
    end
    assert.equal(6, t:stats().errors)
    assert.is_true(t:logged("instruction limit exceeded"))
    assert.is_true(t:logged("stack depth limit exceeded"))
    t:close()
  end)
end)

describe("in-place edits", function()
  it("are checked when they touch the length field, not otherwise", function()
    local t = host([[
      gw.on("client", 1, function(pkt)
        local b = pkt:body()
        if b == "len+" then pkt:set_u16(0, #pkt + 4) end      -- promises more bytes
        if b == "len-" then pkt:set_u8(1, #pkt - 1) end       -- the low byte alone
        if b == "len0" then pkt:set_u32(0, 0) end             -- the field and the header after it
        if b == "lenok" then pkt:set_u16(0, #pkt - 1) pkt:set_u16(0, #pkt) end
        if b == "op" then pkt:set_u16(6, 77) end              -- the opcode
        if b == "hdr" then pkt:set_u32(2, 0x12345678) end     -- the header's other bytes
        if b == "body" then pkt:set_u8(8, 0x41) end
      end)
    ]], { on_error = "pass" })
    local s = t:connect()
    local function hdr(f) return f:sub(1, 2) .. "\x12\x34\x56\x78" .. f:sub(7) end
    for _ = 1, 3 do
      s:from_client(top.frame(1, "len+") .. top.frame(1, "len-") .. top.frame(1, "len0")
                    .. top.frame(1, "lenok") .. top.frame(1, "op") .. top.frame(1, "hdr")
                    .. top.frame(1, "body"))
      assert.same({ top.frame(1, "lenok"), top.frame(77, "op"), hdr(top.frame(1, "hdr")),
                    top.frame(1, "Aody") }, s:to_server())
    end
    assert.equal(9, t:stats().errors)
    assert.equal(9, t:stats().dropped)
    assert.is_true(t:logged("handler edits broke the frame"))
    t:close()
  end)

  it("of a copy's length field are refused when it is returned or sent", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        local c = pkt:copy()
        c:set_u16(0, #c + 2)
        if pkt:body() == "send" then session:send_to_server(c) return gw.DROP end
        return c
      end)
    ]], { on_error = "drop" })
    local s = t:connect()
    for _ = 1, 3 do
      s:from_client(top.frame(1, "ret") .. top.frame(1, "send"))
      assert.same({}, s:to_server())
    end
    assert.equal(6, t:stats().errors)
    assert.is_true(t:logged("not one frame"))
    t:close()
  end)
end)

describe("per-opcode counters", function()
  it("stay exact on the fast path and its slow first frames", function()
    local t = host([[
      gw.on("client", 1, function(pkt)
        local b = pkt:body()
        if b == "d" then return gw.DROP end
        if b == "r" then return gw.packet(1, gw.writer():bytes("R")) end
        if b == "e" then error("x") end
      end)
      gw.on("server", 1, function() return gw.DROP end)
      gw.on("client", "*", function() end)
    ]] .. OPSTATS, { on_error = "pass" })
    local n = 0
    for _ = 1, 2 do
      local s = t:connect()
      for _ = 1, 3 do
        s:from_client(top.frame(1, "p") .. top.frame(1, "d") .. top.frame(1, "r") .. top.frame(1, "e")
                      .. top.frame(2, "") .. top.keepalive)
        s:from_server(top.frame(1, ""))
        n = n + 1
      end
    end
    local st = opstats(t)
    assert.same({ frames = 4 * n, dropped = n, replaced = n, errors = n }, st.client["1"])
    assert.same({ frames = n, dropped = 0, replaced = 0, errors = 0 }, st.client["2"])
    assert.same({ frames = n, dropped = 0, replaced = 0, errors = 0 }, st.client.none)
    assert.same({ frames = n, dropped = n, replaced = 0, errors = 0 }, st.server["1"])
    assert.equal(7 * n, st.frames)
    assert.equal(2 * n, st.dropped)
    assert.equal(n, st.replaced)
    assert.equal(n, st.errors)
    t:close()
  end)
end)

describe("a reload while a fast-path frame waits", function()
  it("finishes that frame with the old chain, the next ones with the new", function()
    local function v(n)
      return string.format([[
        local gw = require "gangway"
        gw.on("client", 1, function(pkt, session)
          if pkt:body() == "z" then session:sleep(10) end
          if pkt:body() == "e" then session:sleep(10) error("late") end
          pkt:set_body(gw.writer():bytes(pkt:body() .. "%d"))
        end)
      ]], n)
    end
    local t = testing.new{ source = v(1), on_error = "close" }
    local s, b = t:connect(), t:connect()
    s:from_client(top.frame(1, "a") .. top.frame(1, "a") .. top.frame(1, "z") .. top.frame(1, "a"))
    b:from_client(top.frame(1, "a") .. top.frame(1, "a"))
    assert.is_true(t:reload{ source = v(2) })
    b:from_client(top.frame(1, "a") .. top.frame(1, "a"))
    assert.same({ top.frame(1, "a1"), top.frame(1, "a1"), top.frame(1, "a2"), top.frame(1, "a2") },
                b:to_server())
    t:advance(10)
    -- the frame behind the waiting one is handled after the reload: new chain
    assert.same({ top.frame(1, "a1"), top.frame(1, "a1"), top.frame(1, "z1"), top.frame(1, "a2") },
                s:to_server())
    s:from_client(top.frame(1, "e") .. top.frame(1, "a"))
    t:advance(10)
    assert.same({}, s:to_server())
    assert.is_not_nil(s:closed())
    assert.is_true(t:logged("late"))
    b:from_client(top.frame(1, "a"))
    assert.same({ top.frame(1, "a2") }, b:to_server())
    t:close()
  end)
end)
