#!/usr/bin/env bash
# run.sh: gangway's benchmark suite in one command. Builds the Release tools,
# then measures every scenario against every contender on loopback, several
# rounds with the contenders alternating, and prints a table of medians and
# ratios (also written as markdown to the results file).
#
# Contenders: direct (loadgen -> echo, no proxy), haproxy (Debian's, TCP mode,
# nbthread 1), nginx (Debian's, stream module, one worker), gangway raw,
# gangway top (framed, no handler), gangway lua (a trivial handler on every
# frame), gangway rewrite (a handler that writes a u32 into every frame,
# which the load generator checks on the echo). The echo upstream runs in
# gw-loadgen's own loop (--echo-process: gw-echo, a process of its own).
# Scenarios: bulk (64 KiB frames), small (64-byte frames, 50 sessions
# pipelined), lat1 / lat1000 (round trips at a fixed moderate rate over 1 and
# 1,000 sessions), idle (as many mostly idle sessions as the fd limit allows:
# RSS per session).
#
# Every process it starts is a child killed on exit; every measurement is
# bounded by the load generator's deadline and by timeout(1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/build-bench"
ROUNDS=3
MODE=full        # full, quick (< 60 s), smoke (tools only, < 30 s)
PIN=1
ECHO_PROCESS=0   # 1: gw-echo as its own process (default: inside gw-loadgen)
BUILD_FIRST=1
OUT=""
PROFILE=""
NOISE_MAX=""     # % of a CPU of other work a run may see (-1: no check)
NOISE_WAIT=20    # s to wait for a quiet machine before each run
SCENARIOS="bulk small lat1 lat1000 idle"
CONTENDERS="direct floor haproxy nginx gw-raw gw-top gw-demo gw-lua gw-rewrite"
# nginx and its stream module: Debian's (tools/install-deps.sh), or from the
# environment.
NGINX=${NGINX:-/usr/sbin/nginx}
NGINX_STREAM=${NGINX_STREAM:-/usr/lib/nginx/modules/ngx_stream_module.so}

usage() {
  cat <<EOF
usage: bench/run.sh [options]
  --rounds N          rounds per scenario (default $ROUNDS); medians are reported
  --quick             one short round of everything (about a minute)
  --smoke             checks the tools only: loadgen against its echo, direct,
                      through gw-floor and through nginx (skipped if not installed), every
                      mode, echoes verified, a wrong echo caught (under 30 s);
                      for ctest
  --scenarios "A B"   subset of: $SCENARIOS
  --contenders "A B"  subset of: $CONTENDERS
  --no-pin            let the scheduler place every process (default: proxy
                      on CPU 1, load generator and echo server on CPU 0)
  --echo-process      run the echo upstream as its own process (gw-echo)
                      rather than in gw-loadgen's loop (the default: one
                      process for the load side costs less CPU per frame)
  --build-dir DIR     where to build and find the tools (default build-bench)
  --no-build          use the binaries already in the build directory
  --profile NAME      perf record -g the proxy of contender NAME over the
                      measured window (default: small scenario, one round);
                      the report goes to BUILD/perf-NAME.txt
  --noise PCT         other work on the machine (in % of one CPU) above
                      which a run waits for quiet and is measured again,
                      up to 3 times (default 25; -1 turns it off; off in
                      --quick and --smoke)
  --out FILE          markdown results (default BUILD/bench-results-MODE.md;
                      the raw JSON lines go next to it as .jsonl)
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --quick) MODE=quick ;;
    --smoke) MODE=smoke ;;
    --scenarios) SCENARIOS=$2; shift ;;
    --contenders) CONTENDERS=$2; shift ;;
    --no-pin) PIN=0 ;;
    --echo-process) ECHO_PROCESS=1 ;;
    --build-dir) BUILD=$(realpath -m "$2"); shift ;;
    --no-build) BUILD_FIRST=0 ;;
    --out) OUT=$2; shift ;;
    --profile) PROFILE=$2; shift ;;
    --noise) NOISE_MAX=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$PROFILE" ]; then
  CONTENDERS=$PROFILE
  [ "$SCENARIOS" = "bulk small lat1 lat1000 idle" ] && SCENARIOS=small
  ROUNDS=1
  command -v perf >/dev/null || { echo "run.sh: --profile needs perf (linux-perf)" >&2; exit 1; }
