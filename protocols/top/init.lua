-- The Tales of Pirates protocol module: loaded before the listener's
-- scripts at every load and reload (docs/protocols.md, "The protocol
-- module"). It keeps what every script needs about a session:
--
--   session.player   { name = account, id = player id }, set when the
--                    server accepts a login (MC_LOGIN error 0), kept across
--                    reloads, never holding the password;
--   chat commands    a CM_SAY line whose first word is a command some
--                    script registered (gw.command) goes to that command
--                    and never reaches the server; other lines, "/gm ..."
--                    included, pass;
--   session:tell     an MC_SAY from speaker 0, named "[proxy]".
--
-- Keep-alives (KEEPALIVE in packets.lua, the 2-byte frame) pass untouched
-- and never enter Lua: the module answers nothing. A script that wants
-- them says gw.on(side, "KEEPALIVE", fn); gw.packet("KEEPALIVE") builds
-- one (to keep a server link warm while the client is held, for example).
--
-- Only CM_LOGIN, MC_LOGIN and CM_SAY are handled here: every other frame
-- stays on the relay's path.
local gw = require "gangway"

-- Accounts between CM_LOGIN and its MC_LOGIN, by session. In gw.shared so
-- a reload between the two does not lose them; weak, so a session that
-- goes is forgotten.
local pending = gw.shared.top_pending_logins
if not pending then
  pending = setmetatable({}, { __mode = "k" })
  gw.shared.top_pending_logins = pending
end

-- A frame that does not fit its definition (a client or server of another
-- version) is no error of the module's: it names nobody and is left to the
-- scripts after it, whose handlers still run.
local function decode(pkt)
  local ok, fields = pcall(pkt.decode, pkt)
  return ok and fields or nil
end

-- The account as the server reads it: a C string, so "gm1\0x" logs in as
-- gm1 and is gm1 here too (names compare byte for byte everywhere else).
-- Two logins in flight that name different accounts leave it unknown
-- (false) which one the reply answers: a client could otherwise send its
-- own login, then a game master's with a wrong password, and be named the
-- game master by the reply to its own.
gw.on("client", "CM_LOGIN", function(pkt, session)
  local login = decode(pkt)
  local account = login and login.account:match("^[^\0]*") or false
  local before = pending[session]
  if before == nil then
    pending[session] = account
  elseif before ~= account then
    pending[session] = false
  end
end)

gw.on("server", "MC_LOGIN", function(pkt, session)
  local reply = decode(pkt)
  local account = pending[session]
  pending[session] = nil -- a failed login clears it too
  if not (reply and reply.error == 0) or account == nil then return end
  -- logged in as someone we cannot name: nobody, not the name before
  gw.set_player(session, account and { name = account, id = reply.player } or nil)
end)

gw.on("client", "CM_SAY", function(pkt, session)
  local say = decode(pkt)
  if say and gw.run_command(session, say.text) then return gw.DROP end
end)

gw.on_tell(function(session, text)
  session:send_to_client(gw.packet("MC_SAY", { speaker = 0, name = "[proxy]", text = text }))
end)
