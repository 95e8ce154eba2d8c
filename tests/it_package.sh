#!/usr/bin/env bash
# The install rules, the Debian package, the systemd unit and the man page.
#   usage: tests/it_package.sh MODE BUILD_DIR
#   build    configure BUILD_DIR/package-deb for /usr, build, `cpack -G DEB`
#   deb      the package's control data and files; unpacked into a scratch
#            root (dpkg -x), its gangway checks the installed config and
#            relays frames through the example scripts, and busted runs the
#            installed example specs; plus `cmake --install` of BUILD_DIR
#   unit     systemd-analyze verify of the packaged unit
#   man      the packaged gangway(8) renders without a warning
#   system   `dpkg -i` in private mount and network namespaces whose /etc,
#            /usr and /var are overlays on tmpfs (the machine is untouched):
#            postinst's user, the default config, the unit's own command
#            lines run as that user, busted on the standard Lua paths, purge.
#            Exits 77 (skipped) where namespaces cannot be made.
# Only loopback is used; every wait is bounded.
set -euo pipefail
mode=$1
build=$(cd "$2" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
pkgbuild=$build/package-deb
dir=$(mktemp -d /tmp/gw-package-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  # system-inner: the tmpfs under the overlays goes with its namespace.
  if [ -n "${ov:-}" ]; then umount -l "$ov" 2>/dev/null || true; fi
  if [ "${ok:-0}" = 1 ]; then rm -rf "$dir"; else echo "outputs kept in $dir" >&2; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$dir"/*.out; do [ -f "$f" ] && { echo "== $f" >&2; tail -30 "$f" >&2; }; done
  exit 1
}
wait_for() { # file pattern seconds
  for _ in $(seq $(( $3 * 20 ))); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  # Below the ephemeral range (32768-60999): other tests' outgoing
  # connections cannot take it between this check and gangway's bind.
  local p=$(( 20000 + RANDOM % 12000 ))
  while ! port_free "$p"; do p=$(( p + 1 )); done
  echo "$p"
}
deb_file() {
  local d
  d=$(ls "$pkgbuild"/packages/gangway_*.deb 2>/dev/null | head -1)
  [ -n "$d" ] || fail "no package in $pkgbuild/packages (the package.build test makes it)"
  echo "$d"
}

# A loopback echo server (the upstream) and a client that sends a `top`
# keep-alive and a chat line, and expects them back as the example scripts
# leave them: chat_filter.lua rewrites "noob" on the way to the server.
cat >"$dir/peer.py" <<'PY'
import socket, struct, sys
def say(text):
    s = text.encode() + b"\0"
    body = struct.pack(">H", len(s)) + s
    return struct.pack(">HIH", 8 + len(body), 0x80000000, 1) + body
if sys.argv[1] == "notify":
    # What systemd would get on NOTIFY_SOCKET: one line per datagram.
    import os
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sys.argv[2])
    os.chmod(sys.argv[2], 0o666)
    print("listen", flush=True)
    srv.settimeout(60)
    while True:
        print(srv.recv(4096).decode().replace("\n", " "), flush=True)
elif sys.argv[1] == "echo":
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(sys.argv[2])))
    srv.listen(8)
    print("listen", srv.getsockname()[1], flush=True)
    srv.settimeout(60)
    while True:
        c, _ = srv.accept()
        c.settimeout(20)
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.close()
else:
    c = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=10)
    c.sendall(b"\x00\x02" + say("hello noob"))
    want = b"\x00\x02" + say("hello new friend")
    got = b""
    while len(got) < len(want):
        d = c.recv(65536)
        if not d:
            break
        got += d
    c.close()
    if got != want:
        sys.exit("relayed %r, expected %r" % (got, want))
    print("relayed", len(got), "bytes")
PY
echo_server() { # port (0 = any); sets up_pid, up_port
  python3 -u "$dir/peer.py" echo "$1" >"$dir/upstream.out" 2>&1 &
  up_pid=$!; pids+=("$up_pid")
  wait_for "$dir/upstream.out" "^listen " 5 || fail "echo upstream does not listen"
  up_port=$(sed -n 's/^listen //p' "$dir/upstream.out")
}
# Relays through a gangway already started on port $1, then stops it ($2,
# its pid) with SIGTERM: a drain that must end with exit 0.
relay_and_stop() {
  python3 "$dir/peer.py" client "$1" >"$dir/client.out" 2>&1 || fail "relay: $(cat "$dir/client.out")"
  wait_for "$dir/gangway.out" "rewrote chat line" 5 || fail "chat_filter.lua logged no rewrite"
  kill -TERM "$2"
  local rc=0
  wait "$2" || rc=$?
  [ "$rc" = 0 ] || fail "gangway exit $rc after SIGTERM"
}

