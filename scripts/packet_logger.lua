-- packet_logger.lua: one JSON line per frame, through the proxy's log:
--   {"session":3,"client":"10.0.0.7:51234","player":"bot1","side":"client",
--    "opcode":1,"name":"CM_SAY","len":13,"body":"0003686900"}
-- Frames still pass unchanged. Logging every frame sends every frame
-- through Lua; list packets in ONLY to log just those.
--
-- Never log secrets: packets listed in SUMMARY are logged by what their
-- function picks out of them, never by their bytes. A login shows its
-- account name only:
--   {"session":3,...,"opcode":431,"name":"CM_LOGIN","len":48,"account":"bot1"}
local cjson = require "cjson"
local gw = require "gangway"

-- packets to log, by the side that sends them; nil: every frame, both sides
local ONLY = { client = { "CM_LOGIN", "CM_SAY" } }
local BODY_BYTES = 32    -- body bytes shown, in hex

-- packet name -> function(pkt, line): fills line with what may be logged
local SUMMARY = {
  -- str account, str password, str mac, u16 version, u16 marker
  CM_LOGIN = function(pkt, line)
    local ok, login = pcall(pkt.decode, pkt)
    if ok then line.account = login.account else line.malformed = true end
  end,
}

local function log(pkt, session)
  local line = {
    session = session.id,
    client = session.client,
    player = session.player and session.player.name, -- nil (left out) before login
    side = pkt.side,
    opcode = pkt.opcode,              -- nil (left out) for keep-alives
    name = pkt.name,                  -- nil for packets packets.lua does not define
    len = #pkt,
  }
  local summary = SUMMARY[pkt.name]
  if summary then
    summary(pkt, line)
  else
    line.body = gw.hex(pkt:body():sub(1, BODY_BYTES))
  end
  gw.log.info(cjson.encode(line))
end

for _, side in ipairs({ "client", "server" }) do
  local names = not ONLY and "*" or ONLY[side]
  if names then gw.on(side, names, log) end
end
