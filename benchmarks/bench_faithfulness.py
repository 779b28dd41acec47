"""Deletion/Insertion throughput: the seed's loop against tumorcam's batched game, and the bf16
inference bound, in the same process on the same model.

- seed: `seed_reference.reference_curves`, one forward per step per slice for both curves
  (2(K+1) forwards of batch 1 per slice), fp32 like the seed, on `loop_slices` slices.
- tumorcam: `PerturbationGame` (build the perturbed slices on the device from pixel ranks, score
  `batch` of them per forward, bf16 autocast and channels_last on CUDA), all `slices`, both curves,
  `zero` baseline, mean-sigmoid score; the clock includes ranking the maps and the original and
  full-baseline forwards.
- inference: plain forwards of `batch` slices (bf16 autocast and channels_last on CUDA): the
  bound the game approaches. `ratio_to_inference` = (slices/s x 2(K+1)) / inference images/s,
  i.e. the game's speed in seed-equivalent images against pure inference (it forwards 2K images
  per slice, since the two ends are shared, so it can slightly exceed 1).

Model: the U-Net (ResNet34, random weights: speed does not depend on them); data: random slices
and random maps of the real size (224 px), N = 664 (a figshare fold).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from tumorcam.device import autocast
from tumorcam.evaluate.game import PerturbationGame

from common import inference_model
from seed_reference import reference_curves

FULL = {"slices": 664, "size": 224, "steps": 50, "batch": 512, "loop_slices": 3, "inference_batches": 20}
QUICK = {"slices": 8, "size": 32, "steps": 5, "batch": 32, "loop_slices": 2, "inference_batches": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--faith-batch", type=int, default=None,
                        help="perturbed slices per forward (default 512, quick 32)")
    parser.add_argument("--faith-slices", type=int, default=None,
                        help="slices in the batched game (default 664, quick 8)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = dict(QUICK if args.quick else FULL)
    shape["batch"] = args.faith_batch or shape["batch"]
    shape["slices"] = args.faith_slices or shape["slices"]
    device, model = inference_model(args.device)
    generator = torch.Generator().manual_seed(0)
    n, s, k = shape["slices"], shape["size"], shape["steps"]
    images = torch.rand((n, 1, s, s), generator=generator).to(device)
    maps = torch.rand((n, s, s), generator=generator).to(device)

    inference = _inference(model, images, shape, device)
    loop_n = shape["loop_slices"]
    reference_curves(model, images[:1], maps[:1], steps=1, amp=False)  # warm-up
    _sync(device)
    start = time.perf_counter()
    reference_curves(model, images[:loop_n], maps[:loop_n], steps=k, amp=False)
    _sync(device)
    seed_rate = loop_n / (time.perf_counter() - start)

    PerturbationGame(model, images[:2], steps=2, batch_size=shape["batch"], amp=True).curves(maps[:2])  # warm-up
    _sync(device)
    start = time.perf_counter()
    PerturbationGame(model, images, steps=k, batch_size=shape["batch"], amp=True).curves(maps)
    _sync(device)
    seconds = time.perf_counter() - start
    rate = n / seconds
    equivalent = rate * 2 * (k + 1)
    return {
        "shape": shape,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "inference_img_per_s": round(inference, 1),
        "seed_loop": {"slices_per_s": round(seed_rate, 3), "precision": "fp32", "batch": 1},
        "tumorcam": {"slices_per_s": round(rate, 2), "seconds": round(seconds, 2),
                     "forwarded_img_per_s": round(rate * 2 * k, 1), "equivalent_img_per_s": round(equivalent, 1)},
        "speedup_vs_seed": round(rate / seed_rate, 1),
        "ratio_to_inference": round(equivalent / inference, 3),
    }


def _inference(model: torch.nn.Module, images: torch.Tensor, shape: dict[str, int], device: torch.device) -> float:
    """Images/s of plain forwards of `batch` slices (the slices repeated to fill a batch)."""
    batch = images[torch.arange(shape["batch"]) % len(images)]
    with torch.inference_mode(), autocast(device, True):
        for _ in range(2):
            model(batch)
        _sync(device)
        start = time.perf_counter()
        for _ in range(shape["inference_batches"]):
            model(batch).float().sigmoid().mean(dim=(1, 2, 3))
        _sync(device)
    return shape["inference_batches"] * shape["batch"] / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
