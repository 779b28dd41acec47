"""A small run folder in the documented shapes, for the report tests (no training: fast and known).

Maps are Gaussian bumps on each slice's tumour (their maxima are known), the model is an
untrained small U-Net, and the JSON files follow docs/training.md and docs/evaluate.md: the
evaluation files are patient-level, every comparison with a raw p, a Holm-adjusted p (family
"primary" for the primary row's four tests (vs random and vs the mask), "exploratory" for every other) and a
verdict read from the adjusted p. Their numbers are made up (12 patients, 24 slices) and chosen so
that raw and adjusted p differ and every verdict appears.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.config import Config, ModelConfig, TrainConfig
from tumorcam.data.arrays import load_prepared
from tumorcam.evaluate.stats import holm
from tumorcam.io import save_npz, write_json
from tumorcam.evaluate.metrics import summarize
from tumorcam.runs.segmentation import write_examples
from tumorcam.models.unet import build_model, save_weights

SIZE = 64
METHODS = ("gradcam", "saliency", "random", "predicted-mask")
CONTROLS = ("random", "predicted-mask")
TARGET = "predicted-region"
BASELINES = ("zero", "rise")
STEPS = 8
ALPHA = 0.05
PATIENTS, SLICES = 12, 24  # of the evaluation files
PRIMARY = {"method": "gradcam", "target": TARGET, "layer": "decoder.blocks.4", "baseline": "zero"}
SECTIONS = ("history", "metrics", "explanations", "faithfulness", "localization", "sanity")
GOOD = {"gradcam": 1.0, "saliency": 0.6, "random": 0.0, "predicted-mask": 0.8}  # how fast a curve falls/rises
# Raw p-values of the comparisons, by (method, baseline, game, reference); the primary's four are
# 0.0123, 0.2 (vs random) and 0.001, 0.002 (vs mask): Holm over four gives deletion vs random 0.0246
# ("better"), insertion vs random 0.2 ("not shown to differ"): headline "unsupported".
P_VALUES = {
    ("gradcam", "zero", "deletion", "random"): 0.0123, ("gradcam", "zero", "insertion", "random"): 0.2,
    ("gradcam", "zero", "deletion", "mask"): 0.001, ("gradcam", "zero", "insertion", "mask"): 0.002,
    ("gradcam", "rise", "deletion", "random"): 0.003, ("gradcam", "rise", "insertion", "random"): 0.004,
    ("gradcam", "rise", "deletion", "mask"): 0.3, ("gradcam", "rise", "insertion", "mask"): 0.4,
    ("predicted-mask", "zero", "deletion", "random"): 0.0005, ("predicted-mask", "zero", "insertion", "random"): 0.0006,
}
OTHER_P = 0.6  # every comparison not listed above


def _bumps(masks: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    n, s, _ = masks.shape
    yy, xx = np.mgrid[:s, :s]
    maps = np.empty((n, s, s), np.float32)
    for i, mask in enumerate(masks):
        cy, cx = np.argwhere(mask).mean(axis=0)
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (spread * s) ** 2))
        maps[i] = bump / bump.max()
    return maps


def _entry(method: str, model: str = "trained", times_gt: bool = False) -> dict[str, Any]:
    return {"method": method, "target": TARGET, "layer": "decoder.blocks.4" if method == "gradcam" else "input",
            "model": model, "times_gt": times_gt, "control": method in CONTROLS,
            "file": f"{model}__{method}{'-x-gt' if times_gt else ''}.npz"}


def _summary(mean: float) -> dict[str, Any]:
    return {"mean": mean, "ci_low": mean - 0.02, "ci_high": mean + 0.02, "unit": "patient",
            "n_patients": PATIENTS, "n_slices": SLICES}


def _comparison(p: float, lower_is_better: bool, test: str = "wilcoxon") -> dict[str, Any]:
    estimate = -0.1 if lower_is_better else 0.1  # the method is ahead of its reference
    return {"test": test, "method": "exact", "statistic": 3.0, "p_value": p, "p_adjusted": None, "family": None,
            "verdict": None, "n_pairs": PATIENTS, "n_patients": PATIENTS, "n_slices": SLICES, "estimate": estimate,
            "estimate_ci_low": estimate - 0.05, "estimate_ci_high": estimate + 0.05, "better_share": 0.75, "lower_is_better": lower_is_better}


def _adjust(rows: list[dict[str, Any]], metrics: tuple[str, ...], primary: dict[str, Any] | None) -> None:
    """Holm per family as the evaluation does: the primary row's four tests (vs_random and vs_mask on
    each metric), then all the others."""
    families: dict[str, list[dict[str, Any]]] = {"primary": [], "exploratory": []}
    for row in rows:
        is_primary = primary is not None and all(row.get(k) == v for k, v in primary.items()) and not row["times_gt"]
        for metric in metrics:
            for key in ("vs_random", "vs_mask"):
                test = row[metric].get(key)
                if test is not None:
                    families["primary" if is_primary else "exploratory"].append(test)
    for family, tests in families.items():
        for test, adjusted in zip(tests, holm([t["p_value"] for t in tests])):
            test.update(p_adjusted=adjusted, family=family,
                        verdict="better" if adjusted < ALPHA else "not shown to differ")


def log_fractions(steps: int = STEPS) -> np.ndarray:
    """The "log" schedule: 0, then 1e-3^((K-k)/(K-1)) for k = 1..K."""
    k = np.arange(1, steps + 1)
    return np.concatenate([[0.0], 1e-3 ** ((steps - k) / (steps - 1))])


def faithfulness_doc() -> dict[str, Any]:
    t = np.linspace(0, 1, STEPS + 1)
    results = []
    for baseline in BASELINES:
        for method in METHODS:
            row = {**_entry(method), "baseline": baseline, "score": "predicted-region",
                   "random_reference": None if method == "random" else _entry("random"),
                   "mask_reference": None if method in CONTROLS else _entry("predicted-mask")}
            rate = 1 + 4 * GOOD[method]
            for game, curve in (("deletion", 0.6 * np.exp(-t * rate)), ("insertion", 0.6 * (1 - np.exp(-t * rate)))):
                summary = {**_summary(float(np.trapezoid(curve, t))), "curve_mean": curve.tolist()}
                for name, reference in (("random", row["random_reference"]), ("mask", row["mask_reference"])):
                    summary[f"vs_{name}"] = None if reference is None else _comparison(
                        P_VALUES.get((method, baseline, game, name), OTHER_P), lower_is_better=game == "deletion")
                row[game] = summary
            row["per_slice"] = {"deletion": [0.1] * SLICES, "insertion": [0.5] * SLICES}
            results.append(row)
    _adjust(results, ("deletion", "insertion"), PRIMARY)
    return {"split": "test", "size": SIZE, "n_patients": PATIENTS, "n_slices": SLICES, "primary": dict(PRIMARY),
            "alpha": ALPHA, "steps": STEPS, "schedule": "log", "fractions": log_fractions().tolist(),
            "score": "target", "baselines": list(BASELINES), "file_ids": list(range(1, SLICES + 1)),
            "patient_ids": [f"P{i // 2:03d}" for i in range(SLICES)], "results": results}


def localization_doc() -> dict[str, Any]:
    tests = {"pointing_game": "wilcoxon", "energy_pointing_game": "wilcoxon", "top_iou": "wilcoxon"}
    results = []
    for model in ("trained", "untrained"):
        for method in METHODS if model == "trained" else ("gradcam", "random"):
            row = {**_entry(method, model),
                   "random_reference": None if method == "random" else _entry("random", model),
                   "mask_reference": None if method in CONTROLS or model == "untrained" else _entry("predicted-mask")}
            for metric, value in (("pointing_game", 0.9), ("energy_pointing_game", 0.5), ("top_iou", 0.3)):
                summary = _summary(value * (0.3 + 0.7 * GOOD[method]))
                for name in ("random", "mask"):
                    summary[f"vs_{name}"] = None if row[f"{name}_reference"] is None else _comparison(
                        0.001 if name == "random" else 0.5, lower_is_better=False, test=tests[metric])
                row[metric] = summary
            results.append(row)
    _adjust(results, tuple(tests), None)
    return {"split": "test", "n_patients": PATIENTS, "n_slices": SLICES, "alpha": ALPHA, "tests": tests,
            "top_percent": 5.0, "results": results}


def sanity_doc() -> dict[str, Any]:
    stages = ["segmentation_head", "decoder.blocks.4", "decoder.blocks.3", "encoder.layer4"]
    results = []
    for method, drop in (("gradcam", 0.25), ("saliency", 0.3), ("predicted-mask", 0.2), ("edges", 0.0)):
        similarity = [1 - drop * (k + 1) for k in range(len(stages))]
        mean_abs = [abs(v) for v in similarity]
        ssim = [0.8 * v for v in similarity]
        results.append({"method": method, "target": TARGET, "layer": "decoder.blocks.4" if method == "gradcam" else "input",
                        "spearman": similarity, "spearman_std": [0.1] * len(stages), "mean_abs_spearman": mean_abs,
                        "ssim": ssim, "ssim_std": [0.1] * len(stages), "n_compared": [4, 4, 4, 3],
                        "final_spearman": similarity[-1], "final_mean_abs_spearman": mean_abs[-1],
                        "final_ssim": ssim[-1], "passes": mean_abs[-1] < 0.5 and ssim[-1] < 0.5})
    return {"split": "test", "n_slices": 4, "stages": stages, "threshold": 0.5,
            "criterion": "fails when, for the fully randomised model, the mean |Spearman rho| or the mean SSIM "
                         "is >= threshold",
            "threshold_source": "this project's convention", "results": results}


def make_run(root: Path, prepared: Path, sections: tuple[str, ...] = SECTIONS, seed: int = 0) -> Path:
    """A run folder at `root` over the prepared folder `prepared` with the given sections written."""
    rng = np.random.default_rng(seed)
    run = root
    run.mkdir(parents=True, exist_ok=True)
    config = Config(preset="test", data=str(prepared), model=ModelConfig(encoder="resnet18", encoder_weights="none"),
                    train=TrainConfig(size=SIZE, epochs=3))
    config.save(run / "config.json")
    torch.manual_seed(seed)
    model = build_model(config.model)
    save_weights(model, run / "unet_trained.pth")
    data = load_prepared(prepared)
    write_examples(run, model, data, SIZE, torch.device("cpu"), "unet_trained.pth")  # Figure 5's predicted masks
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
        doc = summarize(dice, dice * 0.8, np.asarray(data.labels[rows]), np.asarray(data.pids[rows]), n_resamples=50)
        write_json(run / "metrics.json", {"split": "test", **doc})
    if "explanations" in sections:
        entries = []
        for model in ("trained", "untrained"):
            for method in METHODS:
                if method == "random":
                    maps = rng.random((n, SIZE, SIZE)).astype(np.float32)
                elif method == "predicted-mask":
                    maps = masks.astype(np.float32)
                else:
                    maps = _bumps(masks, rng, 0.12 if model == "trained" else 0.45)
                for times_gt in ((False, True) if method == "gradcam" else (False,)):
                    entry = {**_entry(method, model, times_gt), "weights_sha256": "0" * 64}
                    save_npz(run / "explanations" / entry["file"],
                             maps=(maps * masks if times_gt else maps).astype(np.float16), file_ids=file_ids)
                    entries.append(entry)
        write_json(run / "explanations" / "index.json",
                   {"split": "test", "size": SIZE, "weights_sha256": "0" * 64, "entries": entries})
    if "faithfulness" in sections:
        write_json(run / "faithfulness.json", faithfulness_doc())
    if "localization" in sections:
        write_json(run / "localization.json", localization_doc())
    if "sanity" in sections:
        write_json(run / "sanity.json", sanity_doc())
    return run
