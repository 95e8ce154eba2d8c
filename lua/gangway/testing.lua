--- gangway.testing: run handler scripts in busted specs, without sockets.
--
-- A test host drives the real script layer (the same C code as the proxy,
-- from the gangway.core module): the real config loader, the real framer,
-- the real dispatch, a recorded output and a simulated clock.
--
--   local testing = require "gangway.testing"
--   local t = testing.new{ framing = "top", scripts = { "scripts/chat_filter.lua" } }
--   local s = t:connect("127.0.0.1:50000")
--   s:from_client(testing.top.say("hello"))
--   assert.same({ testing.top.say("hello") }, s:to_server())
--
-- See docs/lua-api.md, "Testing scripts".
local core = require "gangway.core"

local testing = { core = core }

-- ---- config generation ----

local function serialize(v, out)
  local kind = type(v)
  if kind == "string" then
    out[#out + 1] = string.format("%q", v)
  elseif kind == "number" or kind == "boolean" then
    out[#out + 1] = tostring(v)
  elseif kind == "table" then
    out[#out + 1] = "{"
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
      if type(k) == "number" then
        out[#out + 1] = "[" .. k .. "]="
      else
        out[#out + 1] = "[" .. string.format("%q", k) .. "]="
      end
      serialize(v[k], out)
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
  else
    error("cannot put a " .. kind .. " in a config", 3)
  end
  return out
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function absolute(path)
  local p, err = core.realpath(path)
  if not p then error("cannot use script " .. path .. ": " .. err, 4) end
  return p
end

-- This file's directory: the repository's protocols/ are at ../../protocols.
local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."

local function readable(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- A protocol option as config.lua takes it: a directory path as is, a name
-- ("top") resolved to protocols/<name> in the current directory or in the
-- repository this module comes from, as an absolute directory.
local function protocol_dir(name)
  if not name then return nil end
  if name:find("/", 1, true) then return absolute(name) end
  for _, dir in ipairs{ "protocols/" .. name, here .. "/../../protocols/" .. name } do
    if readable(dir .. "/packets.lua") then return core.realpath(dir) end
  end
  error("no protocol " .. name .. ": no protocols/" .. name .. "/packets.lua here or in "
        .. here .. "/../../protocols", 4)
end

-- Writes the files a test host needs into its directory and returns the
-- config path.
local function make_config(self, opts)
  if opts.config then return opts.config end
  local scripts = {}
  for _, p in ipairs(opts.scripts or {}) do scripts[#scripts + 1] = absolute(p) end
  for name, text in pairs(opts.files or {}) do
    local path = self.dir .. "/" .. name
    write(path, text)
    self.files[path] = true
  end
  local sources = opts.source and { opts.source } or opts.sources or {}
  for i, text in ipairs(sources) do
    local path = string.format("%s/inline%d.lua", self.dir, i)
    write(path, text)
    self.files[path] = true
    scripts[#scripts + 1] = path
  end
  local listener = {
    name = opts.listener or "test",
    listen = "127.0.0.1:1",
    upstream = opts.upstream or "127.0.0.1:2",
    framing = opts.framing or "top",
    scripts = scripts,
    on_error = opts.on_error or "pass",
    unsafe = opts.unsafe or false,
    phases = opts.phases,
    protocol = protocol_dir(opts.protocol),
  }
  local text = "return " .. table.concat(serialize({
    listeners = { listener }, control = "",
    timeouts = opts.wait_ms and { wait_ms = opts.wait_ms } or nil,
    limits = opts.wait_bytes and { wait_bytes = opts.wait_bytes } or nil,
  }, {}))
  local path = self.dir .. "/config.lua"
  write(path, text)
  self.files[path] = true
  return path
end

-- ---- sessions ----

local Session = {}
Session.__index = Session

--- Bytes from the client (several frames, or part of one, are fine).
function Session:from_client(bytes) return self.core:from("client", bytes) end
--- Bytes from the server.
function Session:from_server(bytes) return self.core:from("server", bytes) end
--- Frames sent toward the server since the last call, as a list of strings.
function Session:to_server() return self.core:take("server") end
--- Frames sent toward the client since the last call.
function Session:to_client() return self.core:take("client") end
--- Frames handlers dropped (as they arrived) since the last call.
function Session:dropped() return self.core:dropped() end
--- Why the session was closed, or nil while it is open.
function Session:closed() return self.core:closed() end
--- Whether gw.on_connect refused it.
function Session:refused() return self.core:refused() end
--- The peer hangs up: gw.on_close runs.
function Session:close(reason) return self.core:close(reason) end

-- ---- test hosts ----

local Host = {}
Host.__index = Host

-- The function the host's fake Redis calls with each command's arguments
-- ({ "GET", "k" }): it returns "reply", value, delay_ms or "down", why.
-- It holds the host weakly (the host holds it).
local function answerer(fake, ref)
  if type(fake) == "function" then
    return function(argv) return "reply", fake(table.unpack(argv)) end
  end
  if type(fake) ~= "table" then error("redis: a testing.redis() store, a table or a function", 4) end
  if fake.answer then
    return function(argv) return fake:answer(argv, ref.core) end
  end
  return function(argv) -- a table of command functions: { GET = function(key) ... end }
    local fn = fake[argv[1]:upper()]
    if not fn then return "reply", { err = "ERR unknown command '" .. argv[1] .. "'" } end
    return "reply", fn(table.unpack(argv, 2))
  end
end

local function new(opts, level)
  opts = opts or {}
  local self = setmetatable({ files = {}, opts = opts }, Host)
  if not opts.config then self.dir = core.mkdtemp() end
  local ok, config = pcall(make_config, self, opts)
  local ref = setmetatable({}, { __mode = "v" })
  local answer
  if ok and opts.redis ~= nil then
    local fine, fn = pcall(answerer, opts.redis, ref)
    if fine then answer = fn else ok, config = false, fn end
  end
  if not ok then
    self:close()
    error(config, level)
  end
  local host, err = core.new{
    config = config, listener = opts.listener,
    instructions = opts.instructions, memory = opts.memory,
    write_max = opts.write_max, redis = answer,
  }
  if not host then
    self:close()
    return nil, err
  end
  self.core = host
  self.config = config
  ref.core = host
  if type(opts.redis) == "table" and opts.redis.attach then
    self.redis = opts.redis
    opts.redis:attach(host)
  end
  return self
end

--- A test host. Options:
--   framing       preset name or framing table (default "top")
--   protocol      a protocol module: a name ("top": protocols/top here or in
--                 this repository) or a directory; its init.lua loads first
--   scripts       list of script paths (relative to the current directory)
--   source        Lua text of one more script (or sources = { ... })
--   files         { ["name.lua"] = text }: modules next to the inline scripts
--   on_error      "pass" (default), "drop" or "close"
--   unsafe        full standard library for the scripts
--   config, listener  use a real config file (and one of its listeners)
--   instructions, memory  limits (default: the config's)
--   write_max     bytes queued toward a side (frames not yet taken with
--                 to_client/to_server) past which the host refuses more,
--                 as limits.write_max does in the proxy (default: none)
--   redis         a fake Redis for gw.redis, gw.publish and gw.subscribe:
--                 testing.redis() (an in-memory store), a table of command
--                 functions ({ GET = function(key) ... end }) or a function
--                 (cmd, ...) -> reply. Replies queue and arrive in order
--                 once the call that sent them (from_client, advance...)
--                 has processed its input, or later with fake:latency(ms)
--   wait_ms, wait_bytes  timeouts.wait_ms and limits.wait_bytes
-- Raises when the scripts do not load.
function testing.new(opts)
  local t, err = new(opts, 3)
  if not t then error(err, 2) end
  return t
end

--- Like testing.new, but returns nil and the error when the scripts do not
--- load ("FILE:LINE: message").
function testing.try(opts)
  return new(opts, 3)
end

--- A test host running one inline script, source, after a first line
--- `local gw = require "gangway"` (so its own lines count from 2).
function testing.inline(source, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.source = 'local gw = require "gangway"\n' .. source
  local t, err = new(o, 3)
  if not t then error(err, 2) end
  return t
end

--- A new session, as if a client connected from `client`.
function Host:connect(client)
  return setmetatable({ core = self.core:connect(client) }, Session)
end

--- Moves the simulated clock by ms, running the timers that come due.
function Host:advance(ms) return self.core:advance(ms) end
--- The simulated clock, in ms.
function Host:now() return self.core:now() end

--- Reloads. opts: like testing.new's (merged over those of the last good load), or
--- nothing to load the same files again. Returns true, or nil and the error.
function Host:reload(opts)
  if opts and opts.redis ~= nil and opts.redis ~= self.opts.redis then
    error("t:reload: the fake Redis is the one given to testing.new", 2)
  end
  local merged = {}
  for k, v in pairs(self.opts) do merged[k] = v end
  for k, v in pairs(opts or {}) do merged[k] = v end
  if opts and (opts.sources or opts.source) then
    merged.source, merged.sources = opts.source, opts.sources
  end
  local config = make_config(self, merged)
  local ok, err = self.core:reload(config)
  if ok then self.opts = merged end -- the next reload starts from these, as a config file would
  return ok, err
end

--- Log lines so far ("error chat.lua: ..."), optionally only those at one
--- level ("debug", "info", "warn", "error").
function Host:logs(level)
  local all = self.core:logs()
  if not level then return all end
  local out = {}
  for _, line in ipairs(all) do
    if line:sub(1, #level + 1) == level .. " " then out[#out + 1] = line end
  end
  return out
end

--- Whether some log line contains text (plain, not a pattern).
function Host:logged(text, level)
  for _, line in ipairs(self:logs(level)) do
    if line:find(text, 1, true) then return true end
  end
  return false
end

--- The script layer's counters (frames, dropped, replaced, injected,
--- injected_refused, errors, timeouts, memory).
function Host:stats() return self.core:stats() end

--- A request to a script endpoint (gw.admin), as GET/POST/DELETE
-- /scripts/<name> makes it: returns the status and the JSON body.
function Host:admin(name, method, body) return self.core:admin(name, method, body) end
--- Whether the relay would hand a frame of that side and opcode to Lua.
function Host:want(side, opcode) return self.core:want(side, opcode) end
--- A frame of the listener's framing (gw.packet): Host:frame(opcode, body)
--- or, with a protocol, Host:frame("MC_SAY", { speaker = 0, ... }).
function Host:frame(opcode, body) return self.core:build(opcode, body) end
--- A writer of the listener's framing (gw.writer).
function Host:writer() return self.core:writer() end
--- A packet over a copy of frame, to read its fields (and, with a
--- protocol, pkt.name, pkt:decode(), pkt:encode(t)).
function Host:parse(frame, side) return self.core:parse(frame, side) end

--- A message published on channel, as Redis brings it from elsewhere:
--- gw.subscribe functions run now. Returns how many subscriptions match.
function Host:publish(channel, message)
  local n = self.core:publish(channel, message)
  self.core:advance(0)
  return n
end

--- Frees the Lua state and the temporary files (also done when collected).
function Host:close()
  if self.redis then self.redis:detach(self.core) end
  if self.core then self.core:close() end
  for path in pairs(self.files) do os.remove(path) end
  self.files = {}
  if self.dir then core.rmdir(self.dir) end
  self.dir = nil
end
Host.__gc = Host.close

-- ---- a fake Redis ----

local Store = {}
Store.__index = Store

local EPOCH = 1700000000 -- TIME's seconds at the simulated clock's 0

local WRONGTYPE = { err = "WRONGTYPE Operation against a key holding the wrong kind of value" }
local NOT_INT = { err = "ERR value is not an integer or out of range" }
local NOT_FLOAT = { err = "ERR value is not a valid float" }
local SYNTAX = { err = "ERR syntax error" }

local function int(s)
  local n = math.tointeger(tonumber(s))
  if n == nil or not tostring(s):match("^%-?%d+$") then return nil end
  return n
end

-- A score bound: "-inf", "+inf", "1.5", "(1.5" (exclusive).
local function bound(s)
  local open = s:sub(1, 1) == "("
  if open then s = s:sub(2) end
  local v = s == "-inf" and -math.huge or (s == "+inf" or s == "inf") and math.huge or tonumber(s)
  return v, open
end

local function above(v, b, open) if open then return v > b end return v >= b end
local function below(v, b, open) if open then return v < b end return v <= b end

local function score_text(v)
  if math.type(v) == "float" and v == math.floor(v) and v > -2^53 and v < 2^53 then
    return string.format("%d", v)
  end
  return tostring(v)
end

-- The key's entry of kind ("string", "set", "hash", "zset"), made when
-- make; nil when absent; WRONGTYPE when of another kind.
function Store:entry(key, kind, make)
  local e = self.data[key]
  if e and self.expires[key] and self.expires[key] <= self.now then
    self.data[key], self.expires[key], e = nil, nil, nil
  end
  if e and e.kind ~= kind then return nil, WRONGTYPE end
  if not e and make then
    e = { kind = kind, v = kind == "string" and "" or {} }
    self.data[key] = e
  end
  return e
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function drop_if_empty(self, key, e)
  if next(e.v) == nil then self.data[key], self.expires[key] = nil, nil end
end

-- name = { arguments at least, at most (nil: any), function(self, ...) }
local commands = {}

commands.PING = { 0, 1, function(_, msg) return msg or true end }
commands.GET = { 1, 1, function(self, key)
  local e, err = self:entry(key, "string")
  if err then return err end
  return e and e.v
end }
commands.SET = { 2, nil, function(self, key, value, ...)
  local opts, ttl, nx, xx = { ... }, nil, false, false
  local i = 1
  while i <= #opts do
    local o = opts[i]:upper()
    if o == "NX" then nx = true
    elseif o == "XX" then xx = true
    elseif (o == "EX" or o == "PX") and opts[i + 1] then
      local n = int(opts[i + 1])
      if not n or n <= 0 then return { err = "ERR invalid expire time in 'set' command" } end
      ttl = o == "EX" and n * 1000 or n
      i = i + 1
    else
      return SYNTAX
    end
    i = i + 1
  end
  local present = self:live(key)
  if (nx and present) or (xx and not present) then return nil end
  self.data[key] = { kind = "string", v = value }
  self.expires[key] = ttl and self.now + ttl or nil
  return true
end }
-- Is key there (not expired)?
function Store:live(key)
  local e = self.data[key]
  return e ~= nil and self:entry(key, e.kind) ~= nil
end
commands.DEL = { 1, nil, function(self, ...)
  local n = 0
  for _, key in ipairs{ ... } do
    if self:live(key) then n = n + 1 end
    self.data[key], self.expires[key] = nil, nil
  end
  return n
end }
commands.EXISTS = { 1, nil, function(self, ...)
  local n = 0
  for _, key in ipairs{ ... } do n = n + (self:live(key) and 1 or 0) end
  return n
end }
local function incr(self, key, by)
  local e, err = self:entry(key, "string", true)
  if err then return err end
  local n = e.v == "" and 0 or int(e.v)
  if not n or not by then return NOT_INT end
  n = n + by
  e.v = tostring(n)
  return n
end
commands.INCR = { 1, 1, function(self, key) return incr(self, key, 1) end }
commands.DECR = { 1, 1, function(self, key) return incr(self, key, -1) end }
commands.INCRBY = { 2, 2, function(self, key, by) return incr(self, key, int(by)) end }
commands.EXPIRE = { 2, 2, function(self, key, seconds)
  local n = int(seconds)
  if not n then return NOT_INT end
  if not self:live(key) then return 0 end
  self.expires[key] = self.now + n * 1000
  return 1
end }
commands.TTL = { 1, 1, function(self, key)
  if not self:live(key) then return -2 end
  if not self.expires[key] then return -1 end
  return (self.expires[key] - self.now + 999) // 1000
end }
commands.SADD = { 2, nil, function(self, key, ...)
  local e, err = self:entry(key, "set", true)
  if err then return err end
  local n = 0
  for _, m in ipairs{ ... } do
    if not e.v[m] then e.v[m], n = true, n + 1 end
  end
  return n
end }
-- SREM, HDEL, ZREM: members (fields) out of a key of kind.
local function remover(kind)
  return { 2, nil, function(self, key, ...)
    local e, err = self:entry(key, kind)
    if err then return err end
    if not e then return 0 end
    local n = 0
    for _, m in ipairs{ ... } do
      if e.v[m] ~= nil then e.v[m], n = nil, n + 1 end
    end
    drop_if_empty(self, key, e)
    return n
  end }
end
commands.SREM = remover("set")
commands.SISMEMBER = { 2, 2, function(self, key, m)
  local e, err = self:entry(key, "set")
  if err then return err end
  return e and e.v[m] and 1 or 0
end }
commands.SMEMBERS = { 1, 1, function(self, key) -- sorted, for specs
  local e, err = self:entry(key, "set")
  if err then return err end
  return e and sorted_keys(e.v) or {}
end }
commands.SCARD = { 1, 1, function(self, key)
  local e, err = self:entry(key, "set")
  if err then return err end
  return e and count(e.v) or 0
end }
commands.HGET = { 2, 2, function(self, key, field)
  local e, err = self:entry(key, "hash")
  if err then return err end
  return e and e.v[field]
end }
commands.HSET = { 3, nil, function(self, key, ...)
  local args = { ... }
  if #args % 2 ~= 0 then return { err = "ERR wrong number of arguments for 'hset' command" } end
  local e, err = self:entry(key, "hash", true)
  if err then return err end
  local n = 0
  for i = 1, #args, 2 do
    if e.v[args[i]] == nil then n = n + 1 end
    e.v[args[i]] = args[i + 1]
  end
  return n
end }
commands.HDEL = remover("hash")
commands.HGETALL = { 1, 1, function(self, key) -- fields sorted, for specs
  local e, err = self:entry(key, "hash")
  if err then return err end
  local out = {}
  for _, f in ipairs(e and sorted_keys(e.v) or {}) do
    out[#out + 1] = f
    out[#out + 1] = e.v[f]
  end
  return out
end }
commands.ZADD = { 3, nil, function(self, key, ...)
  local args = { ... }
  if #args % 2 ~= 0 then return SYNTAX end
  for i = 1, #args, 2 do
    if not bound(args[i]) or args[i]:sub(1, 1) == "(" then return NOT_FLOAT end
  end
  local e, err = self:entry(key, "zset", true)
  if err then return err end
  local n = 0
  for i = 1, #args, 2 do
    if e.v[args[i + 1]] == nil then n = n + 1 end
    e.v[args[i + 1]] = (bound(args[i]))
  end
  return n
end }
commands.ZREM = remover("zset")
commands.ZSCORE = { 2, 2, function(self, key, m)
  local e, err = self:entry(key, "zset")
  if err then return err end
  return e and e.v[m] and score_text(e.v[m])
end }
local function in_range(self, key, min, max, fn)
  local lo, lo_open = bound(min)
  local hi, hi_open = bound(max)
  if not lo or not hi then return { err = "ERR min or max is not a float" } end
  local e, err = self:entry(key, "zset")
  if err then return err end
  local n = 0
  for m, v in pairs(e and e.v or {}) do
    if above(v, lo, lo_open) and below(v, hi, hi_open) then
      n = n + 1
      if fn then fn(e, m) end
    end
  end
  if fn and e then drop_if_empty(self, key, e) end
  return n
end
commands.ZCOUNT = { 3, 3, function(self, key, min, max) return in_range(self, key, min, max) end }
commands.ZREMRANGEBYSCORE = { 3, 3, function(self, key, min, max)
  return in_range(self, key, min, max, function(e, m) e.v[m] = nil end)
end }
commands.ZRANGE = { 3, 4, function(self, key, start, stop, with)
  local a, b = int(start), int(stop)
  if not a or not b then return NOT_INT end
  if with and with:upper() ~= "WITHSCORES" then return SYNTAX end
  local e, err = self:entry(key, "zset")
  if err then return err end
  local list = {}
  for m, v in pairs(e and e.v or {}) do list[#list + 1] = { m, v } end
  table.sort(list, function(x, y)
    if x[2] ~= y[2] then return x[2] < y[2] end
    return x[1] < y[1]
  end)
  local n = #list
  if a < 0 then a = math.max(n + a, 0) end
  if b < 0 then b = n + b end
  local out = {}
  for i = a + 1, math.min(b + 1, n) do
    out[#out + 1] = list[i][1]
    if with then out[#out + 1] = score_text(list[i][2]) end
  end
  return out
end }
commands.TIME = { 0, 0, function(self)
  return { tostring(EPOCH + self.now // 1000), tostring(self.now % 1000 * 1000) }
end }
commands.PUBLISH = { 2, 2, function(self, channel, message)
  local n = 0
  for host in pairs(self.hosts) do
    local ok, k = pcall(host.publish, host, channel, message)
    if ok then n = n + k end
  end
  return n
end }

--- Runs one command against the store, as a spec (no host): the reply,
--- or nil and the error. fake:call("SMEMBERS", "bans").
function Store:call(cmd, ...)
  local v = self:run({ cmd, ... })
  if type(v) == "table" and v.err then return nil, v.err end
  return v
end

function Store:run(argv)
  local name = tostring(argv[1]):upper()
  local c = commands[name]
  if not c then
    return { err = "ERR unknown command '" .. tostring(argv[1]) .. "'" }
  end
  local n = #argv - 1
  if n < c[1] or (c[2] and n > c[2]) then
    return { err = "ERR wrong number of arguments for '" .. name:lower() .. "' command" }
  end
  return c[3](self, table.unpack(argv, 2))
end

-- The host's call (its clock): "down", why or "reply", value, delay.
function Store:answer(argv, host)
  if self.is_down then return "down", self.is_down end
  if host then self.now = math.max(self.now, host:now()) end
  self.sent[#self.sent + 1] = table.concat(argv, " ")
  return "reply", self:run(argv), self.delay
end

--- fake:down(true [, why]) makes every command fail at once, as with a
--- Redis that is down (nil, "redis: not connected (...)"); fake:down(false)
--- brings it back (the data stay).
function Store:down(flag, why)
  self.is_down = flag and ("not connected (" .. (why or "connection refused") .. ")") or nil
end

--- Replies (and messages) arrive ms later on the host's simulated clock
--- (t:advance), in order; 0 (the default): once the call that sent them
--- has processed its input.
function Store:latency(ms) self.delay = ms end

--- The commands sent since the last call ("SISMEMBER bans bob"), oldest
--- first.
function Store:commands()
  local out = self.sent
  self.sent = {}
  return out
end

function Store:attach(core_host) self.hosts[core_host] = true end
function Store:detach(core_host) self.hosts[core_host] = nil end

--- An in-memory Redis for testing.new{ redis = ... }, shared by every host
--- given it (a PUBLISH reaches the gw.subscribe functions of all of them).
--- Strings (GET SET DEL EXISTS INCR INCRBY DECR EXPIRE TTL), sets (SADD
--- SREM SISMEMBER SMEMBERS SCARD), hashes (HGET HSET HDEL HGETALL), sorted
--- sets (ZADD ZREM ZSCORE ZCOUNT ZRANGE ZREMRANGEBYSCORE), TIME (the
--- simulated clock, from 1700000000 s), PUBLISH, PING; others are errors.
--- Expiry follows the clock of the host that sends the commands.
function testing.redis()
  return setmetatable({
    data = {}, expires = {}, now = 0, delay = 0, sent = {},
    hosts = setmetatable({}, { __mode = "k" }),
  }, Store)
end

-- ---- Tales of Pirates helpers ----

local top = {}
testing.top = top

--- The keep-alive frame.
top.keepalive = "\0\2"
--- A frame of opcode and body (session 0x80000000).
function top.frame(opcode, body) return core.build("top", opcode, body) end
--- A writer of top's types (u16 BE length strings counting the NUL...).
function top.writer() return core.writer("top") end
--- A packet over a copy of frame, to read it: top.parse(f):str(8).
function top.parse(frame, side) return core.parse("top", frame, side) end
--- CM_SAY (1) from the client: str(text).
function top.say(text) return top.frame(1, top.writer():str(text)) end
--- MC_SAY (501) from the server: u32 speaker id, str(name), str(text).
function top.server_say(id, name, text)
  return top.frame(501, top.writer():u32(id):str(name):str(text))
end

return testing
