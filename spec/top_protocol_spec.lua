-- top_protocol_spec.lua: the Tales of Pirates protocol module
-- (protocols/top/init.lua, docs/protocols.md "The protocol module"):
-- session.player from CM_LOGIN / MC_LOGIN, kept across reloads and set
-- for sessions that logged in before any script loaded; gw.players and
-- gw.player; chat commands that never reach the server; session:tell's
-- exact bytes; keep-alives left alone.
local testing = require "gangway.testing"
local top = testing.top

local function unhex(s)
  return (s:gsub("%s", ""):gsub("..", function(h) return string.char(tonumber(h, 16)) end))
end

local function login(account, password)
  return top.frame(431, top.writer():str(account):str(password or "secret")
    :str("00-00-00-00-00-00"):u16(136):u16(911))
end

local function login_ok(id) return top.frame(931, top.writer():u16(0):u32(id)) end
local function login_failed(code) return top.frame(931, top.writer():u16(code)) end

-- Logs s in as account with player id; returns what passed each way.
local function log_in(s, account, id)
  s:from_client(login(account))
  s:from_server(login_ok(id))
  return s:to_server(), s:to_client()
end

-- A script with the commands the specs use.
local COMMANDS = [[
local gw = require "gangway"
gw.command("/whoami", function(session)
  local p = session.player
  session:tell(p and (p.name .. " " .. p.id) or "nobody")
end)
gw.command("/online", function(session)
  local names = {}
  for _, s in ipairs(gw.players()) do names[#names + 1] = s.player.name end
  session:tell(table.concat(names, ","))
end)
gw.command("/find", function(session, args)
  local s = gw.player(args)
  session:tell(s and (args .. " is session " .. s.id) or (args .. " is not online"))
end)
gw.command("/fail", function(session) error("broken command") end)
]]

describe("the top protocol module", function()
  it("sets session.player when the server accepts the login, never keeping the password", function()
    local t = testing.new{ protocol = "top", source = COMMANDS }
    local s = t:connect()
    local up, down = log_in(s, "bot1", 1001)
    assert.same({ login("bot1") }, up)
    assert.same({ login_ok(1001) }, down)
    s:from_client(top.say("/whoami"))
    assert.same({ top.server_say(0, "[proxy]", "bot1 1001") }, s:to_client())
    assert.same({}, s:to_server())
    t:close()
    local t2 = testing.inline([[
      gw.on("client", "CM_SAY", function(pkt, session)
        local keys = {}
        for k, v in pairs(session.player) do keys[#keys + 1] = k .. "=" .. tostring(v) end
        table.sort(keys)
        session:tell(table.concat(keys, " "))
        return gw.DROP
      end)
    ]], { protocol = "top" })
    local s2 = t2:connect()
    log_in(s2, "bot2", 7)
    s2:from_client(top.say("x"))
    assert.same({ top.server_say(0, "[proxy]", "id=7 name=bot2") }, s2:to_client())
    t2:close()
  end)

  it("sets no player for a failed login, and forgets its account", function()
    local t = testing.new{ protocol = "top", source = COMMANDS }
    local s = t:connect()
    s:from_client(login("bot1"))
    s:from_server(login_failed(3))
    -- an MC_LOGIN ok with no CM_LOGIN before it names nobody
    s:from_server(login_ok(5))
    s:from_client(top.say("/whoami"))
    local out = s:to_client()
    assert.same(top.server_say(0, "[proxy]", "nobody"), out[#out])
    s:from_client(login("bot1"))
    s:from_server(login_ok(6))
    s:from_client(top.say("/whoami"))
    out = s:to_client()
    assert.same(top.server_say(0, "[proxy]", "bot1 6"), out[#out])
    t:close()
  end)

  it("gives a player to sessions that logged in before any script, kept across reloads", function()
    local t = testing.new{ protocol = "top" }
    -- the module alone pulls only the frames it needs into Lua
    assert.is_true(t:want("client", 431))
    assert.is_true(t:want("server", 931))
    assert.is_true(t:want("client", 1))
    assert.is_false(t:want("server", 501))
    assert.is_false(t:want("client", 6))
    assert.is_false(t:want("client"))
    assert.is_false(t:want("server"))
    local early = t:connect()
    log_in(early, "early", 11)
    early:from_client(top.say("/whoami"))
    assert.same({ top.say("/whoami") }, early:to_server()) -- no command yet: it passes
    assert.is_true(t:reload{ source = COMMANDS })
    early:from_client(top.say("/whoami"))
    assert.same({ top.server_say(0, "[proxy]", "early 11") }, early:to_client())
    assert.same({}, early:to_server())
    assert.is_true(t:reload{ source = COMMANDS })
    early:from_client(top.say("/whoami"))
    assert.same({ top.server_say(0, "[proxy]", "early 11") }, early:to_client())
    t:close()
  end)

  it("names the account of the last CM_LOGIN before MC_LOGIN, across a reload, and nobody else", function()
    local t = testing.new{ protocol = "top", source = COMMANDS }
    local function whoami(s)
      s:to_client() -- the MC_LOGIN
      s:from_client(top.say("/whoami"))
      return t:parse(s:to_client()[1], "server"):decode().text
    end
    -- a reload between the two keeps the account
    local a = t:connect()
    a:from_client(login("alice"))
    assert.is_true(t:reload())
    a:from_server(login_ok(1))
    assert.equal("alice 1", whoami(a))
    -- an MC_LOGIN without a CM_LOGIN names nobody, and one more changes nothing
    local b = t:connect()
    b:from_server(login_ok(2))
    assert.equal("nobody", whoami(b))
    a:from_server(login_ok(3))
    assert.equal("alice 1", whoami(a))
    -- two CM_LOGINs before a reply: which one the MC_LOGIN answers is not
    -- known (a client that sends its own account, then a game master's
    -- with a wrong password, would be named the game master by the first
    -- reply): nobody, unless both name the same account
    local c = t:connect()
    c:from_client(login("evil"))
    c:from_client(login("gm1", "wrong"))
    c:from_server(login_ok(4))
    c:from_server(login_failed(1))
    assert.equal("nobody", whoami(c))
    c:from_client(login("evil"))
    c:from_server(login_ok(4))
    assert.equal("evil 4", whoami(c))
    local c2 = t:connect()
    c2:from_client(login("again"))
    c2:from_client(login("again"))
    c2:from_server(login_ok(6))
    c2:from_server(login_ok(6))
    assert.equal("again 6", whoami(c2))
    -- a CM_LOGIN that does not fit names nobody, even if accepted
    local d = t:connect()
    d:from_client(top.frame(431, "\0"))
    d:from_server(login_ok(5))
    assert.equal("nobody", whoami(d))
    -- a session that ends between the two is no player
    local e = t:connect()
    e:from_client(login("gone"))
    e:close()
    a:from_client(top.say("/online"))
    assert.same({ top.server_say(0, "[proxy]", "alice,evil,again") }, a:to_client())
    t:close()
  end)

  it("finds players with gw.players (oldest first) and gw.player(name)", function()
    local t = testing.new{ protocol = "top", source = COMMANDS }
    local a, b, c = t:connect(), t:connect(), t:connect()
    log_in(b, "bob", 2)
    log_in(a, "alice", 1)
    c:from_client(login("carol")) -- not accepted yet: no player
    a:from_client(top.say("/online"))
    assert.same({ top.server_say(0, "[proxy]", "alice,bob") }, a:to_client())
    a:from_client(top.say("/find bob"))
    assert.same({ top.server_say(0, "[proxy]", "bob is session 2") }, a:to_client())
    a:from_client(top.say("/find carol"))
    assert.same({ top.server_say(0, "[proxy]", "carol is not online") }, a:to_client())
    b:close()
    a:from_client(top.say("/online"))
    assert.same({ top.server_say(0, "[proxy]", "alice") }, a:to_client())
    -- one account logged in twice: both are players, gw.player gives the
    -- older session until it ends
    local d, e = t:connect(), t:connect()
    log_in(e, "dup", 5)
    log_in(d, "dup", 4)
    a:from_client(top.say("/online"))
    assert.same({ top.server_say(0, "[proxy]", "alice,dup,dup") }, a:to_client())
    a:from_client(top.say("/find dup"))
    assert.same({ top.server_say(0, "[proxy]", "dup is session 4") }, a:to_client())
    d:close()
    a:from_client(top.say("/find dup"))
    assert.same({ top.server_say(0, "[proxy]", "dup is session 5") }, a:to_client())
    t:close()
  end)

  it("never forwards a line a command took; other lines, /gm ones included, pass", function()
    local t = testing.new{ protocol = "top", source = COMMANDS }
    local s = t:connect()
    log_in(s, "bot1", 1)
    for _, line in ipairs({ "/whoami", "/find  bot1  ", "/fail" }) do
      s:from_client(top.say(line))
      assert.same({}, s:to_server())
    end
    assert.same({ top.server_say(0, "[proxy]", "bot1 1"),
                  top.server_say(0, "[proxy]", "bot1 is session 1") }, s:to_client())
    assert.is_true(t:logged("test: command /fail: ", "error"))
    assert.is_true(t:logged("broken command", "error"))
    for _, line in ipairs({ "/gm make 100", "hello /whoami", "/whoamii", "/", "" }) do
      s:from_client(top.say(line))
      assert.same({ top.say(line) }, s:to_server())
    end
    assert.is_nil(s:closed())
    t:close()
  end)

  it("tells with an MC_SAY from speaker 0 named [proxy], byte for byte", function()
    local t = testing.new{ protocol = "top", source = [[
      local gw = require "gangway"
      gw.command("/hi", function(session) session:tell("hi") end)
    ]] }
    local s = t:connect()
    s:from_client(top.say("/hi"))
    assert.same({ unhex("00 1b 80 00 00 00 01 f5 00 00 00 00 00 08 5b 70 72 6f 78 79 5d 00 00 03 68 69 00") },
                s:to_client())
    t:close()
  end)

  it("refuses what only the module may do, and duplicate commands", function()
    for _, case in ipairs({
      { [[gw.command("/a", print) gw.command("/a", print)]], "gw.command: /a is registered already" },
      { [[gw.command("online", print)]], 'gw.command: a command is a sign and a word, like "/online"' },
      { [[gw.on_tell(print)]], "gw.on_tell: only the listener's protocol module (its init.lua) may call it" },
      { [[gw.on_connect(function(s) gw.set_player(s, {}) end)]], nil },
    }) do
      local h, err = testing.try{ protocol = "top", source = "local gw = require 'gangway'\n" .. case[1] }
      if case[2] then
        assert.is_nil(h)
        assert.matches(case[2], err, 1, true)
      else
        local s = h:connect()
        assert.is_falsy(s:refused())
        assert.is_true(h:logged("gw.set_player: only the listener's protocol module", "error"))
        h:close()
      end
    end
    local t = testing.inline([[
      gw.on("client", 1, function(pkt, session)
        local ok, err = pcall(function() session.player = { name = "x" } end)
        session:send_to_client(gw.packet(501, gw.writer():u32(0):str(""):str(err)))
        local ok2, err2 = pcall(session.tell, session, "x")
        session:send_to_client(gw.packet(501, gw.writer():u32(0):str(""):str(err2)))
        return gw.DROP
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    local out = s:to_client()
    assert.matches("session.player is set by the protocol module", (top.parse(out[1]):str(15)))
    assert.matches("session:tell: listener test has no protocol module that tells",
                   (top.parse(out[2]):str(15)))
    t:close()
  end)

  it("leaves keep-alives alone: they pass both ways and never enter Lua", function()
    local t = testing.new{ protocol = "top", source = COMMANDS }
    assert.is_false(t:want("client"))
    assert.is_false(t:want("server"))
    local s = t:connect()
    s:from_client("\0\2")
    s:from_server("\0\2")
    assert.same({ "\0\2" }, s:to_server())
    assert.same({ "\0\2" }, s:to_client())
    assert.equal(0, t:stats().frames)
    t:close()
  end)
end)
