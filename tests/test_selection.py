"""Tests of cromss.selection (eqs. 8-12) against hand-computed values and an independent loop."""

from __future__ import annotations

import math

import pytest
import torch

from cromss.errors import ConfigError, DataError
from cromss.selection import (
    alpha_at,
    cross_modal_enhance,
    entity_confidence,
    entity_weights,
    gamma_at,
    label_confidence,
    label_weights,
    selection_weights,
)

IGN = 255


def _probs(rows: list[list[float]], height: int = 1) -> torch.Tensor:
    """Pixel probability rows -> [1, C, H, W] with W = len(rows) // height."""
    tensor = torch.tensor(rows, dtype=torch.float64)  # [N, C]
    width = tensor.shape[0] // height
    return tensor.T.reshape(1, -1, height, width)


# ----------------------------------------------------------------------------- eq. 8
def test_label_confidence_hand_values() -> None:
    probs = _probs([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.6, 0.1, 0.3]])
    labels = torch.tensor([[[1, IGN, 2]]])
    conf = label_confidence(probs, labels, IGN)
    assert conf.shape == (1, 1, 3)
    torch.testing.assert_close(conf, torch.tensor([[[0.5, 0.0, 0.3]]], dtype=torch.float64))


def test_label_confidence_bad_label_names_value() -> None:
    probs = _probs([[0.5, 0.5]])
    with pytest.raises(DataError, match="7"):
        label_confidence(probs, torch.tensor([[[7]]]), IGN)
    with pytest.raises(DataError, match="shape"):
        label_confidence(probs, torch.tensor([[7]]), IGN)


