-- meter_spec.lua: library functions charged to the instruction limit
-- (src/script_meter.c). The script state's string.find, match, gmatch and
-- gsub agree with Lua's own on thousands of patterns and subjects, errors
-- included; a catastrophic pattern, an allocation loop and a sorting loop
-- are stopped by the limit.
local testing = require "gangway.testing"
local top = testing.top

-- Shared by the spec and the script: runs one case, returns a string
-- describing the outcome.
local RUNNER = [==[
local REPL = {
  str = "<%0|%1>", pct = "%%", tbl = { a = "A", b = false, ab = "X" },
  fn = function(a, b) if a == "b" then return nil end return "[" .. tostring(a) .. tostring(b) .. "]" end,
  num = 7,
}
local function ser(ok, ...)
  local out = { tostring(ok) }
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) == "string" and not ok then v = v:gsub("^[^:]*:%d+: ", "") end
    out[#out + 1] = type(v) .. ":" .. (type(v) == "string" and string.format("%q", v) or tostring(v))
  end
  return table.concat(out, "|")
end
local function run(case)
  local fn, s, p, a, b = case[1], case[2], case[3], case[4], case[5]
  if fn == "gmatch" then
    return ser(pcall(function()
      local all = {}
      for x, y in string.gmatch(s, p, a) do all[#all + 1] = tostring(x) .. "," .. tostring(y) end
      return table.concat(all, ";")
    end))
  elseif fn == "gsub" then
    return ser(pcall(string.gsub, s, p, REPL[a], b))
  elseif fn == "method" then
    return ser(pcall(function() return s:gsub(p, "-") end))
  else
    return ser(pcall(string[fn], s, p, a, b))
  end
end
]==]

local fixed = {
  { "find", "", "" }, { "find", "alo", "" }, { "find", "a\0o a\0o a\0o", "a", 1 },
  { "find", "a\0o a\0o a\0o", "a\0o", 2 }, { "find", "a\0a\0a\0a\0\0ab", "\0ab", 2 },
  { "find", "a\0a\0a\0a\0\0ab", "b" }, { "find", "a\0a\0a\0a\0\0ab", "b\0" },
  { "find", "", "\0" }, { "find", "alo123alo", "12" }, { "find", "alo123alo", "^12" },
  { "match", "aaab", ".*b" }, { "match", "aaa", ".*a" }, { "match", "b", ".*b" },
  { "match", "aaab", ".+b" }, { "match", "aaa", ".+a" }, { "match", "b", ".+b" },
  { "match", "aaab", ".?b" }, { "match", "aaa", ".?a" }, { "match", "b", ".?b" },
  { "find", "aloALO", "%l*" }, { "find", "aLo_ALO", "%a*" },
  { "match", "  \n\r*&\n\r   xuxu  \n\n", "%g%g%g+" },
  { "find", "aaab", "a*" }, { "find", "aaa", "^.*$" }, { "find", "aaa", "b*" },
  { "find", "aaa", "ab*a" }, { "find", "aba", "ab*a" }, { "find", "aaab", "a+" },
  { "find", "aaa", "^.+$" }, { "find", "aaa", "b+" }, { "find", "aaa", "ab+a" },
  { "find", "aba", "ab+a" }, { "find", "a$a", ".$" }, { "find", "a$a", ".%$" },
  { "find", "a$a", ".$." }, { "find", "a$a", "$$" }, { "find", "a$b", "a$" },
  { "find", "a$a", "$" }, { "find", "", "b*" }, { "find", "aaa", "bb*" },
  { "find", "aaab", "a-" }, { "find", "aaa", "^.-$" }, { "find", "aabaaabaaabaaaba", "b.*b" },
  { "find", "aabaaabaaabaaaba", "b.-b" }, { "find", "alo xo", ".o$" },
  { "find", " \n isto é assim", "%S%S*" }, { "find", " \n isto é assim", "%S*$" },
  { "find", " \n isto é assim", "[a-z]*$" }, { "find", "um caracter ? extra", "[^%sa-z]" },
  { "find", "", "a?" }, { "find", "á", "á?" }, { "find", "ábl", "á?b?l?" },
  { "find", "  ", "á?b?l?" }, { "find", "aa", "^aa?a?a" }, { "find", "]]]áb", "[^]]" },
  { "find", "0alo alo", "%x*" }, { "find", "alo alo", "%C+" },
  { "match", "alo xyzK", "(%w+)K" }, { "match", "254 K", "(%d*)K" },
  { "match", "alo ", "(%w*)$" }, { "match", "alo ", "(%w+)$" },
  { "find", "(álo)", "%(á" }, { "match", "âlo alo", "^(((.).).* (%w*))$" },
  { "match", "0123456789", "(.+(.?)())" }, { "match", "clo alo", "^(((.).).* (%w*))$" },
  { "gsub", "ülo ülo", "ü", "pct" }, { "gsub", "alo úlo  ", " +$", "str" },
  { "gsub", "  alo alo  ", "^%s*(.-)%s*$", "str" }, { "gsub", "alo  alo  \n 123\n ", "%s+", "str" },
  { "gsub", "abc", "%w", "str" }, { "gsub", "abc", "", "str" }, { "gsub", "abc", "", "str", 2 },
  { "gsub", "abc", "%w%w", "tbl" }, { "gsub", "a b ab", "%w+", "tbl" }, { "gsub", "a b ab", "(%w)(%w?)", "fn" },
  { "gsub", "abc", "%w", "num" }, { "gsub", "hello world", "%w+", "str", 1 },
  { "gsub", "abc", "b", "bad" }, { "gsub", "abc", "b", "pct" },
  { "gmatch", "first second word", "%a+" }, { "gmatch", "13 14 10 = 11, 15= 16, 22=23", "(%d+)%s*=%s*(%d+)" },
  { "gmatch", "abc", "" }, { "gmatch", "abc", "()" }, { "gmatch", "aaa", "a*" }, { "gmatch", "abc", "b*", 2 },
  { "gmatch", "abc", "a", 5 }, { "gmatch", "^a^a", "^a" },
  { "find", "THE (quick) fox", "%((%a+)%)" }, { "find", "THE (quick) fox", "%f[%a]%a+" },
  { "gmatch", "THE (quick) fox", "%f[%a]%a+" }, { "gmatch", "the (quick (brown)) fox", "%b()" },
  { "find", "[", "[" }, { "find", "abc", "[a" }, { "find", "abc", "%" }, { "find", "abc", "(" },
  { "find", "abc", ")" }, { "find", "abc", "%1" }, { "find", "abc", "(a)%2" }, { "find", "abc", "%b" },
  { "find", "abc", "%ba" }, { "find", "abc", "%fa" }, { "find", "aa", "(a)%1" }, { "find", "a", "(()" },
  { "match", "a", "()" }, { "find", "hello", "l", -2 }, { "find", "hello", "l", -20 }, { "find", "hello", "", 10 },
  { "find", "hello", "", 6 }, { "find", "a.b", ".", 1, true }, { "match", "hello", "(h)(e)(l)(l)(o)" },
  { "method", "a,b,,c", "," }, { "match", string.rep("a", 12), string.rep("%a?", 12) .. string.rep("a", 12) },
  { "find", string.rep("(", 33), string.rep("(", 33) }, { "match", "x", string.rep("(", 33) .. "x" .. string.rep(")", 33) },
  { "gsub", "abc", "(b)", "str" }, { "gsub", "abc", "b()", "str" }, { "gsub", "abc", ".", "fn", 2 },
  { "find", "a\0b", "[\0]" }, { "find", "a-b", "[a-]" }, { "find", "-", "[%-]" }, { "find", "]", "[]]" },
  { "find", "a]", "[^]]" }, { "match", "key = value", "(%w+)%s*=%s*(%w+)" },
}

-- Random patterns over a small alphabet, to reach the corners.
local function random_cases(n, seed)
  math.randomseed(seed)
  local atoms = { "a", "b", "c", ".", "%a", "%d", "%s", "%w", "%A", "[ab]", "[^a]", "[a-c]",
                  "%b()", "%f[%w]", "(", ")", "()", "%1", "%(", "x", "%%", "[%a%d]",
                  "[%a-]", "[a%-c]", "[]a]", "%bab", "%f[^a]", "%2", "%0", "[^%s]", "%x", "%p", "%c",
                  "%u", "%l", "%g", "[", "]", "-", "$", "^", "%f[%z]", "%bA(", "[%]]", "%" }
  local quant = { "", "", "", "*", "+", "-", "?" }
  local chars = "aabbcc(1 2)x%AB\t.-[]^$\0"
  local fns = { "find", "match", "gmatch", "gsub" }
  local repls = { "str", "tbl", "fn", "pct" }
  local cases = {}
  for i = 1, n do
    local p = {}
    if math.random() < 0.2 then p[1] = "^" end
    for _ = 1, math.random(1, 6) do
      p[#p + 1] = atoms[math.random(#atoms)] .. quant[math.random(#quant)]
    end
    if math.random() < 0.2 then p[#p + 1] = "$" end
    local s = {}
    for _ = 1, math.random(0, 12) do
      local k = math.random(#chars)
      s[#s + 1] = chars:sub(k, k)
    end
    local fn = fns[math.random(#fns)]
    local a = fn == "gsub" and repls[math.random(#repls)] or
              (math.random() < 0.3 and math.random(-15, 15) or nil)
    local b = fn == "gsub" and (math.random() < 0.3 and math.random(-1, 3) or nil) or
              (fn == "find" and math.random() < 0.2 or nil)
    cases[i] = { fn, table.concat(s), table.concat(p), a, b }
  end
  return cases
end

local function serialize_cases(cases)
  local out = { "return {" }
  for _, c in ipairs(cases) do
    local parts = {}
    for i = 1, 5 do
      local v = c[i]
      parts[i] = type(v) == "string" and string.format("%q", v) or tostring(v)
    end
    out[#out + 1] = "{" .. table.concat(parts, ",") .. "},"
  end
  out[#out + 1] = "}"
  return table.concat(out, "\n")
end

-- Runs cases in a script state; returns their outcomes.
local function in_script(cases)
  local t = testing.inline(RUNNER .. [[
    local cases = load(]] .. string.format("%q", serialize_cases(cases)) .. [[)()
    gw.on("client", 1, function(pkt, session)
      local chunk = {}
      local size = 0
      for i, case in ipairs(cases) do
        local r = run(case) .. "\0" -- %q never leaves a raw NUL
        if size + #r > 60000 then
          session:send_to_client(gw.packet(999, table.concat(chunk)))
          chunk, size = {}, 0
        end
        chunk[#chunk + 1] = r
        size = size + #r
      end
      session:send_to_client(gw.packet(999, table.concat(chunk)))
    end)
  ]], { instructions = 1000000000 })
  local s = t:connect()
  s:from_client(top.say("go"))
  assert.equal(0, t:stats().errors, table.concat(t:logs("error"), "\n"))
  local out = {}
  for _, f in ipairs(s:to_client()) do
    for line in top.parse(f):body():gmatch("([^\0]*)\0") do out[#out + 1] = line end
  end
  t:close()
  return out
end

local run = load(RUNNER .. "\nreturn run")()

local function compare(cases)
  local got = in_script(cases)
  assert.equal(#cases, #got)
  for i, case in ipairs(cases) do
    local want = run(case)
    if got[i] ~= want then
      error(("case %d %s(%q, %q, %s): script %s, Lua %s"):format(i, case[1], case[2],
        case[3], tostring(case[4]), got[i], want))
    end
  end
end

describe("string patterns in scripts", function()
  it("agree with Lua's on hand-picked cases", function()
    compare(fixed)
  end)

  it("agree with Lua's on random patterns", function()
    for seed = 1, 2 do compare(random_cases(4000, seed)) end
  end)

  it("stop a catastrophic pattern at the instruction limit", function()
    local t = testing.inline([[
      gw.on("client", 1, function(pkt)
        local text = pkt:str(8)
        return text:find(".-.-.-.-x") and gw.DROP
      end)
      gw.on("client", 2, function(pkt)
        local text = pkt:str(8)
        for _ in text:gmatch("(.-)(.-)(.-)y") do end
      end)
      gw.on("client", 3, function(pkt)
        local ok = pcall(string.gsub, pkt:str(8), "(.-)(.-)(.-)z", "")
        return gw.DROP
      end)
    ]], { instructions = 200000, on_error = "drop" })
    local s = t:connect()
    local long = string.rep("a", 3000)
    for op = 1, 3 do
      local clock = os.clock()
      s:from_client(top.frame(op, top.writer():str(long)))
      assert.is_true(os.clock() - clock < 2, "opcode " .. op .. " ran " .. os.clock() - clock .. " s")
    end
    assert.equal(3, t:stats().timeouts)
    assert.is_true(t:logged("instruction limit exceeded (200000 per call)", "error"))
    t:close()
  end)

  it("charge big allocations to the limit", function()
    local t = testing.inline([[
      gw.on("client", 1, function()
        while true do local s = string.rep("x", 1000000) end
      end)
    ]], { instructions = 1000000, memory = 16 * 1024 * 1024 })
    local s = t:connect()
    local clock = os.clock()
    s:from_client(top.say("x"))
    assert.is_true(os.clock() - clock < 2)
    assert.equal(1, t:stats().timeouts)
    t:close()
  end)

  it("make a repetition of nothing at once", function()
    local t = testing.inline([[
      gw.on("client", 1, function(pkt)
        pkt:set_body(#string.rep("", 1e15) .. #(""):rep(1e15, "") .. ("ab"):rep(3, ","))
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.frame(1, "00ab,ab,ab") }, s:to_server())
    assert.equal(0, t:stats().errors)
    t:close()
  end)

  -- Each loop makes or takes 10,000 items a round and counts its rounds:
  -- at one instruction an item, the limit allows about 100 (unmetered,
  -- tens of thousands, each a few milliseconds).
  local bulk = {
    ["string.byte"] = "select('#', s:byte(1, -1))",
    ["table.unpack"] = "select('#', table.unpack(big))",
    ["utf8.codepoint"] = "select('#', utf8.codepoint(s, 1, -1))",
    ["utf8.len"] = "utf8.len(s .. s)",
    ["table.concat"] = "table.concat(empty)",
    ["string.char"] = "string.char(table.unpack(big, 1, 5000))",
    ["string.unpack"] = "string.unpack(fmt, s)",
    ["select"] = "(function(...) for _ = 1, 3 do select(2, ...) end end)(table.unpack(big, 1, 2500))",
  }
  for name, expr in pairs(bulk) do
    it("charge bulk work to the limit (" .. name .. ")", function()
      local t = testing.inline([[
        local s = ("x"):rep(10000)
        local fmt = ("B"):rep(10000)
        local big, empty = {}, {}
        for i = 1, 10000 do big[i] = 65 empty[i] = "" end
        local rounds = 0
        gw.on("client", 1, function() rounds = 0 while true do local _ = ]] .. expr .. [[ rounds = rounds + 1 end end)
        gw.on("client", 2, function(pkt) pkt:set_body(tostring(rounds)) end)
      ]], { instructions = 1000000, on_error = "drop" })
      local s = t:connect()
      s:from_client(top.say("x"))
      assert.equal(1, t:stats().timeouts)
      s:from_client(top.frame(2, ""))
      local rounds = tonumber(top.parse(s:to_server()[1]):body())
      assert.is_true(rounds >= 30 and rounds <= 110, name .. " ran " .. rounds .. " rounds")
      t:close()
    end)
  end

  it("name the library function in its argument errors", function()
    local t = testing.inline([[
      gw.on("client", 1, function(pkt)
        local _, a = pcall(string.rep)
        local _, b = pcall(table.unpack, {}, 1, 1e8)
        local _, c = pcall(table.insert, 1, 2)
        pkt:set_body(table.concat({ a, b, c }, "|"))
      end)
    ]])
    local s = t:connect()
    s:from_client(top.say("x"))
    assert.same({ top.frame(1, "bad argument #1 to 'string.rep' (string expected, got no value)"
      .. "|too many results to unpack|bad argument #1 to 'table.insert' (table expected, got number)") },
      s:to_server())
    t:close()
  end)

  it("charge table work to the limit", function()
    local t = testing.inline([[
      gw.on("client", 1, function()
        local big = {}
        for i = 1, 100000 do big[i] = -i end
        while true do table.sort(big) end
      end)
      gw.on("client", 2, function()
        local t = { 3, 1, 2 }
        table.sort(t)
        table.insert(t, 1, 0)
        table.insert(t, 4)
        table.remove(t, 1)
        table.remove(t)
        local m = table.move(t, 1, 3, 2, {})
        assert(table.concat(t, ",") == "1,2,3" and m[4] == 3)
      end)
    ]], { instructions = 3000000 })
    local s = t:connect()
    local clock = os.clock()
    s:from_client(top.frame(1, ""))
    assert.is_true(os.clock() - clock < 2)
    assert.equal(1, t:stats().timeouts)
    s:from_client(top.frame(2, ""))
    assert.equal(1, t:stats().errors)
    t:close()
  end)
end)
