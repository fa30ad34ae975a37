"""``cromss analyze ...`` (figures of Sec. IV-D/E of the paper) and ``cromss report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RAW = argparse.RawDescriptionHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="what the pretrained models learned: selection masks, maps, BN/weight KL, PCA",
        description="Analyses of the paper's Figs. 6-13. Results go to --out (default: RUN/analysis/..., "
        "which `cromss report RUN` embeds). See docs/analysis.md for the exact definitions.",
        formatter_class=RAW,
    )
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    parser.set_defaults(func=lambda args: parser.print_help() or 0)

    data_help = ("dataset: a data root folder (replaces data.root of the run's config) or a YAML file "
                 "with a data: section (default: the run's own data config)")

    p = sub.add_parser("masks", formatter_class=RAW,
                       help="selection masks F_l, F_e, F', W_l, W_e per modality (Fig. 11)",
                       description="For a few samples, per modality: the input, the noisy label, the true "
                       "label where known, the label-/entity-based confidences F_l, F_e (eqs. 8-9), their "
                       "cross-modal enhanced versions F' (eq. 10) and the selection masks W_l, W_e "
                       "(eqs. 11-12), one PNG per sample. alpha/gamma default to the ramps of the run's "
                       "config at the checkpoint's epoch.",
                       epilog="example:\n  cromss analyze masks runs/cromss-midf-13b --split val --samples 4")
    p.add_argument("run", help="pretraining run folder or checkpoint")
    p.add_argument("--data", help=data_help)
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="split (default: val)")
    p.add_argument("--samples", type=int, default=4, help="number of samples (default: 4)")
    p.add_argument("--alpha", type=float, help="selection ratio of eq. 11 (default: from the run)")
    p.add_argument("--gamma", type=float, help="entity moderator of eq. 12 (default: from the run)")
    p.add_argument("--out", help="output folder (default: RUN/analysis/masks)")
    p.set_defaults(func=run_masks)

    p = sub.add_parser("maps", formatter_class=RAW,
                       help="segmentation maps of several runs side by side (Figs. 6, 7, 9, 10)",
                       description="Inputs, labels and the argmax maps of every modality's U-Net of every "
                       "pretraining run (or of every fine-tuned model: Figs. 6, 7), one PNG per sample. "
                       "The class colours are those of the first run's class table.",
                       epilog="example:\n  cromss analyze maps runs/single-s2 runs/midf runs/cromss-midf "
                       "--data data/demo --out figs/maps")
    p.add_argument("runs", nargs="+", help="pretraining or fine-tuning run folders or checkpoints")
    p.add_argument("--data", help=data_help)
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="split (default: val)")
    p.add_argument("--samples", type=int, default=4, help="number of samples (default: 4)")
    p.add_argument("--out", help="output folder (default: FIRST_RUN/analysis/maps)")
    p.set_defaults(func=run_maps)

    p = sub.add_parser("bn-kl", formatter_class=RAW,
                       help="KL divergence of BatchNorm statistics between runs vs epoch (Fig. 8c, d)",
                       description="Per BN channel, (running_mean, running_var) is a Gaussian; KL(A || B) is "
                       "averaged over channels, then over layers, for the encoder and the decoder of "
                       "--modality separately, at every epoch for which both runs saved a checkpoint "
                       "(all checkpoints/*.ckpt). RUN_A is compared with each later run.",
                       epilog="example:\n  cromss analyze bn-kl runs/single-s2 runs/midf runs/latef --smooth 5")
    p.add_argument("runs", nargs="+", metavar="RUN", help="RUN_A RUN_B [RUN_C ...] folders or checkpoints")
    p.add_argument("--modality", default="s2", help="U-Net to compare: s1, s2 or a generic modality (default: s2)")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window for the plot (paper: 5)")
    p.add_argument("--out", help="output folder (default: RUN_A/analysis)")
    p.set_defaults(func=run_bn_kl)

    p = sub.add_parser("weight-kl", formatter_class=RAW,
                       help="discrete KL of weight distributions before/after fine-tuning (Fig. 12)",
                       description="All encoder (decoder) weights of each file are pooled and binned into "
                       "--bins equal bins over their joint range; KL(before || after) with 1e-10 added to "
                       "every bin; plotted as -1/log(KL). Give pairs BEFORE AFTER [BEFORE AFTER ...].",
                       epilog="example:\n  cromss analyze weight-kl runs/cromss-midf "
                       "runs/finetune/dw/cromss/finetuned/seed0")
    p.add_argument("files", nargs="+", metavar="PATH", help="BEFORE AFTER pairs (run folders, .ckpt, "
                   ".pt, .safetensors)")
    p.add_argument("--modality", default="s2",
                   help="encoder/decoder of this modality in two-modality files (default: s2)")
    p.add_argument("--bins", type=int, default=100, help="number of bins (default: 100, as the paper)")
    p.add_argument("--out", help="output folder (default: ./analysis)")
    p.set_defaults(func=run_weight_kl)

    p = sub.add_parser("pca", formatter_class=RAW,
                       help="accumulated explained-variance curves of encoder modules 1-5 (Fig. 13)",
                       description="Features of each ResNet module (stem to bottleneck) on --samples "
                       "images: image-level (global average pooled) and pixel-level (--pixels random "
                       "pixels per image); sklearn PCA; cumulative explained-variance ratio vs the "
                       "proportion of principal components.",
                       epilog="example:\n  cromss analyze pca runs/cromss-midf exports/moco_s2.safetensors "
                       "--data data/demo --samples 64")
    p.add_argument("encoders", nargs="+", metavar="ENCODER",
                   help="weight sources: run folder, checkpoint, export, official or SSL4EO-S12 file")
    p.add_argument("--data", help=data_help + " (required when ENCODER is not a run folder)")
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="split (default: val)")
    p.add_argument("--modality", default="s2", help="input modality: s1, s2 or a generic one (default: s2)")
    p.add_argument("--samples", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--pixels", type=int, default=64, help="pixels sampled per image for the pixel-level "
                   "curves (default: 64)")
    p.add_argument("--out", help="output folder (default: ./analysis)")
    p.set_defaults(func=run_pca)

    r = subparsers.add_parser(
        "report", formatter_class=RAW,
        help="one self-contained HTML page of runs (config, curves, schedules, figures, table)",
        description="Writes a single HTML file (images embedded as base64 PNG): per run folder the "
        "config.yaml, summary.json/metrics.json, loss/metric curves from metrics.csv, the alpha/gamma "
        "schedules and every PNG under RUN/analysis/; optionally a `cromss table` markdown.",
        epilog="example:\n  cromss report runs/cromss-midf-13b --out report.html --table results/table.md",
    )
    r.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    r.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    r.add_argument("--title", default="CromSS report", help="page title")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (without it an existing file is refused)")
    r.add_argument("--table", help="metric table markdown written by `cromss table`")
    r.add_argument("--images", nargs="*", default=[], help="extra PNG files or folders to embed")
    r.add_argument("--audit", nargs="*", default=[], metavar="DIR", help="`cromss audit` folders to add "
                   "(worst samples, metrics); a run's own RUN/audit/ is added by itself")
    r.set_defaults(func=run_report)


# ----------------------------------------------------------------------------- helpers
def _default_out(out: str | None, run: str, sub: str) -> Path:
    from cromss.errors import ConfigError

    if out:
        return Path(out)
    if Path(run).is_dir():
        return Path(run) / "analysis" / sub if sub else Path(run) / "analysis"
    if sub in ("", "weights", "pca"):
        return Path("analysis") / sub if sub else Path("analysis")
    raise ConfigError(f"{run} is a file, not a run folder: pass --out DIR")


def _data_config(data: str | None, run_config: dict[str, Any] | None, run_dir: str | Path | None = None) -> Any:
    """The data to analyse: the run's own data section (``--data`` FOLDER replaces its root, a YAML file
    replaces the section), normalised with the run's own statistics copy (``band_stats/``) when it has
    one. A folder without a run config is detected like ``cromss data inspect`` does (a generic
    ``dataset.yaml``, or a built-in layout), never assumed to be the NoL layout."""
    from cromss.config import from_dict, read_yaml
    from cromss.data import DataConfig
    from cromss.data.resolution import is_resolved, resolve_data_config
    from cromss.data.run_stats import run_folder_of, with_run_stats
    from cromss.errors import ConfigError

    section = dict((run_config or {}).get("data") or {})
    if data is not None:
        path = Path(data)
        if path.is_dir():
            if "kind" not in section:
                from cromss.data.inspect import detect_layouts

                layout = detect_layouts(path)[0]
                section.update(kind=layout.kind, root=str(layout.root))
            else:
                section["root"] = str(path)
        elif path.suffix in (".yaml", ".yml"):
            loaded = read_yaml(path)
            section = dict(loaded.get("data", loaded))
        else:
            raise ConfigError(f"--data {data}: not a folder or a .yaml file")
    elif not section:
        raise ConfigError("no data: pass --data (a data root folder or a YAML file with a data: section)")
    cfg = from_dict(DataConfig, section, prefix="data.")
    if not is_resolved(cfg):  # the data's band names and classes (true colour, encoder bands by name)
        cfg = resolve_data_config(cfg)
    own_section = run_config is not None and (data is None or Path(data).is_dir())
    return with_run_stats(cfg, run_folder_of(run_dir)) if own_section and run_dir is not None else cfg


def _class_table(data_cfg: Any, num_classes: int, fallback: Any = None) -> Any:
    """The class table (names, colours) of the data: the user's own for generic data, the built-in
    table otherwise; ``fallback`` when its size differs from the model's ``num_classes``."""
    from cromss.data.resolution import class_table_of
    from cromss.errors import CromssError

    try:
        table = class_table_of(data_cfg)
    except CromssError:
        return fallback
    return table if len(table.names) == num_classes else fallback


