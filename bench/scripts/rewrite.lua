-- rewrite.lua: a handler that edits every frame in place, both ways: the
-- first u32 of the body (offset 8 in a `top` frame) becomes "gawy"
-- (0x67617779), which gw-loadgen checks on each echo (bench/run.sh's
-- gw-rewrite contender, run with --expect-scratch 67617779).
local gw = require "gangway"
local BODY, MARK = 8, 0x67617779
local function mark(pkt)
  pkt:set_u32(BODY, MARK)
end
gw.on("client", "*", mark)
gw.on("server", "*", mark)