case $mode in
build)
  rm -rf "$pkgbuild/packages"
  # Only what the package holds is built, and installing builds nothing more.
  cmake -S "$src" -B "$pkgbuild" -DCMAKE_INSTALL_PREFIX=/usr \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON >"$dir/cmake.out" 2>&1 ||
    fail "configure: $(tail -20 "$dir/cmake.out")"
  cmake --build "$pkgbuild" -j2 --target gangway gangway_luamod gangway_man >"$dir/build.out" 2>&1 ||
    fail "build: $(tail -20 "$dir/build.out")"
  (cd "$pkgbuild" && cpack -G DEB) >"$dir/cpack.out" 2>&1 || fail "cpack: $(tail -20 "$dir/cpack.out")"
  deb=$(deb_file)
  echo "built $deb"
  ;;

deb)
  deb=$(deb_file)
  dpkg-deb -I "$deb" control >"$dir/control"
  depends=$(sed -n 's/^Depends: //p' "$dir/control")
  for d in libc6 libuv1 liblua5.4-0 lua-cjson adduser; do
    echo ", $depends," | grep -q ", $d[ ,(]" || fail "Depends lacks $d: $depends"
  done
  if readelf -d "$pkgbuild/gangway" | grep -q 'libsystemd\.so'; then
    echo ", $depends," | grep -q ", libsystemd0[ ,(]" || fail "Depends lacks libsystemd0: $depends"
  fi
  [ "$(dpkg-deb -I "$deb" conffiles)" = /etc/gangway/config.lua ] ||
    fail "conffiles: $(dpkg-deb -I "$deb" conffiles)"
  dpkg-deb -I "$deb" postinst | grep -q 'adduser --system' || fail "postinst creates no system user"
  dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#' >"$dir/files"
  for f in /usr/bin/gangway /etc/gangway/config.lua /lib/systemd/system/gangway.service \
           /usr/share/man/man8/gangway.8.gz \
           /usr/lib/x86_64-linux-gnu/lua/5.4/gangway/core.so /usr/share/lua/5.4/gangway/testing.lua \
           /usr/share/gangway/protocols/top/packets.lua /usr/share/gangway/scripts/chat_filter.lua \
           /usr/share/gangway/spec/chat_filter_spec.lua /usr/share/doc/gangway/config.md; do
    grep -qx "$f" "$dir/files" || fail "the package lacks $f"
  done
  grep -q '^/usr/local' "$dir/files" && fail "the package installs into /usr/local"
  # Everything root-owned; the binary executable, the rest not.
  dpkg-deb -c "$deb" | awk '$2 != "root/root" {print; bad=1} END {exit bad}' ||
    fail "files not owned by root"

  root=$dir/root
  dpkg-deb -x "$deb" "$root"
  gw=$root/usr/bin/gangway
  "$gw" --version | grep -q '^gangway ' || fail "installed gangway --version"
  # The installed config, its absolute paths moved into the scratch root.
  # protocol = "top" would find the installed protocols under /usr/share,
  # outside the scratch root: name the scratch root's directory instead.
  sed -e "s#\"/usr/share/gangway/#\"$root/usr/share/gangway/#" \
      -e "s#protocol = \"top\"#protocol = \"$root/usr/share/gangway/protocols/top\"#" \
      "$root/etc/gangway/config.lua" >"$dir/config.lua"
  grep -q "protocol = \"$root/usr/share/gangway/protocols/top\"" "$dir/config.lua" ||
    fail "the installed config names no protocol"
  grep -q "$root/usr/share/gangway/scripts/" "$dir/config.lua" ||
    fail "the installed config names no installed script"
  "$gw" check -c "$dir/config.lua" >"$dir/check.out" 2>&1 || fail "gangway check: $(cat "$dir/check.out")"
  grep -q ": ok (1 listener(s), 5 script(s))" "$dir/check.out" || fail "check: $(cat "$dir/check.out")"

  # The installed example specs, outside the source tree, gangway.testing
  # and gangway.core found only through the scratch root's Lua paths.
  (cd "$root/usr/share/gangway" &&
   env -u GW_BUILD_DIR \
       LUA_PATH="$root/usr/share/lua/5.4/?.lua;;" \
       LUA_CPATH="$root/usr/lib/x86_64-linux-gnu/lua/5.4/?.so;;" \
       busted --output=plainTerminal) >"$dir/busted.out" 2>&1 || fail "installed specs fail"
  grep -Eq '^[1-9][0-9]* successes / 0 failures / 0 errors' "$dir/busted.out" ||
    fail "busted: $(tail -5 "$dir/busted.out")"

  # Started once on free loopback ports: relays, then drains on SIGTERM.
  echo_server 0
  sed -i -e "s#\"127.0.0.1:1974\"#\"127.0.0.1:$up_port\"#" \
         -e "s#\"/run/gangway/gangway.sock\"#\"$dir/gangway.sock\"#" "$dir/config.lua"
  cp "$dir/config.lua" "$dir/config.lua.in"
  # A port taken between the check and the bind: another one, 3 tries.
  for try in 1 2 3; do
    port=$(free_port)
    sed "s#\"127.0.0.1:1973\"#\"127.0.0.1:$port\"#" "$dir/config.lua.in" >"$dir/config.lua"
    "$gw" -c "$dir/config.lua" >"$dir/gangway.out" 2>&1 &
    gwpid=$!; pids+=("$gwpid")
    wait_for "$dir/gangway.out" " running (config " 5 && break
    grep -q "address already in use" "$dir/gangway.out" && [ "$try" -lt 3 ] ||
      fail "installed gangway does not start: $(tail -3 "$dir/gangway.out")"
    wait "$gwpid" 2>/dev/null || true
  done
  "$gw" stats -c "$dir/config.lua" | grep -q '"sessions_total":0' || fail "gangway stats"
  relay_and_stop "$port" "$gwpid"

  # `cmake --install` of the ordinary build: the same layout under its prefix.
  prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
  DESTDIR=$dir/destdir cmake --install "$build" >"$dir/install.out" 2>&1 ||
    fail "cmake --install: $(tail -5 "$dir/install.out")"
  libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$build/CMakeCache.txt")
  sysconf=$(sed -n 's/^CMAKE_INSTALL_SYSCONFDIR:PATH=//p' "$build/CMakeCache.txt")
  case $sysconf in /*) ;; *) sysconf=$prefix/$sysconf ;; esac
  case $libdir in /*) ;; *) libdir=$prefix/$libdir ;; esac
  for f in "$prefix/bin/gangway" "$sysconf/gangway/config.lua" "$libdir/lua/5.4/gangway/core.so" \
           "$prefix/share/lua/5.4/gangway/testing.lua" "$prefix/share/gangway/protocols/top/init.lua" \
           "$prefix/share/man/man8/gangway.8.gz"; do
    [ -f "$dir/destdir$f" ] || fail "cmake --install put no $f"
  done
  ls "$dir/destdir$prefix/bin" | grep -qv '^gangway$' && fail "cmake --install put more than gangway in bin/"
  echo "package: $(basename "$deb"): Depends: $depends; installed config checked, $(grep -o '^[0-9]* successes' "$dir/busted.out") in the installed specs, $(cat "$dir/client.out")"
  ;;

unit)
  deb=$(deb_file)
  root=$dir/root
  dpkg-deb -x "$deb" "$root"
  unit=$root/lib/systemd/system/gangway.service
  for want in '^Type=notify$' '^ExecStartPre=/usr/bin/gangway check ' '^ExecReload=/usr/bin/gangway check ' \
              '^ExecReload=/usr/bin/gangway reload ' '^Restart=on-failure$' '^KillSignal=SIGTERM$' \
              '^User=gangway$' '^NoNewPrivileges=yes$' '^ProtectSystem=strict$' \
              '^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$' '^AmbientCapabilities=CAP_NET_BIND_SERVICE$' \
              '^RuntimeDirectory=gangway$' '^LimitNOFILE=65536$'; do
    grep -q "$want" "$unit" || fail "the unit has no line $want"
  done
  # TimeoutStopSec leaves the shipped drain_ms time to finish.
  stop_s=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s$/\1/p' "$unit")
  drain_ms=$(sed -n 's/.*drain_ms = \([0-9]*\).*/\1/p' "$root/etc/gangway/config.lua")
  [ -n "$stop_s" ] && [ -n "$drain_ms" ] && [ $(( stop_s * 1000 )) -gt "$drain_ms" ] ||
    fail "TimeoutStopSec=${stop_s}s does not exceed drain_ms=$drain_ms"
  # verify needs the binaries at the unit's paths and its Documentation=
  # page: a copy pointing into the scratch root, man looking there. Any
  # complaint (unknown key, bad value) is a failure.
  mkdir -p "$dir/units"
  sed "s#/usr/bin/gangway#$root/usr/bin/gangway#g" "$unit" >"$dir/units/gangway.service"
  export MANPATH=$root/usr/share/man
  (cd "$dir/units" && systemd-analyze verify ./gangway.service) >"$dir/verify.out" 2>&1 ||
    fail "systemd-analyze verify: $(cat "$dir/verify.out")"
  [ ! -s "$dir/verify.out" ] || fail "systemd-analyze verify: $(cat "$dir/verify.out")"
  # The test itself can fail: a wrong line is reported.
  sed 's/^Type=notify$/Type=notifyy/' "$dir/units/gangway.service" >"$dir/units/broken.service"
  (cd "$dir/units" && systemd-analyze verify ./broken.service) >"$dir/broken.out" 2>&1 || true
  grep -q "notifyy" "$dir/broken.out" || fail "systemd-analyze verify misses a bad line"
  # The hardening, scored the way systemd scores it (0 = locked down, 10 =
  # none): at most 2.0, "OK" in systemd's words.
  (cd "$dir/units" && systemd-analyze security --offline=yes --threshold=20 ./gangway.service) \
    >"$dir/security.out" 2>&1 || fail "systemd-analyze security: $(grep -E '✗|Overall' "$dir/security.out")"
  score=$(sed -n 's/.*Overall exposure level for gangway.service: \([0-9.]*\).*/\1/p' "$dir/security.out")
  echo "unit: systemd-analyze verify clean, exposure $score"
  ;;

