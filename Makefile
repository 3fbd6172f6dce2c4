# make run   — set up, start hollowd on the bundled airports example and show it serving (make clean undoes it)
# make test  — set up, lint (ruff), type-check (mypy) and run the tests
# make bench — the benchmark table (bench/core.py)
# make bench-web — gunicorn workers against a dict, --preload and Redis (bench/gunicorn.py; needs wrk, redis-server)
# make bench-changes — publishing k changed records against LMDB and SQLite (bench/changes.py; issue 10)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-web bench-changes clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m examples.airports.run

lint: $(STAMP)
	$(PY) -m ruff check client hollowd tests bench examples
	$(PY) -m ruff format --check client hollowd tests bench examples
	$(PY) -m mypy

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/core.py

bench-web: $(STAMP)
	@command -v wrk >/dev/null && command -v redis-server >/dev/null || \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk redis-server >/dev/null)
	$(PY) bench/gunicorn.py

bench-changes: $(STAMP)
	$(PY) bench/changes.py

# make clean also removes what make run left: var/ (its state, socket and log) and the namespace it
# published (var/root names the shared-memory root it used).
clean:
	@if [ -f var/root ] && [ -d "$$(cat var/root)/airports" ]; then \
	    echo "rm -rf $$(cat var/root)/airports  # published by make run"; rm -rf "$$(cat var/root)/airports"; fi
	rm -rf var $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
