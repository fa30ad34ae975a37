"""``cromss data convert SRC OUT --to stream``: any dataset -> a litdata stream, all or nothing.

* Arguments are checked first (``--workers`` >= 1, ``--chunk-bytes`` > 0, OUT new or empty and not the
  source), then ``<OUT>.cromss.lock`` is taken (:mod:`cromss.locks`: a second conversion into the same
  folder stops at once instead of both printing "wrote" over one stream).
* Items are read by the cromss readers (in ``--workers`` processes when > 1) and written in order by
  litdata's own chunk writer (``BinaryWriter``, the format ``litdata.optimize`` writes) in THIS process,
  into a hidden temporary folder ``.<OUT>.partial-<pid>`` beside OUT. Only when every split, the
  ``index.json`` files and ``cromss_stream.json`` (with the size and SHA-256 of every file, for
  ``cromss data verify``) are written is the folder renamed to OUT. A failure (full disk, read-only
  target, bad input, Ctrl-C) removes the temporary folder and leaves OUT as it was; the error is one line.
* Why not ``litdata.optimize``: its worker processes hang forever when the disk fills while a worker
  writes its last chunk (the worker catches the error and returns, then its exit joins its "remover"
  child, which waits on a queue for the stop message that only the normal path sends; the parent has
  counted every item as done and joins that worker without a timeout, never reading the error queue).
  Writing in one process with plain file I/O turns the same ENOSPC into an immediate one-line error.
* An object-store OUT (``s3://...``) is written locally first (under ``$TMPDIR``), then uploaded with
  fsspec split by split, ``cromss_stream.json`` last: a stream without it is not a stream to cromss.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import deque
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from cromss import schema
from cromss.data.config import DataConfig
from cromss.data.core import SegmentationDataset
from cromss.data.stream_check import INDEX_FILE, META_FILE, STREAM_VERSION, file_digest, is_url
from cromss.errors import ConfigError, DataError, OutputError

__all__ = ["convert_to_stream", "parse_chunk_bytes"]

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_chunk_bytes(value: str | int) -> int:
    """``'64MB'`` -> 64_000_000 (litdata's 1000-based units); ConfigError unless a size > 0."""
    text = str(value).strip().lower()
    number, unit = text, "b"
    for suffix in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(suffix):
            number, unit = text[: -len(suffix)].strip(), suffix
            break
    try:
        size = int(float(number) * _UNITS[unit])
    except ValueError:
        size = 0
        number = ""
    if not number or size <= 0:
        raise ConfigError(f"--chunk-bytes {value!r}: expected a size > 0 such as 64MB, 256KB or 1000000")
    return size


def _check_arguments(cfg: DataConfig, out: str, num_workers: int, chunk_bytes: str | int) -> int:
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"--workers {num_workers!r}: need at least 1 conversion process")
    size = parse_chunk_bytes(chunk_bytes)
    cfg.validate()
    if cfg.format == "stream":
        raise DataError(f"{cfg.root} is already a stream")
    if not Path(cfg.root).exists():
        raise DataError(f"data.root {cfg.root} does not exist")
    if not is_url(out):
        target = Path(out).absolute()
        source = Path(cfg.root).absolute()
        if target == source or source.is_relative_to(target):
            raise ConfigError(f"stream folder {out} would hold its own source {cfg.root}: choose another OUT")
        _refuse_non_empty(target)
    return size


