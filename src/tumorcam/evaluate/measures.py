"""The checks as accumulating measures (torch-cam's `DeletionInsertionMetric` shape): settings checked
in the constructor, `update` once per batch, `summary()` over every batch seen, `reset()`.

    measure = DeletionInsertion(model, channel=1, steps=20)
    for images, maps, pids in batches:
        measure.update(images, maps, patient_ids=pids)
    measure.summary()["headline"]["level"]

Every measure takes `update(images, maps=None, *, masks=None, patient_ids=None)`, images
(B, C_in, H, W) or (B, C_in, D, H, W), maps (B, *spatial), masks (B, 1, *spatial), and summarises
with the patient as the unit (each image its own unit when no patient ids are given, numbered over
all batches). Batch b is computed as the library call (`tumorcam.faithfulness`, `localization`,
`sanity`, `channels`) on that batch with seed `seed + n`, n the images seen before it, so the
random reference maps and tie-breaking draws of two batches differ; `summary` pools the per-image
values of all batches, then runs the statistics once.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.channels import ChannelResult, channels
from tumorcam.evaluate.faithfulness import FaithfulnessResult, faithfulness, predicted_mask_maps
from tumorcam.evaluate.game import Curves, check_game
from tumorcam.evaluate.localization import check_top_percent, localization_scores, summarize_localization
from tumorcam.evaluate.metrics import dice_iou
from tumorcam.evaluate.reference import random_maps, units
from tumorcam.evaluate.sanity import SanityResult, sanity
from tumorcam.evaluate.stats import cluster_bootstrap_ci
from tumorcam.guards import check_images, check_positive_int


class Measure(ABC):
    """A check accumulated over batches. Subclasses set `name`, `needs_maps`, `needs_masks` and
    implement `_update` (one batch) and `summary`.

    Raises:
        TumorcamError: from `update` when a needed argument is missing or the shapes disagree, and
            from `summary` before any `update`.
    """

    name: ClassVar[str]
    needs_maps: ClassVar[bool] = True
    needs_masks: ClassVar[bool] = False

    def __init__(self, seed: int = 0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TumorcamError(f"seed: must be an integer, got {seed!r}", param="seed")
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self.results: list[Any] = []
        self.unit_ids: list[np.ndarray] = []
        self.units: set[str] = set()
        self.n_images = 0

    def update(self, images: torch.Tensor, maps: torch.Tensor | None = None, *, masks: torch.Tensor | None = None,
               patient_ids: Any = None) -> None:
        """Add one batch.

        Args:
            images: (B, C_in, *spatial) inputs of the model.
            maps: (B, *spatial) maps of the images (measures with `needs_maps`).
            masks: (B, 1, *spatial) ground truth (measures with `needs_masks`; else optional).
            patient_ids: (B,) the unit of each image; None: each image its own unit.

        Raises:
            TumorcamError: when a needed argument is missing, the shapes disagree, or patient ids are
                given for some batches and not for others; and as the library call of the measure.
        """
        check_images(images)
        if self.needs_maps and maps is None:
            raise TumorcamError(f"maps: {self.name} needs the maps of the images", param="maps")
        if self.needs_masks and masks is None:
            raise TumorcamError(f"masks: {self.name} needs the ground-truth masks (B, 1, *spatial)", param="masks")
        ids, unit = units(patient_ids, len(images))
        if unit == "slice":
            ids = np.arange(self.n_images, self.n_images + len(images)).astype(str)
        self.units.add(unit)
        if len(self.units) > 1:
            raise TumorcamError("patient_ids: give them for every batch or for none", param="patient_ids")
        self.results.append(self._update(images, maps, masks, ids, self.seed + self.n_images))
        self.unit_ids.append(ids)
        self.n_images += len(images)

    @abstractmethod
    def _update(self, images: torch.Tensor, maps: torch.Tensor | None, masks: torch.Tensor | None,
                unit_ids: np.ndarray, seed: int) -> Any:
        """The batch's result, computed with `seed`."""

    @abstractmethod
    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05) -> dict[str, Any]:
        """The statistics over every batch seen (the shape of the library call's summary)."""

    def _seen(self) -> tuple[np.ndarray, str]:
        if not self.results:
            raise TumorcamError(f"update: {self.name} has no batch yet; call update() first", param="update")
        return np.concatenate(self.unit_ids), next(iter(self.units))


