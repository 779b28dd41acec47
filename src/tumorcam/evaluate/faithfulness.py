"""Faithfulness by Deletion/Insertion: the library call `faithfulness` (the run folder's stage is
`tumorcam.runs.faithfulness.evaluate_faithfulness`).

    import tumorcam

    maps = tumorcam.explain(model, images, channel=1)
    result = tumorcam.faithfulness(model, images, maps, channel=1, patient_ids=pids)
    result.deletion_auc, result.insertion_auc  # (B,) per image
    result.summary()["deletion"]["vs_random"]["verdict"]  # "better", "worse", "not shown to differ", ...

The game itself (pixel ranking and AUC: `ranking`; what a removed pixel becomes: `baselines`; the
batched curves and their scores: `game`) is the same for both. A map is compared with a reference
map on the same images (`reference`): the seeded random map, unless given. Per image the AUC of
each curve; the summary is the mean of unit means with a cluster-bootstrap CI, and the paired
Wilcoxon test against the reference per unit (the patient with `patient_ids`, else the image),
deletion lower-is-better and insertion higher-is-better, Holm-adjusted over the two.

The run folder's stage plays every map of RUN/explanations; its option `score` = `target` scores
each map by its target (`TARGET_SCORES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.baselines import BASELINES
from tumorcam.evaluate.game import (
    CURVES,
    Curves,
    PerturbationGame,
    as_masks,
)
from tumorcam.evaluate.headline import headline
from tumorcam.guards import check_positive_int, count_flat
from tumorcam.evaluate.ranking import auc, check_schedule, check_steps
from tumorcam.evaluate.reference import Reference, as_maps, reference_maps, units
from tumorcam.evaluate.summary import (
    PRIMARY_KEYS,
    adjust_file,
    finite_list,
    metric_summary,
)

if TYPE_CHECKING:
    from tumorcam.explain.methods.base import Output

SCORES = ("target", "mean-sigmoid", "predicted-region", "dice")  # the run folder's `score` option
# `score` = `target`: the score of a map of each target; `none` is the target of a generated random map.
TARGET_SCORES = {"predicted-region": "predicted-region", "gt-region": "gt-region", "mean-logits": "mean-sigmoid",
                 "none": "mean-sigmoid"}
MASK_CONTROL = "predicted-mask"  # the control map every other map is compared with (vs_mask)


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion/Insertion of B maps: `curves` (B, K+1 each), those of the reference maps (None
    without a reference) and of the model's predicted-mask control (`mask_curves`, None without it),
    the unit of each image (`unit_ids`, `unit`: "patient" or "slice") and the game's settings.
    `summary()` gives the statistics and the headline."""

    curves: Curves
    reference_curves: Curves | None
    unit_ids: np.ndarray
    unit: str
    baseline: str
    score: str
    schedule: str
    reference: str | None
    seed: int
    mask_curves: Curves | None = None
    n_flat_maps: int = 0

    @property
    def deletion_auc(self) -> np.ndarray:
        """Per image, the deletion AUC (B,) (lower is more faithful); NaN where the score's region is empty."""
        return self.curves.deletion_auc

    @property
    def insertion_auc(self) -> np.ndarray:
        """Per image, the insertion AUC (B,) (higher is more faithful); NaN where the score's region is empty."""
        return self.curves.insertion_auc

    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05, level: float = 0.95,
                sanity: Any = None) -> dict[str, Any]:
        """The statistics of the curves and the headline, as one row like those of faithfulness.json.

        Args:
            bootstrap: cluster-bootstrap resamples of the CIs.
            alpha: the level of the Holm adjustment over the (up to) four comparisons and of the verdicts.
            level: the confidence level of the CIs.
            sanity: a `SanityResult` of the same maps' method (or its verdict dict, or None: then the
                headline is at best "undetermined").

        Returns:
            The settings, and for `deletion` and `insertion` the mean of unit means with its `level`
            cluster-bootstrap CI, `unit`, `n_patients` (units), `n_slices`, `curve_mean`, `vs_random`
            (the paired Wilcoxon test against the reference: p_value, p_adjusted, verdict, n_pairs,
            estimate with its CI, ...; None without a reference) and `vs_mask` (the same against the
            predicted-mask control; None without it), Holm-adjusted at `alpha` over these four;
            `per_slice` the AUCs; `headline` the one answer (`tumorcam.evaluate.headline`).

        Raises:
            ValueError: for bootstrap < 1 or a level outside (0, 1).
        """
        steps = self.curves.steps
        row: dict[str, Any] = {"baseline": self.baseline, "score": self.score, "schedule": self.schedule,
                               "steps": steps, "reference": self.reference}
        per_slice = {}
        for name in CURVES:
            raw = getattr(self.curves, name)
            values = auc(raw, steps)
            compared = None if self.reference_curves is None else auc(getattr(self.reference_curves, name), steps)
            mask = None if self.mask_curves is None else auc(getattr(self.mask_curves, name), steps)
            summary = metric_summary(values, {"random": compared, "mask": mask}, self.unit_ids,
                                     lower_is_better=name == "deletion",
                                     test="wilcoxon", resamples=bootstrap, seed=self.seed, curves=raw, alpha=alpha,
                                     level=level)
            summary["unit"] = self.unit
            row[name] = summary
            per_slice[name] = finite_list(values)
        row["per_slice"] = per_slice
        # the call's comparisons are its primary family: Holm over the (up to) four
        adjust_file([row], CURVES, primary={key: row.get(key) for key in PRIMARY_KEYS}, alpha=alpha)
        if sanity is None or isinstance(sanity, dict):
            verdict = sanity
        else:
            decided, reason = sanity.decide()  # one bootstrap of the final CIs for both
            verdict = {"verdict": decided, "n_patients": sanity.n_patients, "reason": reason}
        row["headline"] = headline(row, primary={"method": "The map", **{k: row.get(k) for k in PRIMARY_KEYS}},
                                   alpha=alpha, sanity=verdict, unit=self.unit,
                                   flat={"n_flat": self.n_flat_maps, "n_maps": len(self.unit_ids)})
        return row


