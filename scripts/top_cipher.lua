-- top_cipher.lua: the demo server's body encryption (topd -e), undone and
-- redone by gangway so that the other scripts see clear frames.
--
-- Tales of Pirates encrypts the part of each frame after the 6-byte header
-- (command and payload) once a player has logged in, with a key from the
-- server's first packet, MC_CHAPSTR. The demo cipher (docs/demo.md, "The
-- demo cipher") XORs byte i of a direction's stream with key[i % #key] and
-- (i * 7 + 13) & 0xff; i counts every encrypted byte of that direction.
--   client -> server: every frame after the client's CM_LOGIN;
--   server -> client: every frame after the server's MC_LOGIN.
-- gangway decodes what a side sends and encodes what goes to it, each with
-- its own counter, so a handler may change a frame's size (the length field
-- stays clear) and both peers still see the key stream they expect.
--
-- Put it first in a listener's scripts: a switch applies from the frame
-- after the one in hand, so CM_LOGIN and MC_LOGIN themselves pass clear.
local gw = require "gangway"

local HEADER = 6 -- length (2) and session (4) stay clear

local CHUNK = 4096 -- bytes taken from or made into a string at once

local function xor(bytes, st)
  local key, i, n = st.key, st.i, #st.key
  local parts = {}
  for at = 1, #bytes, CHUNK do
    -- one string.byte and one string.char per chunk, not one per byte
    local out = { bytes:byte(at, at + CHUNK - 1) }
    for k = 1, #out do
      out[k] = out[k] ~ key[i % n + 1] ~ ((i * 7 + 13) & 0xff)
      i = i + 1
    end
    parts[#parts + 1] = string.char(table.unpack(out))
  end
  st.i = i
  return table.concat(parts)
end

-- XOR is its own inverse: one function each way.
local cipher = gw.codec{ name = "top-demo", decode = xor, encode = xor }

-- The codec for one way of one side, with a counter of its own.
local function encrypt(session, side, ways)
  session:set_codec(side, cipher, { body = true, offset = HEADER, ways = ways,
                                    state = { key = { session.state.chapstr:byte(1, -1) },
                                              i = 0 } })
end

-- Client to server: from the frame after CM_LOGIN, once the key is known.
-- A client may send its login before the server's MC_CHAPSTR reaches
-- gangway (both leave at connect): then the key's arrival switches it on.
local function cipher_up(session)
  session.state.cipher_up = true
  encrypt(session, "client", "in")  -- what the client sends from now on
  encrypt(session, "server", "out") -- and what the server gets
end

gw.on("server", "MC_CHAPSTR", function(pkt, session)
  local key = pkt:decode().chap
  if #key == 0 then return end
  session.state.chapstr = key
  if session.state.login_sent and not session.state.cipher_up then cipher_up(session) end
end)

gw.on("client", "CM_LOGIN", function(pkt, session)
  if session.state.login_sent then return end
  session.state.login_sent = true
  if session.state.chapstr then cipher_up(session) end
end)

gw.on("server", "MC_LOGIN", function(pkt, session)
  if not session.state.chapstr or session.state.cipher_down then return end
  session.state.cipher_down = true
  encrypt(session, "server", "in")
  encrypt(session, "client", "out")
end)
