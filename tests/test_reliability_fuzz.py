"""Data-fault fuzzing (issue 7): corrupt inputs end in a CromssError or a documented mask, never a crash.

A seeded loop (bounded in time) mutates one file of a tiny NoL GeoTIFF tree per case (truncation,
random bytes, wrong band count / shape / dtype, NaN/Inf, out-of-range or empty labels, missing
files), reads the location through ``cromss.data`` and feeds the batch through the CromSS loss path
(selection + smoothing + CE/Dice + KL) of a tiny model with a backward pass. Every case must end in

* a :class:`~cromss.errors.CromssError` (message names the file / key / value), or
* a sample that satisfies the batch contract (finite inputs, labels in 0..C-1 or 255, invalid pixels
  ignored) and a finite loss with finite gradients.

The same is done for LMDB values (random bytes, wrong tuples, unsafe pickles). The number of cases
is printed (``pytest -s``) and asserted.
"""

from __future__ import annotations

import pickle
import random
import shutil
import time
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
# A seeded loop of MAX_CASES mutations, stopped early only by the time cap (a loaded machine runs
# fewer cases per second; the count, not the clock, is what the test is about).
TIME_BUDGET_S = 150.0
MIN_CASES = 40
MAX_CASES = 60


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    root = tmp_path_factory.mktemp("fuzz") / "demo"
    make_demo(root, locations=2, size=SIZE, dw_train=1, dw_test=1, seed=3, layouts=("geotiff",))
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


def truncate(rng: random.Random, path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randint(0, len(data) - 1)])
    return "truncated"


