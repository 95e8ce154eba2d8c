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

-- "bot2" once logged in, else the session's number and address.
local function who(session)
  local p = session.player
  return p and p.name or ("session %d (%s)"):format(session.id, session.client)
end

gw.on("client", "CM_SAY", function(pkt, session)
  local text = pkt:decode().text
  local lower = text:lower()
  for _, phrase in ipairs(banned) do
    if lower:find(phrase, 1, true) then
      gw.log.info(("%s: dropped chat line %q"):format(who(session), text))
      return gw.DROP
    end
  end
  local clean, n = text:gsub("%a+", function(word)
    return replace[word:lower()]
  end)
  if n > 0 and clean ~= text then
    pkt:encode{ text = clean } -- the other fields, and any bytes after them, stay
    gw.log.info(("%s: rewrote chat line %q as %q"):format(who(session), text, clean))
  end
end)
