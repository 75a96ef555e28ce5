# Two commands matter: `make demo` and `make test`. Both create .venv and install on first use,
# from constraints.txt: the dependency versions CI tested (see README, "Upgrading dependencies").
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST := $(PY) -m pytest -p no:cacheprovider
# Two workers on this 2-core machine: most tests wait on loopback HTTP, a server or a sleep.
WORKERS ?= 2

.PHONY: install demo test test-fast test-e2e lint typecheck bench soak lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cio-sync demo

# Every tier: unit, integration (SQLite, and PostgreSQL where a server answers), e2e.
test: $(STAMP)
	$(PYTEST) -q -n $(WORKERS) --dist loadgroup --durations=15 -m "not soak" tests

# Every pure test (no Prefect, no HTTP, no database): seconds.
test-fast: $(STAMP)
	$(PYTEST) -q tests/unit

test-e2e: $(STAMP)
	$(PYTEST) -q -m e2e tests/e2e

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy cio_sync connectors flows tasks

# Long scheduled-like runs with injected faults (SOAK_MINUTES, default 30); not part of make test.
soak: $(STAMP)
	$(PYTEST) -q -s -m soak tests

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

# Re-resolve the newest versions pyproject.toml allows and record them (then run make test).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^hull-customerio-sync' > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) data .pytest_cache
