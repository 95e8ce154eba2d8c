-- chat_filter.lua: filters local chat (CM_SAY) on its way to the server.
-- A line with a banned phrase is dropped (the server never sees it); words
-- in the `replace` table are rewritten, which changes the line's length:
-- pkt:encode rebuilds the frame and its length field.
local gw = require "gangway"

-- Lower-case phrases, matched anywhere in the line (plain text).
local banned = { "buy gold", "cheap gold", "gold4you" }

-- Whole words (case-insensitive) and what they become.
local replace = {
  noob = "new friend",
  idiot = "friend",
  damn = "darn",
}

-- Client bytes in a log line: control bytes as \NN (\10 for a newline,
-- which would otherwise start a line of the client's making).
local function printable(s)
  return (s:gsub("%c", function(c) return "\\" .. c:byte() end))
end

-- "bot2" once logged in, else the session's number and address.
local function who(session)
  local p = session.player
  return p and printable(p.name) or ("session %d (%s)"):format(session.id, session.client)
end

-- A chat line quoted for the log: %q, its newline (a backslash and a real
-- newline) as \n.
local function quoted(text)
  return (("%q"):format(text):gsub("\n", "n"))
end

gw.on("client", "CM_SAY", function(pkt, session)
  local text = pkt:decode().text
  local lower = text:lower()
  for _, phrase in ipairs(banned) do
    if lower:find(phrase, 1, true) then
      gw.log.info(("%s: dropped chat line %s"):format(who(session), quoted(text)))
      return gw.DROP
    end
  end
  local clean, n = text:gsub("%a+", function(word)
    return replace[word:lower()]
  end)
  if n > 0 and clean ~= text then
    pkt:encode{ text = clean } -- the other fields, and any bytes after them, stay
    gw.log.info(("%s: rewrote chat line %s as %s"):format(who(session), quoted(text), quoted(clean)))
  end
end)
