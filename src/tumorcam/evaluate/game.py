"""Deletion/Insertion (the seed's causal game), batched: `PerturbationGame` and its `Curves`.

For k = 0..K the top n_k pixels of a map (`ranking`) are replaced by a baseline (deletion), or the
baseline gets them back from the image (insertion) (`baselines`), and the model scores each
perturbed image. A faithful map has a low deletion AUC and a high insertion AUC. Images
(N, C, H, W) and volumes (N, C, D, H, W) play alike, with every baseline.

Scores of a perturbed image from the model's logits z (B, C, *spatial): p = the probability of the
class c = `channel`, sigmoid(z) for one output channel, softmax(z)_c for C > 1; the class is
predicted where z > 0 (one channel) or argmax_k z_k = c (C > 1). R is a region fixed per image:

- `mean-sigmoid`: mean p over all pixels (the seed's, with a sigmoid);
- `predicted-region`: mean p over R = the pixels predicted as c on the unperturbed image;
- `gt-region`: mean p over R = the ground-truth mask;
- `dice`: 2|P n R| / (|P| + |R|) with P = predicted as c on the perturbed image and R = predicted
  as c on the unperturbed one (1 at the start of deletion).

An image whose R is empty has NaN curves.

Batching: the perturbed images of many images and steps are built on the device from the rank of
each pixel (`removed = (rank < n_k) xor insertion`) and scored `batch_size` at a time (bf16
autocast on CUDA only with `amp`). The original image (deletion k = 0, insertion k = K) and the full
baselines (deletion k = K, insertion k = 0) are scored once per image and shared by every map.

Uninformative baseline: `PerturbationGame.baseline_effects` is, per baseline of the game's curves,
the median over images of 1 - s(fully perturbed) / s(intact) (images whose ratio is not finite left
out; NaN when none is left). When it is within `UNINFORMATIVE_EFFECT` (5 %) of 0 for a baseline, i.e.
the image replaced entirely by the baseline keeps 95-105 % of the intact score in the median image,
the game warns once (`TumorcamWarning`): its curves hardly move and its AUCs say little (the blur of
a 64^3 volume often does this: a network scores the blurred tumour almost as the tumour).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.baselines import (
    check_baseline,
    curve_baselines,
    fixed_baseline,
    road_impute,
)
from tumorcam.evaluate.ranking import (
    auc,
    check_schedule,
    check_steps,
    rank_pixels,
    step_counts,
    step_fractions,
)
from tumorcam import guards
from tumorcam.explain.targets import check_channel, predicted

GAME_SCORES = ("mean-sigmoid", "predicted-region", "gt-region", "dice")
CURVES = ("deletion", "insertion")
UNINFORMATIVE_EFFECT = 0.05  # |median of 1 - perturbed/intact| at most this: the baseline hardly changes the score

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def check_score(score: object, name: str = "score") -> None:
    """`score` must be one of GAME_SCORES; `name` is the parameter (or option) the caller calls it."""
    if score not in GAME_SCORES:
        raise TumorcamError(f"{name}: unknown score {score!r} (choose from {', '.join(GAME_SCORES)})")


def check_game(steps: int, baseline: str, score: str, schedule: str) -> None:
    """One clear error, naming the parameter, for K < 1 or an unknown baseline, score or schedule
    (every baseline plays images and volumes)."""
    check_steps(steps)
    check_baseline(baseline)
    check_score(score)
    check_schedule(schedule)


def probability(logits: torch.Tensor, channel: int = 0) -> torch.Tensor:
    """p (B, 1, *spatial) float32 of class `channel`: sigmoid(z) for one channel, softmax(z)_c for C > 1."""
    check_channel(logits, channel)
    logits = logits.float()
    if logits.shape[1] == 1:
        return logits.sigmoid()
    return logits.softmax(dim=1)[:, channel:channel + 1]


def fixed_region(score: str, logits: torch.Tensor, masks: torch.Tensor | None,
                 channel: int = 0) -> torch.Tensor | None:
    """The fixed region R (B, 1, *spatial) float {0, 1} of a score, from the unperturbed images' logits
    (`predicted-region`, `dice`) or the ground-truth `masks` (B, 1, *spatial) (`gt-region`); None for
    `mean-sigmoid`."""
    if score in ("predicted-region", "dice"):
        return predicted(logits.float(), channel).unsqueeze(1).float()
    if score == "gt-region":
        if masks is None:
            raise TumorcamError("masks: score 'gt-region' needs the ground-truth masks")
        return (masks.float() > 0.5).float()
    return None


def score_logits(logits: torch.Tensor, score: str, region: torch.Tensor | None = None,
                 channel: int = 0) -> torch.Tensor:
    """The score (B,) of logits (B, C, *spatial) against the images' fixed `region` (B, 1, *spatial)
    {0, 1} (see the module docstring); NaN where the region is empty (`mean-sigmoid` needs none)."""
    dims = tuple(range(1, logits.dim()))
    if score == "mean-sigmoid":
        return probability(logits, channel).mean(dim=dims)
    if region is None:
        raise ValueError(f"score {score!r} needs a region")
    size = region.sum(dim=dims)
    if score == "dice":
        mask = predicted(logits.float(), channel).unsqueeze(1).float()
        dice = 2 * (mask * region).sum(dim=dims) / (mask.sum(dim=dims) + size)
        return torch.where(size > 0, dice, torch.full_like(dice, float("nan")))
    return (probability(logits, channel) * region).sum(dim=dims) / size


def as_masks(masks: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Ground-truth masks (N, *spatial) or (N, 1, *spatial) as (N, 1, *spatial) float on the images' device."""
    masks = torch.as_tensor(masks)
    if masks.dim() == images.dim() - 1:
        masks = masks.unsqueeze(1)
    if masks.dim() != images.dim() or masks.shape[0] != images.shape[0] or masks.shape[1] != 1 \
            or masks.shape[2:] != images.shape[2:]:
        raise TumorcamError(f"masks: expected ({images.shape[0]}, 1, {', '.join(map(str, images.shape[2:]))}) "
                            f"for images {tuple(images.shape)}, got {tuple(masks.shape)}")
    return masks.to(images.device).float()


