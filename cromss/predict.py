"""Map a whole Sentinel-1/2 scene with a pretrained U-Net: tiled sliding-window inference.

The scene is cut into overlapping tiles (``tile`` px, ``overlap`` px shared by neighbours); each
tile's class probabilities are multiplied by a 2-D linear-ramp window (:func:`blend_window`) and
accumulated; the blended probability of a pixel is ``sum_t w_t p_t / sum_t w_t``. Tiles are
processed row of tiles by row of tiles, and only a strip of ``tile`` rows x scene width is kept in
memory: rows no later tile can touch are flushed to the output at once. Memory is therefore bounded by
the tile height times the scene width, never by the scene area.

:func:`sliding_window_predict` is the file-free core; :func:`predict_scene` adds GeoTIFF reading
(rasterio windows), normalisation (:class:`cromss.transforms.ClipNormalize`), nodata handling and
GeoTIFF writing (uint8 class map with the Dynamic World colour table, optional probabilities).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cromss.errors import DataError, OutputError
from cromss.outputs import prepare_output_dir, writing
from cromss.schema import DW_CLASSES, IGNORE_INDEX, S2_9BAND_INDICES, ClassTable

#: Class value written where the input is nodata (also the GeoTIFF nodata value of the class map).
NODATA_CLASS: int = IGNORE_INDEX
#: Nodata value of uint8 probability rasters (probabilities are stored as percent 0..100).
NODATA_PROB_UINT8: int = 255

#: ``read_window(row, col, height, width) -> (inputs, valid [height, width] bool)``
ReadWindow = Callable[[int, int, int, int], tuple[Any, np.ndarray]]
#: ``model_fn(inputs) -> probabilities [num_classes, height, width]`` (numpy or torch)
ModelFn = Callable[[Any], Any]
#: ``write_block(row, probabilities [num_classes, rows, width] float32, valid [rows, width] bool)``
WriteBlock = Callable[[int, np.ndarray, np.ndarray], None]


# ============================================================================ pure core
def blend_window(height: int, width: int, overlap: int) -> np.ndarray:
    """2-D blending weights ``[height, width]``: outer product of two 1-D linear ramps.

    Each 1-D ramp rises linearly over the first ``overlap`` pixels, is 1 in the middle and falls
    over the last ``overlap`` pixels: ``w(i) = min(1, (i + 1) / (overlap + 1), (n - i) / (overlap + 1))``.
    All weights are > 0, so pixels at the scene border (covered by a single tile) keep that tile's
    prediction after normalisation, and two overlapping ramps cross-fade smoothly.
    """

    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float64)
        if overlap <= 0:
            return np.ones(n)
        return np.minimum(1.0, np.minimum((i + 1) / (overlap + 1), (n - i) / (overlap + 1)))

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` with step ``stride`` covering ``[0, size)``.

    The last tile is shifted back to end exactly at ``size`` (no padding beyond the scene); a scene
    shorter than a tile gets one tile ``[0, size)``.
    """
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _to_numpy(probs: Any) -> np.ndarray:
    if hasattr(probs, "detach"):
        probs = probs.detach().cpu().numpy()
    return np.asarray(probs, dtype=np.float32)


