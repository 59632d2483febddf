#!/usr/bin/env bash
# Installs what building and testing spackfs needs on a fresh Debian 12 machine (as root):
# libclang-dev (sequoia's nettle bindings), a C compiler (the demo and test packages),
# fuse3 (fusermount3 for the mount), python3 (the fixtures' tree-manifest tool); for the
# remote-mirror tests (tests/common/servers.rs): nginx, squid, openssl (the test CA) and curl;
# for the OCI tests (tests/common/registry.rs): docker-registry and htpasswd (apache2-utils);
# for the S3 tests (tests/common/s3.rs): moto's standalone S3 server (with boto3) from PyPI in
# a virtual environment at $SPACKFS_VENV (default ~/.cache/spackfs-venv; needs python3-venv).
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
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
have htpasswd || need+=(apache2-utils)
dpkg -s python3-venv >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "spackfs needs these Debian packages: ${need[*]} (run as root, or install them: apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "==> apt-get install ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The tests start their own nginx, squid and docker-registry: keep the packages from
  # starting the system's.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The tests run their own docker-registry: the system's service must not hold port 5000 or
# run at all (policy-rc.d kept apt from starting it; this also covers an older install).
if [ "$(id -u)" = 0 ] && [ -x /usr/bin/docker-registry ]; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-enabled --quiet docker-registry 2>/dev/null || systemctl is-active --quiet docker-registry 2>/dev/null; then
      echo "==> systemctl disable --now docker-registry" >&2
      systemctl disable --now docker-registry >/dev/null 2>&1 || true
    fi
  elif [ -x /etc/init.d/docker-registry ]; then
    if /etc/init.d/docker-registry status >/dev/null 2>&1; then
      echo "==> /etc/init.d/docker-registry stop" >&2
      /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
    if ls /etc/rc[2-5].d/S*docker-registry >/dev/null 2>&1; then
      update-rc.d docker-registry disable >/dev/null 2>&1 || true
    fi
  fi
fi

# moto's S3 server (and boto3, which the tests' helper scripts use) in a virtual environment
# of Debian's python3, pinned; nothing to do when that version is already there.
MOTO_VERSION=5.2.5
venv="${SPACKFS_VENV:-$HOME/.cache/spackfs-venv}"
stamp="$venv/.spackfs-moto-$MOTO_VERSION"
if [ ! -e "$stamp" ] || [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c 'import boto3, moto' >/dev/null 2>&1; then
  echo "==> python3 -m venv $venv; pip install moto[server]==$MOTO_VERSION" >&2
  mkdir -p "$(dirname "$venv")"
  [ -x "$venv/bin/pip" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  "$venv/bin/python" -c 'import boto3, moto' >/dev/null
  touch "$stamp"
fi
