#!/usr/bin/env bash
# test-containers.sh: the container and manifest tests (`make test-containers`, and a step of
# scripts/test.sh). Sets podman up (scripts/podman-setup.sh), then, with the binaries of
# $CARSHARE_BIN (default build/bin, which must be built):
#   tests/deploy/test_manifests.py   the rendered dev and prod overlays, reviewed and validated
#   tests/deploy/test_images.py      each image: size, user, no shell, stops with exit 0; the
#                                    PostgreSQL image's first start and restart on a volume
#   tests/deploy/test_dev_layout.py  the dev overlay under podman kube play: a rental flow
#                                    through the gateway, containers killed and restarted
#   tests/deploy/test_compose.py     make run-containers (compose) up, a rental, its rows in
#                                    PostgreSQL, down
#   tests/deploy/test_jetstream_cluster.py  prod's nats.conf: 3 servers, an R3 stream, one stopped
# The tests use Debian's python3 (/usr/bin/python3): python3-yaml and python3-kubernetes are
# Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARSHARE_BIN=${CARSHARE_BIN:-$PWD/build/bin} PYTHONDONTWRITEBYTECODE=1
scripts/podman-setup.sh
failed=0
for t in test_manifests test_images test_dev_layout test_compose test_jetstream_cluster; do
  echo "--- tests/deploy/$t.py"
  /usr/bin/python3 "tests/deploy/$t.py" || failed=1
done
exit $failed
