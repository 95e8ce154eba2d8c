#!/usr/bin/env bash
# `gangway dissector` read back by tshark: topd behind gangway (protocol =
# "top" from the repo's protocols/), two bots and a chat line captured with
# `gangway capture -w`, then tshark with the generated dissector prints the
# packets by name (CM_LOGIN, MC_LOGIN, MC_CHAPSTR, CM_SAY, MC_SAY,
# KEEPALIVE) and their fields (account, chat text, player id), with no Lua
# error. A frame that does not fit its definition (a crafted capture) is
# an expert-info error, still no Lua error. Also the command line:
# --listener, a listener without definitions, -o elsewhere.
#   usage: [KEEP=1] tests/it_dissector.sh BUILD_DIR   (KEEP: keep the outputs)
set -euo pipefail
. "$(dirname "$0")/lib.sh" dissector "$1"
command -v tshark >/dev/null || fail "tshark is not installed"
tshark -v 2>/dev/null | grep -q "with Lua" || fail "this tshark has no Lua"
# tshark, quietly (it warns when run as root), with the generated dissector.
ts() { tshark -X "lua_script:$dir/gangway.lua" -o tcp.desegment_tcp_streams:TRUE "$@" 2>>"$dir/tshark.err"; }

"$build/topd" -v -l 127.0.0.1:0 >"$dir/topd.out" 2>&1 &
topd=$!; pids+=($topd)
wait_for "$dir/topd.out" "listen addr=" 5 || fail "topd does not listen"
up=$(sed -n 's/.*listen addr=127.0.0.1:\([0-9]*\).*/\1/p' "$dir/topd.out" | head -1)
port=$(( 20000 + RANDOM % 12000 )) # below the ephemeral range: no outgoing connection takes it
while ! port_free "$port"; do port=$(( port + 1 )); done
plain=$(( port + 1 ))
while ! port_free "$plain"; do plain=$(( plain + 1 )); done

cat >"$dir/config.lua" <<LUA
return {
  listeners = { {
    name = "game", listen = "127.0.0.1:$port", upstream = "127.0.0.1:$up", framing = "top",
    protocol = "$root/protocols/top",
  }, {
    name = "plain", listen = "127.0.0.1:$plain", upstream = "127.0.0.1:$up",
  } },
  control = "$dir/gangway.sock",
}
LUA
"$build/gangway" dissector -c "$dir/config.lua" -o "$dir/gangway.lua" || fail "gangway dissector: exit $?"
[ -s "$dir/gangway.lua" ] || fail "gangway dissector wrote nothing"
# The listener without definitions is left out, or refused when named.
"$build/gangway" dissector -c "$dir/config.lua" --listener game >"$dir/game.lua" ||
  fail "dissector --listener game: exit $?"
cmp -s "$dir/game.lua" "$dir/gangway.lua" || fail "--listener game differs from all listeners"
grep -q 'gangway_plain' "$dir/gangway.lua" && fail "a listener without protocol got a dissector"
rc=0; "$build/gangway" dissector -c "$dir/config.lua" --listener plain 2>"$dir/cli.out" || rc=$?
[ "$rc" = 1 ] && grep -q 'listener "plain" has no protocol = ...' "$dir/cli.out" ||
  fail "dissector --listener plain: exit $rc, $(cat "$dir/cli.out")"
rc=0; "$build/gangway" dissector -c "$dir/config.lua" --listener nope 2>"$dir/cli.out" || rc=$?
[ "$rc" = 1 ] && grep -q 'no listener is called "nope"' "$dir/cli.out" ||
  fail "dissector --listener nope: exit $rc, $(cat "$dir/cli.out")"
rc=0; "$build/gangway" stats -c "$dir/config.lua" -o x.lua 2>"$dir/cli.out" || rc=$?
[ "$rc" = 2 ] || fail "stats -o: exit $rc"
"$build/gangway" -c "$dir/config.lua" >"$dir/gangway.out" 2>&1 &
gw=$!; pids+=($gw)
wait_for "$dir/gangway.out" " running (config " 5 || fail "gangway does not start"

"$build/gangway" capture -c "$dir/config.lua" --seconds 10 -w "$dir/demo.pcap" >"$dir/capture.out" 2>&1 &
cap=$!; pids+=($cap)
wait_for "$dir/gangway.out" "capture to .* started" 5 || fail "the capture does not start"

# Two bots for 3 s, and a person's chat line followed by 5.5 s of silence:
# the demo's programs send a keep-alive after 2 s without sending a frame.
"$build/topbot" -c "127.0.0.1:$port" -p bot -n 2 -d 3 -q >"$dir/bots.out" 2>&1 &
bots=$!; pids+=($bots)
{ sleep 0.5; echo "hello wireshark, it's \"me\""; sleep 5.5; } |
  "$build/topchat" -c "127.0.0.1:$port" -n wiresharker >"$dir/chat.out" 2>&1 || fail "topchat: exit $?"
