#!/usr/bin/env bash
# Inbound keyword webhooks (issue 8), in one run against one nginx and one
# memcached:
#   POST /inbound: optout_inbound, generic JSON, verification on (hmac
#        scheme: HMAC-SHA256 of the body in X-Signature), a distinct
#        subscriber in every request, one message in STOP_EVERY a STOP
#        (journal fdatasync + memcached write), the others ordinary text
#   vs the same requests to a plain "return 200" location.
# The signatures are precomputed by python3 (the key is the bench's own)
# and read by the wrk Lua script.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

MESSAGES=${MESSAGES:-300000}
STOP_EVERY=${STOP_EVERY:-4}

bench_setup
"$root/build/optoutctl" keygen "$prefix/conf/hmac.key" >/dev/null

bench_nginx "
    client_max_body_size 16k;
    client_body_buffer_size 16k;
    server {
        listen 127.0.0.1:$port;
        location = /plain { return 200; }
        location = /inbound {
            optout_inbound;
            optout_inbound_verify hmac hmac.key header=X-Signature;
        }
    }"

# the store counts as seeded: its marker is there
exec 3<>"/dev/tcp/127.0.0.1/$mc_port"
printf 'set optout:marker:0 0 0 1\r\n1\r\nquit\r\n' >&3
cat <&3 >/dev/null
exec 3<&-

# one line a message: signature, a tab, the body
python3 - "$prefix" "$MESSAGES" "$STOP_EVERY" <<'PY'
import hashlib, hmac, json, sys
prefix, n, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
key = open(prefix + "/conf/hmac.key", "rb").read().rstrip(b"\r\n")
texts = ["Hi, are you open tomorrow at 9?", "Thanks!",
         "Can I change my appointment to Friday afternoon?"]
with open(prefix + "/inbound.txt", "w") as out:
    for i in range(n):
        text = "STOP" if i % every == 0 else texts[i % len(texts)]
        body = json.dumps({"from": "+1555%07d" % i, "to": "+15550000000",
                           "text": text}, separators=(",", ":"))
        sig = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
        out.write(sig + "\t" + body + "\n")
PY

cat > "$prefix/inbound.lua" <<LUA
local sigs, bodies = {}, {}
for line in io.lines("$prefix/inbound.txt") do
    local tab = line:find("\t", 1, true)
    sigs[#sigs + 1] = line:sub(1, tab - 1)
    bodies[#bodies + 1] = line:sub(tab + 1)
end
local i = 0
function setup(thread)
    thread:set("offset", math.floor(#bodies / $THREADS) * i)
    i = i + 1
end
function init(args) n = offset or 0 end
request = function()
    n = n + 1
    local k = (n % #bodies) + 1
    return wrk.format("POST", nil, { ["Content-Type"] = "application/json",
                                     ["X-Signature"] = sigs[k] }, bodies[k])
end
LUA

echo "$THREADS wrk threads, $CONNS connections, ${DURATION}s each;" \
     "1 message in $STOP_EVERY is a STOP"

wrk_rate "POST return 200 (same requests)" \
    "http://127.0.0.1:$port/plain" -s "$prefix/inbound.lua"; plain=$rate
wrk_rate "POST optout_inbound, hmac verified" \
    "http://127.0.0.1:$port/inbound" -s "$prefix/inbound.lua"
inbound=$rate
bad=$errors

lines=$(wc -l < "$prefix/logs/optout.journal")

echo
echo "inbound webhooks per second: $(printf '%.0f' "$inbound")," \
     "$(ratio "$inbound" "$plain")x of return 200"
echo "journal lines written:       $lines (STOPs acted on)"
echo "non-2xx or socket errors:     $bad (must be 0: every signature verified)"
