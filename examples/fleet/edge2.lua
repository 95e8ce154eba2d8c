-- Edge 2 of the example fleet (examples/fleet/README.md): close to its
-- players, relaying to the central gangway. Bans and the /online count are
-- shared with the other edge through Redis (fleet.lua).
return {
  listeners = {
    {
      name = "edge2",
      listen = "127.0.0.1:2002",
      upstream = { { name = "central", addr = "127.0.0.1:2000" } },
      -- more centrals: { { name = "central", ... }, { name = "central-b", ... } },
      -- with balance = "hash" and health = { ... } (docs/config.md, upstream)
      upstream_proxy_protocol = "v2",       -- the central sees the player's address
      framing = "top",
      protocol = "../../protocols/top",     -- session.player, gw.command, session:tell
      scripts = { "fleet.lua" },
    },
  },
  redis = { addr = "127.0.0.1:6390", timeout_ms = 500 },
  log = { level = "info" },
  control = "/tmp/gangway-fleet-edge2.sock",
  admin = { listen = "127.0.0.1:9982" },
}