class DeletionInsertion(Measure):
    """Deletion/Insertion of the maps against the random map and the predicted-mask control, with the
    headline (`tumorcam.faithfulness`).

    Args:
        model: returns logits (B, C, *spatial).
        channel: as in `tumorcam.faithfulness`.
        output: as in `tumorcam.faithfulness`.
        baseline: as in `tumorcam.faithfulness`.
        steps: K, as in `tumorcam.faithfulness`.
        schedule: as in `tumorcam.faithfulness`.
        score: as in `tumorcam.faithfulness`.
        batch_size: as in `tumorcam.faithfulness`.
        amp: as in `tumorcam.faithfulness`.
        seed: seeds batch b's random reference and ties with `seed + n`.

    Raises:
        TumorcamError: for K < 1, an unknown baseline, score or schedule, or batch_size < 1.

    Example:
        >>> measure = DeletionInsertion(model, steps=8)
        >>> measure.update(images, maps, patient_ids=pids)
        >>> measure.summary()["deletion"]["vs_mask"]["verdict"]
    """

    name = "deletion/insertion"

    def __init__(self, model: nn.Module, *, channel: int | None = None, output: Any = None, baseline: str = "zero",
                 steps: int = 50, schedule: str = "log", score: str = "predicted-region", batch_size: int = 256,
                 amp: bool = False, seed: int = 0) -> None:
        check_game(steps, baseline, score, schedule)
        check_positive_int("batch_size", batch_size)
        self.model, self.channel, self.output = model, channel, output
        self.settings = {"baseline": baseline, "steps": steps, "schedule": schedule, "score": score,
                         "batch_size": batch_size, "amp": amp}
        super().__init__(seed)

    def _update(self, images: torch.Tensor, maps: torch.Tensor | None, masks: torch.Tensor | None,
                unit_ids: np.ndarray, seed: int) -> FaithfulnessResult:
        return faithfulness(self.model, images, maps, channel=self.channel, output=self.output, masks=masks,
                            patient_ids=unit_ids, seed=seed, **self.settings)

    def result(self) -> FaithfulnessResult:
        """The pooled `FaithfulnessResult` of every batch.

        Returns:
            One `FaithfulnessResult` of the curves of every image seen.

        Raises:
            TumorcamError: before any `update`.
        """
        ids, unit = self._seen()
        first = self.results[0]

        def pooled(curves: list[Curves | None]) -> Curves | None:
            if any(c is None for c in curves):
                return None
            return Curves(np.concatenate([c.deletion for c in curves]), np.concatenate([c.insertion for c in curves]),
                          curves[0].fractions)

        return FaithfulnessResult(
            curves=pooled([r.curves for r in self.results]),
            reference_curves=pooled([r.reference_curves for r in self.results]),
            mask_curves=pooled([r.mask_curves for r in self.results]), unit_ids=ids, unit=unit,
            baseline=first.baseline, score=first.score, schedule=first.schedule, reference=first.reference,
            seed=self.seed, n_flat_maps=sum(r.n_flat_maps for r in self.results))

    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05, sanity: Any = None) -> dict[str, Any]:
        """`FaithfulnessResult.summary` of the pooled curves (with `sanity` for the headline).

        Args:
            bootstrap: cluster-bootstrap resamples.
            alpha: the level of the Holm adjustment and of the verdicts.
            sanity: a `SanityResult` or its verdict dict for the headline (None: at best "undetermined").

        Returns:
            The row of `FaithfulnessResult.summary`.

        Raises:
            TumorcamError: before any `update`.
            ValueError: for bootstrap < 1.
        """
        return self.result().summary(bootstrap=bootstrap, alpha=alpha, sanity=sanity)


class Localization(Measure):
    """Pointing game, energy pointing game and top-p% IoU of the maps with the ground truth, against
    seeded random maps (`tumorcam.localization`).

    Args:
        top_percent: p of the top-p% IoU, in (0, 100].
        seed: seeds batch b's random maps and ties with `seed + n`.

    Raises:
        TumorcamError: for a top_percent outside (0, 100].
    """

    name = "localization"
    needs_masks = True

    def __init__(self, *, top_percent: float = 5.0, seed: int = 0) -> None:
        check_top_percent(top_percent)
        self.top_percent = top_percent
        super().__init__(seed)

    def _update(self, images: torch.Tensor, maps: torch.Tensor | None, masks: torch.Tensor | None,
                unit_ids: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        maps = torch.as_tensor(maps).float()
        if tuple(maps.shape) != (len(images), *images.shape[2:]):
            raise TumorcamError(f"maps: expected {(len(images), *images.shape[2:])}, got {tuple(maps.shape)}",
                                param="maps")
        reference = random_maps(len(maps), tuple(maps.shape[1:]), seed)
        return (localization_scores(maps, masks, top_percent=self.top_percent, seed=seed),
                localization_scores(reference, masks, top_percent=self.top_percent, seed=seed))

    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05) -> dict[str, Any]:
        """The statistics of every image seen, as `tumorcam.localization` gives them.

        Args:
            bootstrap: cluster-bootstrap resamples.
            alpha: the level of the Holm adjustment over the three metrics.

        Returns:
            Per metric the mean of unit means with its CI and the test against the random maps
            (Holm over three).

        Raises:
            TumorcamError: before any `update`.
            ValueError: for bootstrap < 1.
        """
        ids, unit = self._seen()
        scores, reference = ({metric: np.concatenate([r[i][metric] for r in self.results])
                              for metric in self.results[0][i]} for i in (0, 1))
        return summarize_localization(scores, reference, ids, unit, seed=self.seed, bootstrap=bootstrap, alpha=alpha)


