"""Map a whole Sentinel-1/2 scene with a pretrained U-Net: tiled sliding-window inference.

The scene is cut into overlapping tiles (``tile`` px, ``overlap`` px shared by neighbours); each
tile's class probabilities are multiplied by a 2-D linear-ramp window (:func:`blend_window`) and
accumulated; the blended probability of a pixel is ``sum_t w_t p_t / sum_t w_t``. Tiles are
processed row of tiles by row of tiles, and only a strip of ``tile`` rows x scene width is kept in
memory: rows no later tile can touch are flushed to the output at once. Memory is therefore bounded by
the tile height times the scene width, never by the scene area.

:func:`sliding_window_predict` is the file-free core; :func:`predict_scene` adds GeoTIFF reading
(:mod:`cromss.scenes`: stack files or one file per band, resampled onto the finest grid), normalisation
with the run's statistics (:mod:`cromss.predictor`), nodata handling and GeoTIFF writing (uint8 class map
with the run's colour table, optional probabilities); :func:`predict_scenes` maps a folder of scenes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cromss.errors import DataError, OutputError
from cromss.locks import FolderLock
from cromss.outputs import check_output_file, prepare_output_dir, writing
from cromss.predictor import (  # noqa: F401  (re-exported: the predict API of cromss.predict)
    _generic_classes,
    load_predictor,
    run_class_table,
    run_folder_of,
    run_nodata_rules,
    run_normalizers,
)
from cromss.scenes import ModalitySpec, Scene, open_scene
from cromss.schema import DW_CLASSES, IGNORE_INDEX, ClassTable, modality_bands

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

    ``modality`` is one of the model's modalities or ``'mean'`` (average of all its modalities'
    probabilities). Tiles whose sides are not multiples of 32 are reflection-padded for the U-Net and
    cropped back.
    """
    import torch
    import torch.nn.functional as F

    used = list(net.modalities) if modality == "mean" else [modality]
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


def net_bands(net: Any, modality: str) -> tuple[str, ...]:
    """The band names ``net`` reads for ``modality``: ``cfg.band_names``, else the S1 / S2 tables."""
    names = getattr(net.cfg, "band_names", None)
    if names is not None:
        return tuple(names(modality))
    return modality_bands(modality, int(net.cfg.in_channels(modality)))