man)
  deb=$(deb_file)
  root=$dir/root
  dpkg-deb -x "$deb" "$root"
  page=$root/usr/share/man/man8/gangway.8.gz
  zcat "$page" | groff -man -t -ww -z 2>"$dir/groff.out" || fail "groff: $(cat "$dir/groff.out")"
  [ ! -s "$dir/groff.out" ] || fail "groff warns: $(cat "$dir/groff.out")"
  MANWIDTH=80 man --warnings -l "$page" >"$dir/man.txt" 2>"$dir/man.err" || fail "man -l: $(cat "$dir/man.err")"
  [ ! -s "$dir/man.err" ] || fail "man -l warns: $(cat "$dir/man.err")"
  for want in "gangway check" "--json" "SIGHUP" "SIGTERM" "EXIT STATUS" "/etc/gangway/config.lua" \
              "/run/gangway/gangway.sock" "first_frame_ms" "frame_ms" "write_max" "sessions_per_ip" \
              "new_sessions_per_ip_per_s" "unfinished_frame" "session_lines_per_s" "proxy_protocol"; do
    grep -q -- "$want" "$dir/man.txt" || fail "gangway(8) does not mention $want"
  done
  grep -q '@GW_' "$dir/man.txt" && fail "gangway(8) has an unfilled @GW_...@"
  echo "man: gangway(8) renders without warnings ($(wc -l <"$dir/man.txt") lines)"
  ;;