def _input_bands(data_cfg: Any) -> dict[str, list[str]] | None:
    """Band names per modality of the data (to draw true colour by band name), when resolved."""
    return {m: list(b) for m, b in data_cfg.bands.items()} if data_cfg.bands else None


def load_batch(data_cfg: Any, split: str, samples: int) -> dict[str, Any]:
    """The first ``samples`` samples of a split, collated and centre-cropped to a multiple of 32 px."""
    import torch
    from torch.utils.data import default_collate

    from cromss.data import build_dataset
    from cromss.errors import DataError

    dataset = build_dataset(data_cfg, split, train=False)
    if len(dataset) == 0:
        raise DataError(f"split '{split}' of {data_cfg.root} is empty")
    batch = default_collate([dataset[i] for i in range(min(samples, len(dataset)))])
    height, width = batch["label"].shape[-2:]
    crop_h, crop_w = height // 32 * 32, width // 32 * 32
    if crop_h == 0 or crop_w == 0:
        raise DataError(f"samples of {data_cfg.root} are {height}x{width} px; the U-Net needs >= 32 px")
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return {k: v[..., top:top + crop_h, left:left + crop_w] if torch.is_tensor(v) and v.ndim >= 3 else v
            for k, v in batch.items()}


def _checkpoint_epoch(run: str) -> int | None:
    from cromss.analysis import read_state_dict

    return read_state_dict(run)[1]


