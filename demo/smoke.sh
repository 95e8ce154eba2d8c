#!/usr/bin/env bash
# smoke.sh: the demo programs against each other, without gangway between
# them. Usage: smoke.sh BUILD_DIR (where topd, topbot and topchat are).
#
# Four topd servers on ports the kernel picks, each for one check, run side
# by side so the whole test takes a few seconds:
#   room     5 topbots for 3 s: logins, chat broadcast; then a malformed
#            frame and a login without its marker, each from a raw socket
#   chat     a lone topchat: keep-alives both ways, its lines come back
#   speed    topbot -x with a scenario: speed warning, keep-alive echo
#   idle     topd -k 1000 and a silent socket: the keep-alive kick
#   cipher   topd -e, 3 topbots -e and a topchat -e: the demo cipher after
#            login, and everything still understood both ways
#   mixed    topd -e with a topbot without it, and a topd without it with a
#            topbot -e: each side sees the other's frames as garbage, while
#            a second topbot that agrees with the server (scenario) is heard
# Every server must then exit 0 on SIGINT. DEMO_VALGRIND=1 runs the servers
# under valgrind, which fails them on any error or leak; DEMO_KEEP=1 keeps
# the outputs.
set -euo pipefail

bin=${1:?usage: smoke.sh BUILD_DIR}
work=$(mktemp -d)
pids=()
cleanup() {
  # Each pid is a timeout(1); the program it runs goes first.
  for p in "${pids[@]}"; do
    pkill -KILL -P "$p" 2>/dev/null || true
    kill -KILL "$p" 2>/dev/null || true
  done
  { wait; } 2>/dev/null || true
  if [ -n "${DEMO_KEEP:-}" ]; then echo "outputs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  for f in "$work"/*.out; do echo "--- $(basename "$f")"; cat "$f"; done
  exit 1
}

# Checks that file holds a line matching the extended regex, count times
# (default once) or more.
expect() {
  local file=$1 re=$2 want=${3:-1} got
  got=$(grep -cE -- "$re" "$work/$file.out" || true)
  [ "$got" -ge "$want" ] || fail "$file: want $want+ lines matching /$re/, got $got"
}

# Starts a topd whose output goes to NAME.out; sets port_NAME.
start_topd() {
  local name=$1; shift
  local run=()
  [ "${DEMO_VALGRIND:-0}" = 1 ] &&
    run=(valgrind -q --leak-check=full --show-leak-kinds=all --error-exitcode=99)
  : >"$work/$name.out"
  # --foreground: timeout passes our SIGINT to topd alone (without it, it
  # also signals its process group, and a second SIGINT ends topd at once).
  timeout --foreground 60 "${run[@]}" "$bin/topd" -l 127.0.0.1:0 -v "$@" >"$work/$name.out" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
  local port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/.* listen addr=127\.0\.0\.1:\([0-9]*\)$/\1/p' "$work/$name.out")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || fail "topd $name did not start"
  eval "port_$name=$port"
}

# Sends hex bytes on a fresh connection and saves what comes back, as hex,
# to NAME.out (the connection ends when topd closes it, 3 s at most).
raw_exchange() {
  local name=$1 port=$2 hex=$3
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf "$(sed 's/\(..\)/\\x\1/g' <<<"$hex")" >&3
  timeout 3 cat <&3 | od -An -tx1 -v | tr -d ' \n' >"$work/$name.out" || true
  exec 3>&-
}

start_topd room
start_topd chat
start_topd speed
start_topd idle -k 1000
start_topd cipher -e
start_topd mixed -e
start_topd mixed2

# room: five bots chatting for 3 s.
timeout 20 "$bin/topbot" -c "127.0.0.1:$port_room" -n 5 -d 3 >"$work/bots.out" 2>&1 &
bots=$!
pids+=($bots)

# chat: alone in its room, so topd's keep-alive comes after 2 s of silence.
{ sleep 2.6; echo "anyone here?"; printf 'last line'; } |
  timeout 20 "$bin/topchat" -c "127.0.0.1:$port_chat" -n alice -v >"$work/alice.out" 2>&1 &
alice=$!
pids+=($alice)

# speed: a scenario that bursts, then stays silent long enough for a
# keep-alive, then speaks (by 4 s even when valgrind slows the login).
printf '# smoke scenario\nmove 10 10\nburst 30\nwait 2500\nsay still here\n' >"$work/speed.bot"
timeout 20 "$bin/topbot" -c "127.0.0.1:$port_speed" -d 4 -s "$work/speed.bot" \
  >"$work/speedbot.out" 2>&1 &
speedbot=$!
pids+=($speedbot)

# idle: a socket that never speaks.
exec 4<>"/dev/tcp/127.0.0.1/$port_idle"

# cipher: both ends with -e.
timeout 20 "$bin/topbot" -e -c "127.0.0.1:$port_cipher" -n 3 -d 3 >"$work/cbots.out" 2>&1 &
cbots=$!
pids+=($cbots)
{ sleep 1; echo "secret plans"; } |
  timeout 20 "$bin/topchat" -e -c "127.0.0.1:$port_cipher" -n carol >"$work/carol.out" 2>&1 &
carol=$!
pids+=($carol)

# mixed: -e on one end only, each way round (bot1), and beside it a bot
# that agrees with the server (ok1), so that bot1 has chat to misread.
printf 'wait 700\nsay ping one\nwait 300\nsay ping two\n' >"$work/ok.bot"
timeout 20 "$bin/topbot" -c "127.0.0.1:$port_mixed" -d 2 >"$work/mbot.out" 2>&1 &
mbot=$!
pids+=($mbot)
timeout 20 "$bin/topbot" -e -p ok -s "$work/ok.bot" -c "127.0.0.1:$port_mixed" -d 2 \
  >"$work/mok.out" 2>&1 &
