-- fleet.lua: what the edges share through Redis (redis = { ... } in
-- edge1.lua and edge2.lua).
--
--   bans     the set fleet:bans holds banned player names. A login of a
--            banned player is refused at every edge; a name published on
--            the channel fleet:ban closes that player's session wherever
--            it is, within a second:
--              redis-cli -p 6390 SADD fleet:bans us2
--              redis-cli -p 6390 PUBLISH fleet:ban us2
--   /online  the sorted set fleet:online holds every player seen by an
--            edge in the last TTL seconds (score: Redis' clock), refreshed
--            by each edge every few seconds, so a crashed edge's players
--            drop out by themselves. "/online" in chat answers the count
--            across the fleet (a ZCOUNT: the command waits for Redis, the
--            player's later frames wait behind it); the server never sees
--            the command.
--
-- When Redis is down gw.redis returns nil and an error: logins are let in
-- (a fleet that cannot check bans keeps playing) and /online says so.
local gw = require "gangway"

local BANS, BAN_CHANNEL, ONLINE = "fleet:bans", "fleet:ban", "fleet:online"
local TTL, REFRESH_MS = 15, 5000

local gone = {} -- names whose session ended, removed at the next refresh

local function redis_now()
  local t, err = gw.redis("TIME")
  if not t then return nil, err end
  return tonumber(t[1])
end

-- After the protocol module's MC_LOGIN handler has set session.player.
gw.on("server", "MC_LOGIN", function(pkt, session)
  local player = session.player
  if not player then return end
  local banned, err = gw.redis("SISMEMBER", BANS, player.name)
  if err then
    gw.log.warn("ban check for", player.name, "failed, letting in:", err)
  elseif banned == 1 then
    gw.log.info(player.name, "is banned: login refused at", gw.listener)
    session:tell("You are banned from this server.")
    session:close("banned")
    return gw.DROP
  end
  local now = redis_now()
  if now then gw.redis("ZADD", ONLINE, now, player.name) end
  gone[player.name] = nil
end)

gw.on_close(function(session)
  if session.player then gone[session.player.name] = true end
end)

-- A ban published at any edge (or by an admin) closes the session here.
gw.subscribe(BAN_CHANNEL, function(channel, name)
  local session = gw.player(name)
  if not session then return end
  gw.log.info(name, "banned: closing the session at", gw.listener)
  session:tell("You have been banned.")
  session:close("banned")
end)

gw.every(REFRESH_MS, function()
  local now, err = redis_now()
  if not now then
    gw.log.warn("online refresh failed:", err)
    return
  end
  for _, session in ipairs(gw.players()) do
    gone[session.player.name] = nil
    gw.redis("ZADD", ONLINE, now, session.player.name)
  end
  for name in pairs(gone) do gw.redis("ZREM", ONLINE, name) end
  gone = {}
  gw.redis("ZREMRANGEBYSCORE", ONLINE, "-inf", now - TTL)
end)

gw.command("/online", function(session)
  local here = #gw.players()
  local now = redis_now()
  local fleet_count = now and gw.redis("ZCOUNT", ONLINE, now - TTL, "+inf")
  if not fleet_count then
    session:tell(("%d players online through %s; the fleet's count is unavailable"):format(
      here, gw.listener))
    return
  end
  session:tell(("%d players online in the fleet, %d through %s"):format(fleet_count, here,
                                                                       gw.listener))
end)