fi
[ -n "$OUT" ] || OUT="$BUILD/bench-results-$MODE.md"
JSONL="${OUT%.md}.jsonl"

LOADGEN="$BUILD/bench/gw-loadgen"
ECHO="$BUILD/bench/gw-echo"
FLOOR="$BUILD/bench/gw-floor"
GANGWAY="$BUILD/gangway"
SCRIPTS="$ROOT/bench/scripts"
REWRITE_VALUE=67617779 # what bench/scripts/rewrite.lua writes, in hex

# ---- processes: every child is remembered and killed on exit ----
PIDS=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gw-bench.XXXXXX")
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP PIPE

# Stops one child: TERM, then KILL if it is still there after 2 s.
stop_pid() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || true
  for i in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

# Takes a child that has ended off the list cleanup kills.
forget_pid() {
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

# A loopback port below the ephemeral range with no socket on it at all
# (TIME_WAIT included), so each run starts on a clean port.
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    if [ -z "$(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null)" ]; then
      echo "$p"
      return
    fi
  done
  echo "run.sh: no free port" >&2
  exit 1
}

# Waits (5 s at most) until something listens on 127.0.0.1:port.
wait_listen() {
  local port=$1 pid=$2
  for _ in $(seq 100); do
    [ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ] && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

NCPU=$(nproc)
[ "$NCPU" -ge 2 ] || PIN=0
[ "$MODE" = smoke ] && PIN=0
# Command prefixes, not functions: a function run with & would put a subshell
# between $! and the process (taskset execs, so $! is the process itself).
PIN_LOAD=(); PIN_PROXY=()
if [ "$PIN" = 1 ]; then PIN_LOAD=(taskset -c 0); PIN_PROXY=(taskset -c 1); fi

# The open-files limit bounds the idle scenario: raise the soft limit to the
# hard one, then fit the proxy's two sockets per session under it.
ulimit -Sn "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -Sn)
IDLE_MAX=$(( (FD_LIMIT - 1000) / 2 / 500 * 500 ))
[ "$IDLE_MAX" -le 10000 ] || IDLE_MAX=10000

# ---- scenario sizes ----
case "$MODE" in
  full)  DUR=5;   WARM=1;   IDLE_N=$IDLE_MAX; HOLD=3; : "${NOISE_MAX:=25}" ;;
  quick) DUR=0.8; WARM=0.3; IDLE_N=1000;      HOLD=0.5; ROUNDS=1; : "${NOISE_MAX:=-1}" ;;
  smoke) DUR=0.5; WARM=0.2; IDLE_N=200;       HOLD=0.2; ROUNDS=1; NOISE_MAX=-1
         # nginx too: its generated configuration is the one run.sh's own
         # code writes, and nothing else would check it; the floor relay,
         # whose echoes nothing else checks.
         CONTENDERS="direct floor nginx" ;;
esac

# loadgen arguments per scenario (after --target).
scenario_args() {
  case "$1" in
    bulk)
      if [ "$MODE" = smoke ]; then echo "-m pipeline -c 2 -D 2 -s 65535"
      else echo "-m pipeline -c 4 -D 4 -s 65535"; fi ;;
    small)
      if [ "$MODE" = smoke ]; then echo "-m pipeline -c 4 -D 4 -s 64"
      else echo "-m pipeline -c 50 -D 16 -s 64"; fi ;;
    lat1) echo "-m rate -c 1 -r 1000 -s 64" ;;
    lat1000)
      if [ "$MODE" = smoke ]; then echo "-m rate -c 50 -r 1000 -s 64"
      else echo "-m rate -c 1000 -r 10000 -s 64"; fi ;;
    # Spread over 4 source addresses so rounds never run out of ports.
    idle) echo "-m idle -c $IDLE_N -H $HOLD -S 4" ;;
  esac
}

# ---- build ----
if [ "$BUILD_FIRST" = 1 ]; then
  echo "== building (Release) in $BUILD" >&2
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" --target gw-loadgen gw-echo gw-floor -j "$NCPU" >/dev/null
  if [ "$MODE" != smoke ] && ! cmake --build "$BUILD" --target gangway -j "$NCPU" \
       >"$WORK/gangway-build.log" 2>&1; then
    echo "run.sh: gangway does not build; its contenders are skipped" >&2
    tail -5 "$WORK/gangway-build.log" >&2
  fi
fi
for t in "$LOADGEN" "$ECHO"; do
  [ -x "$t" ] || { echo "run.sh: $t is missing (build first)" >&2; exit 1; }
