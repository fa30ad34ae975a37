"""Data-fault fuzzing (issue 7): corrupt inputs end in a CromssError or a documented mask, never a crash.

A seeded loop mutates one file of a tiny NoL GeoTIFF tree per case (truncation, a corrupt header,
random bytes, wrong band count / extent / dtype, NaN/Inf, out-of-range or empty labels, missing
files), reads every location through ``cromss.data`` and feeds a batch through the CromSS loss path
(selection + smoothing + CE/Dice + KL) of a tiny model with a backward pass. Every mutation of every
kind of file (S1 band, S2 band, noisy label, true label) has ONE expected outcome, decided here:

* ``error``: a one-line :class:`~cromss.errors.CromssError` whose message names the mutated file (or,
  for a removed true-label file, its folder);
* ``masked``: the sample of that location and season marks exactly the mutated pixels invalid (NaN /
  Inf inputs) or unlabelled (an empty label mask), and the loss stays finite;
* ``skipped``: the location is left out with one warning naming it (an incomplete location);
* ``ok``: a valid sample (the file still holds usable values), finite loss and gradients.

Every (mutation, kind) pair runs once, then random pairs up to ``CASES``; the outcome counts are
printed (``pytest -s``). The same is done for LMDB values (random bytes, wrong tuples, unsafe pickles).
"""

from __future__ import annotations

import logging
import pickle
import random
import re
import shutil
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from fixtures import TINY_ENCODER

from cromss import schema
from cromss.errors import CromssError
from cromss.training import PretrainConfig

SIZE = 32
LOCATIONS = 3  # one can be skipped and two remain for the train / validation split
CASES = 60

KINDS = {"s1": "s1/*/*/*.tif", "s2": "s2c/*/*/*.tif", "label": "dw_labels/*/*.tif", "true": "dw_labels_true/*/*.tif"}


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    root = tmp_path_factory.mktemp("fuzz") / "demo"
    make_demo(root, locations=LOCATIONS, size=SIZE, dw_train=1, dw_test=1, seed=3, layouts=("geotiff",))
    return root / "nol"


@pytest.fixture(scope="module")
def tiny_module():
    """The pretraining LightningModule on a tiny model (used without a Trainer: its loss path only)."""
    from cromss.config import from_dict
    from cromss.training.module import CromSSModule

    torch.manual_seed(0)
    cfg = from_dict(
        PretrainConfig,
        {
            "data": {"kind": "nol", "root": "unused", "crop_size": None},
            "model": {"encoder": TINY_ENCODER, "decoder_channels": [8, 8, 8, 8, 8]},
            "method": {"rampup_epochs": 1},
        },
    )
    return CromSSModule(cfg)


# ----------------------------------------------------------------------------- mutations
def _rewrite(path: Path, data: np.ndarray, **profile_changes) -> None:
    with rasterio.open(path) as src:
        profile = src.profile
    data = data if data.ndim == 3 else data[None]
    profile.update(
        count=data.shape[0], height=data.shape[1], width=data.shape[2], dtype=data.dtype, **profile_changes
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def truncate(rng: random.Random, path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randint(0, len(data) - 1)])


