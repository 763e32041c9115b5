#!/usr/bin/env bash
# Send-time check benchmarks, in one run against one nginx and one memcached
# (one server block and port per variant), keepalive connections.
#
# First, latency at every load: at each of $LEVELS connections,
#   (b) stock memcached_pass asking memcached for a key that is not there
#       (not found -> error_page 404 -> 204), the baseline round trip
#   (c) optout_check, cache miss: allowed destinations (allowed answers
#       are not cached by default), one memcached lookup per request
# both with a distinct destination in every request (a wrk Lua script): one
# repeated destination would flatter coalescing.  One table: req/s and p99
# of each, the ratio of the rates, and whether the p99 of (c) is no worse
# than that of (b).  Then, at $CONNS connections:
#   (a) "return 204", the ceiling
#   (d) optout_check, cache hit: a blocked destination, answered from the
#       optout_cache zone (403 JSON)
#   (e) batch: POST of 1,000 destinations per request (destinations/s)
# Settings (environment): LEVELS (connections, "1 4 8 16 64 256"), ROUNDS
# (3), DURATION (seconds a run, 10), WORKERS (2), CONNS (64, for (a) (d)
# (e)), CHECK_CONCURRENCY (optout_check_concurrency, else its default),
# MODULE (the .so to load, build/ngx_http_optout_module.so: to compare
# builds with the same script), BASE (another build's .so: a second nginx
# with the same configuration loads it, on the same memcached, and its
# cache miss (c') and batches (e') run in turn with the others, so that
# both builds meet the same load from elsewhere on the machine).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_setup

port_a=$port
port_b=$(free_port)
port_c=$(free_port)
port_e=$(free_port)

LEVELS=${LEVELS:-1 4 8 16 64 256}

allowed_dest=+15005550100
blocked_dest=+15005550001

# CHECK_CONCURRENCY=N: optout_check_concurrency N (the default otherwise)
bench_nginx "
    optout_cache zone=bench:16m blocked=10m;
    ${CHECK_CONCURRENCY:+optout_check_concurrency $CHECK_CONCURRENCY;}

    upstream mc {
        server 127.0.0.1:$mc_port;
        keepalive 256;
    }

    server {
        listen 127.0.0.1:$port_a;
        location = /ceiling { return 204; }
    }

    server {
        listen 127.0.0.1:$port_b;
        location = /mc {
            set \$memcached_key \"bench:\$arg_to\";
            memcached_pass mc;
            error_page 404 = @allowed;
        }
        location @allowed { return 204; }
    }

    server {
        listen 127.0.0.1:$port_c;
        location = /check { optout_check; }
    }

    server {
        listen 127.0.0.1:$port_e;
        client_max_body_size 1m;
        client_body_buffer_size 64k;
        location = /check { optout_check; }
    }"

# BASE: the same nginx again, with the other build, on other ports
base_c= base_e=
if [ -n "${BASE:-}" ]; then
    base_c=$(free_port) base_e=$(free_port)
    mkdir -p "$prefix/base/conf" "$prefix/base/logs" "$prefix/base/tmp"
    cp "$prefix/conf/"*.key "$prefix/base/conf/"
    sed -e "s|^load_module .*|load_module $BASE;|" \
        -e "s|127.0.0.1:$port_a;|127.0.0.1:$(free_port);|" \
        -e "s|127.0.0.1:$port_b;|127.0.0.1:$(free_port);|" \
        -e "s|127.0.0.1:$port_c;|127.0.0.1:$base_c;|" \
        -e "s|127.0.0.1:$port_e;|127.0.0.1:$base_e;|" \
        "$prefix/conf/nginx.conf" > "$prefix/base/conf/nginx.conf"
    nginx -p "$prefix/base/" -c conf/nginx.conf
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$base_c") 2>/dev/null && break
        sleep 0.1
    done
    trap 'kill "$(cat "$prefix/base/logs/nginx.pid")" 2>/dev/null;
          bench_teardown' EXIT
fi

