"""Reading an nnU-Net v2 checkpoint (fold_k/checkpoint_final.pth) without unpickling code.

nnU-Net's trainer saves a dict: `network_weights` (a state dict), `optimizer_state`,
`grad_scaler_state`, `logging` (lists of floats and numpy float64), `_best_ema` (numpy float64),
`current_epoch`, `init_args` (plans, configuration, fold, dataset_json, a torch.device),
`trainer_name` and `inference_allowed_mirroring_axes` (a tuple). Everything but the numpy scalars
is a type PyTorch's weights-only unpickler accepts; `read_checkpoint` allows exactly those numpy
types (`SAFE_GLOBALS`) and nothing else. A checkpoint that holds any other object is refused with
an error naming `trust_checkpoint`; only with `trust_checkpoint=True` is it unpickled in full, as
nnU-Net's own predictor does.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.errors import TumorcamError

REQUIRED_KEYS = ("network_weights", "trainer_name", "init_args")


def _safe_globals() -> list[Any]:
    """numpy scalars (under numpy 2's and numpy 1's module name) and dtypes, the only globals of an
    nnU-Net checkpoint beyond PyTorch's own."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
            np.dtype, *dtype_classes]


SAFE_GLOBALS = _safe_globals()


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> dict[str, Any]:
    """The checkpoint dict at `path` on the CPU: a weights-only load (numpy scalars allowed), or with
    `trust_checkpoint` a full unpickling. Refused checkpoints and files that are no nnU-Net checkpoint
    are one-line errors naming the file (and `trust_checkpoint` where it would help)."""
    path = Path(path)
    if not path.is_file():
        raise TumorcamError(f"checkpoint: {path}: no such file", param="checkpoint")
    if trust_checkpoint:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise TumorcamError(
                f"trust_checkpoint: {path} holds objects a weights-only load refuses ({_unsafe_names(path)}); "
                "load it with trust_checkpoint=True only if you trust its source (unpickling can run code)",
                param="trust_checkpoint") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise TumorcamError(f"checkpoint: {path}: not an nnU-Net v2 checkpoint (needs the keys "
                            f"{', '.join(REQUIRED_KEYS)})", param="checkpoint")
    return checkpoint


def _unsafe_names(path: Path) -> str:
    """The globals of the checkpoint outside the allowed ones, for the error message."""
    allowed = {f"{g.__module__}.{g.__qualname__}" if not isinstance(g, tuple) else g[1] for g in SAFE_GLOBALS}
    try:
        names = [name for name in torch.serialization.get_unsafe_globals_in_checkpoint(path) if name not in allowed]
    except Exception:  # an unreadable archive: the refusal itself is the message
        names = []
    return ", ".join(names) or "unknown objects"
