-- admin_commands_spec.lua: scripts/admin_commands.lua, through the top
-- protocol module: /kick and /ban from a game master close the player's
-- session, a ban refuses the account's next logins before the server sees
-- them, other players may not use the commands, and none of the command
-- lines reach the server.
local testing = require "gangway.testing"
local top = testing.top

describe("admin_commands.lua", function()
  local t
  local SCRIPTS = { "scripts/admin_commands.lua" }
  before_each(function()
    t = testing.new{ protocol = "top", scripts = SCRIPTS }
  end)
  after_each(function() t:close() end)

  local function login_frame(name)
    return t:frame("CM_LOGIN", { account = name, password = "pw", mac = "00", version = 136,
                                 marker = 911 })
  end
  local id = 1000
  -- A session whose login the server accepted, as player `name`.
  local function player(name)
    local s = t:connect()
    s:from_client(login_frame(name))
    assert.same({ login_frame(name) }, s:to_server())
    id = id + 1
    s:from_server(t:frame("MC_LOGIN", { error = 0, player = id }))
    s:to_client()
    return s
  end
  -- The texts the proxy told a session, in order.
  local function told(s)
    local texts = {}
    for _, f in ipairs(s:to_client()) do
      local say = t:parse(f, "server"):decode()
      assert.equal(0, say.speaker)
      assert.equal("[proxy]", say.name)
      texts[#texts + 1] = say.text
    end
    return texts
  end

  it("/kick from a game master closes the player's session", function()
    local gm, bob, ann = player("gm1"), player("bob"), player("ann")
    gm:from_client(top.say("/kick bob"))
    assert.same({}, gm:to_server())
    assert.same({ "bob kicked" }, told(gm))
    assert.same({ "you were kicked by gm1" }, told(bob))
    assert.equal("kicked by gm1", bob:closed())
    assert.is_nil(ann:closed())
    assert.same({}, ann:to_client())
    gm:from_client(top.say("/kick bob"))
    assert.same({ "bob is not online" }, told(gm))
  end)

  it("refuses players who are not game masters, and says how to use it", function()
    local bob, ann = player("bob"), player("ann")
    bob:from_client(top.say("/kick ann"))
    assert.same({}, bob:to_server())
    assert.same({ "you are not allowed to do that" }, told(bob))
    assert.is_nil(ann:closed())
    local gm = player("gm1")
    gm:from_client(top.say("/ban"))
    assert.same({ "usage: /ban NAME" }, told(gm))
    gm:from_client(top.say("/ban two names"))
    assert.same({ "usage: /ban NAME" }, told(gm))
    -- before its login, nobody is a game master
    local anon = t:connect()
    anon:from_client(top.say("/kick ann"))
    assert.same({ "you are not allowed to do that" }, told(anon))
  end)

  it("/ban closes the session and refuses the account's next logins", function()
    local gm, bob = player("gm1"), player("bob")
    gm:from_client(top.say("/ban bob"))
    assert.same({ "bob banned" }, told(gm))
    assert.equal("banned by gm1", bob:closed())
    local again = t:connect()
    again:from_client(login_frame("BOB")) -- any case
    assert.same({}, again:to_server())   -- the server never sees it
    local out = again:to_client()
    assert.equal(1, #out)
    local reply = t:parse(out[1], "server")
    assert.equal("MC_LOGIN", reply.name)
    assert.equal(1, reply:decode().error)
    assert.equal("banned account BOB", again:closed())
    assert.is_true(t:logged("refused the login of BOB: banned", "info"))
    -- a ban of someone offline, listed, then lifted
    gm:from_client(top.say("/ban cid"))
    assert.same({ "cid banned (not online)" }, told(gm))
    gm:from_client(top.say("/bans"))
    assert.same({ "banned: bob, cid" }, told(gm))
    gm:from_client(top.say("/unban bob"))
    gm:from_client(top.say("/unban bob"))
    assert.same({ "bob unbanned", "bob was not banned" }, told(gm))
    local back = t:connect()
    back:from_client(login_frame("bob"))
    assert.same({ login_frame("bob") }, back:to_server())
    assert.is_nil(back:closed())
  end)

  it("bans players who logged in before the script was loaded, and keeps bans across reloads", function()
    t:close()
    t = testing.new{ protocol = "top", source = "" }
    local bob, gm = player("bob"), player("gm1")
    assert.is_true(t:reload{ source = false, scripts = SCRIPTS })
    gm:from_client(top.say("/ban bob"))
    assert.same({ "bob banned" }, told(gm))
    assert.equal("banned by gm1", bob:closed())
    assert.is_true(t:reload())
    local again = t:connect()
    again:from_client(login_frame("bob"))
    assert.same({}, again:to_server())
    assert.equal("banned account bob", again:closed())
  end)

  it("/ban and /kick find the account in any case, and end every session of it", function()
    local gm, bob, bob2, ann = player("gm1"), player("bob"), player("bob"), player("ann")
    gm:from_client(top.say("/kick BOB"))
    assert.same({ "BOB kicked" }, told(gm))
    assert.equal("kicked by gm1", bob:closed())
    assert.equal("kicked by gm1", bob2:closed())
    local bob3, bob4 = player("Bob"), player("bob")
    gm:from_client(top.say("/ban BOB"))
    assert.same({ "BOB banned" }, told(gm))
    assert.same({ "you were banned by gm1" }, told(bob3))
    assert.equal("banned by gm1", bob3:closed())
    assert.equal("banned by gm1", bob4:closed())
    assert.is_nil(ann:closed())
    assert.same({}, ann:to_client())
  end)

  it("refuses a banned account whatever follows a NUL byte (the server reads up to it)", function()
    local gm = player("gm1")
    gm:from_client(top.say("/ban bob"))
    told(gm)
    for _, account in ipairs({ "bob\0", "BOB\0anything", "bob\0\0" }) do
      local s = t:connect()
      s:from_client(login_frame(account))
      assert.same({}, s:to_server())
      assert.equal("banned account " .. account:match("^[^\0]*"), s:closed())
    end
    -- a player whose account has bytes after a NUL is the account before it
    local evil = player("gm1\0x")
    evil:from_client(top.say("/bans"))
    assert.same({ "banned: bob" }, told(evil))
  end)

  it("gives no game master's rights to a client that pipelines a second login", function()
    local bob = player("bob")
    local s = t:connect()
    s:from_client(login_frame("evil"))
    s:from_client(login_frame("gm1"))      -- a wrong password: the server refuses it
    s:from_server(t:frame("MC_LOGIN", { error = 0, player = 66 }))   -- evil's reply
    s:from_server(t:frame("MC_LOGIN", { error = 1 }))
    s:to_client()
    s:from_client(top.say("/kick bob"))
    assert.same({ "you are not allowed to do that" }, told(s))
    assert.is_nil(bob:closed())
  end)

  it("lists thousands of bans in chat lines a client can show, never one too long to send", function()
    local gm = player("gm1")
    for i = 1, 3000 do gm:from_client(top.say(("/ban player%04d"):format(i))) end
    gm:to_client()
    gm:from_client(top.say("/bans"))
    local lines = told(gm)
    assert.equal(0, t:stats().errors, table.concat(t:logs("error"), "\n"))
    assert.is_true(#lines >= 2 and #lines <= 21, #lines .. " lines")
    for _, line in ipairs(lines) do assert.is_true(#line <= 400, #line .. " bytes") end
    assert.equal("banned: player0001, player0002, player0003", lines[1]:sub(1, 42))
    assert.matches("^%.%.%. and %d+ more$", lines[#lines])
  end)

  it("checks a login that does not fit its definition by its account, and passes it", function()
    local s = t:connect()
    local odd = top.frame(431, top.writer():str("bob"))
    s:from_client(odd)
    assert.same({ odd }, s:to_server())
    assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
    player("gm1"):from_client(top.say("/ban bob"))
    local banned = t:connect()
    banned:from_client(odd)
    assert.same({}, banned:to_server())
    assert.equal("banned account bob", banned:closed())
  end)
end)
