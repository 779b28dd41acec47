"""The demo's 3-D network: a small MONAI U-Net trained on the synthetic volumes, so that a run on
volumes has a model that learned something to explain (`tumorcam run --volumes`).

`demo_unet` is the factory (`--model tumorcam.training.volumes:demo_unet`): MONAI's
`UNet(spatial_dims=3, in_channels=4, out_channels=1, channels=(8, 16, 32, 64), strides=(2, 2, 2),
num_res_units=1)`. `train_demo_unet` fits it on the train split of a prepared volume folder with
Adam and MONAI's `DiceCELoss` (sigmoid), seeded, and saves the state_dict as safetensors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_path

DEMO_MODEL = "tumorcam.training.volumes:demo_unet"
DEMO_CHANNELS = 4


def demo_unet(in_channels: int = DEMO_CHANNELS) -> nn.Module:
    """The demo's 3-D U-Net (one output channel, read with a sigmoid)."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=1, channels=(8, 16, 32, 64),
                strides=(2, 2, 2), num_res_units=1)


def train_demo_unet(data: str | Path, weights: str | Path, *, epochs: int = 40, batch_size: int = 4,
                    lr: float = 1e-2, seed: int = 0, device: torch.device | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `demo_unet` on the train split of the prepared volumes `data`; write its state_dict to
    `weights` (.safetensors, atomically); return the loss per epoch and the val Dice at the end."""
    from monai.losses import DiceCELoss
    from safetensors.torch import save_file

    from tumorcam.data.volumes import load_volumes
    from tumorcam.evaluate.metrics import dice_iou

    prepared = load_volumes(data)
    if len(prepared.channels) != DEMO_CHANNELS:
        raise TumorcamError(f"data {data}: the demo network reads {DEMO_CHANNELS} sequences, the data has "
                            f"{len(prepared.channels)}", param="data")
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model = demo_unet().to(device)
    images, masks = prepared.tensors(prepared.indices("train"))
    images, masks = images.to(device), masks.to(device)
    loss_fn = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            x, y = images[batch], masks[batch]
            flip = torch.rand(3, generator=generator) < 0.5  # one random flip per axis per batch
            axes = [2 + a for a in range(3) if flip[a]]
            if axes:
                x, y = x.flip(axes), y.flip(axes)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(images))
        if epoch % 10 == 9 or epoch == epochs - 1:
            log(f"epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f}")
    model.eval()
    val_images, val_masks = prepared.tensors(prepared.indices("val"))
    with torch.no_grad():
        predicted = model(val_images.to(device)) > 0
    val_dice, _ = dice_iou(predicted, val_masks.to(device) > 0.5)
    val_dice = val_dice.cpu()
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return {"epochs": epochs, "loss": losses, "val_dice_mean": float(np.mean(val_dice.numpy())),
            "val_cases": int(len(val_dice))}
