"""3-D throughput: tumorcam's batched Grad-CAM and Deletion/Insertion on volumes against the seed's
one-case-at-a-time way, in the same process on the same model; prints one JSON object.

- Grad-CAM, seed: per case, a Captum `LayerGradCam` on a wrapper averaging the logits, built and
  run for that one case (fp32, parameters requiring gradients as the seed runs them), then
  `F.interpolate` trilinear to the volume and min-max normalisation. tumorcam:
  `tumorcam.explain(model, volumes, method="gradcam", target="mean-logits")` with batch_size = N.
  Same layer for both (tumorcam's default); `maps_max_abs_diff` compares the two sets of maps.
- Deletion/Insertion, seed: `seed_reference.reference_curves`, one forward per step per case for
  both curves (2(K+1) forwards of batch 1 per case: `scored_per_volume`). tumorcam: `PerturbationGame` (`batch`
  perturbed volumes per forward), the clock including ranking the maps and the original and
  full-baseline forwards (2K volumes scored per volume with the zero baseline: the original, the
  baseline and 2(K-1) perturbed). Both: zero baseline, mean-sigmoid score, uniform K steps, the tumorcam
  maps; `tumorcam_per_case`: one `PerturbationGame` per case, as `tumorcam run` on volumes streams
  them; `auc_max_abs_diff` is the largest AUC difference with the seed's (deletion and insertion).

Model: MONAI's 3-D UNet (4 input channels, 1 output, channels (8, 16, 32, 64), strides (2, 2, 2)),
random weights seeded (speed does not depend on them); data: N random volumes of 4 x S^3.

Each way runs `repeats` times, interleaved with the others, after a warm-up on one volume; the
fastest run of each is reported (the machine may be shared).

Usage: python benchmarks/bench_volumes.py [--cases 4] [--size 64] [--steps 20] [--batch 8]
       [--repeats 3] [--threads 0] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import monai
import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from monai.networks.nets import UNet

import tumorcam
from tumorcam.device import resolve_device, setup_backend
from tumorcam.evaluate.game import Curves, PerturbationGame
from tumorcam.explain.layers import default_layer

from seed_reference import reference_curves

AUC_TOLERANCE = 1e-4  # the batched game and the seed's loop must agree this well
GAME = {"baseline": "zero", "score": "mean-sigmoid", "schedule": "uniform"}  # the seed's game


class MeanLogits(torch.nn.Module):
    """The seed's scalar wrapper: the spatial mean of the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).mean(dim=tuple(range(1, x.dim())))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4, help="volumes N (default 4)")
    parser.add_argument("--size", type=int, default=64, help="cube side S (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="Deletion/Insertion steps K (default 20)")
    parser.add_argument("--batch", type=int, default=8, help="perturbed volumes per forward of the game (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way, the fastest kept (default 3)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: the idle cores)")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    device = resolve_device(args.device)
    setup_backend(device, seed=0, deterministic=False, num_threads=args.threads)
    model = UNet(spatial_dims=3, in_channels=4, out_channels=1, channels=(8, 16, 32, 64),
                 strides=(2, 2, 2)).to(device).eval()
    n, s, k = args.cases, args.size, args.steps
    volumes = torch.rand((n, 4, s, s, s), generator=torch.Generator().manual_seed(0)).to(device)
    layer = default_layer(model, volumes[:1])

    def seed_game(maps: torch.Tensor) -> Curves:
        return reference_curves(model, volumes[:len(maps)], maps, steps=k, **GAME)

    def tumorcam_game(maps: torch.Tensor) -> Curves:
        return PerturbationGame(model, volumes[:len(maps)], steps=k, batch_size=args.batch, **GAME).curves(maps)

    def per_case_game(maps: torch.Tensor) -> Curves:  # the way `tumorcam run` streams volumes: one game a case
        played = [PerturbationGame(model, volumes[i:i + 1], steps=k, batch_size=args.batch, **GAME).curves(maps[i:i + 1])
                  for i in range(len(maps))]
        return Curves(deletion=np.concatenate([c.deletion for c in played]),
                      insertion=np.concatenate([c.insertion for c in played]), fractions=played[0].fractions)

    warm = volumes[:1]  # a warm-up of every way on one volume
    warm_maps = tumorcam_gradcam(model, warm, layer)
    seed_gradcam(model, warm, layer)
    seed_game(warm_maps)
    tumorcam_game(warm_maps)
    per_case_game(warm_maps)
    seconds: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved, so a change of the machine's load hits every way alike
        seed_maps = _best(seconds, "seed_gradcam", device, seed_gradcam, model, volumes, layer)
        maps = _best(seconds, "tumorcam_gradcam", device, tumorcam_gradcam, model, volumes, layer)
        seed_curves = _best(seconds, "seed_game", device, seed_game, maps)
        curves = _best(seconds, "tumorcam_game", device, tumorcam_game, maps)
        case_curves = _best(seconds, "per_case_game", device, per_case_game, maps)
    auc_diff = max(float(np.abs(other.deletion_auc - seed_curves.deletion_auc).max()) for other in (curves, case_curves))
    auc_diff = max(auc_diff, *(float(np.abs(other.insertion_auc - seed_curves.insertion_auc).max())
                               for other in (curves, case_curves)))
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpus": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "shape": {"cases": n, "channels": 4, "size": s, "steps": k, "batch": args.batch, "repeats": args.repeats},
        "model": "monai UNet 3-D, channels (8, 16, 32, 64), strides (2, 2, 2), random weights (seed 0)",
        "layer": layer,
        "precision": "fp32",
        "gradcam": {
            "seed": {"maps_per_s": round(n / seconds["seed_gradcam"], 3), "batch": 1},
            "tumorcam": {"maps_per_s": round(n / seconds["tumorcam_gradcam"], 3), "batch": n},
            "speedup_vs_seed": round(seconds["seed_gradcam"] / seconds["tumorcam_gradcam"], 2),
            "maps_max_abs_diff": float(f"{float((maps - seed_maps).abs().max()):.3g}"),
        },
        "deletion_insertion": {
            **GAME,
            "seed": {"volumes_per_s": round(n / seconds["seed_game"], 3), "scored_per_volume": 2 * (k + 1),
                     "batch": 1},
            "tumorcam": {"volumes_per_s": round(n / seconds["tumorcam_game"], 3), "scored_per_volume": 2 * k,
                         "batch": args.batch},
            "speedup_vs_seed": round(seconds["seed_game"] / seconds["tumorcam_game"], 2),
            "tumorcam_per_case": {"volumes_per_s": round(n / seconds["per_case_game"], 3), "batch": args.batch,
                                  "speedup_vs_seed": round(seconds["seed_game"] / seconds["per_case_game"], 2)},
            "auc_max_abs_diff": float(f"{auc_diff:.3g}"),
            "auc_agree": auc_diff <= AUC_TOLERANCE,
        },
    }
    report["wall_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(report, indent=2))


def _best(seconds: dict[str, float], name: str, device: torch.device, function: Any, *args: Any) -> Any:
    """function(*args), its wall time kept in seconds[name] when the fastest so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)
    return result


def seed_gradcam(model: torch.nn.Module, volumes: torch.Tensor, layer: str) -> torch.Tensor:
    """The seed's maps (N, *spatial): one case per call, a new Captum LayerGradCam each time, then
    trilinear upsampling and min-max normalisation."""
    module = dict(model.named_modules())[layer]
    size = tuple(volumes.shape[2:])
    maps = []
    for i in range(len(volumes)):
        raw = LayerGradCam(MeanLogits(model), module).attribute(volumes[i:i + 1], relu_attributions=True)
        u = F.interpolate(raw.detach(), size=size, mode="trilinear", align_corners=False)[:, 0]
        maps.append((u - u.min()) / (u.max() - u.min()))
    return torch.cat(maps)


def tumorcam_gradcam(model: torch.nn.Module, volumes: torch.Tensor, layer: str) -> torch.Tensor:
    """tumorcam's maps (N, *spatial): every case in one batch."""
    return tumorcam.explain(model, volumes, method="gradcam", target="mean-logits", layer=layer,
                            batch_size=len(volumes))


if __name__ == "__main__":
    main()
