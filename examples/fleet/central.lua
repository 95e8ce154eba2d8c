-- The central gangway of the example fleet (examples/fleet/README.md): in
-- front of the game server, behind the two edges. The edges open each
-- session with a PROXY v2 header naming the player's own address, so the
-- game server side (logs, session.client, per-address limits) sees the
-- player, not the edge.
return {
  listeners = {
    {
      name = "central",
      listen = "127.0.0.1:2000",
      upstream = "127.0.0.1:2974",          -- build/topd
      proxy_protocol = true,                -- every client is an edge
      proxy_protocol_from = { "127.0.0.1" }, -- and only the edges may say who the player is
      framing = "top",
      protocol = "../../protocols/top",     -- session.player from the logins
      scripts = { "central_log.lua" },
    },
  },
  log = { level = "info" },
  control = "/tmp/gangway-fleet-central.sock",
  admin = { listen = "127.0.0.1:9980" },
}
