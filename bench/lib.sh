# Shared by the bench/ scripts: a scratch prefix with our own memcached and
# nginx on free loopback ports, wrk runs and ratio printing.  Sourced.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}

free_port() {
    python3 - <<'PY' 2>/dev/null || perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen=>1,LocalAddr=>"127.0.0.1")->sockport'
import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

bench_setup() {
    prefix=$(mktemp -d /tmp/optout-bench.XXXXXX)
    chmod 755 "$prefix"
    mkdir -p "$prefix/logs" "$prefix/conf" "$prefix/html" "$prefix/tmp"
    port=$(free_port)
    mc_port=$(free_port)
    local user=()
    [ "$(id -u)" = 0 ] && user=(-u nobody)
    memcached -l 127.0.0.1 -p "$mc_port" -U 0 -t 1 -m 256 "${user[@]}" &
    mc_pid=$!
    trap bench_teardown EXIT
    "$root/build/optoutctl" keygen "$prefix/conf/link.key" >/dev/null
    "$root/build/optoutctl" keygen "$prefix/conf/store.key" >/dev/null
}

# bench_nginx HTTP_BODY: writes and starts nginx with the body inside http{}
bench_nginx() {
    cat > "$prefix/conf/nginx.conf" <<CONF
load_module ${MODULE:-$root/build/ngx_http_optout_module.so};
worker_processes ${WORKERS:-2};
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
$1
}
CONF
    nginx -p "$prefix/" -c conf/nginx.conf
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench: nginx did not start" >&2
    cat "$prefix/logs/error.log" >&2
    return 1
}

bench_teardown() {
    [ -f "$prefix/logs/nginx.pid" ] \
        && kill "$(cat "$prefix/logs/nginx.pid")" 2>/dev/null
    kill "$mc_pid" 2>/dev/null
    sleep 0.3
    if [ -z "${KEEP:-}" ]; then rm -rf "$prefix"; fi
}

# wrk_run URL [wrk args...]: one wrk run with $THREADS threads (at most
# $CONNS) and $CONNS connections; leaves requests/s in $rate, the p99 as
# wrk prints it in $p99 and in microseconds in $p99_us, the number of
# answers in $requests, and the non-2xx
# answers plus socket errors (connect, read, write, timeout) in $errors
wrk_run() {
    local url=$1
    shift
    local out threads=$THREADS
    [ "$threads" -gt "$CONNS" ] && threads=$CONNS
    out=$(wrk -t"$threads" -c"$CONNS" -d"${DURATION}s" --latency "$@" "$url")
    rate=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    requests=$(awk '/ requests in / {print $1}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    p99_us=$(awk -v v="$p99" 'BEGIN {
        m = 1
        if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000
        else if (v ~ /m$/) m = 60000000; else if (v ~ /s$/) m = 1000000
        printf "%.0f", v * m }')
    errors=$(awk '/Non-2xx/ {n += $NF}
        /Socket errors/ {
            for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i + 0 }
        END {print n + 0}' <<<"$out")
}

# wrk_rate NAME URL [wrk args...]: prints and returns requests/s in $rate
wrk_rate() {
    local name=$1 url=$2
    shift 2
    local note=
    wrk_run "$url" "$@"
    [ "$errors" != 0 ] && note="non-2xx or errors: $errors"
    printf '%-44s %12.0f req/s   p99 %-8s %s\n' "$name" "$rate" "$p99" \
        "$note"
}

# mc_stat NAME: one counter of our memcached's "stats"
mc_stat() {
    local line
    exec 9<>"/dev/tcp/127.0.0.1/$mc_port"
    printf 'stats\r\nquit\r\n' >&9
    while IFS=$' \r' read -r -a line <&9; do
        if [ "${line[1]:-}" = "$1" ]; then
            echo "${line[2]}"
            break
        fi
    done
    exec 9<&-
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }'
}
