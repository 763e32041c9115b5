#!/usr/bin/env bash
# "make bench": every benchmark in bench/, each printing its ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh wrk curl python3
for b in bench/links.sh bench/check.sh bench/starvation.sh bench/api.sh \
         bench/import.sh bench/inbound.sh; do
    echo "== $b"
    bash "$b"
done
