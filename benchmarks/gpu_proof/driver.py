"""The time-boxed run: every section in order, each step in a child under its time box, the report
rewritten to OUT/gpu_proof.json after every step."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gpu_proof import bf16_agreement, environment, explain, faithfulness, nnunet, paper_run, training
from gpu_proof.summary import summary_lines
from gpu_proof.timebox import JSON_NAME, ROOT, Clock, Context, Step, say

STEPS = ("environment", "paper_run/data", "paper_run/prepare", "paper_run/train", "paper_run/explain",
         "paper_run/evaluate", "bf16_agreement", "training", "explain", "faithfulness", "nnunet", "training_compiled")
GPU_STEPS = {
    "environment": Step(60, 15, 5), "paper_run/data": Step(90, 15, 5), "paper_run/prepare": Step(120, 30, 10),
    "paper_run/train": Step(0, 60, 30),  # cap: the training budget
    "paper_run/explain": Step(180, 60, 20), "paper_run/evaluate": Step(300, 120, 30),
    "bf16_agreement": Step(150, 60, 20), "training": Step(120, 45, 20), "explain": Step(90, 30, 15),
    "faithfulness": Step(90, 30, 15), "nnunet": Step(180, 30, 45), "training_compiled": Step(240, 0, 60),
}
SMOKE_STEPS = {name: Step(0 if name == "paper_run/train" else 240, 5, 1) for name in STEPS}
PREIMPORT = ("torch", "numpy", "scipy.stats", "PIL.Image", "segmentation_models_pytorch", "captum.attr",
             "tumorcam.cli", "tumorcam.training", "tumorcam.explain", "tumorcam.runs.explain",
             "tumorcam.evaluate.faithfulness", "tumorcam.runs.segmentation", "common", "bench_train",
             "bench_explain", "bench_faithfulness")


def run(args: argparse.Namespace) -> int:
    """Every section within the deadline; writes OUT/gpu_proof.json and OUT/paper_run_jsons.tar.gz.

    Args:
        args: the options of `gpu_proof run` (see `gpu_proof.__main__`).

    Returns:
        0 (what failed or did not fit is listed under `skipped`).
    """
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # is_available() without initialising CUDA
    started = args.started or time.time()
    deadline = args.deadline or started + args.budget_s
    out = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_proof-"))
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    install = json.loads(args.install_report.read_text()) if args.install_report and args.install_report.is_file() else None
    report: dict[str, Any] = {
        "_started": started, "smoke": args.smoke, "budget_s": round(deadline - started, 1),
        "train_budget_s": args.train_budget_s, "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "order": list(STEPS), "stages": {}, "skipped": [],
        "environment": {}, "paper_run": {}, "bf16_agreement": {}, "training": {}, "explain": {}, "faithfulness": {},
        "nnunet": {},
    }
    report["environment"]["install"] = {"report": install, "seconds_before_python": round(time.time() - started, 1)}
    data = None if args.smoke else (args.data or _default_data())
    ctx = Context(smoke=args.smoke, out=out, work=work, logs=logs, clock=Clock(deadline, SMOKE_STEPS if args.smoke else GPU_STEPS),
                  data=data, train_budget_s=args.train_budget_s, max_epochs=args.max_epochs, report=report)
    say(f"start: budget {deadline - time.time():.0f} s left, out {out}, work {work}, smoke {args.smoke}")
    report["environment"]["preimport"] = _preimport()
    try:
        outcome = ctx.step("environment", environment.measure, {"smoke": args.smoke})
        if outcome is not None and outcome.status == "error" and not args.smoke:
            ctx.start_method = "spawn"  # CUDA failed in a forked child: fresh interpreters from here on
            outcome = ctx.step("environment", environment.measure, {"smoke": args.smoke}, label="environment_spawn")
        report["start_method"] = ctx.start_method
        if outcome:
            report["environment"].update(outcome.result)
        ctx.write()
        try:
            paper_run.run(ctx)
        except Exception as exc:  # noqa: BLE001 - the later stages still run
            ctx.skip("paper_run", f"failed in the parent: {type(exc).__name__}: {exc}"[:500])
        ctx.write()
        for name, fn, kwargs in _later_steps(ctx):
            outcome = ctx.step(name, fn, kwargs)
            if outcome is not None:
                section = "training" if name == "training_compiled" else name
                report[section].update(outcome.result)
            ctx.write()
    finally:
        ctx.archive()
        ctx.write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    say(f"done in {time.time() - started:.0f} s: {out / JSON_NAME}, {len(report['skipped'])} skipped")
    for line in summary_lines(report):
        print(line)
    return 0


def _default_data() -> Path:
    return ROOT / ".data" / "figshare-png256-j2k"


def _preimport() -> dict[str, str]:
    """Import the libraries once in the parent, so forked steps start without importing them
    (the parent never initialises CUDA: a forked child could not use it then)."""
    failed = {}
    for name in PREIMPORT:
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - the steps that need it report it
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    return failed


def _later_steps(ctx: Context) -> Iterator[tuple[str, Callable[..., None], dict[str, Any]]]:
    device = "cpu" if ctx.smoke else "auto"
    weights = ctx.run_dir / "unet_trained.pth"
    yield "bf16_agreement", bf16_agreement.measure, {
        "run": ctx.run_dir if weights.is_file() else None, "prepared": ctx.prepared, "device": device,
        "sizes": bf16_agreement.SMOKE_SIZES if ctx.smoke else bf16_agreement.GPU_SIZES}
    shape = training.SMOKE_SHAPE if ctx.smoke else training.GPU_SHAPE
    yield "training", training.measure, {"shape": shape, "device": device, "compiled": False}
    yield "explain", explain.measure, {"shape": explain.SMOKE_SHAPE if ctx.smoke else explain.GPU_SHAPE, "device": device}
    yield "faithfulness", faithfulness.measure, {"quick": ctx.smoke, "device": device}
    missing = nnunet.available()
    if ctx.smoke:
        ctx.skip("nnunet", "smoke mode: the nnU-Net section is timed on the GPU only (minutes on a CPU: planning, "
                           "training and run_nnunet; `nnunet.measure` with SMOKE_SIZES runs it on a CPU)")
    elif missing:
        ctx.skip("nnunet", missing)
    else:
        yield "nnunet", nnunet.measure, {"sizes": nnunet.GPU_SIZES, "device": device, "work": ctx.work / "nnunet"}
    if ctx.smoke:
        ctx.skip("training_compiled", "smoke mode: torch.compile is timed on the GPU only")
        return
    yield "training_compiled", training.measure, {"shape": shape, "device": device, "compiled": True}
