-- report.lua: turns bench/run.sh's JSON lines (one per gw-loadgen run) into
-- the markdown results: one table per scenario with a row per contender
-- (medians over rounds, ratios to HAProxy, latency added over direct, which
-- side was the bottleneck), then where gangway stands against its targets.
--
-- usage: lua5.4 bench/report.lua RESULTS.jsonl "machine description"
local cjson = require("cjson")

local path, meta = arg[1], arg[2] or ""
local order = { "direct", "floor", "haproxy", "nginx", "gw-raw", "gw-top", "gw-demo", "gw-lua", "gw-rewrite" }

-- A side whose CPU share reaches this (in cores: 1.0 = one core busy all
-- the window) is saturated. gangway, HAProxy (nbthread 1) and nginx (one
-- worker) relay on one thread; run.sh pins the load side to one CPU.
local SATURATED = 0.90
-- A run whose median other work reaches this (cores) was on a busy
-- machine: run.sh's default noise limit (--noise 25).
local BUSY = 0.25

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

-- Derived per-run fields. Each echo crosses the proxy twice, so a run
-- relays 2 x frames and 2 x bytes. CPU per unit moves less than throughput
-- when other work shares the machine, and means something whichever side
-- was the bottleneck.
local derived = {
  cpu_ns_per_frame = function(r)
    if r.watch_cpu_pct < 0 or r.frames_per_s <= 0 then return nil end
    return r.watch_cpu_pct / 100 / (2 * r.frames_per_s) * 1e9
  end,
  cpu_ms_per_gb = function(r)
    if r.watch_cpu_pct < 0 or r.mb_per_s <= 0 then return nil end
    return r.watch_cpu_pct / 100 / (2 * r.mb_per_s / 1000) * 1000
  end,
  -- CPU shares in cores over the measured window.
  proxy_share = function(r)
    if r.watch_cpu_pct < 0 then return nil end
    return r.watch_cpu_pct / 100
  end,
  load_share = function(r)
    return (r.loadgen_cpu_pct + math.max(r.echo_cpu_pct, 0)) / 100
  end,
  other_share = function(r)
    if r.other_cpu_pct < 0 then return nil end
    return r.other_cpu_pct / 100
  end,
  -- How full the machine was: every CPU's busy share, summed, over the
  -- number of CPUs (1.0: all busy throughout).
  machine_busy = function(r)
    local n, sum = 0, 0
    for _, b in ipairs(r.cpus_busy_pct or {}) do n, sum = n + 1, sum + b end
    return n > 0 and sum / 100 / n or nil
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

local function ratio(a, b) return (a and b and b > 0) and a / b or nil end

-- Which side limited the run: the proxy (its one thread saturated, the
-- load side not), the load side (the reverse), both; "other work" when
-- neither was saturated but the machine's CPUs were, with a busy share of
-- someone else's work; else neither (a paced run, or one waiting on
-- wake-ups).
local function bottleneck(s, c)
  local p, l = med(s, c, "proxy_share"), med(s, c, "load_share")
  if not l then return nil end
  local ps, ls = p and p >= SATURATED, l >= SATURATED
  if ps and ls then return "both" end
  if ps then return "proxy" end
  if ls then return "load" end
  if (med(s, c, "machine_busy") or 0) >= SATURATED and (med(s, c, "other_share") or 0) >= BUSY then
    return "other work"
  end
  return "neither"
end

