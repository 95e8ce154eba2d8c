-- online_command.lua: answers "/online" in local chat from the proxy. The
-- player gets a server chat line (MC_SAY, speaker id 0, name "[proxy]")
-- with the number of players connected through this listener; the server
-- never sees the command.
local gw = require "gangway"
local top = require "top"

local COMMAND = "/online"

gw.on("client", top.CM_SAY, function(pkt, session)
  local text = pkt:str(top.BODY)
  if text:match("^%s*(.-)%s*$") ~= COMMAND then return end
  local n = #gw.sessions()
  local line = n == 1 and "1 player online" or ("%d players online"):format(n)
  session:send_to_client(gw.packet(top.MC_SAY,
    gw.writer():u32(0):str("[proxy]"):str(line)))
  return gw.DROP
end)
