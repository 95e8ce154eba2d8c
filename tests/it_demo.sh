#!/usr/bin/env bash
# The bundled demo end to end through gangway with the example scripts: topd
# behind gangway (config as in config.lua, on free loopback ports), three
# scripted players and one speed hacker. Checks what each side saw: the
# server never gets the spam line or "/online", gets the rewritten line;
# the players get the proxy's answer; the hacker's bursts are cut and the
# hacker is closed; a game master's /kick and /ban close those players'
# sessions and the banned account's next login is refused before the
# server sees it; every process exits cleanly.
#   usage: tests/it_demo.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh" demo "$1"

"$build/topd" -v -l 127.0.0.1:0 >"$dir/topd.out" 2>&1 &
topd=$!; pids+=($topd)
wait_for "$dir/topd.out" "listen addr=" 5 || fail "topd does not listen"
up=$(sed -n 's/.*listen addr=127.0.0.1:\([0-9]*\).*/\1/p' "$dir/topd.out" | head -1)
port=$(( 20000 + RANDOM % 12000 )) # below the ephemeral range: no outgoing connection takes it
while ! port_free "$port"; do port=$(( port + 1 )); done

cat >"$dir/config.lua" <<LUA
return {
  listeners = { {
    name = "game", listen = "127.0.0.1:$port", upstream = "127.0.0.1:$up", framing = "top",
    protocol = "$root/protocols/top",
    scripts = { "$root/scripts/chat_filter.lua", "$root/scripts/online_command.lua",
                "$root/scripts/admin_commands.lua",
                "$root/scripts/speed_limit.lua", "$root/scripts/packet_logger.lua" },
  } },
  control = "",
}
LUA
"$build/gangway" -c "$dir/config.lua" >"$dir/gangway.out" 2>&1 &
gw=$!; pids+=($gw)
wait_for "$dir/gangway.out" " running (config " 5 || fail "gangway does not start"

cat >"$dir/players.txt" <<'TXT'
wait 300
say hello from the scenario
say sorry noob, my bad
say buy gold at gold4you dot com
wait 200
say /online
wait 1500
TXT
cat >"$dir/hacker.txt" <<'TXT'
wait 300
burst 40
wait 300
burst 40
wait 300
burst 40
wait 1500
TXT
# gm1 (a game master in scripts/admin_commands.lua) acts once the players
# have said their lines: player3 kicked, player2 banned.
cat >"$dir/gm.txt" <<'TXT'
wait 2500
say /online
say /kick player3
wait 200
say /ban player2
wait 200
say /bans
wait 1000
TXT
"$build/topbot" -c "127.0.0.1:$port" -p player -n 3 -d 4 -s "$dir/players.txt" >"$dir/players.out" 2>&1 &
players=$!; pids+=($players)
"$build/topbot" -c "127.0.0.1:$port" -p gm -n 1 -d 4 -s "$dir/gm.txt" >"$dir/gm.out" 2>&1 &
gm=$!; pids+=($gm)
"$build/topbot" -c "127.0.0.1:$port" -p hacker -n 1 -d 4 -s "$dir/hacker.txt" >"$dir/hacker.out" 2>&1 &
hacker=$!; pids+=($hacker)
wait "$players" || true # two of them closed by the proxy: its exit says so
wait "$hacker" || true
wait "$gm" || fail "gm: exit $?"
# player2 comes back: the proxy refuses the banned account, the server
# never sees that login (player1 is still online there: name in use).
"$build/topbot" -c "127.0.0.1:$port" -p player -n 2 -d 1 >"$dir/again.out" 2>&1 || true

# The server saw the rewritten line, never the spam or the command.
grep -q "text=sorry new friend, my bad" "$dir/topd.out" || fail "server did not get the rewritten line"
grep -q "noob" "$dir/topd.out" && fail "server got the unfiltered line"
grep -q "gold4you" "$dir/topd.out" && fail "server got the spam line"
grep -q "text=/online" "$dir/topd.out" && fail "server got /online"
grep -q "text=hello from the scenario" "$dir/topd.out" || fail "server did not get plain chat"
# Every player heard the others, and the proxy's answer.
for i in 1 2 3; do
  grep -q "player$i < \[local\] \[proxy\]: [0-9]* players\? online" "$dir/players.out" ||
    fail "player$i got no /online answer"
done
grep -q "player2: sorry new friend, my bad" "$dir/players.out" || fail "players did not hear the rewritten line"
# The hacker: bursts cut, then closed by speed_limit.lua.
grep -q "dropped chat line" "$dir/gangway.out" || fail "chat_filter did not log its drop"
grep -q "actions over the limit" "$dir/gangway.out" || fail "speed_limit did not close the hacker"
grep -q 'hacker1 disconnected' "$dir/hacker.out" || fail "hacker not disconnected"
moves=$(grep -c "action peer=[0-9]* name=hacker1 " "$dir/topd.out" || true)
[ "$moves" -lt 60 ] || fail "server saw $moves of the hacker's 120 moves"
grep -q '"name":"CM_SAY"' "$dir/gangway.out" || fail "packet_logger wrote no JSON line"
grep -q '"player":"player1"' "$dir/gangway.out" || fail "packet_logger names no player"
# The game master's commands: answered by the proxy, never seen by the server.
grep -q "gm1 < \[local\] \[proxy\]: [0-9]* players\? online" "$dir/gm.out" || fail "gm1 got no /online answer"
grep -q "gm1 < \[local\] \[proxy\]: player3 kicked" "$dir/gm.out" || fail "gm1: /kick not confirmed"
grep -q "gm1 < \[local\] \[proxy\]: player2 banned" "$dir/gm.out" || fail "gm1: /ban not confirmed"
grep -q "gm1 < \[local\] \[proxy\]: banned: player2" "$dir/gm.out" || fail "gm1: /bans does not list player2"
grep -q "player3 < \[local\] \[proxy\]: you were kicked by gm1" "$dir/players.out" || fail "player3 not told"
grep -q "player3 disconnected" "$dir/players.out" || fail "player3 not kicked"
grep -q "player2 disconnected" "$dir/players.out" || fail "player2 not banned"
grep -q "player1 disconnected" "$dir/players.out" && # printed for an end before -d only
  fail "player1 lost its session: $(grep 'player1 disconnected' "$dir/players.out")"
grep -Eq "text=/(kick|ban|bans|online)" "$dir/topd.out" && fail "the server saw a command"
grep -q "refused the login of player2: banned" "$dir/gangway.out" || fail "no refusal of player2's login logged"
grep -q "player2 < login error=1" "$dir/again.out" || fail "player2's second login not refused: $(cat "$dir/again.out")"
[ "$(grep -c "login peer=[0-9]* id=[0-9]* name=player2 " "$dir/topd.out")" = 1 ] ||
  fail "the server saw player2's refused login"

kill -TERM "$gw"; wait "$gw" || fail "gangway exit $?"
kill -INT "$topd"; wait "$topd" || fail "topd exit $?"
ok=1
echo "demo through gangway: ok (server saw $moves of the hacker's moves)"
