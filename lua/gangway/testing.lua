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

local function new(opts, level)
  opts = opts or {}
  local self = setmetatable({ files = {}, opts = opts }, Host)
  if not opts.config then self.dir = core.mkdtemp() end
  local ok, config = pcall(make_config, self, opts)
  if not ok then
    self:close()
    error(config, level)
  end
  local host, err = core.new{
    config = config, listener = opts.listener,
    instructions = opts.instructions, memory = opts.memory,
    write_max = opts.write_max,
  }
  if not host then
    self:close()
    return nil, err
  end
  self.core = host
  self.config = config
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

--- Frees the Lua state and the temporary files (also done when collected).
function Host:close()
  if self.core then self.core:close() end
  for path in pairs(self.files) do os.remove(path) end
  self.files = {}
  if self.dir then core.rmdir(self.dir) end
  self.dir = nil
end
Host.__gc = Host.close

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
