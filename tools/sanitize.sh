#!/usr/bin/env bash
# Builds gangway and its C tests with AddressSanitizer + UndefinedBehavior-
# Sanitizer in build-asan/ and runs the unit and integration suites there:
# any leak, overflow or undefined behaviour in gangway makes its exit status
# non-zero, which the integration tests assert is 0.
#   usage: tools/sanitize.sh [extra ctest arguments]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$root" -B "$root/build-asan" -DGW_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$root/build-asan" -j"$(nproc)" >/dev/null
cd "$root/build-asan"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=23
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
exec ctest --output-on-failure -L 'unit|integration' -E 'demo' "$@"
