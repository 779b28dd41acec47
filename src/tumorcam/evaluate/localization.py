"""Localization of maps against the ground-truth tumor mask, per image: the library call
`localization` and the run folder stage `tumorcam.runs.localization.evaluate_localization`.

    import tumorcam

    summary = tumorcam.localization(maps, masks, patient_ids=pids)
    summary["energy_pointing_game"]["mean"], summary["energy_pointing_game"]["vs_random"]["verdict"]

For a map m >= 0 and a mask G of one image (2-D or 3-D: the metrics treat its P pixels or voxels
as one flat list):

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

Each metric is summarized as the mean of unit means (patients with `patient_ids`, else images) with
a cluster-bootstrap CI and compared with a reference map (the seeded random map unless given) by
the Wilcoxon signed-rank test on the unit differences (`TESTS`), higher is better, one Holm
adjustment over the three comparisons.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.ranking import rank_pixels
from tumorcam.evaluate.reference import Reference, as_maps, reference_maps, units
from tumorcam.evaluate.summary import adjust_file, metric_summary

METRICS = ("pointing_game", "energy_pointing_game", "top_iou")
# paired test per metric: Wilcoxon signed-rank on patient means for all three. The pointing game's
# patient value is a hit share in [0, 1] (ties of the maximum, several slices), so its differences
# have magnitudes: a sign test counted a predicted mask's 0.995 losing 0.005 to a random map's lucky
# hit as a loss equal to a 0.995 win (12 wins, 3 losses of 15 cases: p = 0.035, lost after Holm).
TESTS = {"pointing_game": "wilcoxon", "energy_pointing_game": "wilcoxon", "top_iou": "wilcoxon"}


def _flat(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    maps = torch.nan_to_num(torch.as_tensor(maps).float())
    masks = torch.as_tensor(masks)
    if masks.dim() == maps.dim() + 1:
        masks = masks[:, 0]
    if masks.shape != maps.shape:
        raise TumorcamError(f"masks: expected masks {tuple(maps.shape)} or with a channel axis like the maps, "
                            f"got {tuple(masks.shape)}")
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


def top_percent_iou(maps: torch.Tensor, masks: torch.Tensor, percent: float, seed: int = 0,
                    rows: np.ndarray | None = None) -> np.ndarray:
    """Per slice: IoU of the top `percent`% of the map's pixels with the mask (NaN for an empty mask);
    `rows`: the maps' places in a larger set, whose ties they break as there (`rank_pixels`)."""
    check_top_percent(percent)
    m, g = _flat(maps, masks)
    count = math.ceil(percent / 100 * m.shape[1])
    top = rank_pixels(m, seed, rows) < count
    iou = (top & g).sum(1).float() / (top | g).sum(1).float()
    return torch.where(g.any(1), iou, torch.nan).cpu().numpy().astype(np.float64)


def check_top_percent(percent: object, name: str = "top_percent") -> None:
    """p must be a number in (0, 100]; `name` is the parameter the caller calls it."""
    if isinstance(percent, bool) or not isinstance(percent, numbers.Real) or not 0 < percent <= 100:
        raise TumorcamError(f"{name}: must be in (0, 100], got {percent!r}", param=name)


def localization_scores(maps: torch.Tensor, masks: torch.Tensor, *, top_percent: float = 5.0,
                        seed: int = 0, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The three metrics per image of maps (N, *spatial) against masks (N, *spatial) or (N, 1, *spatial);
    `rows` as in `top_percent_iou`."""
    return {
        "pointing_game": pointing_game(maps, masks),
        "energy_pointing_game": energy_pointing_game(maps, masks),
        "top_iou": top_percent_iou(maps, masks, top_percent, seed, rows),
    }


def localization(maps: torch.Tensor, masks: torch.Tensor, *, patient_ids: Any = None, reference: Reference = "random",
                 top_percent: float = 5.0, seed: int = 0, bootstrap: int = 1000,
                 alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """The three metrics of `maps` against the ground truth, summarized per metric against a reference.

    Args:
        maps: (B, *spatial), 2-D or 3-D.
        masks: the ground truth, (B, *spatial) or (B, 1, *spatial).
        patient_ids: (B,) the unit of the statistics: "patient" with them, else "slice" (each image
            its own unit).
        reference: the maps of the paired test: "random" (seeded U(0, 1) maps), a tensor like
            `maps`, or None (no test).
        top_percent: p of the top-p% IoU, in (0, 100], as in `top_percent_iou`.
        seed: seeds the random maps, the ties (as in `top_percent_iou`) and the bootstrap.
        bootstrap: cluster-bootstrap resamples.
        alpha: the level of the Holm adjustment over the three metrics.

    Returns:
        Per metric (`pointing_game`, `energy_pointing_game`, `top_iou`) a row like those of
        localization.json: mean of unit means, `ci_low`/`ci_high` (cluster bootstrap, seeded), `unit`,
        `n_patients` (units), `n_slices`, and `vs_random`: the paired test against the `reference`
        maps, Holm-adjusted at `alpha` over the three metrics.

    Raises:
        TumorcamError: for maps and masks whose shapes do not fit, a top_percent outside (0, 100],
            patient ids that are not one per image, or an unknown reference.
        ValueError: for bootstrap < 1.

    Example:
        >>> summary = tumorcam.localization(maps, masks, patient_ids=pids)
        >>> summary["energy_pointing_game"]["mean"], summary["energy_pointing_game"]["vs_random"]["verdict"]
    """
    maps = as_maps(maps)
    masks = torch.as_tensor(masks)
    _flat(maps, masks)  # the shapes fit
    check_top_percent(top_percent)
    unit_ids, unit = units(patient_ids, len(maps))
    compared = reference_maps(reference, maps, seed)
    scores = localization_scores(maps, masks, top_percent=top_percent, seed=seed)
    reference_scores = None if compared is None else localization_scores(compared, masks, top_percent=top_percent,
                                                                          seed=seed)
    return summarize_localization(scores, reference_scores, unit_ids, unit, seed=seed, bootstrap=bootstrap,
                                  alpha=alpha)


def summarize_localization(scores: dict[str, np.ndarray], reference_scores: dict[str, np.ndarray] | None,
                           unit_ids: np.ndarray, unit: str, *, seed: int = 0, bootstrap: int = 1000,
                           alpha: float = 0.05) -> dict[str, dict[str, Any]]:
    """The row of `localization` from per-image `scores` (`localization_scores`) and those of the
    reference maps (None: no test), with the unit of each image."""
    row: dict[str, dict[str, Any]] = {}
    for metric in METRICS:
        versus = None if reference_scores is None else reference_scores[metric]
        row[metric] = metric_summary(scores[metric], {"random": versus}, unit_ids, lower_is_better=False,
                                     test=TESTS[metric], resamples=bootstrap, seed=seed, alpha=alpha)
        row[metric]["unit"] = unit
    adjust_file([row], METRICS, primary=None, alpha=alpha)
    return row