# ----------------------------------------------------------------------------- commands
def run_masks(args: argparse.Namespace) -> int:
    from cromss.analysis import mask_panels
    from cromss.selection import alpha_at, gamma_at
    from cromss.weights import load_cromss_net

    net, config = load_cromss_net(args.run)
    method = config.get("method") or {}
    epoch = _checkpoint_epoch(args.run)
    alpha, gamma = args.alpha, args.gamma
    if alpha is None:
        alpha = (alpha_at(epoch, float(method.get("alpha0", 0.5)), float(method.get("rampup_epochs", 80)))
                 if epoch is not None else float(method.get("alpha0", 0.5)))
    if gamma is None:
        gamma = gamma_at(epoch, float(method.get("rampup_epochs", 80))) if epoch is not None else 1.0
    data_cfg = _data_config(args.data, config, args.run)
    batch = load_batch(data_cfg, args.split, args.samples)
    out = _default_out(args.out, args.run, "masks")
    classes = _class_table(data_cfg, net.cfg.num_classes)
    written = mask_panels(net, batch, out, alpha, gamma, enhance=bool(method.get("enhance", True)),
                          title=Path(args.run).name, classes=classes, bands=_input_bands(data_cfg))
    print(f"wrote {len(written)} mask panels to {out} (alpha={alpha:.3f}, gamma={gamma:.3f}, epoch={epoch})")
    return 0


def run_maps(args: argparse.Namespace) -> int:
    from cromss.analysis import map_panels, run_labels
    from cromss.predict import load_predictor

    nets, first_config, classes = {}, None, None
    for run, label in zip(args.runs, run_labels(args.runs), strict=True):
        net, run_classes, _, config = load_predictor(run)
        classes = classes or run_classes
        nets[label] = net
        first_config = first_config or config
    data_cfg = _data_config(args.data, first_config, args.runs[0])
    batch = load_batch(data_cfg, args.split, args.samples)
    out = _default_out(args.out, args.runs[0], "maps")
    classes = _class_table(data_cfg, len(classes.names), classes)
    written = map_panels(nets, batch, out, classes=classes, bands=_input_bands(data_cfg))
    print(f"wrote {len(written)} map panels to {out}")
    return 0


