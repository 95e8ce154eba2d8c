-- chat_filter_spec.lua: scripts/chat_filter.lua through the real script
-- layer: banned lines dropped, words rewritten to other lengths, the rest
-- untouched.
local testing = require "gangway.testing"
local top = testing.top

describe("chat_filter.lua", function()
  local t, s
  before_each(function()
    t = testing.new{ protocol = "top", scripts = { "scripts/chat_filter.lua" } }
    s = t:connect("10.0.0.7:51234")
  end)
  after_each(function() t:close() end)

  it("passes a clean line byte for byte", function()
    s:from_client(top.say("hello there"))
    assert.same({ top.say("hello there") }, s:to_server())
    assert.same({}, s:dropped())
  end)

  it("drops a line with a banned phrase, whatever its case", function()
    s:from_client(top.say("BUY GOLD at example dot com"))
    assert.same({}, s:to_server())
    assert.same({ top.say("BUY GOLD at example dot com") }, s:dropped())
    assert.is_true(t:logged('dropped chat line "BUY GOLD at example dot com"', "info"))
  end)

  it("rewrites words, rebuilding the frame with its new length", function()
    s:from_client(top.say("you noob"))
    local out = s:to_server()
    assert.equal(1, #out)
    assert.equal(top.say("you new friend"), out[1])
    -- length field recomputed: 8 header + 2 length + 14 text + NUL
    assert.equal(25, #out[1])
    assert.equal(25, string.unpack(">I2", out[1]))
    assert.equal("you new friend", top.parse(out[1], "client"):str(8))
  end)

  it("shortens lines too", function()
    s:from_client(top.say("idiot"))
    assert.same({ top.say("friend") }, s:to_server())
    s:from_client(top.say("damn"))
    assert.same({ top.say("darn") }, s:to_server())
  end)

  it("keeps bytes that follow the text in the body", function()
    local frame = top.frame(1, top.writer():str("noob"):u32(0xdeadbeef))
    s:from_client(frame)
    local out = s:to_server()[1]
    local pkt = top.parse(out, "client")
    local text, off = pkt:str(8)
    assert.equal("new friend", text)
    assert.equal(0xdeadbeef, pkt:u32(off))
    assert.equal(off + 4, #pkt)
  end)

  it("only looks at CM_SAY from the client", function()
    assert.is_true(t:want("client", 1))
    assert.is_false(t:want("client", 6))
    assert.is_false(t:want("server", 501))
    local server_line = top.server_say(7, "bob", "noob")
    s:from_server(server_line)
    assert.same({ server_line }, s:to_client())
    assert.equal(0, t:stats().frames)
  end)

  it("handles frames split and batched across reads", function()
    local a, b = top.say("noob"), top.say("fine")
    local stream = a .. b .. top.keepalive
    s:from_client(stream:sub(1, 5))
    assert.same({}, s:to_server())
    s:from_client(stream:sub(6))
    assert.same({ top.say("new friend"), b, top.keepalive }, s:to_server())
  end)
end)
