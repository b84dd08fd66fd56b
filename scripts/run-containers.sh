#!/usr/bin/env bash
# run-containers.sh up|down: the whole system under podman-compose (deploy/compose.yaml), as
# `make run-containers` and `make stop-containers` run it. `up` starts every container in the
# background, waits until the gateway is ready and prints where to point a browser; the
# containers restart by themselves (restart: unless-stopped) until `down`, which stops them
# (SIGTERM, then the grace period) and removes them and their network; the data volumes, the
# token keys and the database secrets (build/compose-keys-<project>) stay.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/podman-setup.sh
project=${COMPOSE_PROJECT:-carshare}
port=${GATEWAY_PORT:-8088}
compose=(podman-compose -p "$project" -f deploy/compose.yaml)
export CARSHARE_KEYS=$PWD/build/compose-keys-$project

# keys: account's signing key and order's service key, made once (kept across restarts, so that
# tokens stay valid), readable by the containers' user 10001 only.
keys() {
  local name
  for name in account order; do
    if [ ! -e "$CARSHARE_KEYS/$name/$name.key" ]; then
      mkdir -p "$CARSHARE_KEYS/$name" "$CARSHARE_KEYS/public"
      openssl genpkey -algorithm ed25519 -out "$CARSHARE_KEYS/$name/$name.key"
      openssl pkey -in "$CARSHARE_KEYS/$name/$name.key" -pubout -out "$CARSHARE_KEYS/$name/$name.pub"
      cp "$CARSHARE_KEYS/$name/$name.pub" "$CARSHARE_KEYS/public/"
    fi
  done
  # The services' PostgreSQL URLs and the init.sql that makes their roles and databases at the
  # server's first start (made once: the cluster on the volume keeps those passwords).
  python3 scripts/pglocal.py secrets "$CARSHARE_KEYS/db" postgres 5432 \
    order delivery customerpage payment account
  chown -R 10001:10001 "$CARSHARE_KEYS"
  chmod -R go-rwx "$CARSHARE_KEYS"
}
case "${1:-up}" in
  up)
    # New bus passwords at each start, as `make run` does: they live only in the containers'
    # environment (nats-server's and each service's).
    # Each starts with a letter: nats-server reads a value from the environment that starts with
    # '-' or a digit as a number (see k8s-secrets.sh).
    for user in ORDER PAYMENT DELIVERY CUSTOMERPAGE ADMIN; do
      export "${user}_PASSWORD=p$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')"
    done
    keys
    for svc in order delivery customerpage payment account; do
      export "${svc^^}_DATABASE_URL=$(cat "$CARSHARE_KEYS/db/$svc")"
    done
    t0=$(date +%s%N)
    mkdir -p build
    log=build/run-containers-$project.log
    # podman-compose says "no such volume" on stderr before it creates each volume: keep its
    # output in a log, shown when something fails.
    "${compose[@]}" up -d > "$log" 2>&1 || { cat "$log" >&2; exit 1; }
    for _ in $(seq 600); do
      if curl -sf -o /dev/null "http://127.0.0.1:$port/health/ready"; then
        echo "run-containers: ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms:" \
             "open http://127.0.0.1:$port/  (stop: make stop-containers)"
        exit 0
      fi
      sleep 0.1
    done
    echo "run-containers: the gateway is not ready after 60 s; see podman logs ${project}_gateway_1" >&2
    exit 1
    ;;
  down)
    # down reads the file too: any value will do for the passwords it does not use.
    for user in ORDER PAYMENT DELIVERY CUSTOMERPAGE ADMIN; do export "${user}_PASSWORD=-"; done
    for svc in ORDER DELIVERY CUSTOMERPAGE PAYMENT ACCOUNT; do export "${svc}_DATABASE_URL=-"; done
    "${compose[@]}" down >/dev/null 2>&1
    podman network rm "${project}_default" >/dev/null 2>&1 || true
    echo "run-containers: stopped"
    ;;
  *) echo "usage: run-containers.sh up|down" >&2; exit 2 ;;
esac
