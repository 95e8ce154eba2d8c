-- pipeline_spec.lua: protocols with phases and codecs, through the same
-- session pipeline (src/pipe.c) as the relay: unframed bytes before the
-- frames (expect_raw), a switch of framing at a frame boundary (set_framing,
-- to "raw" for an in-band TLS upgrade and back), Lua body codecs with state
-- and the C zlib stream codec and MQTT's type byte before its varint length.
-- scripts/top_cipher.lua has a spec of its own.
local testing = require "gangway.testing"
local core = testing.core

local function u16(body) return string.pack(">s2", body) end

describe("phases", function()
  it("an unframed hello and a one-byte answer before the frames", function()
    -- A protocol whose client first sends 4 bytes with no length field,
    -- and whose server answers with one byte; then u16be frames.
    local t = testing.inline([[
      gw.on_connect(function(session)
        session:expect_raw("client", 4)
        session:expect_raw("server", 1)
      end)
      gw.on("client", "*", function(pkt) pkt:set_body(pkt:body():upper()) end)
    ]], { framing = "u16be" })
    local s = t:connect()
    -- the hello would be a frame of 0xffff bytes if it were framed
    s:from_client("\255\255HI" .. u16("one") .. u16("two"))
    assert.same({ "\255\255HI", u16("ONE"), u16("TWO") }, s:to_server())
    s:from_server("S" .. u16("ok"))
    -- the byte and the frame after it go on in one write, as they came
    assert.equal("S" .. u16("ok"), table.concat(s:to_client()))
    assert.is_nil(s:closed())
    t:close()
  end)

  it("the same handshake from config.lua phases, no script needed", function()
    local t = testing.inline([[
      gw.on("client", "*", function(pkt) pkt:set_body(pkt:body():upper()) end)
    ]], { framing = "u16be",
          phases = { client = { { raw = 4 } },
                     -- the server's first frame is a u8-length greeting
                     server = { { raw = 1 }, { framing = { length_size = 1 }, frames = 1 } } } })
    local s = t:connect()
    for c in ("\255\255HI" .. u16("one")):gmatch(".") do s:from_client(c) end
    assert.equal("\255\255HI" .. u16("ONE"), table.concat(s:to_server()))
    s:from_server("S" .. "\3abc" .. u16("ok"))
    assert.equal("S\3abc" .. u16("ok"), table.concat(s:to_client()))
    -- after its steps the listener's framing: a u16be frame of 0x0203 bytes waits
    s:from_server("\2\3")
    assert.same({}, s:to_client())
    assert.is_nil(s:closed())
    t:close()
  end)

  it("switches to a framing table of its own after a handshake, checked as config.lua checks it", function()
    local t = testing.inline([[
      gw.on("client", "*", function(pkt, session)
        if pkt.opcode then -- a frame of the framing switched to
          session:send_to_client(gw.packet(nil, "op " .. pkt.opcode .. " " .. pkt:body()))
        elseif pkt:body() == "HELLO" then
          -- after the handshake: a tag byte, a u8 length (of what follows it),
          -- a little-endian u16 opcode
          session:set_framing("client", { length_offset = 1, length_size = 1,
                                          opcode_offset = 2, opcode_size = 2, byte_order = "little" })
        elseif pkt:body() == "BAD" then
          local ok, err = pcall(session.set_framing, session, "client", { length_size = 5 })
          session:send_to_client(gw.packet(nil, err))
          ok, err = pcall(session.set_framing, session, "client", { lenght_size = 2 })
          session:send_to_client(gw.packet(nil, err))
          ok, err = pcall(session.set_framing, session, "client", "u16bee")
          session:send_to_client(gw.packet(nil, err))
          return gw.DROP
        end
      end)
    ]], { framing = "u16be" })
    local s = t:connect()
    s:from_client(u16("BAD"))
    local errs = s:to_client()
    assert.matches('session:set_framing: framing.length_size: expected 1, 2, 3, 4 or "varint", got 5',
                   errs[1], 1, true)
    assert.matches('session:set_framing: framing.lenght_size: unknown key (did you mean "length_size"?)',
                   errs[2], 1, true)
    assert.matches('session:set_framing: framing: unknown preset "u16bee" (did you mean "u16be"?',
                   errs[3], 1, true)
    assert.same({}, s:to_server())
    s:from_client(u16("HELLO"))
    assert.same({ u16("HELLO") }, s:to_server())
    -- a frame of the new framing: tag, length 4, opcode 0x0201, body "xy"
    local frame = "\9\4\1\2xy"
    s:from_client(frame .. frame:sub(1, 3))
    assert.same({ frame }, s:to_server())
    assert.same({ u16("op 513 xy") }, s:to_client())
    assert.is_nil(s:closed())
    t:close()
  end)

  it("charges a framing table's reading to the instruction limit (a loop of them ends as any loop does)", function()
    local t = testing.inline([[
      n = 0
      gw.on("client", "*", function(pkt, session)
        if pkt:body() == "count" then return session:send_to_client(gw.packet(nil, tostring(n))) end
        while true do
          session:set_framing("server", { length_size = 2 })
          n = n + 1
        end
      end)
    ]], { framing = "u16be", instructions = 100000 })
    local s = t:connect()
    s:from_client(u16("loop"))
    assert.truthy(t:logged("instruction limit exceeded"))
    s:from_client(u16("count"))
    local n = tonumber(s:to_client()[1]:sub(3))
    -- about 100 instructions a table (and a few for the loop itself): at most
    -- 1,000 tables in 100,000 instructions, where uncharged it read ~8,000
    assert.is_true(n > 0 and n <= 1000, tostring(n))
    t:close()
  end)

  it("switches to raw after STARTTLS and back to frames", function()
    local t = testing.inline([[
      gw.on("client", "*", function(pkt, session)
        if pkt:body() == "STARTTLS" then
          session:set_framing("client", "raw")
          session:set_framing("server", "raw")
        elseif pkt:body() == "PLAIN" then
          session:set_framing("client", "u16be")
        end
      end)
    ]], { framing = "u16be" })
    local s = t:connect()
    -- the switch comes after the frame in hand: STARTTLS itself is framed
    local hello = "\22\3\1\2\0\1\0\1\252\3\3" -- a TLS ClientHello's start
    s:from_client(u16("STARTTLS") .. hello)
    assert.same({ u16("STARTTLS"), hello }, s:to_server())
    s:from_server("\22\3\3\0\122") -- the server's answer, not u16be-shaped
    assert.same({ "\22\3\3\0\122" }, s:to_client())
    assert.is_nil(s:closed())
    t:close()
  end)
end)

