-- online_command.lua: "/online" in local chat, answered by the proxy with
-- the number of players logged in through this listener. The protocol
-- module (protocol = "top") routes the command here and never forwards it;
-- session:tell answers in the game's chat, from "[proxy]".
local gw = require "gangway"

gw.command("/online", function(session)
  local n = #gw.players()
  session:tell(n == 1 and "1 player online" or ("%d players online"):format(n))
end)
