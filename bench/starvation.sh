#!/usr/bin/env bash
# Do batches starve single checks and clicks?  One nginx worker (as in
# issue 6), one memcached.  For each configuration:
#   single check p99 (GET, an allowed destination, memcached every time)
#   link POST p99 (distinct destinations, journal fdatasync + memcached)
# measured alone, then again while $FLOOD_CONNS connections send batch
# checks of 10,000 destinations, printed side by side with the ratio.
# The configurations: the default batch limits, and
# "optout_batch_concurrency 1024" (no limit in practice: every batch goes
# straight into the thread pool, as before the limit existed).
# Checks and POSTs run at a moderate load ($LOAD_CONNS connections), so
# that the p99 shows waiting, not saturation.  A non-2xx check is an
# "unavailable" answer (403): a check that timed out.  wrk gives up on a
# request after 2 s ("timed out").  The flood's clients do not honour
# Retry-After: most of its batches are refused with 503 at once, and
# nginx still reads (discards) each refused body.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

WORKERS=${WORKERS:-1}
LOAD_CONNS=${LOAD_CONNS:-8}
FLOOD_CONNS=${FLOOD_CONNS:-64}

bench_setup

allowed_dest=+15005550100
blocked_dest=+15005550001

printf '{"t":1795424400.000,"action":"optout","ns":"","dest":"%s","scope":"account","campaign":"42","source":"api","channel":"sms","client":"","kid":0}\n' \
    "$blocked_dest" > "$prefix/seed.journal"
"$root/build/optoutctl" replay --store "--SERVER=127.0.0.1:$mc_port" \
    --store-secret "$prefix/conf/store.key" "$prefix/seed.journal" >/dev/null

seq 100000 199999 | sed 's/^/+1555/' \
    | "$root/build/optoutctl" sign --key "$prefix/conf/link.key" \
        --campaign 7 --base /u > "$prefix/paths.txt"

{ seq 15005560000 15005569998 | sed 's/^/+/'; echo "$blocked_dest"; } \
    > "$prefix/batch.txt"

cat > "$prefix/batch.lua" <<LUA
local f = assert(io.open("$prefix/batch.txt", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "text/plain"
LUA

cat > "$prefix/post.lua" <<LUA
local paths = {}
for line in io.lines("$prefix/paths.txt") do paths[#paths + 1] = line end
local i = 0
local body = "List-Unsubscribe=One-Click"
local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
function setup(thread) thread:set("offset", #paths / 2 * (i)); i = i + 1 end
function init(args) n = offset or 0 end
request = function()
    n = n + 1
    return wrk.format("POST", paths[(n % #paths) + 1], headers, body)
end
LUA

check_url="http://127.0.0.1:$port/check?to=${allowed_dest/+/%2B}"
link_url="http://127.0.0.1:$port/u/"

server="
    server {
        listen 127.0.0.1:$port;
        client_max_body_size 1m;
        client_body_buffer_size 256k;
        location = /check { optout_check; }
        location /u/ { optout_link; }
    }"

# p99 in ms of a wrk --latency output, and its non-2xx count
p99_ms() {
    awk '$1 == "99%" {
        v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v);
        if (u == "us") v /= 1000; else if (u == "s") v *= 1000;
        else if (u == "m") v *= 60000;
        printf "%.2f", v }' <<<"$1"
}
non2xx() { awk '/Non-2xx/ {n = $NF} END {print n + 0}' <<<"$1"; }
reqs() { awk '$2 == "requests" && $3 == "in" {print $1}' <<<"$1"; }
timeouts() { awk '/Socket errors/ {n = $NF} END {print n + 0}' <<<"$1"; }

load() {
    wrk -t1 -c"$LOAD_CONNS" -d"${DURATION}s" --latency "$@"
}

nginx_stop() {
    local pid
    pid=$(cat "$prefix/logs/nginx.pid")
    kill -QUIT "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$prefix/logs/nginx.pid"
}

# measure NAME: the four measurements against the running nginx
measure() {
    local name=$1 c0 l0 c1 l1 flood flood_pid
    c0=$(load "$check_url")
    l0=$(load "$link_url" -s "$prefix/post.lua")

    wrk -t1 -c"$FLOOD_CONNS" -d"$((2 * DURATION + 3))s" --timeout 30s \
        -s "$prefix/batch.lua" "http://127.0.0.1:$port/check" \
        > "$prefix/flood.out" &
    flood_pid=$!
    sleep 1
    c1=$(load "$check_url")
    l1=$(load "$link_url" -s "$prefix/post.lua")
    wait "$flood_pid"
    flood=$(cat "$prefix/flood.out")

    row "$name" "check p99" "$c0" "$c1" "unavailable"
    row "" "link POST p99" "$l0" "$l1" "failed"
    printf '%-10s %-14s %s\n' "" "flood" \
        "$(reqs "$flood") batches answered, $(non2xx "$flood") of them 503"
}

# row NAME WHAT ALONE IN-FLOOD FAILED-WORD
row() {
    local a b note
    a="$(p99_ms "$3") ms"
    b="$(p99_ms "$4") ms"
    [ "$(reqs "$4")" = "$(timeouts "$4")" ] && b="none"
    note="$5: $(non2xx "$3")/$(reqs "$3") alone, $(non2xx "$4")/$(reqs "$4")"
    note="$note in flood (+$(timeouts "$4") timed out)"
    printf '%-10s %-14s %10s %10s %8s   %s\n' "$1" "$2" "$a" "$b" \
        "$(ratio "$(p99_ms "$4")" "$(p99_ms "$3")")x" "$note"
}

echo "$WORKERS nginx worker(s), 16 threads; checks and POSTs at" \
     "$LOAD_CONNS connections, ${DURATION}s each; flood: $FLOOD_CONNS" \
     "connections of 10,000-destination batches"
printf '%-10s %-14s %10s %10s %8s\n' "limits" "" "alone" "in flood" "ratio"

bench_nginx "$server"
measure "default"
nginx_stop

bench_nginx "optout_batch_concurrency 1024;
$server"
measure "unlimited"
