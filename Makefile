# Two commands: `make demo` (set up, then show the pool in Voila) and `make test`;
# `make test-pythons` runs the suite's core on every supported Python (noxfile.py).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Enterprise Gateway 3.3 pins jupyter_client < 7 and jupyter_server < 2: a venv of its own,
# used by tests/gateways.py. Its kernels run the project's ipykernel from .venv.
EG_VENV ?= .venv-eg
EG_REQUIREMENTS := tests/enterprise-gateway-requirements.txt
# Tests run in parallel in PYTEST_WORKERS processes (pytest-xdist; 0: in this process, one
# after another). Each test has its own Jupyter dirs and its own ports, and most of its time
# is spent waiting for real kernels and servers. More workers than this on 2 CPUs start so
# many kernels at once that their starts time out, and kernels started at the same moment by
# different processes pick the same free port more often (jupyter_client picks a kernel's
# ports in the process that starts it). A worker takes its next test when it is done with
# one (--maxschedchunk 1), the longest first (tests/conftest.py).
PYTEST_WORKERS ?= 2
XDIST := -n $(PYTEST_WORKERS) --dist load --maxschedchunk 1
# Enterprise Gateway's python for tests/gateways.py, wherever EG_VENV is
PYTEST := HOTPOT_KM_EG_PYTHON=$(abspath $(EG_VENV))/bin/python $(BIN)/python -m pytest

.PHONY: demo venvs test test-launch test-root test-pythons test-peers bench soak lint clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# JupyterHub's proxy for tests/test_jupyterhub.py (npm: never installed at test time)
CHP := node_modules/.bin/configurable-http-proxy
$(CHP):
	npm install --no-save --no-audit --no-fund configurable-http-proxy@5

# Kernels of every language the pool prepares (tests/test_languages.py): R with IRkernel
# and Octave from Debian (installed when missing, which takes root, as .ci/run has), and
# bash_kernel, xeus-python and octave_kernel (the test extra) registered in the venv.
DEBIAN_KERNELS := r-base-core r-cran-irkernel octave
IR_SPEC := {"argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"], \
            "display_name": "R", "language": "R"}
$(VENV)/.kernels-installed: $(VENV)/.test-installed
	@missing=$$(for p in $(DEBIAN_KERNELS); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "as root: apt-get install" $$missing >&2; exit 1; fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(BIN)/python -m bash_kernel.install --sys-prefix
	mkdir -p $(VENV)/share/jupyter/kernels/ir
	echo '$(IR_SPEC)' > $(VENV)/share/jupyter/kernels/ir/kernel.json
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

# Both venvs at once: on a fresh clone they take much of make test's time.
venvs:
	$(MAKE) -j2 $(VENV)/.test-installed $(EG_VENV)/.installed

test: venvs $(VENV)/.kernels-installed $(CHP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check hotpot_km
	$(PYTEST) $(XDIST) $(PYTEST_ARGS)

# The tests marked `root` again, as root: what they check as a normal user differs from
# what only root can do (e.g. give a kernel back its normal CPU priority). CI runs the
# suite as a normal user, then this.
test-root: $(VENV)/.test-installed
	@test "$$(id -u)" = 0 || { echo "make test-root: run it as root"; exit 1; }
	$(PYTEST) -m root $(XDIST) $(PYTEST_ARGS)

test-pythons: $(VENV)/.test-installed
	PYTEST_WORKERS=$(PYTEST_WORKERS) $(BIN)/nox $(NOX_ARGS)
# The fault suite again, with fork mode off for every kernel name (the suite runs in the
# default mode: pools of Python kernels fork).
FAULT_SUITE := tests/test_faults_kernels.py tests/test_faults_servers.py tests/test_concurrency.py \
               tests/test_hostile.py tests/test_pooled.py tests/test_env_isolation.py \
               tests/test_bounded_waits.py
test-launch: $(VENV)/.test-installed
	HOTPOT_KM_TEST_FORK=0 $(PYTEST) $(FAULT_SUITE) $(XDIST) $(PYTEST_ARGS)

# jupyter_server's and jupyter_client's own kernel, session and multikernelmanager tests, from
# the PyPI sdists of the installed versions (cached in PEERS_DIR), stock and with the pooled
# managers swapped in: fails if a test that passes stock fails pooled (tests/peers/run.py).
PEERS_DIR ?= $(VENV)/peers
$(VENV)/.peers-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,test-peers]"
	touch $@

test-peers: $(VENV)/.test-installed $(VENV)/.peers-installed
	$(BIN)/python tests/peers/run.py $(PEERS_DIR)

# The main run (results.md), then start -> first reply per language (languages.md).
bench: $(VENV)/.test-installed $(VENV)/.demo-installed $(VENV)/.kernels-installed
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/languages_bench.py $(LANGUAGES_BENCH_ARGS)

# The traffic soak on the seed's Voila dashboard (benchmarks/soak_bench.py; writes
# benchmarks/soak.md): 300 visits pooled and 60 cold, 3 and then 8 at a time.
soak: $(VENV)/.test-installed $(VENV)/.demo-installed
	$(BIN)/python benchmarks/soak_bench.py $(SOAK_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format hotpot_km

clean:
	rm -rf $(VENV) $(EG_VENV) .nox benchmarks/.work docs/_build node_modules

# The documentation site (docs/): Sphinx, MyST, pydata-sphinx-theme; warnings are errors.
# -E: the reference pages are generated from the code, so every build reads them afresh.
$(VENV)/.docs-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@

DOCS_BUILD ?= docs/_build
docs: $(VENV)/.docs-installed
	$(BIN)/python -m sphinx -E -W --keep-going -n -b html docs $(DOCS_BUILD)/html
