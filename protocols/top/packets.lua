-- Tales of Pirates packet definitions: the stock NetCommand.h ids and the
-- bodies the demo game server (topd) speaks. Plain data, no code: edit it
-- when a game patch renumbers a command or adds a field, then reload.
-- The format is in docs/protocols.md. In short:
--
--   NAME = { side = "client" | "server" | "both", opcode = N, fields... }
--
-- A field is "type name": u8 u16 u32 u64 i8 i16 i32 i64 (big-endian here,
-- the framing's byte order), f32 f64 (little-endian, as the game copies
-- them raw), str (u16 length counting a trailing NUL, the bytes, the NUL),
-- bytes(N), or bytes (the rest of the body). A name ending in "?" is
-- optional: it and every field after it may be missing at the end of the
-- body. { "name", count = "field", fields... } is an array of structs
-- whose length is an earlier integer field (written for you on encode).
--
-- Frames whose opcode is not here still pass; a frame that does not fit
-- its definition is an error only for the handler that decodes it.
return {
  -- the keep-alive: a frame of length 2, no session, no opcode
  KEEPALIVE = { side = "both", keepalive = true },

  -- client to server (CM, band 0)
  CM_SAY = { side = "client", opcode = 1,
    "str text",
  },
  CM_BEGINACTION = { side = "client", opcode = 6,
    "u32 world",                -- the player id
    "u8 action",                -- 1: move
    "bytes data",               -- the action's data; a move: i32 x, i32 y
  },
  CM_PING = { side = "client", opcode = 15, "bytes data" },
  CM_CHECK_PING = { side = "client", opcode = 17, "bytes data" },
  CM_LOGIN = { side = "client", opcode = 431,
    "str account",
    "str password",             -- never log it
    "str mac",
    "u16 version",              -- the client's version
    "u16 marker",               -- always 911
  },
  CM_LOGOUT = { side = "client", opcode = 432, "bytes data" },
  CM_BGNPLAY = { side = "client", opcode = 433, "bytes data" },   -- select character

  -- server to client (MC, band 500)
  MC_SAY = { side = "server", opcode = 501,
    "u32 speaker",              -- the speaker's player id; 0 is the proxy
    "str name",
    "str text",
  },
  MC_MAPCRASH = { side = "server", opcode = 503, "bytes data" },
  MC_PING = { side = "server", opcode = 515, "bytes data" },
  MC_ENTERMAP = { side = "server", opcode = 516, "bytes data" },
  MC_CHECK_PING = { side = "server", opcode = 537, "bytes data" },
  MC_LOGIN = { side = "server", opcode = 931,
    "u16 error",                -- 0: logged in (the demo: 1 malformed, 2 bad name, 3 in use)
    "u32 player?",              -- the player id, when error is 0
  },
  MC_CHAPSTR = { side = "server", opcode = 940,
    "str chap",                 -- "[MM-DD hh:mm:ss:ms]", the cipher's key
  },

  -- group server (CP client to group, PC group to client)
  CP_PING = { side = "client", opcode = 6020, "bytes data" },
  CP_SAY2ALL = { side = "client", opcode = 6402, "bytes data" },  -- world chat
  PC_PING = { side = "server", opcode = 5020, "bytes data" },
  PC_SAY2ALL = { side = "server", opcode = 5402, "bytes data" },
}