# seed the store: markers, and one opt-out for the cache-hit variant
printf '{"t":1795424400.000,"action":"optout","ns":"","dest":"%s","scope":"account","campaign":"42","source":"api","channel":"sms","client":"","kid":0}\n' \
    "$blocked_dest" > "$prefix/seed.journal"
"$root/build/optoutctl" replay --store "--SERVER=127.0.0.1:$mc_port" \
    --store-secret "$prefix/conf/store.key" "$prefix/seed.journal"

# sanity: every variant answers what it should before it is measured
expect() {
    local want=$1 url=$2 got
    got=$(curl -s -o /dev/null -w '%{http_code}' "$url")
    if [ "$got" != "$want" ]; then
        echo "bench: $url answered $got, expected $want" >&2
        curl -si "$url" >&2 || true
        exit 1
    fi
}
enc_allowed=${allowed_dest/+/%2B}
enc_blocked=${blocked_dest/+/%2B}
expect 204 "http://127.0.0.1:$port_a/ceiling"
expect 204 "http://127.0.0.1:$port_b/mc?to=$enc_allowed"
expect 204 "http://127.0.0.1:$port_c/check?to=$enc_allowed"
expect 403 "http://127.0.0.1:$port_c/check?to=$enc_blocked"
[ -n "$base_c" ] && expect 204 "http://127.0.0.1:$base_c/check?to=$enc_allowed"

# 1,000 distinct destinations per batch, none with a rule
seq 15005560000 15005560999 | sed 's/^/+/' > "$prefix/batch.txt"
batch=$(curl -s -X POST -H 'Content-Type: text/plain' \
        --data-binary @"$prefix/batch.txt" "http://127.0.0.1:$port_e/check")
case $batch in
    *'"checked":1000'*) ;;
    *) echo "bench: batch answered: ${batch:0:300}" >&2; exit 1 ;;
esac

