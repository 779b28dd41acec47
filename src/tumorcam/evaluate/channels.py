"""Per-sequence attribution: how much each input channel (an MRI sequence such as T1, T1CE, T2,
FLAIR) carries a model's prediction, by attribution and by ablation.

    import tumorcam

    result = tumorcam.channels(model, volumes, channel=1, patient_ids=pids,
                               channel_names=["T1", "T1CE", "T2", "FLAIR"])
    result.shares, result.dice_drop  # (B, C_in) each
    result.summary()["channels"]["FLAIR"]["share"]["mean"]

Images are (B, C_in, H, W) or (B, C_in, D, H, W); the model is any module returning logits
(B, C, *spatial), read with a sigmoid for C = 1 and a softmax for C > 1, `channel` the class and
`output` the pick from a tuple, list or dict output, as in `tumorcam.explain`.

- Attribution share (`channel_shares`): the target's scalar s_b (a name of `tumorcam.TARGETS` or a
  callable, its pixel weights fixed from the unperturbed image) is attributed to the input, giving
  A (C_in, *spatial) per image before any reduction over channels; then
      share_c = sum_v |A_c(v)| / sum_c' sum_v |A_c'(v)|,
  so the shares of an image sum to 1. Methods: `integrated-gradients` (Captum, zero baseline,
  `ig_steps` Gauss-Legendre points), `saliency` (|ds/dx|) and `input-x-gradient` (x ds/dx). An
  image with zero total attribution (e.g. an empty target region: no predicted voxel) has NaN shares.
- Ablation drop (`channel_ablation`): channel c alone is replaced by its baseline (`zero`, or
  `mean`: the image's mean of that channel, the game's mean baseline) and the class's predicted
  region P_c (z > 0 for one output channel, argmax = class for several) is compared with the
  unperturbed prediction R:
      dice_drop_c = 1 - 2 |P_c n R| / (|P_c| + |R|)   (in [0, 1]),
  the Deletion/Insertion game's `dice` score. An image whose unperturbed prediction is empty has
  NaN drops. The C_in ablated copies of the images are scored `batch_size` at a time.

`channels` computes both and returns a `ChannelResult`; its `summary()` gives per channel the mean
of patient means with a cluster-bootstrap CI (`tumorcam.evaluate.stats`), and exploratory
Wilcoxon tests on patient means, all Holm-adjusted together:

- `dice_drop_vs_zero`, for every channel: does ablating it change the prediction? Verdict "drop"
  (p_adjusted < alpha) or "no drop shown"; the drop is never negative.
- `top_vs_channel`: the top channel (largest mean share) against each other channel on the dice
  drop (paired, d = drop_top - drop_other per patient): "larger drop", "smaller drop" or
  "not shown to differ".
- `agreement`: in how many patients the channel with the largest mean share is also one with the
  largest mean dice drop.

Fewer than 2 usable patients: "undetermined". Without `patient_ids` each image is its own unit
(unit "slice").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

from tumorcam.errors import TumorcamError, unknown_name
from tumorcam.evaluate.game import fixed_region, score_logits
from tumorcam.evaluate.reference import units
from tumorcam.evaluate.stats import (
    BETTER,
    NOT_SHOWN,
    UNDETERMINED,
    WORSE,
    cluster_bootstrap_ci,
    holm,
    paired_comparison,
    patient_means,
    verdict,
)
from tumorcam.evaluate.summary import EXPLORATORY, finite_list
from tumorcam.device import autocast
from tumorcam.explain import explaining
from tumorcam.guards import channel_of, check_images, check_model, check_positive_int
from tumorcam.explain.methods.base import Logits, Output, ScalarOutput
from tumorcam.explain.targets import TargetFn, get_target, target_function

CHANNEL_METHODS = ("integrated-gradients", "saliency", "input-x-gradient")
ABLATION_BASELINES = ("zero", "mean")
# the verdict words of stats.verdict (higher is better: d > 0) for each kind of test
VS_ZERO, TOP_VS = "dice_drop_vs_zero", "top_vs_channel"
WORDS = {
    VS_ZERO: {BETTER: "drop", NOT_SHOWN: "no drop shown", UNDETERMINED: UNDETERMINED},
    TOP_VS: {BETTER: "larger drop", WORSE: "smaller drop", NOT_SHOWN: NOT_SHOWN, UNDETERMINED: UNDETERMINED},
}
AGREEMENT_RULE = ("patients whose mean shares and mean dice drops are finite for every channel and whose largest "
                  "mean drop is > 0 (n); count: those whose channel of largest mean share (the first on ties) has "
                  "the largest mean drop (ties for the largest count)")


@dataclass(frozen=True)
class ChannelResult:
    """Per-sequence attribution of B images with C_in input channels: `shares` (B, C_in) (rows sum
    to 1; NaN rows without attribution), `dice_drop` (B, C_in) (NaN rows without a prediction), the
    unit of each image (`unit_ids`, `unit`: "patient" or "slice"), the `channel_names` and the call's
    `settings`. `summary()` gives the statistics."""

    shares: np.ndarray
    dice_drop: np.ndarray
    unit_ids: np.ndarray
    unit: str
    channel_names: tuple[str, ...]
    settings: dict[str, Any]

    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05, level: float = 0.95) -> dict[str, Any]:
        """The statistics per channel and the exploratory tests, as a JSON-ready dict.

        Args:
            bootstrap: cluster-bootstrap resamples, seeded with settings["seed"].
            alpha: the level of the verdicts (from `p_adjusted`).
            level: the confidence level of the CIs.

        Returns:
            The settings, `unit`, `n_patients` (units), `n_slices` (images), `channel_names`, `alpha`,
            `level`, `bootstrap`; `channels`: per channel name `share` and `dice_drop` (each
            `cluster_bootstrap_ci`: mean of unit means, ci_low, ci_high, unit, n_patients, n_slices of
            its finite values) and `n_patients`/`n_slices` (the images with both values finite, and
            their units); `top_channel` (largest mean share; None without shares); `tests`: the
            exploratory tests on unit means (see the module docstring), each a `paired_comparison` row
            with `kind`, `comparison`, `channel`, `versus`, `positive_share` (share of units with
            d > 0), `p_adjusted` and `adjusted_over` (Holm's m: the tests with a p-value, adjusted
            together) and `verdict` from `p_adjusted` at `alpha`; `agreement`: {count, n, share,
            rule}; `per_slice`: the shares and drops per channel name (null for NaN).

        Raises:
            ValueError: for bootstrap < 1 or a level outside (0, 1).
        """
        names = list(self.channel_names)
        seed = int(self.settings.get("seed", 0))
        ids = self.unit_ids
        per_channel: dict[str, Any] = {}
        for c, name in enumerate(names):
            both = np.isfinite(self.shares[:, c]) & np.isfinite(self.dice_drop[:, c])
            entry: dict[str, Any] = {}
            for key, values in (("share", self.shares[:, c]), ("dice_drop", self.dice_drop[:, c])):
                entry[key] = cluster_bootstrap_ci(values, ids, resamples=bootstrap, level=level, seed=seed)
                entry[key]["unit"] = self.unit
            entry.update(n_patients=len(np.unique(ids[both])), n_slices=int(both.sum()))
            per_channel[name] = entry
        means = [per_channel[name]["share"]["mean"] for name in names]
        known = [c for c, m in enumerate(means) if m is not None]
        top = max(known, key=lambda c: means[c]) if known else None  # max keeps the first on ties
        return {
            **self.settings,
            "unit": self.unit,
            "n_patients": len(np.unique(ids)),
            "n_slices": len(ids),
            "channel_names": names,
            "alpha": alpha,
            "level": level,
            "bootstrap": bootstrap,
            "channels": per_channel,
            "top_channel": None if top is None else names[top],
            "tests": self._tests(top, alpha, bootstrap=bootstrap, level=level, seed=seed),
            "agreement": self._agreement(),
            "per_slice": {key: {name: finite_list(values[:, c]) for c, name in enumerate(names)}
                          for key, values in (("share", self.shares), ("dice_drop", self.dice_drop))},
        }

    def _tests(self, top: int | None, alpha: float, *, bootstrap: int, level: float,
               seed: int) -> list[dict[str, Any]]:
        """Every channel's drop against 0, then the top channel against each other channel; one Holm;
        effect-size CIs with `bootstrap` resamples at `level`, seeded with `seed`."""
        names, drop, ids = self.channel_names, self.dice_drop, self.unit_ids
        plan = [(VS_ZERO, c, None) for c in range(len(names))]
        if top is not None:
            plan += [(TOP_VS, top, c) for c in range(len(names)) if c != top]
        rows = []
        for kind, c, other in plan:
            reference = np.zeros(len(drop)) if other is None else drop[:, other]
            row = paired_comparison(drop[:, c], reference, ids, lower_is_better=False, test="wilcoxon", alpha=alpha,
                                    resamples=bootstrap, level=level, seed=seed)
            row["positive_share"] = row.pop("better_share")
            del row["lower_is_better"]
            versus = None if other is None else names[other]
            comparison = f"dice_drop[{names[c]}] vs 0" if other is None else \
                f"dice_drop[{names[c]}] - dice_drop[{versus}]"
            rows.append({"kind": kind, "comparison": comparison, "channel": names[c], "versus": versus, **row})
        adjusted = holm([row["p_value"] for row in rows])
        m = sum(p is not None for p in adjusted)
        for row, p_adjusted in zip(rows, adjusted, strict=True):
            word = verdict(p_adjusted, row["estimate"], int(row["n_patients"]), lower_is_better=False, alpha=alpha)
            row.update(p_adjusted=p_adjusted, adjusted_over=m, family=EXPLORATORY, verdict=WORDS[row["kind"]][word])
        return rows

    def _agreement(self) -> dict[str, Any]:
        """Patients whose top channel by mean share also has the largest mean dice drop (`AGREEMENT_RULE`)."""
        shares, drops = unit_matrix(self.shares, self.unit_ids), unit_matrix(self.dice_drop, self.unit_ids)
        usable = np.isfinite(shares).all(axis=1) & np.isfinite(drops).all(axis=1)
        usable[usable] = drops[usable].max(axis=1) > 0
        top = shares[usable].argmax(axis=1)
        picked = drops[usable]
        count = int((picked[np.arange(len(top)), top] == picked.max(axis=1)).sum())
        n = int(usable.sum())
        return {"count": count, "n": n, "share": count / n if n else None, "rule": AGREEMENT_RULE}


def unit_matrix(values: np.ndarray, unit_ids: np.ndarray) -> np.ndarray:
    """Per unit (rows, sorted ids) and column, the mean of the finite values (`patient_means`); NaN when none."""
    unique = np.unique(unit_ids)
    out = np.full((unique.size, values.shape[1]), np.nan)
    for c in range(values.shape[1]):
        means, ids = patient_means(values[:, c], unit_ids)
        out[np.searchsorted(unique, ids), c] = means
    return out


def channel_shares(
    model: nn.Module,
    images: torch.Tensor,
    *,
    target: str | TargetFn = "predicted-region",
    channel: int | None = None,
    output: Output = None,
    masks: torch.Tensor | None = None,
    method: str = "integrated-gradients",
    ig_steps: int = 32,
    batch_size: int = 32,
    amp: bool = False,
) -> np.ndarray:
    """Each input channel's share of the attribution (B, C_in) float64, rows summing to 1 (NaN where
    the total attribution is 0), of `images` (B, C_in, *spatial).

    `target` (a name of `tumorcam.TARGETS` or a callable `(logits, masks) -> weights`), `channel`,
    `output` and `masks` (B, 1, *spatial) or (B, *spatial) as in `tumorcam.explain`; `method` one of
    `CHANNEL_METHODS`; `ig_steps`: integrated-gradients path points; `batch_size` images per
    attribution (integrated gradients: per path step); `amp`: bf16 autocast on CUDA.
    """
    check_images(images)
    check_positive_int("batch_size", batch_size)
    if method not in CHANNEL_METHODS:
        raise unknown_name("method", method, CHANNEL_METHODS)
    check_positive_int("ig_steps", ig_steps)
    _check_channel(channel)
    channel = check_model(model, images, output=output, channel=channel)
    weights_of = target_function(target, channel)
    if isinstance(target, str) and get_target(target).needs_masks and masks is None:
        raise TumorcamError(f"masks: target {target!r} needs ground-truth masks (B, 1, *spatial); none were given")
    if masks is not None:
        masks = torch.as_tensor(masks).to(images.device)
        if masks.dim() == 0 or masks.shape[0] != len(images):
            raise TumorcamError(f"masks: {masks.shape[0] if masks.dim() else 0} masks for {len(images)} images")

    out = []
    with explaining(model):
        for start in range(0, len(images), batch_size):
            part = slice(start, start + batch_size)
            scalar = ScalarOutput(model, weights_of, None if masks is None else masks[part], output=output,
                                  channel=channel)
            with autocast(images.device, amp):
                attributions = _attribute(method, scalar, images[part], ig_steps)
            mass = attributions.detach().double().abs().flatten(2).sum(dim=2)  # (b, C_in)
            total = mass.sum(dim=1, keepdim=True)
            out.append(torch.where(total > 0, mass / total.clamp_min(1e-300), torch.nan).cpu())
    if not out:
        return np.zeros((0, images.shape[1]))
    return torch.cat(out).numpy()


def _attribute(method: str, scalar: ScalarOutput, x: torch.Tensor, ig_steps: int) -> torch.Tensor:
    """The input attributions (b, C_in, *spatial) of the target's scalar, its pixel weights fixed
    from the unperturbed images."""
    weights = scalar.fixed_weights(x)
    if method == "integrated-gradients":
        return IntegratedGradients(scalar).attribute(x, baselines=0.0, additional_forward_args=(weights,),
                                                     n_steps=ig_steps, internal_batch_size=len(x))
    inputs = x.detach().requires_grad_()  # leave the caller's tensor as it was
    if method == "saliency":
        return Saliency(scalar).attribute(inputs, abs=True, additional_forward_args=(weights,))
    return InputXGradient(scalar).attribute(inputs, additional_forward_args=(weights,))


def channel_ablation(
    model: nn.Module,
    images: torch.Tensor,
    *,
    baseline: str = "zero",
    channel: int | None = None,
    output: Output = None,
    batch_size: int = 32,
    amp: bool = False,
) -> np.ndarray:
    """The Dice drop (B, C_in) float64 of ablating each input channel of `images` (B, C_in, *spatial)
    alone: 1 - Dice(predicted region of class `channel` with channel c replaced by `baseline`,
    unperturbed predicted region); NaN where the unperturbed prediction is empty.

    `baseline`: `zero` or `mean` (the image's mean of channel c). `output` as in `tumorcam.explain`.
    `batch_size` images per forward (the B x C_in ablated copies are scored in such batches); `amp`:
    bf16 autocast on CUDA.
    """
    check_images(images)
    check_positive_int("batch_size", batch_size)
    _check_baseline(baseline)
    _check_channel(channel)
    channel = check_model(model, images, output=output, channel=channel)

    n, c_in = images.shape[:2]
    images = images.float()
    spatial = tuple(range(2, images.dim()))
    fill = images.mean(dim=spatial) if baseline == "mean" else torch.zeros((n, c_in), device=images.device)
    logits_of = Logits(model, output)
    region = torch.empty((n, 1, *images.shape[2:]), device=images.device)
    jobs = n * c_in
    job_image = torch.arange(n, device=images.device).repeat_interleave(c_in)
    job_channel = torch.arange(c_in, device=images.device).repeat(n)
    dice = torch.empty(jobs, device=images.device)
    with explaining(model), torch.inference_mode(), autocast(images.device, amp):
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            region[rows] = fixed_region("dice", logits_of(images[rows]), None, channel)
        for start in range(0, jobs, batch_size):
            idx = job_image[start:start + batch_size]
            ablated = job_channel[start:start + batch_size]
            x = images[idx].clone()
            x[torch.arange(len(idx), device=x.device), ablated] = fill[idx, ablated].view(-1, *(1 for _ in spatial))
            dice[start:start + batch_size] = score_logits(logits_of(x), "dice", region[idx], channel)
    return 1.0 - dice.double().cpu().numpy().reshape(n, c_in)


def channels(
    model: nn.Module,
    images: torch.Tensor,
    *,
    patient_ids: Any = None,
    channel_names: Sequence[str] | None = None,
    target: str | TargetFn = "predicted-region",
    channel: int | None = None,
    output: Output = None,
    masks: torch.Tensor | None = None,
    method: str = "integrated-gradients",
    ig_steps: int = 32,
    baseline: str = "zero",
    batch_size: int = 32,
    amp: bool = False,
    seed: int = 0,
) -> ChannelResult:
    """`channel_shares` and `channel_ablation` of `images` as one `ChannelResult`.

    Args:
        model: any module returning logits (B, C, *spatial), read with a sigmoid for C = 1 and a
            softmax for C > 1.
        images: (B, C_in, H, W) or (B, C_in, D, H, W).
        patient_ids: (B,) the unit of the statistics (None: each image).
        channel_names: (C_in,) distinct names of the input channels (default "channel_0", ...).
        target: a name of `tumorcam.TARGETS` or a callable `(logits, masks) -> weights`, as in
            `tumorcam.explain` (`channel_shares`).
        channel: the class, as in `tumorcam.explain`.
        output: picks the logits from a tuple, list or dict output, as in `tumorcam.explain`.
        masks: (B, 1, *spatial) or (B, *spatial), the ground truth, as in `tumorcam.explain`.
        method: one of `CHANNEL_METHODS` (`channel_shares`).
        ig_steps: integrated-gradients path points.
        baseline: `zero` or `mean` (the image's mean of channel c), the ablation's fill
            (`channel_ablation`).
        batch_size: images per attribution (integrated gradients: per path step) and per forward of
            the ablated copies.
        amp: bf16 autocast on CUDA.
        seed: seeds the summary's bootstrap.

    Returns:
        A `ChannelResult`: `shares` and `dice_drop` (B, C_in) each; `summary()` gives the statistics.

    Raises:
        TumorcamError: for images that are not (B, C_in, *spatial), patient ids that are not one per
            image, channel names that are not C_in distinct names, an unknown baseline or method, a
            non-integer channel, ig_steps or batch_size < 1, a target that needs masks without them,
            or a model whose output or channel does not fit (`tumorcam.guards`).

    Example:
        >>> result = tumorcam.channels(model, volumes, channel=1, patient_ids=pids,
        ...                            channel_names=["T1", "T1CE", "T2", "FLAIR"])
        >>> result.shares, result.dice_drop  # (B, C_in) each
        >>> result.summary()["channels"]["FLAIR"]["share"]["mean"]
    """
    check_images(images)
    count, c_in = images.shape[:2]
    unit_ids, unit = units(patient_ids, count)
    names = tuple(f"channel_{c}" for c in range(c_in)) if channel_names is None else \
        tuple(str(name) for name in channel_names)
    if len(names) != c_in or len(set(names)) != c_in:
        raise TumorcamError(f"channel_names: expected {c_in} distinct names for the input channels of images "
                            f"{tuple(images.shape)}, got {list(names)}")
    _check_baseline(baseline)  # before the attribution, which takes longer
    _check_channel(channel)
    channel = check_model(model, images, output=output, channel=channel)
    shares = channel_shares(model, images, target=target, channel=channel, output=output, masks=masks,
                            method=method, ig_steps=ig_steps, batch_size=batch_size, amp=amp)
    drops = channel_ablation(model, images, baseline=baseline, channel=channel, output=output,
                             batch_size=batch_size, amp=amp)
    settings = {"method": method, "target": target if isinstance(target, str) else "callable", "channel": channel,
                "baseline": baseline, "ig_steps": ig_steps, "seed": seed}
    return ChannelResult(shares=shares, dice_drop=drops, unit_ids=unit_ids, unit=unit, channel_names=names,
                         settings=settings)


def _check_baseline(baseline: object) -> None:
    if baseline not in ABLATION_BASELINES:
        raise TumorcamError(f"baseline: unknown channel baseline {baseline!r} (choose from "
                            f"{', '.join(ABLATION_BASELINES)})")


def _check_channel(channel: object) -> None:
    """An integer class index or None (`tumorcam.guards.channel_of`), before the model runs."""
    if channel is not None:
        channel_of(channel, None)
