#!/usr/bin/env bash
# "make run": memcached and nginx with conf-examples/quickstart.conf on
# 127.0.0.1:$PORT (default 8080), in the foreground; Ctrl-C stops both.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run=$root/run
port=${PORT:-8080}
mc_port=${MC_PORT:-11212}

mkdir -p "$run/logs" "$run/tmp"
ln -sfn "$root/build" "$run/modules"
chmod 755 "$run" "$run/tmp"

for k in optout.key store.key; do
    [ -f "$run/$k" ] || "$root/build/optoutctl" keygen "$run/$k"
done

sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$port/" \
    -e "s/127\.0\.0\.1:11212/127.0.0.1:$mc_port/" \
    "$root/conf-examples/quickstart.conf" > "$run/quickstart.conf"

mc_user=()
[ "$(id -u)" = 0 ] && mc_user=(-u nobody)
# -M: a full memcached refuses writes instead of evicting opt-outs
memcached -l 127.0.0.1 -p "$mc_port" -U 0 -M -m 64 "${mc_user[@]}" &
mc_pid=$!
trap 'kill $mc_pid 2>/dev/null || true' EXIT

for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$mc_port") 2>/dev/null && break
    sleep 0.1
done

# memcached starts empty: the journal rebuilds it and seeds every server
touch "$run/logs/optout.journal"
"$root/build/optoutctl" replay --store "--SERVER=127.0.0.1:$mc_port" \
    --store-secret "$run/store.key" "$run/logs/optout.journal"

nginx -t -q -p "$run/" -c "$run/quickstart.conf"

echo
echo "optout quickstart: http://127.0.0.1:$port/u/<token>"
echo "journal:           $run/logs/optout.journal"
echo "a signed link for +15005550006, campaign 1:"
echo
"$root/build/optoutctl" sign --key "$run/optout.key" --key-id 1 \
    --campaign 1 --base "http://127.0.0.1:$port/u" +15005550006
echo
echo "open it (GET shows the page), or opt out as a mail provider would:"
echo "  curl -d List-Unsubscribe=One-Click <link>"
echo "check before sending:"
echo "  curl -i 'http://127.0.0.1:$port/check?to=%2B15005550006&from=ACME'"
echo "then: build/optoutctl get --store \"--SERVER=127.0.0.1:$mc_port\" \\"
echo "        --store-secret run/store.key +15005550006"
echo

nginx -p "$run/" -c "$run/quickstart.conf" -g 'daemon off;'
