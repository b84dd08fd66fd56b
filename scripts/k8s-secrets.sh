#!/usr/bin/env bash
# k8s-secrets.sh OVERLAY: writes the secret files an overlay's secretGenerator reads, under
# OVERLAY/secrets/ (git ignores it), keeping every file that already exists. Idempotent.
#
#   nats/<user>        the bus password of each service's NATS user and of admin (random)
#   tokens/account.key account's token signing key (Ed25519, PKCS#8 PEM) and .pub beside it
#   tokens/order.key   order's service-token key, and .pub (lib/token.h; rotation: README)
#   db/<service>       prod: the service's PostgreSQL URL, with its own role and password
#   db/init.sql        prod: the roles and databases, for the in-cluster PostgreSQL's first start
#                      (scripts/pglocal.py writes these two, derived from one another)
#   db/postgres        prod: the superuser password of that PostgreSQL
#
# A cluster with a secret manager (external-secrets, sealed-secrets, the CI's secrets) writes
# the same files from there instead; the pipeline's `make k8s-secrets` runs this script, which
# only fills what is missing.
set -euo pipefail
overlay=${1:?usage: k8s-secrets.sh deploy/k8s/overlays/<name>}
dir=$overlay/secrets
umask 077
mkdir -p "$dir/nats"

# Starts with a letter: nats-server parses a password taken from the environment ($ORDER_PASSWORD in
# auth.conf), and one starting with '-' or a digit is read as a number or refused (seen: the
# JetStream cluster test failed when a password began with '-').
random() { printf 'p%s' "$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')"; }
# put FILE VALUE: writes VALUE (no newline) unless FILE exists.
put() { [ -e "$1" ] || printf '%s' "$2" > "$1"; }

for user in order delivery customerpage payment admin; do
  put "$dir/nats/$user" "$(random)"
done

# keypair NAME: an Ed25519 pair as `carshare-account keygen` makes it (openssl writes the same
# PEM forms), unless the private key exists.
keypair() {
  mkdir -p "$dir/tokens"
  [ -e "$dir/tokens/$1.key" ] && return 0
  openssl genpkey -algorithm ed25519 -out "$dir/tokens/$1.key"
  openssl pkey -in "$dir/tokens/$1.key" -pubout -out "$dir/tokens/$1.pub"
}
keypair account
keypair order

if [ "$(basename "$overlay")" = prod ]; then
  mkdir -p "$dir/db"
  put "$dir/db/postgres" "$(random)"
  # Each service's URL and the init.sql the PostgreSQL image runs at its first start: the
  # roles and databases as scripts/pglocal.py makes them for `make run DB=postgres`.
  python3 "$(dirname "$0")/pglocal.py" secrets "$dir/db" postgres 5432 \
    order delivery customerpage payment account
fi