def run_bn_kl(args: argparse.Namespace) -> int:
    from cromss.analysis import bn_kl_curve, plot_bn_kl, run_labels
    from cromss.errors import ConfigError

    if len(args.runs) < 2:
        raise ConfigError("bn-kl needs at least two runs: RUN_A RUN_B [RUN_C ...]")
    base = args.runs[0]
    labels = run_labels(args.runs)
    curves = {f"{labels[0]} vs {label}": bn_kl_curve(base, other, args.modality)
              for other, label in zip(args.runs[1:], labels[1:], strict=True)}
    out = _default_out(args.out, base, "")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bn_kl.json").write_text(json.dumps(curves, indent=1))
    plot_bn_kl(curves, out / "bn_kl.png", window=args.smooth)
    for label, curve in curves.items():
        last = curve[-1]
        print(f"{label}: {len(curve)} epochs; last (epoch {int(last['epoch'])}): encoder "
              f"{last['encoder']:.4g}, decoder {last['decoder']:.4g}")
    print(f"wrote {out / 'bn_kl.png'} and {out / 'bn_kl.json'}")
    return 0


def run_weight_kl(args: argparse.Namespace) -> int:
    from cromss.analysis import plot_weight_kl, run_labels, weight_kl_parts
    from cromss.errors import ConfigError

    if len(args.files) % 2:
        raise ConfigError(f"weight-kl takes BEFORE AFTER pairs; got {len(args.files)} paths")
    results = {}
    labels = run_labels(args.files)  # distinct labels from the paths: every seed folder is seed0
    for index, (before, after) in enumerate(zip(args.files[::2], args.files[1::2])):
        label = f"{labels[2 * index]} -> {labels[2 * index + 1]}"
        results[label] = weight_kl_parts(before, after, args.modality, args.bins)
        parts = ", ".join(f"{part} skipped: {v['skipped']}" if "skipped" in v else
                          f"{part} KL {v['kl']:.4g} (-1/log {v['display']:.4g})" for part, v in results[label].items())
        print(f"{label}: {parts}")
    out = _default_out(args.out, args.files[0], "") if args.out else Path("analysis")
    out.mkdir(parents=True, exist_ok=True)
    (out / "weight_kl.json").write_text(json.dumps(results, indent=1))
    plot_weight_kl(results, out / "weight_kl.png")
    print(f"wrote {out / 'weight_kl.png'} and {out / 'weight_kl.json'}")
    return 0


def run_pca(args: argparse.Namespace) -> int:
    import torch

    from cromss.analysis import encoder_input, load_encoder, pca_curves, plot_pca, run_labels
    from cromss.weights import encoder_state_dict

    run_config = None
    first = Path(args.encoders[0])
    if first.is_dir() and (first / "config.yaml").is_file():
        from cromss.config import read_yaml

        run_config = read_yaml(first / "config.yaml")  # its data kind, bands and statistics, also with --data
    data_cfg = _data_config(args.data, run_config, first if run_config is not None else None)
    if data_cfg.modalities is not None and args.modality not in data_cfg.modalities:
        data_cfg.modalities = [*data_cfg.modalities, args.modality]
    batch = load_batch(data_cfg, args.split, args.samples)
    if args.modality not in batch:
        from cromss.errors import DataError

        raise DataError(f"--modality {args.modality}: the data has no such input (it has "
                        f"{[k for k in batch if k in (data_cfg.modalities or [])]})")
    images = batch[args.modality]
    image_bands = (data_cfg.bands or {}).get(args.modality)
    image_level, pixel_level = {}, {}
    for source, label in zip(args.encoders, run_labels(args.encoders), strict=True):
        encoder = load_encoder(source, args.modality)
        bands = encoder_state_dict(source, args.modality)[1].get("bands")
        fed = encoder_input(images, image_bands, encoder, bands, args.modality, f"encoder {source}")
        with torch.no_grad():
            image_level[label] = pca_curves(encoder, fed, 0)
            pixel_level[label] = pca_curves(encoder, fed, args.pixels)
    out = Path(args.out) if args.out else Path("analysis")
    out.mkdir(parents=True, exist_ok=True)
    plot_pca(image_level, out / "pca_image.png", f"image-level features ({images.shape[0]} images)")
    plot_pca(pixel_level, out / "pca_pixel.png", f"pixel-level features ({args.pixels} px per image)")
    payload = {level: {label: [c.tolist() for c in curves] for label, curves in data.items()}
               for level, data in (("image", image_level), ("pixel", pixel_level))}
    (out / "pca.json").write_text(json.dumps(payload))
    print(f"wrote {out / 'pca_image.png'}, {out / 'pca_pixel.png'} and {out / 'pca.json'}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from cromss.report import build_report

    path = build_report(args.runs, args.out, title=args.title, table=args.table, images=args.images,
                        overwrite=args.overwrite, audits=args.audit)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
