-- packet_logger_spec.lua: scripts/packet_logger.lua logs one JSON line per
-- frame it watches (as shipped: logins and chat from the client; with
-- ONLY = nil: every frame both ways, keep-alives included) and changes
-- nothing.
local testing = require "gangway.testing"
local cjson = require "cjson"
local top = testing.top

local function json_lines(t)
  local lines = {}
  for _, line in ipairs(t:logs("info")) do
    local json = line:match("^info packet_logger%.lua: (.*)$")
    if json then lines[#lines + 1] = cjson.decode(json) end
  end
  return lines
end

local function exchange(t)
  local s = t:connect("10.1.2.3:4444")
  s:from_client(top.say("hi"))
  s:from_server(top.server_say(5, "npc", "hello"))
  s:from_client(top.keepalive)
  assert.same({ top.say("hi"), top.keepalive }, s:to_server())
  assert.same({ top.server_say(5, "npc", "hello") }, s:to_client())
end

describe("packet_logger.lua", function()
  it("as shipped, logs client chat as JSON and passes everything unchanged", function()
    local t = testing.new{ scripts = { "scripts/packet_logger.lua" } }
    exchange(t)
    local lines = json_lines(t)
    assert.equal(1, #lines)
    assert.same({ session = 1, client = "10.1.2.3:4444", side = "client",
                  opcode = 1, name = "CM_SAY", len = 13, body = "0003686900" },
                lines[1])
    assert.is_false(t:want("server", 501)) -- the rest never enters Lua
    t:close()
  end)

  it("with ONLY = nil, logs every frame both ways", function()
    -- The variant next to a copy of top.lua, which it requires.
    local lfs = require "lfs"
    local dir = os.tmpname()
    os.remove(dir)
    assert(lfs.mkdir(dir))
    local function copy(from, to, edit)
      local f = assert(io.open(from))
      local text = f:read("a")
      f:close()
      f = assert(io.open(to, "w"))
      f:write(edit and edit(text) or text)
      f:close()
    end
    copy("scripts/top.lua", dir .. "/top.lua")
    copy("scripts/packet_logger.lua", dir .. "/packet_logger.lua", function(text)
      return (text:gsub("\nlocal ONLY = [^\n]*", "\nlocal ONLY = nil", 1))
    end)
    local t = testing.new{ scripts = { dir .. "/packet_logger.lua" } }
    exchange(t)
    local lines = json_lines(t)
    assert.equal(3, #lines)
    assert.equal("CM_SAY", lines[1].name)
    assert.equal("server", lines[2].side)
    assert.equal("MC_SAY", lines[2].name)
    assert.is_nil(lines[3].opcode)
    assert.equal(2, lines[3].len)
    assert.equal("", lines[3].body)
    t:close()
    os.remove(dir .. "/top.lua")
    os.remove(dir .. "/packet_logger.lua")
    lfs.rmdir(dir)
  end)
end)
