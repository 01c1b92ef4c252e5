# Two set-up commands on a fresh machine with Python 3.11+ and make:
#   make run    start everything (embedded NATS + PostgreSQL, schema, demo sale, all processes)
#   make test   run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test test-unit lint typecheck bench bench-quick wrk chromium clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m flashsale dev

# The gates run first: a type or lint error fails the build before any service starts.
test: lint typecheck chromium
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

# wrk (Debian's package) drives the closed-loop phases; without it the bench falls back to its
# Python generator and says so in the report.
wrk:
	@command -v wrk >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -qq wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)) \
		>/dev/null 2>&1) || echo "wrk not installed: the bench uses its Python generator"

# Debian's chromium for the sale page's browser test (Playwright drives this one; it downloads no
# browser of its own). Without it that test fails, saying so: it is never skipped.
chromium:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)) \
		>/dev/null 2>&1) || echo "chromium not installed: tests/integration/test_sale_page.py will fail"

bench: $(VENV)/.installed wrk
	$(PY) -m bench

bench-quick: $(VENV)/.installed wrk
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) data
