# The two commands of the README (plus `make evidence`, docs/results.md). Everything else is `cromss --help`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: demo test evidence

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/cromss demo --out $(DEMO_DIR)

# 2 pytest-xdist workers with one torch thread each (docs/architecture.md, "Tests"); TEST_WORKERS=0 runs serially
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(BIN)/ruff check cromss tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15 tests

# docs/results.md: Tables V, VI and the noise sweep on controlled-noise demo data (the run in docs/results.md took 41 min on 2 idle cores;
# finished cells are skipped, so it resumes). Tables land in runs/experiments/demo/*.md.
evidence: $(VENV)/.installed
	$(BIN)/cromss experiment ablation --workers 2
	$(BIN)/cromss experiment smoothing --workers 2
	$(BIN)/cromss experiment noise-sweep --workers 2
