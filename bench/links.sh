#!/usr/bin/env bash
# Link path benchmarks, in one run against one nginx and one memcached:
#   GET confirmation page  vs  nginx serving a static file of the same size
#   POST opt-outs (journal fdatasync on, distinct destinations)
#        vs  "return 200" on POST, the ceiling
# Targets (issue 2): GET >= 0.8x static; POST >= 5,000/s on 2 cores.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bench_setup

token=$("$root/build/optoutctl" sign --key "$prefix/conf/link.key" \
        --campaign 1 +15005550006)

bench_nginx "
    server {
        listen 127.0.0.1:$port;
        root html;
        location /u/ { optout_link; }
        location = /ceiling { return 200; }
        location = /static.html { }
    }"

size=$(curl -s "http://127.0.0.1:$port/u/$token" | wc -c)
head -c "$size" /dev/zero | tr '\0' 'x' > "$prefix/html/static.html"

# distinct destinations, so every POST adds a rule and a journal line
seq 100000 199999 | sed 's/^/+1555/' \
    | "$root/build/optoutctl" sign --key "$prefix/conf/link.key" \
        --campaign 7 --base /u > "$prefix/paths.txt"

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
cat > "$prefix/ceiling.lua" <<'LUA'
wrk.method = "POST"
wrk.body = "List-Unsubscribe=One-Click"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
LUA

echo "page size: $size bytes; $THREADS wrk threads, $CONNS connections," \
     "${DURATION}s each"

wrk_rate "static file of the same size" \
    "http://127.0.0.1:$port/static.html"; static=$rate
wrk_rate "GET confirmation page (optout_link)" \
    "http://127.0.0.1:$port/u/$token"; page=$rate
wrk_rate "POST return 200 (ceiling)" \
    "http://127.0.0.1:$port/ceiling" -s "$prefix/ceiling.lua"; ceil=$rate
wrk_rate "POST opt-out (journal fdatasync + memcached)" \
    "http://127.0.0.1:$port/u/" -s "$prefix/post.lua"; post=$rate

lines=$(wc -l < "$prefix/logs/optout.journal")

echo
echo "GET page / static file:   $(ratio "$page" "$static")x (target >= 0.80)"
echo "POST opt-outs per second: $(printf '%.0f' "$post")" \
     "(target >= 5000), $(ratio "$post" "$ceil")x of the POST ceiling"
echo "journal lines written:    $lines"
