"""The seed's Deletion/Insertion loop: one forward per step per image, for both curves.

Not part of the package: the batched `tumorcam.evaluate.game.PerturbationGame` must agree with it
(tests/test_faithfulness.py) and beat it (bench_faithfulness.py). It shares the game's ranking,
baselines and scores, so the two differ only in how the perturbed images are built and batched.
"""

from __future__ import annotations

import numpy as np
import torch

from tumorcam.evaluate.baselines import curve_baselines, fixed_baseline, road_impute
from tumorcam.evaluate.game import (
    Curves,
    ModelFn,
    as_masks,
    check_game,
    fixed_region,
    score_logits,
)
from tumorcam.evaluate.ranking import rank_pixels, step_counts, step_fractions


def reference_curves(model_fn: ModelFn, images: torch.Tensor, maps: torch.Tensor, *, steps: int = 50,
                     baseline: str = "zero", score: str = "mean-sigmoid", schedule: str = "uniform",
                     masks: torch.Tensor | None = None, channel: int = 0, seed: int = 0, road_noise: float = 0.0,
                     amp: bool = False) -> Curves:
    """Curves of maps (N, *spatial) for images (N, C, *spatial), one forward of batch 1 per step."""
    check_game(steps, baseline, score, schedule)
    n, spatial = len(images), tuple(images.shape[2:])
    ranks = rank_pixels(maps, seed).view(n, 1, *spatial)
    counts = step_counts(steps, int(np.prod(spatial)), schedule)
    names = curve_baselines(baseline)
    masks = None if masks is None else as_masks(masks, images)
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
            region = fixed_region(score, forward(image), None if masks is None else masks[i:i + 1], channel)
            for c in range(2):
                base = None if baseline == "road" else fixed_baseline(image, names[c])
                for k in range(steps + 1):
                    removed = (ranks[i:i + 1] < counts[k]) ^ bool(c)
                    if base is None:
                        x = road_impute(image, removed, noise=road_noise, generator=generator)
                    else:
                        x = torch.where(removed, base, image)
                    out[c, i, k] = float(score_logits(forward(x), score, region, channel)[0])
    return Curves(deletion=out[0], insertion=out[1], fractions=step_fractions(steps, schedule))
