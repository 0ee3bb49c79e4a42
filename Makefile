# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use; PYTHON chooses the interpreter (e.g. make test PYTHON=python3.12).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-all venv venv-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.core: setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.core $@

venv: $(VENV)/.core
venv-dev: $(VENV)/.dev

# The main job: train configs/lm_tiny.py (experts over 8 simulated CPU devices), then evaluate.
# Rerunning resumes/re-evaluates the run in DEMO_DIR; delete it to train from scratch.
DEMO_DIR ?= runs/lm_tiny
demo: venv
	JAX_PLATFORMS=cpu $(BIN)/python -m moe_jax.train --config configs/lm_tiny.py --workdir $(DEMO_DIR) --cpu_devices 8
	JAX_PLATFORMS=cpu $(BIN)/python -m moe_jax.evaluate --workdir $(DEMO_DIR) --cpu_devices 8

# The whole default suite (slow-marked tests excluded; `make test-all` runs them too). Two of the
# notebooks run here, at a quarter of their training steps (MOE_JAX_NOTEBOOK_QUICK); all four run
# in full under test-all (upcycling's and routing_anatomy's paths are tested in tests/ too).
TEST_NOTEBOOKS := notebooks/add_a_gating_function.ipynb notebooks/scaling_results.ipynb
test: venv-dev
	MOE_JAX_NOTEBOOK_QUICK=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow" --nbmake --nbmake-timeout=600 $(PYTEST_ARGS) tests $(TEST_NOTEBOOKS)

test-all: venv-dev
	$(BIN)/python -m pytest -n 2 --dist loadgroup --nbmake --nbmake-timeout=600 $(PYTEST_ARGS) tests notebooks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
