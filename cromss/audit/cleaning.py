"""``cromss audit --clean OUT``: a new generic dataset whose flagged labels are ignored (or relabelled).

The cleaned dataset is a ``data.kind: generic`` folder (``dataset.yaml`` + ``samples.csv`` + label
GeoTIFFs) that ``cromss pretrain`` / ``finetune`` read like any other:

* **labels** ``labels/<sample>.tif``: class ids (uint8, nodata 255 = ignored), on the source label's
  grid and georeference. Flagged pixels become 255 (mode ``ignore``), or with ``--relabel`` the
  modalities' consensus class (every modality's argmax agrees; flagged pixels without consensus are
  ignored, and where the consensus is the label itself the label stays);
* **reference** ``reference/<sample>.tif`` (when the source has one): the reference as class ids;
* **images**: generic GeoTIFF sources are referenced by absolute path (not copied), with the source's
  band statistics and nodata rules. The NoL LMDB, the NoL GeoTIFF tree (one file per band), downstream
  tiles and streams hold no single GeoTIFF per modality and date, so their images are written:
  ``images/<modality>/<sample>.tif`` float32, the normalised values the model reads (NaN = no data),
  with statistics mean 0.5 / std 0.25 that make the normalisation ``clip(x, 0, 1)`` the identity;
* **split**: every row keeps the split it was audited in (train / val / test), so a run on the cleaned
  data trains and validates on the same locations as the audited run.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cromss.audit.maps import write_geotiff
from cromss.audit.samples import AuditSample, SampleInfo
from cromss.outputs import atomic_write_text
from cromss.schema import IGNORE_INDEX

MODES: tuple[str, ...] = ("ignore", "relabel", "none")
#: Statistics of written (already normalised) images: clip(x, 0.5 - 2 * 0.25, 0.5 + 2 * 0.25) = clip(x, 0, 1).
NORMALISED_MEAN, NORMALISED_STD = 0.5, 0.25


def cleaned_labels(label: np.ndarray, flagged: np.ndarray, consensus: np.ndarray, mode: str) -> np.ndarray:
    """The cleaned label ``[H, W]`` (class ids, IGNORE_INDEX ignored) of one sample.

    ``ignore``: flagged pixels -> IGNORE_INDEX; ``relabel``: flagged pixels -> ``consensus`` where it is
    >= 0, else IGNORE_INDEX; ``none``: unchanged (an export of the raw labels in the same format).
    """
    out = label.copy()
    if mode == "ignore":
        out[flagged] = IGNORE_INDEX
    elif mode == "relabel":
        out[flagged] = np.where(consensus[flagged] >= 0, consensus[flagged], IGNORE_INDEX)
    elif mode != "none":
        raise ValueError(f"clean mode {mode!r} is not one of {MODES}")
    return out


class CleanWriter:
    """Writes the cleaned dataset into ``root`` sample by sample; :meth:`finish` writes the tables."""

    def __init__(self, root: Path, mode: str, classes: list[str], colors: list[str],
                 bands: dict[str, tuple[str, ...]], reference_images: bool,
                 stats: dict[str, Path] | None = None, nodata: dict[str, dict[str, Any]] | None = None,
                 source: str = "") -> None:
        if mode not in MODES:
            raise ValueError(f"clean mode {mode!r} is not one of {MODES}")
        self.root, self.mode = root, mode
        self.classes, self.colors, self.bands = classes, colors, bands
        self.reference_images = reference_images
        self.stats, self.nodata, self.source = stats or {}, nodata or {}, source
        self.rows: list[dict[str, str]] = []
        self.has_reference = False
        self.label_dtype = np.uint8 if len(classes) < IGNORE_INDEX else np.int16
        self.changed = {"ignored": 0, "relabelled": 0}
        self.name = ""

    def write_images(self, sample: AuditSample) -> dict[str, str]:
        """Image columns of one sample: absolute source paths, or the written normalised images."""
        info = sample.info
        if self.reference_images and info.images is not None:
            return {m: str(Path(info.images[m]).resolve()) for m in self.bands}
        out = {}
        valid = sample.valid.numpy()
        for modality in self.bands:
            data = sample.inputs[modality].numpy().astype(np.float32).copy()
            data[:, ~valid] = np.nan
            relative = f"images/{modality}/{info.name}.tif"
            write_geotiff(self.root / relative, data, info.transform, info.crs, float("nan"),
                          self.bands[modality], what="cleaned image")
            out[modality] = relative
        return out

    def add(self, info: SampleInfo, images: dict[str, str], label: np.ndarray, flagged: np.ndarray,
            consensus: np.ndarray, reference: np.ndarray | None) -> None:
        """Write the cleaned label (and reference) of one sample and remember its row."""
        clean = cleaned_labels(label, flagged, consensus, self.mode)
        labelled = label != IGNORE_INDEX
        self.changed["ignored"] += int((labelled & (clean == IGNORE_INDEX)).sum())
        self.changed["relabelled"] += int((labelled & (clean != IGNORE_INDEX) & (clean != label)).sum())
        nodata = IGNORE_INDEX if self.label_dtype == np.uint8 else -1
        stored = np.where(clean == IGNORE_INDEX, nodata, clean).astype(self.label_dtype)
        relative = f"labels/{info.name}.tif"
        write_geotiff(self.root / relative, stored, info.transform, info.crs, nodata, ("label",),
                      what="cleaned label")
        row = {"location": info.location, "time": info.time, "split": info.split, **images, "label": relative}
        if reference is not None:
            self.has_reference = True
            ref = np.where(reference == IGNORE_INDEX, nodata, reference).astype(self.label_dtype)
            ref_relative = f"reference/{info.name}.tif"
            write_geotiff(self.root / ref_relative, ref, info.transform, info.crs, nodata, ("reference",),
                          what="reference label")
            row["reference"] = ref_relative
        self.rows.append(row)

    def finish(self) -> dict[str, Any]:
        """Write ``dataset.yaml``, ``samples.csv`` and ``stats/``; returns what was written."""
        stats_files = {}
        for modality, bands in self.bands.items():
            relative = f"stats/{modality}_stats.json"
            source = self.stats.get(modality)
            if self.reference_images and source is not None:
                text = Path(source).read_text()
            else:
                text = json.dumps({
                    "modality": modality, "bands": list(bands), "mean": [NORMALISED_MEAN] * len(bands),
                    "std": [NORMALISED_STD] * len(bands),
                    "source": "cromss audit --clean: images stored already normalised to [0, 1]",
                }, indent=2)
            atomic_write_text(self.root / relative, text, what="band statistics")
            stats_files[modality] = relative
        description: dict[str, Any] = {
            "name": self.name or self.root.name,
            "description": f"cromss audit --clean ({self.mode}) of {self.source}",
            "modalities": {m: list(b) for m, b in self.bands.items()},
            "classes": [{"name": n, "color": c} for n, c in zip(self.classes, self.colors)],
            "label_values": {i: i for i in range(len(self.classes))},
            "samples": "samples.csv",
            "stats": stats_files,
        }
        if self.reference_images and self.nodata:
            description["nodata"] = self.nodata
        atomic_write_text(self.root / "dataset.yaml", yaml.safe_dump(description, sort_keys=False),
                          what="dataset description")
        fields = ["location", "time", "split", *self.bands, "label"] + (["reference"] if self.has_reference else [])
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.root / "samples.csv", buffer.getvalue(), what="sample table")
        return {"root": str(self.root), "mode": self.mode, "samples": len(self.rows),
                "images": "referenced" if self.reference_images else "written", **self.changed}


def export_dataset(data_cfg: Any, out: Path, classes: list[str], colors: list[str],
                   splits: list[str] | None = None) -> dict[str, Any]:
    """The dataset ``data_cfg`` points to, with its labels unchanged, in the cleaned datasets' format
    (``clean_mode='none'``): the same-format baseline a cleaned dataset is compared against."""
    from cromss.audit.samples import audit_data_config, iterate, open_splits

    cfg = audit_data_config(data_cfg)
    readers = open_splits(cfg, splits)
    first = readers[0].dataset
    modalities = list(first.modalities if not readers[0].stream else first.view.modalities)
    bands = {m: tuple(first.bands_of(m) if not readers[0].stream else first.view.bands_of(m)) for m in modalities}
    writer = CleanWriter(out, "none", classes, colors, bands, reference_images=False, source=str(cfg.root))
    for sample in iterate(readers):
        label = sample.label.numpy()
        reference = sample.reference.numpy() if sample.reference is not None else None
        writer.add(sample.info, writer.write_images(sample), label, np.zeros(label.shape, bool),
                   np.full(label.shape, -1), reference)
    return writer.finish()