wait "$bots" || fail "bots: exit $?"
grep -q "wiresharker" "$dir/topd.out" || fail "topd never saw the chat client"
# (A background command ignores SIGINT: the capture ends by its time.)
wait "$cap" || fail "capture: exit $?"
grep -q "^ok: " "$dir/capture.out" || fail "capture did not end well"

# The whole tree of every frame.
ts -r "$dir/demo.pcap" -V >"$dir/verbose.out" || fail "tshark -V: exit $?"
# One line a packet (a packet may carry several frames: their values are
# joined by "~"), then one line a value: "side|name" pairs (both are in
# every frame) and "FIELD=value".
ts -r "$dir/demo.pcap" -Y gangway_game -T fields -E occurrence=a -E aggregator='~' \
  -E separator='|' -e gangway_game.side -e gangway_game.name -e gangway_game.opcode \
  -e gangway_game.CM_LOGIN.account -e gangway_game.MC_LOGIN.player \
  -e gangway_game.CM_SAY.text -e gangway_game.MC_SAY.name -e gangway_game.MC_SAY.text \
  -e gangway_game.MC_CHAPSTR.chap >"$dir/fields.out" || fail "tshark -T fields: exit $?"
awk -F'|' '{ n = split($1, s, "~"); split($2, m, "~"); for (i = 1; i <= n; i++) print s[i] "|" m[i] }
  { split("side name opcode account player say_text say_name say_text2 chap", k, " ")
    for (c = 3; c <= NF; c++) { n = split($c, v, "~"); for (i = 1; i <= n; i++) print k[c] "=" v[i] } }' \
  "$dir/fields.out" >"$dir/values.out"
