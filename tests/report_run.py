"""A small run folder in the documented shapes, for the report tests (no training: fast and known).

Maps are Gaussian bumps on each slice's tumour (their maxima are known), the model is an
untrained small U-Net, and the JSON files follow docs/training.md and docs/evaluate.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tumorcam.config import Config, ModelConfig, TrainConfig
from tumorcam.data.arrays import load_prepared
from tumorcam.io import save_npz, write_json
from tumorcam.metrics import summarise
from tumorcam.model import build_model, save_weights

SIZE = 64
METHODS = ("gradcam", "saliency", "random")
TARGETS = ("mean-logits",)
BASELINES = ("zero", "blur")
STEPS = 10
SECTIONS = ("history", "metrics", "explanations", "faithfulness", "localization", "sanity")


def _bumps(masks: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    n, s, _ = masks.shape
    yy, xx = np.mgrid[:s, :s]
    maps = np.empty((n, s, s), np.float32)
    for i, mask in enumerate(masks):
        cy, cx = np.argwhere(mask).mean(axis=0)
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (spread * s) ** 2))
        maps[i] = bump / bump.max()
    return maps


def _ci(mean: float) -> dict:
    return {"mean": mean, "ci_low": mean - 0.02, "ci_high": mean + 0.02, "n": 8}


def faithfulness_doc(n: int) -> dict:
    fractions = np.linspace(0, 1, STEPS + 1)
    results = []
    for baseline in BASELINES:
        for target in TARGETS:
            for method in METHODS:
                good = {"gradcam": 1.0, "saliency": 0.6, "random": 0.0}[method]
                deletion = 0.6 * np.exp(-fractions * (1 + 4 * good))
                insertion = 0.6 * (1 - np.exp(-fractions * (1 + 4 * good)))
                row = {"method": method, "target": target, "layer": "decoder.blocks.4" if method == "gradcam" else "input",
                       "model": "trained", "times_gt": False, "file": f"trained__{method}.npz", "baseline": baseline,
                       "random_reference": {"method": "random", "target": target, "layer": "input", "model": "trained",
                                            "times_gt": False, "file": "trained__random.npz"}}
                for game, curve in (("deletion", deletion), ("insertion", insertion)):
                    auc = float(np.trapezoid(curve, fractions))
                    summary = {**_ci(auc), "curve_mean": curve.tolist()}
                    if method != "random":
                        summary["vs_random"] = {"n": n, "mean_difference": -0.1, "share_a_lower": 0.9,
                                                "statistic": 1.0, "p_value": 0.004, "better_share": 0.9,
                                                "verdict": "better"}
                    row[game] = summary
                row["per_slice"] = {"deletion": [0.1] * n, "insertion": [0.5] * n}
                results.append(row)
    return {"split": "test", "size": SIZE, "n_slices": n, "steps": STEPS, "fractions": fractions.tolist(),
            "score": "mean-sigmoid", "baselines": list(BASELINES), "results": results}


def localization_doc(n: int) -> dict:
    results = []
    for method in METHODS:
        row = {"method": method, "target": "mean-logits", "layer": "input", "model": "trained", "times_gt": False,
               "file": f"trained__{method}.npz"}
        for metric, value in (("pointing_game", 0.9), ("energy_pointing_game", 0.5), ("top_iou", 0.3)):
            row[metric] = {**_ci(value if method != "random" else value / 3),
                           **({"vs_random": {"p_value": 0.01, "verdict": "better"}} if method != "random" else {})}
        results.append(row)
    return {"split": "test", "n_slices": n, "top_percent": 5.0, "results": results}


def sanity_doc() -> dict:
    stages = ["segmentation_head", "decoder.blocks.4", "decoder.blocks.3", "encoder.layer4"]
    results = []
    for method, drop in (("gradcam", 0.25), ("saliency", 0.3), ("edge-detector", 0.0)):
        spearman = [1 - drop * (k + 1) for k in range(len(stages))]
        results.append({"method": method, "target": "mean-logits", "layer": "decoder.blocks.4",
                        "spearman": spearman, "spearman_std": [0.1] * len(stages), "abs_spearman": spearman,
                        "ssim": [0.8 * v for v in spearman], "ssim_std": [0.1] * len(stages),
                        "final_spearman": spearman[-1], "passes": spearman[-1] < 0.5})
    return {"split": "test", "n_slices": 4, "stages": stages, "threshold": 0.5, "results": results}


def make_run(root: Path, prepared: Path, sections: tuple[str, ...] = SECTIONS, seed: int = 0) -> Path:
    """A run folder at `root` over the prepared folder `prepared` with the given sections written."""
    rng = np.random.default_rng(seed)
    run = root
    run.mkdir(parents=True, exist_ok=True)
    config = Config(preset="test", data=str(prepared), model=ModelConfig(encoder="resnet18", encoder_weights="none"),
                    train=TrainConfig(size=SIZE, epochs=3))
    config.save(run / "config.json")
    torch.manual_seed(seed)
    save_weights(build_model(config.model), run / "unet_trained.pth")
    data = load_prepared(prepared)
    rows = data.indices("test")
    file_ids = np.asarray(data.file_ids[rows], dtype=np.int64)
    masks = np.asarray(data.masks[rows])
    n = len(rows)
    if "history" in sections:
        write_json(run / "history.json", {"best_epoch": 3, "best_val_dice": 0.7, "epochs": [
            {"epoch": e, "loss": 1.0 / e, "val_dice": 0.2 * e + 0.1, "val_iou": 0.15 * e, "seconds": 1.0,
             "img_per_s": 10.0, "val_seconds": 0.1, "lr": 1e-3} for e in (1, 2, 3)]})
    if "metrics" in sections:
        dice = rng.uniform(0.5, 0.9, n)
        doc = summarise(dice, dice * 0.8, np.asarray(data.labels[rows]), np.asarray(data.pids[rows]), n_resamples=50)
        write_json(run / "metrics.json", {"split": "test", **doc})
    if "explanations" in sections:
        entries = []
        for model in ("trained", "untrained"):
            for method in METHODS:
                maps = rng.random((n, SIZE, SIZE)).astype(np.float32) if method == "random" else \
                    _bumps(masks, rng, 0.12 if model == "trained" else 0.45)
                layer = "decoder.blocks.4" if method == "gradcam" else "input"
                for times_gt in ((False, True) if method == "gradcam" else (False,)):
                    name = f"{model}__{method}{'-x-gt' if times_gt else ''}.npz"
                    save_npz(run / "explanations" / name, maps=(maps * masks if times_gt else maps).astype(np.float16),
                             file_ids=file_ids)
                    entries.append({"file": name, "method": method, "target": "mean-logits", "layer": layer,
                                    "model": model, "times_gt": times_gt})
        write_json(run / "explanations" / "index.json", {"split": "test", "size": SIZE, "entries": entries})
    if "faithfulness" in sections:
        write_json(run / "faithfulness.json", faithfulness_doc(n))
    if "localization" in sections:
        write_json(run / "localization.json", localization_doc(n))
    if "sanity" in sections:
        write_json(run / "sanity.json", sanity_doc())
    return run
