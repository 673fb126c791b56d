#!/usr/bin/env bash
# Install dbt-duckdb in its own venv, once per machine, for tests/test_dbt.py: dbt pins its own
# dependencies, so it never shares saedb's venv (nor saedb it: dbt reads a saedb file through
# the SQL macros the file carries). dbt-duckdb 1.11 installs here only with dbt-core < 1.11.
#
# Usage: scripts/install-dbt.sh   (prints the venv's dbt)
# Kept in ${XDG_CACHE_HOME:-~/.cache}/saedb/dbt-duckdb-VERSION (28 s to install here).
set -euo pipefail
VERSION=1.11.1
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/saedb/dbt-duckdb-$VERSION"
if [ ! -f "$VENV/installed" ]; then
  echo "Installing dbt-duckdb $VERSION in its own venv once on this machine ..." >&2
  rm -rf "$VENV" && python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "dbt-duckdb==$VERSION" "dbt-core<1.11" > "$VENV/install.log" 2>&1 \
    || { tail -20 "$VENV/install.log" >&2; exit 1; }
  touch "$VENV/installed"
fi
echo "$VENV/bin/dbt"
