#!/usr/bin/env bash
# The encrypted demo end to end (issue 11): topd -e behind gangway with
# scripts/top_cipher.lua in front of chat_filter.lua and online_command.lua,
# three topbot -e players on a scenario. Checks that gangway decrypts,
# filters and re-encrypts: the server gets "darn", never "damn", and
# understands every frame; the players log in, hear the rewritten line
# (decrypted by them: gangway re-encrypted it with the key stream they
# expect) and get the proxy's /online answer (injected and encrypted by
# gangway). Then the same without top_cipher.lua: the filter cannot read
# encrypted chat, so "damn" and "/online" reach the server.
#   usage: tests/it_demo_cipher.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh" demo-cipher "$1"
last_port=0

# run NAME SCRIPTS...: topd -e on a port of its own, gangway in front of it
# with the scripts (paths in scripts/), three players with -e; outputs in
# $dir/NAME-*.out. Stops gangway and topd, each must exit 0.
run() {
  local name=$1; shift
  local list="" s
  for s in "$@"; do list+="\"$root/scripts/$s\", "; done
  "$build/topd" -v -e -l 127.0.0.1:0 >"$dir/$name-topd.out" 2>&1 &
  local topd=$!; pids+=($topd)
  wait_for "$dir/$name-topd.out" "listen addr=" 5 || fail "$name: topd does not listen"
  local up port gw tries
  up=$(sed -n 's/.*listen addr=127.0.0.1:\([0-9]*\).*/\1/p' "$dir/$name-topd.out" | head -1)
  # A port below the kernel's ephemeral range (32768 and up), where the
  # outgoing connections of other tests on this machine cannot hold it;
  # another one if gangway still cannot listen on it.
  for tries in 1 2 3 4 5; do
    port=$(( 10000 + RANDOM % 22000 ))
    while [ "$port" = "$last_port" ] || ! port_free "$port"; do port=$(( port + 1 )); done
    last_port=$port
    cat >"$dir/$name.lua" <<LUA
return {
  listeners = { {
    name = "game", listen = "127.0.0.1:$port", upstream = "127.0.0.1:$up", framing = "top",
    protocol = "$root/protocols/top", scripts = { $list },
  } },
  control = "",
}
LUA
    "$build/gangway" -c "$dir/$name.lua" >"$dir/$name-gangway.out" 2>&1 &
    gw=$!; pids+=($gw)
    wait_for "$dir/$name-gangway.out" " running (config \|cannot listen" 5 || fail "$name: gangway does not start"
    grep -q " running (config " "$dir/$name-gangway.out" && break
    wait "$gw" || true
    [ "$tries" = 5 ] && fail "$name: gangway found no port to listen on"
  done
  "$build/topbot" -e -c "127.0.0.1:$port" -p player -n 3 -d 4 -s "$dir/players.txt" \
    >"$dir/$name-players.out" 2>&1 || fail "$name: players: exit $?"
  kill -TERM "$gw"; wait "$gw" || fail "$name: gangway exit $?"
  kill -INT "$topd"; wait "$topd" || fail "$name: topd exit $?"
}

cat >"$dir/players.txt" <<'TXT'
wait 300
say hello with the cipher on
say this damn crab keeps killing me
wait 200
say /online
wait 1500
TXT

run cipher top_cipher.lua chat_filter.lua online_command.lua
d=$dir/cipher
# Every player logged in with the cipher, on both ends.
grep -q "summary bots=3 logged_in=3 failed=0 dropped=0" "$d-players.out" || fail "players did not all log in"
[ "$(grep -c "cipher peer=[0-9]* on" "$d-topd.out")" = 3 ] || fail "topd did not turn the cipher on 3 times"
[ "$(grep -c "player[123] cipher on" "$d-players.out")" = 3 ] || fail "players did not turn the cipher on"
# The server understood every frame (decrypted with the counter it expects)
# and saw the rewritten line, never the word or the command.
grep -q "text=hello with the cipher on" "$d-topd.out" || fail "server did not get plain chat"
grep -q "text=this darn crab keeps killing me" "$d-topd.out" || fail "server did not get the rewritten line"
grep -q "damn" "$d-topd.out" && fail "server got the unfiltered line"
grep -q "text=/online" "$d-topd.out" && fail "server got /online"
grep -Eq " (ignore|kick) peer=" "$d-topd.out" && fail "server did not understand a frame"
# The players decrypted what gangway re-encrypted: the room's chat with the
# rewritten line, and the proxy's own answer; no frame they could not read.
for i in 1 2 3; do
  grep -q "player$i < \[local\] player2: this darn crab keeps killing me" "$d-players.out" ||
    fail "player$i did not hear the rewritten line"
  grep -q "player$i < \[local\] player3: hello with the cipher on" "$d-players.out" ||
    fail "player$i did not hear plain chat"
  grep -q "player$i < \[local\] \[proxy\]: [0-9]* players\? online" "$d-players.out" ||
    fail "player$i got no /online answer"
done
grep -q "< cmd=" "$d-players.out" && fail "a player got a frame it could not read"
grep -q "rewrote chat line" "$d-gangway.out" || fail "chat_filter did not log its rewrite"
grep -Eq "protocol error|codec" "$d-gangway.out" && fail "gangway logged a codec or protocol error"

# Without the codec the filter sees encrypted commands: "damn" and the
# command reach the server as the players typed them.
run plain chat_filter.lua online_command.lua
d=$dir/plain
grep -q "summary bots=3 logged_in=3 failed=0 dropped=0" "$d-players.out" || fail "plain: players did not all log in"
grep -q "text=this damn crab keeps killing me" "$d-topd.out" || fail "plain: the filter read encrypted chat"
grep -q "text=/online" "$d-topd.out" || fail "plain: the proxy answered /online"
grep -q "\[proxy\]" "$d-players.out" && fail "plain: a player got the proxy's answer"
grep -q "rewrote chat line" "$d-gangway.out" && fail "plain: chat_filter rewrote a line"

ok=1
echo "encrypted demo through gangway: ok (and without top_cipher.lua, \"damn\" reaches the server)"