done

# Drops contenders this machine cannot run.
have_gangway=0; [ -x "$GANGWAY" ] && have_gangway=1
have_haproxy=0; command -v haproxy >/dev/null && have_haproxy=1
have_nginx=0
[ -x "$NGINX" ] && [ -f "$NGINX_STREAM" ] && have_nginx=1
active=()
for c in $CONTENDERS; do
  case "$c" in
    floor) [ -x "$FLOOR" ] || { echo "run.sh: no $FLOOR, floor skipped" >&2; continue; } ;;
    haproxy) [ "$have_haproxy" = 1 ] || { echo "run.sh: no haproxy, skipped" >&2; continue; } ;;
    nginx) [ "$have_nginx" = 1 ] || {
      echo "run.sh: no nginx ($NGINX) with its stream module ($NGINX_STREAM): nginx skipped (tools/install-deps.sh installs both)" >&2
      continue; } ;;
    gw-*) [ "$have_gangway" = 1 ] || { echo "run.sh: no gangway binary, $c skipped" >&2; continue; } ;;
  esac
  active+=("$c")
done

# ---- contenders ----
# Starts the proxy of contender $1 in front of upstream port $2 listening on
# port $3; sets PROXY_PID (empty for direct) and WATCH_PID, the process that
# relays (nginx's worker; the proxy itself otherwise).
start_proxy() {
  local c=$1 up=$2 port=$3 dir="$WORK/$1"
  PROXY_PID="" WATCH_PID=""
  [ "$c" = direct ] && return 0
  mkdir -p "$dir"
  case "$c" in
    floor)
      # bench/floor.c: epoll, one recv and one send per wake-up, nothing
      # else; what any relay on this kernel costs at the least.
      "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" "$FLOOR" "$port" "$up" >"$dir/log" 2>&1 &
      ;;
    haproxy)
      # maxconn leaves room for the idle scenario; timeouts outlast any run.
      # Buffers of 64 KiB, as gangway reads (HAProxy's default, 16 KiB,
      # doubled its CPU per GB in bulk; idle sessions hold none either way).
      cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  tune.bufsize 65536
  maxconn $((IDLE_MAX + 100))
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend bench
  bind 127.0.0.1:$port
  maxconn $((IDLE_MAX + 100))
  default_backend echo
backend echo
  server echo 127.0.0.1:$up
EOF
      "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" haproxy -db -f "$dir/haproxy.cfg" >"$dir/log" 2>&1 &
      ;;
    nginx)
      # Debian's nginx, stream module, one worker: two sockets per session
      # for the idle scenario within the open-files limit; buffers of 64 KiB
      # as gangway's reads and HAProxy's above (nginx's default, 16 KiB,
      # doubled its CPU per GB in bulk); no access log. -e keeps even the
      # startup errors out of /var/log.
      cat >"$dir/nginx.conf" <<EOF
load_module $NGINX_STREAM;
daemon off;
worker_processes 1;
worker_rlimit_nofile $FD_LIMIT;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
  worker_connections $((IDLE_MAX * 2 + 200));
}
stream {
  access_log off;
  server {
    listen 127.0.0.1:$port backlog=4096;
    proxy_pass 127.0.0.1:$up;
    proxy_buffer_size 64k;
    proxy_connect_timeout 5s;
    proxy_timeout 120s;
    tcp_nodelay on;
  }
}
EOF
      "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" "$NGINX" -e "$dir/error.log" -p "$dir" \
        -c "$dir/nginx.conf" >"$dir/log" 2>&1 &
      ;;
    gw-*)
      local framing scripts=""
      # 64 KiB frames: top's u16 length allows them, its preset's client
      # limit (the game server's, 16 KiB) does not.
      framing='{ preset = "top", max_frame = 65535 }'
      local protocol=nil
      case "$c" in
        gw-raw) framing='"raw"' ;;
        # The demo's protocol module and handler set (config.lua), but for
        # speed_limit.lua: the load is a flood of CM_BEGINACTION (opcode 6),
        # which is what it exists to cut down. Those frames are no packet
        # any of these handles: what this shows is that names, players and
        # commands cost the frames nobody handles nothing.
        gw-demo)
          protocol="\"$ROOT/protocols/top\""
          local s
          for s in top_cipher chat_filter online_command admin_commands packet_logger; do
            scripts+="\"$ROOT/scripts/$s.lua\", "
          done ;;
        gw-lua) scripts="\"$SCRIPTS/trivial.lua\"" ;;
        gw-rewrite) scripts="\"$SCRIPTS/rewrite.lua\"" ;;
      esac
      cat >"$dir/config.lua" <<EOF