system)
  deb=$(deb_file)
  if [ "$(id -u)" != 0 ] || ! unshare --mount --net true 2>/dev/null; then
    echo "SKIP: no private mount and network namespaces here (needs root)"
    ok=1; exit 77
  fi
  ok=1 # the inner run keeps $dir itself when it fails
  exec unshare --mount --net --propagation private -- "$0" system-inner "$build" "$dir"
  ;;

system-inner)
  # In fresh mount and network namespaces, as root: nothing below reaches
  # the machine's /etc, /usr, /var or /run, nor its network.
  rm -rf "$dir"; dir=$3; deb=$(deb_file)
  ip link set lo up
  ov=$dir/overlay
  mkdir -p "$ov"
  skip() { echo "SKIP: $*"; ok=1; exit 77; }
  mount -t tmpfs gw-package "$ov" || skip "cannot mount a tmpfs"
  for d in etc usr var; do
    mkdir -p "$ov/$d.upper" "$ov/$d.work"
    mount -t overlay "gw-$d" -o "lowerdir=/$d,upperdir=$ov/$d.upper,workdir=$ov/$d.work" "/$d" ||
      skip "cannot mount an overlay on /$d"
  done
  mount -t tmpfs gw-run /run || skip "cannot mount a tmpfs on /run"
  for d in /etc /usr /var /run; do
    mountpoint -q "$d" || fail "$d is not a private mount: not installing"
  done
  cp "$deb" "$dir/gangway.deb"

  dpkg -i "$dir/gangway.deb" >"$dir/dpkg.out" 2>&1 || fail "dpkg -i: $(cat "$dir/dpkg.out")"
  getent passwd gangway >"$dir/user" || fail "postinst made no user gangway"
  uid=$(cut -d: -f3 "$dir/user")
  [ "$uid" -lt 1000 ] || fail "gangway is not a system user: $(cat "$dir/user")"
  dpkg-query -W -f='${Conffiles}' gangway | grep -q '/etc/gangway/config.lua' ||
    fail "dpkg registered no conffile"
  # Installed again (as an upgrade would): the same user, no error.
  dpkg -i "$dir/gangway.deb" >>"$dir/dpkg.out" 2>&1 || fail "dpkg -i again: $(cat "$dir/dpkg.out")"
  [ "$(getent passwd gangway)" = "$(cat "$dir/user")" ] || fail "the second install changed the user"

  # The default config of an installed gangway, as shipped.
  gangway check >"$dir/check.out" 2>&1 || fail "gangway check: $(cat "$dir/check.out")"
  grep -q '^/etc/gangway/config.lua: ok (1 listener(s), 5 script(s))' "$dir/check.out" ||
    fail "gangway check did not check /etc/gangway/config.lua: $(cat "$dir/check.out")"
  gangway check --json >"$dir/check.json" 2>&1 || fail "gangway check --json: $(cat "$dir/check.json")"
  python3 - "$dir/check.json" <<'PY' || fail "gangway check --json: $(cat "$dir/check.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert (r["ok"], r["config"], r["listeners"], r["scripts"]) == \
    (True, "/etc/gangway/config.lua", 1, 5), r
