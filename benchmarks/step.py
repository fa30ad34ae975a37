"""Per-step time and peak memory: CromSS (mid / late fusion) vs two plain U-Nets vs one U-Net.

The benchmark issue 8 asks for, at ResNet-18/50 and 128/256 px, on CPU (and CUDA when present). It is
``step_matrix.py`` (same options; see its docstring for what each cell measures); this name is the
entry point. The interleaved overhead measurement of one CromSS step vs two plain U-Net steps is
``step_overhead.py``.

    python benchmarks/step.py --batch 2 --repeats 5 --threads 2 --out runs/step_matrix.json
    python benchmarks/step.py --encoders resnet18 --sizes 128 --repeats 2
"""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    # run step_matrix.py as the main script: its per-cell subprocesses re-invoke that file
    runpy.run_path(str(Path(__file__).with_name("step_matrix.py")), run_name="__main__")