cat "$dir/tshark.err" >>"$dir/verbose.out"
if grep -Eqi "lua error|attempt to|stack traceback|\[string|Dissector bug" "$dir/verbose.out" "$dir/fields.out" "$dir/tshark.err"; then
  fail "a Lua error in tshark's output: $(grep -Ehi -m3 "lua error|attempt to|stack traceback|\[string|Dissector bug" "$dir/verbose.out" "$dir/fields.out" "$dir/tshark.err")"
fi
has() { grep -qxF -- "$1" "$dir/values.out" || fail "tshark printed no $1"; }

# Names by side; the accounts, the chat line (quotes and all), the player
# ids, the chap string.
for pair in 'client|CM_LOGIN' 'server|MC_CHAPSTR' 'server|MC_LOGIN' 'client|CM_SAY' 'server|MC_SAY' \
            'client|KEEPALIVE' 'server|KEEPALIVE'; do has "$pair"; done
for v in opcode=431 opcode=940 opcode=931 opcode=1 opcode=501 account=wiresharker account=bot1 \
         account=bot2 "say_text=hello wireshark, it's \"me\"" say_name=wiresharker \
         "say_text2=hello wireshark, it's \"me\""; do has "$v"; done
players=$(grep -c '^player=[1-9][0-9]*$' "$dir/values.out" || true)
[ "$players" -eq 3 ] || fail "$players MC_LOGIN player ids, expected 3"
grep -Eq '^chap=\[[0-9]{2}-[0-9]{2} [0-9:]+\]$' "$dir/values.out" || fail "no MC_CHAPSTR chap"
# The tree: the proto's item, the fields by name with their values.
grep -q "^gangway listener game, CM_SAY (client)" "$dir/verbose.out" || fail "no CM_SAY tree"
grep -qF "text: hello wireshark, it's \"me\"" "$dir/verbose.out" || fail "no text in the tree"
grep -q "account: wiresharker" "$dir/verbose.out" || fail "no account in the tree"
grep -Eq "player: [1-9][0-9]*" "$dir/verbose.out" || fail "no player in the tree"
# Display filters by field name.
n=$(ts -r "$dir/demo.pcap" -Y 'gangway_game.CM_SAY.text contains "wireshark"' | wc -l)
[ "$n" -ge 1 ] || fail "the filter on gangway_game.CM_SAY.text matches nothing"
n=$(ts -r "$dir/demo.pcap" -Y 'gangway_game.name == "MC_CHAPSTR"' | wc -l)
[ "$n" -eq 3 ] || fail "gangway_game.name == \"MC_CHAPSTR\" matched $n packets, expected 3"
if grep -q "Malformed\|does not fit" "$dir/verbose.out"; then fail "a demo frame does not fit its definition"; fi

# A crafted capture, client to server on the listen port: a CM_SAY whose
# string runs past the frame, an unknown opcode, a KEEPALIVE, a CM_SAY that
# fits, and MC_LOGIN without its optional player (server to client).
cat >"$dir/crafted.txt" <<'HEX'
0000  00 0d 80 00 00 00 00 01 00 09 61 62 63
0000  00 0a 80 00 00 00 30 39 aa bb
0000  00 02
0000  00 0d 80 00 00 00 00 01 00 03 68 69 00
HEX
text2pcap -q -T "40000,$port" "$dir/crafted.txt" "$dir/c2s.pcap" 2>>"$dir/text2pcap.out" || fail "text2pcap"
printf '0000  00 0a 80 00 00 00 03 a3 00 02\n' >"$dir/s2c.txt"
text2pcap -q -T "$port,40000" "$dir/s2c.txt" "$dir/s2c.pcap" 2>>"$dir/text2pcap.out" || fail "text2pcap"
ts -r "$dir/c2s.pcap" -V >"$dir/crafted.out" || fail "tshark on the crafted capture: exit $?"
ts -r "$dir/s2c.pcap" -V >>"$dir/crafted.out" || fail "tshark on the crafted capture: exit $?"
cat "$dir/tshark.err" >>"$dir/crafted.out"
grep -Eqi "lua error|attempt to|stack traceback|\[string|Dissector bug" "$dir/crafted.out" &&
  fail "a Lua error on the crafted capture: $(grep -Ei -m3 "lua error|attempt to|traceback|Dissector bug" "$dir/crafted.out")"
grep -q "Expert Info (Error/Malformed): CM_SAY.text: a 9-byte string at offset 8 runs past the end of the frame (13 bytes)" \
  "$dir/crafted.out" || fail "no expert error for the misfit CM_SAY"
grep -q "Expert Info (Note/Undecoded): unknown opcode 12345" "$dir/crafted.out" || fail "no unknown opcode item"
grep -q "gangway listener game, KEEPALIVE (client)" "$dir/crafted.out" || fail "no KEEPALIVE"
grep -q "text: hi" "$dir/crafted.out" || fail "the CM_SAY after the misfit one is not read"
grep -q "gangway listener game, MC_LOGIN (server)" "$dir/crafted.out" || fail "no MC_LOGIN"
grep -q "error: 2" "$dir/crafted.out" || fail "no MC_LOGIN error"
grep -q "player:" <(sed -n '/MC_LOGIN (server)/,$p' "$dir/crafted.out") && fail "an absent optional player shown"

# A frame longer than the framing allows (top: 16 KiB from the client):
# gangway ends the session there, so the dissector shows it as a misfit of
# the bytes at hand instead of waiting 64 KiB for it and swallowing the
# frames captured after it.
printf '0000  ff ff 80 00 00 00 00 01 00 03 68 69 00\n0000  00 0d 80 00 00 00 00 01 00 03 79 6f 00\n' \
  >"$dir/long.txt"
text2pcap -q -T "40000,$port" "$dir/long.txt" "$dir/long.pcap" 2>>"$dir/text2pcap.out" || fail "text2pcap"
ts -r "$dir/long.pcap" -V >"$dir/long.out" || fail "tshark on the long frame: exit $?"
grep -q "Expert Info (Error/Malformed): length field: 65535, a 65535-byte frame, longer than the 16384 bytes the framing allows client frames" \
  "$dir/long.out" || fail "no expert error for the frame longer than max_frame"
grep -q "text: yo" "$dir/long.out" || fail "the frame after the long one is not read"
# A 5-byte frame: no keep-alive (that is the length field alone) and below
# top's 8-byte minimum, which also ends the session in gangway.
printf '0000  00 05 80 00 00\n' >"$dir/short.txt"
text2pcap -q -T "40000,$port" "$dir/short.txt" "$dir/short.pcap" 2>>"$dir/text2pcap.out" || fail "text2pcap"
ts -r "$dir/short.pcap" -V >"$dir/short.out" || fail "tshark on the short frame: exit $?"
grep -q "KEEPALIVE" "$dir/short.out" && fail "a 5-byte frame shown as a KEEPALIVE"
grep -q "Expert Info (Error/Malformed): length field: 5, a 5-byte frame, shorter than the 8 bytes the framing allows client frames" \
  "$dir/short.out" || fail "no expert error for the frame below min_frame"

kill -TERM "$gw"; wait "$gw" || fail "gangway exit $?"
kill -INT "$topd"; wait "$topd" || fail "topd exit $?"
ok=${KEEP:+0}; ok=${ok:-1} # KEEP=1: keep the outputs
echo "dissector through tshark: ok ($(grep -c "^[a-z]*|" "$dir/values.out") frames by name)"
