# carshare: the two commands are `make run` and `make test` (see README.md).
# Each installs what is missing (scripts/deps.sh), builds, then runs or tests.

JOBS ?= 2
BUILD ?= build
CMAKE_FLAGS ?=

.PHONY: all build run test test-unit test-asan test-clang test-browser bench fuzz deps clean

all: build

deps:
	@scripts/deps.sh build

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

run: build
	@python3 scripts/run.py

# Everything CI runs: the suite on a normal build, again on an ASan+UBSan build, a clang build
# with -Werror, and the browser test.
test:
	@scripts/deps.sh test
	@scripts/test.sh

bench:
	@scripts/deps.sh bench
	@cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build build-bench -j $(JOBS) -- --no-print-directory
	@CARSHARE_BIN=$(CURDIR)/build-bench/bin scripts/bench.sh

# libFuzzer targets (tests/fuzz/), FUZZ_SECONDS each (`make test` runs them briefly).
FUZZ_SECONDS ?= 600
fuzz:
	@scripts/deps.sh test
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

clean:
	rm -rf build build-asan build-clang build-bench build-fuzz