PY
  man -w gangway | grep -q '^/usr/share/man/man8/gangway.8.gz$' || fail "man does not find gangway(8)"
  systemd-analyze verify /lib/systemd/system/gangway.service >"$dir/verify.out" 2>&1 ||
    fail "systemd-analyze verify: $(cat "$dir/verify.out")"
  [ ! -s "$dir/verify.out" ] || fail "systemd-analyze verify: $(cat "$dir/verify.out")"

  # The example specs on the standard Lua paths, by a user who can write
  # nothing there.
  (cd /usr/share/gangway &&
   env -u LUA_PATH -u LUA_CPATH -u GW_BUILD_DIR HOME=/nonexistent \
     setpriv --reuid=nobody --regid=nogroup --clear-groups busted --output=plainTerminal) \
    >"$dir/busted.out" 2>&1 || fail "installed specs fail"
  grep -Eq '^[1-9][0-9]* successes / 0 failures / 0 errors' "$dir/busted.out" ||
    fail "busted: $(tail -5 "$dir/busted.out")"

  # The unit's own command lines, as its user, with its RuntimeDirectory,
  # as much of its sandbox as a shell can give (/etc, /usr and /var read-only,
  # its capability bounding set, no new privileges, its open-files limit):
  # the shipped config unchanged (this network namespace has its ports).
  unit=/lib/systemd/system/gangway.service
  config=$(sed -n 's/^Environment=CONFIG=//p' "$unit")
  nofile=$(sed -n 's/^LimitNOFILE=//p' "$unit")
  # Raising the hard limit takes CAP_SYS_RESOURCE, which systemd has and a
  # container may not: then as high as this one's hard limit goes.
  hard=$(ulimit -Hn)
  [ "$hard" = unlimited ] || [ "$hard" -ge "$nofile" ] || nofile=$hard
  cmdline() { sed -n "s/^$1=//p" "$unit" | sed "s#\${CONFIG}#$config#g"; }
  sandbox=(prlimit --nofile="$nofile:$nofile" setpriv --reuid=gangway --regid=gangway
           --init-groups --no-new-privs --bounding-set=-all,+net_bind_service --)
  as_gangway() { "${sandbox[@]}" "$@"; }
  install -d -o gangway -g gangway -m 0750 /run/gangway
  for d in /etc /usr /var; do mount -o remount,ro "$d"; done
  # shellcheck disable=SC2046 # the unit's words
  as_gangway $(cmdline ExecStartPre) >"$dir/startpre.out" 2>&1 || fail "ExecStartPre: $(cat "$dir/startpre.out")"
  echo_server 1974
  # Type=notify: what systemd would hear, on a socket of our own.
  python3 -u "$dir/peer.py" notify /run/notify.sock >"$dir/notify.out" 2>&1 &
  pids+=($!)
  wait_for "$dir/notify.out" "^listen" 5 || fail "no notify socket"
  # shellcheck disable=SC2046 # exec: $! is gangway itself
  (export NOTIFY_SOCKET=/run/notify.sock; exec "${sandbox[@]}" $(cmdline ExecStart)) \
    >"$dir/gangway.out" 2>&1 &
  gwpid=$!; pids+=("$gwpid")
  wait_for "$dir/notify.out" "^READY=1" 5 || fail "ExecStart sent no READY=1"
  grep -q " running (config " "$dir/gangway.out" || fail "READY=1 before gangway runs"
  grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$gwpid/status" || fail "gangway runs without NoNewPrivs"
  grep -q '^CapBnd:[[:space:]]*0000000000000400$' "/proc/$gwpid/status" ||
    fail "gangway's bounding set: $(grep CapBnd "/proc/$gwpid/status")"
  touch /usr/gw-ro-test 2>/dev/null && fail "/usr is writable under the emulated ProtectSystem"
  [ -S /run/gangway/gangway.sock ] || fail "no control socket in /run/gangway"
  gangway stats | grep -q '"sessions_total":0' || fail "gangway stats (default config)"
  cmdline ExecReload >"$dir/reload.cmds"
  while read -r line; do
    # shellcheck disable=SC2086
    as_gangway $line >>"$dir/reload.out" 2>&1 || fail "ExecReload $line: $(cat "$dir/reload.out")"
  done <"$dir/reload.cmds"
  grep -q "generation 2 active" "$dir/reload.out" || fail "reload: $(cat "$dir/reload.out")"
  [ "$(grep -o '^[A-Z]*=1' "$dir/notify.out" | tr '\n' ' ')" = "READY=1 RELOADING=1 READY=1 " ] ||
    fail "notifications around the reload: $(cat "$dir/notify.out")"
  relay_and_stop 1973 "$gwpid"
  grep -q '^STOPPING=1' "$dir/notify.out" || fail "no STOPPING=1 at SIGTERM: $(cat "$dir/notify.out")"
  for d in /etc /usr /var; do mount -o remount,rw "$d"; done

  dpkg -r gangway >>"$dir/dpkg.out" 2>&1 || fail "dpkg -r: $(cat "$dir/dpkg.out")"
  [ ! -e /usr/bin/gangway ] || fail "dpkg -r left /usr/bin/gangway"
  [ -f /etc/gangway/config.lua ] || fail "dpkg -r removed the conffile"
  dpkg -P gangway >>"$dir/dpkg.out" 2>&1 || fail "dpkg -P: $(cat "$dir/dpkg.out")"
  [ ! -e /etc/gangway ] || fail "purge left /etc/gangway"
  ok=1
  echo "system: dpkg -i, user gangway (uid $uid), default config checked, unit's commands run (READY, RELOADING, READY, STOPPING), $(grep -o '^[0-9]* successes' "$dir/busted.out") in the installed specs, $(cat "$dir/client.out"), purged"
  ;;

*)
  echo "usage: $0 build|deb|unit|man|system BUILD_DIR" >&2
  ok=1; exit 2
  ;;
esac
ok=1
exit 0
