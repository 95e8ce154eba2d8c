-- redis_hostile_spec.lua: gw.redis and gw.subscribe given what a careless
-- or hostile script gives them, under the test host and its fake Redis:
-- names with a NUL byte, commands that would change the shared
-- connection, sleeps of odd lengths.
local testing = require "gangway.testing"
local top = testing.top

-- The text of an MC_SAY frame sent to the client.
local function said(frame)
  local pkt = top.parse(frame, "server")
  return pkt:str(12 + 2 + #pkt:str(12) + 1)
end

-- A host whose CM_SAY handler answers the client with what fn(text)
-- returns (fn may wait).
local function answering(body, opts)
  return testing.inline([[
local function answer(text, session)
]] .. body .. "\n" .. [[
end
gw.on("client", 1, function(pkt, session)
  session:send_to_client(gw.writer():u32(0):str("gw"):str(tostring(answer(pkt:str(8), session))):packet(501))
  return gw.DROP
end)
]], opts)
end

describe("gw.redis and gw.subscribe attacked", function()
  local t
  after_each(function()
    if t then t:close() end
    t = nil
  end)

  it("refuses a channel or pattern name with a NUL byte (it was cut there, and another channel's messages came)", function()
    local t1, err = testing.try({ source = 'local gw = require "gangway"\n'
                                  .. 'gw.subscribe("bans\\0x", function() end)',
                                  redis = testing.redis() })
    assert.is_nil(t1)
    assert.matches("without NUL", err)
    t1, err = testing.try({ source = 'local gw = require "gangway"\n'
                            .. 'gw.psubscribe("b*\\0", function() end)',
                            redis = testing.redis() })
    assert.is_nil(t1)
    assert.matches("without NUL", err)
  end)

  it("answers gw.redis and gw.redis_pipeline calls whose replies arrive with the scripts' memory at its limit (the replies and their messages are made under protection)", function()
    local fake = testing.redis()
    fake:latency(10)
    fake:call("SET", "k", "v")
    t = testing.new({ redis = fake, memory = 2 * 1024 * 1024, source = [[
local gw = require "gangway"
hog = {}
gw.on("client", 1, function(pkt, session)
  local v, err = gw.redis("GET", "k")
  local r, perr = gw.redis_pipeline{ { "GET", "k" }, { "NOSUCH" } }
  hog = nil
  session:send_to_client(gw.writer():u32(0):str("gw"):str(table.concat({ tostring(v), tostring(err),
    tostring(r and r[1]), tostring(r and r[2] and r[2].err), tostring(perr) }, "|")):packet(501))
  return gw.DROP
end)
gw.on("client", 2, function()
  local n = 0
  while true do n = n + 1; hog[n] = { n } end
end)
]] })
    local s, filler = t:connect(), t:connect()
    s:from_client(top.say("get"))       -- waits 10 ms for its reply
    filler:from_client(top.frame(2, "")) -- fills the memory to its limit meanwhile
    assert.truthy(t:logged("client frame 2 of session 2: not enough memory"))
    local used = t:stats().memory
    assert.is_true(used > 2 * 1024 * 1024 - 4096, "memory used " .. used)
    t:advance(10)
    t:advance(10)
    local out = s:to_client()
    assert.equal(1, #out)
    local got = said(out[1])
    -- Each reply arrived whole or as a clean error: never a crash, never a
    -- half-made value.
    assert.is_true(got == "v|nil|v|ERR unknown command 'NOSUCH'|ERR unknown command 'NOSUCH'"
                   or got:find("not enough memory", 1, true) ~= nil, got)
  end)

  it("keeps the subscriptions a reload asks for, each once, among many", function()
    local fake = testing.redis()
    local function source(names)
      return 'local gw = require "gangway"\n' .. names .. "\n"
             .. "for i = 1, 20000 do gw.subscribe('user:' .. i, function() end) end"
    end
    t = testing.new({ source = source([[
gw.subscribe("a", function() end)
gw.subscribe("b", function() end)
gw.subscribe("b", function() end)
gw.psubscribe("p*", function() end)]]), redis = fake })
    local function subscribers(channel) return fake:call("PUBLISH", channel, "x") end
    assert.equal(1, subscribers("a"))
    assert.equal(1, subscribers("b")) -- two functions, one subscription
    assert.equal(1, subscribers("pq"))
    assert.equal(1, subscribers("user:20000"))
    assert.equal(0, subscribers("c"))
    assert.is_true(t:reload({ source = source([[
gw.subscribe("c", function() end)
gw.subscribe("b", function() end)
gw.subscribe("p*", function() end)]]) }))
    assert.equal(0, subscribers("a"))
    assert.equal(1, subscribers("b"))
    assert.equal(1, subscribers("c"))
    assert.equal(0, subscribers("pq")) -- "p*" is a channel now, not a pattern
    assert.equal(1, subscribers("p*"))
    assert.equal(1, subscribers("user:1"))
  end)

  it("hands a message to the functions of its channel and patterns only, among many", function()
    t = testing.inline([[
heard = {}
for i = 1, 20000 do
  gw.subscribe("user:" .. i, function(channel, msg) heard[#heard + 1] = "user " .. i .. " " .. msg end)
end
gw.subscribe("b", function(channel, msg) heard[#heard + 1] = "b1 " .. msg end)
gw.subscribe("b", function(channel, msg) heard[#heard + 1] = "b2 " .. msg end)
gw.psubscribe("b*", function(channel, msg, pattern) heard[#heard + 1] = pattern .. " " .. channel .. " " .. msg end)
gw.on("client", 1, function(pkt, session)
  session:send_to_client(gw.writer():u32(0):str("gw"):str(table.concat(heard, ";")):packet(501))
  heard = {}
  return gw.DROP
end)
]], { redis = testing.redis() })
    local s = t:connect()
    local function heard()
      s:from_client(top.say("?"))
      return said(s:to_client()[1])
    end
    assert.equal(2, t:publish("b", "hi")) -- subscriptions: the channel and the pattern
    assert.equal("b1 hi;b2 hi;b* b hi", heard())
    assert.equal(1, t:publish("user:7", "yo"))
    assert.equal("user 7 yo", heard())
    assert.equal(1, t:publish("bx", "z"))
    assert.equal("b* bx z", heard())
    assert.equal(0, t:publish("user:20001", "nobody"))
    assert.equal("", heard())
  end)

  it("refuses commands that would change the connection every script shares", function()
    t = answering([[
  local v, err = gw.redis(table.unpack((function() local w = {} for x in text:gmatch("%S+") do w[#w + 1] = x end return w end)()))
  return v == nil and err or ("value " .. tostring(v))
]], { redis = testing.redis() })
    local s = t:connect()
    for _, cmd in ipairs({ "SUBSCRIBE c", "select 2", "MONITOR", "HELLO 3", "client reply off", "AUTH x y" }) do
      s:from_client(top.say(cmd))
      t:advance(0)
      local out = s:to_client()
      assert.equal(1, #out)
      assert.matches("is not allowed on the shared connection", said(out[1]), 1, true)
    end
    s:from_client(top.say("SET k v"))
    t:advance(0)
    assert.equal("value OK", said(s:to_client()[1]))
  end)

  it("sleeps 0 ms for a turn, refuses negative, NaN, infinite and absurd lengths", function()
    t = answering([[
  local odd = { nan = 0/0, inf = math.huge, ["-inf"] = -math.huge }
  local ms = odd[text] or tonumber(text)
  local ok, err = pcall(session.sleep, session, ms)
  return ok and "slept" or err
]])
    local s = t:connect()
    s:from_client(top.say("0"))
    assert.same({}, s:to_client()) -- not in this turn
    t:advance(1)
    assert.equal("slept", said(s:to_client()[1]))
    for _, ms in ipairs({ "-1", "nan", "inf", "-inf", "1e12" }) do
      s:from_client(top.say(ms))
      t:advance(0)
      assert.matches("milliseconds >= 0", said(s:to_client()[1]), 1, true)
    end
  end)
end)