# ----------------------------------------------------------------------------- eq. 9
def test_entity_confidence_hand_values() -> None:
    probs = _probs([[0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    conf = entity_confidence(probs)
    # uniform -> 0; one-hot (p = 0 entries contribute 0, not NaN) -> 1; 1 - log2/log4 = 0.5
    torch.testing.assert_close(conf, torch.tensor([[[0.0, 1.0, 0.5]]], dtype=torch.float64))
    three = entity_confidence(_probs([[0.5, 0.25, 0.25]]))
    # H = 0.5 ln 2 + 0.5 ln 4 = 1.5 ln 2;  1 - 1.5 ln2 / ln3
    assert three.item() == pytest.approx(0.0536053696, abs=1e-9)


def test_entity_confidence_low_precision_finite_in_range() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, 4) * 20
    for dtype in (torch.float16, torch.bfloat16):
        probs = logits.softmax(1).to(dtype)  # many exact zeros in low precision
        conf = entity_confidence(probs)
        assert conf.dtype == torch.float32
        assert torch.isfinite(conf).all() and (conf >= 0).all() and (conf <= 1).all()


# ----------------------------------------------------------------------------- eq. 10
def test_cross_modal_enhance_two_modalities_is_eq10() -> None:
    f1, f2 = torch.tensor([0.8, 0.5, 0.0, 1.0]), torch.tensor([0.4, 0.5, 0.7, 1.0])
    e1, e2 = cross_modal_enhance([f1, f2])
    torch.testing.assert_close(e1, torch.tensor([0.56, 0.375, 0.0, 1.0]))
    torch.testing.assert_close(e2, torch.tensor([0.36, 0.375, 0.35, 1.0]))
    # both forms of eq. (10): (F_d + F1 F2) / 2
    torch.testing.assert_close(e1, (f1 + f1 * f2) / 2)


def test_cross_modal_enhance_three_and_one_modalities() -> None:
    f = [torch.tensor([0.8]), torch.tensor([0.4]), torch.tensor([0.6])]
    enhanced = cross_modal_enhance(f)
    # f_d (1 + mean of the others) / 2: 0.8*1.5/2, 0.4*1.7/2, 0.6*1.6/2
    torch.testing.assert_close(torch.cat(enhanced), torch.tensor([0.6, 0.34, 0.48]))
    single = torch.tensor([0.3, 0.9])
    assert cross_modal_enhance([single])[0] is single
    with pytest.raises(DataError):
        cross_modal_enhance([])


# ----------------------------------------------------------------------------- eq. 11
def test_label_weights_hand_example() -> None:
    labels = torch.tensor([[[0, 0, 1], [1, 1, IGN]]])
    conf = torch.tensor([[[0.9, 0.3, 0.8], [0.2, 0.4, 0.7]]])
    # alpha 0.5: class 0 N=2 -> k=1 -> f_0 = 0.9; class 1 N=3 -> k=1 -> f_1 = 0.8
    w = label_weights(conf, labels, 0.5, num_classes=2, ignore_index=IGN)
    torch.testing.assert_close(w, torch.tensor([[[1.0, 0.3 / 0.9, 1.0], [0.25, 0.5, 0.0]]]))
    # alpha 0.7: class 0 k=floor(1.4)=1 -> 0.9; class 1 k=floor(2.1)=2 -> f_1 = 0.4
    w = label_weights(conf, labels, 0.7, num_classes=2, ignore_index=IGN)
    torch.testing.assert_close(w, torch.tensor([[[1.0, 0.3 / 0.9, 1.0], [0.5, 1.0, 0.0]]]))
    # alpha >= 1: every labelled pixel gets 1
    w = label_weights(conf, labels, 1.0, num_classes=2, ignore_index=IGN)
    torch.testing.assert_close(w, torch.tensor([[[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]]))
    # tiny alpha: k = max(1, 0) = 1
    w = label_weights(conf, labels, 0.01, num_classes=2, ignore_index=IGN)
    torch.testing.assert_close(w, torch.tensor([[[1.0, 0.3 / 0.9, 1.0], [0.25, 0.5, 0.0]]]))


def test_label_weights_threshold_over_whole_batch_and_ties() -> None:
    labels = torch.tensor([[[0]], [[0]]])
    conf = torch.tensor([[[0.9]], [[0.3]]])
    w = label_weights(conf, labels, 0.5, num_classes=1, ignore_index=IGN)
    torch.testing.assert_close(w, torch.tensor([[[1.0]], [[1 / 3]]]))
    labels = torch.zeros(1, 1, 4, dtype=torch.long)
    conf = torch.tensor([[[0.5, 0.5, 0.1, 0.5]]])
    w = label_weights(conf, labels, 0.5, num_classes=1, ignore_index=IGN)  # k=2 -> 0.5
    torch.testing.assert_close(w, torch.tensor([[[1.0, 1.0, 0.2, 1.0]]]))
    # floor with the slack: 0.29 * 100 = 28.999999999999996 -> k = 29
    labels = torch.zeros(1, 1, 100, dtype=torch.long)
    conf = torch.arange(100, 0, -1, dtype=torch.float64).reshape(1, 1, 100) / 100
    w = label_weights(conf, labels, 0.29, num_classes=1, ignore_index=IGN)
    assert w[0, 0, 28] == 1.0 and w[0, 0, 29] == pytest.approx(0.71 / 0.72)


def test_label_weights_zero_confidence_absent_class_all_ignored() -> None:
    labels = torch.tensor([[[0, 0, 1]]])
    # class 0 all zero confidence -> threshold 0 -> w = 1; class 1 f = 0 alone -> w = 1
    w = label_weights(torch.tensor([[[0.0, 0.0, 0.0]]]), labels, 0.5, num_classes=3, ignore_index=IGN)
    torch.testing.assert_close(w, torch.ones(1, 1, 3))
    w = label_weights(torch.tensor([[[0.5, 0.0, 0.2]]]), labels, 0.5, num_classes=3, ignore_index=IGN)
    torch.testing.assert_close(w, torch.tensor([[[1.0, 0.0, 1.0]]]))
    ignored = torch.full((2, 3, 3), IGN)
    w = label_weights(torch.rand(2, 3, 3), ignored, 0.5, num_classes=4, ignore_index=IGN)
    assert torch.equal(w, torch.zeros(2, 3, 3))


def _reference_label_weights(conf, labels, alpha, num_classes):
    """Independent per-class loop with Python sorting (the definition, read literally)."""
    flat_conf, flat_labels = conf.flatten().tolist(), labels.flatten().tolist()
    out = [0.0] * len(flat_conf)
    for c in range(num_classes):
        members = [i for i, y in enumerate(flat_labels) if y == c]
        if not members:
            continue
        ranked = sorted((flat_conf[i] for i in members), reverse=True)
        k = max(1, math.floor(alpha * len(members) + 1e-9))
        threshold = ranked[k - 1]
        for i in members:
            out[i] = 1.0 if threshold <= 0 else min(1.0, flat_conf[i] / threshold)
    return torch.tensor(out, dtype=torch.float64).reshape(conf.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.13, 0.5, 0.77, 0.999])
def test_label_weights_matches_reference_loop(alpha: float, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    conf = torch.rand(3, 7, 5, generator=generator, dtype=dtype)
    conf[2, 1, :3] = torch.tensor([1e-30, 1e-38, 1.0])  # tiny values must still sort exactly
    conf[0, 0, :2] = 0.0
    labels = torch.randint(0, 4, (3, 7, 5), generator=generator)  # class 4 of 5 absent
    labels[1, 2:4] = IGN
    w = label_weights(conf, labels, alpha, num_classes=5, ignore_index=IGN)
    torch.testing.assert_close(w, _reference_label_weights(conf, labels, alpha, 5).to(dtype))
    assert (w >= 0).all() and (w <= 1).all()
    assert torch.all(w[labels == IGN] == 0)


def test_label_weights_detached_low_precision_and_bad_input() -> None:
    conf = torch.rand(2, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    w = label_weights(conf, labels, 0.5, 3, IGN)
    assert not w.requires_grad
    w16 = label_weights(conf.detach().half(), labels, 0.5, 3, IGN)
    assert w16.dtype == torch.float32 and torch.isfinite(w16).all()
    with pytest.raises(ConfigError, match="alpha"):
        label_weights(conf, labels, 0.0, 3, IGN)
    with pytest.raises(DataError, match="5"):
        label_weights(conf, labels.fill_(5), 0.5, 3, IGN)


# ----------------------------------------------------------------------------- eq. 12 and ramps
def test_entity_weights_hand_values() -> None:
    f = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(entity_weights(f, 0.25), torch.tensor([0.75, 0.875, 1.0]))
    torch.testing.assert_close(entity_weights(f, 0.0), torch.ones(3))
    torch.testing.assert_close(entity_weights(f, 1.0), f)
    with pytest.raises(ConfigError, match="gamma"):
        entity_weights(f, 1.5)


def test_ramps_hand_values() -> None:
    # r(0) = exp(-5), r(40) = exp(-1.25), r(20) = exp(-5 * 0.75^2) = exp(-2.8125), r(>= 80) = 1
    assert gamma_at(0, 80) == pytest.approx(0.006737947, abs=1e-9)
    assert alpha_at(0, 0.5, 80) == pytest.approx(0.996631027, abs=1e-9)
    assert gamma_at(40, 80) == pytest.approx(0.286504797, abs=1e-9)
    assert alpha_at(40, 0.5, 80) == pytest.approx(0.856747602, abs=1e-9)
    assert alpha_at(20.0, 0.5, 80) == pytest.approx(0.969972666, abs=1e-9)
    assert alpha_at(80, 0.5, 80) == 0.5 and gamma_at(80, 80) == 1.0
    assert alpha_at(150, 0.5, 80) == 0.5 and gamma_at(150, 80) == 1.0
    assert alpha_at(-3, 0.5, 80) == alpha_at(0, 0.5, 80)
    assert alpha_at(0, 0.3, 0) == pytest.approx(0.3) and gamma_at(0, 0) == 1.0
    with pytest.raises(ConfigError, match="alpha0"):
        alpha_at(1, 0.0, 80)
    with pytest.raises(ConfigError, match="rampup_epochs"):
        gamma_at(1, -1)


# ----------------------------------------------------------------------------- wiring
def test_selection_weights_hand_example() -> None:
    probs = {
        "s1": _probs([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]]),
        "s2": _probs([[0.6, 0.4], [0.5, 0.5], [0.5, 0.5]]),
    }
    labels = torch.tensor([[[0, 0, IGN]]])
    out = selection_weights(probs, labels, alpha=0.5, gamma=0.5, num_classes=2, ignore_index=IGN)
    s1, s2 = out["s1"], out["s2"]
    assert set(s1) == {"f_l", "f_e", "f_l_enh", "f_e_enh", "w_l", "w_e"}

    def close(actual, expected):
        torch.testing.assert_close(actual[0, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-6,
                                   rtol=0)

    close(s1["f_l"], [0.8, 0.4, 0.0])
    close(s2["f_l"], [0.6, 0.5, 0.0])
    close(s1["f_l_enh"], [0.64, 0.3, 0.0])  # 0.8 * 1.6 / 2, 0.4 * 1.5 / 2
    close(s2["f_l_enh"], [0.54, 0.35, 0.0])
    close(s1["w_l"], [1.0, 0.46875, 0.0])  # class-0 threshold (k = 1) = 0.64
    close(s2["w_l"], [1.0, 0.648148, 0.0])
    close(s1["f_e"], [0.278072, 0.029049, 0.0])  # 1 - H / ln 2
    close(s2["f_e"], [0.029049, 0.0, 0.0])
    close(s1["f_e_enh"], [0.143075, 0.014525, 0.0])
    close(s2["f_e_enh"], [0.018564, 0.0, 0.0])
    close(s1["w_e"], [0.571537, 0.507262, 0.0])  # 0.5 + 0.5 f, 0 at the ignored pixel
    close(s2["w_e"], [0.509282, 0.5, 0.0])
    plain = selection_weights(probs, labels, 0.5, 0.5, 2, IGN, enhance=False)
    torch.testing.assert_close(plain["s1"]["f_l_enh"], plain["s1"]["f_l"])
    close(plain["s1"]["w_l"], [1.0, 0.5, 0.0])


def test_selection_weights_detached_bf16_and_class_mismatch() -> None:
    torch.manual_seed(1)
    logits = {m: torch.randn(2, 4, 6, 6, requires_grad=True) for m in ("s1", "s2")}
    probs = {m: x.to(torch.bfloat16).softmax(1) for m, x in logits.items()}
    labels = torch.randint(0, 4, (2, 6, 6))
    out = selection_weights(probs, labels, 0.6, 0.4, 4, IGN)
    for masks in out.values():
        for name, tensor in masks.items():
            assert not tensor.requires_grad, name
            assert tensor.shape == (2, 6, 6) and torch.isfinite(tensor).all()
        assert (masks["w_l"] >= 0).all() and (masks["w_l"] <= 1).all()
        assert (masks["w_e"] >= 0).all() and (masks["w_e"] <= 1).all()
    with pytest.raises(DataError, match="num_classes=5"):
        selection_weights(probs, labels, 0.6, 0.4, 5, IGN)
