#!/usr/bin/env bash
# Installs everything gangway builds, tests and benchmarks with, from Debian's
# packages by name. Safe to run again: apt skips what is already there.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
pkgs=(
  build-essential cmake pkg-config git
  libuv1-dev liblua5.4-dev lua5.4 lua-cjson lua-cjson-dev
  lua-busted libcmocka-dev
  clang libclang-rt-14-dev valgrind
  haproxy procps python3 netcat-openbsd iproute2 linux-perf
  nginx-light libnginx-mod-stream
  zlib1g-dev libsystemd-dev libjansson-dev systemd scdoc groff-base man-db dpkg-dev file adduser
  libpcap-dev tshark jq
  libmicrohttpd-dev prometheus curl
  libhiredis-dev redis-server
)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# lua-busted runs under /usr/bin/lua; should another Lua have claimed that
# name, point it at 5.4, the only Lua gangway's module loads in.
if update-alternatives --query lua-interpreter >/dev/null 2>&1; then
  $SUDO update-alternatives --set lua-interpreter /usr/bin/lua5.4 >/dev/null
fi
