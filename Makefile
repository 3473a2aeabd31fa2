# gossiplearn developer entry points. Every target creates .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel first: an unpinned torch would pull gigabytes of CUDA packages.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# trio-typing's stubs shadow trio's own annotations under mypy (runtime unaffected).
	rm -rf $(VENV)/lib/python*/site-packages/trio-stubs
	touch $(STAMP)

demo: install
	$(BIN)/gossiplearn demo

# Everything, slow tests included, on two workers that each take the next test from one queue
# as they finish (--maxschedchunk 1). tests/conftest.py puts the longest first: the chaos run
# keeps one worker busy for minutes while the other goes through the rest, and the run ends on
# short tests on both, not on a serial tail of slow ones.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist load --maxschedchunk 1

test-fast: install
	$(BIN)/python -m pytest -q -n 2 --dist load --maxschedchunk 1 -m 'not slow'

bench: install
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