def _refuse_non_empty(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise OutputError(f"cannot use stream folder {target}: it is a file, not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise DataError(f"output folder {target} exists and is not empty")


def convert_to_stream(cfg: DataConfig, out: str | Path, chunk_bytes: str | int = "64MB", num_workers: int = 1,
                      splits: list[str] | None = None) -> dict[str, Any]:
    """Write every split of the dataset ``cfg`` points to as litdata chunks under ``out``; return the metadata.

    Validation / test items are the source split's evaluation entries (``cfg.eval_seasons``);
    ``cfg.val_fraction`` / ``cfg.seed`` fix the validation split of the source. See the module docstring
    for the lock, the temporary folder and the checksums.
    """
    from cromss.locks import FolderLock
    from cromss.outputs import prepare_output_dir

    out = str(out)
    size = _check_arguments(cfg, out, num_workers, chunk_bytes)
    if is_url(out):
        staging = Path(tempfile.mkdtemp(prefix="cromss-stream-"))
        try:
            meta = _write_stream(cfg, staging, size, num_workers, splits)
            _upload(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return meta
    target = Path(out).absolute()
    parent = prepare_output_dir(target.parent, "output folder of the stream")
    with FolderLock(parent / f"{target.name}.cromss.lock", target, "stream folder"):
        _refuse_non_empty(target)  # again, under the lock: another conversion may have finished meanwhile
        for stale in parent.glob(f".{target.name}.partial-*"):  # left by a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        staging = parent / f".{target.name}.partial-{os.getpid()}"
        try:
            meta = _write_stream(cfg, staging, size, num_workers, splits)
            if target.is_dir():
                target.rmdir()  # empty (checked above); rename() needs it gone or empty
            os.rename(staging, target)
        except BaseException as err:
            shutil.rmtree(staging, ignore_errors=True)
            _raise_output_error(err, target)
            raise
    return meta


def _raise_output_error(err: BaseException, target: Path) -> None:
    from cromss.outputs import os_error_in, output_error

    cause = os_error_in(err)
    if cause is not None:
        raise output_error(cause, target, "stream folder") from None


# ----------------------------------------------------------------------------- items of the stream
_SOURCES: dict[tuple[str, str], SegmentationDataset] = {}


def _source(cfg_dict: dict[str, Any], split: str) -> SegmentationDataset:
    from cromss.data.layouts import build_layout_dataset  # a file layout: a stream is not converted again

    key = (json.dumps(cfg_dict, sort_keys=True), split)
    if key not in _SOURCES:
        _SOURCES.clear()
        _SOURCES[key] = build_layout_dataset(DataConfig(**cfg_dict), split, train=False, compact=True)
    return _SOURCES[key]


def read_item(dataset: SegmentationDataset, location: int, season: int) -> dict[str, Any]:
    """One stream item: every timestamp of ``location`` in stored dtypes; ``season`` -1 = drawn when read."""
    labels, labels_true = dataset.read_labels(location)
    item: dict[str, Any] = {
        "id": dataset.sample_id(location), "season": int(season),
        "label": np.ascontiguousarray(labels.astype(dataset.label_dtype)),
    }
    if dataset.has_true_labels:
        true = labels_true if labels_true is not None else np.full_like(labels, schema.IGNORE_INDEX)
        item["label_true"] = np.ascontiguousarray(np.asarray(true)[: labels.shape[0]].astype(dataset.label_dtype))
    for modality in dataset.modalities:
        stack, invalid = [], []
        for t in range(dataset.timestamps(location)):
            images = dataset.read_images(location, t, modality)
            stack.append(np.asarray(images.data))
            invalid.append(images.invalid)
        item[modality] = np.ascontiguousarray(np.stack(stack))
        item[f"{modality}_invalid"] = np.ascontiguousarray(np.stack(invalid))
    return item


def _convert_one(entry: tuple[int, int], cfg_dict: dict[str, Any], split: str) -> dict[str, Any]:
    return read_item(_source(cfg_dict, split), *entry)


def _source_splits(cfg: DataConfig) -> list[str]:
    return ["train", "val"] if cfg.kind == "nol" else ["train", "val", "test"]


def stream_metadata(dataset: SegmentationDataset, cfg: DataConfig, splits: dict[str, int]) -> dict[str, Any]:
    """The self-description written next to the shards (``cromss_stream.json``)."""
    description = dataset.description
    stats = {}
    if not dataset.prescaled:
        for modality in dataset.modalities:
            norm = dataset.normalizers[modality]
            mean, std = norm.stats64
            stats[modality] = {"bands": list(dataset.bands_of(modality)), "mean": mean, "std": std,
                               "num_std": norm.num_std}
    classes = description.classes if description is not None else schema.CLASS_TABLES[cfg.kind]
    return {
        "format": "cromss-stream", "version": STREAM_VERSION, "kind": cfg.kind,
        "name": description.name if description is not None else cfg.kind,
        "modalities": {m: list(dataset.bands_of(m)) for m in dataset.modalities},
        "classes": list(classes.names), "class_colors": list(classes.colors), "class_table": classes.name,
        "labels": f"class ids 0..{classes.num_classes - 1} (stored {dataset.label_dtype.name}), "
                  f"{schema.IGNORE_INDEX} = ignore; label values already mapped from the source",
        "label_dtype": dataset.label_dtype.name,
        "prescaled": dataset.prescaled,
        "images": "uint8, already clipped to mean +/- 2 sigma and scaled to 0..255" if dataset.prescaled
                  else "raw values in the source dtype; normalised with 'stats' (mean +/- 2 std -> [0, 1])",
        "stats": stats,
        "num_seasons": dataset.num_seasons, "variable_timestamps": dataset.variable_timestamps,
        "has_true_labels": dataset.has_true_labels,
        "splits": splits, "source": str(cfg.root),
        "source_config": {k: v for k, v in asdict(cfg).items() if k in ("kind", "format", "s2_bands", "seed",
                                                                       "val_fraction", "eval_seasons", "season")},
    }


def _write_stream(cfg: DataConfig, folder: Path, chunk_bytes: int, num_workers: int,
                  splits: list[str] | None) -> dict[str, Any]:
    """Write the splits, their checksums and ``cromss_stream.json`` into ``folder`` (created)."""
    from cromss.outputs import atomic_write_text

    folder.mkdir(parents=True)
    cfg_dict = asdict(replace(cfg, max_samples=cfg.max_samples, crop_size=None, eval_crop=None))
    counts: dict[str, int] = {}
    first = None
    for split in splits or _source_splits(cfg):
        try:
            dataset = _source(cfg_dict, split)
        except DataError:
            if split == "test":
                continue
            raise
        first = first or dataset
        if split == "train":
            entries = [(location, -1) for location in range(len(dataset.locations))]
            if cfg.max_samples is not None:
                entries = entries[: cfg.max_samples]
        else:
            entries = [(location, season if season is not None else dataset._season(location, None))
                       for location, season in dataset.entries]
        if not entries:
            continue
        _write_split(folder / split, entries, cfg_dict, split, chunk_bytes, num_workers)
        counts[split] = len(entries)
    if first is None:
        raise DataError(f"{cfg.root}: no split to convert")
    meta = stream_metadata(first, cfg, counts)
    files = {}
    for split in counts:
        for path in sorted((folder / split).iterdir()):
            _fsync(path)  # on disk before the folder is renamed into place
            size, digest = file_digest(str(path))
            files[f"{split}/{path.name}"] = {"bytes": size, "sha256": digest}
    meta["files"] = files
    import json

    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2), "stream description")
    return meta


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_split(folder: Path, entries: list[tuple[int, int]], cfg_dict: dict[str, Any], split: str,
                 chunk_bytes: int, num_workers: int) -> None:
    """litdata chunks + ``index.json`` of one split, items in ``entries`` order."""
    import warnings

    from litdata.streaming.writer import BinaryWriter

    folder.mkdir(parents=True)
    writer = BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    with warnings.catch_warnings():
        # "An item was larger than the target chunk size": the chunk simply holds that one item
        warnings.filterwarnings("ignore", message="An item was larger than the target chunk size")
        for index, item in enumerate(_items(entries, cfg_dict, split, num_workers)):
            writer.add_item(index, item)
        writer.done()
    if not (folder / f"0.{INDEX_FILE}").is_file():
        raise DataError(f"stream split {split}: litdata wrote no chunk index for {len(entries)} item(s)")
    writer._merge_no_wait()  # one writer: merge its index now (merge() would poll for other writers)
    if not (folder / INDEX_FILE).is_file():
        raise DataError(f"stream split {split}: litdata wrote no {INDEX_FILE}")


def _items(entries: list[tuple[int, int]], cfg_dict: dict[str, Any], split: str, num_workers: int) -> Any:
    """The stream items of ``entries``, in order; read by ``num_workers`` processes when > 1 (bounded queue)."""

    if num_workers == 1:
        for entry in entries:
            yield _convert_one(entry, cfg_dict, split)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pending: deque[Any] = deque()
    todo = iter(entries)
    with ProcessPoolExecutor(num_workers) as pool:  # the platform's start method, as torch's DataLoader
        try:
            for entry in todo:
                pending.append(pool.submit(_convert_one, entry, cfg_dict, split))
                if len(pending) >= 4 * num_workers:
                    break
            while pending:
                item = pending.popleft().result()
                for entry in todo:  # keep the queue filled: memory stays bounded by 4 items per worker
                    pending.append(pool.submit(_convert_one, entry, cfg_dict, split))
                    break
                yield item
        except BrokenProcessPool:
            raise DataError("a conversion worker process died (killed, or out of memory?); run again, with fewer "
                            "--workers if memory is short") from None
        finally:
            for future in pending:
                future.cancel()


def _upload(local: Path, url: str) -> None:
    """Copy the finished stream folder ``local`` to ``url`` (fsspec), ``cromss_stream.json`` last."""
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        if fs.exists(f"{path.rstrip('/')}/{META_FILE}"):
            raise DataError(f"output {url} already holds a stream ({META_FILE})")
        for entry in sorted(local.iterdir()):
            if entry.is_dir():
                fs.put(str(entry), f"{path.rstrip('/')}/{entry.name}", recursive=True)
        fs.put(str(local / META_FILE), f"{path.rstrip('/')}/{META_FILE}")
    except (OSError, ImportError, ValueError) as err:
        raise OutputError(f"cannot upload the stream to {url}: {' '.join(str(err).split())}") from None
