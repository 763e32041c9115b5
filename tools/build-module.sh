#!/usr/bin/env bash
# Builds build/ngx_http_optout_module.so as a dynamic module for the nginx
# whose source tree is $NGINX_SRC: Debian's nginx-dev tree
# (/usr/share/nginx/src, configured with its conf_flags so the module loads
# into the distro nginx) or any nginx source tree.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
src=${NGINX_SRC:-/usr/share/nginx/src}
work=$root/build/nginx

if [ ! -x "$src/configure" ]; then
    echo "build-module: no nginx source tree at $src" >&2
    echo "  install nginx-dev, or pass NGINX_SRC=/path/to/nginx" >&2
    exit 1
fi

flags=()
if [ -f "$src/conf_flags" ]; then
    # shellcheck disable=SC1091
    . "$src/conf_flags"
    flags=("${NGX_CONF_FLAGS[@]}")
else
    flags=(--with-compat --with-threads)
fi

stamp="$work/.configured"
want="$src ${flags[*]} $(md5sum < "$root/config")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    rm -rf "$work"
    mkdir -p "$work"
    cp -a "$src/." "$work/"
    # nginx's own CFLAGS for gcc already hold -W -Wall -Werror
    (cd "$work" && ./configure "${flags[@]}" \
        --add-dynamic-module="$root" >"$work/configure.log" 2>&1) || {
        tail -n 30 "$work/configure.log" >&2
        exit 1
    }
    echo "$want" > "$stamp"
fi

make -s -C "$work" -f objs/Makefile modules
# a new file, not rewritten in place: a running nginx keeps the old one
cp "$work/objs/ngx_http_optout_module.so" "$root/build/.module.so.tmp"
mv -f "$root/build/.module.so.tmp" "$root/build/ngx_http_optout_module.so"
echo "built build/ngx_http_optout_module.so"