@dataclass
class Curves:
    """Deletion and insertion curves (N, K+1) of N images at the pixel `fractions` (K+1); AUC over t = k/K."""

    deletion: np.ndarray
    insertion: np.ndarray
    fractions: np.ndarray

    @property
    def steps(self) -> int:
        return self.deletion.shape[1] - 1

    @property
    def deletion_auc(self) -> np.ndarray:
        return auc(self.deletion, self.steps)

    @property
    def insertion_auc(self) -> np.ndarray:
        return auc(self.insertion, self.steps)


class PerturbationGame:
    """Deletion/Insertion of one set of images under one baseline, score and schedule, for any number of maps.

    Construction scores the original images (and takes the region of the score from them, or from
    `masks` (N, 1, *spatial) for `gt-region`) and the full baselines once; `curves(maps)` then scores
    the 2(K-1) intermediate steps of every image in forwards of `batch_size` perturbed images.
    `model_fn` maps images (B, C_in, *spatial) to logits (B, C, *spatial); `channel` is the scored
    class. Images live on the device the game runs on. `amp`: bf16 autocast on CUDA.

    `baseline_effects` {baseline: effect} (one entry, two for `rise`: zero and blur) and
    `baseline_effect` (the smallest in magnitude, the least informative) hold the median over images
    of 1 - s(fully perturbed) / s(intact); an effect within 5 % of 0 warns once (`TumorcamWarning`,
    see the module docstring; `warn=False` leaves the warning to the caller, e.g. one over many games).
    `rows` (N,): the images' places in a larger set (None: 0..N-1), so that a shard of the set
    breaks the ties of its maps as the whole set does (`ranking.rank_pixels`).
    """

    def __init__(
        self,
        model_fn: ModelFn,
        images: torch.Tensor,
        *,
        steps: int = 50,
        baseline: str = "zero",
        score: str = "mean-sigmoid",
        schedule: str = "uniform",
        masks: torch.Tensor | None = None,
        channel: int = 0,
        batch_size: int = 256,
        seed: int = 0,
        road_noise: float = 0.01,
        amp: bool = False,
        progress: bool = False,
        warn: bool = True,
        rows: np.ndarray | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() not in (4, 5):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise TumorcamError(f"images: expected a tensor (N, C, H, W) or (N, C, D, H, W), got {shape}")
        check_game(steps, baseline, score, schedule)
        guards.check_positive_int("batch_size", batch_size)
        self.model_fn, self.steps, self.baseline, self.score = model_fn, steps, baseline, score
        self.schedule, self.channel, self.batch_size, self.seed = schedule, channel, batch_size, seed
        self.road_noise, self.progress, self.rows = road_noise, progress, rows
        self.images = images.float()
        self.device = images.device
        self.amp = amp and self.device.type == "cuda"
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.column = (-1,) + (1,) * (images.dim() - 1)  # a per-image value broadcast over an image
        names = curve_baselines(baseline)
        self.bases: tuple[torch.Tensor, torch.Tensor] | None = None
        if baseline != "road":
            first = fixed_baseline(self.images, names[0])
            self.bases = (first, first if names[1] == names[0] else fixed_baseline(self.images, names[1]))
        n = len(images)
        self.region: torch.Tensor | None = None  # R of the score, filled from the original logits below
        if score == "gt-region":
            self.region = fixed_region(score, self.images, None if masks is None else as_masks(masks, self.images))
        elif score in ("predicted-region", "dice"):
            self.region = torch.empty((n, 1, *self.images.shape[2:]), device=self.device)
        original = torch.empty(n, device=self.device)
        full = torch.empty(2, n, device=self.device)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                rows = slice(start, start + batch_size)
                logits = self._forward(self.images[rows])
                if score in ("predicted-region", "dice"):
                    self.region[rows] = fixed_region(score, logits, None, channel)
                original[rows] = score_logits(logits, score, None if self.region is None else self.region[rows],
                                              channel)
            for curve in range(2):
                if curve == 1 and names[1] == names[0]:
                    full[1] = full[0]
                    continue
                for start in range(0, n, batch_size):
                    idx = torch.arange(start, min(start + batch_size, n), device=self.device)
                    everything = torch.ones((len(idx), 1, *self.images.shape[2:]), dtype=torch.bool,
                                            device=self.device)
                    full[curve, idx] = self._score(self._perturb(idx, everything, torch.full_like(idx, curve)), idx)
        self.original, self.full = original, full
        self.baseline_effects = {name: baseline_effect(original, full[curve]) for curve, name in enumerate(names)}
        self.baseline_effect = least_effect(self.baseline_effects)
        if warn:
            warn_uninformative(self.baseline_effects, n)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model_fn(x)
        return self.model_fn(x)

    def _score(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return score_logits(self._forward(x), self.score, None if self.region is None else self.region[idx],
                            self.channel)

    def _perturb(self, idx: torch.Tensor, removed: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
        """Images `idx` with their `removed` pixels (B, 1, *spatial) bool taken from the baseline of each
        job's `curve` (B,) (0 deletion, 1 insertion)."""
        images = self._rows(self.images, idx)
        if self.bases is None:
            return road_impute(images, removed, noise=self.road_noise, generator=self.generator)
        deletion, insertion = self.bases
        base = self._rows(deletion, idx) if insertion is deletion else torch.where(
            curve.bool().view(self.column), self._rows(insertion, idx), self._rows(deletion, idx))
        return torch.where(removed, base, images)

    @staticmethod
    def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Rows `idx` of x; a game of one image (a volume, case by case) broadcasts it without a copy."""
        return x.expand(len(idx), *x.shape[1:]) if len(x) == 1 else x[idx]

    def curves(self, maps: torch.Tensor) -> Curves:
        """Deletion and insertion curves of maps (N, *spatial), one per image, ranked with the game's seed."""
        n, spatial = len(self.images), tuple(self.images.shape[2:])
        if tuple(maps.shape) != (n, *spatial):
            raise TumorcamError(f"maps: expected ({n}, {', '.join(map(str, spatial))}) for images "
                                f"{tuple(self.images.shape)}, got {tuple(maps.shape)}")
        k = self.steps
        ranks = rank_pixels(maps.to(self.device), self.seed, self.rows).to(torch.int32).view(n, 1, *spatial)
        scores = torch.empty(n, 2, k + 1, device=self.device)
        scores[:, 0, 0] = scores[:, 1, k] = self.original
        scores[:, 0, k], scores[:, 1, 0] = self.full[0], self.full[1]
        inner = torch.arange(1, k, device=self.device)  # steps 1..K-1 of both curves
        job_image = torch.arange(n, device=self.device).repeat_interleave(2 * len(inner))
        job_curve = torch.arange(2, device=self.device).repeat_interleave(len(inner)).repeat(n)
        job_step = inner.repeat(2 * n)
        counts = torch.tensor(step_counts(k, int(np.prod(spatial)), self.schedule), device=self.device,
                              dtype=torch.int32)
        chunks: Any = range(0, len(job_image), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"deletion/insertion ({self.baseline}, {self.score})", unit="batch",
                          leave=False)
        with torch.inference_mode():
            for start in chunks:
                idx = job_image[start:start + self.batch_size]
                curve = job_curve[start:start + self.batch_size]
                step = job_step[start:start + self.batch_size]
                top = ranks[idx] < counts[step].view(self.column)
                removed = top ^ curve.bool().view(self.column)  # insertion removes all but the top
                scores[idx, curve, step] = self._score(self._perturb(idx, removed, curve), idx)
        scores = scores.cpu().numpy().astype(np.float64)
        return Curves(deletion=scores[:, 0], insertion=scores[:, 1], fractions=step_fractions(k, self.schedule))


def baseline_effect(intact: torch.Tensor, perturbed: torch.Tensor) -> float:
    """The median over images of 1 - perturbed / intact (scores (N,)), the images with a non-finite ratio
    (an empty region, an intact score of 0) left out; NaN when none is left."""
    ratio = (perturbed.double() / intact.double()).cpu().numpy()
    ratio = ratio[np.isfinite(ratio)]
    return float(1 - np.median(ratio)) if ratio.size else float("nan")


def least_effect(effects: dict[str, float]) -> float:
    """The effect of the least informative baseline: the smallest in magnitude (NaN only when all are)."""
    return min(effects.values(), key=lambda e: abs(e) if np.isfinite(e) else np.inf)


def warn_uninformative(effects: dict[str, float], images: int, unit: str = "image") -> None:
    """One `TumorcamWarning` per baseline whose effect (`baseline_effect`, a median over `images` of
    `unit`) is within `UNINFORMATIVE_EFFECT` of 0."""
    for name, effect in effects.items():
        if np.isfinite(effect) and abs(effect) <= UNINFORMATIVE_EFFECT:
            guards.warn(f"baseline {name!r}: the fully perturbed image keeps {1 - effect:.0%} of the intact score "
                        f"(median over {images} {unit}{'' if images == 1 else 's'}); its AUCs say little "
                        "(uninformative baseline)")


def deletion_insertion(model_fn: ModelFn, images: torch.Tensor, maps: torch.Tensor, **options: Any) -> Curves:
    """Batched Deletion/Insertion curves of one set of maps (see `PerturbationGame` for the options)."""
    return PerturbationGame(model_fn, images, **options).curves(maps)