class Dice(Measure):
    """Dice of the model's predicted region of `channel` with the ground truth, per image, summarised
    as the mean of patient means with a cluster-bootstrap CI.

    Args:
        model: returns logits (B, C, *spatial); the predicted region is the `predicted-mask` control's.
        channel: as in `tumorcam.explain`.
        output: as in `tumorcam.explain`.
        batch_size: images per forward.
        seed: seeds the bootstrap.

    Raises:
        TumorcamError: for batch_size < 1 or a seed that is not an integer; from `update`, for masks
            that do not fit the prediction.
    """

    name = "dice"
    needs_maps = False
    needs_masks = True

    def __init__(self, model: nn.Module, *, channel: int | None = None, output: Any = None, batch_size: int = 32,
                 seed: int = 0) -> None:
        check_positive_int("batch_size", batch_size)
        self.model, self.channel, self.output, self.batch_size = model, channel, output, batch_size
        super().__init__(seed)

    def _update(self, images: torch.Tensor, maps: torch.Tensor | None, masks: torch.Tensor | None,
                unit_ids: np.ndarray, seed: int) -> np.ndarray:
        from tumorcam.guards import check_model

        channel = check_model(self.model, images, output=self.output, channel=self.channel)
        with torch.no_grad():
            predicted = predicted_mask_maps(self.model, images, channel, self.output, self.batch_size) > 0.5
        masks = torch.as_tensor(masks).to(predicted.device)
        if masks.dim() == predicted.dim() + 1:
            masks = masks[:, 0]
        if masks.shape != predicted.shape:
            raise TumorcamError(f"masks: expected {tuple(predicted.shape)} or with a channel axis of 1, got "
                                f"{tuple(masks.shape)}", param="masks")
        return dice_iou(predicted, masks > 0.5)[0].double().cpu().numpy()

    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05) -> dict[str, Any]:
        """The Dice of every image seen, summarised over units.

        Args:
            bootstrap: cluster-bootstrap resamples.
            alpha: unused (no test); the measures' common signature.

        Returns:
            {"dice": mean of unit means, ci_low, ci_high, n_patients, n_slices; "unit", "per_image"}.

        Raises:
            TumorcamError: before any `update`.
            ValueError: for bootstrap < 1.
        """
        ids, unit = self._seen()
        values = np.concatenate(self.results)
        summary = cluster_bootstrap_ci(values, ids, resamples=bootstrap, seed=self.seed)
        summary["unit"] = unit
        return {"dice": summary, "unit": unit, "per_image": values.tolist()}


