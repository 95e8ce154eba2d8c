-- admin_commands.lua: chat commands for game masters, answered by the
-- proxy (the server never sees them):
--   /kick NAME    closes NAME's sessions (any case: Bob is bob, as in bans;
--                 an account logged in twice has two)
--   /ban NAME     closes NAME's sessions and refuses the account at its next
--                 logins, until /unban NAME (bans survive reloads, not a
--                 restart: examples/fleet keeps them in Redis instead)
--   /unban NAME
--   /bans         lists the banned accounts (in lines of at most 400 bytes,
--                 20 lines, then how many more)
-- Only accounts in ADMINS may use them; anyone else is told so. Account
-- names are what the server accepted at login (session.player, set by the
-- protocol module), so a player cannot claim a game master's name.
-- Bans compare accounts in ASCII lower case: a game server that folds more
-- (other alphabets' case, SQL Server's trailing spaces) needs the same
-- folding in ban_key, or "BÖB" and "bob " get past bans of "böb" and "bob".
local gw = require "gangway"

local ADMINS = { gm1 = true, alice = true }  -- account names, as the server knows them

gw.shared.bans = gw.shared.bans or {}        -- account (lower case) -> who banned it
local bans = gw.shared.bans

-- The key of an account in bans, and how /kick and /ban compare names:
-- up to a NUL (the server reads C strings), in lower case.
local function ban_key(account) return account:match("^[^\0]*"):lower() end

-- Client bytes in a log line: control bytes as \NN (\10 for a newline,
-- which would otherwise start a line of the client's making).
local function printable(s)
  return (s:gsub("%c", function(c) return "\\" .. c:byte() end))
end

local function admin(session)
  local p = session.player
  if p and ADMINS[p.name] then return p.name end
  session:tell("you are not allowed to do that")
end

-- The command's one argument, an account name, or nil after telling how.
local function target(session, args, usage)
  local name = args:match("^(%S+)$")
  if not name then session:tell("usage: " .. usage) end
  return name
end

-- Every open session of an account, in any case (ASCII, as bans are):
-- the same account may be logged in twice.
local function sessions_of(name)
  local found, key = {}, ban_key(name)
  for _, s in ipairs(gw.players()) do
    local account = s.player.name -- another game's module may name no one
    if type(account) == "string" and ban_key(account) == key then found[#found + 1] = s end
  end
  return found
end

gw.command("/kick", function(session, args)
  local by = admin(session)
  local name = by and target(session, args, "/kick NAME")
  if not name then return end
  local victims = sessions_of(name)
  if #victims == 0 then return session:tell(name .. " is not online") end
  gw.log.info(("%s kicked %s"):format(by, printable(name)))
  for _, victim in ipairs(victims) do
    victim:tell("you were kicked by " .. by)
    victim:close("kicked by " .. by)
  end
  session:tell(name .. " kicked")
end)

gw.command("/ban", function(session, args)
  local by = admin(session)
  local name = by and target(session, args, "/ban NAME")
  if not name then return end
  bans[ban_key(name)] = by
  gw.log.info(("%s banned %s"):format(by, printable(name)))
  local victims = sessions_of(name)
  for _, victim in ipairs(victims) do
    victim:tell("you were banned by " .. by)
    victim:close("banned by " .. by)
  end
  session:tell(name .. " banned" .. (#victims > 0 and "" or " (not online)"))
end)

gw.command("/unban", function(session, args)
  local by = admin(session)
  local name = by and target(session, args, "/unban NAME")
  if not name then return end
  local was = bans[ban_key(name)]
  bans[ban_key(name)] = nil
  session:tell(was and (name .. " unbanned") or (name .. " was not banned"))
end)

-- /bans answers in chat lines a client shows whole (a few hundred bytes),
-- and at most LINES of them: thousands of bans in one line would not even
-- fit a frame.
local LINE_MAX, LINES = 400, 20

gw.command("/bans", function(session)
  if not admin(session) then return end
  local list = {}
  for name in pairs(bans) do list[#list + 1] = name end
  if #list == 0 then return session:tell("no bans") end
  table.sort(list)
  local lines, line, sep = {}, "banned: ", ""
  for i, name in ipairs(list) do
    if #name > 64 then name = name:sub(1, 61) .. "..." end
    if #line + #sep + #name > LINE_MAX then
      lines[#lines + 1] = line
      if #lines == LINES then
        line = ("... and %d more"):format(#list - i + 1)
        break
      end
      line, sep = "", ""
    end
    line, sep = line .. sep .. name, ", "
  end
  lines[#lines + 1] = line
  for _, text in ipairs(lines) do session:tell(text) end
end)

-- The account a login names. A login of another client version may not fit
-- packets.lua past its first field: the account still counts, so an odd
-- login is no way around a ban. The server reads the account as a C string:
-- "bob\0x" is bob, and so is it to ban_key.
local function account_of(pkt)
  local ok, login = pcall(pkt.decode, pkt)
  if ok then return login.account end
  local found, account = pcall(pkt.str, pkt, pkt.body_offset)
  return found and account or nil
end

-- A banned account's login never reaches the server: the client gets the
-- server's "login failed" answer (MC_LOGIN error 1) and the session ends.
gw.on("client", "CM_LOGIN", function(pkt, session)
  local account = account_of(pkt)
  if account and bans[ban_key(account)] then
    account = account:match("^[^\0]*")
    gw.log.info(("refused the login of %s: banned"):format(printable(account)))
    session:send_to_client(gw.packet("MC_LOGIN", { error = 1 }))
    session:close("banned account " .. account)
    return gw.DROP
  end
end)
