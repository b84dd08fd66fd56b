#!/usr/bin/env bash
# deps.sh: installs, from Debian's packages, whatever carshare needs and this machine lacks.
#   scripts/deps.sh build   compilers and libraries (make build, make run)
#   scripts/deps.sh test    + clang with its libFuzzer/sanitizer runtimes, nodejs/npm and
#                           chromium for the browser test
#   scripts/deps.sh bench   + wrk and nginx
#   DB=postgres adds the PostgreSQL server (make run DB=postgres); test always has it (the suite
#   starts its own servers from it)
#   scripts/deps.sh containers  podman (runc, networking, pause image), podman-compose, and
#                           the manifest tools: kubectl (Debian's kubernetes-client, unless a
#                           kubectl is already there) and python3-kubernetes (its models are the
#                           API schema tests/deploy/test_manifests.py validates against)
# Idempotent and quick when everything is there: apt-get runs only for missing packages.
set -euo pipefail

need=(build-essential cmake pkg-config libevent-dev libjansson-dev libsqlite3-dev sqlite3
      libnats-dev nats-server uuid-dev libpq-dev libsodium-dev libssl-dev openssl curl python3 ca-certificates tzdata)
case "${1:-build}" in
  # libclang-rt-dev: the libFuzzer and sanitizer runtimes of Debian's default clang.
  # python3-jsonschema, python3-yaml: the e2e suite checks every answer against docs/openapi.yaml.
  test)  need+=(clang libclang-rt-dev chromium fonts-noto-cjk postgresql postgresql-client
               python3-jsonschema python3-yaml) ;;
  bench) need+=(wrk nginx-light) ;;
  containers) need+=(podman runc conmon containernetworking-plugins catatonit iptables uidmap
                     golang-github-containernetworking-plugin-dnsname podman-compose
                     python3-yaml python3-kubernetes openssl postgresql postgresql-client) ;;
esac
if [ "${DB:-sqlite}" = postgres ]; then need+=(postgresql postgresql-client); fi
# kubectl renders the kustomize overlays; keep one already installed (another packaging of it
# owns /usr/bin/kubectl and would conflict with Debian's).
if [ "${1:-build}" = containers ] && ! command -v kubectl >/dev/null 2>&1; then
  need+=(kubernetes-client)
fi
# Node.js and npm drive the browser test; a machine may already have them from elsewhere.
if [ "${1:-build}" = test ] && ! command -v npm >/dev/null 2>&1; then need+=(nodejs npm); fi

missing=()
for pkg in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# Another apt run (a second `make` in parallel) holds dpkg's lock: wait for it instead of failing.
apt=(apt-get -o DPkg::Lock::Timeout=600)
$SUDO "${apt[@]}" update -qq
$SUDO "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
