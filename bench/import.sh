#!/usr/bin/env bash
# optoutctl export and import at scale (issue 7):
#   export: a journal of LINES lines (default 1,000,000) folded into rules
#   import: those rules sent to the management API (optout_api), and the
#           API's own journal exported again (same number of rules)
# Targets: export of 1,000,000 lines in a few seconds; import >= 50,000
# rules/s on 2 cores.  Without optout_api in the built module, only the
# export is measured.
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

a=$(now)
"$root/build/optoutctl" export "$prefix/journal.log" > "$prefix/rules.ndjson"
b=$(now)
rules=$(wc -l < "$prefix/rules.ndjson")
echo "export: $LINES journal lines -> $rules rules" \
     "in $(rate "$LINES" "$a" "$b")"

a=$(now)
"$root/build/optoutctl" export --format csv "$prefix/journal.log" \
    > "$prefix/rules.csv"
b=$(now)
echo "export --format csv: $(rate "$LINES" "$a" "$b")"

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

# seed the store (markers), as for production
"$root/build/optoutctl" replay --store "--SERVER=127.0.0.1:$mc_port" \
    --store-secret "$prefix/conf/store.key" /dev/null > /dev/null

# the client's own CPU time tells whether optoutctl or the API is the limit
TIMEFORMAT="optoutctl import CPU: %U s user, %S s system, %R s wall"
a=$(now)
time "$root/build/optoutctl" import --url "http://127.0.0.1:$port/api" \
    "$prefix/rules.ndjson" 2>/dev/null
b=$(now)
echo "import: $rules rules in $(rate "$rules" "$a" "$b") (target 50,000/s)"

back=$("$root/build/optoutctl" export "$prefix/logs/optout.journal" | wc -l)
echo "export of the API's journal: $back rules (imported $rules)"
