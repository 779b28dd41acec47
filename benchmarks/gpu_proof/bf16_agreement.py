"""The bf16_agreement section: on the paper run's model, per method, target and layer, how far the bf16
maps are from the fp32 ones (Spearman, max |diff|) and what that does to the deletion/insertion AUCs."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

from gpu_proof.timebox import Recorder, clean

LAYERS = ("decoder.blocks.4", "encoder.layer4")  # the primary layer and the deepest encoder stage
SAME_BY_CONSTRUCTION = ("random", "edges")  # maps that do not depend on the model's precision
AGREE_SPEARMAN = 0.9  # bf16 agrees: mean Spearman >= this ...
AGREE_STANDARD_ERRORS = 0.25  # ... and |mean AUC difference| <= this many standard errors of the fp32 AUC
# None: the package's default (steps, ig_steps), every registered method, the explain config's targets
GPU_SIZES: dict[str, Any] = {"slices": 32, "batch": 32, "steps": None, "ig_steps": None, "game_batch": 512,
                             "methods": None, "targets": None}
SMOKE_SIZES: dict[str, Any] = {"slices": 2, "batch": 2, "steps": 4, "ig_steps": 4, "game_batch": 64,
                               "methods": ["gradcam", "saliency", "predicted-mask"], "targets": ["predicted-region"]}


def spearman_rows(a: Any, b: Any) -> Any:
    """Spearman's rho of each row pair: Pearson's r of the average ranks (ties share their mean rank).

    Args:
        a: values (N, P).
        b: values (N, P).

    Returns:
        rho (N,), NaN for a row where either side is constant.
    """
    import numpy as np
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, dtype=np.float64), axis=1)
    rb = rankdata(np.asarray(b, dtype=np.float64), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=1) / denominator, np.nan)


def auc_difference(fp32: Any, other: Any) -> dict[str, Any]:
    """Per-slice AUC differences other - fp32, NaN slices dropped.

    Args:
        fp32: the reference AUCs (N,).
        other: the compared AUCs (N,).

    Returns:
        n, the fp32 mean and its standard error, the mean, mean |.| and max |.| of the differences, and
        `diff_in_se` (|mean difference| in standard errors of the fp32 mean); None where undefined.
    """
    import numpy as np

    fp32, other = np.asarray(fp32, float), np.asarray(other, float)
    keep = np.isfinite(fp32) & np.isfinite(other)
    diff = other[keep] - fp32[keep]
    n = int(keep.sum())
    if n == 0:
        return {"n": 0, "fp32_mean": None, "diff_mean": None, "abs_diff_mean": None, "abs_diff_max": None,
                "fp32_se": None, "diff_in_se": None}
    se = float(np.std(fp32[keep], ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"n": n, "fp32_mean": float(fp32[keep].mean()), "diff_mean": float(diff.mean()),
            "abs_diff_mean": float(np.abs(diff).mean()), "abs_diff_max": float(np.abs(diff).max()), "fp32_se": se,
            "diff_in_se": float(abs(diff.mean()) / se) if se > 0 else None}


def _combos(methods: list[str], uses_layer: dict[str, bool], targets: list[str]) -> list[tuple[str, str, str | None]]:
    """(method, target, layer): Grad-CAM first (both layers), then the other layer methods at the primary
    layer, the layer-free methods, and the other layer methods at encoder.layer4."""
    layered = [m for m in methods if uses_layer[m]]
    free = [m for m in methods if not uses_layer[m]]
    first = [("gradcam", t, layer) for layer in LAYERS for t in targets] if "gradcam" in layered else []
    rest = [(m, t, LAYERS[0]) for m in layered if m != "gradcam" for t in targets]
    rest += [(m, t, None) for m in free for t in targets]
    rest += [(m, t, LAYERS[1]) for m in layered if m != "gradcam" for t in targets]
    return first + rest


def measure(record: Recorder, run: Path | None, prepared: Path, sizes: dict[str, Any], device: str) -> None:
    """The bf16_agreement step: `setup`, `not_compared`, one row per (method, target, layer), `summary`.

    The maps come from `tumorcam.explain`; the games are `PerturbationGame`s, one per score and
    precision replayed for every map (it takes the callable of the CPU bf16 proxy).

    Args:
        record: the step's results.
        run: the paper run's folder, or None for an untrained model.
        prepared: its prepared data (the val slices; random images where there is none).
        sizes: GPU_SIZES or SMOKE_SIZES.
        device: auto, cuda or cpu.
    """
    import numpy as np
    import torch

    import tumorcam
    from tumorcam.config import EvaluateConfig, ExplainConfig, ModelConfig
    from tumorcam.device import resolve_device, setup_backend
    from tumorcam.evaluate.faithfulness import TARGET_SCORES
    from tumorcam.evaluate.game import PerturbationGame

    dev = resolve_device(device)
    setup_backend(dev, seed=0, deterministic=False)
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is plain fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    explain_cfg, evaluate_cfg = ExplainConfig(), EvaluateConfig()
    steps = sizes["steps"] or evaluate_cfg.steps
    ig_steps = sizes["ig_steps"] or explain_cfg.ig_steps
    if run is not None:
        trained = tumorcam.Run.open(run, device=dev)
        model, size, what = trained.model("last"), trained.config.train.size, f"trained: {run.name}/unet_trained.pth"
    else:
        from tumorcam.models.unet import build_model

        model, size, what = build_model(ModelConfig(encoder_weights="none")).to(dev).eval(), 64 if device == "cpu" else 224, \
            "untrained (paper_run left no weights)"
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images, slices = _agreement_slices(prepared, sizes["slices"], size, dev)
    cuda = dev.type == "cuda"
    record.set("setup", {"model": what, "slices": slices, "size": size, "steps": steps, "ig_steps": ig_steps,
                         "schedule": evaluate_cfg.schedule, "baseline": "zero",
                         "bf16": "CUDA bf16 autocast (amp=True), as the package runs it" if cuda
                         else "CPU bf16 autocast around amp=False calls (a CPU proxy: the package runs fp32 on CPU)",
                         "fp32": "fp32, TF32 off"})

    def precision(bf16: bool) -> contextlib.AbstractContextManager:
        if bf16 and not cuda:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def maps_of(method: str, target: str, layer: str | None, bf16: bool) -> Any:
        parts = []
        for start in range(0, len(images), sizes["batch"]):
            batch = images[start:start + sizes["batch"]]
            with precision(bf16):
                parts.append(tumorcam.explain(model, batch, method=method, target=target, layer=layer, channel=0,
                                              batch_size=len(batch), ig_steps=ig_steps, seed=0,
                                              amp=bf16 and cuda).float())
        return torch.cat(parts)

    def model_bf16(x: torch.Tensor) -> torch.Tensor:
        with precision(True):
            return model(x)

    games: dict[tuple[str, bool], Any] = {}

    def game(score: str, bf16: bool) -> Any:
        if (score, bf16) not in games:
            games[score, bf16] = PerturbationGame(model_bf16 if bf16 and not cuda else model, images, steps=steps,
                                                  baseline="zero", score=score, schedule=evaluate_cfg.schedule,
                                                  batch_size=sizes["game_batch"], amp=bf16 and cuda)
        return games[score, bf16]

    methods = sizes["methods"] or list(dict.fromkeys(["gradcam", *explain_cfg.methods, "hirescam", "layercam"]))
    methods = [m for m in methods if m in tumorcam.METHODS]
    record.set("not_compared", {m: "does not depend on the model's precision" for m in methods if m in SAME_BY_CONSTRUCTION})
    methods = [m for m in methods if m not in SAME_BY_CONSTRUCTION]
    rows = []
    targets = sizes["targets"] or list(explain_cfg.targets)
    for method, target, layer in _combos(methods, {m: tumorcam.METHODS[m].uses_layer for m in methods}, targets):
        start = time.perf_counter()
        fp32, bf16 = maps_of(method, target, layer, False), maps_of(method, target, layer, True)
        flat = (fp32.flatten(1).cpu().numpy(), bf16.flatten(1).cpu().numpy())
        rho = spearman_rows(*flat)
        finite = rho[np.isfinite(rho)]
        diff = np.abs(flat[0] - flat[1]).max(axis=1)
        score = TARGET_SCORES.get(target, "mean-sigmoid")
        reference, both = game(score, False).curves(fp32), game(score, True).curves(bf16)
        fp32_maps_bf16_game = game(score, True).curves(fp32)
        row = {"method": method, "target": target, "layer": layer or "input", "score": score,
               "spearman": {"mean": finite.mean() if finite.size else None, "min": finite.min() if finite.size else None,
                            "p05": np.quantile(finite, 0.05) if finite.size else None, "n": int(finite.size),
                            "n_flat": int(rho.size - finite.size)},
               "max_abs_diff": {"mean": diff.mean(), "max": diff.max()},
               "auc_bf16_end_to_end": {c: auc_difference(getattr(reference, f"{c}_auc"), getattr(both, f"{c}_auc"))
                                       for c in ("deletion", "insertion")},
               "auc_bf16_maps_only": {c: auc_difference(getattr(fp32_maps_bf16_game, f"{c}_auc"),
                                                        getattr(both, f"{c}_auc")) for c in ("deletion", "insertion")}}
        row["agrees"] = _agrees(row)
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(clean(row))
        record.set("rows", rows)
    record.set("summary", _agreement_summary(rows))


def _agrees(row: dict[str, Any]) -> bool | None:
    """bf16 agrees with fp32: mean Spearman >= AGREE_SPEARMAN and, for both curves, the end-to-end mean AUC
    difference within AGREE_STANDARD_ERRORS standard errors of the fp32 mean AUC."""
    rho = row["spearman"]["mean"]
    if rho is None:
        return None
    within = [d["diff_in_se"] is None or d["diff_in_se"] <= AGREE_STANDARD_ERRORS
              for d in row["auc_bf16_end_to_end"].values()]
    return bool(rho >= AGREE_SPEARMAN and all(within))


def _agreement_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rhos = [(r["spearman"]["mean"], r) for r in rows if r["spearman"]["mean"] is not None]
    worst = min(rhos, key=lambda x: x[0])[1] if rhos else None
    return {"rows": len(rows), "agree": sum(bool(r["agrees"]) for r in rows),
            "disagree": [f"{r['method']} / {r['target']} / {r['layer']}" for r in rows if r["agrees"] is False],
            "worst_spearman": None if worst is None else {k: worst[k] for k in ("method", "target", "layer")}
            | {"mean": worst["spearman"]["mean"]},
            "rule": f"mean Spearman >= {AGREE_SPEARMAN} and |mean AUC difference| <= {AGREE_STANDARD_ERRORS} "
                    "standard errors of the fp32 mean AUC, both curves, end to end"}


def _agreement_slices(prepared: Path, n: int, size: int, device: Any) -> tuple[Any, Any]:
    """A seeded sample of n val slices of the prepared folder at `size` (random images when there is none)."""
    import numpy as np
    import torch

    if (prepared / "splits.json").is_file():
        from tumorcam.data.arrays import load_prepared
        from tumorcam.training.data import load_split

        data = load_prepared(prepared)
        rows = data.indices("val")
        rows = np.sort(np.random.default_rng(0).choice(rows, size=min(n, len(rows)), replace=False))
        images = load_split(data, rows, size, device).images.float()
        return images, {"split": "val", "file_ids": [int(data.file_ids[r]) for r in rows]}
    images = torch.rand((n, 1, size, size), generator=torch.Generator().manual_seed(0)).to(device)
    return images, {"split": None, "random_images": n}
