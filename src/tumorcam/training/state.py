"""The resume file `RUN/train_state.pth`: model and optimiser state, the epoch, the best
validation Dice. Tensors, numbers and strings only, so it loads with `weights_only=True`.

It holds the model weights too, so a crash between writing it and writing the exported
checkpoints (`unet_trained.pth`, `unet_best.pth`) can never pair one epoch's weights with
another epoch's optimiser state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tumorcam.errors import TumorcamError
from tumorcam.io import atomic_path

STATE_FILE = "train_state.pth"
STATE_VERSION = 1


@dataclass
class TrainState:
    """Where a run stands after `epoch` finished epochs."""

    epoch: int
    best_val_dice: float | None
    best_epoch: int | None
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def save_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
               best_val_dice: float | None, best_epoch: int | None) -> None:
    """Write the resume file atomically."""
    payload = {
        "version": STATE_VERSION,
        "epoch": int(epoch),
        "best_val_dice": None if best_val_dice is None else float(best_val_dice),
        "best_epoch": best_epoch,
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path) -> TrainState:
    """Read the resume file without unpickling code; a missing or foreign file is a clear error."""
    if not path.is_file():
        raise TumorcamError(f"resume: {path} does not exist; nothing to resume (train without resuming)", param="resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is a bad file
        raise TumorcamError(f"resume: {path} is not a readable training state ({type(exc).__name__})",
                            param="resume") from None
    keys = {"version", "epoch", "model", "optimizer"}
    if not isinstance(payload, dict) or not keys <= set(payload) or payload["version"] != STATE_VERSION:
        raise TumorcamError(f"resume: {path} is not a tumorcam training state (version {STATE_VERSION})", param="resume")
    return TrainState(epoch=int(payload["epoch"]), best_val_dice=payload.get("best_val_dice"),
                      best_epoch=payload.get("best_epoch"), model=payload["model"], optimizer=payload["optimizer"])
