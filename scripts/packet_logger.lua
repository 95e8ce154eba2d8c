-- packet_logger.lua: one JSON line per frame, through the proxy's log:
--   {"session":3,"client":"10.0.0.7:51234","side":"client","opcode":1,
--    "name":"CM_SAY","len":13,"body":"0003686900"}
-- Frames still pass unchanged. Logging every frame sends every frame
-- through Lua; list opcodes in ONLY to log just those.
local cjson = require "cjson"
local gw = require "gangway"
local top = require "top"

local ONLY = { top.CM_LOGIN, top.CM_SAY }  -- nil: every frame, both sides
local BODY_BYTES = 32    -- body bytes shown, in hex

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function log(pkt, session)
  gw.log.info(cjson.encode({
    session = session.id,
    client = session.client,
    side = pkt.side,
    opcode = pkt.opcode,              -- nil (left out) for keep-alives
    name = pkt.opcode and top.name[pkt.opcode],
    len = #pkt,
    body = hex(pkt:body():sub(1, BODY_BYTES)),
  }))
end

for _, side in ipairs({ "client", "server" }) do
  gw.on(side, ONLY or "*", log)
end