def faithfulness(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    *,
    channel: int | None = None,
    output: Output = None,
    masks: torch.Tensor | None = None,
    patient_ids: Any = None,
    baseline: str = "zero",
    steps: int = 50,
    schedule: str = "log",
    score: str = "predicted-region",
    reference: Reference = "random",
    mask_reference: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    amp: bool = False,
) -> FaithfulnessResult:
    """Deletion/Insertion of `maps` explaining `model` on `images`, against a reference map.

    The model runs in eval mode on the images' device. Per image the AUC of each curve; images with
    an empty predicted region (warned by `tumorcam.guards`) have NaN AUCs, left out of the statistics.

    Args:
        model: any module returning logits (B, C, *spatial), read with a sigmoid for C = 1 and a
            softmax for C > 1.
        images: (B, C_in, H, W) or (B, C_in, D, H, W).
        maps: (B, *spatial) (or (B, 1, *spatial)) maps of the images.
        channel: the scored class (required for C > 1; None: 0 for C = 1), as checked by
            `tumorcam.guards`.
        output: picks the logits from a tuple, list or dict output (an index, key or callable, as in
            `tumorcam.explain`).
        masks: the ground truth (B, 1, *spatial) of the class, needed by the `gt-region` score.
        patient_ids: (B,) the unit of the statistics (None: each image).
        baseline: what a removed pixel becomes: zero, mean, blur, road or rise, for images and
            volumes alike.
        steps: K, the game's steps.
        schedule: log or uniform, the game's schedule of steps.
        score: `predicted-region` (mean probability of the class over its predicted region),
            `gt-region` (over `masks`), `dice` (of the prediction with the unperturbed one) or
            `mean-sigmoid` (mean probability over the image).
        reference: "random" (seeded maps of U(0, 1) noise), a tensor of reference maps like `maps`,
            or None.
        mask_reference: also play the model's predicted-mask control (1 inside the predicted region
            of `channel`, 0 outside), so that `summary()` asks whether the maps say more than the mask.
        batch_size: perturbed images per forward.
        seed: seeds the random reference, the ties of the ranking and ROAD's noise.
        amp: bf16 autocast on CUDA.

    Returns:
        A `FaithfulnessResult`: the curves of the maps, of the reference and of the mask control;
        `summary()` gives the statistics and the headline.

    Raises:
        TumorcamError: for images or maps of the wrong shape, a non-integer channel, score
            `gt-region` without masks, patient ids that are not one per image, an unknown reference,
            baseline, score or schedule, steps < 1, batch_size < 1, or a model whose output or
            channel does not fit (`tumorcam.guards`).

    Example:
        >>> maps = tumorcam.explain(model, images, channel=1)
        >>> result = tumorcam.faithfulness(model, images, maps, channel=1, patient_ids=pids)
        >>> result.deletion_auc, result.insertion_auc  # (B,) per image
        >>> result.summary()["deletion"]["vs_random"]["verdict"]  # "better", "worse", "not shown to differ", ...
    """
    from tumorcam import guards
    from tumorcam.evaluate.game import check_game
    from tumorcam.explain import explaining
    from tumorcam.explain.methods.base import Logits

    guards.check_images(images)
    spatial = tuple(images.shape[2:])
    maps = as_maps(maps, spatial, len(images)).to(images.device)
    if channel is not None:
        guards.channel_of(channel, None)  # an integer, before the model runs
    if score == "gt-region" and masks is None:
        raise TumorcamError("masks: score 'gt-region' needs the ground-truth masks (B, 1, *spatial)")
    masks = None if masks is None else as_masks(masks, images)
    unit_ids, unit = units(patient_ids, len(images))
    compared = reference_maps(reference, maps, seed)
    check_game(steps, baseline, score, schedule)  # the game's options, then the model's checks
    check_positive_int("batch_size", batch_size)
    channel = guards.check_model(model, images, output=output, channel=channel)
    with explaining(model):
        game = PerturbationGame(Logits(model, output), images, steps=steps, baseline=baseline, score=score,
                                schedule=schedule, masks=masks, channel=channel, batch_size=batch_size, seed=seed,
                                amp=amp)
        if score in ("predicted-region", "dice") and game.region is not None:
            guards.warn_empty_regions(int((game.region.flatten(1).sum(dim=1) == 0).sum()), len(images))
        curves = game.curves(maps)
        reference_curves = None if compared is None else game.curves(compared)
        mask_curves = (game.curves(predicted_mask_maps(model, images, channel, output, batch_size))
                       if mask_reference else None)
    return FaithfulnessResult(curves=curves, reference_curves=reference_curves, unit_ids=unit_ids, unit=unit,
                              baseline=baseline, score=score, schedule=schedule,
                              reference=reference if reference is None or isinstance(reference, str) else "given",
                              seed=seed, mask_curves=mask_curves, n_flat_maps=count_flat(maps))


