-- trivial.lua: the cheapest handler on every frame, both ways. What it
-- measures is the cost of handing a frame to Lua at all (bench/run.sh's
-- gw-lua contender).
local gw = require "gangway"
gw.on("client", "*", function() end)
gw.on("server", "*", function() end)
