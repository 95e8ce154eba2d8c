-- report.lua: turns bench/run.sh's JSON lines (one per gw-loadgen run) into
-- the markdown results table: medians over rounds, ratios to HAProxy,
-- latency added over direct, and where gangway stands against its targets.
--
-- usage: lua5.4 bench/report.lua RESULTS.jsonl "machine description"
local cjson = require("cjson")

local path, meta = arg[1], arg[2] or ""
local order = { "direct", "haproxy", "gw-raw", "gw-top", "gw-lua", "gw-rewrite" }

-- runs[scenario][contender] = { run, ... }
local runs, seen, bad = {}, {}, {}
for line in io.lines(path) do
  local ok, r = pcall(cjson.decode, line)
  if ok and type(r) == "table" then
    runs[r.scenario] = runs[r.scenario] or {}
    local list = runs[r.scenario][r.contender] or {}
    runs[r.scenario][r.contender] = list
    list[#list + 1] = r
    seen[r.contender] = true
    if not r.ok or r.mismatches > 0 or r.errors > 0 then
      bad[#bad + 1] = string.format("%s/%s round %d: mismatches %d, errors %d",
        r.scenario, r.contender, r.round, r.mismatches, r.errors)
    end
  end
end

local cols = {}
for _, c in ipairs(order) do
  if seen[c] then cols[#cols + 1] = c end
end

local function median(xs)
  if #xs == 0 then return nil end
  table.sort(xs)
  local m = (#xs + 1) // 2
  if #xs % 2 == 1 then return xs[m] end
  return (xs[m] + xs[m + 1]) / 2
end

-- Derived per-run fields: the proxy's CPU time per unit of work. Each echo
-- crosses the proxy twice, so a run relays 2 x frames and 2 x bytes. These
-- move less than throughput when other work shares the machine.
local derived = {
  cpu_ns_per_frame = function(r)
    if r.watch_cpu_pct < 0 or r.frames_per_s <= 0 then return nil end
    return r.watch_cpu_pct / 100 / (2 * r.frames_per_s) * 1e9
  end,
  cpu_ms_per_gb = function(r)
    if r.watch_cpu_pct < 0 or r.mb_per_s <= 0 then return nil end
    return r.watch_cpu_pct / 100 / (2 * r.mb_per_s / 1000) * 1000
  end,
}

-- The median of field over the rounds of scenario/contender; runs that
-- failed or mismatched do not count.
local function med(scenario, contender, field)
  local xs = {}
  for _, r in ipairs((runs[scenario] or {})[contender] or {}) do
    local v = derived[field] and derived[field](r) or r[field]
    if r.ok and type(v) == "number" and v >= 0 then xs[#xs + 1] = v end
  end
  return median(xs)
end

local function fmt(v, digits)
  if v == nil then return "–" end
  if digits == 0 then
    local s = string.format("%.0f", v)
    -- thousands separators: 1234567 -> 1,234,567
    local int = s:reverse():gsub("(%d%d%d)", "%1,"):reverse()
    return (int:gsub("^(-?),", "%1"))
  end
  return string.format("%." .. (digits or 1) .. "f", v)
end

local out = {}
local function emit(s) out[#out + 1] = s end

-- A table row; a row with no value at all (CPU % of direct) is left out.
local function row(label, metric, values)
  local cells, any = { label, metric }, false
  for _, c in ipairs(cols) do
    local v = values[c]
    any = any or (v ~= nil and v ~= "–")
    cells[#cells + 1] = v or "–"
  end
  if not any then return end
  emit("| " .. table.concat(cells, " | ") .. " |")
end

-- A metric row, and with ratio a row of contender / haproxy (ratio is the
-- row's label).
local function metric_rows(scenario, label, field, unit, digits, ratio)
  local vals, ratios = {}, {}
  local base = med(scenario, "haproxy", field)
  for _, c in ipairs(cols) do
    local v = med(scenario, c, field)
    vals[c] = fmt(v, digits)
    if ratio and v and base and base > 0 then ratios[c] = string.format("%.2f", v / base) end
  end
  row(label, unit, vals)
  if ratio and base then row("", ratio, ratios) end
end

local function scenario_desc(s)
  local r
  for _, c in ipairs(order) do r = r or ((runs[s] or {})[c] or {})[1] end
  if not r then return s end
  if r.mode == "pipeline" then
    return string.format("%s: %d B frames, %d sessions × %d in flight", s, r.size, r.sessions, r.depth)
  elseif r.mode == "rate" then
    return string.format("%s: %d B, %d session%s, %s frames/s", s, r.size, r.sessions,
      r.sessions == 1 and "" or "s", fmt(r.rate, 0))
  end
  return string.format("%s: %s sessions held open", s, fmt(r.sessions, 0))
end

emit("## Results")
emit("")
emit(meta)
emit("")
local header = { "scenario", "metric" }
for _, c in ipairs(cols) do header[#header + 1] = c end
emit("| " .. table.concat(header, " | ") .. " |")
emit("|" .. string.rep("---|", #header))

if runs.bulk then
  metric_rows("bulk", scenario_desc("bulk"), "mb_per_s", "MB/s", 0, "× haproxy")
  metric_rows("bulk", "", "watch_cpu_pct", "proxy CPU %", 0, false)
  metric_rows("bulk", "", "cpu_ms_per_gb", "proxy CPU ms per GB relayed", 0,
    "× haproxy (lower is better)")
  metric_rows("bulk", "", "other_cpu_pct", "other work on the machine, CPU %", 0, false)
end
if runs.small then
  metric_rows("small", scenario_desc("small"), "frames_per_s", "frames/s", 0, "× haproxy")
  metric_rows("small", "", "watch_cpu_pct", "proxy CPU %", 0, false)
  metric_rows("small", "", "cpu_ns_per_frame", "proxy CPU ns per frame relayed", 0,
    "× haproxy (lower is better)")
  metric_rows("small", "", "other_cpu_pct", "other work on the machine, CPU %", 0, false)
end
for _, s in ipairs({ "lat1", "lat1000" }) do
  if runs[s] then
    for _, p in ipairs({ "p50", "p99" }) do
      local field = p .. "_us"
      local vals, added = {}, {}
      local d = med(s, "direct", field)
      for _, c in ipairs(cols) do
        local v = med(s, c, field)
        vals[c] = fmt(v, 1)
        if v and d and c ~= "direct" then added[c] = string.format("%+.1f", v - d) end
      end
      row(p == "p50" and scenario_desc(s) or "", p .. " round trip µs", vals)
      if d then row("", p .. " added over direct µs", added) end
    end
    metric_rows(s, "", "other_cpu_pct", "other work on the machine, CPU %", 0, false)
  end
end
if runs.idle then
  metric_rows("idle", scenario_desc("idle"), "rss_per_session_b", "RSS B/session", 0, false)
end

-- Targets: what the project aims at, checked against the medians above.
local targets = {}
local function target(what, ok, detail)
  if ok == nil and detail == nil then return end -- scenario not run
  local mark = ok == nil and "n/a" or (ok and "met" or "NOT met")
  targets[#targets + 1] = string.format("| %s | %s | %s |", what, detail or "–", mark)
end
local function ratio(a, b) return (a and b and b > 0) and a / b or nil end
if seen["gw-top"] and seen.haproxy then
  local r = ratio(med("small", "gw-top", "frames_per_s"), med("small", "haproxy", "frames_per_s"))
  target("framed, no handler: small frames/s ≥ HAProxy's", r and r >= 1,
    r and string.format("%.2f × haproxy", r))
  r = ratio(med("bulk", "gw-top", "mb_per_s"), med("bulk", "haproxy", "mb_per_s"))
  target("framed, no handler: bulk MB/s ≥ HAProxy's", r and r >= 1,
    r and string.format("%.2f × haproxy", r))
  for _, s in ipairs({ "lat1", "lat1000" }) do
    local d = med(s, "direct", "p50_us")
    local g, h = med(s, "gw-top", "p50_us"), med(s, "haproxy", "p50_us")
    local ok = nil
    if d and g and h then ok = g - d <= h - d end
    target("framed, no handler: added p50 ≤ HAProxy's (" .. s .. ")", ok,
      (d and g and h) and string.format("%+.1f µs vs %+.1f µs", g - d, h - d))
  end
end
if seen["gw-lua"] and seen["gw-top"] then
  local r = ratio(med("small", "gw-lua", "frames_per_s"), med("small", "gw-top", "frames_per_s"))
  target("trivial handler on every frame: ≥ 0.7 × no-handler frames/s", r and r >= 0.7,
    r and string.format("%.2f ×", r))
end
if seen["gw-top"] and runs.idle then
  local b = med("idle", "gw-top", "rss_per_session_b")
  local n = ((runs.idle["gw-top"] or {})[1] or {}).sessions
  target(string.format("≤ 4 KiB RSS per idle session (at %s sessions)", fmt(n, 0)),
    b and b <= 4096, b and string.format("%s B", fmt(b, 0)))
end
if #targets > 0 then
  emit("")
  emit("| target | gangway | |")
  emit("|---|---|---|")
  for _, t in ipairs(targets) do emit(t) end
end

emit("")
if #bad > 0 then
  emit("Runs that failed or saw a wrong echo (left out of the medians):")
  for _, b in ipairs(bad) do emit("- " .. b) end
else
  emit("Every echo was verified: 0 mismatches, 0 errors.")
end
print(table.concat(out, "\n"))
