#!/usr/bin/env bash
# Installs what building and testing spackfs needs on a fresh Debian 12 machine (as root):
# libclang-dev (sequoia's nettle bindings), a C compiler (the demo and test packages),
# fuse3 (fusermount3 for the mount), python3 (the fixtures' tree-manifest tool); for the
# remote-mirror tests (tests/common/servers.rs): nginx, squid, openssl (the test CA) and curl.
set -euo pipefail
# nginx and squid live in /usr/sbin, which is not on a non-root user's PATH.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
need=()
[ -e /usr/lib/llvm-14/lib/libclang.so ] || ls /usr/lib/llvm-*/lib/libclang*.so >/dev/null 2>&1 || need+=(libclang-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s nettle-dev >/dev/null 2>&1 || need+=(nettle-dev)
have nginx || need+=(nginx)
have squid || need+=(squid)
have openssl || need+=(openssl)
have curl || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "spackfs needs these Debian packages: ${need[*]} (run as root, or install them: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "==> apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own nginx and squid: keep the packages from starting the system's.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
