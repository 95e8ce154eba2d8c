-- session_spec.lua: the session object: fields, state, on_connect and
-- on_close, closing from a script, gw.sessions(), and use after the end.
local testing = require "gangway.testing"
local top = testing.top

local host = testing.inline

-- Reports a value back to the spec as the body of an MC_SAY to the client.
local REPORT = [[
  local function report(session, ...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    session:send_to_client(gw.packet(999, table.concat(parts, "|")))
  end
]]

local function reports(s)
  local out = {}
  for _, f in ipairs(s:to_client()) do
    local p = top.parse(f)
    if p.opcode == 999 then out[#out + 1] = p:body() end
  end
  return out
end

describe("session", function()
  it("has id, client, upstream, listener, closed", function()
    local t = host(REPORT .. [[
      gw.on("client", 1, function(pkt, session)
        report(session, session.id, session.client, session.upstream,
               session.listener, session.closed, tostring(session))
      end)
    ]], { listener = "game" })
    t:connect("10.0.0.1:1")
    local s = t:connect("[::1]:2345")
    s:from_client(top.say("x"))
    assert.same({ "2|[::1]:2345|127.0.0.1:2|game|false|gangway.session 2 ([::1]:2345)" },
                reports(s))
    t:close()
  end)

  it("keeps per-session state across frames, and apart from others", function()
    local t = host(REPORT .. [[
      gw.on("client", 1, function(pkt, session)
        local st = session.state
        st.n = (st.n or 0) + 1
        report(session, st.n)
      end)
    ]])
    local a, b = t:connect(), t:connect()
    a:from_client(top.say("x") .. top.say("x"))
    b:from_client(top.say("x"))
    a:from_client(top.say("x"))
    assert.same({ "1", "2", "3" }, reports(a))
    assert.same({ "1" }, reports(b))
    t:close()
  end)

  it("cannot have its fields set", function()
    local t = host([[gw.on("client", 1, function(pkt, session) session.id = 5 end)]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.is_true(t:logged("session fields cannot be set", "error"))
    t:close()
  end)

  it("runs on_connect, which can send and refuse", function()
    local t = host([[
      gw.on_connect(function(session)
        session:send_to_client(gw.packet(501, "welcome " .. session.client))
        if session.client:find("^6%.6%.6%.6:") then return gw.CLOSE end
      end)
    ]])
    local ok = t:connect("1.2.3.4:5")
    assert.is_false(ok:refused())
    assert.same({ top.frame(501, "welcome 1.2.3.4:5") }, ok:to_client())
    local bad = t:connect("6.6.6.6:7")
    assert.is_true(bad:refused())
    assert.same({ top.frame(501, "welcome 6.6.6.6:7") }, bad:to_client())
    t:close()
  end)

  it("refuses on an on_connect error only when on_error is close", function()
    for policy, refused in pairs({ pass = false, drop = false, close = true }) do
      local t = host([[gw.on_connect(function() error("no") end)]], { on_error = policy })
      assert.equal(refused, t:connect():refused(), policy)
      assert.is_true(t:logged("on_connect of session 1: ", "error"))
      t:close()
    end
  end)

  it("runs on_close with the reason, once", function()
    local t = host([[
      gw.on_close(function(session, reason)
        gw.shared.closed = (gw.shared.closed or "") .. session.id .. ":" .. reason .. ";"
      end)
      gw.on("client", 1, function(pkt, session)
        if pkt:str(8) == "quit" then session:close("asked to quit") end
        if pkt:str(8) == "report" then session:send_to_client(gw.packet(999, gw.shared.closed or "")) end
      end)
    ]])
    local a, b, c = t:connect(), t:connect(), t:connect()
    a:from_client(top.say("quit"))
    assert.equal("asked to quit", a:closed())
    b:close("client closed")
    b:close("again")
    c:from_client(top.say("report"))
    assert.same({ "1:asked to quit;2:client closed;" }, reports(c))
    t:close()
  end)

  it("session:close passes the frame being handled, then closes", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        session:send_to_client(gw.packet(501, "bye"))
        session:close("logout")
        assert(session.closed)
        assert(session:send_to_client(gw.packet(501, "lost")) == false)
      end)
      gw.on("client", 1, function() error("not after a close") end)
    ]])
    local s = t:connect()
    s:from_client(top.say("logout") .. top.say("late"))
    assert.same({ top.say("logout") }, s:to_server())
    assert.same({ top.frame(501, "bye") }, s:to_client())
    assert.equal("logout", s:closed())
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  it("can close another session", function()
    local t = host([[
      gw.on("client", 1, function(pkt, session)
        for _, other in ipairs(gw.sessions()) do
          if other ~= session then other:close("kicked by " .. session.id) end
        end
      end)
    ]])
    local a, b, c = t:connect(), t:connect(), t:connect()
    b:from_client(top.say("kick"))
    assert.equal("kicked by 2", a:closed())
    assert.equal("kicked by 2", c:closed())
    assert.is_nil(b:closed())
    t:close()
  end)

  it("lists live sessions of its listener, oldest first", function()
    local t = host(REPORT .. [[
      gw.on("client", 1, function(pkt, session)
        local ids = {}
        for i, s in ipairs(gw.sessions()) do ids[i] = s.id end
        report(session, table.concat(ids, ","))
      end)
    ]])
    local a, b, c = t:connect(), t:connect(), t:connect()
    b:close()
    a:from_client(top.say("x"))
    assert.same({ "1,3" }, reports(a))
    t:close()
  end)

  it("raises clear errors once ended, but keeps its fields readable", function()
    local t = host(REPORT .. [[
      local saved
      gw.on("client", 1, function(pkt, session) saved = session end)
      gw.on("client", 2, function(pkt, session)
        local ok, err = pcall(saved.send_to_client, saved, gw.packet(1, ""))
        local ok2, err2 = pcall(saved.after, saved, 10, print)
        report(session, saved.id, saved.closed, saved.state.x, ok, err, ok2, err2,
               saved:close(), tostring(saved))
      end)
    ]])
    local a, b = t:connect(), t:connect()
    a:from_client(top.say("x"))
    a:close()
    b:from_client(top.frame(2, ""))
    local r = reports(b)[1]
    assert.matches("^1|true|nil|false|[^|]*session:send_to_client: session 1 has ended|"
                   .. "false|[^|]*session:after: session 1 has ended|false|"
                   .. "gangway.session 1 %(127.0.0.1:50000, ended%)$", r)
    t:close()
  end)

  it("costs no Lua object when it never enters Lua", function()
    local t = host([[gw.on("client", 1, function() end)]])
    local base = t:stats().memory
    local ss = {}
    for i = 1, 200 do ss[i] = t:connect() end
    for i = 1, 200 do ss[i]:from_client(top.frame(2, "x")) end
    assert.is_true(t:stats().memory - base < 4096, t:stats().memory - base)
    for i = 1, 200 do ss[i]:close() end
    t:close()
  end)
end)
