"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps"),
cascading from the output down, and its run-folder wrapper.

The layers are re-initialised one stage at a time from the output towards the input, cumulatively
(for the U-Net: `segmentation_head`, `decoder.blocks.4` ... `decoder.blocks.0`, `encoder.layer4` ...
`encoder.layer1`, `encoder.bn1`, `encoder.conv1`); after each stage the maps are recomputed and
compared with the maps of the intact model, per slice, by

- Spearman rank correlation rho of the pixel values (ties get average ranks; a constant original
  map has nothing to compare and gives no value (NaN, left out of the means); a constant map of the
  randomised model against a non-constant original gives rho = 0), and
- SSIM (Wang et al. 2004: Gaussian window 11 px, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1,
  over the window positions that fit in the map). Hand-written in a few lines rather than adding
  torchmetrics or scikit-image as a dependency for one formula.

A map that explains the model must change when the model's weights are destroyed. Criterion: a
method FAILS when its maps of the fully randomised model still have mean Spearman rho >= the
threshold (EvaluateConfig.sanity_threshold, 0.5) with the original maps. A map that ignores the
weights (an edge detector of the input, or a random map with a fixed seed) keeps rho = 1 and fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from tumorcam.errors import TumorcamError

MapFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def cascade_stages(model: nn.Module) -> list[str]:
    """Module paths to randomise, output first: for an smp U-Net the head, the decoder blocks from the
    last, then the encoder's stages from the deepest; otherwise the top-level children with
    parameters, last first."""
    def with_params(parent: nn.Module, prefix: str) -> list[str]:
        return [f"{prefix}{name}" for name, child in parent.named_children() if any(True for _ in child.parameters())]

    names = dict(model.named_children())
    if {"encoder", "decoder", "segmentation_head"} <= set(names) and hasattr(model.decoder, "blocks"):
        decoder = with_params(model.decoder.blocks, "decoder.blocks.")[::-1]
        bottleneck = getattr(model.decoder, "center", None)
        center = ["decoder.center"] if bottleneck is not None and any(True for _ in bottleneck.parameters()) else []
        return ["segmentation_head", *decoder, *center, *with_params(model.encoder, "encoder.")[::-1]]
    return with_params(model, "")[::-1]


