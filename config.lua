-- gangway's default configuration: the bundled Tales of Pirates demo.
-- tools/demo.sh starts the demo game server (build/topd -e: chat encrypted
-- after login) on 127.0.0.1:1974, gangway in front of it on 127.0.0.1:1973
-- with the example scripts, and a few bots. Every key is documented in docs/config.md.
return {
  listeners = {
    {
      name = "game",
      listen = "127.0.0.1:1973",
      upstream = "127.0.0.1:1974",
      framing = "top",              -- Tales of Pirates: u16 BE length, u32 session, u16 BE command
      protocol = "top",             -- protocols/top: packets by name, players, chat commands
      scripts = {
        "scripts/top_cipher.lua",     -- undoes and redoes the demo's encryption (topd -e), first
        "scripts/chat_filter.lua",    -- drops or rewrites chat lines
        "scripts/online_command.lua", -- answers /online itself
        "scripts/admin_commands.lua", -- /kick, /ban, /unban, /bans for game masters (gm1)
        "scripts/speed_limit.lua",    -- drops CM_BEGINACTION bursts, kicks speed hackers
        "scripts/packet_logger.lua",  -- JSON lines for chosen commands
      },
      on_error = "pass",            -- a failing handler lets the frame through
    },
  },
  timeouts = { connect_ms = 5000, idle_ms = 60000, drain_ms = 5000 },
  limits = { max_sessions = 1000, handler_instructions = 1000000, lua_memory_mb = 64 },
  log = { level = "info", format = "text" },
  watch = true,                     -- edit a script, save, and it is live
}
