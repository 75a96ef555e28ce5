# Two commands matter: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cio-sync demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# Pure business rules only: no Prefect server, no simulators.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

soak: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m soak

bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache
