#!/usr/bin/env bash
# test.sh: the whole test suite, as `make test` and CI run it.
#  1. gcc build (RelWithDebInfo): unit and end-to-end tests (ctest);
#  2. gcc build with AddressSanitizer + UndefinedBehaviorSanitizer: the same tests;
#  3. clang build with -Werror (compiles everything; the warnings differ from gcc's);
#  4. the libFuzzer targets (tests/fuzz/), each briefly (FUZZ_SECONDS, default 10 here);
#  5. the browser test (Playwright driving Debian's chromium) against the build of step 1;
#  6. the container tests (scripts/test-containers.sh): images from the build of step 1, the
#     rendered Kubernetes manifests, the dev overlay running under podman kube play.
# Stops at the first failing step and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
start=$(date +%s)

step() { printf '\n=== %s (%ds)\n' "$*" $(( $(date +%s) - start )); }

step "build (gcc)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$JOBS"

step "tests (gcc build)"
ctest --test-dir build --output-on-failure -j "$JOBS" --timeout 600

step "build (gcc, ASan+UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCARSHARE_SANITIZE=ON >/dev/null
cmake --build build-asan -j "$JOBS"

step "tests (ASan+UBSan build)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=86}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
ctest --test-dir build-asan --output-on-failure -j "$JOBS" --timeout 900
unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS

step "build (clang, -Werror)"
CC=clang cmake -S . -B build-clang -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-clang -j "$JOBS"

step "fuzz targets (clang, libFuzzer, ASan+UBSan), ${FUZZ_SECONDS:-10} s each"
FUZZ_SECONDS=${FUZZ_SECONDS:-10} scripts/fuzz.sh

if [ -f tests/browser/package.json ]; then
  step "browser test"
  (cd tests/browser && npm ci --silent --no-audit --no-fund)
  CARSHARE_BIN=$PWD/build/bin BROWSER_OUT=$PWD/build/browser-out node --test tests/browser/
fi

step "containers and manifests"
scripts/test-containers.sh

step "all tests passed"
