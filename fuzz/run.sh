#!/usr/bin/env bash
# Builds the framing engine's libFuzzer harness in build-fuzz/ and runs it for
# SECONDS (default 60) from the seed corpus in fuzz/corpus/frame/. New inputs
# go to build-fuzz/corpus/frame/, crashes to build-fuzz/artifacts/. Prints
# execs/s and total execs; exits non-zero if the fuzzer found a crash.
#   usage: fuzz/run.sh [SECONDS]
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-fuzz

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DGW_FUZZ=ON >/dev/null
cmake --build "$build" --target fuzz_frame -j"$(nproc)" >/dev/null

mkdir -p "$build/corpus/frame" "$build/artifacts"
log=$build/fuzz_frame.log
rc=0
"$build/fuzz/fuzz_frame" -max_total_time="$secs" -print_final_stats=1 \
  -artifact_prefix="$build/artifacts/" \
  "$build/corpus/frame" "$root/fuzz/corpus/frame" >"$log" 2>&1 || rc=$?

stat() { sed -n "s/^stat::$1: *//p" "$log"; }
if [ "$rc" -ne 0 ]; then
  grep -E 'ERROR|SUMMARY|check failed|Test unit written' "$log" >&2 || tail -20 "$log" >&2
  echo "fuzz_frame: FAILED (exit $rc), full log in $log" >&2
  exit "$rc"
fi
echo "fuzz_frame: ${secs} s, $(stat number_of_executed_units) execs," \
     "$(stat average_exec_per_sec) execs/s, corpus $(ls "$build/corpus/frame" | wc -l) inputs," \
     "peak RSS $(stat peak_rss_mb) MB"
