"""Model-parameter randomization test (Adebayo et al. 2018, "Sanity checks for saliency maps"),
cascading from the output down: the library call `sanity` (the run folder's stage is
`tumorcam.runs.sanity.evaluate_sanity`).

    import tumorcam

    result = tumorcam.sanity(model, images, method="gradcam", channel=1)
    result.stages, result.n_compared, result.passes

The layers are re-initialised one stage at a time from the output towards the input, cumulatively
(for the U-Net: `segmentation_head`, `decoder.blocks.4` ... `decoder.blocks.0`, `encoder.layer4` ...
`encoder.layer1`, `encoder.bn1`, `encoder.conv1`); after each stage the maps are recomputed and
compared with the maps of the intact model, per map, inside the image's foreground F (below), by

- Spearman rank correlation rho of the map values over the voxels of F (ties get average ranks), and
- SSIM (Wang et al. 2004: Gaussian window 11 px, sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1,
  over the window positions that fit in the map whose window centre lies in F; a 3-D map takes the
  11^3 window). Hand-written in a few lines rather than adding torchmetrics or scikit-image as a
  dependency for one formula.

Foreground (`foreground_mask`): for an image x (C, *spatial) with background value b_c = x[c, 0, ..., 0]
per channel (the corner voxel), F = {v : exists c, x[c, v] != b_c}; F = every voxel when that set is
empty or the whole image. It excludes the background of a z-scored MRI (a constant non-zero value)
as well as a zero background, where both maps are 0 and would only add tied, perfectly agreeing
voxels to either measure.

Flat maps (every voxel of F equal) are treated alike by both measures: a flat original map has
nothing to compare and gives NaN (left out of the means; `n_compared` counts the maps that
entered); a flat map of the randomised model against a non-flat original gives 0 (its structure
is gone).

The target's region is fixed from the intact model. A region target's score is s = sum of the
logits over a region; for `predicted-region` that region is the intact model's predicted mask
[z > 0], computed once and used for every randomised model (computed as the `gt-region` target
with the intact prediction as its mask: the same s), likewise for the other targets whose region
depends on the prediction (`boundary`, `false-positive`, `false-negative`), and for `gt-region` it
is the ground-truth mask. Otherwise a randomised model that predicts no tumour would explain an
empty region: an all-zero map, which would count as "changed" without saying anything about the
method.

The patient is the unit. Per stage, each patient's mean |rho| and mean SSIM over its compared
maps (m_p), and the mean of the patient means (1/P) sum_p m_p with a percentile cluster-bootstrap
95% CI (`tumorcam.evaluate.stats.cluster_bootstrap_ci`, patients drawn with replacement, seeded).
Without patient ids every map is its own unit; for volumes one case is one patient.

A map that explains the model must change when the model's weights are destroyed. Criterion, at the
fully randomised stage, with threshold t (EvaluateConfig.sanity_threshold, 0.5):

- "fails" when the CI of the mean |rho| or the CI of the mean SSIM lies entirely at or above t
  (ci_low >= t): the similarity is shown to remain;
- "passes" when both CIs lie entirely below t (ci_high < t);
- "undetermined" otherwise (a CI straddles t), or when fewer than `min_patients` (5) patients were
  compared (a patient is compared when at least one of its maps gave a finite rho and SSIM); `reason`
  says why in a sentence.

|rho| so that a map that merely inverts (rho = -0.9) also fails. Adebayo et al. judge the similarity
curves by eye and give no numeric cut-off: 0.5 is this project's convention ("at most a moderate
similarity may remain"). A map that ignores the weights (an edge detector of the input) keeps
rho = 1 and fails.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import numbers
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import nn

from tumorcam import guards
from tumorcam.errors import TumorcamError, TumorcamWarning

if TYPE_CHECKING:
    from tumorcam.explain.methods.base import Output
    from tumorcam.explain.targets import TargetFn

MapFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
CRITERION = ("per patient, the mean |Spearman rho| and the mean SSIM between the fully randomised model's maps and "
             "the intact model's maps (inside the image's foreground); over patients, their mean with a 95% cluster-"
             "bootstrap CI: fails when either CI lies at or above the threshold (ci_low >= threshold), passes when "
             "both lie below it (ci_high < threshold), undetermined when a CI straddles it or fewer than "
             "min_patients patients were compared")
MIN_PATIENTS, RESAMPLES, LEVEL, CHUNK = 5, 1000, 0.95, 16
PASSES, FAILS, UNDETERMINED = "passes", "fails", "undetermined"
PASSED = {PASSES: True, FAILS: False}  # `passes` of a verdict: None for undetermined
FOREGROUND = ("both measures are computed inside the image's foreground: the voxels where any channel differs from "
              "that channel's value at the first (corner) voxel; every voxel when there is none")
THRESHOLD_SOURCE = ("Adebayo et al. (2018) judge the similarity curves by eye and give no numeric cut-off; "
                    "0.5 is this project's convention: at most a moderate similarity may remain")


def cascade_stages(model: nn.Module, prefix: str = "") -> list[str]:
    """Module paths to randomize, output first: for an smp U-Net the head, the decoder blocks from the
    last, then the encoder's stages from the deepest; otherwise the children with parameters, last
    first. A wrapper (one child with parameters, e.g. a deep-supervision or normalizing shell
    around the network) is looked into: its child's stages, under `prefix` + the child's name. A
    model with a `cascade_stages()` method (an nnU-Net model: every fold at once) gives its own."""
    def with_params(parent: nn.Module, path: str) -> list[str]:
        return [f"{path}{name}" for name, child in parent.named_children() if any(True for _ in child.parameters())]

    own = getattr(model, "cascade_stages", None)
    if callable(own):  # a model that names its cascade (patterns: see `stage_modules`)
        return [f"{prefix}{stage}" for stage in own()]
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


def stage_modules(model: nn.Module, stage: str) -> list[nn.Module]:
    """The modules of one cascade stage: the module at path `stage`, or every module whose path
    matches it when it holds `*` (one path component, e.g. `networks.*.decoder.seg_layers` for
    every fold's segmentation layers); none for an unknown path."""
    if "*" not in stage:
        module = dict(model.named_modules()).get(stage) if stage else None
        return [] if module is None else [module]
    pattern = re.compile("\\.".join("[^.]+" if part == "*" else re.escape(part) for part in stage.split(".")))
    return [module for name, module in model.named_modules() if name and pattern.fullmatch(name)]


def randomize_(module: nn.Module, seed: int) -> None:
    """Re-initialise every submodule with `reset_parameters` (PyTorch's default init; BatchNorm:
    weight 1, bias 0, running statistics reset), seeded, in place."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()


def foreground_mask(images: torch.Tensor) -> torch.Tensor:
    """Foreground (B, *spatial) bool of images (B, C, *spatial): with b_c the value of channel c at the
    first voxel (the corner), F = {v : exists c, x[c, v] != b_c}; an image whose F is empty or every
    voxel gets every voxel. Handles a zero background and the constant non-zero background of a
    z-scored MRI alike."""
    x = torch.as_tensor(images)
    if x.dim() < 3:
        raise TumorcamError(f"images: expected a tensor (B, C, *spatial), got {tuple(x.shape)}")
    corner = x.flatten(2)[:, :, :1].reshape(*x.shape[:2], *([1] * (x.dim() - 2)))
    mask = (x != corner).any(dim=1)
    counts = mask.flatten(1).sum(dim=1)
    whole = (counts == 0) | (counts == mask[0].numel())
    return mask | whole.view(-1, *([1] * (mask.dim() - 1)))


def _check_foreground(foreground: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if foreground is None:
        return None
    mask = np.asarray(foreground.cpu() if isinstance(foreground, torch.Tensor) else foreground).astype(bool)
    if mask.shape != tuple(shape):
        raise TumorcamError(f"foreground: expected a mask {tuple(shape)} (N, *spatial) like the maps, got {mask.shape}")
    return mask


def _flat_rows(x: np.ndarray) -> np.ndarray:
    """True per row of (N, P) whose values are all equal."""
    return x.max(axis=1) == x.min(axis=1)


def spearman_rows(a: np.ndarray, b: np.ndarray, foreground: np.ndarray | None = None) -> np.ndarray:
    """Spearman rho per row of (N, P) arrays (or (N, *spatial) maps) `a` (original maps) and `b`
    (randomised model's maps), with average ranks for ties; a flat row of `a` gives NaN, a flat row
    of `b` (against a non-flat `a`) 0. `foreground` (N, *spatial) bool: only the voxels of F enter,

        rho = sum_{v in F} (r_a(v) - rbar)(r_b(v) - rbar) / sqrt(sum (r_a - rbar)^2 sum (r_b - rbar)^2),

    r_a, r_b the average ranks of a and b among the |F| voxels of F, rbar = (|F| + 1) / 2; flatness is
    judged over F too."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    if foreground is not None:
        mask = np.asarray(foreground, bool).reshape(len(a), -1)
        if mask.shape != a.shape:
            raise TumorcamError(f"foreground: expected {a.shape} voxels per map, got {mask.shape}")
        return np.array([spearman_rows(a[i:i + 1, m], b[i:i + 1, m])[0] if m.any() else np.nan
                         for i, m in enumerate(mask)], dtype=np.float64).reshape(len(a))
    flat_a, flat_b = _flat_rows(a), _flat_rows(b)
    ra = rankdata(a, axis=1) - (a.shape[1] + 1) / 2
    rb = rankdata(b, axis=1) - (b.shape[1] + 1) / 2
    norms = np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1)
    rho = (ra * rb).sum(1) / np.where(flat_a | flat_b, 1.0, norms)
    return np.where(flat_a, np.nan, np.where(flat_b, 0.0, rho))


def ssim(a: torch.Tensor, b: torch.Tensor, foreground: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """Mean SSIM per map of (N, H, W) or (N, D, H, W) maps in [0, 1], `a` the originals and `b` the
    randomized model's (Wang et al. 2004, constants in the module docstring; the Gaussian window is
    separable, g x g or g x g x g); a flat map of `a` gives NaN, a flat map of `b` (against a
    non-flat `a`) 0, as in `spearman_rows`.

    SSIM(p) = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)) at each
    window position p (valid convolution: the windows that fit in the map), with local
    Gaussian-weighted means, variances and covariance; C1 = (K1 L)^2, C2 = (K2 L)^2, L = 1. The
    map's SSIM is the mean of SSIM(p) over the positions; with `foreground` (N, *spatial) bool, over
    the positions whose window centre lies in F (all positions if none does), flatness judged over F.
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
    index = index.flatten(1).cpu().numpy().astype(np.float64)
    xs, ys = x.flatten(1).cpu().numpy(), y.flatten(1).cpu().numpy()
    mask = _check_foreground(foreground, tuple(x.shape[:1]) + tuple(x.shape[2:]))
    if mask is None:
        value = index.mean(axis=1)
        flat_a, flat_b = _flat_rows(xs), _flat_rows(ys)
    else:
        half = (size - 1) // 2
        centres = mask[(slice(None), *(slice(half, half + n) for n in index_shape(x.shape[2:], size)))]
        centres = centres.reshape(len(mask), -1)
        centres = centres | ~centres.any(axis=1, keepdims=True)  # no centre in F: every position
        value = (index * centres).sum(axis=1) / centres.sum(axis=1)
        inside = mask.reshape(len(mask), -1)
        flat_a = np.array([not m.any() or _flat_rows(v[None, m])[0] for v, m in zip(xs, inside)])
        flat_b = np.array([not m.any() or _flat_rows(v[None, m])[0] for v, m in zip(ys, inside)])
    return np.where(flat_a, np.nan, np.where(flat_b, 0.0, value))


def index_shape(spatial: tuple[int, ...] | torch.Size, size: int) -> tuple[int, ...]:
    """Shape of the SSIM index map of a map of shape `spatial` (valid convolution with a window `size`)."""
    return tuple(int(n) - size + 1 for n in spatial)


@dataclass
class SanityResult:
    """Similarity of each stage's maps with the original maps, and the verdict of the check.

    Every mean here is over units: a unit's mean over its compared maps (a finite rho and SSIM),
    then the mean of the unit means, m = (1/P) sum_p m_p; the standard deviations are the
    (population) ones of the unit means; the CIs are percentile cluster-bootstrap intervals of m.

    Args:
        stages: the module paths randomized, cumulatively, in order.
        spearman: (stages, N) Spearman rho of each stage's maps with the original maps, NaN where the
            original map is flat.
        ssim: (stages, N) SSIM of the same, NaN where the original map is flat.
        threshold: the criterion's threshold (see `verdict`).
        patient_ids: (N,) the unit of each map (None: each map its own unit).
        min_patients: the fewest patients compared for a verdict other than "undetermined".
        resamples: cluster-bootstrap draws of the CIs.
        seed: seeds the bootstrap.
        level: the confidence level of the CIs.

    Raises:
        TumorcamError: for patient_ids that are not one per map.
    """

    stages: list[str]
    spearman: np.ndarray
    ssim: np.ndarray
    threshold: float = 0.5
    patient_ids: np.ndarray | None = None
    min_patients: int = MIN_PATIENTS
    resamples: int = RESAMPLES
    seed: int = 0
    level: float = LEVEL

    def __post_init__(self) -> None:
        self.spearman = np.asarray(self.spearman, dtype=np.float64)
        self.ssim = np.asarray(self.ssim, dtype=np.float64)
        if self.patient_ids is not None:
            self.patient_ids = np.asarray(self.patient_ids).astype(str)
            if self.patient_ids.shape != self.spearman.shape[1:]:
                raise TumorcamError(f"patient_ids: {self.patient_ids.size} ids for {self.spearman.shape[1]} maps")

    @property
    def units(self) -> np.ndarray:
        """The unit of each map: its patient id, or its index when no ids were given."""
        return self.patient_ids if self.patient_ids is not None else np.arange(self.spearman.shape[1]).astype(str)

    @property
    def compared(self) -> np.ndarray:
        """(stages, N) True where a map entered (a finite rho and SSIM)."""
        return np.isfinite(self.spearman) & np.isfinite(self.ssim)

    @property
    def n_compared(self) -> list[int]:
        """Per stage, the number of maps that entered the means (a finite rho and SSIM)."""
        return [int(n) for n in self.compared.sum(axis=1)]

    @property
    def patients_compared(self) -> list[int]:
        """Per stage, the number of units (patients) with at least one compared map."""
        return [len(set(self.units[row].tolist())) for row in self.compared]

    @property
    def n_patients(self) -> int:
        """Patients compared at the fully randomised stage."""
        return self.patients_compared[-1] if self.stages else 0

    def patient_means(self, values: np.ndarray, stage: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """Per-patient mean of `values` at `stage` over the patient's compared maps.

        Args:
            values: (stages, N) one value per stage and map (e.g. `spearman`).
            stage: the stage's index (default the fully randomised one).

        Returns:
            The patients' means and the patient ids (sorted; a patient without a compared map left out).

        Raises:
            ValueError: for values that do not have one entry per map.
        """
        from tumorcam.evaluate.stats import patient_means

        kept = np.where(self.compared[stage], np.asarray(values, np.float64)[stage], np.nan)
        return patient_means(kept, self.units)

    def _stage_means(self, values: np.ndarray) -> np.ndarray:
        means = [self.patient_means(values, k)[0] for k in range(len(self.compared))]
        return np.array([m.mean() if m.size else np.nan for m in means], dtype=np.float64)

    def _stage_stds(self, values: np.ndarray) -> np.ndarray:
        means = [self.patient_means(values, k)[0] for k in range(len(self.compared))]
        return np.array([m.std() if m.size else np.nan for m in means], dtype=np.float64)

    def _stage_cis(self, values: np.ndarray, last: bool = False) -> list[dict[str, Any]]:
        """Per stage (or, with `last`, the fully randomised one only), `cluster_bootstrap_ci` of `values`
        over the compared maps' patients."""
        from tumorcam.evaluate.stats import cluster_bootstrap_ci

        stages = range(len(self.compared))[-1:] if last else range(len(self.compared))
        return [cluster_bootstrap_ci(np.where(self.compared[k], np.asarray(values, np.float64)[k], np.nan), self.units,
                                     resamples=self.resamples, level=self.level, seed=self.seed)
                for k in stages]

    @property
    def mean_spearman(self) -> np.ndarray:
        """Mean rho per stage: the mean of the patient means (NaN where none)."""
        return self._stage_means(self.spearman)

    @property
    def mean_abs_spearman(self) -> np.ndarray:
        """Mean |rho| per stage: the mean of the patient means (NaN where none)."""
        return self._stage_means(np.abs(self.spearman))

    @property
    def mean_ssim(self) -> np.ndarray:
        """Mean SSIM per stage: the mean of the patient means (NaN where none)."""
        return self._stage_means(self.ssim)

    @property
    def std_spearman(self) -> np.ndarray:
        """Standard deviation (population) of the patient means of rho per stage."""
        return self._stage_stds(self.spearman)

    @property
    def std_ssim(self) -> np.ndarray:
        """Standard deviation (population) of the patient means of SSIM per stage."""
        return self._stage_stds(self.ssim)

    @property
    def abs_spearman_ci(self) -> list[dict[str, Any]]:
        """Per stage, `cluster_bootstrap_ci` of |rho| over patients: {"mean", "ci_low", "ci_high", ...}."""
        return self._stage_cis(np.abs(self.spearman))

    @property
    def ssim_ci(self) -> list[dict[str, Any]]:
        """Per stage, `cluster_bootstrap_ci` of SSIM over patients: {"mean", "ci_low", "ci_high", ...}."""
        return self._stage_cis(self.ssim)

    def decide(self, threshold: float | None = None,
               final_cis: tuple[dict[str, Any], dict[str, Any]] | None = None) -> tuple[str, str | None]:
        """The verdict at the fully randomised stage against `threshold`, and why; see `verdict` and `reason`.

        Args:
            threshold: the criterion's threshold (default `self.threshold`).
            final_cis: the last stage's |rho| and SSIM CIs when the caller has them already
                (`abs_spearman_ci[-1]`, `ssim_ci[-1]`), else they are bootstrapped here.

        Returns:
            (verdict, reason): "passes", "fails" or "undetermined", and the reason of an
            "undetermined" in a sentence (None otherwise).

        Raises:
            ValueError: for resamples < 1 or a level outside (0, 1) (the bootstrap's settings).
        """
        t = self.threshold if threshold is None else float(threshold)
        n_maps = self.n_compared[-1] if self.stages else 0
        if n_maps == 0:
            return UNDETERMINED, "0 maps compared: every intact map is flat"
        if self.n_patients < self.min_patients:
            return UNDETERMINED, (f"{self.n_patients} patient{'s' if self.n_patients != 1 else ''} compared; at least "
                                  f"{self.min_patients} are needed")
        rho_ci, ssim_ci = final_cis or (self._stage_cis(np.abs(self.spearman), last=True)[0],
                                        self._stage_cis(self.ssim, last=True)[0])
        cis = {"|Spearman|": rho_ci, "SSIM": ssim_ci}
        if any(ci["ci_low"] >= t for ci in cis.values()):
            return FAILS, None
        if all(ci["ci_high"] < t for ci in cis.values()):
            return PASSES, None
        straddling = [f"the {name} CI [{ci['ci_low']:.2f}, {ci['ci_high']:.2f}]" for name, ci in cis.items()
                      if ci["ci_high"] >= t]
        verb = "straddles" if len(straddling) == 1 else "straddle"
        return UNDETERMINED, f"{' and '.join(straddling)} {verb} the threshold {t:g}"

    @property
    def verdict(self) -> str:
        """At the fully randomised stage: "passes" when the CIs of the mean |rho| and of the mean SSIM
        both lie below the threshold (ci_high < threshold); "fails" when either lies at or above it
        (ci_low >= threshold); "undetermined" when a CI straddles it or fewer than `min_patients`
        patients were compared (every intact map flat included)."""
        return self.decide()[0]

    @property
    def reason(self) -> str | None:
        """Why the verdict is "undetermined", in a sentence; None otherwise."""
        return self.decide()[1]

    @property
    def passes(self) -> bool | None:
        """True for the verdict "passes", False for "fails", None for "undetermined"."""
        return PASSED.get(self.verdict)

    def fails(self, threshold: float | None = None) -> bool | None:
        """Whether the check fails against `threshold`.

        Args:
            threshold: the criterion's threshold (default `self.threshold`).

        Returns:
            True for the verdict "fails", False for "passes", None for "undetermined".

        Raises:
            ValueError: for resamples < 1 or a level outside (0, 1) (the bootstrap's settings).
        """
        passed = PASSED.get(self.decide(threshold)[0])
        return None if passed is None else not passed

    def final_patient_means(self) -> dict[str, list]:
        """At the fully randomised stage, each compared patient's mean |rho| and mean SSIM.

        Returns:
            {"patient_ids", "mean_abs_spearman", "ssim"}: lists, one entry per compared patient (null
            for NaN).
        """
        from tumorcam.evaluate.summary import finite_list

        rho, ids = self.patient_means(np.abs(self.spearman))
        similarity, _ = self.patient_means(self.ssim)
        return {"patient_ids": ids.astype(str).tolist(), "mean_abs_spearman": finite_list(rho),
                "ssim": finite_list(similarity)}

    @classmethod
    def concat(cls, parts: list[SanityResult]) -> SanityResult:
        """One result of the maps of `parts`, in order, with the first part's settings.

        Args:
            parts: results of the same stages (chunks of one set of images).

        Returns:
            The `SanityResult` of every map of `parts`.

        Raises:
            TumorcamError: for no part.
        """
        if not parts:
            raise TumorcamError("images: no image to check")
        first = parts[0]
        ids = [p.patient_ids for p in parts]
        joined = None if any(i is None for i in ids) else np.concatenate(ids)
        values = {"threshold": first.threshold, "patient_ids": joined, "min_patients": first.min_patients,
                  "resamples": first.resamples, "seed": first.seed, "level": first.level}
        return cls(stages=list(first.stages), spearman=np.concatenate([p.spearman for p in parts], axis=1),
                   ssim=np.concatenate([p.ssim for p in parts], axis=1), **values)


def cascading_randomization(model: nn.Module, images: torch.Tensor, map_fn: MapFn, *,
                            stages: list[str] | None = None, seed: int = 0,
                            foreground: torch.Tensor | np.ndarray | None = None) -> SanityResult:
    """Maps of `map_fn(model, images)` (N, *spatial) after each cumulative stage of randomization,
    compared with those of the intact model (`spearman_rows`, `ssim`), inside `foreground`
    (N, *spatial) bool when given (e.g. `foreground_mask(images)`; None: every voxel). `model`
    itself is left untouched (a deep copy is randomized). `stages`: module paths, output first
    (default `cascade_stages`); stage i is re-initialised with seed + i, so chunks of one image set
    see the same randomised models."""
    stages = cascade_stages(model) if stages is None else list(stages)
    if not stages:
        raise TumorcamError(f"stages: {type(model).__name__} has no module with parameters to randomize; "
                            "name the stages")
    randomized = copy.deepcopy(model).eval()
    modules = {stage: stage_modules(randomized, stage) for stage in stages}
    unknown = [stage for stage in stages if not modules[stage]]
    if unknown:
        raise TumorcamError(f"stages: {type(model).__name__} has no layer {unknown[0]!r}")
    original = map_fn(model, images).detach().float()
    mask = _check_foreground(foreground, tuple(original.shape))
    spearman, similarity = [], []
    for i, stage in enumerate(stages):
        for module in modules[stage]:
            randomize_(module, seed + i)
        maps = map_fn(randomized, images).detach().float()
        spearman.append(spearman_rows(original.cpu().numpy(), maps.cpu().numpy(), mask))
        similarity.append(ssim(original, maps, mask))
    return SanityResult(stages=stages, spearman=np.stack(spearman), ssim=np.stack(similarity))


def randomization_in_chunks(model: nn.Module, images: torch.Tensor, masks: torch.Tensor | None, *, method: str,
                            target: str | TargetFn, layer: str | None, stages: list[str] | None = None,
                            seed: int = 0, map_seed: int = 0, ig_steps: int = 32, amp: bool = True,
                            channel: int = 0, output: Output = None, batch_size: int = CHUNK) -> SanityResult:
    """`cascading_randomization` of the `fixed_region_map_fn` maps, `batch_size` images at a time
    (memory stays that of one chunk; the results are those of one batch: each stage's seed is the
    same for every chunk), each image compared inside its `foreground_mask`. `seed` seeds the
    re-initialisation, `map_seed` the maps."""
    parts = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        m = None if masks is None else masks[start:start + batch_size]
        map_fn = fixed_region_map_fn(model, x, method=method, target=target, layer=layer, masks=m,
                                     ig_steps=ig_steps, seed=map_seed, amp=amp, channel=channel, output=output)
        parts.append(cascading_randomization(model, x, map_fn, stages=stages, seed=seed,
                                             foreground=foreground_mask(x)))
    return SanityResult.concat(parts)


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
        with warnings.catch_warnings():
            if net is not model:  # a randomized network's flat maps or odd outputs are what the check measures
                warnings.simplefilter("ignore", TumorcamWarning)
            return explain(net, x, method=method, target=target, layer=None if layer == INPUT_LAYER else layer,
                           channel=channel, output=output, masks=masks, ig_steps=ig_steps, seed=seed, amp=amp,
                           batch_size=max(1, len(x)))

    return map_fn


def sanity(model: nn.Module, images: torch.Tensor, *, method: str = "gradcam",
           target: str | TargetFn = "predicted-region", layer: str | nn.Module | None = None,
           channel: int | None = None, output: Output = None, masks: torch.Tensor | None = None,
           threshold: float = 0.5, stages: list[str] | None = None, ig_steps: int = 32, seed: int = 0, amp: bool = False,
           patient_ids: Any = None, min_patients: int = MIN_PATIENTS, bootstrap: int = RESAMPLES,
           batch_size: int = CHUNK) -> SanityResult:
    """Cascading randomization of `model` for the maps of `tumorcam.explain`, and its verdict.

    The maps are those of `tumorcam.explain(model, images, method=..., target=..., layer=...,
    channel=..., output=..., masks=...)`, the target's region fixed from the intact model
    (`fixed_region_map_fn`), compared inside each image's foreground (`foreground_mask`). `model`
    itself is left untouched.

    The verdict (`SanityResult.verdict`): passes when the CIs of the mean |rho| and the mean SSIM of
    the fully randomized model lie below `threshold`, fails when either lies at or above it,
    undetermined otherwise or with fewer than `min_patients` patients compared.

    Args:
        model: any module returning logits (B, C, *spatial).
        images: (B, C_in, *spatial).
        method: a name of `tumorcam.METHODS`.
        target: a name of `tumorcam.TARGETS` or a callable, as in `tumorcam.explain`.
        layer: a module path or module of `model`; None: the intact model's default layer, kept for
            every randomized copy.
        channel: the explained class, as in `tumorcam.explain`.
        output: picks the logits from a tuple, list or dict output, as in `tumorcam.explain`.
        masks: the ground truth, as in `tumorcam.explain`.
        threshold: the verdict's threshold, in (0, 1].
        stages: module paths randomized cumulatively, output first (default `cascade_stages`: the
            smp U-Net's head, decoder and encoder stages, or any model's children with parameters,
            last first).
        ig_steps: integrated-gradients path points.
        seed: seeds the re-initialization, the random map and the bootstrap.
        amp: bf16 autocast on CUDA.
        patient_ids: one per image, the units of the mean and of its cluster-bootstrap CI (None:
            each image its own unit).
        min_patients: the fewest patients compared for a verdict other than undetermined.
        bootstrap: cluster-bootstrap resamples of the CIs (95%).
        batch_size: the maps are computed `batch_size` images at a time.

    Returns:
        A `SanityResult`: per stage and image the Spearman rho and SSIM with the intact maps;
        `verdict`, `passes` and `reason` decide.

    Raises:
        TumorcamError: for an unknown method, a threshold outside (0, 1], images that are not
            (B, C_in, *spatial), min_patients, bootstrap or batch_size < 1, patient ids that are not
            one per image, a layer that is not a submodule of `model`, a model whose output or channel
            does not fit (`tumorcam.guards`), or stages that name no layer of `model` (or a model
            with no parameters to randomize).

    Example:
        >>> result = tumorcam.sanity(model, images, method="gradcam", channel=1)
        >>> result.stages, result.n_compared, result.passes
    """
    from tumorcam.explain import get_method
    from tumorcam.explain.layers import default_layer, is_tiled

    chosen = get_method(method)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
        raise TumorcamError(f"threshold: must be in (0, 1], got {threshold!r}")
    guards.check_images(images)
    for name, value in (("min_patients", min_patients), ("bootstrap", bootstrap), ("batch_size", batch_size)):
        guards.check_positive_int(name, value)
    if patient_ids is not None:
        ids = np.asarray(patient_ids.cpu() if isinstance(patient_ids, torch.Tensor) else patient_ids)
        if ids.ndim != 1 or len(ids) != len(images):
            raise TumorcamError(f"patient_ids: {ids.size} ids for {len(images)} images (one per image)")
        patient_ids = ids.astype(str)
    if isinstance(layer, nn.Module):
        names = [name for name, module in model.named_modules() if module is layer and name]
        if not names:
            raise TumorcamError(f"layer: the {type(layer).__name__} given is not a submodule of {type(model).__name__}")
        layer = names[0]
    channel = guards.check_model(model, images, output=output, channel=channel,
                                 required=isinstance(target, str) or chosen.reads_channel)
    if layer is None and chosen.uses_layer:
        layer = model.tile_layer() if is_tiled(model) else default_layer(model, images[:1])
    result = randomization_in_chunks(model, images, masks, method=method, target=target, layer=layer, stages=stages,
                                     seed=seed, map_seed=seed, ig_steps=ig_steps, amp=amp, channel=channel,
                                     output=output, batch_size=int(batch_size))
    return dataclasses.replace(result, threshold=float(threshold), patient_ids=patient_ids,
                               min_patients=int(min_patients), resamples=int(bootstrap), seed=seed)


def result_row(result: SanityResult) -> dict[str, Any]:
    """The similarity part of a sanity.json row (schema in docs/evaluate.md): per stage the means
    over patients, their CIs and the counts; at full randomisation the means, CIs as [low, high],
    the patients' means, `n_patients` compared, `min_patients`, `verdict`, `reason`, `passes`."""
    from tumorcam.evaluate.summary import finite_list

    def pair(ci: dict[str, Any]) -> list[float | None]:
        return [ci["ci_low"], ci["ci_high"]]

    rho_cis, ssim_cis = result.abs_spearman_ci, result.ssim_ci
    verdict, reason = result.decide(final_cis=(rho_cis[-1], ssim_cis[-1]))
    spearman, abs_spearman, similarity = result.mean_spearman, result.mean_abs_spearman, result.mean_ssim
    return {
        "spearman": finite_list(spearman),
        "spearman_std": finite_list(result.std_spearman),
        "mean_abs_spearman": finite_list(abs_spearman),
        "mean_abs_spearman_ci": [pair(ci) for ci in rho_cis],
        "ssim": finite_list(similarity),
        "ssim_std": finite_list(result.std_ssim),
        "ssim_ci": [pair(ci) for ci in ssim_cis],
        "n_compared": result.n_compared,
        "patients_compared": result.patients_compared,
        "final_spearman": finite_list(spearman[-1:])[0],
        "final_mean_abs_spearman": finite_list(abs_spearman[-1:])[0],
        "final_mean_abs_spearman_ci": pair(rho_cis[-1]),
        "final_ssim": finite_list(similarity[-1:])[0],
        "final_ssim_ci": pair(ssim_cis[-1]),
        "per_patient": result.final_patient_means(),
        "n_patients": result.n_patients,
        "min_patients": result.min_patients,
        "verdict": verdict,
        "reason": reason,
        "passes": PASSED.get(verdict),
    }


def region_source(target: str) -> str | None:
    """Where the sanity check takes a target's region from: "intact model" (a prediction-dependent
    target, fixed by `intact_region`), "ground truth" (`gt-region`), None (no region)."""
    from tumorcam.explain.targets import get_target

    if get_target(target).uses_prediction:
        return "intact model"
    return "ground truth" if get_target(target).needs_masks else None


def pick_slices(n: int, count: int | None, patient_ids: np.ndarray | None = None) -> np.ndarray:
    """Rows (ascending) of the first `count` of `n` slices in the given order, one per patient where
    possible: every patient's first slice comes before any patient's second (a stable sort by the
    slice's rank within its patient). Without patient ids, the first `count` rows. `count` None: all."""
    if count is None:
        count = n
    elif count < 1:
        raise TumorcamError(f"limit: the sanity check needs >= 1 slice (config.evaluate.sanity, null: all), "
                            f"got {count}")
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
