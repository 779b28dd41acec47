"""Heatmap throughput: the seed's per-image Captum Grad-CAM against tumorcam's batched maps, and the
inference bound, in the same process on the same model.

- seed: `LayerGradCam(SegmentationWrapper(model), decoder.blocks.4).attribute(x, relu_attributions=True)`
  on one slice at a time, fp32, parameters requiring gradients (as the seed runs it), then the
  bilinear upsample; on `loop_slices` slices.
- tumorcam: `compute_maps(model, batch, method=..., target="mean-logits", layer="decoder.blocks.4")`
  on all `slices` in batches of `batch` (bf16 autocast and channels_last on CUDA; parameters
  frozen so only the layer onwards is recorded for backward); maps/s for Grad-CAM, and for the
  other one-pass methods on `method_batches` batches each.
- inference: plain forwards of `batch` slices, same precision: the bound a one-forward-one-backward
  method approaches. `ratio_to_inference` = Grad-CAM maps/s / inference images/s.

Model: the U-Net (ResNet34, random weights: speed does not depend on them); data: random slices of
the real size (224 px).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from captum.attr import LayerAttribution, LayerGradCam

from tumorcam.explain import compute_maps
from tumorcam.device import autocast

from common import inference_model

FULL = {"slices": 2048, "size": 224, "batch": 256, "loop_slices": 32, "method_batches": 4, "inference_batches": 8}
QUICK = {"slices": 8, "size": 64, "batch": 4, "loop_slices": 2, "method_batches": 1, "inference_batches": 2}
LAYER = "decoder.blocks.4"
OTHER_METHODS = ("gradcam++", "hirescam", "layercam", "saliency")


class SegmentationWrapper(torch.nn.Module):
    """The seed's scalar wrapper: the spatial mean of the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).mean(dim=(1, 2, 3))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--explain-batch", type=int, default=None, help="slices per explained batch (default 256, quick 4)")
    parser.add_argument("--explain-slices", type=int, default=None, help="slices to explain (default 2048, quick 8)")
    parser.add_argument("--explain-size", type=int, default=None, help="slice size (default 224, quick 64)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = dict(QUICK if args.quick else FULL)
    shape["batch"] = args.explain_batch or shape["batch"]
    shape["slices"] = args.explain_slices or shape["slices"]
    shape["size"] = args.explain_size or shape["size"]
    device, model = inference_model(args.device)
    n, s, b = shape["slices"], shape["size"], shape["batch"]
    images = torch.rand((n, 1, s, s), generator=torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    batches = [images[i:i + b] for i in range(0, n, b)]

    inference = _inference(model, batches[0], shape["inference_batches"], device)
    seed_rate = _seed_loop(model, images[:shape["loop_slices"]], device)
    gradcam_rate = _maps_rate(model, batches, "gradcam", device)
    others = {m: round(_maps_rate(model, batches[:shape["method_batches"]], m, device), 1) for m in OTHER_METHODS}
    return {
        "shape": shape,
        "layer": LAYER,
        "target": "mean-logits",
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "inference_img_per_s": round(inference, 1),
        "seed_loop": {"maps_per_s": round(seed_rate, 2), "precision": "fp32", "batch": 1},
        "tumorcam": {"gradcam_maps_per_s": round(gradcam_rate, 1), "other_methods_maps_per_s": others},
        "speedup_vs_seed": round(gradcam_rate / seed_rate, 1),
        "ratio_to_inference": round(gradcam_rate / inference, 3),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inference(model: torch.nn.Module, batch: torch.Tensor, repeats: int, device: torch.device) -> float:
    with torch.no_grad(), autocast(device, True):
        model(batch)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(batch)
        _sync(device)
    return repeats * batch.shape[0] / (time.perf_counter() - start)


def _seed_loop(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> float:
    gradcam = LayerGradCam(SegmentationWrapper(model), dict(model.named_modules())[LAYER])
    size = tuple(images.shape[-2:])

    def one(x: torch.Tensor) -> torch.Tensor:
        return LayerAttribution.interpolate(gradcam.attribute(x, relu_attributions=True), size, interpolate_mode="bilinear")

    one(images[:1])  # warm-up
    _sync(device)
    start = time.perf_counter()
    for i in range(images.shape[0]):
        one(images[i:i + 1])
    _sync(device)
    return images.shape[0] / (time.perf_counter() - start)


def _maps_rate(model: torch.nn.Module, batches: list[torch.Tensor], method: str, device: torch.device) -> float:
    compute_maps(model, batches[0], method=method, target="mean-logits", layer=LAYER)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        compute_maps(model, batch, method=method, target="mean-logits", layer=LAYER)
    _sync(device)
    return sum(x.shape[0] for x in batches) / (time.perf_counter() - start)
