"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity checks for saliency maps"),
cascading from the output down: the library call `sanity` and the run folder's `evaluate_sanity`.

    import tumorcam

    result = tumorcam.sanity(model, images, method="gradcam", channel=1)
    result.stages, result.n_compared, result.passes

The layers are re-initialised one stage at a time from the output towards the input, cumulatively
(for the U-Net: `segmentation_head`, `decoder.blocks.4` ... `decoder.blocks.0`, `encoder.layer4` ...
`encoder.layer1`, `encoder.bn1`, `encoder.conv1`); after each stage the maps are recomputed and
compared with the maps of the intact model, per slice, by

- Spearman rank correlation rho of the pixel values (ties get average ranks), and
- SSIM (Wang et al. 2004: Gaussian window 11 px, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1,
  over the window positions that fit in the map; a 3-D map takes the 11^3 window). Hand-written
  in a few lines rather than adding torchmetrics or scikit-image as a dependency for one formula.

Flat maps (every pixel equal) are treated alike by both measures: a flat original map has nothing
to compare and gives NaN (left out of the means; `n_compared` counts the maps that entered); a flat
map of the randomised model against a non-flat original gives 0 (its structure is gone).

The target's region is fixed from the intact model. A region target's score is s = sum of the
logits over a region; for `predicted-region` that region is the intact model's predicted mask
[z > 0], computed once and used for every randomised model (computed as the `gt-region` target
with the intact prediction as its mask: the same s), likewise for the other targets whose region
depends on the prediction (`boundary`, `false-positive`, `false-negative`), and for `gt-region` it
is the ground-truth mask. Otherwise a randomised model that predicts no tumour would explain an
empty region: an all-zero map, which would count as "changed" without saying anything about the
method.

A map that explains the model must change when the model's weights are destroyed. Criterion: a
method FAILS when, for the fully randomised model, the mean |rho| or the mean SSIM with the
original maps is >= the threshold (EvaluateConfig.sanity_threshold, 0.5); |rho| so that a map
that merely inverts (rho = -0.9) also fails. Adebayo et al. judge the similarity curves by eye and
give no numeric cut-off: 0.5 is this project's convention ("at most a moderate similarity may
remain"). A map that ignores the weights (an edge detector of the input) keeps rho = 1 and fails.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from tumorcam.errors import TumorcamError

if TYPE_CHECKING:
    from tumorcam.explain.methods.base import Output
    from tumorcam.explain.targets import TargetFn

MapFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
CRITERION = ("fails when, for the fully randomised model, the mean |Spearman rho| or the mean SSIM between its "
             "maps and the intact model's maps is >= threshold")
THRESHOLD_SOURCE = ("Adebayo et al. (2018) judge the similarity curves by eye and give no numeric cut-off; "
                    "0.5 is this project's convention: at most a moderate similarity may remain")


def cascade_stages(model: nn.Module, prefix: str = "") -> list[str]:
    """Module paths to randomize, output first: for an smp U-Net the head, the decoder blocks from the
    last, then the encoder's stages from the deepest; otherwise the children with parameters, last
    first. A wrapper (one child with parameters, e.g. a deep-supervision or normalizing shell
    around the network) is looked into: its child's stages, under `prefix` + the child's name."""
    def with_params(parent: nn.Module, path: str) -> list[str]:
        return [f"{path}{name}" for name, child in parent.named_children() if any(True for _ in child.parameters())]

    names = dict(model.named_children())
    if {"encoder", "decoder", "segmentation_head"} <= set(names) and hasattr(model.decoder, "blocks"):
        decoder = with_params(model.decoder.blocks, f"{prefix}decoder.blocks.")[::-1]
        bottleneck = getattr(model.decoder, "center", None)
        center = [f"{prefix}decoder.center"] if bottleneck is not None and any(True for _ in bottleneck.parameters()) \
            else []
        return [f"{prefix}segmentation_head", *decoder, *center, *with_params(model.encoder, f"{prefix}encoder.")[::-1]]
    children = with_params(model, prefix)
    if len(children) == 1:
        inner = cascade_stages(model.get_submodule(children[0][len(prefix):]), f"{children[0]}.")
        return inner or children
    return children[::-1]