def randomize_(module: nn.Module, seed: int) -> None:
    """Re-initialise every submodule with `reset_parameters` (PyTorch's default init; BatchNorm:
    weight 1, bias 0, running statistics reset), seeded, in place."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho per row of (N, P) arrays `a` (original maps) and `b` (randomised model's maps), with
    average ranks for ties; a flat row of `a` gives NaN, a flat row of `b` only gives 0."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    ra = rankdata(a, axis=1) - (a.shape[1] + 1) / 2
    rb = rankdata(b, axis=1) - (b.shape[1] + 1) / 2
    na, nb = np.linalg.norm(ra, axis=1), np.linalg.norm(rb, axis=1)
    flat_a, flat_b = na == 0, nb == 0
    rho = (ra * rb).sum(1) / np.where(flat_a | flat_b, 1.0, na * nb)
    return np.where(flat_a, np.nan, np.where(flat_b, 0.0, rho))


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Mean SSIM per map of (N,H,W) maps in [0, 1] (Wang et al. 2004, constants in the module docstring).

    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)), with local
    Gaussian-weighted means, variances and covariance; C1 = (K1 L)^2, C2 = (K2 L)^2, L = 1.
    """
    x = torch.as_tensor(a).float().unsqueeze(1)
    y = torch.as_tensor(b).float().unsqueeze(1).to(x.device)
    size = min(SSIM_WINDOW, *x.shape[-2:])
    size -= 1 - size % 2  # odd
    coords = torch.arange(size, dtype=torch.float32, device=x.device) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).view(1, 1, size, size)

    def local(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = local(x), local(y)
    var_x = local(x * x) - mu_x**2
    var_y = local(y * y) - mu_y**2
    cov = local(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return index.mean(dim=(1, 2, 3)).cpu().numpy().astype(np.float64)


@dataclass
class SanityResult:
    """Similarity of each stage's maps with the original maps: arrays (stages, N)."""

    stages: list[str]
    spearman: np.ndarray
    ssim: np.ndarray

    @property
    def final_spearman(self) -> float | None:
        """Mean rho after the last stage; None when every original map is flat (nothing to compare)."""
        last = self.spearman[-1]
        return None if np.isnan(last).all() else float(np.nanmean(last))

    def fails(self, threshold: float) -> bool | None:
        """True when the fully randomised model's maps keep mean rho >= threshold: the map barely changes;
        None when undetermined (every original map is flat)."""
        final = self.final_spearman
        return None if final is None else final >= threshold


def cascading_randomization(model: nn.Module, images: torch.Tensor, map_fn: MapFn, *,
                            stages: list[str] | None = None, seed: int = 0) -> SanityResult:
    """Maps of `map_fn(model, images)` (N,H,W) after each cumulative stage of randomisation, compared
    with those of the intact model. `model` itself is left untouched (a deep copy is randomised)."""
    stages = cascade_stages(model) if stages is None else list(stages)
    if not stages:
        raise ValueError("no layers to randomise")
    original = map_fn(model, images).detach().float()
    randomized = copy.deepcopy(model).eval()
    modules = dict(randomized.named_modules())
    spearman, similarity = [], []
    for i, stage in enumerate(stages):
        if stage not in modules:
            raise TumorcamError(f"sanity stage {stage!r}: {type(model).__name__} has no such layer")
        randomize_(modules[stage], seed + i)
        maps = map_fn(randomized, images).detach().float()
        spearman.append(spearman_rows(original.cpu().numpy(), maps.cpu().numpy()))
        similarity.append(ssim(original, maps))
    return SanityResult(stages=stages, spearman=np.stack(spearman), ssim=np.stack(similarity))


def evaluate_sanity(run: str | Path, data: str | Path | None = None, split: str | None = None,
                    limit: int | None = None, methods: list[str] | None = None,
                    device: str | torch.device | None = None) -> dict[str, Any]:
    """Cascading randomisation of the run's model for every (method, target, layer) of its trained-model
    maps (Grad-CAM x GT excluded: the mask does not depend on the weights), on the first `limit`
    slices (default EvaluateConfig.sanity_slices); writes RUN/sanity.json (schema in docs/evaluate.md)."""
    from tumorcam.evaluate.inputs import finite_list, load_inputs
    from tumorcam.explain import compute_maps
    from tumorcam.io import write_json

    run = Path(run)
    inputs = load_inputs(run, data=data, split=split, device=device)
    cfg = inputs.config.evaluate
    explain_cfg = inputs.config.explain
    count = cfg.sanity_slices if limit is None else limit
    if count < 1:
        raise TumorcamError(f"--sanity-slices: must be >= 1, got {count}")
    images, masks = inputs.images[:count], inputs.masks[:count]
    combos = sorted({(e.method, e.target, e.layer) for e in inputs.entries
                     if e.model == "trained" and not e.times_gt and not e.generated})
    if methods is not None:
        unknown = sorted(set(methods) - {c[0] for c in combos})
        if unknown:
            raise TumorcamError(f"--methods: no maps of {', '.join(unknown)} in {run}/explanations")
        combos = [c for c in combos if c[0] in methods]
    stages = cascade_stages(inputs.model)
    results = []
    from tqdm.auto import tqdm

    for method, target, layer in tqdm(combos, desc="sanity check", unit="map"):
        def map_fn(model: nn.Module, x: torch.Tensor, method: str = method, target: str = target,
                   layer: str = layer) -> torch.Tensor:
            return compute_maps(model, x, method=method, target=target,
                                layer=None if layer == "input" else layer, masks=masks,
                                ig_steps=explain_cfg.ig_steps, seed=explain_cfg.seed, amp=inputs.config.train.amp)

        result = cascading_randomization(inputs.model, images, map_fn, stages=stages, seed=cfg.seed)
        results.append({
            "method": method, "target": target, "layer": layer,
            "spearman": finite_list(np.nanmean(result.spearman, axis=1)),
            "spearman_std": finite_list(np.nanstd(result.spearman, axis=1)),
            "abs_spearman": finite_list(np.nanmean(np.abs(result.spearman), axis=1)),
            "ssim": finite_list(np.nanmean(result.ssim, axis=1)),
            "ssim_std": finite_list(np.nanstd(result.ssim, axis=1)),
            "final_spearman": result.final_spearman,
            "passes": None if result.fails(cfg.sanity_threshold) is None else not result.fails(cfg.sanity_threshold),
        })
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_slices": int(len(images)),
        "file_ids": inputs.file_ids[:count].tolist(),
        "stages": stages,
        "threshold": cfg.sanity_threshold,
        "criterion": "fails when the mean Spearman rho between the maps of the fully randomised model "
                     "and the original maps is >= threshold",
        "seed": cfg.seed,
        "results": results,
    }
    write_json(run / "sanity.json", out)
    return out
