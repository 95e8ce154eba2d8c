-- dispatch_spec.lua: which frames reach which handlers (gw.on with one
-- opcode, a list, "*"), in what order, what their results do, the relay's
-- want() test matching exactly, injected frames' order, and on_error.
local testing = require "gangway.testing"
local top = testing.top

local host = testing.inline

describe("gw.on", function()
  it("asks exactly for the frames handlers were registered for", function()
    local t = host([[
      gw.on("client", 1, function() end)
      gw.on("client", { 6, 431, 65535 }, function() end)
      gw.on("server", "*", function() end)
    ]])
    for op = 0, 65535 do
      local want = op == 1 or op == 6 or op == 431 or op == 65535
      if t:want("client", op) ~= want then
        error("client opcode " .. op .. ": want is " .. tostring(not want))
      end
    end
    assert.is_false(t:want("client", nil)) -- keep-alive: no "*" on client
    assert.is_true(t:want("server", 501))
    assert.is_true(t:want("server", nil))
    t:close()
  end)

  it("wants nothing when there are no handlers", function()
    local t = host("")
    assert.is_false(t:want("client", 1))
    assert.is_false(t:want("server", nil))
    local s = t:connect()
    s:from_client(top.say("x") .. top.keepalive)
    assert.same({ top.say("x"), top.keepalive }, s:to_server())
    assert.equal(0, t:stats().frames)
    t:close()
  end)

  it("runs handlers in registration order, '*' ones included", function()
    local t = host([[
      local function mark(tag)
        return function(pkt)
          local w = gw.writer():bytes(pkt:body()):bytes(tag)
          pkt:set_body(w)
        end
      end
      gw.on("client", "*", mark("a"))
      gw.on("client", 1, mark("b"))
      gw.on("client", "*", mark("c"))
      gw.on("client", { 1, 2 }, mark("d"))
    ]])
    local s = t:connect()
    s:from_client(top.frame(1, "") .. top.frame(2, "") .. top.frame(3, ""))
    assert.same({ top.frame(1, "abcd"), top.frame(2, "acd"), top.frame(3, "ac") },
                s:to_server())
    t:close()
  end)

  it("hands keep-alives to '*' handlers only", function()
    local t = host([[
      gw.on("client", "*", function(pkt)
        gw.shared.seen = (gw.shared.seen or "") .. tostring(pkt.opcode) .. ","
        if #pkt == 2 then return gw.DROP end
      end)
      gw.on("server", 501, function() end)
    ]])
    local s = t:connect()
    s:from_client(top.keepalive .. top.say("x"))
    s:from_server(top.keepalive)
    assert.same({ top.say("x") }, s:to_server())
    assert.same({ top.keepalive }, s:to_client())
    assert.equal(1, #s:dropped())
    t:close()
  end)

  it("rejects bad arguments while loading", function()
    for _, case in ipairs({
      { [[gw.on("both", 1, print)]], "bad argument #1 to 'on'" },
      { [[gw.on("client", 70000, print)]], "gw.on: opcode 70000 out of range 0..65535" },
      { [[gw.on("client", -1, print)]], "out of range" },
      { [[gw.on("client", {}, print)]], "empty list of opcodes" },
      { [[gw.on("client", {1, "x"}, print)]], "opcodes are integers" },
      { [[gw.on("client", 1, 2)]], "bad argument #3 to 'on'" },
    }) do
      local t, err = testing.try{ source = "local gw = require 'gangway'\n" .. case[1] }
      assert.is_nil(t)
      assert.matches("inline1.lua:2: ", err, 1, true)
      assert.matches(case[2], err, 1, true)
    end
  end)

  it("only registers while the script loads", function()
    local t = host([[
      gw.on("client", 1, function()
        local ok, err = pcall(gw.on, "client", 2, print)
        assert(not ok and err:find("handlers are registered while the script loads"))
        ok, err = pcall(gw.on_connect, print)
        assert(not ok and err:find("while the script loads"))
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.equal(0, t:stats().errors)
    assert.is_false(t:want("client", 2))
    t:close()
  end)

  it("needs '*' on a framing without opcodes", function()
    local t, err = testing.try{ framing = "u32be", source = [[
      require("gangway").on("client", 1, print)
    ]] }
    assert.is_nil(t)
    assert.matches("the u32be framing has no opcode", err, 1, true)
  end)
end)

describe("handler results", function()
  it("pass, drop and close", function()
    local t = host([[
      gw.on("client", 1, function() return gw.PASS end)
      gw.on("client", 2, function() return gw.DROP end)
      gw.on("client", 3, function() return gw.CLOSE end)
      assert(tostring(gw.DROP) == "gw.DROP")
    ]])
    local s = t:connect()
    s:from_client(top.frame(1, "a") .. top.frame(2, "b") .. top.frame(1, "c"))
    assert.same({ top.frame(1, "a"), top.frame(1, "c") }, s:to_server())
    assert.same({ top.frame(2, "b") }, s:dropped())
    s:from_client(top.frame(3, "") .. top.frame(1, "after"))
    assert.same({}, s:to_server())
    assert.equal("closed by a handler", s:closed())
    local st = t:stats()
    assert.equal(4, st.frames)
    assert.equal(2, st.dropped)
    t:close()
  end)

  it("a drop ends the chain", function()
    local t = host([[
      gw.on("client", 1, function() return gw.DROP end)
      gw.on("client", 1, function() error("never runs") end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("later handlers see an earlier one's replacement", function()
    local t = host([[
      gw.on("client", 1, function() return gw.packet(2, "new") end)
      gw.on("client", 1, function(pkt)
        assert(pkt.opcode == 2 and pkt:body() == "new")
        pkt:set_u8(8, 0x4e)
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.frame(2, "New") }, s:to_server())
    t:close()
  end)
end)

describe("injected frames", function()
  it("go out after the frame being handled, in the order sent", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        session:send_to_server(gw.packet(10, "1"))
        session:send_to_client(gw.packet(11, "2"))
        session:send_to_server(gw.packet(12, "3"))
        pkt:set_body("edited")
      end)
    ]])
    local s = t:connect()
    s:from_client(top.frame(1, "") .. top.frame(5, "next"))
    assert.same({ top.frame(1, "edited"), top.frame(10, "1"), top.frame(12, "3"),
                  top.frame(5, "next") }, s:to_server())
    assert.same({ top.frame(11, "2") }, s:to_client())
    assert.equal(3, t:stats().injected)
    t:close()
  end)

  it("go out even when the frame is dropped, and before a close", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        session:send_to_client(gw.packet(501, "bye"))
        return gw.CLOSE
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.frame(501, "bye") }, s:to_client())
    assert.same({}, s:to_server())
    assert.equal("closed by a handler", s:closed())
    t:close()
  end)

  it("must be one valid frame for their direction", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        local ok, err = pcall(session.send_to_server, session, "\0\1")
        assert(not ok and err:find("session:send_to_server: not a valid top frame"), err)
        -- 20 KiB: fine toward the client (64 KiB), too big toward the server (16 KiB)
        local big = gw.packet(9, string.rep("x", 20000))
        assert(session:send_to_client(big))
        ok, err = pcall(session.send_to_server, session, big)
        assert(not ok and err:find("above max_frame"), err)
        ok, err = pcall(session.send_to_server, session, {})
        assert(not ok and err:find("frame %(string or packet%) expected"), err)
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
    assert.equal(1, #s:to_client())
    t:close()
  end)
end)

describe("on_error", function()
  local source = [[
    gw.on("client", 1, function(pkt)
      pkt:set_u8(8, 0x55)
      error("boom")
    end)
  ]]

  it("pass: the frame goes on as it stands", function()
    local t = host(source, { on_error = "pass" })
    local s = t:connect()
    s:from_client(top.say("hi"))
    assert.same({ "\0\13\128\0\0\0\0\1\85\3hi\0" }, s:to_server())
    assert.is_true(t:logged("client frame 1 of session 1: ", "error"))
    assert.is_true(t:logged("inline1.lua:4: boom", "error"))
    assert.is_true(t:logged("stack traceback:", "debug"))
    assert.equal(1, t:stats().errors)
    t:close()
  end)

  it("drop: the frame is dropped, the session goes on", function()
    local t = host(source, { on_error = "drop" })
    local s = t:connect()
    s:from_client(top.say("hi") .. top.frame(2, "ok"))
    assert.same({ top.frame(2, "ok") }, s:to_server())
    assert.is_nil(s:closed())
    t:close()
  end)

  it("close: the session is closed, others never notice", function()
    local t = host(source, { on_error = "close" })
    local s, other = t:connect(), t:connect()
    s:from_client(top.frame(2, "first") .. top.say("hi") .. top.frame(2, "late"))
    assert.same({ top.frame(2, "first") }, s:to_server())
    assert.equal("handler error", s:closed())
    other:from_client(top.frame(2, "fine"))
    assert.same({ top.frame(2, "fine") }, other:to_server())
    t:close()
  end)

  it("logs errors from error() with a table value clearly", function()
    local t = host([[gw.on("client", 1, function() error({}) end)]])
    local s = t:connect()
    s:from_client(top.say("hi"))
    assert.is_true(t:logged("(error object is a table value)", "error"))
    t:close()
  end)

  it("does not flood the log", function()
    local t = host([[gw.on("client", 1, function() error("again") end)]])
    local s = t:connect()
    for _ = 1, 100 do s:from_client(top.say("hi")) end
    assert.equal(100, t:stats().errors)
    assert.equal(20, #t:logs("error"))
    t:advance(1000)
    s:from_client(top.say("hi"))
    assert.is_true(t:logged("(80 more errors were not logged)", "error"))
    t:close()
  end)
end)

describe("gw.stats", function()
  it("counts per opcode", function()
    local t = host([[
      gw.on("client", 1, function() end)
      gw.on("client", 2, function() return gw.DROP end)
      gw.on("server", "*", function() end)
      gw.on("client", 3, function(pkt, session)
        local st = gw.stats()
        local c = st.opcodes.client
        session:send_to_client(gw.packet(900, gw.writer():u32(c[1].frames)
          :u32(c[2].dropped):u32(st.opcodes.server.none.frames):u32(st.frames)))
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("a") .. top.say("b") .. top.frame(2, ""))
    s:from_server(top.keepalive)
    s:from_client(top.frame(3, ""))
    local p = top.parse(s:to_client()[2])
    assert.equal(900, p.opcode)
    assert.same({ 2, 1, 1, 5 }, { p:u32(8), p:u32(12), p:u32(16), p:u32(20) })
    t:close()
  end)
end)

describe("a failing handler", function()
  it("sends nothing it queued before failing", function()
    local t = testing.inline([[
      gw.on("client", 1, function(pkt, session)
        session:send_to_client(gw.packet(501, "part 1"))
        error("failed before part 2")
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({}, s:to_client())
    assert.same({ top.say("x") }, s:to_server())
    assert.equal(0, t:stats().injected)
    t:close()
  end)
end)
