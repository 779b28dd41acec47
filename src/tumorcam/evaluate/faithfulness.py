"""Deletion/Insertion (the seed's causal game) with AUC, batched, and its run-folder wrapper.

Pixels are ranked by the map, most important first, ties broken by a seeded random order. For
k = 0..K the top n_k = round(k/K * P) pixels of a slice (P pixels) are replaced by a baseline
(deletion), or the baseline gets them back from the image (insertion), and the model scores
each perturbed slice. AUC = trapezoid of the curve over the fraction k/K in [0, 1]: a faithful
map has a low deletion AUC and a high insertion AUC.

Baselines: `zero` (black, the seed's), `blur` (RISE: Gaussian blur of the slice), `mean` (the
slice's mean intensity), `road` (ROAD's noisy linear imputation, Rong et al. 2022: every removed
pixel is the weighted mean of its 8 neighbours, 1/6 edge and 1/12 diagonal, solved jointly as a
linear system, plus Gaussian noise). Scores: `mean-sigmoid` (mean sigmoid over all pixels, the
seed's) or `predicted-region` (mean sigmoid over the pixels the model predicts as tumour, p > 0.5,
on the unperturbed slice; NaN where it predicts none).

Batching: the perturbed slices of many slices and steps are built on the device from the rank of
each pixel (`removed = (rank < n_k) xor insertion`) and scored `batch_size` at a time (bf16
autocast on CUDA). The original slice (deletion k = 0, insertion k = K) and the full baseline
(deletion k = K, insertion k = 0) are scored once per slice and shared by every map.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from tumorcam.errors import TumorcamError

BASELINES = ("zero", "blur", "mean", "road")
SCORES = ("mean-sigmoid", "predicted-region")
CURVES = ("deletion", "insertion")

# RISE's blur (Petsiuk et al. 2018): an 11-pixel kernel with sigma 5 at 224 px; scaled with the slice size.
RISE_KERNEL_AT_224 = 11
RISE_SIGMA_AT_224 = 5.0
# ROAD's neighbour weights (Rong et al. 2022, `NoisyLinearImputer`): 1/6 edge, 1/12 diagonal neighbours.
ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def check_options(steps: int | None = None, baselines: list[str] | tuple[str, ...] | None = None,
                  score: str | None = None) -> None:
    """One clear error for K < 1, an unknown baseline or an unknown score (None: not checked)."""
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
        raise TumorcamError(f"--score: unknown score {score!r} (choose {' or '.join(SCORES)})")


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


def step_counts(steps: int, pixels: int) -> list[int]:
    """n_k = round(k/K * P) pixels for k = 0..K."""
    return [round(k * pixels / steps) for k in range(steps + 1)]


def auc(curves: np.ndarray, steps: int) -> np.ndarray:
    """Trapezoid area under curves (..., K+1) over the fraction k/K in [0, 1]."""
    return np.trapezoid(np.asarray(curves, dtype=np.float64), np.linspace(0.0, 1.0, steps + 1), axis=-1)


def blur_images(images: torch.Tensor) -> torch.Tensor:
    """RISE's blurred slice: Gaussian kernel 11 px, sigma 5 at 224 px, both scaled with the size."""
    scale = images.shape[-1] / 224
    kernel = max(3, 2 * round(RISE_KERNEL_AT_224 * scale / 2) + 1)
    sigma = RISE_SIGMA_AT_224 * scale
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