cat > "$prefix/batch.lua" <<LUA
local f = assert(io.open("$prefix/batch.txt", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "text/plain"
LUA

# a distinct destination in every request: +19TTNNNNNNNNN, TT the wrk
# thread, N a counter of its requests; none of them has a rule
cat > "$prefix/distinct.lua" <<'LUA'
local threads = 0
local n = 0

function setup(thread)
    threads = threads + 1
    thread:set("tid", threads)
end

function request()
    n = n + 1
    return wrk.format("GET", string.format("%s%%2B19%02d%09d",
                                           wrk.path, tid, n))
end
LUA

expect 204 "http://127.0.0.1:$port_c/check?to=%2B190100000001"

median() {
    tr ' ' '\n' | grep . | sort -g \
        | awk '{ v[NR] = $1 }
               END { m = (NR % 2) ? v[(NR + 1) / 2] \
                                  : (v[NR / 2] + v[NR / 2 + 1]) / 2
                     printf "%.0f", m }'
}

ms() {
    awk -v us="$1" 'BEGIN { printf "%.2f ms", us / 1000 }'
}

# one row at $CONNS connections: $ROUNDS rounds of (b) and (c), and of
# (c') with BASE, the order rotating, so that a burst of load from
# elsewhere on the machine hits each; the medians of the rates and of the
# p99s.  Every multi-get of (c) finds exactly one key, the marker (no
# destination has a rule), so memcached's get_hits counts the multi-gets:
# checks per multi-get is how much coalescing there was (counted over the
# runs of (c) only)
level_row() {
    local i j b_rates= b_p99s= c_rates= c_p99s= x_rates= x_p99s= err=0
    local b c bp cp x xp hits0 hits=0 checks=0 order v
    local lua=(-s "$prefix/distinct.lua")
    local -A url=([b]="http://127.0.0.1:$port_b/mc?to="
                  [c]="http://127.0.0.1:$port_c/check?to="
                  [x]="http://127.0.0.1:$base_c/check?to=")

    order=(b c)
    [ -n "$base_c" ] && order+=(x)

    for ((i = 0; i < ROUNDS; i++)); do
        for ((j = 0; j < ${#order[@]}; j++)); do
            v=${order[$(( (i + j) % ${#order[@]} ))]}
            hits0=$(mc_stat get_hits)
            wrk_run "${url[$v]}" "${lua[@]}"
            err=$((err + errors))
            case $v in
            b) b_rates+=" $rate" b_p99s+=" $p99_us" ;;
            c) c_rates+=" $rate" c_p99s+=" $p99_us"
               checks=$((checks + requests))
               hits=$((hits + $(mc_stat get_hits) - hits0)) ;;
            x) x_rates+=" $rate" x_p99s+=" $p99_us" ;;
            esac
        done
    done

    b=$(median <<<"$b_rates") bp=$(median <<<"$b_p99s")
    c=$(median <<<"$c_rates") cp=$(median <<<"$c_p99s")

    printf '| %5s | %8s | %9s | %8s | %9s | %5sx | %-3s | %5s |' \
        "$CONNS" "$b" "$(ms "$bp")" "$c" "$(ms "$cp")" "$(ratio "$c" "$b")" \
        "$([ "$cp" -le "$bp" ] && echo yes || echo no)" \
        "$(ratio "$checks" "$hits")"
    if [ -n "$base_c" ]; then
        x=$(median <<<"$x_rates") xp=$(median <<<"$x_p99s")
        printf ' %8s | %9s | %5sx | %5sx |' "$x" "$(ms "$xp")" \
            "$(ratio "$x" "$b")" "$(ratio "$c" "$x")"
    fi
    echo
    [ "$err" = 0 ] || echo "bench: $err non-2xx answers or socket errors" >&2
}

ROUNDS=${ROUNDS:-3}

echo "median of $ROUNDS rounds of ${DURATION}s, up to $THREADS wrk threads," \
     "${WORKERS:-2} nginx workers, a distinct destination per request"
echo
if [ -n "$base_c" ]; then
    echo "| conns | (b) memcached_pass req/s | p99 | (c) optout_check miss" \
         "req/s | p99 | (c)/(b) | p99 (c) <= (b) | checks per multi-get" \
         "| (c') BASE miss req/s | p99 | (c')/(b) | (c)/(c') |"
    echo "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"
else
    echo "| conns | (b) memcached_pass req/s | p99 | (c) optout_check miss" \
         "req/s | p99 | (c)/(b) | p99 (c) <= (b) | checks per multi-get |"
    echo "|---:|---:|---:|---:|---:|---:|---|---:|"
fi
top=$CONNS
for CONNS in $LEVELS; do
    level_row
done
CONNS=$top

echo
echo "at $CONNS connections:"
wrk_rate "(a) return 204 (ceiling)" \
    "http://127.0.0.1:$port_a/ceiling"; ceil=$rate
wrk_rate "(d) optout_check, blocked (cache hit; 403s)" \
    "http://127.0.0.1:$port_c/check?to=$enc_blocked"; hit=$rate
wrk_rate "(e) batch, 1,000 destinations per POST" \
    "http://127.0.0.1:$port_e/check" -s "$prefix/batch.lua"
# only the 200s count: a batch refused with 503 (queue full) checked nothing
batchrate=$(awk -v r="$rate" -v n="$requests" -v e="$errors" \
            'BEGIN { printf "%.0f", (n > 0) ? r * (n - e) / n : 0 }')
if [ -n "$base_e" ]; then
    wrk_rate "(e') BASE batch, 1,000 destinations per POST" \
        "http://127.0.0.1:$base_e/check" -s "$prefix/batch.lua"
    basebatch=$(awk -v r="$rate" -v n="$requests" -v e="$errors" \
                'BEGIN { printf "%.0f", (n > 0) ? r * (n - e) / n : 0 }')
fi

echo
echo "(d)/(a) cache hit / ceiling:     $(ratio "$hit" "$ceil")x"
echo "(e) batches answered 200:        $batchrate/s"
echo "(e) destinations per second:     $((batchrate * 1000))"
if [ -n "$base_e" ]; then
    echo "(e') BASE batches answered 200:  $basebatch/s"
fi
