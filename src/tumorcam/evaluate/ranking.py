"""Pixel ranking, step schedules and the AUC of the Deletion/Insertion game.

Pixels are ranked by the map, most important first, ties broken by a seeded random order; a map of
any number of spatial dimensions ranks its P pixels (voxels) as one flat list. For k = 0..K the game
perturbs the top n_k = round(f_k * P) pixels, and a curve's AUC is the trapezoid over the
normalized step index t = k/K in [0, 1].

Schedules (the fractions f_k of the pixels at step k): `uniform` f_k = k/K (the seed's; the AUC
over t is then the area over the fraction of pixels); `log` f_0 = 0 and f_k = f_min^((K-k)/(K-1))
for k = 1..K, f_min = 1e-3 (f_1 = 1e-3, f_K = 1): the steps are spread evenly over the decades of
the fraction, so the first percent of the pixels, where a tumor of a few percent of the slice is
decided, gets as many steps as the last decade.
"""

from __future__ import annotations

import numpy as np
import torch

from tumorcam.errors import TumorcamError

SCHEDULES = ("log", "uniform")
LOG_FIRST_FRACTION = 1e-3  # f_1 of the `log` schedule


def check_steps(steps: object, name: str = "steps") -> None:
    """K must be an integer >= 1; `name` is the parameter the caller calls it."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TumorcamError(f"{name}: K must be an integer >= 1, got {steps!r}", param=name)


def check_schedule(schedule: object, name: str = "schedule") -> None:
    """The schedule must be one of SCHEDULES; `name` is the parameter the caller calls it."""
    if schedule not in SCHEDULES:
        raise TumorcamError(f"{name}: unknown schedule {schedule!r} (choose {' or '.join(SCHEDULES)})", param=name)


def rank_pixels(maps: torch.Tensor, seed: int = 0, rows: np.ndarray | None = None) -> torch.Tensor:
    """Rank (N, P) of every pixel of each map (N, *spatial): 0 for the highest value; ties in a seeded
    random order.

    The order is a random permutation (from `seed`, on the CPU, so every device agrees) stably
    sorted by descending map value. NaN counts as 0. `rows` (N,): the maps' places in a larger set
    (None: 0..N-1); each map then breaks its ties as it does in the whole set (a shard of slices).
    """
    flat = torch.nan_to_num(maps.reshape(maps.shape[0], -1).float())
    generator = torch.Generator().manual_seed(seed)
    if rows is None:
        keys = torch.rand(flat.shape, generator=generator).to(flat.device)
    else:
        rows = np.asarray(rows, dtype=np.int64)
        drawn = torch.rand((int(rows.max()) + 1 if rows.size else 0, flat.shape[1]), generator=generator)
        keys = drawn[torch.from_numpy(rows)].to(flat.device)
    perm = keys.argsort(dim=1)
    order = perm.gather(1, flat.gather(1, perm).sort(dim=1, descending=True, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def step_fractions(steps: int, schedule: str = "uniform") -> np.ndarray:
    """The fractions f_0..f_K of the pixels perturbed at each step: `uniform` k/K; `log` 0, then
    f_k = f_min^((K-k)/(K-1)) with f_min = 1e-3 (for K = 1: 0, 1)."""
    check_steps(steps)
    check_schedule(schedule)
    k = np.arange(steps + 1, dtype=np.float64)
    if schedule == "uniform":
        return k / steps
    fractions = np.zeros(steps + 1)
    fractions[1:] = LOG_FIRST_FRACTION ** ((steps - k[1:]) / (steps - 1)) if steps > 1 else 1.0
    return fractions


def step_counts(steps: int, pixels: int, schedule: str = "uniform") -> list[int]:
    """n_k = round(f_k * P) pixels for k = 0..K (`uniform`: round(k * P / K), exact in integers)."""
    if schedule == "uniform":
        check_steps(steps)
        return [round(k * pixels / steps) for k in range(steps + 1)]
    return [round(f * pixels) for f in step_fractions(steps, schedule)]


def auc(curves: np.ndarray, steps: int) -> np.ndarray:
    """Trapezoid area under curves (..., K+1) over the normalized step index t = k/K in [0, 1]."""
    return np.trapezoid(np.asarray(curves, dtype=np.float64), np.linspace(0.0, 1.0, steps + 1), axis=-1)
