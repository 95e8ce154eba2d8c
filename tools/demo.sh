#!/usr/bin/env bash
# gangway's main job on its bundled default, from a fresh machine: installs
# what is needed, builds, starts the demo Tales of Pirates server (topd) on
# 127.0.0.1:1974 with its chat encrypted after login, gangway in front of it
# on 127.0.0.1:1973 with config.lua's example scripts live (top_cipher.lua
# decrypts for the others and encrypts again), and four bots (bot1 a speed
# hacker). The
# console shows what the rules do. Ctrl-C stops everything.
#   DEMO_SECONDS=N tools/demo.sh   stops by itself after N seconds
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

prefix() { sed -u "s/^/$1 /"; }
# -e: frames after login are encrypted (the demo cipher, keyed from the
# server's MC_CHAPSTR); scripts/top_cipher.lua decrypts them for the other
# scripts and encrypts them again for each peer.
build/topd -e -l 127.0.0.1:1974 > >(prefix "[server] ") 2>&1 &
pids+=($!)
build/gangway -c config.lua > >(prefix "[gangway]") 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  build/gangway stats -c config.lua >/dev/null 2>&1 && break
  sleep 0.1
done
secs=${DEMO_SECONDS:-86400}
# Four bots; bot1 (-x) bursts movement like a speed hack.
build/topbot -e -c 127.0.0.1:1973 -n 4 -x -d "$secs" > >(prefix "[bots]   ") 2>&1 &
pids+=($!)
# gm1, a game master (scripts/admin_commands.lua): /online, then kicks bot4
# and bans bot3 (whose session ends and whose logins are refused), then
# lifts the ban.
build/topbot -e -c 127.0.0.1:1973 -p gm -n 1 -s demo/gm.scenario -d "$secs" > >(prefix "[gm]     ") 2>&1 &
pids+=($!)
echo "gangway demo running: chat with the bots in another terminal with"
echo "  build/topchat -e -c 127.0.0.1:1973"
echo "edit scripts/*.lua and save: watch = true reloads them live. Ctrl-C stops."
if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
else
  wait
fi
