"""Training throughput: the seed-style loop against tumorcam's, on the same random data.

- seed: fp32, a torch `DataLoader` over numpy arrays with a per-sample resize (Pillow,
  bilinear) to the training size, batch 8, Adam 1e-4, BCEWithLogitsLoss, no augmentation.
- tumorcam: the training code itself (`tumorcam.training`): the arrays resized once and held on
  the device, augmentation on the device, bf16 autocast and channels_last on CUDA, fused Adam on
  CUDA, a large batch; `--compile` adds a torch.compile run.

Data: random slices of the real shape (stored 256x256 float16, trained at 224x224), with a
random disc mask each. img/s counts optimisation steps only, after warm-up steps, with the
device synchronised before the clock starts and stops.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tumorcam.config import ModelConfig
from tumorcam.data.arrays import load_prepared
from tumorcam.models.unet import build_model
from tumorcam.training.data import epoch_batches, load_split
from tumorcam.device import resolve_device, setup_backend
from tumorcam.training.losses import make_loss
from tumorcam.training.step import TrainStep, make_optimizer

FULL = {"n": 512, "stored": 256, "size": 224, "batch": 128, "steps": 30, "warmup": 5}
QUICK = {"n": 48, "stored": 64, "size": 32, "batch": 16, "steps": 3, "warmup": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-batch", type=int, default=None, help="tumorcam's batch (default 128, quick 16)")
    parser.add_argument("--compile", action="store_true", help="also time tumorcam's loop under torch.compile")


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = dict(QUICK if args.quick else FULL)
    if args.train_batch:
        shape["batch"] = args.train_batch
    device = resolve_device(args.device)
    setup_backend(device, seed=0, deterministic=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = _write_random_prepared(Path(tmp), shape["n"], shape["stored"])
        seed = _seed_loop(root, shape, device)
        ours = _tumorcam_loop(root, shape, device, compile_model=False)
        result = {"shape": shape, "seed_style": seed, "tumorcam": ours,
                  "speedup": round(ours["img_per_s"] / seed["img_per_s"], 2)}
        if args.compile:
            compiled = _tumorcam_loop(root, shape, device, compile_model=True)
            result["tumorcam_compiled"] = compiled
            result["speedup_compiled"] = round(compiled["img_per_s"] / seed["img_per_s"], 2)
    return result


def _write_random_prepared(root: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(0.3, 0.7, (2, n, 1, 1)) * size
    r = rng.uniform(0.05, 0.15, (n, 1, 1)) * size
    masks = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    images = rng.random((n, size, size), dtype=np.float32).astype(np.float16)
    arrays = {"images": images, "masks": masks, "labels": (1 + np.arange(n) % 3).astype(np.int8),
              "pids": np.array([f"P{i // 4}" for i in range(n)]), "file_ids": np.arange(1, n + 1)}
    for name, array in arrays.items():
        np.save(root / f"{name}.npy", array, allow_pickle=False)
    (root / "manifest.json").write_text(json.dumps({"source": "random benchmark data", "size": size}))
    (root / "splits.json").write_text(json.dumps({"train": list(range(1, n + 1)), "val": [], "test": []}))
    return root


class _SeedDataset(Dataset):
    """The seed's way: numpy slices, each resized on access."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, size: int) -> None:
        self.images, self.masks, self.size = images, masks, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        image = Image.fromarray(self.images[i].astype(np.float32), mode="F").resize((self.size, self.size), Image.BILINEAR)
        mask = Image.fromarray(self.masks[i].astype(np.uint8)).resize((self.size, self.size), Image.NEAREST)
        return (torch.from_numpy(np.array(image, np.float32))[None],
                torch.from_numpy(np.array(mask, np.float32))[None])


def _seed_loop(root: Path, shape: dict[str, int], device: torch.device) -> dict[str, Any]:
    data = load_prepared(root)
    loader = DataLoader(_SeedDataset(np.asarray(data.images), np.asarray(data.masks), shape["size"]),
                        batch_size=8, shuffle=True, drop_last=True)
    model = build_model(ModelConfig(encoder_weights="none")).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()

    def batches():
        while True:
            yield from loader

    def step(batch):
        images, masks = batch[0].to(device), batch[1].to(device)
        loss = loss_fn(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    img_per_s = _time_steps(step, batches(), 8, shape, device)
    return {"batch": 8, "precision": "fp32", "img_per_s": img_per_s}


def _tumorcam_loop(root: Path, shape: dict[str, int], device: torch.device, compile_model: bool) -> dict[str, Any]:
    data = load_prepared(root)
    split = load_split(data, data.indices("train"), shape["size"], device)
    model = build_model(ModelConfig(encoder_weights="none")).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_model else model
    step = TrainStep(net, make_optimizer(model, 1e-4, device), make_loss("bce"), device, amp=True,
                     channels_last=True, augment=True, generator=torch.Generator(device=device).manual_seed(0))
    batch = min(shape["batch"], len(split))

    def batches():
        epoch = 0
        while True:
            epoch += 1
            for index in epoch_batches(len(split), batch, 0, epoch, device):
                yield split.batch(index)

    model.train()
    img_per_s = _time_steps(lambda b: step(*b), batches(), batch, shape, device)
    return {"batch": batch, "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
            "augment": True, "compile": compile_model, "img_per_s": img_per_s}


def _time_steps(step, batches, batch: int, shape: dict[str, int], device: torch.device) -> float:
    it = iter(batches)
    for _ in range(shape["warmup"]):
        step(next(it))
    _sync(device)
    start = time.perf_counter()
    for _ in range(shape["steps"]):
        step(next(it))
    _sync(device)
    return round(shape["steps"] * batch / (time.perf_counter() - start), 1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