def sliding_window_predict(model_fn: ModelFn, read_window: ReadWindow, height: int, width: int,
                           tile: int, overlap: int, num_classes: int, write_block: WriteBlock) -> None:
    """Blend tile predictions over a ``height x width`` scene, writing finished rows as they complete.

    Args:
        model_fn: tile inputs -> probabilities ``[num_classes, h, w]`` (numpy array or tensor).
        read_window: ``(row, col, h, w) -> (inputs, valid)``, the scene window at (row, col) of size
            h x w and its validity mask ``[h, w]`` (bool).
        height, width: scene size in pixels.
        tile: tile edge (shrunk to the scene if the scene is smaller).
        overlap: pixels shared by neighbouring tiles (``0 <= overlap < tile``).
        num_classes: channels of the probabilities.
        write_block: receives consecutive row blocks, top to bottom, exactly once per scene row:
            ``(row, probs [num_classes, rows, width] float32, valid [rows, width] bool)``.

    Memory: one strip of ``min(tile, height)`` rows x ``width`` (x ``num_classes + 2``).
    """
    if height < 1 or width < 1:
        raise DataError(f"scene must be at least 1x1 px, got {height}x{width}")
    if tile < 1 or not 0 <= overlap < tile:
        raise DataError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    tile_h, tile_w = min(tile, height), min(tile, width)
    stride = tile - overlap
    rows, cols = tile_starts(height, tile_h, stride), tile_starts(width, tile_w, stride)
    window = blend_window(tile_h, tile_w, overlap)
    acc = np.zeros((num_classes, tile_h, width), np.float32)
    weight = np.zeros((tile_h, width), np.float32)
    valid = np.zeros((tile_h, width), bool)
    top = 0  # scene row of strip row 0

    def flush(count: int) -> None:
        probs = acc[:, :count] / weight[None, :count]
        write_block(top, probs, valid[:count].copy())

    for row in rows:
        if row > top:  # strip rows above `row` are complete: no later tile reaches them
            done = row - top
            flush(done)
            for buf in (acc, weight, valid):  # shift the strip up by `done` rows
                buf[..., : tile_h - done, :] = buf[..., done:, :].copy()
                buf[..., tile_h - done:, :] = 0
            top = row
        for col in cols:
            inputs, tile_valid = read_window(row, col, tile_h, tile_w)
            probs = _to_numpy(model_fn(inputs))
            if probs.shape != (num_classes, tile_h, tile_w):
                raise DataError(f"model returned probabilities of shape {probs.shape}, expected "
                                f"{(num_classes, tile_h, tile_w)}")
            acc[:, :, col:col + tile_w] += probs * window
            weight[:, col:col + tile_w] += window
            valid[:, col:col + tile_w] = np.asarray(tile_valid, bool)
    flush(height - top)


# ============================================================================ GeoTIFF glue
@dataclass
class SceneInput:
    """One modality's GeoTIFF opened for windowed reading."""

    modality: str
    path: Path
    dataset: Any  # rasterio DatasetReader
    band_indexes: list[int]  # 1-based bands to read, in model order
    nodata: float | None
    normalize: Any  # ClipNormalize


def _open_input(modality: str, path: str | Path, num_bands: int, nodata: float | None) -> SceneInput:
    import rasterio

    from cromss.transforms import ClipNormalize

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{modality.upper()} input file not found: {path}")
    try:
        dataset = rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot read {modality.upper()} GeoTIFF {path}: {err}") from None
    count = dataset.count
    if count == num_bands:
        indexes = list(range(1, count + 1))
    elif modality == "s2" and count == 13 and num_bands == 9:
        indexes = [i + 1 for i in S2_9BAND_INDICES]  # the model's 9 bands out of the 13 L1C bands
    else:
        dataset.close()
        expected = "2 (VV, VH)" if modality == "s1" else "13 (B1..B12 with B8A, B10) or 9"
        raise DataError(f"{modality.upper()} file {path} has {count} bands; the model needs {num_bands} "
                        f"(file with {expected} bands)")
    file_nodata = dataset.nodata if nodata is None else nodata
    return SceneInput(modality, path, dataset, indexes, file_nodata,
                      ClipNormalize.for_modality(modality, num_bands))


def _check_same_grid(inputs: list[SceneInput]) -> None:
    first = inputs[0].dataset
    for other in inputs[1:]:
        ds = other.dataset
        if (ds.width, ds.height) != (first.width, first.height) or ds.transform != first.transform \
                or ds.crs != first.crs:
            raise DataError(
                f"{inputs[0].path} ({first.width}x{first.height}, {first.crs}) and {other.path} "
                f"({ds.width}x{ds.height}, {ds.crs}) are not on the same pixel grid; resample one first"
            )


