-- top_cipher_spec.lua: scripts/top_cipher.lua undoes and redoes the demo
-- server's body encryption (topd -e) so that the other scripts read and
-- rewrite clear chat, against the test vectors of docs/demo.md.
local testing = require "gangway.testing"

describe("scripts/top_cipher.lua", function()
  local key = "[11-26 07:25:00:000]"
  -- the contract (docs/demo.md), computed here independently
  local function stream(i)
    return function(bytes)
      local out = {}
      for k = 1, #bytes do
        out[k] = string.char(bytes:byte(k) ~ key:byte(i % #key + 1) ~ ((i * 7 + 13) & 0xff))
        i = i + 1
      end
      return table.concat(out)
    end
  end
  local function enc(f, frame) return frame:sub(1, 6) .. f(frame:sub(7)) end
  local top = testing.top

  local function logged_in(scripts)
    local t = testing.new{ protocol = "top", scripts = scripts }
    local s = t:connect()
    s:from_server(top.frame(940, top.writer():str(key)))
    s:from_client(top.frame(431, top.writer():str("bot1"):str("pw"):str("00-00"):u16(136):u16(911)))
    s:from_server(top.frame(931, top.writer():u16(0):u32(1001)))
    s:to_server(); s:to_client()
    return t, s
  end

  it("matches the demo's test vectors", function()
    local t, s = logged_in{ "scripts/top_cipher.lua" }
    local wire = "\0\13\128\0\0\0\86\36\42\12\115\111\23" -- CM_SAY "hi", i = 0..6
    s:from_client(wire)
    -- unchanged, so re-encrypted to the same bytes for the server
    assert.same({ wire }, s:to_server())
    t:close()
  end)

  it("lets chat_filter read and rewrite encrypted chat", function()
    local t, s = logged_in{ "scripts/top_cipher.lua", "scripts/chat_filter.lua" }
    local c2s_in, c2s_out, s2c_in, s2c_out = stream(0), stream(0), stream(0), stream(0)
    s:from_client(enc(c2s_in, top.say("this damn crab")))
    -- the server gets the rewritten line, encrypted with its own counter
    assert.same({ enc(c2s_out, top.say("this darn crab")) }, s:to_server())
    -- and a line after a longer rewrite still decrypts on both ends
    s:from_client(enc(c2s_in, top.say("hi")))
    assert.same({ enc(c2s_out, top.say("hi")) }, s:to_server())
    -- server to client: decrypted, passed, encrypted again
    local line = top.server_say(1001, "bot1", "hello")
    s:from_server(enc(s2c_in, line))
    assert.same({ enc(s2c_out, line) }, s:to_client())
    -- keep-alives stay as they are and use no key
    s:from_client("\0\2")
    assert.same({ "\0\2" }, s:to_server())
    assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
    t:close()
  end)

  it("works when the login reaches gangway before the key", function()
    local t = testing.new{ protocol = "top", scripts = { "scripts/top_cipher.lua", "scripts/chat_filter.lua" } }
    local s = t:connect()
    s:from_client(top.frame(431, top.writer():str("bot1"):str("pw"):str("00-00"):u16(136):u16(911)))
    s:from_server(top.frame(940, top.writer():str(key)))
    s:from_server(top.frame(931, top.writer():u16(0):u32(1001)))
    s:to_server(); s:to_client()
    local c2s_in, c2s_out = stream(0), stream(0)
    s:from_client(enc(c2s_in, top.say("this damn crab")))
    assert.same({ enc(c2s_out, top.say("this darn crab")) }, s:to_server())
    t:close()
  end)

  it("passes CM_LOGIN and MC_LOGIN themselves in clear", function()
    local t = testing.new{ protocol = "top", scripts = { "scripts/top_cipher.lua" } }
    local s = t:connect()
    s:from_server(top.frame(940, top.writer():str(key)))
    s:to_client()
    local login = top.frame(431, top.writer():str("bot1"):str("pw"):str("00-00"):u16(136):u16(911))
    s:from_client(login)
    assert.same({ login }, s:to_server())
    local ok = top.frame(931, top.writer():u16(0):u32(1001))
    s:from_server(ok)
    assert.same({ ok }, s:to_client())
    t:close()
  end)
end)
