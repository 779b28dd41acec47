"""Everything a run on volumes does to one case, in one place: `explain_case` makes its maps,
`evaluate_case` measures them as saved (float32), so that `tumorcam evaluate RUN`, which reads the
saved maps, gives the numbers the run wrote.

A case is one volume (1, C_in, D, H, W) with its ground-truth region (1, 1, D, H, W). Every number
of a case depends only on the case, the model, the settings and the case's index in the split
(the seeds of its random draws are `settings.explain.seed + index` for the maps, `settings.evaluate.seed + index`
for the game), never on the other cases or on which
process computes it: this is what lets `torchrun` shard the cases and still write the same files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.guards import flat_maps
from tumorcam.config import Settings
from tumorcam.runs.volume_settings import all_methods, volume_layer


@dataclass
class CaseResult:
    """The measurements of one case: `maps` per method (D, H, W) float32; the game's `deletion` and
    `insertion` curves (K+1,) per (baseline, method); `localization` per method (metric -> value);
    `shares` and `dice_drop` (C_in,) per sequence (None when the sequences were not measured); `dice`
    of the prediction with the ground truth; `predicted_voxels`; `flat` per method: whether its map
    is flat (every voxel equal); `baseline_effects` per baseline name: 1 - s(fully perturbed) /
    s(intact) of the case."""

    index: int
    maps: dict[str, np.ndarray]
    deletion: dict[tuple[str, str], np.ndarray]
    insertion: dict[tuple[str, str], np.ndarray]
    localization: dict[str, dict[str, float]]
    shares: np.ndarray | None
    dice_drop: np.ndarray | None
    dice: float
    predicted_voxels: int
    flat: dict[str, bool]
    baseline_effects: dict[str, float]

    def without_maps(self) -> CaseResult:
        """The same result without its maps (what travels between processes)."""
        return dataclasses.replace(self, maps={})


def explain_case(model: nn.Module, image: torch.Tensor, index: int, settings: Settings) -> dict[str, np.ndarray]:
    """The maps (D, H, W) float32 of one case (1, C_in, D, H, W) by every method (controls included),
    as a run saves them in explanations/METHOD.npy."""
    from tumorcam.explain import explain

    try:
        return {method: explain(model, image, method=method, target=settings.explain.targets[0], layer=volume_layer(settings),
                                channel=settings.explain.channel, output=settings.explain.output, ig_steps=settings.explain.ig_steps,
                                seed=settings.explain.seed + index, batch_size=1)[0].float().cpu().numpy()
                for method in all_methods(settings)}
    except torch.cuda.OutOfMemoryError:
        raise _out_of_memory(index, image) from None


def evaluate_case(model: nn.Module, image: torch.Tensor, mask: torch.Tensor, index: int, settings: Settings,
                  maps: dict[str, np.ndarray], sequences: bool = True) -> CaseResult:
    """Play the Deletion/Insertion game with every map of `maps` (method -> (D, H, W), as saved)
    under every baseline, score the maps' localisation of the ground truth and the prediction's
    Dice; with `sequences`, attribute the prediction to the input sequences and ablate each in turn.
    `image` (1, C_in, D, H, W) and `mask` (1, 1, D, H, W) are on the model's device; `model` is in
    eval mode."""
    from tumorcam.evaluate.metrics import dice_iou
    from tumorcam.evaluate.game import PerturbationGame
    from tumorcam.evaluate.localization import localization_scores
    from tumorcam.explain import explaining
    from tumorcam.explain.methods.base import Logits
    from tumorcam.explain.targets import predicted

    seed = settings.evaluate.seed + index
    heatmaps = {method: torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None].to(image.device)
                for method, heatmap in maps.items()}
    shares = dice_drop = None
    try:
        deletion, insertion, effects = {}, {}, {}
        logits_of = Logits(model, settings.explain.output)
        with explaining(model):
            for baseline in settings.evaluate.baselines:
                game = PerturbationGame(logits_of, image, steps=settings.evaluate.steps, baseline=baseline,
                                        score=settings.evaluate.score, schedule=settings.evaluate.schedule,
                                        channel=settings.explain.channel,
                                        batch_size=settings.evaluate.batch_size, seed=seed, warn=False)
                effects.update(game.baseline_effects)  # warned once over the cases, by the run
                for method, heatmap in heatmaps.items():
                    curves = game.curves(heatmap)
                    deletion[baseline, method] = curves.deletion[0]
                    insertion[baseline, method] = curves.insertion[0]
            with torch.no_grad():
                region = predicted(logits_of(image), settings.explain.channel)[0].bool()
        truth = mask[0, 0] > 0.5
        localization = {method: {metric: float(values[0]) for metric, values in
                                 localization_scores(heatmap, mask[:, 0], top_percent=settings.evaluate.top_percent,
                                                     seed=seed).items()}
                        for method, heatmap in heatmaps.items()}
        if sequences:
            shares, dice_drop = case_sequences(model, image, settings)
    except torch.cuda.OutOfMemoryError:
        raise _out_of_memory(index, image) from None
    if tuple(region.shape) != tuple(truth.shape):
        region = torch.nn.functional.interpolate(region[None, None].float(), size=tuple(truth.shape),
                                                 mode="nearest")[0, 0] > 0.5
    return CaseResult(index=index, maps=maps, deletion=deletion, insertion=insertion, localization=localization,
                      shares=shares, dice_drop=dice_drop, dice=float(dice_iou(region[None], truth[None])[0][0]),
                      predicted_voxels=int(region.sum()),
                      flat={m: bool(flat_maps(h)[0]) for m, h in heatmaps.items()}, baseline_effects=effects)


def case_sequences(model: nn.Module, image: torch.Tensor, settings: Settings) -> tuple[np.ndarray, np.ndarray]:
    """Each input sequence's attribution share and channel-ablation Dice drop (C_in,) float64 of one
    case (1, C_in, D, H, W) on the model's device."""
    from tumorcam.evaluate.channels import channel_ablation, channel_shares

    shares = channel_shares(model, image, target=settings.explain.targets[0], channel=settings.explain.channel, output=settings.explain.output,
                            method=settings.evaluate.channel_method, ig_steps=settings.explain.ig_steps)
    drops = channel_ablation(model, image, baseline=settings.evaluate.ablation_baseline, channel=settings.explain.channel,
                             output=settings.explain.output)
    return np.asarray(shares[0], dtype=np.float64), np.asarray(drops[0], dtype=np.float64)


def _out_of_memory(index: int, image: torch.Tensor) -> TumorcamError:
    return TumorcamError(f"case {index}: a volume of {tuple(image.shape[1:])} (C, D, H, W) does not fit in the "
                         f"memory of {image.device}; prepare the volumes at a smaller prepare_size, or lower "
                         "batch_size in the settings", param="batch_size")
