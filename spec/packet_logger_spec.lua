-- packet_logger_spec.lua: scripts/packet_logger.lua logs one JSON line per
-- frame, both ways, keep-alives included, and changes nothing.
local testing = require "gangway.testing"
local cjson = require "cjson"
local top = testing.top

describe("packet_logger.lua", function()
  it("logs every frame as JSON and passes it unchanged", function()
    local t = testing.new{ scripts = { "scripts/packet_logger.lua" } }
    local s = t:connect("10.1.2.3:4444")
    s:from_client(top.say("hi"))
    s:from_server(top.server_say(5, "npc", "hello"))
    s:from_client(top.keepalive)
    assert.same({ top.say("hi"), top.keepalive }, s:to_server())
    assert.same({ top.server_say(5, "npc", "hello") }, s:to_client())
    local lines = {}
    for _, line in ipairs(t:logs("info")) do
      local json = line:match("^info packet_logger%.lua: (.*)$")
      if json then lines[#lines + 1] = cjson.decode(json) end
    end
    assert.equal(3, #lines)
    assert.same({ session = 1, client = "10.1.2.3:4444", side = "client",
                  opcode = 1, name = "CM_SAY", len = 13, body = "0003686900" },
                lines[1])
    assert.equal("server", lines[2].side)
    assert.equal("MC_SAY", lines[2].name)
    assert.is_nil(lines[3].opcode)
    assert.equal(2, lines[3].len)
    assert.equal("", lines[3].body)
    t:close()
  end)
end)
