"""Everything a run on volumes measures on one case, in one place: `evaluate_case`.

A case is one volume (1, C_in, D, H, W) with its ground-truth region (1, 1, D, H, W). Every number
of a case depends only on the case, the model, the settings and the case's index in the split
(the seeds of its random draws are `settings.explain.seed + index` for the maps, `settings.evaluate.seed + index`
for the game), never on the other cases or on which
process computes it: this is what lets `torchrun` shard the cases and still write the same files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.guards import flat_maps
from tumorcam.config import Settings
from tumorcam.volumes.settings import all_methods, volume_layer


@dataclass
class CaseResult:
    """The measurements of one case: `maps` per method (D, H, W) float16; the game's `deletion` and
    `insertion` curves (K+1,) per (baseline, method); `localization` per method (metric -> value);
    `shares` and `dice_drop` (C_in,) per sequence; `dice` of the prediction with the ground truth;
    `predicted_voxels`; `flat` per method: whether its map is flat (every voxel equal);
    `baseline_effects` per baseline name: 1 - s(fully perturbed) / s(intact) of the case."""

    index: int
    maps: dict[str, np.ndarray]
    deletion: dict[tuple[str, str], np.ndarray]
    insertion: dict[tuple[str, str], np.ndarray]
    localization: dict[str, dict[str, float]]
    shares: np.ndarray
    dice_drop: np.ndarray
    dice: float
    predicted_voxels: int
    flat: dict[str, bool]
    baseline_effects: dict[str, float]

    def without_maps(self) -> CaseResult:
        """The same result without its maps (what travels between processes)."""
        return CaseResult(self.index, {}, self.deletion, self.insertion, self.localization, self.shares,
                          self.dice_drop, self.dice, self.predicted_voxels, self.flat, self.baseline_effects)


def evaluate_case(model: nn.Module, image: torch.Tensor, mask: torch.Tensor, index: int,
                  settings: Settings) -> CaseResult:
    """Explain one case with every method, play the Deletion/Insertion game with every map under
    every baseline, score the maps' localisation of the ground truth, attribute the prediction to
    the input sequences and ablate each in turn. `image` (1, C_in, D, H, W) and `mask`
    (1, 1, D, H, W) are on the model's device; `model` is in eval mode."""
    from tumorcam.evaluate.channels import channel_ablation, channel_shares
    from tumorcam.evaluate.metrics import dice_iou
    from tumorcam.evaluate.game import PerturbationGame
    from tumorcam.evaluate.localization import localization_scores
    from tumorcam.explain import explain, explaining
    from tumorcam.explain.methods.base import Logits
    from tumorcam.explain.targets import predicted

    seed = settings.evaluate.seed + index
    try:
        maps = {method: explain(model, image, method=method, target=settings.explain.targets[0],
                                layer=volume_layer(settings), channel=settings.explain.channel,
                                output=settings.explain.output, ig_steps=settings.explain.ig_steps,
                                seed=settings.explain.seed + index, batch_size=1)
                for method in all_methods(settings)}
        deletion, insertion, effects = {}, {}, {}
        logits_of = Logits(model, settings.explain.output)
        with explaining(model):
            for baseline in settings.evaluate.baselines:
                game = PerturbationGame(logits_of, image, steps=settings.evaluate.steps, baseline=baseline,
                                        score=settings.evaluate.score, schedule=settings.evaluate.schedule,
                                        channel=settings.explain.channel,
                                        batch_size=settings.evaluate.batch_size, seed=seed, warn=False)
                effects.update(game.baseline_effects)  # warned once over the cases, by the run
                for method, heatmap in maps.items():
                    curves = game.curves(heatmap)
                    deletion[baseline, method] = curves.deletion[0]
                    insertion[baseline, method] = curves.insertion[0]
            with torch.no_grad():
                region = predicted(logits_of(image), settings.explain.channel)[0].bool()
        truth = mask[0, 0] > 0.5
        localization = {method: {metric: float(values[0]) for metric, values in
                                 localization_scores(heatmap, mask[:, 0], top_percent=settings.evaluate.top_percent,
                                                     seed=seed).items()}
                        for method, heatmap in maps.items()}
        shares = channel_shares(model, image, target=settings.explain.targets[0], channel=settings.explain.channel,
                                output=settings.explain.output, method=settings.evaluate.channel_method,
                                ig_steps=settings.explain.ig_steps)
        dice_drop = channel_ablation(model, image, baseline=settings.evaluate.ablation_baseline,
                                     channel=settings.explain.channel, output=settings.explain.output)
    except torch.cuda.OutOfMemoryError:
        raise TumorcamError(f"case {index}: a volume of {tuple(image.shape[1:])} (C, D, H, W) does not fit in the "
                            f"memory of {image.device}; prepare the volumes at a smaller --prepare-size, or lower "
                            "batch_size in --config") from None
    if tuple(region.shape) != tuple(truth.shape):
        region = torch.nn.functional.interpolate(region[None, None].float(), size=tuple(truth.shape),
                                                 mode="nearest")[0, 0] > 0.5
    return CaseResult(index=index, maps={m: h[0].cpu().numpy().astype(np.float16) for m, h in maps.items()},
                      deletion=deletion, insertion=insertion, localization=localization,
                      shares=np.asarray(shares[0], dtype=np.float64), dice_drop=np.asarray(dice_drop[0], np.float64),
                      dice=float(dice_iou(region[None], truth[None])[0][0]), predicted_voxels=int(region.sum()),
                      flat={m: bool(flat_maps(h)[0]) for m, h in maps.items()}, baseline_effects=effects)