def default_normalizers(bands: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """The packaged SSL4EO-S12 statistics for S1 / S2 bands (models without a run config)."""
    from cromss.transforms import ClipNormalize

    return {m: ClipNormalize.for_bands(m, names, None) for m, names in bands.items()}


def predict_scene(net: Any, out: str | Path, s1: str | Path | None = None, s2: str | Path | None = None,
                  modality: str | None = None, tile: int = 256, overlap: int = 64,
                  probabilities: str | Path | None = None, probability_dtype: str = "float32",
                  nodata: float | None = None, classes: ClassTable = DW_CLASSES, device: str = "cpu",
                  cache_mb: int = 64, inputs: Mapping[str, ModalitySpec] | None = None,
                  normalizers: Mapping[str, Any] | None = None,
                  nodata_rules: Mapping[str, Any] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Predict a class map GeoTIFF for a scene with U-Net ``modality`` of ``net`` (a ``CromSSNet``).

    Args:
        net: model with ``forward_modality(modality, x)``, ``modalities`` and ``cfg`` (ModelConfig).
        out: output class map (uint8, nodata 255, colour table, on the scene's target grid).
        s1, s2: shorthands for ``inputs={'s1': s1, 's2': s2}``.
        inputs: modality -> RAW input: a stack file, a folder of band files or band name -> file, at any
            resolution (:mod:`cromss.scenes`: band order checked by name, everything resampled onto the
            finest input grid, which is the grid of the map).
        modality: a modality of the model or ``'mean'`` (average of all its modalities); default:
            ``'s2'`` if given and the model has it, else the first model modality with an input.
        tile, overlap: sliding window size and overlap in pixels.
        probabilities: optional per-class probability GeoTIFF (one band per class).
        probability_dtype: ``'float32'`` (0..1, nodata NaN) or ``'uint8'`` (percent 0..100, nodata 255).
        nodata: input nodata value overriding the files' own (NaN is always nodata).
        classes: class names and colours of the map's colour table and tags.
        device: torch device.
        cache_mb: GDAL block cache for the writes (keeps memory bounded on huge scenes).
        normalizers: modality -> ClipNormalize of the run (:func:`run_normalizers`); default: the packaged
            SSL4EO-S12 statistics (S1 / S2 only).
        nodata_rules: modality -> :class:`cromss.data.description.NodataRule` of the run
            (:func:`run_nodata_rules`: its value replaces the file's nodata, ``nodata`` wins over both);
            default: the built-in datasets' rules (S1: nodata in any band, others: in all bands).
        overwrite: replace an existing ``out`` / ``probabilities`` (refused otherwise, before the scene
            is read: :func:`cromss.outputs.check_output_file`). ``<out>.lock`` keeps a second prediction
            from writing the same map at the same time.

    Returns:
        Summary: size, grid, modality, tiles, class pixel counts, resampled files, band checks.
    """
    out = Path(out)
    probabilities = None if probabilities is None else Path(probabilities)
    check_output_file(out, "class map", overwrite)
    if probabilities is not None:
        check_output_file(probabilities, "probability map", overwrite, others={"--out": out})
    prepare_output_dir(out.parent, "output folder of --out")
    with FolderLock(out.with_name(out.name + ".lock"), out, "class map"):
        check_output_file(out, "class map", overwrite)  # again: another prediction may have finished it
        return _predict_scene(net, out, s1=s1, s2=s2, modality=modality, tile=tile, overlap=overlap,
                              probabilities=probabilities, probability_dtype=probability_dtype, nodata=nodata,
                              classes=classes, device=device, cache_mb=cache_mb, inputs=inputs,
                              normalizers=normalizers, nodata_rules=nodata_rules)


def _predict_scene(net: Any, out: str | Path, s1: str | Path | None = None, s2: str | Path | None = None,
                   modality: str | None = None, tile: int = 256, overlap: int = 64,
                   probabilities: str | Path | None = None, probability_dtype: str = "float32",
                   nodata: float | None = None, classes: ClassTable = DW_CLASSES, device: str = "cpu",
                   cache_mb: int = 64, inputs: Mapping[str, ModalitySpec] | None = None,
                   normalizers: Mapping[str, Any] | None = None,
                   nodata_rules: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`predict_scene` once its outputs are checked and locked."""
    import rasterio

    specs: dict[str, ModalitySpec] = dict(inputs or {})
    for name, path in (("s1", s1), ("s2", s2)):
        if path is not None:
            if name in specs:
                raise DataError(f"two inputs for modality {name}: --{name} and --input {name}=...")
            specs[name] = path
    used = scene_modalities(net, modality, set(specs))
    if modality is None:
        modality = used[0]
    for m in used:
        if m not in specs:
            raise DataError(f"--modality {modality} needs the {m} input (--input {m}=PATH, --band {m}:BAND=PATH"
                            + (f" or --{m} PATH)" if m in ("s1", "s2") else ")"))
    if probability_dtype not in ("float32", "uint8"):
        raise DataError(f"probability dtype must be float32 or uint8, got {probability_dtype!r}")
    num_classes = int(net.cfg.num_classes)
    if num_classes > len(classes):
        classes = _generic_classes(num_classes)
    bands = {m: net_bands(net, m) for m in used}
    normalizers = dict(normalizers) if normalizers is not None else default_normalizers(bands)
    for m in used:
        if m not in normalizers or normalizers[m].num_bands != len(bands[m]):
            raise DataError(f"no band statistics for the {len(bands[m])} {m} bands of the model")
    rules = dict(nodata_rules or {})
    values = {m: nodata if nodata is not None else getattr(rules.get(m), "value", None) for m in used}
    any_band = {m: rules[m].rule == "any" if m in rules else m == "s1" for m in used}
    scene = open_scene({m: specs[m] for m in used}, bands, values, any_band)
    try:
        grid = scene.grid
        height, width = grid.height, grid.width
        profile = {
            "driver": "GTiff", "width": width, "height": height, "crs": grid.crs, "transform": grid.transform,
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
                        dst.update_tags(classes=",".join(classes.names[:num_classes]), modality=modality,
                                        class_colors=",".join(classes.colors[:num_classes]))
                    if probabilities is not None:
                        prob_nodata = float("nan") if probability_dtype == "float32" else NODATA_PROB_UINT8
                        with writing(probabilities, "probability map"):
                            prob_dst = rasterio.open(temps[probabilities], "w", count=num_classes,
                                                     dtype=probability_dtype, nodata=prob_nodata, **profile)
                            for index in range(num_classes):
                                prob_dst.set_band_description(index + 1, classes.names[index])

                    def read_window(row: int, col: int, h: int, w: int) -> tuple[dict, np.ndarray]:
                        return _read_window(scene, normalizers, row, col, h, w)

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
        scene.close()
    return {"out": str(out), "height": height, "width": width, "modality": modality, "tile": tile,
            "overlap": overlap, "class_pixels": {classes.names[i]: int(counts[i]) for i in range(num_classes)},
            "crs": str(grid.crs), "transform": list(grid.transform)[:6], "resampled": scene.resampled,
            "band_check": {m: scene.inputs[m].band_check for m in used}}


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


def _read_window(scene: Scene, normalizers: Mapping[str, Any], row: int, col: int, h: int,
                 w: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Normalised float32 ``[C, h, w]`` per modality and the valid mask, as the datasets make them.

    A pixel invalid in any modality is invalid in all of them, and invalid input pixels are 0.
    """
    import torch

    inputs, valid = {}, np.ones((h, w), bool)
    for m in scene.inputs:
        raw, invalid = scene.read(m, row, col, h, w)
        inputs[m] = normalizers[m](torch.from_numpy(raw)).numpy()
        valid &= ~invalid
    for x in inputs.values():
        x[:, ~valid] = 0.0
    return inputs, valid


# ============================================================================ folders of scenes
def scene_modalities(net: Any, modality: str | None, given: Any = None) -> list[str]:
    """The modalities a prediction with ``modality`` (a model modality, ``'mean'`` or None) reads.

    ``None`` picks ``s2`` if the model has it (and, when ``given`` names the modalities with an input,
    it is given), else the model's first (given) modality.
    """
    model_modalities = list(getattr(net, "modalities", ()))
    if modality is not None and modality != "mean" and modality not in model_modalities:
        raise DataError(f"the model has no {modality} U-Net (it has {model_modalities}); choose --modality "
                        f"{' or '.join([*model_modalities, 'mean'])}")
    if modality == "mean":
        return model_modalities
    if modality is not None:
        return [modality]
    candidates = [m for m in model_modalities if given is None or m in given]
    if not candidates:
        raise DataError(f"no input for any modality of the model (it reads {model_modalities}); "
                        f"inputs given: {sorted(given) or 'none'}")
    return ["s2"] if "s2" in candidates else candidates[:1]


def find_scenes(folder: str | Path, bands: Mapping[str, tuple[str, ...]],
                errors: dict[str, str] | None = None) -> dict[str, dict[str, ModalitySpec]]:
    """Scene name -> inputs of the scenes of ``folder``: one scene per subfolder, or per raster file when
    one modality is read.

    In a scene subfolder a modality is its band files (matched by band name, :func:`cromss.scenes.match_band_files`),
    else the one raster file whose name holds the modality name as a token (``s2.tif``, ``scene_s1.tif``).
    With ``errors`` given, a scene whose inputs cannot be found is recorded there (name -> message) and
    left out instead of stopping the search.
    """
    from cromss.scenes import is_raster, match_band_files

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--scenes folder not found: {folder}")
    scenes: dict[str, dict[str, ModalitySpec]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            name, specs, failed = entry.name, {}, False
            for m, names in bands.items():
                try:
                    match_band_files(entry, names, m)
                    specs[m] = entry
                except DataError as band_err:
                    stacks = [p for p in sorted(entry.iterdir()) if is_raster(p)
                              and m.lower() in re.split(r"[_\-.\s]+", p.stem.lower())]
                    if len(stacks) != 1:
                        problem = (f"scene {entry}: no {m} input: no single stack file named by the modality "
                                   f"(e.g. {m}.tif; found {len(stacks)}) and not one file per band ({band_err})")
                        if errors is None:
                            raise DataError(problem) from None
                        errors[name], failed = problem, True
                        break
                    specs[m] = stacks[0]
            if failed:
                continue
        elif is_raster(entry):
            if len(bands) != 1:
                raise DataError(f"scene file {entry}: the prediction reads {list(bands)}; put the files of each "
                                "scene in a subfolder of --scenes")
            name, specs = entry.stem, {next(iter(bands)): entry}
        else:
            continue
        if name in scenes:
            raise DataError(f"--scenes {folder}: two scenes named {name!r} (their maps would share a file name)")
        scenes[name] = specs
    if not scenes and not errors:
        raise DataError(f"--scenes {folder} holds no scene (a subfolder per scene, or raster files)")
    return scenes


def predict_scenes(net: Any, scenes: str | Path, out_dir: str | Path, probabilities_dir: str | Path | None = None,
                   modality: str | None = None, **options: Any) -> list[dict[str, Any]]:
    """:func:`predict_scene` for every scene of folder ``scenes`` (:func:`find_scenes`): the map of scene
    ``NAME`` is ``out_dir/NAME.tif`` (probabilities ``probabilities_dir/NAME.tif``).

    Every scene that can be mapped is mapped: a scene that fails (a missing band, inputs that do not
    overlap, an existing map without ``overwrite``) is listed as ``{"scene": NAME, "error": MESSAGE}`` in
    the returned list (in scene order) and the next scene is mapped. The CLI exits non-zero when any failed.
    """
    from cromss.errors import CromssError

    used = scene_modalities(net, modality)
    errors: dict[str, str] = {}
    found = find_scenes(scenes, {m: net_bands(net, m) for m in used}, errors)
    out_dir = Path(out_dir)
    if out_dir.resolve() == Path(scenes).resolve():
        raise DataError(f"--out {out_dir} is the --scenes folder; write the maps to another folder")
    if probabilities_dir is not None and Path(probabilities_dir).resolve() == out_dir.resolve():
        raise OutputError(f"--probabilities {probabilities_dir} is the --out folder {out_dir}: the probability "
                          "maps would replace the class maps; give each its own folder")
    summaries: dict[str, dict[str, Any]] = {name: {"scene": name, "error": error} for name, error in errors.items()}
    for name, specs in found.items():
        probs = None if probabilities_dir is None else Path(probabilities_dir) / f"{name}.tif"
        try:
            summary = predict_scene(net, out_dir / f"{name}.tif", inputs=specs, modality=modality,
                                    probabilities=probs, **options)
        except CromssError as err:  # the other scenes are still mapped; this one is listed at the end
            summaries[name] = {"scene": name, "error": " ".join(str(err).split())}
            continue
        summaries[name] = {"scene": name, **summary}
    return [summaries[name] for name in sorted(summaries)]
