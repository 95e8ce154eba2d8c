-- speed_limit.lua: a rate limiter on CM_BEGINACTION (move, attack, skill),
-- against speed hacks and action spam. Each session has a token bucket in
-- session.state: RATE actions a second, bursts up to BURST. Actions over
-- the limit are dropped; a session that keeps going over (STRIKES dropped
-- actions within WINDOW_MS) is closed.
local gw = require "gangway"

local RATE = 5           -- actions per second, sustained (a player clicks ~1-2)
local BURST = 6          -- actions at once
local STRIKES = 20       -- dropped actions within WINDOW_MS that close the session
local WINDOW_MS = 10000

-- A player's name in a log line: control bytes as \NN (a newline in an
-- account would otherwise start a line of the client's making).
local function printable(s)
  return (s:gsub("%c", function(c) return "\\" .. c:byte() end))
end

gw.on("client", "CM_BEGINACTION", function(pkt, session)
  local now = gw.now()
  local b = session.state.speed_limit
  if not b then
    b = { tokens = BURST, at = now, strikes = 0, since = now }
    session.state.speed_limit = b
  end
  b.tokens = math.min(BURST, b.tokens + (now - b.at) * RATE / 1000)
  b.at = now
  if b.tokens >= 1 then
    b.tokens = b.tokens - 1
    return
  end
  if now - b.since > WINDOW_MS then
    b.strikes, b.since = 0, now
  end
  b.strikes = b.strikes + 1
  if b.strikes >= STRIKES then
    local p = session.player
    gw.log.warn(("%s (session %d, %s): %d actions over the limit in %d ms, closing"):format(
      p and printable(p.name) or "-", session.id, session.client, b.strikes, now - b.since))
    return gw.CLOSE
  end
  return gw.DROP
end)