return {
  listeners = { {
    name = "bench", listen = "127.0.0.1:$port", upstream = "127.0.0.1:$up",
    framing = $framing, protocol = $protocol, scripts = { $scripts },
  } },
  limits = { max_sessions = $((IDLE_MAX + 100)) },
  log = { level = "warn" },
  control = "",
}
EOF
      "${PIN_PROXY[@]+"${PIN_PROXY[@]}"}" "$GANGWAY" -c "$dir/config.lua" >"$dir/log" 2>&1 &
      ;;
  esac
  PROXY_PID=$!
  WATCH_PID=$PROXY_PID
  PIDS+=("$PROXY_PID")
  if ! wait_listen "$port" "$PROXY_PID"; then
    echo "run.sh: $c did not start; its log:" >&2
    cat "$dir/log" "$dir/error.log" 2>/dev/null >&2
    return 1
  fi
  if [ "$c" = nginx ]; then
    # The master only forks and waits: measure its one worker. Listed for
    # cleanup too, should the master die without taking it along.
    local i
    WATCH_PID=""
    for i in $(seq 100); do
      WATCH_PID=$(pgrep -P "$PROXY_PID" | head -1) && [ -n "$WATCH_PID" ] && break
      sleep 0.05
    done
    if [ -z "$WATCH_PID" ]; then
      echo "run.sh: nginx started no worker; its log:" >&2
      cat "$dir/log" "$dir/error.log" 2>/dev/null >&2
      return 1
    fi
    PIDS+=("$WATCH_PID")
  fi
}

FAILED=0
: >"$JSONL"