def _read(scene: SceneInput, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised float32 ``[C, h, w]`` (invalid pixels 0) and valid mask ``[h, w]``."""
    import torch
    from rasterio.windows import Window

    raw = scene.dataset.read(scene.band_indexes, window=Window(col, row, width, height), out_dtype="float32")
    bad = ~np.isfinite(raw)
    if scene.nodata is not None and np.isfinite(scene.nodata):
        bad |= raw == np.float32(scene.nodata)
    valid = ~bad.any(axis=0)
    x = scene.normalize(torch.from_numpy(raw)).numpy()
    x[:, ~valid] = 0.0  # as the datasets do: invalid input pixels are 0
    return x, valid


def colormap(classes: ClassTable = DW_CLASSES) -> dict[int, tuple[int, int, int, int]]:
    """GeoTIFF colour table: class id -> RGBA from the class table; nodata transparent black."""
    table = {}
    for index, color in enumerate(classes.colors):
        hex_color = color.lstrip("#")
        table[index] = (int(hex_color[0:2], 16), int(hex_color[2:4], 16), int(hex_color[4:6], 16), 255)
    table[NODATA_CLASS] = (0, 0, 0, 0)
    return table


def make_model_fn(net: Any, modality: str, device: str = "cpu") -> ModelFn:
    """Tile inputs ``{modality: [C, h, w]}`` -> softmax probabilities ``[K, h, w]`` of one U-Net.

    ``modality`` is ``'s1'``, ``'s2'`` or ``'mean'`` (average of both modalities' probabilities).
    Tiles whose sides are not multiples of 32 are reflection-padded for the U-Net and cropped back.
    """
    import torch
    import torch.nn.functional as F

    used = ["s1", "s2"] if modality == "mean" else [modality]
    net = net.to(device).eval()

    @torch.no_grad()
    def model_fn(inputs: dict[str, np.ndarray]) -> np.ndarray:
        total = None
        for m in used:
            x = torch.from_numpy(inputs[m]).unsqueeze(0).to(device)
            h, w = x.shape[-2:]
            pad_h, pad_w = -h % 32, -w % 32
            if pad_h or pad_w:
                mode = "reflect" if pad_h < h and pad_w < w else "replicate"
                x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            probs = torch.softmax(net.forward_modality(m, x).float(), dim=1)[0, :, :h, :w]
            total = probs if total is None else total + probs
        return (total / len(used)).cpu().numpy()

    return model_fn


def predict_scene(net: Any, out: str | Path, s1: str | Path | None = None, s2: str | Path | None = None,
                  modality: str | None = None, tile: int = 256, overlap: int = 64,
                  probabilities: str | Path | None = None, probability_dtype: str = "float32",
                  nodata: float | None = None, classes: ClassTable = DW_CLASSES, device: str = "cpu",
                  cache_mb: int = 64) -> dict[str, Any]:
    """Predict a class map GeoTIFF for a scene with U-Net ``modality`` of ``net`` (a ``CromSSNet``).

    Args:
        net: model with ``forward_modality(modality, x)``, ``modalities`` and ``cfg`` (ModelConfig).
        out: output class map (uint8, nodata 255, colour table, CRS/transform of the input).
        s1, s2: input GeoTIFFs (raw dB / L1C DN values) on the same grid.
        modality: ``'s1'``, ``'s2'``, ``'mean'``; default: ``'s2'`` if an S2 file and S2 U-Net exist,
            else ``'s1'``.
        tile, overlap: sliding window size and overlap in pixels.
        probabilities: optional per-class probability GeoTIFF (one band per class).
        probability_dtype: ``'float32'`` (0..1, nodata NaN) or ``'uint8'`` (percent 0..100, nodata 255).
        nodata: input nodata value overriding the files' own (NaN is always nodata).
        device: torch device.
        cache_mb: GDAL block cache for the writes (keeps memory bounded on huge scenes).

    Returns:
        Summary: size, modality, tiles, class pixel counts.
    """
    import rasterio

    paths = {"s1": s1, "s2": s2}
    model_modalities = list(getattr(net, "modalities", ()))
    if modality is None:
        modality = "s2" if s2 is not None and "s2" in model_modalities else "s1"
    if modality not in ("s1", "s2", "mean"):
        raise DataError(f"--modality must be s1, s2 or mean, got {modality!r}")
    used = ["s1", "s2"] if modality == "mean" else [modality]
    for m in used:
        if m not in model_modalities:
            raise DataError(f"the model has no {m.upper()} U-Net (it has {model_modalities}); "
                            f"choose --modality {' or '.join(model_modalities)}")
        if paths[m] is None:
            raise DataError(f"--modality {modality} needs the --{m} GeoTIFF")
    if probability_dtype not in ("float32", "uint8"):
        raise DataError(f"probability dtype must be float32 or uint8, got {probability_dtype!r}")
    num_classes = int(net.cfg.num_classes)
    if num_classes > len(classes):
        classes = _generic_classes(num_classes)
    scenes = [_open_input(m, paths[m], int(net.cfg.in_channels(m)), nodata) for m in used]
    try:
        _check_same_grid(scenes)
        ref = scenes[0].dataset
        height, width = ref.height, ref.width
        profile = {
            "driver": "GTiff", "width": width, "height": height, "crs": ref.crs, "transform": ref.transform,
            "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
        }
        counts = np.zeros(num_classes, np.int64)
        out = Path(out)
        prepare_output_dir(out.parent, "output folder of --out")
        targets = {out: "class map"}
        if probabilities is not None:
            probabilities = Path(probabilities)
            prepare_output_dir(probabilities.parent, "output folder of --probabilities")
            targets[probabilities] = "probability map"
        # written as <name>.tmp, read back, then renamed: libtiff reports a full disk or a file size limit
        # only on stderr (the map would be silently incomplete), and an earlier map stays intact
        temps = {path: path.with_name(path.name + ".tmp") for path in targets}
        try:
            with rasterio.Env(GDAL_CACHEMAX=cache_mb):
                with writing(out, "class map"):
                    dst = rasterio.open(temps[out], "w", count=1, dtype="uint8", nodata=NODATA_CLASS, **profile)
                prob_dst = None
                try:
                    with writing(out, "class map"):
                        dst.write_colormap(1, colormap(classes))
                        dst.set_band_description(1, "class")
                        dst.update_tags(classes=",".join(classes.names[:num_classes]), modality=modality)
                    if probabilities is not None:
                        prob_nodata = float("nan") if probability_dtype == "float32" else NODATA_PROB_UINT8
                        with writing(probabilities, "probability map"):
                            prob_dst = rasterio.open(temps[probabilities], "w", count=num_classes,
                                                     dtype=probability_dtype, nodata=prob_nodata, **profile)
                            for index in range(num_classes):
                                prob_dst.set_band_description(index + 1, classes.names[index])

                    def read_window(row: int, col: int, h: int, w: int) -> tuple[dict, np.ndarray]:
                        inputs, valid = {}, np.ones((h, w), bool)
                        for scene in scenes:
                            inputs[scene.modality], scene_valid = _read(scene, row, col, h, w)
                            valid &= scene_valid
                        return inputs, valid

                    def write_block(row: int, probs: np.ndarray, valid: np.ndarray) -> None:
                        from rasterio.windows import Window

                        window = Window(0, row, width, probs.shape[1])
                        labels = probs.argmax(axis=0).astype(np.uint8)
                        labels[~valid] = NODATA_CLASS
                        counts[:] += np.bincount(labels[valid].ravel(), minlength=num_classes)[:num_classes]
                        with writing(out, "class map"):
                            dst.write(labels, 1, window=window)
                        if prob_dst is not None:
                            if probability_dtype == "uint8":
                                values = np.rint(probs * 100).astype(np.uint8)
                                values[:, ~valid] = NODATA_PROB_UINT8
                            else:
                                values = probs.astype(np.float32)
                                values[:, ~valid] = np.nan
                            with writing(probabilities, "probability map"):
                                prob_dst.write(values, window=window)

                    sliding_window_predict(make_model_fn(net, modality, device), read_window, height, width,
                                           tile, overlap, num_classes, write_block)
                finally:
                    # closing flushes the last compressed blocks: a full disk can show up only here
                    with writing(out, "class map"):
                        dst.close()
                    if prob_dst is not None:
                        with writing(probabilities, "probability map"):
                            prob_dst.close()
                for path, what in targets.items():
                    _check_written(temps[path], path, what)
            for path in sorted(targets, key=lambda p: p != out):  # the class map last: it marks completion
                with writing(path, targets[path]):
                    os.replace(temps[path], path)
        except BaseException:
            for temp in temps.values():
                temp.unlink(missing_ok=True)
            raise
    finally:
        for scene in scenes:
            scene.dataset.close()
    return {"out": str(out), "height": height, "width": width, "modality": modality, "tile": tile,
            "overlap": overlap, "class_pixels": {classes.names[i]: int(counts[i]) for i in range(num_classes)}}


# ============================================================================ models
def _check_written(temp: Path, path: Path, what: str) -> None:
    """Read every block of a map just written: an incomplete file (full disk, file size limit) fails."""
    import rasterio

    try:
        with rasterio.open(temp) as dataset:
            for _, window in dataset.block_windows(1):
                dataset.read(window=window)
    except (OSError, rasterio.errors.RasterioError) as err:
        raise OutputError(
            f"cannot write {what} {path}: the written file is incomplete (disk full or a file size limit? "
            f"{(str(err.__cause__ or err).splitlines() or [type(err).__name__])[0]})"
        ) from None


class _FinetunedNet:
    """Adapter giving a fine-tuned smp model (cromss.transfer) the ``forward_modality`` interface."""

    def __init__(self, module: Any, cfg: Any) -> None:
        from types import SimpleNamespace

        self.module = module
        self.modalities = [cfg.modality]
        self.cfg = SimpleNamespace(num_classes=cfg.classes, in_channels=lambda m: cfg.in_channels)

    def to(self, device: str) -> _FinetunedNet:
        self.module.to(device)
        return self

    def eval(self) -> _FinetunedNet:
        self.module.eval()
        return self

    def forward_modality(self, modality: str, x: Any) -> Any:
        return self.module(x)


def load_predictor(checkpoint: str | Path) -> tuple[Any, ClassTable, str, dict[str, Any]]:
    """A model for :func:`predict_scene`, its class table, its kind (``'pretrain'``/``'finetune'``)
    and its resolved config dict (for a fine-tuning run, ``data.modalities`` is its one modality).

    Tries, in order: a pretraining run folder / checkpoint or an official CromSS checkpoint
    (:func:`cromss.weights.load_cromss_net`; each modality's U-Net can map), then a fine-tuning
    run folder / checkpoint (:func:`cromss.transfer.load_run`; its one modality and class table).
    """
    from cromss.errors import CheckpointError, ConfigError
    from cromss.weights import load_cromss_net

    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint or run folder not found: {path}")
    try:
        net, config = load_cromss_net(path)
        return net, DW_CLASSES if net.cfg.num_classes == len(DW_CLASSES) else _generic_classes(
            net.cfg.num_classes), "pretrain", config
    except CheckpointError as pretrain_err:
        try:
            from cromss.schema import CLASS_TABLES
            from cromss.transfer import load_run

            module, cfg, _ = load_run(path)
        except (CheckpointError, ConfigError) as finetune_err:
            raise CheckpointError(f"{path} is neither a pretraining checkpoint ({pretrain_err}) nor a "
                                  f"fine-tuning checkpoint ({finetune_err})") from None
        table = CLASS_TABLES.get(cfg.data.kind)
        if table is None or len(table) != cfg.classes:
            table = _generic_classes(cfg.classes)
        from cromss.config import to_dict

        config = to_dict(cfg)
        config["data"]["modalities"] = [cfg.modality]
        config["data"]["s2_bands"] = cfg.s2_bands
        return _FinetunedNet(module, cfg), table, "finetune", config


def _generic_classes(num_classes: int) -> ClassTable:
    colors = DW_CLASSES.colors
    return ClassTable("classes", tuple(f"class_{i}" for i in range(num_classes)),
                      tuple(colors[i % len(colors)] for i in range(num_classes)))
