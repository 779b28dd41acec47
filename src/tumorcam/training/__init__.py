"""Training: `train(config, out, resume=False)` (the loop, `loop`) and its parts: on-device data
and augmentation, loss, step, state, DDP (`distributed`)."""

from tumorcam.training.loop import train

__all__ = ["train"]
