# Two commands: `make demo` (set up, then show the pool in Voila) and `make test`;
# `make test-pythons` runs the suite's core on every supported Python (noxfile.py).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Enterprise Gateway 3.3 pins jupyter_client < 7 and jupyter_server < 2: a venv of its own,
# used by tests/gateways.py. Its kernels run the project's ipykernel from .venv.
EG_VENV ?= .venv-eg
EG_REQUIREMENTS := tests/enterprise-gateway-requirements.txt

.PHONY: demo test test-fork test-pythons bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

$(EG_VENV)/.installed: $(EG_REQUIREMENTS)
	rm -rf $(EG_VENV)
	$(PYTHON) -m venv $(EG_VENV)
	$(EG_VENV)/bin/python -m pip install -q -r $(EG_REQUIREMENTS)
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/python examples/demo.py

test: $(VENV)/.test-installed $(EG_VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check hotpot_km
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-pythons: $(VENV)/.test-installed
	$(BIN)/nox $(NOX_ARGS)
# The fault suite again, with fork mode on for every kernel name the tests use.
FORK_SUITE := tests/test_faults_kernels.py tests/test_faults_servers.py tests/test_concurrency.py \
              tests/test_hostile.py tests/test_pooled.py tests/test_env_isolation.py \
              tests/test_bounded_waits.py
test-fork: $(VENV)/.test-installed
	HOTPOT_KM_TEST_FORK=1 $(BIN)/python -m pytest $(FORK_SUITE) $(PYTEST_ARGS)

bench: $(VENV)/.test-installed $(VENV)/.demo-installed
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format hotpot_km

clean:
	rm -rf $(VENV) $(EG_VENV) .nox benchmarks/.work
