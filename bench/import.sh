#!/usr/bin/env bash
# optoutctl export, replay and import at scale (issues 7 and 9):
#   export: a journal of LINES lines (default 1,000,000) folded into rules
#   replay: the same journal into an emptied memcached
#   import: those rules sent to the management API (optout_api), 4 then 1
#           request in flight, and the API's own journal exported again
#           (same number of rules)
# Each next to the previous approach as a ratio: export and replay by the
# optoutctl of BASE (default d2ce925, built aside), import by --parallel 1.
# Replay runs ROUNDS times (default 3), alternating with BASE: medians.
# Targets: export of 1,000,000 lines in a few seconds; replay >= 300,000
# lines/s; import >= 50,000 rules/s on 2 cores.  Without optout_api in the
# built module, import is not measured.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

LINES=${LINES:-1000000}

bench_setup

# distinct destinations, a third of them sender-scoped, all opt-outs
perl -e '
    my ($n, $t) = (shift, 1795424400);
    my @s = ("", "ACME", "SHOP");
    for my $i (1 .. $n) {
        my $s = $s[$i % 3];
        my $scope = $s eq "" ? q("scope":"account")
                             : qq("scope":"sender","sender":"$s");
        printf qq({"t":%d.%03d,"action":"optout","ns":"","dest":"+4477%08d",)
             . qq(%s,"campaign":"%d","source":"link","channel":"sms",)
             . qq("client":"192.0.2.1","kid":1}\n),
             $t + int($i / 100), $i % 1000, $i, $scope, $i % 97;
    }' "$LINES" > "$prefix/journal.log"

now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" \
             'BEGIN { printf "%.2f s, %.0f/s", b - a, n / (b - a) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
flush() {
    exec 3<>"/dev/tcp/127.0.0.1/$mc_port"
    printf 'flush_all\r\n' >&3
    head -c 4 <&3 >/dev/null
    exec 3<&-
}

# the previous optoutctl (BASE, default the commit before the speed work),
# built aside for the ratios; skipped when it cannot be built
BASE=${BASE:-d2ce925}
old=""
if git -C "$root" archive "$BASE" 2>/dev/null | (mkdir -p "$prefix/old" &&
       tar -x -C "$prefix/old") &&
   make -C "$prefix/old" build/optoutctl >/dev/null 2>&1; then
    old="$prefix/old/build/optoutctl"
fi

# export: wall seconds of one run of $1 (an optoutctl)
export_time() {
    local a b
    a=$(now)
    "$1" export "$prefix/journal.log" > "$prefix/rules.ndjson"
    b=$(now)
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b - a }'
}

# replay into an emptied store: wall seconds of one run of $1
replay_time() {
    local a b
    flush
    a=$(now)
    "$1" replay --store "--SERVER=127.0.0.1:$mc_port" \
        --store-secret "$prefix/conf/store.key" "$prefix/journal.log" \
        > "$prefix/replay.out"
    b=$(now)
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b - a }'
}

lps() { awk -v n="$LINES" -v t="$1" 'BEGIN { printf "%.0f", n / t }'; }

t=$(export_time "$root/build/optoutctl")
rules=$(wc -l < "$prefix/rules.ndjson")
echo "export: $LINES journal lines -> $rules rules in $t s," \
     "$(lps "$t") lines/s"
if [ -n "$old" ]; then
    t0=$(export_time "$old")
    echo "export before ($BASE): $t0 s, $(lps "$t0") lines/s;" \
         "now $(ratio "$t0" "$t")"
    "$root/build/optoutctl" export "$prefix/journal.log" \
        > "$prefix/rules.ndjson"
fi

a=$(now)
"$root/build/optoutctl" export --format csv "$prefix/journal.log" \
    > "$prefix/rules.csv"
b=$(now)
echo "export --format csv: $(rate "$LINES" "$a" "$b")"

# replay: ROUNDS runs (default 3) alternating with BASE's optoutctl, the
# medians compared; an untimed replay first lets memcached grow its hash
# table to a million keys, which the first run would otherwise pay for
ROUNDS=${ROUNDS:-3}
median() { tr ' ' '\n' | grep . | sort -n |
           awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
mc_cpu() { awk '{ print $14 + $15 }' "/proc/$mc_pid/stat"; }

TIMEFORMAT="optoutctl replay CPU: %U s user, %S s system, %R s wall"
c0=$(mc_cpu)
time replay_time "$root/build/optoutctl" > /dev/null
echo "memcached CPU in that replay: $(awk -v a="$c0" -v b="$(mc_cpu)" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }') s"
runs=""
runs0=""
for _ in $(seq "$ROUNDS"); do
    runs="$runs $(replay_time "$root/build/optoutctl")"
    if [ -n "$old" ]; then
        runs0="$runs0 $(replay_time "$old")"
    fi
done
t=$(echo "$runs" | median)
echo "replay: $LINES lines into an emptied memcached in $t s (median of" \
     "$ROUNDS:$runs), $(lps "$t") lines/s (target 300,000/s):" \
     "$(cat "$prefix/replay.out")"
if [ -n "$old" ]; then
    t0=$(echo "$runs0" | median)
    echo "replay before ($BASE): $t0 s (median of $ROUNDS:$runs0)," \
         "$(lps "$t0") lines/s; now $(ratio "$t0" "$t")"
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

cat > "$prefix/conf/probe.conf" <<CONF
load_module $root/build/ngx_http_optout_module.so;
events { }
http { server { location /api { optout_api; } } }
CONF
probe=$(nginx -t -p "$prefix/" -c conf/probe.conf 2>&1 || true)
if grep -q 'unknown directive "optout_api"' <<<"$probe"; then
    echo "import: skipped, the built module has no optout_api directive" \
         "(the management API of issue 7 is not merged yet)"
    exit 0
fi

bench_nginx "
    server {
        listen 127.0.0.1:$port;
        location /api {
            optout_api;
            optout_namespace \$http_x_optout_namespace;
            client_max_body_size 4m;
        }
    }"

# an emptied store, seeded (markers) as for production
seed() {
    flush
    "$root/build/optoutctl" replay --store "--SERVER=127.0.0.1:$mc_port" \
        --store-secret "$prefix/conf/store.key" /dev/null > /dev/null
}
seed

# the client's own CPU time tells whether optoutctl or the API is the limit
TIMEFORMAT="optoutctl import CPU: %U s user, %S s system, %R s wall"
import_time() {
    local a b
    a=$(now)
    "$root/build/optoutctl" import --url "http://127.0.0.1:$port/api" \
        "$@" "$prefix/rules.ndjson" 2>/dev/null >/dev/null
    b=$(now)
    awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b - a }'
}
rps() { awk -v n="$rules" -v t="$1" 'BEGIN { printf "%.0f", n / t }'; }

time t=$(import_time)
echo "import: $rules rules, 4 requests in flight, in $t s, $(rps "$t")" \
     "rules/s (target 50,000/s)"

back=$("$root/build/optoutctl" export "$prefix/logs/optout.journal" | wc -l)
echo "export of the API's journal: $back rules (imported $rules)"

# the previous approach, one request at a time, into an emptied store
seed
t1=$(import_time --parallel 1)
echo "import --parallel 1: $t1 s, $(rps "$t1") rules/s;" \
     "--parallel 4 is $(ratio "$t1" "$t")"

