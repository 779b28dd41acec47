"""Localisation of maps against the ground-truth tumour mask, per slice, and its run-folder wrapper.

For a map m >= 0 and a mask G of one slice:

- pointing game: does the map's maximum lie in G? With several maximal pixels (ties), the share
  of them inside G (the expected hit of a pick among them), so a flat map scores |G|/P.
- energy-based pointing game (Wang et al. 2020, Score-CAM): sum(m * G) / sum(m), the share of
  the map's mass inside the tumour. A flat map (every pixel equal, an all-zero map included) points
  nowhere in particular and scores the tumour's area share |G|/P, as in the pointing game; it is
  counted like any other map.
- top-p% IoU: |T ∩ G| / |T ∪ G| where T is the ceil(p/100 * P) highest pixels of m (ties broken
  by a seeded random order, as in Deletion/Insertion).

A slice with an empty mask has no tumour to find: NaN on all three (null in JSON, left out of
the means); that is the only NaN.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.faithfulness import rank_pixels, references

METRICS = ("pointing_game", "energy_pointing_game", "top_iou")
TESTS = {"pointing_game": "sign", "energy_pointing_game": "wilcoxon", "top_iou": "wilcoxon"}  # paired test per metric


def _flat(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    maps = torch.nan_to_num(torch.as_tensor(maps).float())
    masks = torch.as_tensor(masks)
    if masks.dim() == maps.dim() + 1:
        masks = masks[:, 0]
    if masks.shape != maps.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    return maps.flatten(1), (masks.flatten(1) > 0.5).to(maps.device)


def pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per slice: the share of the map's maximal pixels inside the mask (NaN for an empty mask)."""
    m, g = _flat(maps, masks)
    top = m == m.max(dim=1, keepdim=True).values
    hit = (top & g).sum(1).float() / top.sum(1).float()
    return torch.where(g.any(1), hit, torch.nan).cpu().numpy().astype(np.float64)


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Per slice: sum(map * mask) / sum(map) of the map clamped at 0; a map without mass (all zero)
    scores the mask's area share |G|/P, as a flat non-zero map does; NaN for an empty mask."""
    m, g = _flat(maps, masks)
    m = m.clamp_min(0)
    total = m.sum(1)
    share = torch.where(total > 0, (m * g).sum(1) / total.clamp_min(1e-30), g.float().mean(1))
    return torch.where(g.any(1), share, torch.nan).cpu().numpy().astype(np.float64)


def top_percent_iou(maps: torch.Tensor, masks: torch.Tensor, percent: float, seed: int = 0) -> np.ndarray:
    """Per slice: IoU of the top `percent`% of the map's pixels with the mask (NaN for an empty mask)."""
    if not 0 < percent <= 100:
        raise TumorcamError(f"--top-percent: must be in (0, 100], got {percent}")
    m, g = _flat(maps, masks)
    count = math.ceil(percent / 100 * m.shape[1])
    top = rank_pixels(m, seed) < count
    iou = (top & g).sum(1).float() / (top | g).sum(1).float()
    return torch.where(g.any(1), iou, torch.nan).cpu().numpy().astype(np.float64)


def localization_scores(maps: torch.Tensor, masks: torch.Tensor, *, top_percent: float = 5.0,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """The three metrics per slice of maps (N,H,W) against masks (N,H,W) or (N,1,H,W)."""
    return {
        "pointing_game": pointing_game(maps, masks),
        "energy_pointing_game": energy_pointing_game(maps, masks),
        "top_iou": top_percent_iou(maps, masks, top_percent, seed),
    }


def evaluate_localization(run: str | Path, data: str | Path | None = None, split: str | None = None,
                          top_percent: float | None = None, patients: int | None = None,
                          slices_per_patient: int | None = None) -> dict[str, Any]:
    """Localisation of every map of RUN/explanations (trained and untrained model, controls included);
    writes RUN/localization.json (schema in docs/evaluate.md) and returns it.

    Each row's metric has the patient-level summary of `tumorcam.evaluate.summary.metric_summary`
    (higher is better), compared with the random map (`vs_random`) and the predicted-mask control
    (`vs_mask`) of the same model kind and target: the pointing game (a hit share per slice, often
    0 or 1) with the sign test, the other two with the Wilcoxon signed-rank test. Every comparison
    is exploratory: one Holm adjustment over the file. `patients` and `slices_per_patient` select
    the slices (`load_inputs`).
    """
    from tumorcam.evaluate.inputs import load_inputs
    from tumorcam.evaluate.summary import adjust_file, finite_list, metric_summary
    from tumorcam.io import write_json

    run = Path(run)
    inputs = load_inputs(run, data=data, split=split, device="cpu", with_model=False, patients=patients,
                         slices_per_patient=slices_per_patient)
    cfg = inputs.config.evaluate
    percent = cfg.top_percent if top_percent is None else top_percent
    per_entry = {e.key: localization_scores(torch.from_numpy(e.maps), inputs.masks, top_percent=percent, seed=cfg.seed)
                 for e in inputs.entries}
    patient_ids = np.asarray(inputs.patient_ids).astype(str)
    rows = []
    for entry in inputs.entries:
        random_map, mask_map = references(entry, inputs.entries)
        row: dict[str, Any] = {
            **entry.describe(), "control": entry.control,
            "random_reference": None if random_map is None else random_map.describe(),
            "mask_reference": None if mask_map is None else mask_map.describe(),
        }
        for metric in METRICS:
            compared = {name: None if other is None else per_entry[other.key][metric]
                        for name, other in (("random", random_map), ("mask", mask_map))}
            row[metric] = metric_summary(per_entry[entry.key][metric], compared, patient_ids, lower_is_better=False,
                                         test=TESTS[metric], resamples=cfg.bootstrap, seed=cfg.seed, alpha=cfg.alpha)
        row["per_slice"] = {metric: finite_list(per_entry[entry.key][metric]) for metric in METRICS}
        rows.append(row)
    adjust_file(rows, METRICS, primary=None, alpha=cfg.alpha)
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_patients": len(np.unique(patient_ids)),
        "n_slices": len(inputs.file_ids),
        "n_with_tumour": int((inputs.masks.flatten(1) > 0.5).any(1).sum()),
        "alpha": cfg.alpha,
        "tests": dict(TESTS),
        "file_ids": inputs.file_ids.tolist(),
        "patient_ids": patient_ids.tolist(),
        "top_percent": percent,
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "results": rows,
    }
    write_json(run / "localization.json", out)
    return out