pids+=($!)
timeout 20 "$bin/topbot" -e -c "127.0.0.1:$port_mixed2" -d 2 >"$work/mbot2.out" 2>&1 &
mbot2=$!
pids+=($mbot2)
timeout 20 "$bin/topbot" -p ok -s "$work/ok.bot" -c "127.0.0.1:$port_mixed2" -d 2 \
  >"$work/mok2.out" 2>&1 &
pids+=($!)

wait "$bots" || fail "topbot exited with $?"
wait "$alice" || fail "topchat exited with $?"
wait "$speedbot" || fail "topbot -s exited with $?"
wait "$cbots" || fail "topbot -e exited with $?"
wait "$carol" || fail "topchat -e exited with $?"
# Logged in (the login is clear), so both exit 0 whatever they heard.
wait "$mbot" || fail "topbot (to topd -e) exited with $?"
wait "$mbot2" || fail "topbot -e (to topd) exited with $?"
exec 4>&-

# A frame of length 1, and a CM_LOGIN ("eve", "pw", version 136, marker 0).
raw_exchange malformed "$port_room" 0001
raw_exchange nomarker "$port_room" 00178000000001af000465766500000370770000880000

for s in room chat speed idle cipher mixed mixed2; do
  pid_var=pid_$s
  kill -INT "${!pid_var}"
  rc=0
  wait "${!pid_var}" || rc=$?
  [ "$rc" = 0 ] || fail "topd $s exited with $rc after SIGINT"
done

# Logins and chat broadcast: every bot heard every bot's greeting.
expect room ' login peer=[0-9]+ id=[0-9]+ name=bot[1-5] version=136$' 5
expect room ' say peer=[0-9]+ id=[0-9]+ name=bot[1-5] to=5 text=hello everyone$' 5
for i in 1 2 3 4 5; do
  for j in 1 2 3 4 5; do
    expect bots " bot$i < \[local\] bot$j: hello everyone$"
  done
done
expect bots ' summary bots=5 logged_in=5 failed=0 dropped=0 '
expect bots ' summary sent cmd=1 name=CM_SAY frames=[0-9]+$'
expect bots ' summary recv cmd=501 name=MC_SAY frames=[0-9]+$'
expect room ' disconnect peer=[0-9]+ name=bot[1-5] reason=closed by peer$' 5
expect room ' kick peer=[0-9]+ name=- reason=malformed frame: '
expect room ' reject peer=[0-9]+ error=1 reason=no login marker$'
# The reply to the bad login: MC_LOGIN (931 = 03a3) with error 1.
grep -q '000a8000000003a30001' "$work/nomarker.out" ||
  fail "no MC_LOGIN error reply"

# Keep-alives both ways, and the chat client's own lines coming back.
expect chat ' keep-alive peer=1 dir=out$'
expect chat ' keep-alive peer=1 dir=in$'
expect alice '^\* keep-alive from server$'
expect alice '^\* keep-alive to server$'
expect alice '^\[local\] alice: anyone here\?$'
expect alice '^\[local\] alice: last line$'

# The speed hack is seen; the silent bot is pinged and answers.
expect speed ' speed peer=1 id=[0-9]+ name=bot1 actions=9/s limit=8 '
expect speedbot ' bot1 > burst 30 moves to 40 10$'
expect speedbot ' bot1 < keep-alive$'
expect speedbot ' bot1 < \[local\] bot1: still here$'
expect speed ' keep-alive peer=1 dir=in$'

# The silent socket is dropped.
expect idle ' kick peer=1 name=- reason=keep-alive timeout$'
# The cipher: on for every peer after its login; chat and moves
# understood both ways; the chat client's line comes back.
expect cipher ' cipher peer=[0-9]+ on$' 4
expect cbots ' bot[1-3] cipher on$' 3
for i in 1 2 3; do
  for j in 1 2 3; do
    expect cbots " bot$i < \[local\] bot$j: hello everyone$"
  done
done
expect cbots ' summary bots=3 logged_in=3 failed=0 dropped=0 '
expect cipher ' say peer=[0-9]+ id=[0-9]+ name=bot[1-3] to=[34] text=hello everyone$' 3
expect cipher ' action peer=[0-9]+ name=bot[1-3] world=[0-9]+ type=1 '
expect carol '^\* cipher on$'
expect carol '^\[local\] carol: secret plans$'
expect cipher ' say peer=[0-9]+ id=[0-9]+ name=carol to=[0-9]+ text=secret plans$'
if grep -E ' (kick|ignore) ' "$work/cipher.out"; then fail "cipher: a frame not understood"; fi

# Mixed: the server reads the disagreeing bot1's frames as commands it
# does not know and never hears it; bot1 reads the chat of ok1 (which
# agrees with the server) as unknown commands. Each way round.
for m in mixed mixed2; do
  expect $m ' login peer=[0-9]+ id=[0-9]+ name=bot1 version=136$'
  expect $m ' ignore peer=[0-9]+ name=bot1 cmd=[0-9]+ '
  expect $m ' say peer=[0-9]+ id=[0-9]+ name=ok1 to=2 text=ping two$'
  if grep ' say .* name=bot1 ' "$work/$m.out"; then fail "$m: bot1 understood"; fi
done
for b in mbot mbot2; do
  expect $b ' bot1 < cmd=[0-9]+ len=[0-9]+ body=' 2
  if grep -F '[local]' "$work/$b.out"; then fail "$b: an MC_SAY understood"; fi
done
expect mok ' ok1 < \[local\] ok1: ping two$'
expect mok2 ' ok1 < \[local\] ok1: ping two$'

echo "ok: demo_direct"
