"""ClipNormalize (mean +/- 2 std to [0, 1]) and the joint augmentation."""

from __future__ import annotations

import json

import pytest
import torch

from cromss import schema
from cromss.errors import DataError
from cromss.transforms import ClipNormalize, JointAugment, center_crop, load_band_stats


def test_clip_normalize_hand_computed_values():
    # band 0: mean 10, std 5 -> range [0, 20]; band 1: mean -12, std 2 -> range [-16, -8]
    norm = ClipNormalize([10.0, -12.0], [5.0, 2.0])
    x = torch.tensor([[[-5.0, 0.0, 5.0, 20.0, 30.0]], [[-20.0, -16.0, -12.0, -10.0, 0.0]]])
    expected = torch.tensor([[[0.0, 0.0, 0.25, 1.0, 1.0]], [[0.0, 0.0, 0.5, 0.75, 1.0]]])
    out = norm(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    # batched input gives the same per-sample result
    torch.testing.assert_close(norm(torch.stack([x, x])), torch.stack([expected, expected]))


def test_for_modality_uses_schema_statistics_and_9_band_subset():
    norm13 = ClipNormalize.for_modality("s2", 13)
    norm9 = ClipNormalize.for_modality("s2", 9)
    assert norm13.num_bands == 13 and norm9.num_bands == 9
    # B2 is the first of the 9 bands: its mean - 2 std maps to 0, mean + 2 std to 1
    b2 = schema.S2_BANDS.index("B2")
    low, high = schema.S2_MEAN[b2] - 2 * schema.S2_STD[b2], schema.S2_MEAN[b2] + 2 * schema.S2_STD[b2]
    x = torch.zeros(9, 1, 2)
    x[0, 0, 0], x[0, 0, 1] = low, high
    out = norm9(x)
    assert out[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert out[0, 0, 1].item() == pytest.approx(1.0, abs=1e-6)
    s1 = ClipNormalize.for_modality("s1")
    mean_vv = torch.full((2, 1, 1), schema.S1_MEAN[0])
    assert s1(mean_vv)[0].item() == pytest.approx(0.5, abs=1e-6)


def test_wrong_band_count_and_bad_stats_raise(tmp_path):
    with pytest.raises(DataError, match="ClipNormalize built for 13 bands got 9 bands"):
        ClipNormalize.for_modality("s2", 13)(torch.zeros(9, 4, 4))
    with pytest.raises(DataError, match=r"every std must be > 0, got \[0\.0\]"):
        ClipNormalize([0.0], [0.0])
    with pytest.raises(DataError, match="Sentinel-2 input must have 13 or 9 bands, got 12"):
        ClipNormalize.for_modality("s2", 12)
    bad = tmp_path / "s2.json"
    bad.write_text(json.dumps({"bands": ["B1"], "mean": [1.0]}))
    with pytest.raises(DataError, match=r"s2\.json lacks key 'std'"):
        load_band_stats("s2", bad)
    lacking = tmp_path / "s2b.json"
    lacking.write_text(json.dumps({"bands": ["B1"], "mean": [1.0], "std": [2.0]}))
    with pytest.raises(DataError, match=r"s2b\.json lack band\(s\) \['B2', 'B3', .*'B12'\] of s2"):
        ClipNormalize.for_modality("s2", 13, lacking)


def _coded_sample(size: int = 16) -> dict:
    # every pixel holds a unique code, identical in images and masks: any geometric mismatch shows
    codes = torch.arange(size * size).reshape(size, size)
    return {
        "s1": torch.stack([codes.float(), -codes.float()]),
        "s2": codes.float().expand(3, size, size).clone(),
        "label": codes.clone(),
        "labels_all_seasons": torch.stack([codes, codes + 1]),
        "valid": torch.ones(size, size, dtype=torch.bool),
        "season": torch.tensor(1),
        "id": "x",
    }


@pytest.mark.parametrize("seed", range(6))
def test_joint_augment_moves_images_and_masks_together(seed):
    torch.manual_seed(seed)
    augment = JointAugment(crop_size=8, flip_p=0.5, rotate_p=0.5)
    out = augment(_coded_sample())
    assert out["s1"].shape == (2, 8, 8) and out["s2"].shape == (3, 8, 8)
    assert out["label"].shape == (8, 8) and out["labels_all_seasons"].shape == (2, 8, 8)
    assert torch.equal(out["s1"][0].long(), out["label"])
    assert torch.equal(out["s1"][1].long(), -out["label"])
    assert torch.equal(out["s2"][2].long(), out["label"])
    assert torch.equal(out["labels_all_seasons"][1], out["label"] + 1)
    assert out["label"].dtype == torch.int64 and out["valid"].dtype == torch.bool
    assert type(out["label"]) is torch.Tensor  # plain tensors, not tv_tensors, leave the transform
    assert out["id"] == "x" and out["season"].item() == 1


def test_joint_augment_rotation_and_flip_are_exact_permutations():
    torch.manual_seed(0)
    sample = _coded_sample(8)
    seen = set()
    augment = JointAugment(crop_size=None, flip_p=0.5, rotate_p=1.0)
    for _ in range(30):
        out = augment(sample)
        assert sorted(out["label"].flatten().tolist()) == list(range(64))  # no interpolation
        seen.add(tuple(out["label"][0, :2].tolist()))
    assert len(seen) >= 4  # several orientations occur


def test_crop_larger_than_tile_raises_naming_the_key():
    with pytest.raises(DataError, match="crop_size 32"):
        JointAugment(crop_size=32)(_coded_sample(16))


def test_center_crop_is_deterministic():
    out = center_crop(_coded_sample(8), 4)
    assert out["label"][0, 0].item() == 2 * 8 + 2
    assert out["s2"].shape == (3, 4, 4)