local out = {}
local function emit(s) out[#out + 1] = s end

local function table_rows(header, rowfn)
  emit("| " .. table.concat(header, " | ") .. " |")
  emit("|" .. string.rep("---|", #header))
  for _, c in ipairs(cols) do
    local cells = rowfn(c)
    if cells then emit("| " .. c .. " | " .. table.concat(cells, " | ") .. " |") end
  end
  emit("")
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

-- The CPU columns every scenario shares.
local function cpu_cells(s, c)
  return { fmt(med(s, c, "proxy_share"), 2), fmt(med(s, c, "load_share"), 2),
           fmt(med(s, c, "other_share"), 2), bottleneck(s, c) or "–" }
end
local CPU_HEAD = { "proxy CPU", "load CPU", "other work", "bottleneck" }

local function join(a, b)
  local t = {}
  for _, v in ipairs(a) do t[#t + 1] = v end
  for _, v in ipairs(b) do t[#t + 1] = v end
  return t
end

-- A throughput scenario. CPU per unit leads unless every proxy was the
-- bottleneck: only then do rates compare the proxies rather than the load
-- side's ceiling.
local function throughput(s, rate_field, rate_unit, rate_digits, cpu_field, cpu_unit)
  local all_proxy = true
  for _, c in ipairs(cols) do
    if c ~= "direct" and bottleneck(s, c) ~= "proxy" then all_proxy = false end
  end
  local hp_rate, hp_cpu = med(s, "haproxy", rate_field), med(s, "haproxy", cpu_field)
  local d_rate = med(s, "direct", rate_field)
  local rate_head = { rate_unit, "× haproxy", "× direct" }
  local cpu_head = { cpu_unit, "× haproxy" }
  emit("#### " .. scenario_desc(s))
  emit("")
  if not all_proxy then
    emit("Not every proxy was the bottleneck: compare " .. cpu_unit ..
      ", not " .. rate_unit .. ".")
    emit("")
  end
  local head = { "contender" }
  head = join(head, all_proxy and join(rate_head, cpu_head) or join(cpu_head, rate_head))
  table_rows(join(head, CPU_HEAD), function(c)
    local v, u = med(s, c, rate_field), med(s, c, cpu_field)
    local rate = { fmt(v, rate_digits), fmt(ratio(v, hp_rate), 2),
                   c == "direct" and "–" or fmt(ratio(v, d_rate), 2) }
    local cpu = { fmt(u, 0), fmt(ratio(u, hp_cpu), 2) }
    return join(all_proxy and join(rate, cpu) or join(cpu, rate), cpu_cells(s, c))
  end)
end

emit("## Results")
emit("")
emit(meta)
emit("")

-- Was the machine busy? Other work over every run, and the runs measured
-- again for it (run.sh's noise check).
do
  local others, again, total, ncpu = {}, 0, 0, 0
  for _, byc in pairs(runs) do
    for _, list in pairs(byc) do
      for _, r in ipairs(list) do
        total = total + 1
        ncpu = math.max(ncpu, #(r.cpus_busy_pct or {}))
        if (r.attempts or 1) > 1 then again = again + 1 end
        local o = derived.other_share(r)
        if o then others[#others + 1] = o end
      end
    end
  end
  local m = median(others)
  if m then
    emit(string.format("Machine: %s: other work took a median %.2f cores (of %d) " ..
      "during the runs; %d of %d runs were measured again for it.",
      m >= BUSY and "**BUSY**" or "quiet", m, ncpu, again, total))
    if m >= BUSY then
      emit("Rates and latencies of a busy run say more about the other work than " ..
        "about the proxies; CPU per unit relayed holds up better.")
    end
    emit("")
  end
end
emit(string.format("CPU columns are shares of one core over the measured window (1.00 = " ..
  "one core busy throughout): the proxy's relaying process; the load side " ..
  "(gw-loadgen with its echo upstream); other work on the machine. " ..
  "Bottleneck: a side at %.2f or more is saturated; \"proxy\" or \"load\" " ..
  "when only that side is, \"both\"; \"other work\" when neither is but " ..
  "the machine's CPUs were at least %.0f %% busy, other work %.2f cores or more; " ..
  "else \"neither\" (a paced run).", SATURATED, SATURATED * 100, BUSY))
emit("")

if runs.bulk then
  throughput("bulk", "mb_per_s", "MB/s", 0, "cpu_ms_per_gb", "proxy CPU ms per GB relayed")
end
if runs.small then
  throughput("small", "frames_per_s", "frames/s", 0, "cpu_ns_per_frame",
    "proxy CPU ns per frame relayed")
end
for _, s in ipairs({ "lat1", "lat1000" }) do
  if runs[s] then
    emit("#### " .. scenario_desc(s))
    emit("")
    local d50, d99 = med(s, "direct", "p50_us"), med(s, "direct", "p99_us")
    table_rows(join({ "contender", "p50 round trip µs", "p50 added µs", "p99 round trip µs",
      "p99 added µs" }, CPU_HEAD), function(c)
      local p50, p99 = med(s, c, "p50_us"), med(s, c, "p99_us")
      local function added(v, d)
        return (v and d and c ~= "direct") and string.format("%+.1f", v - d) or "–"
      end
      return join({ fmt(p50, 1), added(p50, d50), fmt(p99, 1), added(p99, d99) },
        cpu_cells(s, c))
    end)
  end
end
if runs.idle then
  emit("#### " .. scenario_desc("idle"))
  emit("")
  table_rows({ "contender", "RSS B/session", "RSS before, KiB" }, function(c)
    local b = med("idle", c, "rss_per_session_b")
    if not b then return nil end
    return { fmt(b, 0), fmt(med("idle", c, "rss_before_kb"), 0) }
  end)
end

-- Targets: what the project aims at, checked against the medians above.
local targets = {}
local function target(what, ok, detail)
  if ok == nil and detail == nil then return end -- scenario not run
  local mark = ok == nil and "n/a" or (ok and "met" or "NOT met")
  targets[#targets + 1] = string.format("| %s | %s | %s |", what, detail or "–", mark)
end
-- gw-top's CPU per small frame against a peer's, at most limit × it.
local function cpu_target(peer, limit)
  local r = ratio(med("small", "gw-top", "cpu_ns_per_frame"), med("small", peer, "cpu_ns_per_frame"))
  target(string.format("framed, no handler: CPU per small frame ≤ %.2f × %s's", limit, peer),
    r and r <= limit, r and string.format("%.2f × %s", r, peer))
end
if seen["gw-top"] and seen.haproxy then
  local r = ratio(med("small", "gw-top", "frames_per_s"), med("small", "haproxy", "frames_per_s"))
  target("framed, no handler: small frames/s ≥ HAProxy's", r and r >= 1,
    r and string.format("%.2f × haproxy", r))
  r = ratio(med("bulk", "gw-top", "mb_per_s"), med("bulk", "haproxy", "mb_per_s"))
  target("framed, no handler: bulk MB/s ≥ HAProxy's", r and r >= 1,
    r and string.format("%.2f × haproxy", r))
  cpu_target("haproxy", 0.85)
end
if seen["gw-top"] and seen.nginx then cpu_target("nginx", 1.0) end
-- Not a target: how far above the floor (bench/floor.c, the least a relay
-- can do) each relay is, which bounds what any target can ask.
if seen.floor then
  local f = med("small", "floor", "cpu_ns_per_frame")
  local parts = {}
  for _, c in ipairs({ "haproxy", "nginx", "gw-top" }) do
    local r = seen[c] and ratio(med("small", c, "cpu_ns_per_frame"), f)
    if r then parts[#parts + 1] = string.format("%s %.2f ×", c, r) end
  end
  local fh = seen.haproxy and ratio(f, med("small", "haproxy", "cpu_ns_per_frame"))
  if fh then parts[#parts + 1] = string.format("(the floor is %.2f × haproxy)", fh) end
  if f and #parts > 0 then
    target("the floor: CPU per small frame over the floor's", nil, table.concat(parts, ", "))
  end
end
for _, peer in ipairs({ "haproxy", "nginx" }) do
  if seen["gw-top"] and seen[peer] then
    for _, s in ipairs({ "lat1", "lat1000" }) do
      local d = med(s, "direct", "p50_us")
      local g, h = med(s, "gw-top", "p50_us"), med(s, peer, "p50_us")
      local ok = nil
      if d and g and h then ok = g - d <= h - d end
      target(string.format("framed, no handler: added p50 ≤ %s's (%s)", peer, s), ok,
        (d and g and h) and string.format("%+.1f µs vs %+.1f µs", g - d, h - d))
    end
  end
end
if seen["gw-lua"] and seen["gw-top"] then
  local r = ratio(med("small", "gw-lua", "frames_per_s"), med("small", "gw-top", "frames_per_s"))
  target("trivial handler on every frame: ≥ 0.7 × no-handler frames/s", r and r >= 0.7,
    r and string.format("%.2f ×", r))
end
for _, h in ipairs({ { "gw-lua", "trivial", 1.1 }, { "gw-rewrite", "rewriting", 1.25 } }) do
  if seen[h[1]] and seen["gw-top"] then
    local r = ratio(med("small", h[1], "cpu_ns_per_frame"), med("small", "gw-top", "cpu_ns_per_frame"))
    target(string.format("%s handler on every frame: CPU per small frame ≤ %.2f × no-handler",
      h[2], h[3]), r and r <= h[3], r and string.format("%.2f ×", r))
  end
end
if seen["gw-top"] and runs.idle then
  local b = med("idle", "gw-top", "rss_per_session_b")
  local n = ((runs.idle["gw-top"] or {})[1] or {}).sessions
  target(string.format("≤ 4 KiB RSS per idle session (at %s sessions)", fmt(n, 0)),
    b and b <= 4096, b and string.format("%s B", fmt(b, 0)))
end
if #targets > 0 then
  emit("| target | gangway | |")
  emit("|---|---|---|")
  for _, t in ipairs(targets) do emit(t) end
  emit("")
end

if #bad > 0 then
  emit("Runs that failed or saw a wrong echo (left out of the medians):")
  for _, b in ipairs(bad) do emit("- " .. b) end
else
  emit("Every echo was verified: 0 mismatches, 0 errors.")
end
print(table.concat(out, "\n"))
