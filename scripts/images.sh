#!/usr/bin/env bash
# images.sh: builds the runtime images of carshare with podman, as `make images` does.
#
#   scripts/images.sh            one image per process: <prefix><process>:<tag>
#   IMAGE_PREFIX=registry.example/carshare/ IMAGE_TAG=v1.2.0 scripts/images.sh
#
# One image per process rather than one with every binary: each Deployment then runs only
# the code it needs, rolls out on its own and is scanned and sized alone, while the shared
# runtime layer (libraries, CA certificates, user) is stored and pushed once, so the split
# costs no space. The binaries are those of `make build` ($CARSHARE_BIN, default build/bin):
# the images hold exactly what the tests ran, and no compiler runs twice.
#
# The context (build/image/) is assembled here: every shared library `ldd` names for the
# binaries, the loader, CA certificates, the time zones (tzdata), a passwd/group naming user
# 10001, nsswitch.conf, the web files; then deploy/Containerfile turns it into one image per `--target`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CARSHARE_BIN:-$PWD/build/bin}
PREFIX=${IMAGE_PREFIX:-localhost/carshare-}
TAG=${IMAGE_TAG:-dev}
CTX=${IMAGE_CONTEXT:-$PWD/build/image}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}

processes=()
for b in "$BIN"/carshare-*; do
  [ -x "$b" ] && processes+=("${b##*/carshare-}")
done
[ ${#processes[@]} -gt 0 ] || { echo "images: no carshare binaries in $BIN (make build first)" >&2; exit 1; }

rm -rf "$CTX"
mkdir -p "$CTX/runtime/etc/ssl/certs" "$CTX/runtime/tmp" "$CTX/data" "$CTX/bin" "$CTX/nats"

# Binaries without their debug sections (the build keeps them for gdb; images need not).
for p in "${processes[@]}"; do
  objcopy --strip-debug "$BIN/carshare-$p" "$CTX/bin/carshare-$p"
done
mkdir -p "$CTX/nats/usr/bin"
cp "$NATS_SERVER" "$CTX/nats/usr/bin/nats-server"

# copy_libs DEST BINARY...: every library the binaries map, at the path the loader looks for
# it; the loader itself is the line without "=>".
copy_libs() {
  local dest=$1; shift
  ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } NF == 2 && $1 ~ /^\// { print $1 }' |
    sort -u | while read -r lib; do
      mkdir -p "$dest$(dirname "$lib")"
      cp -L "$lib" "$dest$lib"
    done
}
copy_libs "$CTX/runtime" "$CTX"/bin/carshare-*
# nats-server maps libc only: its image takes the runtime's /etc but not carshare's libraries.
copy_libs "$CTX/nats" "$NATS_SERVER"
cp -L /etc/ssl/certs/ca-certificates.crt "$CTX/runtime/etc/ssl/certs/"
# The time zones (order books calendar days in TIME_ZONE; 2 MB, links kept as links), without
# right/, the leap-second variants no civil calendar uses (1.9 MB more).
mkdir -p "$CTX/runtime/usr/share"
cp -a /usr/share/zoneinfo "$CTX/runtime/usr/share/zoneinfo"
rm -rf "$CTX/runtime/usr/share/zoneinfo/right"
cat > "$CTX/runtime/etc/passwd" <<'PW'
root:x:0:0:root:/nonexistent:/sbin/nologin
carshare:x:10001:10001:carshare:/data:/sbin/nologin
PW
cat > "$CTX/runtime/etc/group" <<'GR'
root:x:0:
carshare:x:10001:
GR
printf 'hosts: files dns\n' > "$CTX/runtime/etc/nsswitch.conf"
cp -r "$CTX/runtime/etc" "$CTX/nats/etc"
mkdir -m 1777 "$CTX/nats/tmp"
# PostgreSQL from Debian's postgresql package, for compose and the prod overlay's in-cluster
# server: the server, initdb, pg_isready, their share files (no manual pages, of the extensions
# only PL/pgSQL, which initdb installs) and modules (plpgsql, the snowball dictionaries initdb
# loads; not the LLVM JIT, 30 MB), the C.UTF-8 locale, and the libraries they map that the
# runtime layer lacks (ICU's data alone is 30 MB: why this image is larger than the others).
# pgstart (deploy/postgres/pgstart.c) is its entrypoint; dash is /bin/sh because initdb runs
# its bootstrap backend through popen().
PG_BIN=${PG_BIN:-$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1)")}
[ -x "$PG_BIN/postgres" ] && [ -x "$BIN/pgstart" ] || {
  echo "images: no PostgreSQL server (apt-get install postgresql) or no $BIN/pgstart" >&2; exit 1; }
PG_HOME=$(dirname "$PG_BIN")                       # /usr/lib/postgresql/15
PG_SHARE=/usr/share/postgresql/$(basename "$PG_HOME")
PG=$CTX/postgres
mkdir -p "$PG$PG_BIN" "$PG$PG_HOME/lib" "$PG$PG_SHARE/extension" "$PG/usr/bin" "$PG/bin" \
         "$PG/usr/lib/locale"
for prog in postgres initdb pg_isready; do cp "$PG_BIN/$prog" "$PG$PG_BIN/"; done
cp "$PG_HOME/lib/plpgsql.so" "$PG_HOME/lib/dict_snowball.so" "$PG$PG_HOME/lib/"
(cd "$PG_SHARE" && cp -r $(ls | grep -v -e '^man$' -e '^extension$') "$PG$PG_SHARE/" &&
  cp extension/plpgsql* "$PG$PG_SHARE/extension/")
cp -a /usr/lib/locale/C.utf8 "$PG/usr/lib/locale/"
objcopy --strip-debug "$BIN/pgstart" "$PG/usr/bin/pgstart"
cp /bin/dash "$PG/bin/sh"
copy_libs "$PG" "$PG$PG_BIN"/* "$PG/usr/bin/pgstart" "$PG$PG_HOME"/lib/*.so
(cd "$PG" && find . -type f -path './*lib*/*.so*' | while read -r lib; do
  [ -e "$CTX/runtime/${lib#./}" ] && rm "$lib"; done)
cp -r web "$CTX/web"
chmod -R a+rX "$CTX"
chmod 1777 "$CTX/runtime/tmp"

built=()
for target in "${processes[@]}" nats postgres; do
  image="$PREFIX$target:$TAG"
  podman build --quiet --target "$target" --build-arg "BASE=${IMAGE_BASE:-scratch}" \
    --build-arg "PG_BIN=$PG_BIN" \
    -f deploy/Containerfile -t "$image" "$CTX" >/dev/null
  built+=("$image")
done
printf 'images: built %s\n' "${built[@]}"
podman images --filter "reference=$PREFIX*:$TAG" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
