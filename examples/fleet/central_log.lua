-- central_log.lua: one line per login at the central gangway, with the
-- player's real address (from the edge's PROXY header) and the edge it
-- came through (the TCP peer is the edge; gangway takes the header's).
local gw = require "gangway"

gw.on("server", "MC_LOGIN", function(pkt, session)
  if session.player then
    gw.log.info("login", session.player.name, "from", session.client)
  end
end)
