# carshare: the two commands are `make run` and `make test` (see README.md).
# Each installs what is missing (scripts/deps.sh), builds, then runs or tests.

JOBS ?= 2
BUILD ?= build
CMAKE_FLAGS ?=

# Containers and Kubernetes (deploy/, README "Containers and Kubernetes"). The pipeline
# (.github/workflows/pipeline.yml) runs these same targets.
REGISTRY ?= localhost
IMAGE_TAG ?= dev
OVERLAY ?= prod

.PHONY: all build run test test-unit test-asan test-clang test-browser bench fuzz soak deps clean \
        images test-containers test-prod-layout run-containers stop-containers k8s-secrets k8s-render push \
        deploy rollout-status rollout bench-scale

all: build

deps:
	@scripts/deps.sh build

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) -- --no-print-directory

# DB=postgres: the services that have a PostgreSQL store run on a local PostgreSQL server.
# CLUSTER=1: three nats-server nodes (stream replicas 3), PostgreSQL, two instances of every
# service that has a PostgreSQL store (scripts/run.py), in data/cluster.
DB ?= sqlite
CLUSTER ?= 0
RUN_DB = $(if $(filter-out 0,$(CLUSTER)),postgres,$(DB))

run: build
	@DB=$(RUN_DB) scripts/deps.sh build
	@DB=$(DB) CLUSTER=$(CLUSTER) python3 scripts/run.py

# Beside a running `make run CLUSTER=1`: replaces every instance of SERVICE (default: every
# service) one by one with one started from the binaries just built (scripts/rollout.py).
SERVICE ?=
rollout: build
	@python3 scripts/rollout.py $(SERVICE)

# Everything CI runs: the suite on a normal build, again on an ASan+UBSan build, a clang build
# with -Werror, and the browser test.
test:
	@scripts/deps.sh test
	@scripts/test.sh

# DB=postgres: the services that have a PostgreSQL store run on a private PostgreSQL server
# (tests/e2e/harness.py), the rest as usual; the summary line has the same fields.
bench:
	@DB=$(DB) scripts/deps.sh bench
	@cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build build-bench -j $(JOBS) -- --no-print-directory
	@CARSHARE_DB=$(DB) CARSHARE_BIN=$(CURDIR)/build-bench/bin scripts/bench.sh

# Rentals/s and CPU per rental with one and with two instances of each PostgreSQL service under
# `make run CLUSTER=1`, then a rollout of every service under load, every answer checked
# (tests/bench/scale.py); ends with one `bench-scale:` line.
bench-scale:
	@DB=postgres scripts/deps.sh bench
	@cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build build-bench -j $(JOBS) -- --no-print-directory
	@CARSHARE_BIN=$(CURDIR)/build-bench/bin python3 tests/bench/scale.py $(CURDIR)/build-bench/bin

# The whole system at half its measured rate, with cancellations and a kill -9 every minute,
# for SOAK_MINUTES (10), then an audit and resource figures (tests/soak/soak.py).
SOAK_MINUTES ?= 10
soak: build
	@SOAK_MINUTES=$(SOAK_MINUTES) CARSHARE_BIN=$(CURDIR)/$(BUILD)/bin CARSHARE_WEB=$(CURDIR)/web \
		python3 tests/soak/soak.py

# libFuzzer targets (tests/fuzz/), FUZZ_SECONDS each (`make test` runs them briefly).
FUZZ_SECONDS ?= 600
fuzz:
	@scripts/deps.sh test
	@FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh
# One image per process, from the binaries of `make build` (scripts/images.sh).
images: build
	@scripts/podman-setup.sh
	@IMAGE_TAG=$(IMAGE_TAG) scripts/images.sh

test-containers: build
	@scripts/test-containers.sh

# The prod overlay played by podman kube play (tests/deploy/test_prod_layout.py): its PostgreSQL,
# three nats-servers, two instances of the services that are safe as replicas, the rental flow
# through both gateways, a payment instance killed. Not in `make test` (it adds about two
# minutes on this machine, 13 containers); the pipeline runs it beside the images.
test-prod-layout: build
	@scripts/podman-setup.sh
	@CARSHARE_BIN=$(CURDIR)/$(BUILD)/bin PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 tests/deploy/test_prod_layout.py

# The whole system under podman-compose (deploy/compose.yaml); the gateway on 127.0.0.1:8088
# (GATEWAY_PORT=... to change it). `make stop-containers` stops it.
run-containers: images
	@IMAGE_TAG=$(IMAGE_TAG) scripts/run-containers.sh up

stop-containers:
	@scripts/run-containers.sh down

# The secret files an overlay's secretGenerator reads (kept when they exist).
k8s-secrets:
	@scripts/k8s-secrets.sh deploy/k8s/overlays/$(OVERLAY)

# The manifests of an overlay as they would be applied, in build/k8s-$(OVERLAY).yaml.
k8s-render: k8s-secrets
	@scripts/deploy.sh render $(OVERLAY)

# Tags the images of `make images` as $(REGISTRY)/carshare-<process>:$(IMAGE_TAG) and pushes them.
push:
	@REGISTRY=$(REGISTRY) IMAGE_TAG=$(IMAGE_TAG) scripts/deploy.sh push

# kubectl apply -k of the overlay with the images of $(REGISTRY) at $(IMAGE_TAG), then waits
# for every rollout (the current kubectl context is the cluster).
# The overlay's secrets/ must be there (`make k8s-secrets` once, then kept in a secret store).
deploy:
	@REGISTRY=$(REGISTRY) IMAGE_TAG=$(IMAGE_TAG) scripts/deploy.sh apply $(OVERLAY)
	@scripts/deploy.sh rollout-status $(OVERLAY)

rollout-status:
	@scripts/deploy.sh rollout-status $(OVERLAY)

clean:
	rm -rf build build-asan build-clang build-bench build-fuzz
