#!/usr/bin/env bash
# Management API benchmark, in one run against one nginx and one memcached:
#   POST /api single adds (one JSON object each, distinct destinations,
#        journal fdatasync on)  vs  POST opt-outs through the link location
# Target (issue 7): API adds >= 5,000/s on 2 cores, and about the link
# POST's rate (both take one journal line and one memcached write; an API
# add also asks memcached whether the rule exists); then import-sized
# arrays of 10,000 rules, one request at a time and 4 in flight (target:
# 50,000 rules/s, what "optoutctl import" needs).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_setup

bench_nginx "
    client_max_body_size 4m;
    client_body_buffer_size 1m;
    server {
        listen 127.0.0.1:$port;
        location /u/ { optout_link; }
        location = /api { optout_api; }
    }"

# the store counts as seeded: its marker is there
exec 3<>"/dev/tcp/127.0.0.1/$mc_port"
printf 'set optout:marker:0 0 0 1\r\n1\r\nquit\r\n' >&3
cat <&3 >/dev/null
exec 3<&-

seq 100000 199999 | sed 's/^/+1555/' \
    | "$root/build/optoutctl" sign --key "$prefix/conf/link.key" \
        --campaign 7 --base /u > "$prefix/paths.txt"

cat > "$prefix/link.lua" <<LUA
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

# distinct destinations: every request adds a rule and a journal line
cat > "$prefix/api.lua" <<'LUA'
local i = 0
local headers = { ["Content-Type"] = "application/json" }
function setup(thread) thread:set("offset", 5000000 * i); i = i + 1 end
function init(args) n = offset or 0 end
request = function()
    n = n + 1
    return wrk.format("POST", "/api", headers,
        string.format('{"destination":"+1666%07d","campaign":7}', n))
end
LUA

echo "$THREADS wrk threads, $CONNS connections, ${DURATION}s each"

wrk_rate "POST opt-out through a link (journal on)" \
    "http://127.0.0.1:$port/u/" -s "$prefix/link.lua"; link=$rate
wrk_rate "POST /api single add (journal on)" \
    "http://127.0.0.1:$port/api" -s "$prefix/api.lua"; api=$rate

# import-sized requests: arrays of 10,000 new rules
python3 - "$prefix" <<'PY'
import json, sys
for c in range(20):
    items = [{"destination": "+1777%07d" % (c * 10000 + i), "campaign": i,
              "source": "import"} for i in range(10000)]
    open("%s/chunk%02d.json" % (sys.argv[1], c), "w").write(json.dumps(items))
PY
# bulk_rate NAME PARALLEL FILES...: POSTs the files, PARALLEL at a time
bulk_rate() {
    local name=$1 par=$2 start end
    shift 2
    start=$(date +%s.%N)
    printf '%s\n' "$@" | xargs -P "$par" -I{} curl -s -o /dev/null \
        -w '%{http_code}\n' -H 'Content-Type: application/json' \
        --data-binary @{} "http://127.0.0.1:$port/api" \
        | sort | uniq -c | sed 's/^ */    answers: /'
    end=$(date +%s.%N)
    bulk=$(awk -v s="$start" -v e="$end" -v n="$#" \
           'BEGIN { printf "%.0f", n * 10000 / (e - s) }')
    printf '%-44s %12s rules/s\n' "$name" "$bulk"
}

bulk_rate "POST /api 10 x 10,000 rules, one at a time" 1 \
    "$prefix"/chunk0*.json; bulk1=$bulk
bulk_rate "POST /api 10 x 10,000 rules, 4 at a time" 4 \
    "$prefix"/chunk1*.json; bulk4=$bulk

lines=$(wc -l < "$prefix/logs/optout.journal")
added=$(grep -c '"source":"api"\|"source":"import"' \
        "$prefix/logs/optout.journal" || true)

echo
echo "API adds per second:      $(printf '%.0f' "$api") (target >= 5000)," \
     "$(ratio "$api" "$link")x of the link POST rate"
echo "bulk adds per second:     $bulk1 one request at a time, $bulk4 with 4" \
     "in flight (optoutctl import target >= 50000)"
echo "journal lines written:    $lines ($added from the API)"