def scramble(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    start = rng.randint(0, len(data) - 1)
    length = rng.randint(1, 64)
    for i in range(start, min(len(data), start + length)):
        data[i] = rng.randint(0, 255)
    path.write_bytes(bytes(data))
    return "random bytes"


def garbage(rng: random.Random, path: Path) -> str:
    path.write_bytes(
        rng.choice([b"", b"II*\x00", b"not a tiff at all", bytes(rng.randint(0, 255) for _ in range(300))])
    )
    return "not a GeoTIFF"


def wrong_band_count(rng: random.Random, path: Path) -> str:
    data = _read(path)
    _rewrite(path, np.repeat(data, rng.randint(2, 3), axis=0))
    return "wrong band count"


def wrong_shape(rng: random.Random, path: Path) -> str:
    data = _read(path)
    cut = rng.choice([1, 4, 16])
    _rewrite(path, np.ascontiguousarray(data[:, cut:, : SIZE - cut]))
    return "wrong shape"


def wrong_dtype(rng: random.Random, path: Path) -> str:
    data = _read(path)
    dtype = (
        rng.choice([np.float32, np.int16, np.complex64])
        if data.dtype != np.float32
        else rng.choice([np.int16, np.uint8, np.complex64])
    )
    _rewrite(path, data.astype(dtype), nodata=None)
    return "wrong dtype"


def non_finite(rng: random.Random, path: Path) -> str:
    data = _read(path).astype(np.float32)
    flat = data.reshape(-1)
    picks = rng.sample(range(flat.size), rng.randint(1, flat.size))
    flat[picks] = rng.choice([np.nan, np.inf, -np.inf])
    _rewrite(path, data)
    return "NaN/Inf pixels"


def label_out_of_range(rng: random.Random, path: Path) -> str:
    data = _read(path)
    data[0, rng.randrange(SIZE), rng.randrange(SIZE)] = rng.choice([9, 10, 100, 254])
    _rewrite(path, data)
    return "label out of range"


def label_empty(rng: random.Random, path: Path) -> str:
    _rewrite(path, np.full((1, SIZE, SIZE), schema.IGNORE_INDEX, np.uint8))
    return "empty label mask"


def negative_label(rng: random.Random, path: Path) -> str:
    data = _read(path).astype(np.int16)
    data[0, 0, 0] = -1
    _rewrite(path, data)
    return "negative label"


def delete(rng: random.Random, path: Path) -> str:
    path.unlink()
    return "file missing"


def delete_folder(rng: random.Random, path: Path) -> str:
    shutil.rmtree(path.parent)
    return "folder missing"


IMAGE_MUTATIONS = [
    truncate,
    scramble,
    garbage,
    wrong_band_count,
    wrong_shape,
    wrong_dtype,
    non_finite,
    delete,
    delete_folder,
]
LABEL_MUTATIONS = [
    truncate,
    scramble,
    garbage,
    wrong_band_count,
    wrong_shape,
    wrong_dtype,
    label_out_of_range,
    label_empty,
    negative_label,
    delete,
]


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


def _run_case(module, root: Path, collate) -> str:
    """Read every entry of the mutated tree, batch it and run the loss path; return the outcome."""
    from cromss.data import DataConfig, build_dataset

    cfg = DataConfig(
        kind="nol", root=str(root), format="geotiff", crop_size=None, eval_seasons="all", val_fraction=0.5
    )
    # both splits: every location (and every season of it) is read
    samples = [
        dataset[i]
        for split in ("train", "val")
        for dataset in [build_dataset(cfg, split, train=False)]
        for i in range(len(dataset))
    ]
    for sample in samples:
        _check_sample_contract(sample, module.num_classes)
    batch = collate(samples[:: max(1, len(samples) // 2)][:2])  # one sample of each location
    loss = _loss_step(module, batch)
    assert torch.isfinite(loss), f"non-finite loss {loss}"
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads), "non-finite gradient"
    if bool((batch["label"] == schema.IGNORE_INDEX).all()):
        assert float(loss) == 0.0  # nothing labelled: zero loss (documented), not NaN
        return "ok (all pixels ignored, loss 0)"
    return "ok"


@pytest.mark.over_budget(reason="at least 40 seeded mutations, each read in full and run through the loss: the "
                                "count is what the test is about")
def test_fuzz_geotiff_tree_through_readers_and_loss(clean_tree, tiny_module, tmp_path):
    from torch.utils.data import default_collate

    torch.set_num_threads(1)  # shared test machine: one thread is faster under contention
    work = tmp_path / "work"
    shutil.copytree(clean_tree, work)

    rng = random.Random(1234)
    files = {
        "image": sorted(clean_tree.glob("s1/*/*/*.tif")) + sorted(clean_tree.glob("s2c/*/*/*.tif")),
        "label": sorted(clean_tree.glob("dw_labels/*/*.tif"))
        + sorted(clean_tree.glob("dw_labels_true/*/*.tif")),
    }
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    started = time.perf_counter()
    cases = 0
    # the first case is the clean tree: the loop itself must accept good data
    while time.perf_counter() - started < TIME_BUDGET_S and cases < MAX_CASES:
        description, touched = "clean", None
        if cases:
            kind = rng.choice(["image", "label"])
            source = rng.choice(files[kind])
            mutation = rng.choice(IMAGE_MUTATIONS if kind == "image" else LABEL_MUTATIONS)
            # only the touched file (or season folder) is restored afterwards: cheaper than a copy per case
            touched = (
                source.relative_to(clean_tree).parent
                if mutation is delete_folder
                else source.relative_to(clean_tree)
            )
            description = (
                f"{mutation(rng, work / source.relative_to(clean_tree))} in {source.relative_to(clean_tree)}"
            )
        try:
            outcome = _run_case(tiny_module, work, default_collate)
        except CromssError as err:
            outcome = f"{type(err).__name__}"
            message = str(err)
            assert message and "\n" not in message.strip(), f"{description}: multi-line message {message!r}"
        except Exception:  # noqa: BLE001 - anything else is a finding
            failures.append(f"{description}: {traceback.format_exc(limit=-3)}")
            outcome = "UNHANDLED"
        outcomes[f"{description.split(' in ')[0]} -> {outcome}"] += 1
        if touched is not None:
            if (clean_tree / touched).is_dir():
                shutil.rmtree(work / touched, ignore_errors=True)
                shutil.copytree(clean_tree / touched, work / touched)
            else:
                shutil.copy2(clean_tree / touched, work / touched)
        cases += 1
    print(f"\nGeoTIFF fuzz: {cases} cases in {time.perf_counter() - started:.1f} s")
    for key, count in sorted(outcomes.items()):
        print(f"  {count:4d}  {key}")
    assert not failures, "unhandled errors:\n" + "\n".join(failures[:5])
    assert cases >= MIN_CASES
    assert outcomes["clean -> ok"] == 1


def test_fuzz_lmdb_values(tmp_path):
    from cromss.data.readers import decode_lmdb_value

    rng = random.Random(99)
    good = pickle.dumps((bytes(range(8)), (2, 4), "0000001"), protocol=4)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    candidates = [
        None,
        b"",
        good[: len(good) // 2],
        pickle.dumps((b"abc", (2, 4), "x")),
        pickle.dumps([b"a", (1,), "x"]),
        pickle.dumps((b"ab", ("a", 2), "x")),
        pickle.dumps((b"ab", None, "x")),
        pickle.dumps(("ab", (2,), "x")),
        pickle.dumps(Evil()),
        pickle.dumps((b"ab", (2,), "x", 4)),
        pickle.dumps((b"ab", (-2,), "x")),
    ]
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randint(0, 255)
        candidates.append(bytes(data))
    outcomes: Counter[str] = Counter()
    failures = []
    for data in candidates:
        try:
            array, sample_id = decode_lmdb_value(data, file="fuzz.lmdb", key="0")
            assert array.dtype == np.uint8 and isinstance(sample_id, str)
            outcomes["decoded"] += 1
        except CromssError as err:
            assert "fuzz.lmdb" in str(err)
            outcomes[type(err).__name__] += 1
        except Exception:  # noqa: BLE001
            failures.append(traceback.format_exc(limit=-2))
    print(f"\nLMDB fuzz: {len(candidates)} values: {dict(outcomes)}")
    assert not failures, "\n".join(failures[:3])
    assert len(candidates) >= 150 and outcomes["DataError"] >= 10
