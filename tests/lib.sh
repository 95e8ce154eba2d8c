# tests/lib.sh: what the shell integration tests share. A test sources it
# right after `set -euo pipefail`:
#   . "$(dirname "$0")/lib.sh" NAME "$1"        ($1: the build directory)
# It sets build, root, dir (a new /tmp/gw-NAME-XXXXXX: removed at exit when
# the test has set ok=1, else kept and named) and pids (processes killed at
# exit; a test with more to stop defines cleanup_more).
build=$(cd "$2" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=$(mktemp -d "/tmp/gw-$1-XXXXXX")
pids=()
cleanup() {
  if declare -F cleanup_more >/dev/null; then cleanup_more; fi
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "${ok:-0}" = 1 ]; then rm -rf "$dir"; else echo "outputs kept in $dir" >&2; fi
}
trap cleanup EXIT
# Fails the test with its outputs' last lines.
fail() { echo "FAIL: $*" >&2; for f in "$dir"/*.out; do echo "== $f" >&2; tail -40 "$f" >&2; done; exit 1; }
wait_for() { # file pattern seconds: whether the pattern showed up in time
  for _ in $(seq $(( $3 * 20 ))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
