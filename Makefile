# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then run the main job on the built-in phantom (DATA=path for real data)
#   make test   set up .venv, then run the whole test suite
# Set-up installs the CPU build torch==2.13.0 only when the venv has no torch yet, so a
# venv that already holds a CUDA torch keeps it (see README, "Installation").

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.cmrseg-installed
DATA ?=
DEMO_OUT ?= demo_output

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(PY) -m cmrseg demo --out $(DEMO_OUT) $(if $(DATA),--data $(DATA),)

# The suite runs in TEST_WORKERS processes (pytest-xdist; each takes its share of the cores),
# then the tests marked `serial`, which hold a job to wall-clock budgets, alone.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist worksteal -m "not serial" tests
	$(PY) -m pytest -q -p no:cacheprovider -m serial tests

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build
