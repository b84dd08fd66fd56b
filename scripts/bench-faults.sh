#!/bin/sh
# bench-faults.sh: measure carshare under faults (issues 3 and 4) against optimized binaries.
#
#     scripts/bench-faults.sh [BIN_DIR]
#
# BIN_DIR (or $CARSHARE_BIN; default build-bench/bin) holds carshare-<service>, built with
# -DCMAKE_BUILD_TYPE=Release (`make bench` builds them). The work is in
# tests/bench/faults.py, which documents every figure and FAULTS_* variable: the lag from a
# rental's 201 to the customer page showing Shipped, the outbox drain rate after a bus outage,
# the answer times when payment hangs and while the breaker is open, the recovery time after
# payment returns, and a burst of 10x the payment bulkhead (answers, worst latency, largest
# RSS). It reports and never judges; it takes one to two minutes. The figures are also
# written as JSON (FAULTS_OUT, default faults.json next to the binaries' build directory).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARSHARE_BIN:-$root/build-bench/bin}}

if [ ! -x "$bin/carshare-order" ]; then
    echo "faults: $bin/carshare-order is missing: build with -DCMAKE_BUILD_TYPE=Release first" >&2
    exit 1
fi

exec python3 "$root/tests/bench/faults.py" "$bin"