class Sanity(Measure):
    """Cascading model-parameter randomization of one method's maps (`tumorcam.sanity`); the maps are
    recomputed, so `update` takes none.

    Args:
        model: the intact model (left untouched).
        method: as in `tumorcam.sanity`.
        target: as in `tumorcam.sanity`.
        layer: as in `tumorcam.sanity`.
        channel: as in `tumorcam.sanity`.
        output: as in `tumorcam.sanity`.
        threshold: as in `tumorcam.sanity`, in (0, 1].
        stages: as in `tumorcam.sanity`.
        ig_steps: as in `tumorcam.sanity`.
        batch_size: as in `tumorcam.sanity`.
        seed: seeds the randomization, the same for every batch (the randomised weights must be the
            same model for all of them).

    Raises:
        TumorcamError: for an unknown method, ig_steps or batch_size < 1, or a threshold outside (0, 1].
    """

    name = "sanity"
    needs_maps = False

    def __init__(self, model: nn.Module, *, method: str = "gradcam", target: Any = "predicted-region",
                 layer: Any = None, channel: int | None = None, output: Any = None, threshold: float = 0.5,
                 stages: list[str] | None = None, ig_steps: int = 32, batch_size: int = 16, seed: int = 0) -> None:
        from tumorcam.explain import get_method

        get_method(method)
        check_positive_int("ig_steps", ig_steps)
        check_positive_int("batch_size", batch_size)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 < threshold <= 1:
            raise TumorcamError(f"threshold: must be in (0, 1], got {threshold!r}", param="threshold")
        self.model = model
        self.settings = {"method": method, "target": target, "layer": layer, "channel": channel, "output": output,
                         "threshold": threshold, "stages": stages, "ig_steps": ig_steps, "batch_size": batch_size}
        super().__init__(seed)

    def _update(self, images: torch.Tensor, maps: torch.Tensor | None, masks: torch.Tensor | None,
                unit_ids: np.ndarray, seed: int) -> SanityResult:
        # one seed for every batch: the randomised weights must be the same model for all of them
        return sanity(self.model, images, masks=masks, patient_ids=unit_ids, seed=self.seed, **self.settings)

    def result(self, bootstrap: int = 1000) -> SanityResult:
        """The pooled `SanityResult` (its `verdict` decides on every image seen).

        Args:
            bootstrap: the result's cluster-bootstrap resamples.

        Returns:
            One `SanityResult` of every image seen.

        Raises:
            TumorcamError: before any `update`.
        """
        ids, _ = self._seen()
        first = self.results[0]
        return SanityResult(stages=first.stages, spearman=np.concatenate([r.spearman for r in self.results], axis=1),
                            ssim=np.concatenate([r.ssim for r in self.results], axis=1), threshold=first.threshold,
                            patient_ids=ids, min_patients=first.min_patients, resamples=bootstrap, seed=self.seed)

    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05) -> dict[str, Any]:
        """The verdict of the pooled result.

        Args:
            bootstrap: cluster-bootstrap resamples.
            alpha: unused; the measures' common signature.

        Returns:
            {"verdict", "reason", "n_patients", "stages"} of the pooled result.

        Raises:
            TumorcamError: before any `update`.
            ValueError: for bootstrap < 1.
        """
        result = self.result(bootstrap)
        verdict, reason = result.decide()
        return {"verdict": verdict, "reason": reason, "n_patients": result.n_patients, "stages": result.stages}


class Channels(Measure):
    """Per-sequence attribution: each input channel's share of the attribution and the Dice drop of
    ablating it (`tumorcam.channels`).

    Args:
        model: returns logits (B, C, *spatial).
        channel_names: as in `tumorcam.channels`.
        target: as in `tumorcam.channels`.
        channel: as in `tumorcam.channels`.
        output: as in `tumorcam.channels`.
        method: as in `tumorcam.channels`.
        ig_steps: as in `tumorcam.channels`.
        baseline: as in `tumorcam.channels`.
        batch_size: as in `tumorcam.channels`.
        seed: seeds the summary's bootstrap.

    Raises:
        TumorcamError: for ig_steps or batch_size < 1; from `update`, as `tumorcam.channels`.
    """

    name = "channels"
    needs_maps = False

    def __init__(self, model: nn.Module, *, channel_names: list[str] | None = None, target: Any = "predicted-region",
                 channel: int | None = None, output: Any = None, method: str = "integrated-gradients",
                 ig_steps: int = 32, baseline: str = "zero", batch_size: int = 32, seed: int = 0) -> None:
        check_positive_int("ig_steps", ig_steps)
        check_positive_int("batch_size", batch_size)
        self.model = model
        self.settings = {"channel_names": channel_names, "target": target, "channel": channel, "output": output,
                         "method": method, "ig_steps": ig_steps, "baseline": baseline, "batch_size": batch_size}
        super().__init__(seed)

    def _update(self, images: torch.Tensor, maps: torch.Tensor | None, masks: torch.Tensor | None,
                unit_ids: np.ndarray, seed: int) -> ChannelResult:
        return channels(self.model, images, masks=masks, patient_ids=unit_ids, seed=self.seed, **self.settings)

    def summary(self, *, bootstrap: int = 1000, alpha: float = 0.05) -> dict[str, Any]:
        """`ChannelResult.summary` of the pooled shares and drops.

        Args:
            bootstrap: cluster-bootstrap resamples.
            alpha: the level of the verdicts.

        Returns:
            The dict of `ChannelResult.summary`.

        Raises:
            TumorcamError: before any `update`.
            ValueError: for bootstrap < 1.
        """
        ids, unit = self._seen()
        first = self.results[0]
        pooled = ChannelResult(shares=np.concatenate([r.shares for r in self.results]),
                               dice_drop=np.concatenate([r.dice_drop for r in self.results]), unit_ids=ids, unit=unit,
                               channel_names=first.channel_names, settings=first.settings)
        return pooled.summary(bootstrap=bootstrap, alpha=alpha)


MEASURES: dict[str, type[Measure]] = {m.name: m for m in (DeletionInsertion, Localization, Dice, Sanity, Channels)}
