#!/usr/bin/env bash
# Installs what building and testing need on Debian or Ubuntu, once:
# packages already present are left alone, so this is quick when all is
# there.  Extra packages may be passed as arguments (bench/ asks for wrk).
set -euo pipefail

pkgs=(make gcc clang libclang-rt-dev perl procps openssl
      nginx nginx-dev memcached libmemcached-dev libssl-dev libjansson-dev
      build-essential dpkg-dev debhelper lintian
      prometheus
      libcurl4-openssl-dev libunistring-dev
      "$@")

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
            | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"

sudo=
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || {
        echo "deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    }
    sudo=sudo
fi

export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null

# Debian starts the packaged services; the project runs its own instances
if command -v service >/dev/null; then
    $sudo service nginx stop >/dev/null 2>&1 || true
    $sudo service memcached stop >/dev/null 2>&1 || true
    $sudo service prometheus stop >/dev/null 2>&1 || true
fi