describe("codecs", function()
  local function rot(bytes, st)
    st.calls = (st.calls or 0) + 1
    return (bytes:gsub(".", function(c) return string.char((c:byte() + st.k) % 256) end))
  end

  it("a Lua body codec: handlers see clear frames, both peers their own", function()
    local t = testing.inline([[
      local shift = gw.codec{ name = "shift",
        decode = function(b, st) return (b:gsub(".", function(c) return string.char((c:byte() - st.k) % 256) end)) end,
        encode = function(b, st) return (b:gsub(".", function(c) return string.char((c:byte() + st.k) % 256) end)) end }
      gw.on_connect(function(session)
        -- the client's bodies are shifted by 1 after a 2-byte length
        session:set_codec("client", shift, { body = true, offset = 2, state = { k = 1 } })
      end)
      gw.on("client", "*", function(pkt, session)
        assert(pkt:body() == "hello", pkt:body())
        pkt:set_body("hello, world")                -- longer: the length grows
        session:send_to_client(gw.packet(nil, "ack"))
      end)
    ]], { framing = "u16be" })
    local s = t:connect()
    s:from_client(u16(rot("hello", { k = 1 })))
    assert.same({ u16("hello, world") }, s:to_server())
    -- toward the client the codec encodes, from its own side's settings
    assert.same({ u16(rot("ack", { k = 1 })) }, s:to_client())
    assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
    t:close()
  end)

  it("a decoder switched on and off at every frame loses and holds nothing", function()
    local t = testing.inline([[
      local n = 0
      gw.on("client", "*", function(pkt, session)
        n = n + 1
        if n % 2 == 0 then session:set_codec("client", "xor", { ways = "in", key = "\0" })
        else session:set_codec("client", nil) end
      end)
    ]], { framing = "u16be" })
    local frames = {}
    for i = 1, 400 do frames[i] = u16(string.format("x%06d", i)) end
    local all = table.concat(frames)
    -- the stream cut mid-frame at every parity of the switch, as reads cut it
    for cut = 1000, 1030 do
      local s = t:connect()
      s:from_client(all:sub(1, cut))
      s:from_client(all:sub(cut + 1))
      assert.equal(all, table.concat(s:to_server()))
      assert.is_nil(s:closed())
    end
    t:close()
  end)

  it("a codec that fails closes its session only", function()
    local t = testing.inline([[
      local bad = gw.codec{ decode = function() error("no key yet") end,
                            encode = function(b) return b end }
      gw.on_connect(function(session)
        session:set_codec("client", bad, { body = true, offset = 2 })
      end)
      gw.on("client", "*", function() end)
    ]], { framing = "u16be" })
    local a, b = t:connect(), t:connect()
    a:from_client(u16("x"))
    assert.matches("codec lua: .*no key yet", a:closed())
    assert.same({}, a:to_server())
    t:close()
  end)

  it("zlib on the client's wire, a handler that rewrites, the server in clear", function()
    local t = testing.inline([[
      gw.on_connect(function(session) session:set_codec("client", "zlib") end)
      gw.on("client", "*", function(pkt) pkt:set_body(pkt:body():rep(2)) end)
    ]], { framing = "u16be" })
    local s = t:connect()
    local z = core.zlib()
    local wire = z:deflate(u16("ab") .. u16("cd"))
    -- cut at every byte: the decoder keeps its state across reads
    for i = 1, #wire do s:from_client(wire:sub(i, i)) end
    assert.same({ u16("abab"), u16("cdcd") }, s:to_server())
    -- toward the client it compresses: inflate and compare
    s:from_server(u16("hi"))
    local back = s:to_client()
    assert.equal(u16("hi"), z:inflate(table.concat(back)))
    t:close()
  end)
end)

describe("mqtt", function()
  it("handlers on the packet type before a varint length", function()
    local t = testing.inline([[
      gw.on("client", 0x30, function(pkt) -- PUBLISH, QoS 0
        local topic = pkt:str(pkt.body_offset)
        if topic == "secret" then return gw.DROP end
      end)
    ]], { framing = "mqtt" })
    local s = t:connect()
    local function publish(topic, payload)
      local body = string.pack(">s2", topic) .. payload
      assert(#body < 128)
      return "\48" .. string.char(#body) .. body
    end
    local connect = "\16\13\0\4MQTT\4\2\0\60\0\1a"
    s:from_client(connect .. publish("news", "hi") .. publish("secret", "pw") .. "\192\0")
    assert.same({ connect, publish("news", "hi"), "\192\0" }, s:to_server())
    assert.same({ publish("secret", "pw") }, s:dropped())
    t:close()
  end)
end)
