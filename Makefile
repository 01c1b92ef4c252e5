# Two set-up commands on a fresh machine with Python 3.11+ and make:
#   make run    start everything (embedded NATS + PostgreSQL, schema, demo sale, all processes)
#   make test   run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test test-unit chaos lint typecheck bench bench-quick bench-tools wrk strace chromium clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

run: $(VENV)/.installed
	$(PY) -m launch dev

# The gates run first: a type or lint error fails the build before any service starts.
test: lint typecheck strace chromium
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# The fault suite alone, with floods 5x the size CI runs (FLASHSALE_CHAOS_SCALE).
chaos: $(VENV)/.installed strace
	FLASHSALE_CHAOS_SCALE=$${FLASHSALE_CHAOS_SCALE:-5} $(PY) -m pytest -q tests/chaos

test-unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

# Debian packages the bench uses: wrk drives the closed-loop phases (without it the bench falls
# back to its Python generator), redis-server is the redis baseline (without it that baseline is
# skipped), strace counts fsyncs when the data dir has no block-device flush counter. Each one is
# installed when missing; the report says what was not there.
BENCH_TOOLS := wrk:wrk redis-server:redis-server strace:strace

# strace (Debian's package) counts nats-server's fsync calls in
# tests/integration/test_embedded_durability.py.
strace:
	@command -v strace >/dev/null 2>&1 || (apt-get install -y -qq strace >/dev/null 2>&1 || \
		(apt-get update -qq && apt-get install -y -qq strace) >/dev/null 2>&1) || \
		echo "strace not installed: the fsync-count test will fail"

# Debian's chromium for the sale page's browser test (Playwright drives this one; it downloads no
# browser of its own). Without it that test fails, saying so: it is never skipped.
chromium:
	@test -x /usr/bin/chromium || (command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)) \
		>/dev/null 2>&1) || echo "chromium not installed: tests/integration/test_sale_page.py will fail"

bench-tools:
	@for pair in $(BENCH_TOOLS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
		command -v $$cmd >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
			(apt-get install -y -qq $$pkg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $$pkg)) \
			>/dev/null 2>&1) || echo "$$pkg not installed: see docs/benchmarks.md for what the bench does without it"; \
	done

wrk: bench-tools

bench: $(VENV)/.installed bench-tools
	$(PY) -m bench

bench-quick: $(VENV)/.installed bench-tools
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) data
