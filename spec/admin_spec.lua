-- admin_spec.lua: script endpoints (gw.admin) as the admin API calls them:
-- JSON in, JSON out, a status, errors that stay in their request, and the
-- endpoint following reloads.
local testing = require "gangway.testing"
local cjson = require "cjson"

local BANS = [[
  local bans = {}
  gw.admin("bans", function(req)
    if req.method == "POST" then
      bans[req.body.name] = true
      for _, s in ipairs(gw.sessions()) do
        if s.state.name == req.body.name then s:close("banned") end
      end
      return 201, { banned = req.body.name }
    elseif req.method == "DELETE" then
      bans[req.body.name] = nil
    end
    local list = {}
    for name in pairs(bans) do list[#list + 1] = name end
    table.sort(list)
    return { bans = list }
  end)
  gw.on("client", "*", function(pkt, session)
    session.state.name = pkt:body()
    if bans[session.state.name] then return gw.CLOSE end
  end)
]]

describe("gw.admin", function()
  it("edits a ban list without a reload, and the ban takes effect", function()
    local t = testing.inline(BANS, { framing = "u16be" })
    local s = t:connect()
    s:from_client(string.pack(">s2", "bob"))
    local status, body = t:admin("bans", "POST", '{"name":"bob"}')
    assert.equal(201, status)
    assert.same({ banned = "bob" }, cjson.decode(body))
    assert.equal("banned", s:closed())
    status, body = t:admin("bans", "GET")
    assert.equal(200, status)
    assert.same({ "bob" }, cjson.decode(body).bans)
    -- a new session of bob's is closed by the handler
    local again = t:connect()
    again:from_client(string.pack(">s2", "bob"))
    assert.is_not_nil(again:closed())
    assert.equal(200, (t:admin("bans", "DELETE", '{"name":"bob"}')))
    assert.same({}, cjson.decode(select(2, t:admin("bans", "GET"))).bans)
    t:close()
  end)

  it("answers 404, 400 and 500 without harm to the state", function()
    local t = testing.inline([[
      gw.admin("boom", function() error("kaput") end)
      gw.admin("ok", function() return { ok = true } end)
      gw.admin("bad", function() return function() end end)
    ]], { framing = "u16be" })
    local status, body = t:admin("nothing", "GET")
    assert.equal(404, status)
    assert.matches("no script endpoint", body)
    status = t:admin("ok", "POST", "{not json")
    assert.equal(400, status)
    status, body = t:admin("boom", "GET")
    assert.equal(500, status)
    assert.matches("kaput", cjson.decode(body).error)
    assert.equal(500, (t:admin("bad", "GET")))
    assert.equal(200, (t:admin("ok", "GET")))
    t:close()
  end)

  it("follows a reload; a bad one keeps the old endpoint", function()
    local t = testing.inline([[ gw.admin("v", function() return { v = 1 } end) ]],
                             { framing = "u16be" })
    assert.same({ v = 1 }, cjson.decode(select(2, t:admin("v"))))
    local GW = 'local gw = require "gangway"\n'
    assert.is_true(t:reload{ source = GW .. [[ gw.admin("v", function() return { v = 2 } end) ]] })
    assert.same({ v = 2 }, cjson.decode(select(2, t:admin("v"))))
    local ok, err = t:reload{ source = GW .. [[ gw.admin("v", 1) ]] }
    assert.is_falsy(ok)
    assert.matches("function expected", err)
    assert.same({ v = 2 }, cjson.decode(select(2, t:admin("v"))))
    t:close()
  end)

  it("refuses a name twice and names outside its alphabet", function()
    local GW = 'local gw = require "gangway"\n'
    local ok, err = testing.try{ source = GW .. [[
      gw.admin("x", function() end) gw.admin("x", function() end) ]], framing = "u16be" }
    assert.is_nil(ok)
    assert.matches("served already", err)
    ok, err = testing.try{ source = GW .. [[ gw.admin("../etc", function() end) ]], framing = "u16be" }
    assert.is_nil(ok)
    assert.matches("a name of 1 to 64", err)
  end)
end)
