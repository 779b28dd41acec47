"""Deletion/Insertion (the seed's causal game) with AUC, batched, and its run-folder wrapper.

Pixels are ranked by the map, most important first, ties broken by a seeded random order. For
k = 0..K the top n_k = round(f_k * P) pixels of a slice (P pixels) are replaced by a baseline
(deletion), or the baseline gets them back from the image (insertion), and the model scores
each perturbed slice. AUC = trapezoid of the curve over the normalised step index t = k/K in
[0, 1]: a faithful map has a low deletion AUC and a high insertion AUC.

Schedules (the fractions f_k of the pixels at step k): `uniform` f_k = k/K (the seed's; the AUC
over t is then the area over the fraction of pixels); `log` f_0 = 0 and f_k = f_min^((K-k)/(K-1))
for k = 1..K, f_min = 1e-3 (f_1 = 1e-3, f_K = 1): the steps are spread evenly over the decades of
the fraction, so the first percent of the pixels, where a tumour of a few percent of the slice is
decided, gets as many steps as the last decade.

Baselines: `zero` (black, the seed's), `blur` (RISE: Gaussian blur of the slice), `mean` (the
slice's mean intensity), `road` (ROAD's noisy linear imputation, Rong et al. 2022: every removed
pixel is the weighted mean of its 8 neighbours, 1/6 edge and 1/12 diagonal, solved jointly as a
linear system, plus Gaussian noise), `rise` (RISE's own pair: zero for deletion, blur for insertion).

Scores of a perturbed slice from the model's logits z, p = sigmoid(z), R a region fixed per slice:
`mean-sigmoid` mean p over all pixels (the seed's); `predicted-region` mean p over R = {p > 0.5}
on the unperturbed slice; `gt-region` mean p over R = the ground-truth mask; `dice`
2|P n R| / (|P| + |R|) with P = {p > 0.5} on the perturbed slice and R = {p > 0.5} on the
unperturbed one (1 at the start of deletion). A slice whose R is empty has NaN curves. The option
`target` (of `evaluate_faithfulness`) scores each map by its target (`TARGET_SCORES`).

Batching: the perturbed slices of many slices and steps are built on the device from the rank of
each pixel (`removed = (rank < n_k) xor insertion`) and scored `batch_size` at a time (bf16
autocast on CUDA). The original slice (deletion k = 0, insertion k = K) and the full baselines
(deletion k = K, insertion k = 0) are scored once per slice and shared by every map.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.summary import adjust_file, finite_list, metric_summary

if TYPE_CHECKING:
    from tumorcam.config import EvaluateConfig
    from tumorcam.evaluate.inputs import MapEntry

BASELINES = ("zero", "blur", "mean", "road", "rise")
SCORES = ("target", "mean-sigmoid", "predicted-region", "dice")  # the --score option
GAME_SCORES = ("mean-sigmoid", "predicted-region", "gt-region", "dice")  # what a game scores
SCHEDULES = ("log", "uniform")
CURVES = ("deletion", "insertion")

# `--score target`: the score of a map of each target; `none` is the target of a generated random map.
TARGET_SCORES = {"predicted-region": "predicted-region", "gt-region": "gt-region", "mean-logits": "mean-sigmoid",
                 "none": "mean-sigmoid"}
LOG_FIRST_FRACTION = 1e-3  # f_1 of the `log` schedule
# RISE's blur (Petsiuk et al. 2018): an 11-pixel kernel with sigma 5 at 224 px; scaled with the slice size.
RISE_KERNEL_AT_224 = 11
RISE_SIGMA_AT_224 = 5.0
RISE_PAIR = ("zero", "blur")  # the baselines of RISE's deletion and insertion
# ROAD's neighbour weights (Rong et al. 2022, `NoisyLinearImputer`): 1/6 edge, 1/12 diagonal neighbours.
ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
MASK_CONTROL = "predicted-mask"  # the control map every other map is compared with (vs_mask)

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def check_options(steps: int | None = None, baselines: list[str] | tuple[str, ...] | None = None,
                  score: str | None = None, schedule: str | None = None) -> None:
    """One clear error for K < 1, an unknown baseline, score or schedule (None: not checked)."""
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise TumorcamError(f"--steps: K must be an integer >= 1, got {steps!r}")
    if baselines is not None:
        if not baselines:
            raise TumorcamError(f"--baselines: give at least one of {', '.join(BASELINES)}")
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise TumorcamError(f"--baselines: unknown baseline(s) {', '.join(map(repr, unknown))} "
                                f"(choose from {', '.join(BASELINES)})")
    if score is not None and score not in SCORES:
        raise TumorcamError(f"--score: unknown score {score!r} (choose from {', '.join(SCORES)})")
    if schedule is not None and schedule not in SCHEDULES:
        raise TumorcamError(f"--schedule: unknown schedule {schedule!r} (choose {' or '.join(SCHEDULES)})")


def _check_game(steps: int, baseline: str, score: str, schedule: str) -> None:
    check_options(steps, [baseline], schedule=schedule)
    if score not in GAME_SCORES:
        raise TumorcamError(f"--score: unknown score {score!r} for one game (choose from {', '.join(GAME_SCORES)})")


def target_score(target: str, score: str) -> str:
    """The game score of a map of `target` under the option `score`: itself, or for `target` the
    score of the map's target (predicted-region -> predicted-region, gt-region -> gt-region,
    mean-logits and a generated random map -> mean-sigmoid)."""
    if score != "target":
        return score
    if target not in TARGET_SCORES:
        raise TumorcamError(f"--score target: no score for maps of target {target!r}; "
                            f"choose one of {', '.join(s for s in SCORES if s != 'target')}")
    return TARGET_SCORES[target]


def rank_pixels(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rank (N, H*W) of every pixel of each map: 0 for the highest value; ties in a seeded random order.

    The order is a random permutation (from `seed`, on the CPU, so every device agrees) stably
    sorted by descending map value.
    """
    flat = torch.nan_to_num(maps.reshape(maps.shape[0], -1).float())
    keys = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed)).to(flat.device)
    perm = keys.argsort(dim=1)
    order = perm.gather(1, flat.gather(1, perm).sort(dim=1, descending=True, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def step_fractions(steps: int, schedule: str = "uniform") -> np.ndarray:
    """The fractions f_0..f_K of the pixels perturbed at each step: `uniform` k/K; `log` 0, then
    f_k = f_min^((K-k)/(K-1)) with f_min = 1e-3 (for K = 1: 0, 1)."""
    check_options(steps, schedule=schedule)
    k = np.arange(steps + 1, dtype=np.float64)
    if schedule == "uniform":
        return k / steps
    fractions = np.zeros(steps + 1)
    fractions[1:] = LOG_FIRST_FRACTION ** ((steps - k[1:]) / (steps - 1)) if steps > 1 else 1.0
    return fractions


def step_counts(steps: int, pixels: int, schedule: str = "uniform") -> list[int]:
    """n_k = round(f_k * P) pixels for k = 0..K (`uniform`: round(k * P / K), exact in integers)."""
    if schedule == "uniform":
        return [round(k * pixels / steps) for k in range(steps + 1)]
    return [round(f * pixels) for f in step_fractions(steps, schedule)]


def auc(curves: np.ndarray, steps: int) -> np.ndarray:
    """Trapezoid area under curves (..., K+1) over the normalised step index t = k/K in [0, 1]."""
    return np.trapezoid(np.asarray(curves, dtype=np.float64), np.linspace(0.0, 1.0, steps + 1), axis=-1)


def blur_kernel(size: int) -> tuple[int, float]:
    """RISE's blur at `size` px, s = size/224: kernel 2 floor(11 s / 2) + 1 (at least 3) and sigma 5 s."""
    scale = size / 224
    return max(3, 2 * math.floor(RISE_KERNEL_AT_224 * scale / 2) + 1), RISE_SIGMA_AT_224 * scale


def blur_images(images: torch.Tensor) -> torch.Tensor:
    """RISE's blurred slices (N,1,H,W): Gaussian, `blur_kernel` of the width."""
    kernel, sigma = blur_kernel(images.shape[-1])
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def fixed_baseline(images: torch.Tensor, name: str) -> torch.Tensor:
    """The `zero`, `blur` or `mean` baseline of images (N,1,H,W) (ROAD depends on the removed set)."""
    if name == "zero":
        return torch.zeros_like(images)
    if name == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    if name == "blur":
        return blur_images(images)
    raise ValueError(f"no fixed baseline {name!r}")


def curve_baselines(baseline: str) -> tuple[str, str]:
    """The baselines of the deletion and of the insertion curve: `rise` is (zero, blur), any other (b, b)."""
    return RISE_PAIR if baseline == "rise" else (baseline, baseline)


def road_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-5,
    max_iter: int | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of the `removed` pixels of images (B,1,H,W).

    Each removed pixel i gets x_i = sum_j w_ij x_j / sum_j w_ij over its in-image neighbours j
    (ROAD_WEIGHTS), kept pixels fixed: the sparse system (diag(s) - W_uu) x_u = W_uk v_k of ROAD's
    `NoisyLinearImputer`, here solved for the whole batch at once by Jacobi-preconditioned conjugate
    gradients (the matrix is symmetric positive definite whenever some pixel is kept) to a relative
    residual `tol`, at most `max_iter` iterations (default 8 * max(H, W)). A slice with every pixel
    removed has no data: it imputes 0. Then N(0, noise^2) is added to the imputed pixels.
    """
    with torch.autocast(images.device.type, enabled=False):
        images = images.float()
        unknown = removed.to(images.dtype)
        kernel = torch.tensor(ROAD_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 1, 3, 3)

        def neighbours(x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, kernel, padding=1)  # zero padding: no neighbour outside the slice

        weight_sum = neighbours(torch.ones_like(images))
        rhs = neighbours(images * (1 - unknown)) * unknown

        def operator(x: torch.Tensor) -> torch.Tensor:
            return (weight_sum * x - neighbours(x)) * unknown

        kept = (1 - unknown).sum(dim=(1, 2, 3), keepdim=True)
        start = (images * (1 - unknown)).sum(dim=(1, 2, 3), keepdim=True) / kept.clamp_min(1)
        x = start * unknown
        r = rhs - operator(x)
        z = r / weight_sum
        p = z.clone()
        rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        limit = tol * rhs.flatten(1).norm(dim=1).clamp_min(1e-12)
        for it in range(max_iter or 8 * max(images.shape[-2:])):
            ap = operator(p)
            pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
            alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-30), torch.zeros_like(pap))
            x = x + alpha * p
            r = r - alpha * ap
            if it % 16 == 15 and bool((r.flatten(1).norm(dim=1) <= limit).all()):
                break
            z = r / weight_sum
            rz_next = (r * z).sum(dim=(1, 2, 3), keepdim=True)
            beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-30), torch.zeros_like(rz))
            p = z + beta * p
            rz = rz_next
        if noise > 0:
            x = x + noise * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(removed, x, images)


def score_logits(logits: torch.Tensor, score: str, region: torch.Tensor | None = None) -> torch.Tensor:
    """The score (B,) of logits (B,1,H,W) against the slices' fixed `region` (B,1,H,W) {0,1} (see the
    module docstring); NaN where the region is empty (`mean-sigmoid` needs none)."""
    if score == "mean-sigmoid":
        return logits.float().sigmoid().mean(dim=(1, 2, 3))
    if region is None:
        raise ValueError(f"score {score!r} needs a region")
    size = region.sum(dim=(1, 2, 3))
    if score == "dice":
        predicted = (logits.float() > 0).float()  # sigmoid > 0.5
        dice = 2 * (predicted * region).sum(dim=(1, 2, 3)) / (predicted.sum(dim=(1, 2, 3)) + size)
        return torch.where(size > 0, dice, torch.full_like(dice, float("nan")))
    return (logits.float().sigmoid() * region).sum(dim=(1, 2, 3)) / size


def _region(score: str, logits: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor | None:
    """The fixed region R of a score from the original slices' logits or the ground-truth masks."""
    if score in ("predicted-region", "dice"):
        return (logits.float() > 0).float()
    if score == "gt-region":
        if masks is None:
            raise ValueError("score 'gt-region' needs the ground-truth masks")
        return (masks.float() > 0.5).float()
    return None


@dataclass
class Curves:
    """Deletion and insertion curves (N, K+1) of N slices at the pixel `fractions` (K+1); AUC over t = k/K."""

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
    """Deletion/Insertion of one set of slices under one baseline, score and schedule, for any number of maps.

    Construction scores the original slices (and takes the region of the score from them, or from
    `masks` (N,1,H,W) for `gt-region`) and the full baselines once; `curves(maps)` then scores the
    2(K-1) intermediate steps of every slice in forwards of `batch_size` perturbed slices.
    `model_fn` maps (B,1,H,W) in [0,1] to logits (B,1,H,W); images live on the device the game runs on.
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
        batch_size: int = 256,
        seed: int = 0,
        road_noise: float = 0.01,
        amp: bool = True,
        progress: bool = False,
    ) -> None:
        _check_game(steps, baseline, score, schedule)
        if batch_size < 1:
            raise TumorcamError(f"--batch-size: must be >= 1, got {batch_size}")
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N,1,H,W), got {tuple(images.shape)}")
        self.model_fn, self.steps, self.baseline, self.score = model_fn, steps, baseline, score
        self.schedule, self.batch_size, self.seed = schedule, batch_size, seed
        self.road_noise, self.progress = road_noise, progress
        self.images = images.float()
        self.device = images.device
        self.amp = amp and self.device.type == "cuda"
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        names = curve_baselines(baseline)
        self.bases: tuple[torch.Tensor, torch.Tensor] | None = None
        if baseline != "road":
            first = fixed_baseline(self.images, names[0])
            self.bases = (first, first if names[1] == names[0] else fixed_baseline(self.images, names[1]))
        n = len(images)
        self.region: torch.Tensor | None = None  # R of the score, filled from the original logits below
        if score == "gt-region":
            if masks is not None and masks.shape != images.shape:
                raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
            self.region = _region(score, self.images, None if masks is None else masks.to(self.device))
        elif score in ("predicted-region", "dice"):
            self.region = torch.empty_like(self.images)
        original = torch.empty(n, device=self.device)
        full = torch.empty(2, n, device=self.device)
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                rows = slice(start, start + batch_size)
                logits = self._forward(self.images[rows])
                if score in ("predicted-region", "dice"):
                    self.region[rows] = _region(score, logits, None)
                original[rows] = score_logits(logits, score, None if self.region is None else self.region[rows])
            for curve in range(2):
                if curve == 1 and names[1] == names[0]:
                    full[1] = full[0]
                    continue
                for start in range(0, n, batch_size):
                    idx = torch.arange(start, min(start + batch_size, n), device=self.device)
                    everything = torch.ones_like(self.images[idx], dtype=torch.bool)
                    full[curve, idx] = self._score(self._perturb(idx, everything, torch.full_like(idx, curve)), idx)
        self.original, self.full = original, full

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model_fn(x)
        return self.model_fn(x)

    def _score(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return score_logits(self._forward(x), self.score, None if self.region is None else self.region[idx])

    def _perturb(self, idx: torch.Tensor, removed: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
        """Slices `idx` with their `removed` pixels (B,1,H,W) bool taken from the baseline of each
        job's `curve` (B,) (0 deletion, 1 insertion)."""
        images = self.images[idx]
        if self.bases is None:
            return road_impute(images, removed, noise=self.road_noise, generator=self.generator)
        deletion, insertion = self.bases
        base = deletion[idx] if insertion is deletion else torch.where(
            curve.bool().view(-1, 1, 1, 1), insertion[idx], deletion[idx])
        return torch.where(removed, base, images)

    def curves(self, maps: torch.Tensor) -> Curves:
        """Deletion and insertion curves of maps (N,H,W), one per slice, ranked with the game's seed."""
        n, _, h, w = self.images.shape
        if tuple(maps.shape) != (n, h, w):
            raise ValueError(f"maps {tuple(maps.shape)} do not match images {tuple(self.images.shape)}")
        k = self.steps
        ranks = rank_pixels(maps.to(self.device), self.seed).to(torch.int32).view(n, 1, h, w)
        scores = torch.empty(n, 2, k + 1, device=self.device)
        scores[:, 0, 0] = scores[:, 1, k] = self.original
        scores[:, 0, k], scores[:, 1, 0] = self.full[0], self.full[1]
        inner = torch.arange(1, k, device=self.device)  # steps 1..K-1 of both curves
        job_slice = torch.arange(n, device=self.device).repeat_interleave(2 * len(inner))
        job_curve = torch.arange(2, device=self.device).repeat_interleave(len(inner)).repeat(n)
        job_step = inner.repeat(2 * n)
        counts = torch.tensor(step_counts(k, h * w, self.schedule), device=self.device, dtype=torch.int32)
        chunks = range(0, len(job_slice), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"deletion/insertion ({self.baseline}, {self.score})", unit="batch",
                          leave=False)
        with torch.inference_mode():
            for start in chunks:
                idx = job_slice[start:start + self.batch_size]
                curve = job_curve[start:start + self.batch_size]
                step = job_step[start:start + self.batch_size]
                top = ranks[idx] < counts[step].view(-1, 1, 1, 1)
                removed = top ^ curve.bool().view(-1, 1, 1, 1)  # insertion removes all but the top
                scores[idx, curve, step] = self._score(self._perturb(idx, removed, curve), idx)
        scores = scores.cpu().numpy().astype(np.float64)
        return Curves(deletion=scores[:, 0], insertion=scores[:, 1], fractions=step_fractions(k, self.schedule))


def deletion_insertion(model_fn: ModelFn, images: torch.Tensor, maps: torch.Tensor, **options: Any) -> Curves:
    """Batched Deletion/Insertion curves of one set of maps (see `PerturbationGame` for the options)."""
    return PerturbationGame(model_fn, images, **options).curves(maps)


def reference_curves(
    model_fn: ModelFn,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    steps: int = 50,
    baseline: str = "zero",
    score: str = "mean-sigmoid",
    schedule: str = "uniform",
    masks: torch.Tensor | None = None,
    seed: int = 0,
    road_noise: float = 0.0,
    amp: bool = True,
) -> Curves:
    """The seed's loop: one forward per step per slice, for both curves. The batched game must
    agree with it (tests) and beat it (benchmarks/bench_faithfulness.py)."""
    _check_game(steps, baseline, score, schedule)
    n, _, h, w = images.shape
    ranks = rank_pixels(maps, seed).view(n, 1, h, w)
    counts = step_counts(steps, h * w, schedule)
    names = curve_baselines(baseline)
    out = np.empty((2, n, steps + 1))
    use_amp = amp and images.device.type == "cuda"
    generator = torch.Generator(device=images.device).manual_seed(seed)

    def forward(x: torch.Tensor) -> torch.Tensor:
        if use_amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model_fn(x)
        return model_fn(x)

    with torch.inference_mode():
        for i in range(n):
            image = images[i:i + 1].float()
            region = _region(score, forward(image), None if masks is None else masks[i:i + 1])
            for c in range(2):
                base = None if baseline == "road" else fixed_baseline(image, names[c])
                for k in range(steps + 1):
                    removed = (ranks[i:i + 1] < counts[k]) ^ bool(c)
                    if base is None:
                        x = road_impute(image, removed, noise=road_noise, generator=generator)
                    else:
                        x = torch.where(removed, base, image)
                    out[c, i, k] = float(score_logits(forward(x), score, region)[0])
    return Curves(deletion=out[0], insertion=out[1], fractions=step_fractions(steps, schedule))


def evaluate_faithfulness(
    run: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    steps: int | None = None,
    baselines: list[str] | None = None,
    score: str | None = None,
    schedule: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    patients: int | None = None,
    slices_per_patient: int | None = None,
) -> dict[str, Any]:
    """Deletion/Insertion of every trained-model map of RUN/explanations (methods, controls and the
    random map), each row with its patient-level AUC summary against the random map (`vs_random`)
    and the predicted-mask control (`vs_mask`) of the same target, Holm-adjusted over the file;
    writes RUN/faithfulness.json (schema in docs/evaluate.md) and returns it.

    Every map is scored by `target_score(map target, score)`; the maps it is compared with are
    scored with the same score. One `PerturbationGame` per (baseline, score) plays every map that
    needs that score. `patients` and `slices_per_patient` select the slices (`load_inputs`).
    """
    from tumorcam.evaluate.inputs import load_inputs
    from tumorcam.io import write_json

    run = Path(run)
    check_options(steps, baselines, score, schedule)  # the options given, before any loading
    inputs = load_inputs(run, data=data, split=split, device=device, patients=patients,
                         slices_per_patient=slices_per_patient)
    cfg = inputs.config.evaluate
    steps = cfg.steps if steps is None else steps
    baselines = list(cfg.baselines if baselines is None else baselines)
    score = cfg.score if score is None else score
    schedule = cfg.schedule if schedule is None else schedule
    batch_size = cfg.batch_size if batch_size is None else batch_size
    check_options(steps, baselines, score, schedule)
    model = inputs.model
    if inputs.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    entries = [e for e in inputs.entries if e.model == "trained"]
    plan = [(entry, target_score(entry.target, score), *references(entry, entries)) for entry in entries]
    needed: dict[str, dict[tuple, MapEntry]] = {}  # score -> the maps to play with it
    for entry, entry_score, random_map, mask_map in plan:
        for member in (entry, random_map, mask_map):
            if member is not None:
                needed.setdefault(entry_score, {})[member.key] = member
    began = time.perf_counter()
    played: dict[tuple, Curves] = {}
    for baseline in baselines:
        for game_score, members in needed.items():
            game = PerturbationGame(model, inputs.images, steps=steps, baseline=baseline, score=game_score,
                                    schedule=schedule, masks=inputs.masks if game_score == "gt-region" else None,
                                    batch_size=batch_size, seed=cfg.seed, road_noise=cfg.road_noise,
                                    amp=inputs.config.train.amp, progress=True)
            for key, member in members.items():
                played[baseline, game_score, key] = game.curves(torch.from_numpy(member.maps).to(inputs.device))
    patient_ids = np.asarray(inputs.patient_ids).astype(str)
    results = [_row(entry, entry_score, random_map, mask_map, baseline, played, patient_ids, cfg, steps)
               for baseline in baselines for entry, entry_score, random_map, mask_map in plan]
    adjust_file(results, list(CURVES), primary=dataclasses.asdict(cfg.primary), alpha=cfg.alpha)
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_patients": len(np.unique(patient_ids)),
        "n_slices": len(inputs.file_ids),
        "primary": dataclasses.asdict(cfg.primary),
        "alpha": cfg.alpha,
        "steps": steps,
        "schedule": schedule,
        "fractions": step_fractions(steps, schedule).tolist(),
        "score": score,
        "baselines": baselines,
        "batch_size": batch_size,
        "road_noise": cfg.road_noise,
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "device": str(inputs.device),
        "seconds": round(time.perf_counter() - began, 3),
        "file_ids": inputs.file_ids.tolist(),
        "patient_ids": patient_ids.tolist(),
        "results": results,
    }
    write_json(run / "faithfulness.json", out)
    return out


