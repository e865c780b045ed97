# The README's commands. A fresh machine needs Python 3.12+ (pyenv reads .python-version).
PYTHON ?= python3.12
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench airflow lock clean

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

setup: $(STAMP)          ## create .venv from the lock and install clv_jobs

demo: setup              ## simulate the sample accounts and run every job on them (./demo)
	$(VENV)/bin/clv demo --workdir demo

test: setup              ## every test: unit, model, pipeline, CLI, PostgreSQL
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup             ## time this project vs pymc-marketing, lifetimes and a DuckDB floor (BENCH_ARGS="--sizes 100000")
	$(PY) -m pip install --quiet -r requirements-bench.txt
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

airflow: setup           ## local Airflow 3 (standalone, SQLite) on the DAGs and the demo warehouse
	scripts/airflow-local.sh

lock:                    ## re-pin requirements.txt from the current venv
	{ echo "# The lock: every package pinned, transitive ones included (pip freeze of a Python 3.12 venv)."; \
	  echo "# Regenerate: make lock.  Airflow's constraints file cannot be downloaded here, so this is ours."; \
	  $(VENV)/bin/pip freeze --exclude-editable | grep -viE "^clv-jobs=="; } > requirements.txt

clean:
	rm -rf $(VENV) demo .airflow .pytest_cache
