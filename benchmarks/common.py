"""What the benchmark sections share: the device set up the same way, and an untrained U-Net for inference."""

from __future__ import annotations

import torch

from tumorcam.config import ModelConfig
from tumorcam.models.unet import GrayUnet, build_model
from tumorcam.device import resolve_device, setup_backend


def inference_model(device_name: str) -> tuple[torch.device, GrayUnet]:
    """The device (seeded, cuDNN autotuning on CUDA) and a U-Net in eval mode on it (channels_last on CUDA)."""
    device = resolve_device(device_name)
    setup_backend(device, seed=0, deterministic=False)
    model = build_model(ModelConfig(encoder_weights="none")).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return device, model
