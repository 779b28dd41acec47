"""The paper_run section: the `paper` preset through the `tumorcam` CLI on the real slices (data,
prepare, train as many epochs as the budget allows, explain, evaluate), and summaries of its files."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

from gpu_proof.slices import data_step, is_pack
from gpu_proof.timebox import RUN_FILES, TAR_NAME, Context, Outcome, Recorder

SMOKE_CONFIG = {  # RUN/config.json in smoke mode, for the keys it has: a layer method, a layer-free one, the two references
    "explain": {"slices_per_patient": 1, "ig_steps": 4, "batch_size": 8, "targets": ["predicted-region"],
                "methods": ["gradcam", "saliency", "random", "predicted-mask"]},
    "evaluate": {"steps": 4, "bootstrap": 50, "sanity_slices": 1},
}


def _cli(record: Recorder, argv: list[str]) -> None:
    """One `tumorcam` command, in-process (the child already has the package imported)."""
    from tumorcam.cli import main as tumorcam

    record.set("argv", ["tumorcam", *argv])
    try:
        tumorcam(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    record.set("exit_code", code)
    if code:
        raise SystemExit(code)


def run(ctx: Context) -> None:
    """The paper_run steps, in the parent: each CLI command in a time-boxed child, the summaries in
    `ctx.report["paper_run"]`; what cannot run is listed under `skipped`.

    Args:
        ctx: the proof run.
    """
    section = ctx.report["paper_run"]
    section.update({"preset": "paper", "encoder_weights": "none", "split": "val"})
    png = ctx.work / "slices"
    if ctx.smoke:
        source = None
    elif ctx.data is not None and is_pack(ctx.data):
        source = ctx.data
    else:
        source, png = None, ctx.data
        section["data"] = {"source": str(ctx.data), "pack": False}
    if ctx.smoke or source is not None:
        outcome = ctx.step("paper_run/data", data_step, {"source": source, "dest": png})
        if outcome is None or outcome.status != "ok":
            return ctx.skip("paper_run", "no slices to prepare")
        section["data"] = {"pack": source is not None, **outcome.result.get("info", {})}
    if png is None or not (png / "images").is_dir():
        return ctx.skip("paper_run", f"--data {png}: no images/ folder (give a PNG folder or a pack of one)")

    argv = ["data", "prepare", str(png), "--out", str(ctx.prepared)] + (["--size", "64"] if ctx.smoke else [])
    outcome = ctx.step("paper_run/prepare", _cli, {"argv": argv})
    if outcome is None or outcome.status != "ok":
        return ctx.skip("paper_run", "prepare did not finish")
    section["prepare"] = _prepared_summary(ctx.prepared, outcome.seconds)
    ctx.write()

    _paper_train(ctx, section)
    ctx.write()
    if not (ctx.run_dir / "unet_trained.pth").is_file():
        return ctx.skip("paper_run/explain+evaluate", "no trained weights")
    if ctx.smoke:
        section["smoke_config"] = _shrink_config(ctx.run_dir / "config.json")

    outcome = ctx.step("paper_run/explain", _cli, {"argv": ["explain", str(ctx.run_dir), "--split", "val"]})
    section["explain"] = _index_summary(ctx.run_dir, outcome)
    ctx.write()
    argv = ["evaluate", str(ctx.run_dir), "--segmentation", "--faithfulness", "--localization", "--sanity", "--split", "val"]
    outcome = ctx.step("paper_run/evaluate", _cli, {"argv": argv})
    section["evaluate"] = {"seconds": None if outcome is None else round(outcome.seconds, 1),
                           "status": "skipped" if outcome is None else outcome.status,
                           "files": [n for n in RUN_FILES if (ctx.run_dir / n).is_file()]}
    section["val_dice"] = _val_dice(ctx.run_dir)
    section["faithfulness"] = _faithfulness_summary(ctx.run_dir / "faithfulness.json")
    section["sanity"] = _sanity_summary(ctx.run_dir / "sanity.json")
    section["jsons"] = TAR_NAME
    ctx.archive()


def _paper_train(ctx: Context, section: dict[str, Any]) -> None:
    """Train one epoch, time it, then resume up to as many epochs as the training budget allows."""
    from tumorcam.config import preset

    max_epochs = ctx.max_epochs or (2 if ctx.smoke else preset("paper").train.epochs)
    budget, why = ctx.clock.allot("paper_run/train", ctx.train_budget_s)
    train: dict[str, Any] = {"budget_s": None if budget is None else round(budget, 1), "max_epochs": max_epochs,
                             "train_budget_s_asked": ctx.train_budget_s}
    section["train"] = train
    if budget is None:
        return ctx.skip("paper_run/train", why)
    smoke = ["--size", "32", "--batch-size", "4", "--device", "cpu"] if ctx.smoke else []
    argv = ["train", "--data", str(ctx.prepared), "--out", str(ctx.run_dir), "--preset", "paper",
            "--encoder-weights", "none", "--epochs", "1", *smoke]
    start = time.time()
    first = ctx.step("paper_run/train", _cli, {"argv": argv}, cap=budget)
    rows = _history(ctx.run_dir)
    if first is None or first.status != "ok" or not rows:
        train.update(_train_summary(rows, time.time() - start))
        return
    per_epoch = (rows[-1].get("seconds") or 0) + (rows[-1].get("val_seconds") or 0)
    startup = max(0.0, first.seconds - per_epoch)
    left = budget - (time.time() - start)
    more = int(0.9 * (left - startup) / per_epoch) if per_epoch > 0 else 0
    epochs = max(1, min(max_epochs, 1 + more))
    train.update({"first_call_s": round(first.seconds, 1), "startup_s": round(startup, 1), "planned_epochs": epochs})
    if epochs > 1:
        argv = ["train", "--out", str(ctx.run_dir), "--resume", "--epochs", str(epochs), *smoke[-2:]]
        ctx.step("paper_run/train", _cli, {"argv": argv}, cap=max(left, 1.0), label="paper_run/train_resume")
    train.update(_train_summary(_history(ctx.run_dir), time.time() - start))
    if train["epochs"] < epochs:
        ctx.skip("paper_run/train", f"{train['epochs']} of {epochs} planned epochs finished inside the budget")


def _history(run: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((run / "history.json").read_text()).get("epochs", []))
    except (OSError, ValueError, AttributeError):
        return []


def _train_summary(rows: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    import numpy as np

    steady = rows[1:] or rows  # the first epoch pays cuDNN autotuning and warm-up
    median = (lambda key: float(np.median([r[key] for r in steady if r.get(key) is not None]))
              if any(r.get(key) is not None for r in steady) else None)
    return {"epochs": len(rows), "wall_s": round(wall, 1), "s_per_epoch": median("seconds"),
            "val_s_per_epoch": median("val_seconds"), "img_per_s": median("img_per_s"),
            "first_epoch_s": rows[0].get("seconds") if rows else None,
            "history": [{k: r.get(k) for k in ("epoch", "loss", "val_dice", "seconds")} for r in rows]}


def _prepared_summary(prepared: Path, seconds: float) -> dict[str, Any]:
    summary: dict[str, Any] = {"seconds": round(seconds, 1)}
    with contextlib.suppress(OSError, ValueError):
        manifest = json.loads((prepared / "manifest.json").read_text())
        summary.update({k: manifest.get(k) for k in ("count", "patients", "size")})
        summary["splits"] = manifest.get("splits", {}).get("counts")
        summary["split_method"] = manifest.get("splits", {}).get("method")
    return summary


def _shrink_config(path: Path) -> dict[str, Any]:
    """Smoke mode: smaller explain/evaluate settings in RUN/config.json, for the keys it has."""
    config = json.loads(path.read_text())
    changed = {}
    for section, values in SMOKE_CONFIG.items():
        for key, value in values.items():
            if key in config.get(section, {}):
                config[section][key] = value
                changed[f"{section}.{key}"] = value
    path.write_text(json.dumps(config, indent=2))
    return changed


def _index_summary(run: Path, outcome: Outcome | None) -> dict[str, Any]:
    summary: dict[str, Any] = {"status": "skipped" if outcome is None else outcome.status,
                               "seconds": None if outcome is None else round(outcome.seconds, 1)}
    with contextlib.suppress(OSError, ValueError, AttributeError):
        index = json.loads((run / "explanations" / "index.json").read_text())
        summary.update({"maps": len(index.get("entries", [])), "n_slices": index.get("n_slices"),
                        "n_patients": index.get("n_patients"), "size": index.get("size")})
    return summary


def _val_dice(run: Path) -> dict[str, Any]:
    """Overall and per-class val Dice from metrics.json (evaluate --segmentation), else history's best."""
    try:
        doc = json.loads((run / "metrics.json").read_text())
        overall = doc["overall"]
        return {"source": "metrics.json", "split": doc.get("split"), "n": overall.get("n"),
                "overall": overall["dice"], "iou": overall.get("iou"),
                "per_class": {name: c["dice"] for name, c in doc.get("per_class", {}).items()}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        history = json.loads((run / "history.json").read_text())
        return {"source": "history.json (metrics.json missing)", "overall": {"mean": history.get("best_val_dice")},
                "best_epoch": history.get("best_epoch"), "per_class": None}
    except (OSError, ValueError, AttributeError):
        return {"source": None}


def _faithfulness_summary(path: Path) -> list[dict[str, Any]] | None:
    """One line per faithfulness.json row: AUC means and verdicts against the random map."""
    try:
        doc = json.loads(path.read_text())
        rows = []
        for row in doc["results"]:
            line = {k: row.get(k) for k in ("method", "target", "layer", "model", "baseline", "times_gt")}
            for curve in ("deletion", "insertion"):
                metric = row.get(curve) or {}
                line[curve] = {"mean": metric.get("mean"),
                               "vs_random": (metric.get("vs_random") or {}).get("verdict")}
            rows.append(line)
        return rows
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _sanity_summary(path: Path) -> list[dict[str, Any]] | None:
    try:
        doc = json.loads(path.read_text())
        keys = ("method", "target", "layer", "mean_abs_spearman", "final_spearman", "ssim", "passes")
        return [{k: row.get(k) for k in keys if k in row} for row in doc["results"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
