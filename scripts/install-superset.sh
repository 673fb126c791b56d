#!/usr/bin/env bash
# Install Apache Superset in its own venv, once per machine, for tests/test_superset.py and
# bench/superset_views.py: Superset pins its own Flask, SQLAlchemy and pandas, so it never shares
# saedb's venv. It reads saedb files through saedb's SQLAlchemy dialect (duckdb+saedb://, saedb
# installed without its dependencies) and Postgres through psycopg2.
#
# Usage: scripts/install-superset.sh   (prints the venv's python)
# Kept in ${XDG_CACHE_HOME:-~/.cache}/saedb/superset-VERSION (40 s to install here), with a metadata
# database and admin login made once in home/ (17 s) that a check copies; a fresh clone reuses both.
# Superset 6.1.0's wheel leaves out two modules it imports (rich, cachetools) and allows
# flask-caching 2.5, which its metastore cache cannot start with (apache/superset#43860): its own
# requirements pin 2.4.1, and so does this.
set -euo pipefail
VERSION=6.1.0
HERE=$(cd "$(dirname "$0")/.." && pwd)
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/saedb/superset-$VERSION"
if [ ! -f "$VENV/installed" ]; then
  echo "Installing Apache Superset $VERSION in its own venv once on this machine ..." >&2
  rm -rf "$VENV" && python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip > "$VENV/install.log" 2>&1
  "$VENV/bin/python" -m pip install -q "apache-superset==$VERSION" "flask-caching==2.4.1" rich cachetools \
    "duckdb>=2.0" "duckdb-engine>=0.17" psycopg2-binary >> "$VENV/install.log" 2>&1 \
    || { tail -20 "$VENV/install.log" >&2; exit 1; }
  "$VENV/bin/python" "$HERE/scripts/superset_views.py" --init-only --home "$VENV/home" >> "$VENV/install.log" 2>&1 \
    || { tail -20 "$VENV/install.log" >&2; exit 1; }
  touch "$VENV/installed"
fi
# saedb's dialect module only (its entry point, duckdb+saedb), from this clone.
"$VENV/bin/python" -m pip install -q --no-deps -e "$HERE" >> "$VENV/install.log" 2>&1
echo "$VENV/bin/python"
