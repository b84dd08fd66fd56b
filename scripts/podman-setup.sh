#!/usr/bin/env bash
# podman-setup.sh: makes podman usable on a fresh Debian machine, as `make images`, the
# container tests and `make run-containers` need it. Idempotent: a second run changes nothing.
#
# Installs podman and its helpers from Debian (scripts/deps.sh containers), then writes one
# drop-in, /etc/containers/containers.conf.d/50-carshare.conf, because on machines like ours
# podman runs containers only with runc as its runtime (crun fails in this sandbox) and with
# explicit ulimits (the default of inheriting the host's hard limits is refused here). A
# drop-in leaves the machine's own containers.conf alone; podman reads both.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh containers

# Containers may not be given more than this shell's hard limits: 16384 files (the gateway's
# and the services' sockets), clamped to the hard limit where it is lower.
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 16384 ] && nofile=16384
nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 8192 ] && nproc=8192

conf_dir=/etc/containers/containers.conf.d
conf=$conf_dir/50-carshare.conf
want="# written by carshare scripts/podman-setup.sh
[containers]
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]

[engine]
runtime = \"runc\""
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO mkdir -p "$conf_dir"
  printf '%s\n' "$want" | $SUDO tee "$conf" >/dev/null
  echo "podman-setup: wrote $conf (runtime runc, explicit ulimits)"
fi