def predicted_mask_maps(model: nn.Module, images: torch.Tensor, channel: int, output: Output,
                        batch_size: int) -> torch.Tensor:
    """The predicted-mask control of `images` (B, *spatial): 1 where the model predicts class
    `channel`, else 0 (`tumorcam.explain`'s "predicted-mask" method), `batch_size` images at a time."""
    from tumorcam.explain import explain

    return explain(model, images, method="predicted-mask", channel=channel, output=output, batch_size=batch_size)


def check_options(steps: int | None = None, baselines: list[str] | tuple[str, ...] | None = None,
                  score: str | None = None, schedule: str | None = None, batch_size: int | None = None) -> None:
    """The run folder's options, each named as its parameter: one clear error for K < 1, an unknown
    baseline, score or schedule, or a batch size < 1 (None: not checked)."""
    if steps is not None:
        check_steps(steps)
    if baselines is not None:
        if not baselines:
            raise TumorcamError(f"baselines: give at least one of {', '.join(BASELINES)}", param="baselines")
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise TumorcamError(f"baselines: unknown baseline(s) {', '.join(map(repr, unknown))} "
                                f"(choose from {', '.join(BASELINES)})", param="baselines")
    if score is not None and score not in SCORES:
        raise TumorcamError(f"score: unknown score {score!r} (choose from {', '.join(SCORES)})", param="score")
    if schedule is not None:
        check_schedule(schedule)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)


def target_score(target: str, score: str) -> str:
    """The game score of a map of `target` under the option `score`: itself, or for `target` the
    score of the map's target (predicted-region -> predicted-region, gt-region -> gt-region,
    mean-logits and a generated random map -> mean-sigmoid)."""
    if score != "target":
        return score
    if target not in TARGET_SCORES:
        raise TumorcamError(f"score target: no score for maps of target {target!r}; "
                            f"choose one of {', '.join(s for s in SCORES if s != 'target')}", param="score")
    return TARGET_SCORES[target]
