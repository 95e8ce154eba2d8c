#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is needed, builds,
# and runs every suite registered with CTest (cmocka units, busted specs,
# integration tests through real gangway processes, the same units and
# integration tests again under ASan+UBSan, a bounded fuzzing run, the demo
# end to end, the benchmark tools' self-check) with one summary.
#   usage: tools/test.sh [extra ctest arguments, e.g. -R relay]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
cd build
exec ctest --output-on-failure --timeout 600 "$@"
