-- top.lua: Tales of Pirates command ids, for the example scripts. Admins
-- edit this table to match their server's NetCommand.h (forks renumber a
-- few: a newer one has CP_PING 6022 / PC_PING 5022). Scripts load it with
-- `local top = require "top"` (it sits next to them); a reload re-reads it.
--
-- Frame: u16 length (whole frame), u32 session (0x80000000), u16 command,
-- then the body at offset 8. Integers are big-endian; floats little-endian;
-- a string is a u16 length counting a trailing NUL, the bytes, the NUL
-- (pkt:str and writer:str do this).
--
-- Bodies the examples (and the demo game server) use:
--   CM_SAY (1)          str(text)                          client -> server
--   MC_SAY (501)        u32 speaker id, str(name), str(text) server -> client
--                       (speaker id 0 is the proxy itself)
--   CM_BEGINACTION (6)  u32 world id, u8 action type, then the action's data
local ids = {
  -- client to server (CM, band 0)
  CM_SAY = 1,
  CM_BEGINACTION = 6,
  CM_PING = 15,
  CM_CHECK_PING = 17,
  CM_LOGIN = 431,
  CM_LOGOUT = 432,
  CM_BGNPLAY = 433,
  -- server to client (MC, band 500)
  MC_SAY = 501,
  MC_MAPCRASH = 503,
  MC_PING = 515,
  MC_ENTERMAP = 516,
  MC_CHECK_PING = 537,
  MC_LOGIN = 931,
  MC_CHAPSTR = 940,
  -- group server (CP/PC)
  CP_PING = 6020,
  PC_PING = 5020,
  CP_SAY2ALL = 6402,
  PC_SAY2ALL = 5402,
}

local top = {}
for name, id in pairs(ids) do top[name] = id end

-- top.name[501] == "MC_SAY", for logs
top.name = {}
for name, id in pairs(ids) do top.name[id] = name end

top.BODY = 8               -- where a frame's body starts
top.SESSION = 0x80000000   -- the session field of ordinary packets

return top
