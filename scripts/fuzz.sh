#!/usr/bin/env bash
# fuzz.sh: builds the libFuzzer targets (tests/fuzz/, clang with ASan+UBSan)
# and runs each for FUZZ_SECONDS (default 600; `make test` runs 10). Each
# target starts from its checked-in seeds (tests/fuzz/corpus/<target>) plus
# what earlier runs found (build-fuzz/corpus/<target>, kept between runs).
# Prints one line per target: execs, corpus size, coverage, and the verdict;
# a crash, leak, sanitizer report or timeout fails the run, with the input
# saved under build-fuzz/findings/ and the target's own message shown.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
EACH=${FUZZ_SECONDS:-600}

CC=clang cmake -S . -B build-fuzz -DCARSHARE_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "$JOBS"
mkdir -p build-fuzz/findings

stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

# One target, its verdict line and any finding in build-fuzz/result-<target>;
# JOBS of them at once, one core each (a target is a single process), so the
# run takes ~count / JOBS * FUZZ_SECONDS: on CI's 2 cores, 10 targets x 10 s
# went from 124 s in sequence to ~60 s, each target's execs unchanged.
run_target() {
  local bin=$1 target=${1##*/fuzz_}
  local work=build-fuzz/corpus/$target log=build-fuzz/fuzz-$target.log
  local out=build-fuzz/result-$target verdict
  mkdir -p "$work"
  # -close_fd_mask=2: the services' log lines would cost more than the inputs;
  # libFuzzer's and the sanitizers' reports still reach the log.
  if "$bin" -max_total_time="$EACH" -timeout=10 -rss_limit_mb=2048 -close_fd_mask=2 \
       -print_final_stats=1 -artifact_prefix="build-fuzz/findings/$target-" \
       "$work" "tests/fuzz/corpus/$target" >"$log" 2>&1; then
    verdict=clean
  else
    verdict=FAILED
  fi
  {
    printf 'fuzz: target=%s execs=%s seconds=%s corpus=%s cov=%s %s\n' "$target" \
      "$(stat number_of_executed_units "$log")" "$EACH" "$(ls "$work" | wc -l)" \
      "$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log" | tail -1)" "$verdict"
    if [ "$verdict" = FAILED ]; then
      grep -E "ERROR|SUMMARY|artifact" "$log" | head -5 || true
      for input in build-fuzz/findings/"$target"-*; do
        [ -f "$input" ] || continue
        echo "--- $input, run again with the target's own messages:"
        "$bin" "$input" 2>&1 | grep -v "^INFO\|Running\|Executed" | head -30 || true
      done
    fi
  } >"$out"
}

rm -f build-fuzz/result-*
running=0
for bin in build-fuzz/bin/fuzz_*; do
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_target "$bin" &
  running=$((running + 1))
done
wait

failed=0
for bin in build-fuzz/bin/fuzz_*; do
  out=build-fuzz/result-${bin##*/fuzz_}
  if [ -f "$out" ]; then cat "$out"; else echo "fuzz: target=${bin##*/fuzz_} no result"; failed=1; fi
  grep -q ' FAILED$' "$out" 2>/dev/null && failed=1
done
exit $failed
