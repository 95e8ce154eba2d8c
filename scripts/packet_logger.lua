-- packet_logger.lua: one JSON line per frame, through the proxy's log:
--   {"session":3,"client":"10.0.0.7:51234","side":"client","opcode":1,
--    "name":"CM_SAY","len":13,"body":"0003686900"}
-- Frames still pass unchanged. Logging every frame sends every frame
-- through Lua; list opcodes in ONLY to log just those.
--
-- Never log secrets: frames listed in SUMMARY are logged by what their
-- function picks out of them, never by their bytes. A login shows its
-- account name only:
--   {"session":3,...,"opcode":431,"name":"CM_LOGIN","len":48,"account":"bot1"}
local cjson = require "cjson"
local gw = require "gangway"
local top = require "top"

local ONLY = { top.CM_LOGIN, top.CM_SAY }  -- nil: every frame, both sides
local BODY_BYTES = 32    -- body bytes shown, in hex

-- opcode -> function(pkt, line): fills line with what may be logged
local SUMMARY = {
  -- str account, str password, str mac, u16 version, u16 911
  [top.CM_LOGIN] = function(pkt, line)
    local ok, account = pcall(pkt.str, pkt, top.BODY)
    if ok then line.account = account else line.malformed = true end
  end,
}

local function hex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function log(pkt, session)
  local line = {
    session = session.id,
    client = session.client,
    side = pkt.side,
    opcode = pkt.opcode,              -- nil (left out) for keep-alives
    name = pkt.opcode and top.name[pkt.opcode],
    len = #pkt,
  }
  local summary = pkt.side == "client" and SUMMARY[pkt.opcode]
  if summary then
    summary(pkt, line)
  else
    line.body = hex(pkt:body():sub(1, BODY_BYTES))
  end
  gw.log.info(cjson.encode(line))
end

for _, side in ipairs({ "client", "server" }) do
  gw.on(side, ONLY or "*", log)
end
