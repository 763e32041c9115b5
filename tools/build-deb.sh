#!/usr/bin/env bash
# Builds the Debian packages (libnginx-mod-http-optout and optoutctl) with
# dpkg-buildpackage from a copy of the work tree, so the tree itself stays
# untouched: the files git tracks or would track (uncommitted edits
# included, ignored files such as build/ left out) are copied to
# $DEB_DIR/src, and the .deb, .buildinfo and .changes land in $DEB_DIR
# (default build/deb).  Needs debhelper, dpkg-dev and nginx-dev
# (make deps installs them).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${DEB_DIR:-$root/build/deb}

mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$out/src

rm -rf "$src"
rm -f "$out"/*.deb "$out"/*.buildinfo "$out"/*.changes
mkdir -p "$src"

cd "$root"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # files deleted in the work tree but still tracked are skipped
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do
              [ -e "$f" ] && printf '%s\0' "$f"
          done \
        | tar --null -T - -cf - | tar -C "$src" -xf -
else
    tar --exclude=./build --exclude='./t/servroot*' -cf - . \
        | tar -C "$src" -xf -
fi

cd "$src"
# -b: binary packages only; -us -uc: nothing to sign
if ! dpkg-buildpackage -b -us -uc >"$out/build.log" 2>&1; then
    tail -n 40 "$out/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed, see $out/build.log" >&2
    exit 1
fi

cd "$out"
rm -rf "$src"
ls -1 "$out"/*.deb
