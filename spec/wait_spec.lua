-- wait_spec.lua: handlers that wait (gw.redis, gw.redis_pipeline,
-- session:sleep, gw.sleep) under the test host, as in the proxy: the
-- simulated clock ends sleeps and wait bounds, a fake Redis answers in
-- order, and what a waiting session receives queues behind the wait.
local testing = require "gangway.testing"
local top = testing.top

-- The text of a CM_SAY (client) or of an MC_SAY (server) frame.
local function text_of(frame, side)
  local pkt = top.parse(frame, side)
  if side == "server" then return pkt:str(12 + 2 + #pkt:str(12) + 1) end -- u32 speaker, str name
  return pkt:str(8)
end

local function texts(frames, side)
  local out = {}
  for i, f in ipairs(frames) do out[i] = text_of(f, side or "client") end
  return out
end

-- A handler of CM_SAY that replaces each line with what fn(text, session)
-- returns (fn may wait), after a first line `local gw = require "gangway"`.
local function rewriter(body, opts, more)
  return testing.inline([[
local function rewrite(text, session)
]] .. body .. "\n" .. [[
end
gw.on("client", 1, function(pkt, session)
  local out = rewrite(pkt:str(8), session)
  if out then return gw.writer():str(out):packet(1) end
end)
]] .. (more or ""), opts)
end

describe("waits under the test host", function()
  local t
  after_each(function()
    if t then t:close() end
    t = nil
  end)

  describe("session:sleep", function()
    it("keeps that session's frames in order while another session's pass", function()
      t = rewriter([[
  if text:match("^slow") then session:sleep(100) end
  return text .. "!"
]])
      local a, b = t:connect(), t:connect()
      a:from_client(top.say("slow 1") .. top.say("fast 2"))
      a:from_client(top.say("fast 3"))
      b:from_client(top.say("other"))
      assert.same({ "other!" }, texts(b:to_server()))
      assert.same({}, a:to_server())
      -- the other side of the waiting session goes on
      a:from_server(top.server_say(7, "npc", "hi"))
      assert.equal(1, #a:to_client())
      t:advance(99)
      assert.same({}, a:to_server())
      a:from_client(top.say("fast 4")) -- arrives while it waits: queued too
      t:advance(1)
      assert.same({ "slow 1!", "fast 2!", "fast 3!", "fast 4!" }, texts(a:to_server()))
      a:from_client(top.say("fast 5"))
      assert.same({ "fast 5!" }, texts(a:to_server()))
    end)

    it("lets a handler wait several times, each frame in turn", function()
      t = rewriter([[
  session:sleep(10)
  gw.sleep(5)
  return text .. "@" .. gw.now()
]])
      local s = t:connect()
      s:from_client(top.say("a") .. top.say("b"))
      t:advance(14)
      assert.same({}, s:to_server())
      t:advance(1)
      assert.same({ "a@15" }, texts(s:to_server()))
      t:advance(15)
      assert.same({ "b@30" }, texts(s:to_server()))
    end)
  end)

  describe("gw.redis with a fake Redis", function()
    local fake
    before_each(function() fake = testing.redis() end)

    it("answers after the handler yields, before the frames behind it", function()
      t = rewriter([[
  local n, err = gw.redis("INCR", "lines:" .. text)
  return text .. "=" .. tostring(n or err)
]], { redis = fake })
      local s = t:connect()
      s:from_client(top.say("a") .. top.say("b") .. top.say("a"))
      assert.same({ "a=1", "b=1", "a=2" }, texts(s:to_server()))
      assert.same({ "INCR lines:a", "INCR lines:b", "INCR lines:a" }, fake:commands())
      assert.equal("2", fake:call("GET", "lines:a"))
    end)

    it("delivers replies later on the simulated clock with fake:latency", function()
      t = rewriter([[
  local v = gw.redis("GET", "motd")
  return text .. ":" .. tostring(v)
]], { redis = fake })
      fake:call("SET", "motd", "hello")
      fake:latency(50)
      local s = t:connect()
      s:from_client(top.say("x"))
      s:from_client(top.say("y"))
      assert.same({}, s:to_server())
      t:advance(49)
      assert.same({}, s:to_server())
      assert.same({ "GET motd" }, fake:commands()) -- y's handler has not run yet
      t:advance(1) -- x's reply; y's GET is sent only now, its reply 50 ms on
      assert.same({ "x:hello" }, texts(s:to_server()))
      assert.same({ "GET motd" }, fake:commands())
      t:advance(49)
      assert.same({}, s:to_server())
      t:advance(1)
      assert.same({ "y:hello" }, texts(s:to_server()))
    end)

    it("gives replies as Lua values and errors as nil, message", function()
      t = rewriter([[
  local out = {}
  local function put(v, err) out[#out + 1] = tostring(v) .. "/" .. tostring(err) end
  put(gw.redis("SET", "k", "v"))
  put(gw.redis("SADD", "s", "x", "y", "x"))
  local m = gw.redis("SMEMBERS", "s")
  put(table.concat(m, ","))
  put(gw.redis("GET", "nothing"))
  put(gw.redis("SADD", "k", "x"))
  put(gw.redis("NOSUCH", "k"))
  put(gw.redis("HSET", "h", "f", 42))
  put(gw.redis("HGET", "h", "f"))
  put(gw.redis("ZADD", "z", 1, "a", 2, "b", 3, "c"))
  put(gw.redis("ZCOUNT", "z", "(1", "+inf"))
  put(gw.redis("ZREMRANGEBYSCORE", "z", "-inf", 2))
  put(gw.redis("ZREM", "z", "c"))
  put(gw.redis("DEL", "k", "h", "none"))
  put(gw.redis("SREM", "s", "x"))
  put(gw.redis("SISMEMBER", "s", "y"))
  return table.concat(out, " ")
]], { redis = fake })
      local s = t:connect()
      s:from_client(top.say("go"))
      assert.same({ table.concat({
        "OK/nil", "2/nil", "x,y/nil", "nil/nil",
        "nil/WRONGTYPE Operation against a key holding the wrong kind of value",
        "nil/ERR unknown command 'NOSUCH'", "1/nil", "42/nil", "3/nil", "2/nil", "2/nil",
        "1/nil", "2/nil", "1/nil", "1/nil" }, " ") }, texts(s:to_server()))
    end)

    it("sends a pipeline at once and gives every reply and the first error", function()
      t = rewriter([[
  local r, err = gw.redis_pipeline{ { "SET", "a", "1" }, { "INCR", "a" }, { "GET", "nope" },
                                    { "BOGUS" }, { "GET", "a" } }
  return ("%s %s %s %s %s | %s"):format(r[1], r[2], tostring(r[3]), r[4].err, r[5], tostring(err))
]], { redis = fake })
      local s = t:connect()
      s:from_client(top.say("p"))
      assert.same({ "OK 2 false ERR unknown command 'BOGUS' 2 | ERR unknown command 'BOGUS'" },
                  texts(s:to_server()))
      assert.same({ "SET a 1", "INCR a", "GET nope", "BOGUS", "GET a" }, fake:commands())
    end)

    it("expires keys on the simulated clock and tells TIME from it", function()
      t = rewriter([[
  if text == "set" then return tostring(gw.redis("SET", "ban", "1", "EX", 2)) end
  local tm = gw.redis("TIME")
  return tostring(gw.redis("GET", "ban")) .. " " .. tm[1]
]], { redis = fake })
      local s = t:connect()
      s:from_client(top.say("set") .. top.say("get"))
      assert.same({ "OK", "1 1700000000" }, texts(s:to_server()))
      t:advance(2000)
      s:from_client(top.say("get"))
      assert.same({ "nil 1700000002" }, texts(s:to_server()))
    end)

    it("takes a table of command functions or a function as the fake", function()
      t = rewriter([[return tostring(gw.redis("GET", text)) .. "," .. tostring(select(2, gw.redis("SET", text, 1)))]],
                   { redis = { GET = function(key) return key:upper() end } })
      local s = t:connect()
      s:from_client(top.say("ab"))
      assert.same({ "AB,ERR unknown command 'SET'" }, texts(s:to_server()))
      t:close()
      local seen = {}
      t = rewriter([[
  local r = gw.redis("ECHO", text)
  local _, err = gw.redis("FAIL")
  return ("%s %s %d %s %d | %s"):format(r[1], r[2].err, r[3], tostring(r[4]), #r, err)
]], {
        redis = function(cmd, arg)
          seen[#seen + 1] = cmd
          if cmd == "FAIL" then error("no such thing", 0) end
          return { arg, { err = "inner" }, 3, false }
        end,
      })
      s = t:connect()
      s:from_client(top.say("x"))
      assert.same({ "x inner 3 false 4 | no such thing" }, texts(s:to_server()))
      assert.same({ "ECHO", "FAIL" }, seen)
    end)

    it("fails at once while the fake Redis is down, and works when it is back", function()
      t = rewriter([[
  local v, err = gw.redis("INCR", "n")
  return tostring(v) .. " " .. tostring(err)
]], { redis = fake })
      local s = t:connect()
      fake:down(true)
      s:from_client(top.say("a"))
      assert.same({ "nil redis: not connected (connection refused)" }, texts(s:to_server()))
      fake:down(false)
      s:from_client(top.say("b"))
      assert.same({ "1 nil" }, texts(s:to_server()))
    end)

    it("says Redis is not configured when the host has no fake", function()
      t = rewriter([[return select(2, gw.redis("GET", "k"))]])
      local s = t:connect()
      s:from_client(top.say("a"))
      assert.same({ "redis: not configured (no redis section in config.lua)" }, texts(s:to_server()))
    end)
  end)

  describe("testing.redis()", function()
    it("keeps strings, sets, hashes and sorted sets as Redis does", function()
      local fake = testing.redis()
      assert.is_true(fake:call("SET", "k", "1", "NX"))
      assert.is_nil(fake:call("SET", "k", "2", "NX"))
      assert.is_true(fake:call("SET", "k", "3", "XX"))
      assert.is_nil(fake:call("SET", "absent", "3", "XX"))
      assert.equal(4, fake:call("INCR", "k"))
      assert.equal(-1, fake:call("TTL", "k"))
      assert.equal(1, fake:call("EXPIRE", "k", 10))
      assert.equal(10, fake:call("TTL", "k"))
      assert.equal(-2, fake:call("TTL", "absent"))
      fake:call("SET", "word", "abc")
      assert.same({ nil, "ERR value is not an integer or out of range" }, { fake:call("INCR", "word") })
      assert.same({ nil, "ERR wrong number of arguments for 'get' command" }, { fake:call("GET") })
      assert.equal(2, fake:call("HSET", "h", "a", "1", "b", "2"))
      assert.same({ "a", "1", "b", "2" }, fake:call("HGETALL", "h"))
      assert.equal(1, fake:call("HDEL", "h", "a", "zz"))
      assert.equal(2, fake:call("SADD", "s", "b", "a"))
      assert.equal(2, fake:call("SCARD", "s"))
      fake:call("ZADD", "z", "2.5", "b", "1", "a", "10", "c")
      assert.same({ "a", "1", "b", "2.5", "c", "10" }, fake:call("ZRANGE", "z", 0, -1, "WITHSCORES"))
      assert.same({ "b", "c" }, fake:call("ZRANGE", "z", -2, -1))
      assert.equal("2.5", fake:call("ZSCORE", "z", "b"))
      assert.equal(2, fake:call("ZCOUNT", "z", "(1", "10"))
      assert.equal(1, fake:call("ZCOUNT", "z", "(1", "(10"))
      assert.equal(2, fake:call("DEL", "s", "z", "nothing"))
      assert.equal(0, fake:call("EXISTS", "s", "z"))
      assert.equal(0, fake:call("PUBLISH", "ch", "nobody hears"))
    end)
  end)

  describe("wait bounds", function()
    -- "slow" sleeps 1 s, other lines get a "!"; s has sent "slow", then first.
    local function slow_then(first, opts)
      t = rewriter([[
  if text == "slow" then session:sleep(1000) end
  return text .. "!"
]], opts)
      local s = t:connect()
      s:from_client(top.say("slow") .. top.say(first))
      return s
    end

    it("applies on_error to a handler past timeouts.wait_ms, and the frames behind it go on", function()
      local s = slow_then("next", { wait_ms = 50, on_error = "drop" })
      t:advance(49)
      assert.same({}, s:to_server())
      t:advance(1)
      assert.same({ "next!" }, texts(s:to_server()))
      assert.same({ top.say("slow") }, s:dropped())
      assert.is_true(t:logged("waited longer than timeouts.wait_ms (50 ms)", "error"))
      t:advance(2000) -- the sleep is over long since: never resumed
      assert.same({}, s:to_server())
      assert.is_nil(s:closed())
    end)

    it("closes the session past wait_ms with on_error close, a late reply ignored", function()
      local fake = testing.redis()
      fake:latency(200)
      t = rewriter([[
  local v = gw.redis("GET", "k")
  gw.log.info("resumed with " .. tostring(v))
  return text
]], { wait_ms = 100, on_error = "close", redis = fake })
      local s = t:connect()
      s:from_client(top.say("a"))
      t:advance(100)
      assert.equal("handler error", s:closed())
      t:advance(200)
      assert.is_false(t:logged("resumed with"))
      assert.same({}, s:to_server())
    end)

    it("applies on_error past limits.wait_bytes queued behind a waiting handler", function()
      local s = slow_then("one", { wait_bytes = 20, on_error = "pass" })
      assert.same({}, s:to_server())
      s:from_client(top.say("a longer line, past the bound"))
      -- the waiting frame passes as it came (on_error pass), then the queue
      assert.same({ "slow", "one!", "a longer line, past the bound!" }, texts(s:to_server()))
      assert.is_true(t:logged("queued behind a waiting handler (limits.wait_bytes 20)", "error"))
    end)
  end)

  describe("sessions that end while a call waits", function()
    it("drops the call: no reply resumes it, on_close runs, others go on", function()
      local fake = testing.redis()
      fake:latency(10)
      t = rewriter([[
  local v = gw.redis("INCR", "n")
  gw.log.info(text .. " resumed with " .. tostring(v))
  return text
]], { redis = fake }, [[
gw.on_close(function(s, reason) gw.log.info("closed " .. s.id .. ": " .. reason) end)
]])
      local a, b = t:connect(), t:connect()
      a:from_client(top.say("a1") .. top.say("a2"))
      b:from_client(top.say("b1"))
      a:close("client closed")
      assert.is_true(t:logged("closed " .. a.core:id() .. ": client closed"))
      t:advance(10)
      assert.is_false(t:logged("a1 resumed"))
      assert.is_true(t:logged("b1 resumed with 2"))
      assert.same({}, a:to_server())
      assert.same({ "b1" }, texts(b:to_server()))
      t:advance(100)
      assert.is_false(t:logged("a2 resumed"))
    end)

    it("drops a sleeping call when a handler closes the session meanwhile", function()
      t = testing.inline([[
gw.on("client", 1, function(pkt, session)
  if pkt:str(8) == "quit" then return gw.CLOSE end
  session:sleep(50)
  gw.log.info("woke")
end)
gw.on("server", 501, function(pkt, session) session:close("kicked") end)
]])
      local s = t:connect()
      s:from_client(top.say("wait"))
      s:from_server(top.server_say(1, "gm", "bye"))
      assert.equal("kicked", s:closed())
      t:advance(100)
      assert.is_false(t:logged("woke"))
    end)
  end)

  describe("on_connect that waits", function()
    it("holds the session's frames until it is done, or refuses it", function()
      local fake = testing.redis()
      fake:call("SADD", "banned", "10.0.0.9")
      fake:latency(5)
      t = testing.inline([[
gw.on_connect(function(session)
  local ip = session.client:match("^(.*):")
  if gw.redis("SISMEMBER", "banned", ip) == 1 then return gw.CLOSE end
  session:send_to_client(gw.writer():u32(0):str("[proxy]"):str("welcome"):packet(501))
end)
gw.on("client", 1, function() end)
]], { redis = fake })
      local ok = t:connect("10.0.0.1:4000")
      ok:from_client(top.say("early"))
      assert.same({}, ok:to_server())
      assert.is_false(ok:refused())
      t:advance(5)
      assert.same({ "welcome" }, texts(ok:to_client(), "server"))
      assert.same({ top.say("early") }, ok:to_server())
      local bad = t:connect("10.0.0.9:4000")
      bad:from_client(top.say("early"))
      t:advance(5)
      assert.is_true(bad:refused())
      assert.equal("refused", bad:closed())
      assert.same({}, bad:to_server())
    end)
  end)

  describe("chat commands (the top protocol module)", function()
    local fake
    before_each(function() fake = testing.redis() end)

    local function player(host, name)
      local s = host:connect()
      s:from_client(host:frame("CM_LOGIN", { account = name, password = "pw", mac = "00",
                                             version = 136, marker = 911 }))
      s:from_server(host:frame("MC_LOGIN", { error = 0, player = 1 }))
      s:to_server()
      s:to_client()
      return s
    end

    local function told(host, frames)
      local out = {}
      for i, f in ipairs(frames) do out[i] = host:parse(f, "server"):decode().text end
      return out
    end

    it("lets a command wait on Redis and tell the player, frames behind it in order", function()
      t = testing.new{ protocol = "top", redis = fake, source = [[
local gw = require "gangway"
gw.command("/seen", function(session, args)
  local n, err = gw.redis("SCARD", "seen")
  if not n then session:tell("unavailable: " .. err) return end
  session:tell(n .. " players seen")
end)
gw.on("client", "CM_SAY", function(pkt, session)
  if session.player then gw.redis("SADD", "seen", session.player.name) end
end)
]] }
      fake:latency(20)
      local s = player(t, "ann")
      s:from_client(top.say("hello") .. top.say("/seen") .. top.say("after"))
      assert.same({}, s:to_server())
      t:advance(20) -- our SADD for "hello" (the module's handler, first, let it by)
      assert.same({ "hello" }, texts(s:to_server()))
      assert.same({}, s:to_client())
      t:advance(20) -- the command's SCARD: it tells, and the line is dropped
      assert.same({ "1 players seen" }, told(t, s:to_client()))
      assert.same({}, s:to_server())
      t:advance(19)
      assert.same({}, s:to_server())
      t:advance(1) -- our SADD for "after"
      assert.same({ "after" }, texts(s:to_server()))
      assert.same({ "SADD seen ann", "SCARD seen", "SADD seen ann" }, fake:commands())
      fake:down(true)
      s:from_client(top.say("/seen"))
      assert.same({ "unavailable: redis: not connected (connection refused)" }, told(t, s:to_client()))
      assert.same({}, s:to_server())
    end)

    it("runs the example fleet's rules: bans and /online across two edges", function()
      local function edge() return testing.new{ protocol = "top", redis = fake,
                                                scripts = { "examples/fleet/fleet.lua" } } end
      local e1, e2 = edge(), edge()
      local ann = player(e1, "ann")
      local bob = player(e2, "bob")
      assert.same({ "ann", "bob" }, fake:call("ZRANGE", "fleet:online", 0, -1))
      bob:from_client(top.say("/online"))
      assert.same({ "2 players online in the fleet, 1 through test" }, told(e2, bob:to_client()))
      assert.same({}, bob:to_server())
      -- a ban published by an admin reaches the edge where the player is
      fake:call("SADD", "fleet:bans", "ann")
      assert.equal(2, fake:call("PUBLISH", "fleet:ban", "ann")) -- both edges subscribe
      assert.is_nil(ann:closed()) -- delivered at the host's next call
      e1:advance(0)
      e2:advance(0)
      assert.equal("banned", ann:closed())
      assert.same({ "You have been banned." }, told(e1, ann:to_client()))
      assert.is_nil(bob:closed())
      -- and the next login is refused at either edge
      local again = e2:connect()
      again:from_client(e2:frame("CM_LOGIN", { account = "ann", password = "pw", mac = "00",
                                               version = 136, marker = 911 }))
      again:from_server(e2:frame("MC_LOGIN", { error = 0, player = 2 }))
      assert.equal("banned", again:closed())
      assert.same({ "You are banned from this server." }, told(e2, again:to_client()))
      -- with Redis down, logins are let in and /online says so
      fake:down(true)
      local cid = player(e1, "cid")
      assert.is_nil(cid:closed())
      cid:from_client(top.say("/online"))
      assert.same({ "1 players online through test; the fleet's count is unavailable" },
                  told(e1, cid:to_client()))
      assert.is_true(e1:logged("ban check for cid failed, letting in", "warn"))
      -- back up: the refresh timer (which waits on Redis) drops ann, gone
      fake:down(false)
      e1:advance(5000)
      assert.same({ "bob", "cid" }, fake:call("ZRANGE", "fleet:online", 0, -1))
      e1:close()
      e2:close()
    end)
  end)

  describe("reloads", function()
    it("lets a waiting call finish with the code that started it", function()
      t = rewriter([[session:sleep(10) return "old " .. text]])
      local s = t:connect()
      s:from_client(top.say("a"))
      assert.is_true(t:reload{ source = 'local gw = require "gangway"\n' .. [[
gw.on("client", 1, function(pkt) return gw.writer():str("new " .. pkt:str(8)):packet(1) end)
]] })
      s:from_client(top.say("b")) -- behind a: waits for it
      assert.same({}, s:to_server())
      t:advance(10)
      assert.same({ "old a", "new b" }, texts(s:to_server()))
    end)
  end)

  describe("gw.subscribe and gw.publish", function()
    it("delivers a message published from a handler to every host sharing the fake", function()
      local fake = testing.redis()
      local src = [[
gw.subscribe("news", function(channel, msg)
  for _, s in ipairs(gw.sessions()) do
    s:send_to_client(gw.writer():u32(0):str("[news]"):str(msg):packet(501))
  end
end)
gw.on("client", 1, function(pkt) gw.publish("news", pkt:str(8)) return gw.DROP end)
]]
      local t1 = testing.inline(src, { redis = fake })
      local t2 = testing.inline(src, { redis = fake })
      local a, b = t1:connect(), t2:connect()
      a:from_client(top.say("extra"))
      assert.same({ "extra" }, texts(a:to_client(), "server"))
      assert.same({}, b:to_client())
      t2:advance(0) -- the other host hears at its next call
      assert.same({ "extra" }, texts(b:to_client(), "server"))
      assert.equal(1, t2:publish("news", "direct"))
      assert.same({ "direct" }, texts(b:to_client(), "server"))
      assert.equal(0, t2:publish("other", "nobody"))
      t1:close()
      t2:close()
    end)

    it("raises when messages keep coming without the clock moving", function()
      t = testing.inline([[gw.subscribe("loop", function(_, msg) gw.publish("loop", msg) end)]],
                         { redis = testing.redis() })
      local ok, err = pcall(t.publish, t, "loop", "again")
      assert.is_false(ok)
      assert.matches("kept delivering without the clock moving", err)
    end)
  end)
end)