def corrupt_header(rng: random.Random, path: Path) -> None:
    """The TIFF magic (bytes 0-3) replaced, or the first IFD offset (bytes 4-7) pointed past the end."""
    data = bytearray(path.read_bytes())
    if rng.random() < 0.5:
        data[0:4] = bytes(rng.choice([b"\x00\x00\x00\x00", b"MM\x00\x2b", b"GIF8", b"\xff\xd8\xff\xe0"]))
    else:
        data[4:8] = rng.randint(len(data) + 1, 2**32 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def garbage(rng: random.Random, path: Path) -> None:
    path.write_bytes(
        rng.choice([b"", b"II*\x00", b"not a tiff at all", bytes(rng.randint(0, 255) for _ in range(300))])
    )


def random_values(rng: random.Random, path: Path, low: float, high: float) -> None:
    """Every pixel replaced by a random value in [low, high] of the file's own dtype (a valid file)."""
    data = _read(path)
    values = np.random.default_rng(rng.randrange(2**32)).uniform(low, high, data.shape)
    _rewrite(path, values.astype(data.dtype))


def wrong_band_count(rng: random.Random, path: Path) -> None:
    _rewrite(path, np.repeat(_read(path), rng.randint(2, 3), axis=0))


def cut(rng: random.Random, path: Path) -> None:
    """A few rows and columns cut off: another extent, not a whole-number resolution of the grid."""
    data, n = _read(path), rng.choice([1, 3, 4, 7])
    _rewrite(path, np.ascontiguousarray(data[:, n:, : SIZE - n]))


def coarser(rng: random.Random, path: Path) -> None:
    """The band at half the resolution (as the 20 m bands of SSL4EO-S12): resampled to the grid."""
    _rewrite(path, np.ascontiguousarray(_read(path)[:, ::2, ::2]))


def complex_dtype(rng: random.Random, path: Path) -> None:
    _rewrite(path, _read(path).astype(np.complex64), nodata=None)


def float_dtype(rng: random.Random, path: Path) -> None:
    _rewrite(path, _read(path).astype(rng.choice([np.float32, np.float64])), nodata=None)


def integer_dtype(rng: random.Random, path: Path) -> None:
    """The same values as int16 / int32 (every demo value fits)."""
    _rewrite(path, _read(path).astype(rng.choice([np.int16, np.int32])), nodata=None)


def non_finite(rng: random.Random, path: Path) -> np.ndarray:
    """NaN / Inf at random pixels; returns the [H, W] mask of the pixels made non-finite."""
    data = _read(path).astype(np.float32)
    flat = data.reshape(-1)
    picks = rng.sample(range(flat.size), rng.randint(1, flat.size // 3))
    flat[picks] = rng.choice([np.nan, np.inf, -np.inf])
    _rewrite(path, data)
    return ~np.isfinite(data[0])


def label_out_of_range(rng: random.Random, path: Path) -> None:
    data = _read(path)
    data[0, rng.randrange(SIZE), rng.randrange(SIZE)] = rng.choice([9, 10, 100, 254])
    _rewrite(path, data)


def label_empty(rng: random.Random, path: Path) -> None:
    _rewrite(path, np.full((1, SIZE, SIZE), schema.IGNORE_INDEX, np.uint8))


def negative_label(rng: random.Random, path: Path) -> None:
    data = _read(path).astype(np.int16)
    data[0, rng.randrange(SIZE), rng.randrange(SIZE)] = -1
    _rewrite(path, data)


def delete(rng: random.Random, path: Path) -> None:
    path.unlink()


def delete_folder(rng: random.Random, path: Path) -> None:
    shutil.rmtree(path.parent)


def image_values(rng, path):
    random_values(rng, path, *((-30.0, 5.0) if "/s1/" in str(path) else (0.0, 8000.0)))


def label_values(rng, path):
    random_values(rng, path, 0, 8.49)  # every class id 0..8 (rounded down by the cast)


# (mutation, kind) -> the ONE expected outcome; "error" means: the message names the mutated file
IMAGE = {"s1", "s2"}
EXPECTED: dict[tuple[str, str], str] = {}
for _kind in ("s1", "s2", "label", "true"):
    for _name in ("truncate", "corrupt_header", "garbage", "wrong_band_count", "cut", "complex_dtype"):
        EXPECTED[_name, _kind] = "error"
EXPECTED |= {
    ("image_values", "s1"): "ok", ("image_values", "s2"): "ok",
    ("coarser", "s1"): "ok", ("coarser", "s2"): "ok",
    ("non_finite", "s1"): "masked", ("non_finite", "s2"): "masked",
    ("float_dtype", "s2"): "ok",  # S2 reflectance may be float
    ("integer_dtype", "s1"): "error",  # S1 must be float dB
    ("integer_dtype", "s2"): "ok",
    ("delete", "s1"): "error", ("delete", "s2"): "error",
    ("delete_folder", "s1"): "skipped", ("delete_folder", "s2"): "skipped",
}
for _kind in ("label", "true"):
    EXPECTED |= {
        ("label_values", _kind): "ok", ("integer_dtype", _kind): "ok",
        ("float_dtype", _kind): "error",  # labels must be integers
        ("label_out_of_range", _kind): "error", ("negative_label", _kind): "error",
        ("label_empty", _kind): "masked",
    }
EXPECTED |= {("delete", "label"): "skipped", ("delete_folder", "label"): "skipped",
             ("delete", "true"): "error", ("delete_folder", "true"): "error"}
MUTATIONS = {f.__name__: f for f in (
    truncate, corrupt_header, garbage, image_values, label_values, wrong_band_count, cut, coarser,
    complex_dtype, float_dtype, integer_dtype, non_finite, label_out_of_range, label_empty, negative_label,
    delete, delete_folder)}


# ----------------------------------------------------------------------------- checks
def _check_sample_contract(sample: dict, num_classes: int) -> None:
    """The documented result of a usable sample: finite inputs, masked invalid pixels, valid labels."""
    for modality in ("s1", "s2"):
        assert torch.isfinite(sample[modality]).all(), f"{modality} holds non-finite values"
        assert sample[modality].dtype == torch.float32
    label = sample["label"]
    known = label != schema.IGNORE_INDEX
    assert ((label[known] >= 0) & (label[known] < num_classes)).all()
    assert (label[~sample["valid"]] == schema.IGNORE_INDEX).all(), "invalid pixels must be ignored"
    for modality in ("s1", "s2"):
        assert float(sample[modality][:, ~sample["valid"]].abs().sum()) == 0.0, "invalid pixels must be 0"


def _loss_step(module, batch: dict) -> torch.Tensor:
    """The CromSS loss path of one training step (eqs. 1, 6-15) with a backward pass."""
    module.zero_grad(set_to_none=True)
    logits = module.net({m: batch[m] for m in module.modalities})
    probs = {m: out.float().softmax(dim=1) for m, out in logits.items()}
    targets = module.targets(batch)
    weights = module.weights(probs, batch["label"], 0.5, 0.5, selection=True)
    loss, _ = module.objective(logits, probs, targets, weights)
    loss.backward()
    return loss.detach()


def _read_all(root: Path) -> list[dict]:
    """Every (location, season) of the tree: both splits, every season, full tiles."""
    from cromss.data import DataConfig, build_dataset

    cfg = DataConfig(kind="nol", root=str(root), format="geotiff", crop_size=None, eval_seasons="all",
                     val_fraction=0.34)
    return [dataset[i] for split in ("train", "val") for dataset in [build_dataset(cfg, split, train=False)]
            for i in range(len(dataset))]


def _loss_of(module, samples: list[dict], collate) -> None:
    for sample in samples:
        _check_sample_contract(sample, module.num_classes)
    batch = collate(samples[:: max(1, len(samples) // 2)][:2])  # samples of two locations
    loss = _loss_step(module, batch)
    assert torch.isfinite(loss), f"non-finite loss {loss}"
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), "non-finite gradient"


def _season_index(path: Path, kind: str) -> int:
    """Season of a band (its folder) or a label file: its rank by the first YYYYMMDDTHHMMSS among its siblings."""
    item = path.parent if kind in IMAGE else path
    return sorted((p.name for p in item.parent.iterdir()),
                  key=lambda n: re.search(r"\d{8}T\d{6}", n).group(0)).index(item.name)


def _expect(outcome: str, name: str, kind: str, path: Path, extra, module, work: Path, collate, caplog) -> str:
    """Run one case and check its expected outcome; return what was seen (for the printed counts)."""
    location = path.relative_to(work).parts[1]
    if outcome == "error":
        with pytest.raises(CromssError) as info:
            _loss_of(module, _read_all(work), collate)
        message = str(info.value)
        assert "\n" not in message.strip(), f"multi-line message {message!r}"
        named = str(path.parent) if (name, kind) in {("delete", "true"), ("delete_folder", "true")} else str(path)
        assert named in message, f"the message does not name {named}: {message!r}"
        return type(info.value).__name__
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cromss"):
        samples = _read_all(work)
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cromss: warning:")]
    ids = {s["id"] for s in samples}
    if outcome == "skipped":
        assert location not in ids and len(ids) == LOCATIONS - 1, ids
        assert len(warnings) == 1 and location in warnings[0], warnings
    else:
        assert len(ids) == LOCATIONS and not warnings, warnings
    if outcome == "masked":
        season = _season_index(path, kind)
        (sample,) = [s for s in samples if s["id"] == location and int(s["season"]) == season]
        if kind in IMAGE:  # exactly the non-finite pixels are invalid, their labels ignored
            assert torch.equal(~sample["valid"], torch.from_numpy(extra)), "invalid pixels != the NaN/Inf ones"
            assert bool((sample["label"][~sample["valid"]] == schema.IGNORE_INDEX).all())
        else:  # the empty mask: that season's labels are all ignored
            key = "label" if kind == "label" else "label_true"
            assert bool((sample[key] == schema.IGNORE_INDEX).all()) and bool(sample["valid"].all())
            if kind == "label":
                assert bool((sample["labels_all_seasons"][season] == schema.IGNORE_INDEX).all())
    _loss_of(module, samples, collate)
    return outcome


@pytest.mark.over_budget(reason="every (mutation, kind of file) pair and random ones, 60 cases, each read in full "
                                "and run through the loss: the count is what the test is about")
def test_fuzz_geotiff_tree_through_readers_and_loss(clean_tree, tiny_module, tmp_path, caplog, monkeypatch):
    from torch.utils.data import default_collate

    import cromss.data.layouts

    torch.set_num_threads(1)  # shared test machine: one thread is faster under contention
    work = tmp_path / "work"
    shutil.copytree(clean_tree, work)
    files = {kind: sorted(clean_tree.glob(pattern)) for kind, pattern in KINDS.items()}
    rng = random.Random(1234)
    pairs = sorted(EXPECTED)
    plan = pairs + [rng.choice(pairs) for _ in range(CASES - len(pairs))]
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    # the first case is the clean tree: the loop itself must accept good data
    _loss_of(tiny_module, _read_all(work), default_collate)
    for name, kind in plan:
        source = rng.choice(files[kind])
        relative = source.relative_to(clean_tree)
        touched = relative.parent if name == "delete_folder" else relative
        extra = MUTATIONS[name](rng, work / relative)
        expected = EXPECTED[name, kind]
        monkeypatch.setattr(cromss.data.layouts, "_WARNED", set())  # a skip warning is shown once per process
        try:
            seen = _expect(expected, name, kind, work / relative, extra, tiny_module, work, default_collate, caplog)
            outcomes[f"{name} ({kind}) -> {seen}"] += 1
        except Exception:  # noqa: BLE001 - any other result is a finding
            failures.append(f"{name} in {relative} (expected {expected}): {traceback.format_exc(limit=-4)}")
        # only the touched file (or season folder) is restored afterwards: cheaper than a copy per case
        if (clean_tree / touched).is_dir():
            shutil.rmtree(work / touched, ignore_errors=True)
            shutil.copytree(clean_tree / touched, work / touched)
        else:
            shutil.copy2(clean_tree / touched, work / touched)
    print(f"\nGeoTIFF fuzz: {len(plan)} cases")
    for key, count in sorted(outcomes.items()):
        print(f"  {count:4d}  {key}")
    assert not failures, f"{len(failures)} case(s) without their expected outcome:\n" + "\n".join(failures[:5])
    assert len(plan) == CASES and set(pairs) <= {pair for pair in plan}


class MarkerPayload:
    """Unpickling this runs ``open(marker, "w")``: an unrestricted unpickler leaves the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_fuzz_lmdb_values(tmp_path):
    from cromss.data.readers import decode_lmdb_value

    good = pickle.dumps((bytes(range(8)), (2, 4), "0000001"), protocol=4)
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(MarkerPayload(live))).close()
    assert live.exists()  # the payload works: a plain pickle.loads runs it
    marker = tmp_path / "payload-ran"
    # each value's ONE outcome: the DataError naming the file, with this part of the message
    cases = {
        "absent": (None, "key '0' is absent"),
        "empty": (b"", "cannot be decoded safely"),
        "cut pickle": (good[: len(good) // 2], "cannot be decoded safely"),
        "code, top level": (pickle.dumps(MarkerPayload(marker)), "cannot be decoded safely"),
        "code, in the tuple": (pickle.dumps((b"", (0,), MarkerPayload(marker))), "cannot be decoded safely"),
        "code, as the shape": (pickle.dumps((b"ab", MarkerPayload(marker), "x")), "cannot be decoded safely"),
        "short bytes": (pickle.dumps((b"abc", (2, 4), "x")), "holds 3 bytes, shape (2, 4) needs 8"),
        "a list": (pickle.dumps([b"a", (1,), "x"]), "is not a tuple (bytes, shape, sample_id)"),
        "four items": (pickle.dumps((b"ab", (2,), "x", 4)), "is not a tuple (bytes, shape, sample_id)"),
        "text shape": (pickle.dumps((b"ab", ("a", 2), "x")), "holds an invalid shape ('a', 2)"),
        "no shape": (pickle.dumps((b"ab", None, "x")), "holds an invalid shape None"),
        "str data": (pickle.dumps(("ab", (2,), "x")), "holds str, expected bytes"),
        "negative shape": (pickle.dumps((b"ab", (-2,), "x")), "holds 2 bytes, shape (-2,) needs -2"),
    }
    for name, (data, needle) in cases.items():
        with pytest.raises(CromssError) as info:
            decode_lmdb_value(data, file="fuzz.lmdb", key="0")
        assert "LMDB fuzz.lmdb: " in str(info.value) and needle in str(info.value), (name, str(info.value))
    assert not marker.exists()  # no pickled code ran

    # random byte flips: inside the array bytes the value decodes to exactly the flipped array; elsewhere
    # (opcodes, lengths, the shape, the id) it decodes consistently or is a DataError naming the file
    rng = random.Random(99)
    start = good.index(bytes(range(8)))
    outcomes: Counter[str] = Counter()
    failures = []
    for case in range(150):
        data = bytearray(good)
        inside = case % 2 == 0
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(start, start + 8) if inside else rng.choice(
                [i for i in range(len(data)) if not start <= i < start + 8])
            data[at] = rng.choice([b for b in range(256) if b != data[at]])
        try:
            array, sample_id = decode_lmdb_value(bytes(data), file="fuzz.lmdb", key="0")
            assert array.dtype == np.uint8 and array.size == int(np.prod(array.shape)) and isinstance(sample_id, str)
            if inside:
                assert array.tobytes() == bytes(data[start:start + 8]) and array.shape == (2, 4)
                assert sample_id == "0000001"
            outcomes["decoded"] += 1
        except CromssError as err:
            assert not inside, f"a flip inside the array bytes must decode: {err}"
            assert "fuzz.lmdb" in str(err)
            outcomes[type(err).__name__] += 1
        except Exception:  # noqa: BLE001
            failures.append(traceback.format_exc(limit=-2))
    print(f"\nLMDB fuzz: {len(cases)} hand values, 150 flips: {dict(outcomes)}")
    assert not failures, "\n".join(failures[:3])
    assert outcomes["decoded"] >= 75 and outcomes["DataError"] >= 10
