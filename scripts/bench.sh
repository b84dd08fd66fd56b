#!/bin/sh
# bench.sh: run the carshare benchmark against already-built optimized binaries.
#
#     scripts/bench.sh [BIN_DIR]
#
# BIN_DIR (or $CARSHARE_BIN; default build-bench/bin) holds carshare-<service> and
# bench-hello, built with -DCMAKE_BUILD_TYPE=Release (`make bench` does both). The work
# is in tests/bench/bench.py, which documents every figure and BENCH_* variable; this
# wrapper only finds the binaries and checks the tools before a long run starts.
#
# BENCH_FAULTS=1 (the default) first runs scripts/bench-faults.sh (tests/bench/faults.py,
# one to two minutes): the figures of issues 3 and 4 under faults, printed before the
# benchmark so that the last line stays the `bench: ...` summary; BENCH_FAULTS=0 skips them.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-${CARSHARE_BIN:-$root/build-bench/bin}}

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: wrk is not installed (apt-get install wrk)" >&2
    exit 1
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "bench: nginx is not installed (apt-get install nginx-light): gateway_vs_nginx will be n/a" >&2
fi
if [ ! -x "$bin/bench-hello" ]; then
    echo "bench: $bin/bench-hello is missing: build the bench-hello target first" >&2
    exit 1
fi

if [ "${BENCH_FAULTS:-1}" = 1 ]; then
    "$root/scripts/bench-faults.sh" "$bin" || echo "bench: the fault measurements failed (exit $?)" >&2
fi

exec python3 "$root/tests/bench/bench.py" "$bin"
