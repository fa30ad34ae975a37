"""``cromss demo``: the whole pipeline on the embedded demo data, as far as it exists.

demo data → CromSS-midF pretraining → fine-tuning (random init vs the CromSS encoder, frozen and
fine-tuned) → metric table → selection-mask panels → noise flagging (ROC-AUC and AP of 1 − W_l over
every pretraining pixel) → HTML report. Each step is skipped when its
result is already on disk, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cromss.errors import ConfigError
from cromss.textfiles import read_text


def _configs_dir() -> Path:
    """The repository's configs/ folder (cwd first, then next to the package)."""
    for candidate in (Path.cwd() / "configs", Path(__file__).resolve().parents[2] / "configs"):
        if (candidate / "demo").is_dir():
            return candidate
    raise ConfigError("cannot find the configs/demo folder: run 'cromss demo' from the repository root")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the embedded demo data (what 'make demo' runs)",
        description="Make the demo dataset, pretrain CromSS-midF on its noisy labels, fine-tune random "
        "init and the CromSS encoder (frozen and fine-tuned) on its DW-style downstream set, print the "
        "metric table and write an HTML report. Steps whose results exist are skipped.\n\n"
        "example: cromss demo --out demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo", help="output folder (default: demo)")
    parser.add_argument("--seeds", type=int, default=2, help="fine-tuning repeats per setting (default: 2)")
    parser.add_argument("--pretrain-config", default=None,
                        help="pretraining config (default: configs/demo/pretrain-cromss-midf.yaml)")
    parser.add_argument("--finetune-config", default=None,
                        help="fine-tuning config (default: configs/demo/finetune-dw.yaml)")
    parser.set_defaults(func=run_demo)


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def run_demo(args: argparse.Namespace) -> int:
    from cromss.config import load_config
    from cromss.data.demo import make_demo
    from cromss.report import build_report
    from cromss.training import PretrainConfig
    from cromss.training.run import pretrain, resolve_config, run_dir_of
    from cromss.transfer import run_comparison

    started = time.perf_counter()
    out = Path(args.out)
    configs = _configs_dir()
    data_dir = out / "data"

    t0 = _step("1/6 demo dataset")
    if (data_dir / "demo.json").is_file():
        print(f"exists: {data_dir}")
    else:
        make_demo(data_dir)
        print(f"wrote {data_dir} in {time.perf_counter() - t0:.1f} s")

    t0 = _step("2/6 CromSS-midF pretraining on the noisy labels")
    pre_cfg_path = args.pretrain_config or configs / "demo" / "pretrain-cromss-midf.yaml"
    pre_cfg = load_config(PretrainConfig, pre_cfg_path,
                          [f"output_dir={out / 'runs'}", f"data.root={data_dir / 'nol'}"])
    run_dir = run_dir_of(resolve_config(pre_cfg))
    if (run_dir / "summary.json").is_file():
        print(f"exists: {run_dir}")
    else:
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        pretrain(pre_cfg, resume=resume)  # prints the ROC-AUC of (1 - W_l) for the injected noise
        print(f"pretrained in {time.perf_counter() - t0:.0f} s -> {run_dir}")

    t0 = _step("3/6 transfer: random init vs CromSS encoder, frozen and fine-tuned")
    ft_cfg_path = args.finetune_config or configs / "demo" / "finetune-dw.yaml"
    from cromss.transfer import load_finetune_config

    ft_cfg = load_finetune_config(ft_cfg_path, [f"data.root={data_dir / 'dw'}"])
    done_table = out / "finetune" / ft_cfg.name / "table.md"
    if done_table.is_file():  # written last, after every seed of every row
        print(f"exists: {done_table}")
        print(read_text(done_table, "metric table"), end="")
    else:
        table = run_comparison(ft_cfg, {"random": "random", "CromSS-midF": str(run_dir)}, modality="s2",
                               seeds=args.seeds, out_dir=out / "finetune",
                               overwrite=True)  # an unfinished transfer step of this demo is redone
        print(table)
        print(f"transfer took {time.perf_counter() - t0:.0f} s")

    t0 = _step("4/6 selection-mask panels (Fig. 11)")
    from cromss.cli import main as cromss_main

    masks_dir = out / "analysis" / "masks"
    code = cromss_main(["analyze", "masks", str(run_dir), "--data", str(data_dir / "nol"),
                        "--out", str(masks_dir)])
    if code:
        raise ConfigError(f"cromss analyze masks failed with status {code}")

    t0 = _step("5/6 noise flagging over every pretraining pixel (the measurement of docs/results.md)")
    from cromss.experiments import NOISE_FILE, measure_noise_detection

    noise = measure_noise_detection(run_dir)
    (run_dir / NOISE_FILE).write_text(json.dumps(noise, indent=2) + "\n")
    print(f"{noise['pixels']} labelled pixels, {100 * noise['noise_rate']:.1f} % of them mislabelled "
          f"(= the chance level of AP); alpha = {noise['alpha']}")
    for modality, scores in noise["modalities"].items():
        print(f"  {modality}: ROC-AUC {scores['auc']:.3f}, AP {scores['ap']:.3f} of 1 - W_l")
    print(f"-> {run_dir / NOISE_FILE} ({time.perf_counter() - t0:.0f} s)")

    _step("6/6 HTML report")
    table_files = sorted((out / "finetune").glob("*/table.md"))
    report = build_report([run_dir], out / "report.html", title="cromss demo",
                          table=table_files[0] if table_files else None, images=[masks_dir],
                          overwrite=True)  # the demo's own page, rebuilt from its current results
    print(f"report: {report}")
    print(f"\ncromss demo finished in {time.perf_counter() - started:.0f} s")
    return 0
