-- chat_filter.lua: filters local chat (CM_SAY) on its way to the server.
-- A line with a banned phrase is dropped (the server never sees it); words
-- in the `replace` table are rewritten, which changes the line's length:
-- pkt:set_body rebuilds the frame and its length field.
local gw = require "gangway"
local top = require "top"

-- Lower-case phrases, matched anywhere in the line (plain text).
local banned = { "buy gold", "cheap gold", "gold4you" }

-- Whole words (case-insensitive) and what they become.
local replace = {
  noob = "new friend",
  idiot = "friend",
  damn = "darn",
}

gw.on("client", top.CM_SAY, function(pkt, session)
  local text, after = pkt:str(top.BODY)
  local lower = text:lower()
  for _, phrase in ipairs(banned) do
    if lower:find(phrase, 1, true) then
      gw.log.info(("session %d (%s): dropped chat line %q"):format(
        session.id, session.client, text))
      return gw.DROP
    end
  end
  local clean, n = text:gsub("%a+", function(word)
    return replace[word:lower()]
  end)
  if n > 0 and clean ~= text then
    -- Keep whatever follows the text in the body.
    local rest = pkt:bytes():sub(after + 1)
    pkt:set_body(gw.writer():str(clean):bytes(rest))
    gw.log.info(("session %d (%s): rewrote chat line %q as %q"):format(
      session.id, session.client, text, clean))
  end
end)
