#!/usr/bin/env bash
# Starts the example fleet on loopback (README.md next to this file):
#   redis-server :6390, the demo game server build/topd :2974,
#   the central gangway :2000 (PROXY protocol in), two edges :2001 :2002
#   (PROXY v2 out, bans and /online in Redis), and three bots at each edge.
# After FLEET_BAN_AFTER seconds (default 20) it bans us2 the way an admin
# would, with redis-cli. Ctrl-C stops everything; FLEET_SECONDS=N stops by
# itself after N seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD_DIR:-$root/build}
cd "$here"

for bin in "$build/gangway" "$build/topd" "$build/topbot"; do
  [ -x "$bin" ] || { echo "missing $bin: build first (cmake -S $root -B $build && cmake --build $build)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }
for port in 6390 2974 2000 2001 2002 9980 9981 9982; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "127.0.0.1:$port is taken: is a fleet already running?" >&2
    exit 1
  fi
done

# Children in their own process group: Ctrl-C reaches the script, which
# stops them in order (bots first, Redis last).
pids=()
sleeper=""
cleanup() {
  trap - INT TERM EXIT
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "fleet stopped"
}
trap cleanup INT TERM EXIT

prefix() { sed -u "s/^/$1 /"; }
wait_port() { # port, what
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up on 127.0.0.1:$1" >&2
  exit 1
}

redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no \
  > >(prefix "[redis]  ") 2>&1 &
pids+=($!)
wait_port 6390 redis-server
redis-cli -p 6390 DEL fleet:bans fleet:online >/dev/null

"$build/topd" -l 127.0.0.1:2974 > >(prefix "[server] ") 2>&1 &
pids+=($!)
wait_port 2974 topd
# A gangway's admin port answers once its listeners are bound (probing
# the listeners themselves would open sessions).
"$build/gangway" -c central.lua > >(prefix "[central]") 2>&1 &
pids+=($!)
wait_port 9980 "the central gangway"
for n in 1 2; do
  "$build/gangway" -c "edge$n.lua" > >(prefix "[edge$n]  ") 2>&1 &
  pids+=($!)
  wait_port "998$n" "edge$n"
done

secs=${FLEET_SECONDS:-86400}
"$build/topbot" -c 127.0.0.1:2001 -n 3 -p eu -d "$secs" > >(prefix "[bots1]  ") 2>&1 &
pids+=($!)
"$build/topbot" -c 127.0.0.1:2002 -n 3 -p us -d "$secs" > >(prefix "[bots2]  ") 2>&1 &
pids+=($!)

echo "fleet running: edges on 127.0.0.1:2001 and :2002, central on :2000, game server on :2974"
echo "  chat through an edge:   $build/topchat -c 127.0.0.1:2001     (try /online)"
echo "  ban a player:           redis-cli -p 6390 SADD fleet:bans eu1; redis-cli -p 6390 PUBLISH fleet:ban eu1"
echo "  who is online:          redis-cli -p 6390 ZRANGE fleet:online 0 -1"
echo "  metrics:                curl -s 127.0.0.1:9981/metrics | grep upstream"
echo "Ctrl-C stops everything."

# Sleeps in the background and waits for them, so that a TERM (not only a
# Ctrl-C, which reaches the whole process group) stops the fleet at once.
pause() { sleep "$1" & sleeper=$!; wait $sleeper; }
ban_after=${FLEET_BAN_AFTER:-20}
if [ "$ban_after" -lt "$secs" ]; then
  pause "$ban_after"
  echo "[fleet]   banning us2: SADD fleet:bans us2, PUBLISH fleet:ban us2"
  redis-cli -p 6390 SADD fleet:bans us2 >/dev/null
  redis-cli -p 6390 PUBLISH fleet:ban us2 >/dev/null
  pause $((secs - ban_after))
else
  pause "$secs"
fi
