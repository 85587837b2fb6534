# Quick start: `make demo` and `make test`. Both build their own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-slow demo lint format bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,lightning,transformers,accelerate]"
	touch $(STAMP)

# the fast suite: every test but those marked slow (README, "Quick start", says how long it takes)
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# torchrun and other multi-process runs, whole examples as subprocesses, and the property
# tests with the long Hypothesis profile (5,000 examples each; CI runs both targets).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow
	$(PY) -m pytest -q -m "not slow" --hypothesis-profile=long tests/test_propert*.py

demo: $(STAMP)
	$(PY) -m xsam demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks examples
	$(VENV)/bin/ruff check --fix src tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/bench_optimizer.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
