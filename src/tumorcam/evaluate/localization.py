"""Localisation of maps against the ground-truth tumour mask, per slice, and its run-folder wrapper.

For a map m >= 0 and a mask G of one slice:

- pointing game: does the map's maximum lie in G? With several maximal pixels (ties), the share
  of them inside G (the expected hit of a pick among them), so a flat map scores |G|/P.
- energy-based pointing game (Wang et al. 2020, Score-CAM): sum(m * G) / sum(m), the share of
  the map's mass inside the tumour.
- top-p% IoU: |T ∩ G| / |T ∪ G| where T is the ceil(p/100 * P) highest pixels of m (ties broken
  by a seeded random order, as in Deletion/Insertion).

A slice with an empty mask has no tumour to find: NaN on all three (null in JSON, left out of
the means); an all-zero map has no mass: NaN energy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.faithfulness import rank_pixels

METRICS = ("pointing_game", "energy_pointing_game", "top_iou")


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
    """Per slice: sum(map * mask) / sum(map) (NaN for an empty mask or an all-zero map)."""
    m, g = _flat(maps, masks)
    m = m.clamp_min(0)
    total = m.sum(1)
    share = (m * g).sum(1) / total.clamp_min(1e-30)
    return torch.where(g.any(1) & (total > 0), share, torch.nan).cpu().numpy().astype(np.float64)


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
                          top_percent: float | None = None) -> dict[str, Any]:
    """Localisation of every map of RUN/explanations (trained and untrained model) beside the random
    map; writes RUN/localization.json (schema in docs/evaluate.md) and returns it."""
    from tumorcam.evaluate.inputs import load_inputs, summary_rows
    from tumorcam.io import write_json

    run = Path(run)
    inputs = load_inputs(run, data=data, split=split, device="cpu", with_model=False)
    cfg = inputs.config.evaluate
    percent = cfg.top_percent if top_percent is None else top_percent
    per_entry = {e.key: localization_scores(torch.from_numpy(e.maps), inputs.masks, top_percent=percent, seed=cfg.seed)
                 for e in inputs.entries}
    rows = summary_rows(inputs.entries, per_entry, lower_is_better={name: False for name in METRICS},
                        resamples=cfg.bootstrap, seed=cfg.seed)
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_slices": len(inputs.file_ids),
        "n_with_tumour": int((inputs.masks.flatten(1) > 0.5).any(1).sum()),
        "file_ids": inputs.file_ids.tolist(),
        "top_percent": percent,
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "results": rows,
    }
    write_json(run / "localization.json", out)
    return out
