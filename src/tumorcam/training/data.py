"""A split of a prepared folder held on the training device, resized once to the training size.

Images are stored as float16 in [0, 1] and masks as uint8, so a split of the real set at 224x224
(about 2,400 slices) takes about 360 MB on a GPU. Batches are index tensors into these arrays:
no DataLoader, no worker processes, no host-to-device copy per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tumorcam.data.arrays import CHUNK, PreparedData


@dataclass
class DeviceSplit:
    """Images (N,1,S,S) float16 and masks (N,1,S,S) uint8 on one device, with their rows' metadata."""

    images: torch.Tensor
    masks: torch.Tensor
    rows: np.ndarray  # row indices into the prepared folder

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and masks of `index` as float32 (B,1,S,S)."""
        return self.images[index].float(), self.masks[index].float()


def load_split(data: PreparedData, rows: np.ndarray, size: int, device: torch.device) -> DeviceSplit:
    """Move `rows` of `data` to `device`, resizing there (images bilinear, masks nearest)."""
    n = len(rows)
    images = torch.empty((n, 1, size, size), dtype=torch.float16, device=device)
    masks = torch.empty((n, 1, size, size), dtype=torch.uint8, device=device)
    for start in range(0, n, CHUNK):
        part = rows[start:start + CHUNK]
        img, msk = data.tensors(part)  # stored size, CPU float32
        img, msk = img.to(device, non_blocking=True), msk.to(device, non_blocking=True)
        if size != img.shape[-1]:
            img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
            msk = F.interpolate(msk, size=(size, size), mode="nearest")
        images[start:start + len(part)] = img.half()
        masks[start:start + len(part)] = msk.to(torch.uint8)
    return DeviceSplit(images, masks, np.asarray(rows))


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, device: torch.device,
                  rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Shuffled index batches of one epoch for one rank, the same order on every run.

    The permutation depends only on (seed, epoch), so every rank draws the same one and takes
    its share `perm[rank::world_size]` after padding to a multiple of `world_size` (as
    `DistributedSampler` does). A last partial batch is dropped when there is at least one
    full batch, which keeps batch shapes fixed (BatchNorm, torch.compile).
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=generator)
    if world_size > 1:
        padded = -(-n // world_size) * world_size
        perm = torch.cat([perm, perm[: padded - n]])[rank::world_size]
    per_rank = len(perm)
    full = per_rank // batch_size
    count = full if full > 0 else 1
    perm = perm.to(device)
    for b in range(count):
        yield perm[b * batch_size:(b + 1) * batch_size]


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> int:
    """Number of batches `epoch_batches` yields per rank."""
    per_rank = -(-n // world_size)
    return max(1, per_rank // batch_size)
