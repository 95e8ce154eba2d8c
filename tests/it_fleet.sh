#!/usr/bin/env bash
# examples/fleet end to end: start.sh (redis-server, topd, the central
# gangway, two edges, three bots at each edge), then what an admin would
# watch: /online counts the whole fleet through Redis, a ban published
# with redis-cli closes the player's session at the other edge within a
# second and refuses that player's next login at any edge, and the central
# gangway logs the players' own addresses (PROXY v2 from the edges).
# The example's ports are fixed (6390, 2974, 2000-2002, 9980-9982): the
# test is skipped (77) when one is taken.
#   usage: tests/it_fleet.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh" fleet "$1"
fleet=""
# start.sh stops what it started on TERM (a KILL would leave it running)
cleanup_more() {
  if [ -n "$fleet" ]; then kill -TERM "$fleet" 2>/dev/null || true; wait "$fleet" 2>/dev/null || true; fi
}
for port in 6390 2974 2000 2001 2002 9980 9981 9982; do
  if ! port_free "$port"; then
    echo "127.0.0.1:$port is taken: skipped"; exit 77
  fi
done

# No automatic ban: this test bans at a moment it knows.
BUILD_DIR=$build FLEET_SECONDS=40 FLEET_BAN_AFTER=1000 setsid "$root/examples/fleet/start.sh" \
  >"$dir/fleet.out" 2>&1 &
fleet=$!
wait_for "$dir/fleet.out" "fleet running" 20 || fail "the fleet does not start"
for b in eu1 eu2 eu3 us1 us2 us3; do
  wait_for "$dir/fleet.out" "$b < login ok" 15 || fail "$b did not log in"
done
# The central gangway sees the players' own addresses, not the edges'.
wait_for "$dir/fleet.out" "\[central\].*login us2 from 127.0.0.1:" 10 || fail "central logged no player address"

# /online through edge1 counts both edges' players (and the one asking).
sleep 6 # an edge refreshes fleet:online every 5 s
printf 'wait 500\nsay /online\nwait 1500\n' >"$dir/online.txt"
"$build/topbot" -c 127.0.0.1:2001 -p asker -n 1 -d 3 -s "$dir/online.txt" >"$dir/online.out" 2>&1 || true
grep -Eq "asker1 < \[local\] \[proxy\]: [0-9]+ players online in the fleet, [0-9]+ through edge1" "$dir/online.out" ||
  fail "no fleet-wide /online answer: $(cat "$dir/online.out")"
n=$(sed -n 's/.*\[proxy\]: \([0-9]*\) players online in the fleet.*/\1/p' "$dir/online.out" | head -1)
[ "$n" -ge 6 ] || fail "/online counted $n players in the fleet, expected the 6 bots at least"
grep -q "text=/online" "$dir/fleet.out" && fail "the game server saw /online"

# A ban from any admin tool: us2 (at edge2) is closed within a second.
redis-cli -p 6390 SADD fleet:bans us2 >/dev/null
t0=$(date +%s%N)
redis-cli -p 6390 PUBLISH fleet:ban us2 >/dev/null
wait_for "$dir/fleet.out" "us2 disconnected" 1 || fail "us2 not closed within 1 s of the ban"
ms=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -q "\[edge2\].*us2 banned: closing the session" "$dir/fleet.out" || fail "edge2 did not log the ban"
# ... and its next login, at the other edge, is refused.
"$build/topbot" -c 127.0.0.1:2001 -p us -n 2 -d 2 >"$dir/again.out" 2>&1 || true
grep -q "us2 < \[local\] \[proxy\]: You are banned from this server." "$dir/again.out" ||
  fail "us2's login at edge1 not refused: $(cat "$dir/again.out")"
grep -q "us2 disconnected" "$dir/again.out" || fail "us2's refused session stayed open"
grep -q "us2 < login ok" "$dir/again.out" && fail "us2 got the server's login ok, which the edge drops"
# The other players stayed.
for b in eu1 eu2 eu3 us1 us3; do
  grep -q "$b disconnected" "$dir/fleet.out" && fail "$b lost its session"
done

kill -TERM "$fleet"; wait "$fleet" || true; fleet=""
grep -q "fleet stopped" "$dir/fleet.out" || fail "start.sh did not stop cleanly"
ok=1
echo "fleet: ok (/online counted $n in the fleet; us2 closed at edge2 within $ms ms of the ban, refused at edge1)"
