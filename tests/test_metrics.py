"""Dice/IoU against hand-computed cases (empty masks included) and their aggregation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tumorcam.evaluate.metrics import dice_iou, summarize


def _mask(pixels: list[tuple[int, int]], size: int = 4) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def test_dice_iou_hand_computed_overlap():
    pred = _mask([(0, 0), (0, 1), (1, 0), (1, 1)])  # |P| = 4
    target = _mask([(1, 0), (1, 1), (2, 0)])  # |G| = 3, |P n G| = 2, |P u G| = 5
    dice, iou = dice_iou(pred[None], target[None])
    assert dice.item() == pytest.approx(2 * 2 / (4 + 3))
    assert iou.item() == pytest.approx(2 / 5)


def test_dice_iou_identical_and_disjoint():
    a = _mask([(0, 0), (3, 3)])
    b = _mask([(2, 2)])
    dice, iou = dice_iou(torch.stack([a, a]), torch.stack([a, b]))
    assert dice.tolist() == [1.0, 0.0]
    assert iou.tolist() == [1.0, 0.0]


def test_empty_mask_convention():
    empty, one = _mask([]), _mask([(1, 2)])
    pred = torch.stack([empty, empty, one])
    target = torch.stack([empty, one, empty])
    dice, iou = dice_iou(pred, target)
    assert dice.tolist() == [1.0, 0.0, 0.0]  # both empty: 1; one empty: 0
    assert iou.tolist() == [1.0, 0.0, 0.0]


def test_dice_iou_accepts_channel_dim_and_float_masks():
    pred = _mask([(0, 0), (0, 1)]).float()[None, None]
    target = _mask([(0, 1)]).float()[None, None]
    dice, iou = dice_iou(pred, target)
    assert dice.item() == pytest.approx(2 / 3)
    assert iou.item() == pytest.approx(1 / 2)


def test_dice_iou_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice_iou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


def test_summarize_groups_by_class_and_patient():
    dice = np.array([1.0, 0.0, 0.5, 0.9, 0.3])
    iou = np.array([1.0, 0.0, 0.25, 0.8, 0.2])
    labels = np.array([1, 1, 2, 3, 3], dtype=np.int8)
    pids = np.array(["A", "A", "B", "C", "D"])
    s = summarize(dice, iou, labels, pids, n_resamples=200, seed=0)

    assert s["overall"]["n"] == 5
    assert s["overall"]["dice"]["mean"] == pytest.approx(2.7 / 5)
    assert s["overall"]["dice"]["ci_low"] <= 2.7 / 5 <= s["overall"]["dice"]["ci_high"]
    assert s["per_class"]["meningioma"]["n"] == 2
    assert s["per_class"]["meningioma"]["dice"]["mean"] == pytest.approx(0.5)
    assert s["per_class"]["pituitary"]["iou"]["mean"] == pytest.approx(0.5)
    assert s["per_class"]["glioma"]["dice"]["ci_low"] == s["per_class"]["glioma"]["dice"]["ci_high"] == 0.5

    patients = {p["pid"]: p for p in s["per_patient"]["patients"]}
    assert patients["A"]["dice"] == pytest.approx(0.5) and patients["A"]["n"] == 2
    assert patients["A"]["label"] == 1
    # patient mean weighs each patient once: (0.5 + 0.5 + 0.9 + 0.3) / 4, not the slice mean
    assert s["per_patient"]["summary"]["n"] == 4
    assert s["per_patient"]["summary"]["dice"]["mean"] == pytest.approx(2.2 / 4)


def test_overall_ci_resamples_patients_not_slices():
    """Two patients, one all 1.0 (10 slices), one all 0.0 (10 slices): a slice bootstrap gives a narrow
    CI around 0.5; resampling patients draws {both, only A, only B}, so the CI reaches 0 and 1."""
    dice = np.r_[np.ones(10), np.zeros(10)]
    pids = np.array(["A"] * 10 + ["B"] * 10)
    labels = np.ones(20, dtype=np.int8)
    s = summarize(dice, dice, labels, pids, n_resamples=400, seed=0)
    overall = s["overall"]["dice"]
    assert overall["mean"] == pytest.approx(0.5) and overall["n"] == 20 and overall["n_patients"] == 2
    assert overall["unit"] == "patient" and overall["ci_low"] == 0.0 and overall["ci_high"] == 1.0
    assert s["overall"]["n_patients"] == 2
