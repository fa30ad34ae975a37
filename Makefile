# The two commands of the README. Everything else is `cromss --help`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: demo test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/cromss demo --out $(DEMO_DIR)

test: $(VENV)/.installed
	$(BIN)/ruff check cromss tests benchmarks
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q tests
