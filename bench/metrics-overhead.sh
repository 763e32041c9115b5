#!/usr/bin/env bash
# What optout_metrics costs the hot paths: the same send-time checks (a
# cache hit answering "blocked", a cache miss answering "allowed") against
# two nginx, one with the module built from BASE (default: the commit
# before optout_metrics) and one with this tree's build/, alternating wrk
# runs.  Throughput on a shared machine is noisy; the worker's CPU time per
# request (utime + stime of the one worker over the run) is the figure to
# compare.  Not part of "make bench".
#
#   bash bench/metrics-overhead.sh [BASE]      DURATION=5 ROUNDS=4 CONNS=64
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
first=$(git -C "$root" log --reverse --format=%H \
          -S'ngx_http_optout_metric' -- src/ngx_http_optout_module.h | head -1)
rev=${1:-$first^}
D=${DURATION:-5}; N=${ROUNDS:-4}; C=${CONNS:-64}

. "$root/bench/lib.sh"

base=$(mktemp -d /tmp/optout-base.XXXXXX)
git -C "$root" archive "$rev" | tar -x -C "$base"
make -C "$base" module >/dev/null

bench_setup
echo -n > "$prefix/empty.journal"
sleep 0.3
"$root/build/optoutctl" replay --store "--SERVER=127.0.0.1:$mc_port" \
    --store-secret "$prefix/conf/store.key" "$prefix/empty.journal" \
    >/dev/null

declare -A port
for v in base metrics; do
    so=$([ $v = base ] && echo "$base" || echo "$root")/build
    mkdir -p "$prefix/$v/conf" "$prefix/$v/logs" "$prefix/$v/tmp"
    cp "$prefix/conf/store.key" "$prefix/conf/link.key" "$prefix/$v/conf/"
    port[$v]=$(free_port)
    cat > "$prefix/$v/conf/nginx.conf" <<CONF
load_module $so/ngx_http_optout_module.so;
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events { worker_connections 4096; }
thread_pool optout threads=16;
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path tmp;
    optout_store "--SERVER=127.0.0.1:$mc_port";
    optout_store_secret store.key;
    optout_secret 1 link.key;
    optout_journal logs/optout.journal;
    optout_thread_pool optout;
    optout_cache zone=c:16m blocked=10m;
    server {
        listen 127.0.0.1:${port[$v]};
        location = /check { optout_check; }
        location /u/ { optout_link; }
    }
}
CONF
    nginx -p "$prefix/$v/" -c conf/nginx.conf
done

stop_both() {
    for v in base metrics; do
        nginx -p "$prefix/$v/" -c conf/nginx.conf -s stop 2>/dev/null || true
    done
    rm -rf "$base"
    bench_teardown
}
trap stop_both EXIT
sleep 0.5

# one blocked destination, recorded through each nginx
tok=$(perl -I"$root/t/lib" -MOptoutTest -e '
    open my $f, "<", $ARGV[0] or die; chomp(my $k = <$f>);
    print OptoutTest::mint(key => $k, key_id => 1, campaign => 1,
                           dest => "+15005550001");' "$prefix/conf/link.key")
for v in base metrics; do
    curl -s -o /dev/null -d 'List-Unsubscribe=One-Click' \
        "http://127.0.0.1:${port[$v]}/u/$tok"
done

cpu_ticks() {
    local w
    w=$(pgrep -P "$(cat "$prefix/$1/logs/nginx.pid")" | head -1)
    awk '{ print $14 + $15 }' "/proc/$w/stat"
}

run() {
    local v=$1 url=$2 c0 c1 out
    c0=$(cpu_ticks "$v")
    out=$(wrk -t1 -c"$C" -d"${D}s" --latency "$url")
    c1=$(cpu_ticks "$v")
    echo "$out" | awk -v v="$v" -v t=$((c1 - c0)) \
        -v hz="$(getconf CLK_TCK)" '
        /requests in/  { n = $1 }
        /Requests\/sec/ { r = $2 }
        / 99%/         { p = $2 }
        END { printf "%-8s %9s req/s  p99 %8s  CPU %6.2f us/request\n",
                     v, r, p, t * 1e6 / hz / n }'
}

for q in "to=%2B15005550001 (cache hit, blocked)" \
         "to=%2B15005550100 (cache miss, allowed)"
do
    echo "== /check?${q%% *} ${q#* }, wrk -t1 -c$C -d${D}s, 1 worker each"
    for _ in $(seq "$N"); do
        run base "http://127.0.0.1:${port[base]}/check?${q%% *}"
        run metrics "http://127.0.0.1:${port[metrics]}/check?${q%% *}"
    done
done