def _scores(logits: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Mean sigmoid per slice over all pixels, or over `region` (NaN where the region is empty)."""
    prob = logits.float().sigmoid()
    if region is None:
        return prob.mean(dim=(1, 2, 3))
    return (prob * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3))


@dataclass
class Curves:
    """Deletion and insertion curves (N, K+1) of N slices; AUC over the fraction k/K."""

    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def steps(self) -> int:
        return self.deletion.shape[1] - 1

    @property
    def fractions(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.steps + 1)

    @property
    def deletion_auc(self) -> np.ndarray:
        return auc(self.deletion, self.steps)

    @property
    def insertion_auc(self) -> np.ndarray:
        return auc(self.insertion, self.steps)


class PerturbationGame:
    """Deletion/Insertion of one set of slices under one baseline and score, for any number of maps.

    Construction scores the original slices (and takes the predicted region from them) and the
    full baseline once; `curves(maps)` then scores the 2(K-1) intermediate steps of every slice in
    forwards of `batch_size` perturbed slices. `model_fn` maps (B,1,H,W) in [0,1] to logits
    (B,1,H,W); images live on the device the game runs on.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        images: torch.Tensor,
        *,
        steps: int = 50,
        baseline: str = "zero",
        score: str = "mean-sigmoid",
        batch_size: int = 256,
        seed: int = 0,
        road_noise: float = 0.01,
        amp: bool = True,
        progress: bool = False,
    ) -> None:
        check_options(steps, [baseline], score)
        if batch_size < 1:
            raise TumorcamError(f"--batch-size: must be >= 1, got {batch_size}")
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (N,1,H,W), got {tuple(images.shape)}")
        self.model_fn, self.steps, self.baseline, self.score = model_fn, steps, baseline, score
        self.batch_size, self.seed, self.road_noise, self.progress = batch_size, seed, road_noise, progress
        self.images = images.float()
        self.device = images.device
        self.amp = amp and self.device.type == "cuda"
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.fixed = None if baseline == "road" else fixed_baseline(self.images, baseline)
        self.region: torch.Tensor | None = None
        original = torch.empty(len(images), device=self.device)
        full = torch.empty(len(images), device=self.device)
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                rows = slice(start, start + batch_size)
                logits = self._forward(self.images[rows])
                if score == "predicted-region":
                    region = (logits.float() > 0).float()  # sigmoid > 0.5
                    self.region = region if self.region is None else torch.cat([self.region, region])
                original[rows] = _scores(logits, None if self.region is None else self.region[rows])
            for start in range(0, len(images), batch_size):
                idx = torch.arange(start, min(start + batch_size, len(images)), device=self.device)
                everything = torch.ones_like(self.images[idx], dtype=torch.bool)
                full[idx] = self._score(self._perturb(idx, everything), idx)
        self.original, self.full = original, full

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.amp:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model_fn(x)
        return self.model_fn(x)

    def _score(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return _scores(self._forward(x), None if self.region is None else self.region[idx])

    def _perturb(self, idx: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """Slices `idx` with their `removed` pixels (B,1,H,W) bool taken from the baseline."""
        images = self.images[idx]
        if self.fixed is None:
            return road_impute(images, removed, noise=self.road_noise, generator=self.generator)
        return torch.where(removed, self.fixed[idx], images)

    def curves(self, maps: torch.Tensor) -> Curves:
        """Deletion and insertion curves of maps (N,H,W), one per slice, ranked with the game's seed."""
        n, _, h, w = self.images.shape
        if tuple(maps.shape) != (n, h, w):
            raise ValueError(f"maps {tuple(maps.shape)} do not match images {tuple(self.images.shape)}")
        k = self.steps
        ranks = rank_pixels(maps.to(self.device), self.seed).to(torch.int32).view(n, 1, h, w)
        scores = torch.empty(n, 2, k + 1, device=self.device)
        scores[:, 0, 0] = scores[:, 1, k] = self.original
        scores[:, 0, k] = scores[:, 1, 0] = self.full
        inner = torch.arange(1, k, device=self.device)  # steps 1..K-1 of both curves
        job_slice = torch.arange(n, device=self.device).repeat_interleave(2 * len(inner))
        job_curve = torch.arange(2, device=self.device).repeat_interleave(len(inner)).repeat(n)
        job_step = inner.repeat(2 * n)
        counts = torch.tensor(step_counts(k, h * w), device=self.device, dtype=torch.int32)
        chunks = range(0, len(job_slice), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc=f"deletion/insertion ({self.baseline})", unit="batch", leave=False)
        with torch.inference_mode():
            for start in chunks:
                idx = job_slice[start:start + self.batch_size]
                curve = job_curve[start:start + self.batch_size]
                step = job_step[start:start + self.batch_size]
                top = ranks[idx] < counts[step].view(-1, 1, 1, 1)
                removed = top ^ curve.bool().view(-1, 1, 1, 1)  # insertion removes all but the top
                scores[idx, curve, step] = self._score(self._perturb(idx, removed), idx)
        scores = scores.cpu().numpy().astype(np.float64)
        return Curves(deletion=scores[:, 0], insertion=scores[:, 1])


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
    seed: int = 0,
    road_noise: float = 0.0,
    amp: bool = True,
) -> Curves:
    """The seed's loop: one forward per step per slice, for both curves. The batched game must
    agree with it (tests) and beat it (benchmarks/bench_faithfulness.py)."""
    check_options(steps, [baseline], score)
    n, _, h, w = images.shape
    ranks = rank_pixels(maps, seed).view(n, 1, h, w)
    counts = step_counts(steps, h * w)
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
            logits = forward(image)
            region = (logits.float() > 0).float() if score == "predicted-region" else None
            base = None if baseline == "road" else fixed_baseline(image, baseline)
            for c in range(2):
                for k in range(steps + 1):
                    removed = (ranks[i:i + 1] < counts[k]) ^ bool(c)
                    if base is None:
                        x = road_impute(image, removed, noise=road_noise, generator=generator)
                    else:
                        x = torch.where(removed, base, image)
                    out[c, i, k] = float(_scores(forward(x), region)[0])
    return Curves(deletion=out[0], insertion=out[1])


def evaluate_faithfulness(
    run: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    steps: int | None = None,
    baselines: list[str] | None = None,
    score: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Deletion/Insertion of every trained-model map of RUN/explanations beside the random map;
    writes RUN/faithfulness.json (schema in docs/evaluate.md) and returns it."""
    from tumorcam.evaluate.inputs import load_inputs, summary_rows
    from tumorcam.io import write_json

    run = Path(run)
    check_options(steps, baselines, score)  # the options given, before any loading
    inputs = load_inputs(run, data=data, split=split, device=device)
    cfg = inputs.config.evaluate
    steps = cfg.steps if steps is None else steps
    baselines = list(cfg.baselines if baselines is None else baselines)
    score = cfg.score if score is None else score
    batch_size = cfg.batch_size if batch_size is None else batch_size
    check_options(steps, baselines, score)
    model = inputs.model
    if inputs.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    entries = [e for e in inputs.entries if e.model == "trained"]
    began = time.perf_counter()
    results = []
    for baseline in baselines:
        game = PerturbationGame(model, inputs.images, steps=steps, baseline=baseline, score=score,
                                batch_size=batch_size, seed=cfg.seed, road_noise=cfg.road_noise,
                                amp=inputs.config.train.amp, progress=True)
        per_entry = {}
        for entry in entries:
            curves = game.curves(torch.from_numpy(entry.maps).to(inputs.device))
            per_entry[entry.key] = {"deletion": curves.deletion, "insertion": curves.insertion}
        results += summary_rows(entries, per_entry, lower_is_better={"deletion": True, "insertion": False},
                                resamples=cfg.bootstrap, seed=cfg.seed, reduce=lambda c: auc(c, steps),
                                extra={"baseline": baseline})
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_slices": len(inputs.file_ids),
        "file_ids": inputs.file_ids.tolist(),
        "steps": steps,
        "fractions": np.linspace(0.0, 1.0, steps + 1).tolist(),
        "score": score,
        "baselines": baselines,
        "batch_size": batch_size,
        "road_noise": cfg.road_noise,
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "device": str(inputs.device),
        "seconds": round(time.perf_counter() - began, 3),
        "results": results,
    }
    write_json(run / "faithfulness.json", out)
    return out
