#!/usr/bin/env bash
# The GPU check (issue 23): one command, <= 8 min on one GPU, prints ONE Markdown table on stdout
# (progress on stderr). See benchmarks/gpu_check.py for what each row measures.
#
#   bash benchmarks/gpu_check.sh                      # on a machine with a CUDA GPU, from the repository root
#   bash benchmarks/gpu_check.sh --out runs/gpu_check.json
#   bash benchmarks/gpu_check.sh --toy                # the same code at toy size on CPU
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