def randomize_(module: nn.Module, seed: int) -> None:
    """Re-initialise every submodule with `reset_parameters` (PyTorch's default init; BatchNorm:
    weight 1, bias 0, running statistics reset), seeded, in place."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


def _flat_rows(x: np.ndarray) -> np.ndarray:
    """True per row of (N, P) whose values are all equal."""
    return x.max(axis=1) == x.min(axis=1)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rho per row of (N, P) arrays `a` (original maps) and `b` (randomised model's maps), with
    average ranks for ties; a flat row of `a` gives NaN, a flat row of `b` (against a non-flat `a`) 0."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    flat_a, flat_b = _flat_rows(a), _flat_rows(b)
    ra = rankdata(a, axis=1) - (a.shape[1] + 1) / 2
    rb = rankdata(b, axis=1) - (b.shape[1] + 1) / 2
    norms = np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)
    rho = (ra * rb).sum(1) / np.where(flat_a | flat_b, 1.0, norms)
    return np.where(flat_a, np.nan, np.where(flat_b, 0.0, rho))


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Mean SSIM per map of (N, H, W) or (N, D, H, W) maps in [0, 1], `a` the originals and `b` the
    randomized model's (Wang et al. 2004, constants in the module docstring; the Gaussian window is
    separable, g x g or g x g x g); a flat map of `a` gives NaN, a flat map of `b` (against a
    non-flat `a`) 0, as in `spearman_rows`.

    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)), with local
    Gaussian-weighted means, variances and covariance; C1 = (K1 L)^2, C2 = (K2 L)^2, L = 1.
    """
    x = torch.as_tensor(a).float().unsqueeze(1)
    y = torch.as_tensor(b).float().unsqueeze(1).to(x.device)
    dims = x.dim() - 2
    if dims not in (2, 3):
        raise TumorcamError(f"maps: SSIM compares 2-D or 3-D maps (N, *spatial), got {tuple(a.shape)}")
    size = min(SSIM_WINDOW, *x.shape[2:])
    size -= 1 - size % 2  # odd
    coords = torch.arange(size, dtype=torch.float32, device=x.device) - (size - 1) / 2
    g = torch.exp(-coords**2 / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    window = g
    for _ in range(dims - 1):
        window = window.unsqueeze(-1) * g
    window = window.view(1, 1, *window.shape)
    convolve = F.conv2d if dims == 2 else F.conv3d

    def local(t: torch.Tensor) -> torch.Tensor:
        return convolve(t, window)

    mu_x, mu_y = local(x), local(y)
    var_x = local(x * x) - mu_x**2
    var_y = local(y * y) - mu_y**2
    cov = local(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    value = index.flatten(1).mean(dim=1).cpu().numpy().astype(np.float64)
    flat_a = _flat_rows(x.flatten(1).cpu().numpy())
    flat_b = _flat_rows(y.flatten(1).cpu().numpy())
    return np.where(flat_a, np.nan, np.where(flat_b, 0.0, value))


@dataclass
class SanityResult:
    """Similarity of each stage's maps with the original maps: arrays (stages, N), NaN where the
    original map is flat; `threshold` is the criterion's (see `passes`)."""

    stages: list[str]
    spearman: np.ndarray
    ssim: np.ndarray
    threshold: float = 0.5

    @property
    def passes(self) -> bool | None:
        """Not `fails(threshold)`: the fully randomized model's maps changed enough; None when undetermined."""
        fails = self.fails(self.threshold)
        return None if fails is None else not fails

    @property
    def n_compared(self) -> list[int]:
        """Per stage, the number of maps that entered the means (a finite rho and SSIM)."""
        return [int(n) for n in (np.isfinite(self.spearman) & np.isfinite(self.ssim)).sum(axis=1)]

    def _stage_means(self, values: np.ndarray) -> np.ndarray:
        kept = np.where(np.isfinite(self.spearman) & np.isfinite(self.ssim), values, 0.0)
        counts = np.asarray(self.n_compared, dtype=np.float64)
        return np.where(counts > 0, kept.sum(axis=1) / np.maximum(counts, 1), np.nan)

    def _stage_stds(self, values: np.ndarray) -> np.ndarray:
        squares = self._stage_means(values**2) - self._stage_means(values) ** 2
        return np.sqrt(np.clip(squares, 0.0, None))

    @property
    def mean_spearman(self) -> np.ndarray:
        """Mean rho per stage over the compared maps (NaN where none)."""
        return self._stage_means(self.spearman)

    @property
    def mean_abs_spearman(self) -> np.ndarray:
        """Mean |rho| per stage over the compared maps (NaN where none)."""
        return self._stage_means(np.abs(self.spearman))

    @property
    def mean_ssim(self) -> np.ndarray:
        """Mean SSIM per stage over the compared maps (NaN where none)."""
        return self._stage_means(self.ssim)

    @property
    def std_spearman(self) -> np.ndarray:
        """Standard deviation (population) of rho per stage over the compared maps."""
        return self._stage_stds(self.spearman)

    @property
    def std_ssim(self) -> np.ndarray:
        """Standard deviation (population) of SSIM per stage over the compared maps."""
        return self._stage_stds(self.ssim)

    def fails(self, threshold: float) -> bool | None:
        """True when the fully randomised model's maps keep mean |rho| >= threshold or mean SSIM >=
        threshold (the map barely changed); None when undetermined (every original map is flat)."""
        if self.n_compared[-1] == 0:
            return None
        return bool(self.mean_abs_spearman[-1] >= threshold or self.mean_ssim[-1] >= threshold)


def cascading_randomization(model: nn.Module, images: torch.Tensor, map_fn: MapFn, *,
                            stages: list[str] | None = None, seed: int = 0) -> SanityResult:
    """Maps of `map_fn(model, images)` (N, *spatial) after each cumulative stage of randomization,
    compared with those of the intact model. `model` itself is left untouched (a deep copy is
    randomized). `stages`: module paths, output first (default `cascade_stages`)."""
    stages = cascade_stages(model) if stages is None else list(stages)
    if not stages:
        raise TumorcamError(f"stages: {type(model).__name__} has no module with parameters to randomize; "
                            "name the stages")
    randomized = copy.deepcopy(model).eval()
    modules = dict(randomized.named_modules())
    unknown = [stage for stage in stages if stage not in modules or not stage]
    if unknown:
        raise TumorcamError(f"stages: {type(model).__name__} has no layer {unknown[0]!r}")
    original = map_fn(model, images).detach().float()
    spearman, similarity = [], []
    for i, stage in enumerate(stages):
        randomize_(modules[stage], seed + i)
        maps = map_fn(randomized, images).detach().float()
        spearman.append(spearman_rows(original.cpu().numpy(), maps.cpu().numpy()))
        similarity.append(ssim(original, maps))
    return SanityResult(stages=stages, spearman=np.stack(spearman), ssim=np.stack(similarity))


def intact_region(model: nn.Module, images: torch.Tensor, target: str, masks: torch.Tensor | None = None,
                  amp: bool = True, *, channel: int = 0, output: Output = None) -> torch.Tensor:
    """The region R (B, 1, *spatial) float32 {0, 1} of a prediction-dependent `target` as the intact
    `model` sees `images`: the target's pixel weights on class `channel` (the logits picked by
    `output`) from one forward in eval mode without gradients (bf16 autocast on CUDA when `amp`, as
    `compute_maps`); for `predicted-region`, [z > 0] for one channel, [argmax z = channel] for C > 1."""
    from tumorcam.explain import explaining
    from tumorcam.explain.methods.base import ScalarOutput
    from tumorcam.explain.targets import target_function

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and images.device.type == "cuda"
                else contextlib.nullcontext())
    scalar = ScalarOutput(model, target_function(target, channel), None if masks is None else masks.to(images.device),
                          output=output, channel=channel)
    with explaining(model), autocast:
        weights = scalar.fixed_weights(images)
    return (weights[:, channel:channel + 1] > 0).float()


def fixed_region_map_fn(model: nn.Module, images: torch.Tensor, *, method: str, target: str | TargetFn,
                        layer: str | None, masks: torch.Tensor | None, ig_steps: int = 32, seed: int = 0,
                        amp: bool = True, channel: int = 0, output: Output = None) -> MapFn:
    """The sanity check's map function of (method, target, layer): `tumorcam.explain` of all the images
    in one batch with the target's region fixed from the intact `model`. A target whose region depends
    on the prediction (`predicted-region`, and `boundary`, `false-positive`, `false-negative`)
    becomes `gt-region` with the intact model's region of `images` (`intact_region`) as its mask: the
    same s = sum of the logits of class `channel` over the region; `gt-region` keeps the ground-truth
    `masks`; other targets (and a callable target) are unchanged. `layer` "input" or None: none
    (layer-free methods) or the default layer of each model."""
    from tumorcam.explain import INPUT_LAYER, explain
    from tumorcam.explain.targets import get_target

    if isinstance(target, str) and get_target(target).uses_prediction:
        target, masks = "gt-region", intact_region(model, images, target, masks, amp, channel=channel, output=output)

    def map_fn(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return explain(net, x, method=method, target=target, layer=None if layer == INPUT_LAYER else layer,
                       channel=channel, output=output, masks=masks, ig_steps=ig_steps, seed=seed, amp=amp,
                       batch_size=max(1, len(x)))

    return map_fn


def sanity(model: nn.Module, images: torch.Tensor, *, method: str = "gradcam",
           target: str | TargetFn = "predicted-region", layer: str | nn.Module | None = None, channel: int = 0,
           output: Output = None, masks: torch.Tensor | None = None, threshold: float = 0.5,
           stages: list[str] | None = None, ig_steps: int = 32, seed: int = 0, amp: bool = False) -> SanityResult:
    """Cascading randomization of `model` for the maps of `tumorcam.explain(model, images, method=...,
    target=..., layer=..., channel=..., output=..., masks=...)`, the target's region fixed from the
    intact model (`fixed_region_map_fn`). `stages`: module paths randomized cumulatively, output
    first (default `cascade_stages`: the smp U-Net's head, decoder and encoder stages, or any model's
    children with parameters, last first). `layer=None` is the intact model's default layer, kept for
    every randomized copy. `threshold`: the criterion of `SanityResult.passes` (mean |rho| and mean
    SSIM of the fully randomized model below it). `seed` seeds the re-initialization and the random
    map. `model` itself is left untouched.
    """
    from tumorcam.explain import get_method
    from tumorcam.explain.layers import default_layer

    chosen = get_method(method)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
        raise TumorcamError(f"threshold: must be in (0, 1], got {threshold!r}")
    if isinstance(images, torch.Tensor) and images.dim() not in (4, 5):
        raise TumorcamError(f"images: expected a tensor (B, C, H, W) or (B, C, D, H, W), got {tuple(images.shape)}")
    if isinstance(layer, nn.Module):
        names = [name for name, module in model.named_modules() if module is layer and name]
        if not names:
            raise TumorcamError(f"layer: the {type(layer).__name__} given is not a submodule of {type(model).__name__}")
        layer = names[0]
    if layer is None and chosen.uses_layer:
        layer = default_layer(model, images[:1])
    map_fn = fixed_region_map_fn(model, images, method=method, target=target, layer=layer, masks=masks,
                                 ig_steps=ig_steps, seed=seed, amp=amp, channel=channel, output=output)
    result = cascading_randomization(model, images, map_fn, stages=stages, seed=seed)
    return dataclasses.replace(result, threshold=float(threshold))


def region_source(target: str) -> str | None:
    """Where the sanity check takes a target's region from: "intact model" (a prediction-dependent
    target, fixed by `intact_region`), "ground truth" (`gt-region`), None (no region)."""
    from tumorcam.explain.targets import get_target

    if get_target(target).uses_prediction:
        return "intact model"
    return "ground truth" if get_target(target).needs_masks else None


def pick_slices(n: int, count: int, patient_ids: np.ndarray | None = None) -> np.ndarray:
    """Rows (ascending) of the first `count` of `n` slices in the given order, one per patient where
    possible: every patient's first slice comes before any patient's second (a stable sort by the
    slice's rank within its patient). Without patient ids, the first `count` rows."""
    if count < 1:
        raise TumorcamError(f"limit: the sanity check needs >= 1 slice (config.evaluate.sanity_slices), got {count}")
    if patient_ids is None:
        return np.arange(min(count, n))
    if len(patient_ids) != n:
        raise ValueError(f"{len(patient_ids)} patient ids for {n} slices")
    seen: dict[str, int] = {}
    rank = np.empty(n, dtype=np.int64)
    for i, pid in enumerate(np.asarray(patient_ids).astype(str).tolist()):
        rank[i] = seen.get(pid, 0)
        seen[pid] = int(rank[i]) + 1
    return np.sort(np.argsort(rank, kind="stable")[:count])


def evaluate_sanity(run: str | Path, data: str | Path | None = None, split: str | None = None,
                    limit: int | None = None, methods: list[str] | None = None,
                    device: str | torch.device | None = None, patients: int | None = None,
                    slices_per_patient: int | None = None) -> dict[str, Any]:
    """Cascading randomisation of the run's model for every (method, target, layer) of its trained-model
    maps, the controls included (`edges` must fail: it ignores the weights), on `limit` (default
    EvaluateConfig.sanity_slices) of the run's explained slices picked by `pick_slices`; writes
    RUN/sanity.json (schema in docs/evaluate.md). Left out: the random map (its seeded noise ignores
    the weights by construction) and the x GT maps (the method's own maps times the mask, checked
    as the method).

    `patients` and `slices_per_patient` go to the input loading (they choose the slices when the run
    has no maps yet)."""
    from tqdm.auto import tqdm

    from tumorcam.evaluate.inputs import RANDOM, load_inputs
    from tumorcam.evaluate.summary import finite_list
    from tumorcam.io import write_json

    run = Path(run)
    inputs = load_inputs(run, data=data, split=split, device=device, patients=patients,
                         slices_per_patient=slices_per_patient)
    cfg = inputs.config.evaluate
    explain_cfg = inputs.config.explain
    patient_ids = getattr(inputs, "patient_ids", None)
    rows = pick_slices(len(inputs.file_ids), cfg.sanity_slices if limit is None else limit, patient_ids)
    index = torch.as_tensor(rows, device=inputs.images.device)
    images, masks = inputs.images[index], inputs.masks[index]
    if methods is not None and RANDOM in methods:
        raise TumorcamError("--methods random: the random map is not sanity-checked (its seeded noise ignores "
                            "the weights by construction)")
    combos = sorted({(e.method, e.target, e.layer) for e in inputs.entries
                     if e.model == "trained" and not e.times_gt and e.method != RANDOM})
    if methods is not None:
        unknown = sorted(set(methods) - {c[0] for c in combos})
        if unknown:
            raise TumorcamError(f"--methods: no maps of {', '.join(unknown)} in {run}/explanations")
        combos = [c for c in combos if c[0] in methods]
    stages = cascade_stages(inputs.model)
    results = []
    for method, target, layer in tqdm(combos, desc="sanity check", unit="map"):
        map_fn = fixed_region_map_fn(inputs.model, images, method=method, target=target, layer=layer, masks=masks,
                                     ig_steps=explain_cfg.ig_steps, seed=explain_cfg.seed,
                                     amp=inputs.config.explain.amp)
        result = cascading_randomization(inputs.model, images, map_fn, stages=stages, seed=cfg.seed)
        fails = result.fails(cfg.sanity_threshold)
        results.append({
            "method": method, "target": target, "layer": layer, "region": region_source(target),
            "spearman": finite_list(result.mean_spearman),
            "spearman_std": finite_list(result.std_spearman),
            "mean_abs_spearman": finite_list(result.mean_abs_spearman),
            "ssim": finite_list(result.mean_ssim),
            "ssim_std": finite_list(result.std_ssim),
            "n_compared": result.n_compared,
            "final_spearman": finite_list(result.mean_spearman[-1:])[0],
            "final_mean_abs_spearman": finite_list(result.mean_abs_spearman[-1:])[0],
            "final_ssim": finite_list(result.mean_ssim[-1:])[0],
            "passes": None if fails is None else not fails,
        })
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_slices": len(rows),
        "file_ids": inputs.file_ids[rows].tolist(),
        "patient_ids": None if patient_ids is None else np.asarray(patient_ids)[rows].astype(str).tolist(),
        "stages": stages,
        "threshold": cfg.sanity_threshold,
        "criterion": CRITERION,
        "threshold_source": THRESHOLD_SOURCE,
        "region": "a region target's region is fixed for every randomised model: predicted-region (and any "
                  "target whose region depends on the prediction) uses the intact model's region, e.g. its "
                  "predicted mask (logits > 0), as the gt-region target's mask; gt-region the ground-truth mask",
        "seed": cfg.seed,
        "results": results,
    }
    write_json(run / "sanity.json", out)
    return out