# The CPUs' busy time over half a second, in % of one CPU, summed over all:
# other people's work when nothing of ours runs.
machine_busy() {
  local a b
  a=$(awk '/^cpu[0-9]/ { b += $2+$3+$4+$7+$8+$9; t += $2+$3+$4+$5+$6+$7+$8+$9 }
           END { print b, t }' /proc/stat)
  sleep 0.5
  b=$(awk '/^cpu[0-9]/ { b += $2+$3+$4+$7+$8+$9; t += $2+$3+$4+$5+$6+$7+$8+$9 }
           END { print b, t }' /proc/stat)
  awk -v a="$a" -v b="$b" -v n="$NCPU" 'BEGIN { split(a, x); split(b, y);
    print (y[2] > x[2]) ? int((y[1] - x[1]) / (y[2] - x[2]) * 100 * n) : 0 }'
}

# Waits (NOISE_WAIT s at most) until other work leaves the CPUs.
wait_quiet() {
  local waited=0 busy
  while busy=$(machine_busy) && [ "$busy" -gt "$NOISE_MAX" ]; do
    if [ "$waited" -ge "$NOISE_WAIT" ]; then
      echo "  (machine still busy: $busy% of a CPU; measuring anyway)" >&2
      return
    fi
    waited=$((waited + 1))
  done
}

# One measurement, repeated (3 attempts in all) while other work on the
# machine took more than NOISE_MAX % of a CPU during it: the same rule for
# every contender. The last attempt is kept whatever its noise.
run_one() {
  local attempt other
  for attempt in 1 2 3; do
    [ "$NOISE_MAX" -ge 0 ] && wait_quiet
    run_attempt "$@"
    [ -n "$RUN_LINE" ] || break
    other=$(sed -n 's/.*"other_cpu_pct":\([0-9]*\).*/\1/p' <<<"$RUN_LINE")
    if [ "$NOISE_MAX" -lt 0 ] || [ "${other:-0}" -le "$NOISE_MAX" ] || [ "$attempt" = 3 ]; then
      break
    fi
    echo "  [$1 r$3] $2: other work took $other% of a CPU; measuring again" >&2
  done
  [ -n "$RUN_LINE" ] && echo "{\"scenario\":\"$1\",\"contender\":\"$2\",\"round\":$3,\"attempts\":$attempt,\"ok\":$RUN_OK,${RUN_LINE#\{}" >>"$JSONL"
  return 0
}

# One measurement: fresh echo server and proxy on fresh ports, one loadgen.
# Sets RUN_LINE (its JSON) and RUN_OK.
run_attempt() {
  local scenario=$1 c=$2 round=$3 up port args extra=()
  RUN_LINE="" RUN_OK=false
  PROXY_PID="" WATCH_PID=""
  up=$(free_port)
  local echo_pid=""
  if [ "$ECHO_PROCESS" = 1 ]; then
    "${PIN_LOAD[@]+"${PIN_LOAD[@]}"}" "$ECHO" "127.0.0.1:$up" >"$WORK/echo.log" 2>&1 &
    echo_pid=$!
    PIDS+=("$echo_pid")
    wait_listen "$up" "$echo_pid" || { echo "run.sh: gw-echo did not start" >&2; exit 1; }
    extra+=(--echo-pid "$echo_pid")
  else
    # The proxies connect upstream only when a session comes, by which
    # time gw-loadgen listens.
    extra+=(--echo "127.0.0.1:$up")
  fi
  port=$up
  if [ "$c" != direct ]; then
    port=$(free_port)
    while [ "$port" = "$up" ]; do port=$(free_port); done
    if ! start_proxy "$c" "$up" "$port"; then
      FAILED=1
      [ -z "$echo_pid" ] || stop_pid "$echo_pid"
      return
    fi
    extra+=(--watch-pid "$WATCH_PID")
  fi
  [ "$c" = gw-rewrite ] && extra+=(--expect-scratch "$REWRITE_VALUE")
  # shellcheck disable=SC2207
  args=($(scenario_args "$scenario"))
  local deadline
  deadline=$(awk -v d="$DUR" -v w="$WARM" -v h="$HOLD" 'BEGIN { print int(d + w + h + 40) }')
  local perf_pid="" perf_stat_pid=""
  if [ -n "$PROFILE" ] && [ -n "$WATCH_PID" ]; then
    # Samples the measured window only, not the connects and warm-up.
    (sleep "$WARM"; exec perf record -g -p "$WATCH_PID" -o "$BUILD/perf-$c.data" \
       -- sleep "$DUR") >"$WORK/perf.log" 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
    # Syscalls by kind over the same window: the relay's cost is mostly
    # there, so "syscalls per relayed frame" is the number to compare.
    local ev=raw_syscalls:sys_enter k
    for k in read readv write writev recvfrom sendto recvmsg sendmsg \
             epoll_wait epoll_pwait epoll_ctl splice; do
      ev="$ev,syscalls:sys_enter_$k"
    done
    (sleep "$WARM"; exec perf stat -x, -e "$ev" -p "$WATCH_PID" \
       -o "$WORK/perf-stat.csv" -- sleep "$DUR") >/dev/null 2>&1 &
    perf_stat_pid=$!
    PIDS+=("$perf_stat_pid")
  fi
  local line rc=0
  line=$("${PIN_LOAD[@]+"${PIN_LOAD[@]}"}" timeout -k 2 "$((deadline + 5))" "$LOADGEN" -t "127.0.0.1:$port" \
           "${args[@]}" -d "$DUR" -w "$WARM" -T "$deadline" -l "$c" \
           "${extra[@]+"${extra[@]}"}" 2>"$WORK/loadgen.err") || rc=$?
  grep -v '^gw-loadgen: session' "$WORK/loadgen.err" | sed "s/^/  [$scenario r$round] /" >&2 || true
  if [ "$rc" != 0 ] || [ -z "$line" ]; then
    echo "run.sh: $scenario/$c round $round FAILED (exit $rc)" >&2
    head -5 "$WORK/loadgen.err" >&2
    FAILED=1
  fi
  RUN_LINE=$line
  [ "$rc" = 0 ] && RUN_OK=true
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    forget_pid "$perf_pid"
    wait "$perf_stat_pid" || true
    forget_pid "$perf_stat_pid"
    {
      echo "# $c, $scenario scenario: self time by binary, then by function"
      perf report -i "$BUILD/perf-$c.data" --no-children --sort dso --stdio \
        -g none 2>/dev/null | grep -v '^#' | grep . | sed 's/ *$//'
      echo
      perf report -i "$BUILD/perf-$c.data" --no-children --sort dso,symbol \
        --percent-limit 0.5 --stdio -g none 2>/dev/null | grep -v '^#' | grep . |
        sed 's/[ -]*$//'
      # Each frame crosses the proxy twice: to the echo server and back.
      local frames
      frames=$(sed -n 's/.*"frames":\([0-9]*\).*/\1/p' <<<"$line")
      echo
      echo "# syscalls over the window, per frame relayed ($((frames * 2)) frames)"
      awk -F, -v n="$((frames * 2))" '$1 ~ /^[0-9]+$/ && $1 > 0 {
        sub(/^(raw_)?syscalls:sys_enter_?/, "", $3); if ($3 == "") $3 = "all";
        printf "%12d  %-12s %.3f per frame\n", $1, $3, n ? $1 / n : 0 }' \
        "$WORK/perf-stat.csv"
    } >"$BUILD/perf-$c.txt" || true
    echo "== perf: $c, $scenario, top functions by self time ($BUILD/perf-$c.txt)" >&2
    head -40 "$BUILD/perf-$c.txt" >&2
  fi
  if [ -n "$PROXY_PID" ]; then
    if ! kill -0 "$WATCH_PID" 2>/dev/null; then
      echo "run.sh: $c died during $scenario; its log:" >&2
      tail -20 "$WORK/$c/log" >&2
      FAILED=1
    fi
    stop_pid "$PROXY_PID"
    [ "$WATCH_PID" = "$PROXY_PID" ] || stop_pid "$WATCH_PID"
  fi
  [ -z "$echo_pid" ] || stop_pid "$echo_pid"
}

