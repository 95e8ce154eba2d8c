#!/usr/bin/env bash
# Builds the libFuzzer harnesses in build-fuzz/ and runs each for its share
# of SECONDS (default 60): the framing engine (fuzz_frame, two thirds) and
# the PROXY protocol parser (fuzz_proxy, one third), each from its seed
# corpus in fuzz/corpus/<name>/. New inputs go to build-fuzz/corpus/<name>/,
# crashes to build-fuzz/artifacts/. Prints execs/s and total execs; exits
# non-zero if a fuzzer found a crash.
#   usage: fuzz/run.sh [SECONDS]
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DGW_FUZZ=ON >/dev/null
cmake --build "$build" --target fuzz_frame fuzz_proxy -j"$(nproc)" >/dev/null
mkdir -p "$build/artifacts"

run() { # name seconds
  local name=$1 t=$2 rc=0
  local log=$build/fuzz_$name.log
  mkdir -p "$build/corpus/$name"
  "$build/fuzz/fuzz_$name" -max_total_time="$t" -print_final_stats=1 \
    -artifact_prefix="$build/artifacts/" \
    "$build/corpus/$name" "$root/fuzz/corpus/$name" >"$log" 2>&1 || rc=$?
  stat() { sed -n "s/^stat::$1: *//p" "$log"; }
  if [ "$rc" -ne 0 ]; then
    grep -E 'ERROR|SUMMARY|check failed|Test unit written' "$log" >&2 || tail -20 "$log" >&2
    echo "fuzz_$name: FAILED (exit $rc), full log in $log" >&2
    return "$rc"
  fi
  echo "fuzz_$name: ${t} s, $(stat number_of_executed_units) execs," \
       "$(stat average_exec_per_sec) execs/s, corpus $(ls "$build/corpus/$name" | wc -l) inputs," \
       "peak RSS $(stat peak_rss_mb) MB"
}

frame_secs=$(( secs * 2 / 3 ))
run frame "$frame_secs"
run proxy "$(( secs - frame_secs > 0 ? secs - frame_secs : 1 ))"
