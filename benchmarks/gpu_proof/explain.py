"""The explain section: the seed's one-image Captum Grad-CAM against batched `tumorcam.explain`, bf16
and fp32, with the inference bound of each precision and the other layer methods in bf16."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gpu_proof.timebox import Recorder, peak_memory

GPU_SHAPE: dict[str, Any] = {"slices": 2048, "size": 224, "batch": 256, "loop_slices": 32, "method_batches": 4,
                             "inference_batches": 8}
SMOKE_SHAPE: dict[str, Any] = {"slices": 8, "size": 64, "batch": 4, "loop_slices": 2, "method_batches": 1,
                               "inference_batches": 2}


def measure(record: Recorder, shape: dict[str, Any], device: str) -> None:
    """The explain step: inference img/s, `seed_loop`, `tumorcam` (Grad-CAM per target and precision),
    `other_methods_bf16_maps_per_s`.

    Args:
        record: the step's results.
        shape: GPU_SHAPE or SMOKE_SHAPE (slices, size, batch, slices of the seed loop, batches per
            other method, batches of the inference bound).
        device: auto, cuda or cpu.
    """
    import torch
    from bench_explain import LAYER, OTHER_METHODS, _seed_loop
    from common import inference_model

    import tumorcam
    from tumorcam.device import autocast

    dev, model = inference_model(device)
    n, s, b = shape["slices"], shape["size"], shape["batch"]
    images = torch.rand((n, 1, s, s), generator=torch.Generator().manual_seed(0)).to(dev)
    if dev.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    batches = [images[i:i + b] for i in range(0, n, b)]
    cuda = dev.type == "cuda"
    record.set("shape", shape)
    record.set("layer", LAYER)
    record.set("precision_note", None if cuda else "CPU: amp=True is a no-op, so bf16 rows run fp32")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def rate(fn: Callable[[torch.Tensor], Any], parts: list[torch.Tensor]) -> float:
        fn(parts[0])  # warm-up (cuDNN autotuning of this shape)
        sync()
        start = time.perf_counter()
        for part in parts:
            fn(part)
        sync()
        return sum(p.shape[0] for p in parts) / (time.perf_counter() - start)

    for amp in (True, False):
        with torch.no_grad(), autocast(dev, amp):
            inference = rate(model, batches[:1] * shape["inference_batches"])
        record.set(f"inference_img_per_s_{'bf16' if amp else 'fp32'}", round(inference, 1))
    peak = peak_memory(dev)
    seed_rate = _seed_loop(model, images[:shape["loop_slices"]], dev)
    record.set("seed_loop", {"maps_per_s": round(seed_rate, 2), "precision": "fp32", "batch": 1,
                             "method": "captum LayerGradCam on the mean-logits wrapper", "peak_mib": peak()})
    results = {}
    for amp in (True, False):
        for target in ("mean-logits", "predicted-region"):
            peak = peak_memory(dev)
            maps_per_s = rate(lambda x, t=target, a=amp: tumorcam.explain(model, x, method="gradcam", target=t,
                                                                          layer=LAYER, channel=0, batch_size=len(x),
                                                                          amp=a), batches)
            key = f"gradcam_{target}_{'bf16' if amp else 'fp32'}"
            inference = record.data[f"inference_img_per_s_{'bf16' if amp else 'fp32'}"]
            results[key] = {"maps_per_s": round(maps_per_s, 1), "speedup_vs_seed": round(maps_per_s / seed_rate, 1),
                            "ratio_to_inference": round(maps_per_s / inference, 3), "peak_mib": peak()}
            record.set("tumorcam", results)
    others = {}
    for method in OTHER_METHODS:
        others[method] = round(rate(lambda x, m=method: tumorcam.explain(model, x, method=m, target="mean-logits",
                                                                         layer=LAYER, channel=0, batch_size=len(x),
                                                                         amp=True), batches[:shape["method_batches"]]), 1)
        record.set("other_methods_bf16_maps_per_s", others)