# The smoke run also proves the checker catches a wrong echo: gw-echo does
# not rewrite, so expecting a rewritten u32 must fail. (It runs gw-echo as a
# process of its own, so that path is checked too.)
smoke_negative() {
  local up rc=0
  up=$(free_port)
  "$ECHO" "127.0.0.1:$up" >/dev/null 2>&1 &
  local echo_pid=$!
  PIDS+=("$echo_pid")
  wait_listen "$up" "$echo_pid" || exit 1
  "$LOADGEN" -t "127.0.0.1:$up" -c 2 -d 0.3 -w 0 -x "$REWRITE_VALUE" -T 10 \
    -l negative >"$WORK/neg.json" 2>/dev/null || rc=$?
  stop_pid "$echo_pid"
  if [ "$rc" = 0 ] || grep -q '"mismatches":0,' "$WORK/neg.json"; then
    echo "run.sh: smoke: the checker missed an echo that differs" >&2
    FAILED=1
  fi
}

# ---- the run ----
{
  echo "== gangway benchmarks: mode $MODE, $ROUNDS round(s), $NCPU CPUs, pinning $([ "$PIN" = 1 ] && echo 'proxy on CPU 1, loadgen+echo on CPU 0' || echo off)"
  echo "== contenders: ${active[*]}; idle sessions: $IDLE_N (fd limit $FD_LIMIT)"
} >&2
start=$(date +%s)
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    # Rotate the order each round so no contender always runs first.
    n=${#active[@]}
    for i in $(seq 0 $((n - 1))); do
      c=${active[$(( (i + round - 1) % n ))]}
      # The idle scenario measures a proxy's memory: nothing to say direct.
      [ "$scenario" = idle ] && [ "$c" = direct ] && [ "$MODE" != smoke ] && continue
      run_one "$scenario" "$c" "$round"
    done
  done
done
[ "$MODE" = smoke ] && smoke_negative
echo "== done in $(( $(date +%s) - start )) s" >&2

# ---- the table ----
meta="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), kernel $(uname -r)"
[ "$have_haproxy" = 1 ] && meta="$meta, $(haproxy -v 2>/dev/null | sed -n '1s/^\(HAProxy version [^ ]*\).*/\1/p')"
[ "$have_nginx" = 1 ] && meta="$meta, $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
meta="$meta; mode $MODE, $ROUNDS round(s), ${DUR} s per run; pinning: $([ "$PIN" = 1 ] && echo 'proxy CPU 1, loadgen+echo CPU 0' || echo none); echo upstream $([ "$ECHO_PROCESS" = 1 ] && echo 'gw-echo, its own process' || echo 'in gw-loadgen')"
[ "$NOISE_MAX" -ge 0 ] && meta="$meta; a run that saw other work above $NOISE_MAX% of a CPU was measured again (3 attempts at most, after waiting up to ${NOISE_WAIT} s for a quiet machine)"
lua5.4 "$ROOT/bench/report.lua" "$JSONL" "$meta" | tee "$OUT"
echo "(results: $OUT, raw: $JSONL)" >&2
exit "$FAILED"
