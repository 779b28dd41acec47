"""Segmentation metrics: Dice and IoU per slice, then per class and per patient, mean with 95% CI.

Per slice, with P the predicted and G the ground-truth tumour pixels:

    Dice = 2 |P ∩ G| / (|P| + |G|)        IoU = |P ∩ G| / |P ∪ G|

Empty-mask convention: when P and G are both empty the slice scores 1.0 on both (nothing to
find, nothing found); when exactly one is empty it scores 0.0. Slices are never dropped.

Aggregation: a group's mean (overall, per class) is the plain mean of its slice scores, and its
95% CI comes from a cluster bootstrap over patients (`stats.pooled_cluster_bootstrap_ci`: the
patients are resampled, each with all its slices), since slices of one patient are not
independent: {"mean", "ci_low", "ci_high", "n" (slices), "n_patients", "unit": "patient"}. Per
patient, each patient's score is the mean over its slices and the summary is the mean over
patients (a patient with many slices does not weigh more), with a percentile bootstrap over the
patients (`stats.bootstrap_ci`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tumorcam.data.arrays import CLASS_NAMES
from tumorcam.evaluate.stats import bootstrap_ci, pooled_cluster_bootstrap_ci

EMPTY_MASK_CONVENTION = "both prediction and ground truth empty: Dice = IoU = 1; exactly one empty: 0"


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice Dice and IoU of binary masks shaped (N,H,W) or (N,1,H,W) (bool or {0,1}).

    Returns two float32 tensors (N,) on the input's device; see the module docstring for the
    empty-mask convention.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    p = pred.reshape(pred.shape[0], -1).bool()
    g = target.reshape(target.shape[0], -1).bool()
    inter = (p & g).sum(1).float()
    total = p.sum(1).float() + g.sum(1).float()
    union = total - inter
    both_empty = total == 0
    dice = torch.where(both_empty, torch.ones_like(total), 2 * inter / total.clamp_min(1))
    iou = torch.where(both_empty, torch.ones_like(total), inter / union.clamp_min(1))
    return dice, iou


def summarize(dice: np.ndarray, iou: np.ndarray, labels: np.ndarray, pids: np.ndarray,
              n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Overall, per-class and per-patient Dice/IoU summaries of per-slice scores.

    Returns {"overall": {"n", "dice", "iou"}, "per_class": {name: {"n", "dice", "iou"}},
    "per_patient": {"summary": {"n", "dice", "iou"}, "patients": [{"pid", "label", "n", "dice", "iou"}]}}
    (the CIs as in the module docstring).
    """
    dice, iou = np.asarray(dice, np.float64), np.asarray(iou, np.float64)
    labels, pids = np.asarray(labels), np.asarray(pids).astype(str)

    def _ci(values: Any) -> dict[str, Any]:
        return bootstrap_ci(np.asarray(values, np.float64), resamples=n_resamples, seed=seed)

    def stats(rows: np.ndarray) -> dict[str, Any]:
        def clustered(values: np.ndarray) -> dict[str, Any]:
            return pooled_cluster_bootstrap_ci(values[rows], pids[rows], resamples=n_resamples, seed=seed)

        return {"n": int(rows.sum()), "n_patients": len(np.unique(pids[rows])), "dice": clustered(dice),
                "iou": clustered(iou)}

    per_class = {CLASS_NAMES.get(int(c), str(int(c))): stats(labels == c) for c in np.unique(labels)}
    patients = []
    for pid in np.unique(pids):
        rows = pids == pid
        patients.append({"pid": str(pid), "label": int(np.bincount(labels[rows].astype(np.int64)).argmax()),
                         "n": int(rows.sum()), "dice": float(dice[rows].mean()), "iou": float(iou[rows].mean())})
    per_patient_summary = {
        "n": len(patients),
        "dice": _ci([p["dice"] for p in patients]),
        "iou": _ci([p["iou"] for p in patients]),
    }
    overall = stats(np.ones(dice.size, dtype=bool))
    return {"overall": overall, "per_class": per_class,
            "per_patient": {"summary": per_patient_summary, "patients": patients}}
