-- packet_logger_spec.lua: scripts/packet_logger.lua logs one JSON line per
-- frame it watches (as shipped: logins and chat from the client; with
-- ONLY = nil: every frame both ways, keep-alives included) and changes
-- nothing. A login is logged by its account name: its password never
-- appears in any log line, in any form.
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

-- A host running packet_logger.lua with ONLY = nil. Returns it and a
-- function that closes it and removes the copy.
local function every_frame()
  local dir = os.tmpname()
  os.remove(dir)
  assert(require("lfs").mkdir(dir))
  local f = assert(io.open("scripts/packet_logger.lua"))
  local text = f:read("a"):gsub("\nlocal ONLY = [^\n]*", "\nlocal ONLY = nil", 1)
  f:close()
  f = assert(io.open(dir .. "/packet_logger.lua", "w"))
  f:write(text)
  f:close()
  local t = testing.new{ protocol = "top", scripts = { dir .. "/packet_logger.lua" } }
  return t, function()
    t:close()
    os.remove(dir .. "/packet_logger.lua")
    require("lfs").rmdir(dir)
  end
end

describe("packet_logger.lua", function()
  it("as shipped, logs client chat as JSON and passes everything unchanged", function()
    local t = testing.new{ protocol = "top", scripts = { "scripts/packet_logger.lua" } }
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
    local t, cleanup = every_frame()
    exchange(t)
    local lines = json_lines(t)
    assert.equal(3, #lines)
    assert.equal("CM_SAY", lines[1].name)
    assert.equal("server", lines[2].side)
    assert.equal("MC_SAY", lines[2].name)
    assert.is_nil(lines[3].opcode)
    assert.equal(2, lines[3].len)
    assert.equal("", lines[3].body)
    cleanup()
  end)

  local PASSWORD = "s3cr3t-pa55"
  local LOGIN = top.frame(431, top.writer():str("bot1"):str(PASSWORD)
    :str("00-1A-2B-3C-4D-5E"):u16(136):u16(911))

  -- Whether any log line holds the password: as text, in hex (either
  -- case), or as a %q-escaped or JSON string would show it.
  local function leaks(t)
    local hex = PASSWORD:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
    local forms = { PASSWORD, hex, (hex:gsub("..", "%0 ")), (hex:gsub("..", "\\x%0")) }
    for _, line in ipairs(t:logs()) do
      for _, form in ipairs(forms) do
        if line:lower():find(form, 1, true) then return line end
      end
    end
  end

  for _, variant in ipairs({ "as shipped", "with ONLY = nil" }) do
    it(variant .. ", logs a login by its account name, never its password", function()
      local t, cleanup
      if variant == "as shipped" then
        t = testing.new{ protocol = "top", scripts = { "scripts/packet_logger.lua" } }
        cleanup = function() t:close() end
      else
        t, cleanup = every_frame()
      end
      local s = t:connect("10.1.2.3:4444")
      s:from_client(LOGIN)
      -- a login cut short after the account: still no bytes of it logged
      local short = top.frame(431, top.writer():str("bot2"):bytes(PASSWORD:sub(1, 5)))
      s:from_client(short)
      s:from_client(top.frame(431, "\0"))
      assert.same({ LOGIN, short, top.frame(431, "\0") }, s:to_server())
      local lines = json_lines(t)
      assert.equal(3, #lines)
      assert.same({ session = 1, client = "10.1.2.3:4444", side = "client",
                    opcode = 431, name = "CM_LOGIN", len = #LOGIN, account = "bot1" },
                  lines[1])
      assert.is_true(lines[2].malformed) -- decoded whole or not at all
      assert.is_nil(lines[2].body)
      assert.is_true(lines[3].malformed)
      assert.is_nil(lines[3].body)
      assert.is_nil(leaks(t))
      cleanup()
    end)
  end
end)
