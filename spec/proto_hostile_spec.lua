-- proto_hostile_spec.lua: packets by name against hostile frames, careless
-- definitions and buggy scripts (issue 12's review): what must raise to the
-- handler, what must never read freed memory or loop, and what a bystander
-- session keeps seeing meanwhile. The C side runs under ASan in the
-- sanitizer build (tools/sanitize.sh runs the specs there too).
local testing = require "gangway.testing"
local top = testing.top

local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert.is_false(ok, "expected an error")
  return err
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("a")
  f:close()
  return text
end

-- A protocol directory of the spec's own: packets.lua (top's unless given)
-- and init.lua if given. Returns its path, a function that (re)writes one
-- of its files, and one that removes it all.
local function protocol_dir(packets, init)
  local dir, written = testing.core.mkdtemp(), {}
  local function write(name, text)
    local f = assert(io.open(dir .. "/" .. name, "wb"))
    f:write(text)
    f:close()
    written[name] = true
  end
  write("packets.lua", packets or read("protocols/top/packets.lua"))
  if init then write("init.lua", init) end
  return dir, write, function()
    for name in pairs(written) do os.remove(dir .. "/" .. name) end
    testing.core.rmdir(dir)
  end
end

describe("pkt:encode and a table whose metamethods change the packet", function()
  it("raises instead of reading the body set_body freed", function()
    local t = testing.inline([[
      gw.on("client", "CM_SAY", function(pkt, session)
        if pkt:decode().text ~= "attack" then return end
        pkt:set_body(gw.writer():str(("first body "):rep(5)))
        local n = 0
        local ok, err = pcall(pkt.encode, pkt, setmetatable({}, { __index = function()
          n = n + 1
          pkt:set_body(gw.writer():str(("z"):rep(3000 + n)))
        end }))
        session:send_to_client(gw.packet("MC_SAY", { speaker = 0, name = "[test]",
                                                      text = tostring(ok) .. " " .. tostring(err) }))
        return gw.DROP
      end)
    ]], { protocol = "top" })
    local s, bystander = t:connect(), t:connect()
    s:from_client(top.say("attack"))
    local out = s:to_client()
    assert.equal(1, #out)
    assert.matches("false .*pkt:encode: CM_SAY: field text: the packet changed while it was "
                   .. "being encoded %(a metamethod of the table set its body%)",
                   t:parse(out[1], "server"):decode().text)
    bystander:from_client(top.say("still here"))
    assert.same({ top.say("still here") }, bystander:to_server())
    t:close()
  end)
end)

describe("players by name", function()
  -- A module that names a session after its first chat line, whatever the
  -- bytes: what a module for another game might do.
  local dir, remove
  before_each(function()
    dir, _, remove = protocol_dir(nil, [[
      local gw = require "gangway"
      gw.on("client", "CM_SAY", function(pkt, session)
        local text = pkt:decode().text
        if gw.run_command(session, text) then return gw.DROP end
        if not session.player then gw.set_player(session, { name = text }) return gw.DROP end
      end)
      gw.on_tell(function(session, text)
        session:send_to_client(gw.packet("MC_SAY", { speaker = 0, name = "[proxy]", text = text }))
      end)
    ]])
  end)
  after_each(function() remove() end)

  it("compare names byte for byte: a NUL inside is not the end of the name", function()
    local t = testing.inline([[
      gw.command("/who", function(session, args)
        local p = gw.player(args)
        session:tell(p and ("%q"):format(p.player.name) or "nobody")
      end)
      gw.command("/nul", function(session) session:tell(tostring(gw.player("gm1\0x"))) end)
    ]], { protocol = dir })
    local impostor, gm = t:connect(), t:connect()
    impostor:from_client(top.say("gm1\0x")) -- the older session
    gm:from_client(top.say("gm1"))
    gm:from_client(top.say("/who gm1"))
    assert.same({ top.server_say(0, "[proxy]", '"gm1"') }, gm:to_client())
    gm:from_client(top.say("/nul"))
    assert.same({ top.server_say(0, "[proxy]", "nil") }, gm:to_client())
    t:close()
  end)
end)

describe("the top module's memory", function()
  it("stays bounded over 30,000 sessions that log in (half never answered) and end", function()
    local t = testing.new{ protocol = "top",
                           scripts = { "scripts/admin_commands.lua", "scripts/online_command.lua" } }
    local accepted = t:frame("MC_LOGIN", { error = 0, player = 7 })
    local function round(n)
      for i = 1, n do
        local s = t:connect()
        s:from_client(t:frame("CM_LOGIN", { account = "p" .. i, password = "pw", mac = "00",
                                            version = 136, marker = 911 }))
        if i % 2 == 0 then s:from_server(accepted) end -- the others end between the two
        s:to_server()
        s:to_client()
        s:close("done")
      end
    end
    round(10000)
    local first = t:stats().memory
    round(10000)
    round(10000)
    -- a pending login or a player kept per session would be megabytes (3 MB
    -- more over these 20,000); the collector's own swing is some 100 KB
    assert.is_true(t:stats().memory < first + 1024 * 1024,
                   ("memory %d after the first 10,000, %d after 30,000"):format(first, t:stats().memory))
    assert.same({}, t:connect():to_client())
    t:close()
  end)
end)

describe("counts a hostile frame claims", function()
  local dir, remove
  before_each(function()
    dir, _, remove = protocol_dir([[return {
      BIG = { side = "client", opcode = 10, "u64 n", { "items", count = "n", "u32 id", "str name" } },
      SIGNED = { side = "client", opcode = 11, "i64 n", { "items", count = "n", "u8 id" } },
      DEEP = { side = "client", opcode = 12, "u8 k", { "a", count = 65535, { "b", count = 65535,
        { "c", count = 65535, { "d", count = 65535, { "e", count = 65535, { "f", count = 65535, "u8 x" } } } } } } },
    }]])
  end)
  after_each(function() remove() end)

  it("are misfits checked against the bytes left before anything is built", function()
    local t = testing.new{ protocol = dir }
    local function decode_err(op, body)
      local p = t:parse(top.frame(op, body), "client")
      return err_of(p.decode, p):match("pkt:decode.*")
    end
    assert.equal("pkt:decode: BIG: field items (array at offset 16): 18446744073709551615 "
                 .. "elements run past the end of the 20-byte frame",
                 decode_err(10, top.writer():u64(-1):u32(1):build()))
    assert.equal("pkt:decode: BIG: field items (array at offset 16): 9223372036854775808 "
                 .. "elements run past the end of the 20-byte frame",
                 decode_err(10, top.writer():u64(math.mininteger):u32(1):build()))
    assert.equal("pkt:decode: BIG: field items (array at offset 16): 4611686018427387904 "
                 .. "elements of at least 6 bytes run past the end of the 20-byte frame",
                 decode_err(10, top.writer():u64(1 << 62):u32(1):build()))
    assert.equal("pkt:decode: SIGNED: field items (array at offset 16): its count field n is "
                 .. "-9223372036854775808", decode_err(11, top.writer():i64(math.mininteger):build()))
    -- nested fixed counts: their size saturates rather than wrapping to a small one
    assert.equal("pkt:decode: DEEP: field a (array at offset 9): 65535 elements of at least "
                 .. "18446744073709551615 bytes run past the end of the 109-byte frame",
                 decode_err(12, "\1" .. ("x"):rep(100)))
    t:close()
  end)
end)

describe("hostile bytes in the example scripts' logs", function()
  it("never start a line of their own (a chat line or an account with a newline)", function()
    local t = testing.new{ protocol = "top",
                           scripts = { "scripts/admin_commands.lua", "scripts/chat_filter.lua",
                                       "scripts/speed_limit.lua" } }
    local function login(account)
      local s = t:connect()
      s:from_client(t:frame("CM_LOGIN", { account = account, password = "pw", mac = "00",
                                          version = 136, marker = 911 }))
      s:from_server(t:frame("MC_LOGIN", { error = 0, player = 5 }))
      return s
    end
    local gm = login("gm1")
    local forged = "\n2026-11-26T10:00:00.000Z error FORGED\r"
    local evil = login("evil" .. forged)
    evil:from_client(top.say("buy gold" .. forged))     -- dropped, logged
    evil:from_client(top.say("you noob" .. forged))     -- rewritten, logged
    for _ = 1, 30 do                                    -- closed by speed_limit, logged
      evil:from_client(t:frame("CM_BEGINACTION", { world = 5, action = 1, data = "" }))
    end
    assert.is_not_nil(evil:closed())
    gm:from_client(top.say("/ban esc\27[2J"))           -- a terminal escape, logged
    login("esc\27[2J")                                  -- refused, logged
    local lines = t:logs()
    assert.is_true(#lines >= 5, table.concat(lines, "|"))
    for _, line in ipairs(lines) do
      assert.is_nil(line:find("[%c]"), ("a control byte in the log line %q"):format(line))
    end
    assert.is_true(t:logged("refused the login of esc\\27[2J: banned", "info"))
    assert.is_true(t:logged("gm1 banned esc\\27[2J", "info"))
    assert.is_true(t:logged("evil\\102026-11-26T10:00:00.000Z error FORGED\\13 (session 2", "warn"))
    assert.is_true(t:logged('dropped chat line "buy gold\\n2026-11-26T10:00:00.000Z error FORGED\\13"', "info"))
    t:close()
  end)
end)

describe("boundary values", function()
  it("round-trip integer extremes, NaN and infinities, NUL bytes inside strings", function()
    local t = testing.new{ protocol = "spec/fixtures/proto_test" }
    local v = { a = 255, b = 65535, c = 4294967295, d = -1, e = -128, f = -32768,
                g = -2147483648, h = math.mininteger, x = 0 / 0, y = -math.huge,
                s = "a\0b\0", raw = "\0\0\0" }
    local d = t:parse(t:frame("ALL", v), "client"):decode()
    assert.is_true(d.x ~= d.x)  -- NaN
    d.x, v.x = 0, 0
    assert.same(v, d)
    -- a double beyond f32 is an infinity, a tiny one 0
    v.x = 1e300
    assert.equal(math.huge, t:parse(t:frame("ALL", v), "client"):decode().x)
    v.x = 1e-300
    assert.equal(0, t:parse(t:frame("ALL", v), "client"):decode().x)
    -- u64 takes any integer (above 2^63 it reads negative), never a float
    v.d = math.maxinteger + 0.0
    assert.matches("field d: expected an integer %(u64%), got a float", err_of(t.frame, t, "ALL", v))
    v.d = math.maxinteger
    -- top's str: a u16 length that counts the NUL, so 65534 bytes at most
    v.s = ("s"):rep(65535)
    assert.matches("field s: a 65535%-byte string does not fit a 2%-byte length",
                   err_of(t.frame, t, "ALL", v))
    -- a body past the framing's max_frame is refused, the packet unchanged
    local p = t:parse(top.frame(300, "\0\1"), "client")
    assert.matches("pkt:encode: a 65009%-byte body makes a frame outside the top framing's "
                   .. "limits for client frames %(8%.%.16384 bytes%)",
                   err_of(p.encode, p, { a = 1, b = 2, c = ("c"):rep(65000) }))
    assert.equal(top.frame(300, "\0\1"), p:bytes())
    t:close()
  end)
end)

describe("random frames", function()
  -- Equal as decode gives them: NaN equals NaN.
  local function same(a, b)
    if type(a) ~= type(b) then return false end
    if type(a) ~= "table" then return a == b or (a ~= a and b ~= b) end
    for k, v in pairs(a) do if not same(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end

  it("decode or raise a misfit, and what decodes encodes back to the same fields", function()
    local t = testing.new{ protocol = "spec/fixtures/proto_test" }
    local rng = 12345 -- a fixed sequence of its own: the same frames every run
    local function rand(n)
      rng = (rng * 1103515245 + 12345) % 2147483648
      return (rng >> 16) % n -- the high bits: the low ones of this generator repeat soon
    end
    local kinds = { { 100, "client" }, { 200, "server" }, { 201, "server" }, { 300, "client" } }
    local decoded = 0
    for _ = 1, 5000 do
      local bytes = {}
      for k = 1, rand(80) do -- small values often: counts and lengths that almost fit
        bytes[k] = string.char(rand(2) == 0 and rand(4) or rand(256))
      end
      local kind = kinds[rand(#kinds) + 1]
      local p = t:parse(top.frame(kind[1], table.concat(bytes)), kind[2])
      local ok, d = pcall(p.decode, p)
      if ok then
        decoded = decoded + 1
        p:encode(d)
        assert.is_true(same(d, t:parse(p:bytes(), kind[2]):decode()))
      else
        assert.matches("^pkt:decode: %u+: field ", d)
        -- the fields it has stay, what it lacks must be optional: then it fits
        if pcall(p.encode, p, {}) then t:parse(p:bytes(), kind[2]):decode() end
      end
    end
    assert.is_true(decoded > 100, decoded .. " frames decoded")
    t:close()
  end)
end)

describe("a reload that fails", function()
  it("leaves every player as it was, even when the new module renamed them while loading", function()
    local dir, write, remove = protocol_dir(nil, read("protocols/top/init.lua"))
    local t = testing.new{ protocol = dir, source = [[
      local gw = require "gangway"
      gw.command("/whoami", function(session) session:tell(session.player.name) end)
    ]] }
    local s = t:connect()
    s:from_client(t:frame("CM_LOGIN", { account = "bob", password = "pw", mac = "00",
                                        version = 136, marker = 911 }))
    s:from_server(t:frame("MC_LOGIN", { error = 0, player = 5 }))
    s:to_client()
    -- a new module that moves players to a new shape as it loads, and a
    -- script after it that does not load
    write("init.lua", [[
      local gw = require "gangway"
      for _, session in ipairs(gw.players()) do
        gw.set_player(session, { name = "v2:" .. session.player.name })
      end
    ]])
    local ok, err = t:reload{ source = "error('broken')" }
    assert.is_nil(ok)
    assert.matches("gw.set_player while scripts load: use gw.on_reload", err, 1, true)
    s:from_client(top.say("/whoami"))
    assert.same({ top.server_say(0, "[proxy]", "bob") }, s:to_client())
    -- the way: after the swap, once the reload has succeeded
    write("init.lua", read("protocols/top/init.lua") .. [[
      gw.on_reload(function()
        for _, session in ipairs(gw.players()) do
          gw.set_player(session, { name = "v2:" .. session.player.name })
        end
      end)
    ]])
    assert.is_true(t:reload{ source = [[
      local gw = require "gangway"
      gw.command("/whoami", function(session) session:tell(session.player.name) end)
    ]] })
    s:from_client(top.say("/whoami"))
    assert.same({ top.server_say(0, "[proxy]", "v2:bob") }, s:to_client())
    t:close()
    remove()
  end)
end)

describe("a module whose tell waits", function()
  it("tells when the wait is over, the command and other sessions going on", function()
    -- top's module, but a tell that waits first (a chat relayed elsewhere)
    local dir, _, remove = protocol_dir(nil, (read("protocols/top/init.lua")
      :gsub("gw%.on_tell%(function%(session, text%)\n", "%0  session:sleep(10)\n")))
    local t = testing.new{ protocol = dir, source = [[
      local gw = require "gangway"
      gw.command("/hi", function(session)
        session:tell("one")
        session:tell("two")
      end)
    ]] }
    local s, bystander = t:connect(), t:connect()
    s:from_client(top.say("/hi"))
    bystander:from_client(top.say("meanwhile"))
    assert.same({ top.say("meanwhile") }, bystander:to_server())
    t:advance(30)
    assert.same({ top.server_say(0, "[proxy]", "one"), top.server_say(0, "[proxy]", "two") },
                s:to_client())
    assert.same({}, s:to_server())
    assert.equal(0, t:stats().errors, table.concat(t:logs(), "\n"))
    t:close()
    remove()
  end)
end)