def references(entry: MapEntry, entries: list[MapEntry]) -> tuple[MapEntry | None, MapEntry | None]:
    """The random map and the predicted-mask control an entry is compared with (same model kind;
    the random map of the same target when there is one, the mask of the same target). None for
    the comparison of a map with itself, and no mask for the random map (that test is the mask's
    own vs_random)."""
    from tumorcam.evaluate.inputs import RANDOM, random_reference

    random_map = random_reference(entry, entries)
    masks = [e for e in entries if e.method == MASK_CONTROL and e.model == entry.model and e.target == entry.target
             and not e.times_gt]
    mask_map = None if entry.method in (RANDOM, MASK_CONTROL) or not masks else masks[0]
    return (None if random_map is entry else random_map), mask_map


def _row(entry: MapEntry, score: str, random_map: MapEntry | None, mask_map: MapEntry | None, baseline: str,
         played: dict[tuple, Curves], patient_ids: np.ndarray, cfg: EvaluateConfig, steps: int) -> dict[str, Any]:
    """One JSON row: the entry, its baseline and score, and per curve the patient-level AUC summary
    with its comparisons with the random map and the predicted mask."""
    curves = played[baseline, score, entry.key]
    row: dict[str, Any] = {
        **entry.describe(), "control": entry.control, "baseline": baseline, "score": score,
        "random_reference": None if random_map is None else random_map.describe(),
        "mask_reference": None if mask_map is None else mask_map.describe(),
    }
    per_slice = {}
    compared = {"random": random_map, "mask": mask_map}
    for name in CURVES:
        raw = getattr(curves, name)
        values = auc(raw, steps)
        reference_values = {label: None if other is None else
                            auc(getattr(played[baseline, score, other.key], name), steps)
                            for label, other in compared.items()}
        row[name] = metric_summary(values, reference_values, patient_ids, lower_is_better=name == "deletion",
                                   test="wilcoxon", resamples=cfg.bootstrap, seed=cfg.seed, curves=raw,
                                   alpha=cfg.alpha)
        per_slice[name] = finite_list(values)
    row["per_slice"] = per_slice
    return row
