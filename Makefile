# Two commands: `make demo` (set up, then show the pool in Voila) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-fork bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/demo.py

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check hotpot_km
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault suite again, with fork mode on for every kernel name the tests use.
FORK_SUITE := tests/test_faults_kernels.py tests/test_faults_servers.py tests/test_concurrency.py \
              tests/test_hostile.py tests/test_pooled.py
test-fork: $(VENV)/.test-installed
	HOTPOT_KM_TEST_FORK=1 $(BIN)/python -m pytest $(FORK_SUITE) $(PYTEST_ARGS)

bench: $(VENV)/.test-installed $(VENV)/.demo-installed
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format hotpot_km

clean:
	rm -rf $(VENV) benchmarks/.work
