"""One prepared GPU proof: every GPU figure of the project, measured in one time-boxed run.

    python benchmarks/gpu_proof.py run [--smoke] [--data DIR] [--out DIR] [--train-budget-s S]
                                       [--budget-s S | --deadline T] [--max-epochs N] [--work DIR]
    python benchmarks/gpu_proof.py wheels DIR [--report FILE]   # the wheels of DIR this machine lacks
    python benchmarks/gpu_proof.py pack SRC DEST                # a PNG slice folder, lossless and small

`benchmarks/gpu_proof.sh` installs what `wheels` names and calls `run`, which writes OUT/gpu_proof.json
and OUT/paper_run_jsons.tar.gz (the paper run's JSON files and the log of every step). The stages,
in the order they run (the most valuable first):

1. environment: GPU, driver, torch, CUDA and library versions, date, what was installed.
2. paper_run: `tumorcam data prepare` of the real slices, `tumorcam train --preset paper
   --encoder-weights none` for as many epochs as the training budget allows (at most the preset's),
   `tumorcam explain RUN --split val` and `tumorcam evaluate RUN --segmentation --faithfulness
   --localization --sanity --split val`, all through the CLI with the package's defaults.
3. bf16_agreement: on that trained model, per method, target and layer: Spearman and max |diff| of the
   bf16 and fp32 maps of each slice, and the difference of the deletion/insertion AUCs.
4. training, 5. explain, 6. faithfulness: the seed's way against tumorcam's (benchmarks/bench_*.py),
   then 7. torch.compile'd training, last because its compile time is the least predictable.

Time-boxing: one deadline for the whole run (the shell script's start + --budget-s, install
included). Each step runs in a forked child (the parent imports the libraries once and never
touches CUDA) under timeout = min(the step's cap, time left - the time reserved for the steps after
it); a step with less than its minimum is skipped, a child past its timeout is killed with its
process group. Steps record results as they go, so a killed step keeps what it finished; `skipped`
lists every step or part not done and why. gpu_proof.json is rewritten after every step.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import hashlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

JSON_NAME = "gpu_proof.json"
TAR_NAME = "paper_run_jsons.tar.gz"
RUN_FILES = ("config.json", "provenance.json", "history.json", "metrics.json", "faithfulness.json",
             "localization.json", "sanity.json", "explanations/index.json")
PACK_FILE = "pack.json"
FINAL_MARGIN_S = 8.0  # kept free at the deadline for writing gpu_proof.json and the archive
LAYERS = ("decoder.blocks.4", "encoder.layer4")  # bf16_agreement: the primary layer and the deepest encoder stage
SAME_BY_CONSTRUCTION = ("random", "edges")  # maps that do not depend on the model's precision
AGREE_SPEARMAN = 0.9  # bf16 agrees: mean Spearman >= this ...
AGREE_STANDARD_ERRORS = 0.25  # ... and |mean AUC difference| <= this many standard errors of the fp32 AUC


@dataclass(frozen=True)
class Step:
    """Time rules of one step: it runs at most `cap` s, the steps before it leave it `reserve` s,
    and it is not started with less than `minimum` s."""

    cap: float
    reserve: float
    minimum: float


STEPS = ("environment", "paper_run/data", "paper_run/prepare", "paper_run/train", "paper_run/explain",
         "paper_run/evaluate", "bf16_agreement", "training", "explain", "faithfulness", "training_compiled")
GPU_STEPS = {
    "environment": Step(60, 15, 5), "paper_run/data": Step(90, 15, 5), "paper_run/prepare": Step(120, 30, 10),
    "paper_run/train": Step(0, 60, 30),  # cap: the training budget
    "paper_run/explain": Step(180, 60, 20), "paper_run/evaluate": Step(300, 120, 30),
    "bf16_agreement": Step(150, 60, 20), "training": Step(120, 45, 20), "explain": Step(90, 30, 15),
    "faithfulness": Step(90, 30, 15), "training_compiled": Step(240, 0, 60),
}
SMOKE_STEPS = {name: Step(0 if name == "paper_run/train" else 240, 5, 1) for name in STEPS}

# Sizes of the GPU run and of the CPU smoke run (tiny, seconds).
GPU_SIZES: dict[str, dict[str, Any]] = {
    "training": {"n": 1024, "stored": 256, "size": 224, "batch": 128, "steps": 50, "warmup": 8},
    "explain": {"slices": 2048, "size": 224, "batch": 256, "loop_slices": 32, "method_batches": 4,
                "inference_batches": 8},
    # None: the package's default (steps, ig_steps), every registered method, the explain config's targets
    "bf16": {"slices": 32, "batch": 32, "steps": None, "ig_steps": None, "game_batch": 512, "methods": None,
             "targets": None},
}
SMOKE_SIZES: dict[str, dict[str, Any]] = {
    "training": {"n": 48, "stored": 64, "size": 32, "batch": 16, "steps": 2, "warmup": 1},
    "explain": {"slices": 8, "size": 64, "batch": 4, "loop_slices": 2, "method_batches": 1, "inference_batches": 2},
    "bf16": {"slices": 2, "batch": 2, "steps": 4, "ig_steps": 4, "game_batch": 64,
             "methods": ["gradcam", "saliency", "predicted-mask"], "targets": ["predicted-region"]},
}
SMOKE_CONFIG = {  # RUN/config.json in smoke mode, for the keys it has: a layer method, a layer-free one, the two references
    "explain": {"slices_per_patient": 1, "ig_steps": 4, "batch_size": 8, "targets": ["predicted-region"],
                "methods": ["gradcam", "saliency", "random", "predicted-mask"]},
    "evaluate": {"steps": 4, "bootstrap": 50, "sanity_slices": 1},
}


# ---------------------------------------------------------------- entry points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="every stage; writes OUT/gpu_proof.json")
    run_parser.add_argument("--smoke", action="store_true", help="CPU, tiny synthetic data and sizes (minutes)")
    run_parser.add_argument("--data", type=Path, default=None,
                            help="the real slices: a PNG folder or a `pack` of one (default: .data/figshare-png256-j2k, "
                                 "else ../shared/data/figshare-png256; ignored with --smoke)")
    run_parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else benchmarks/results)")
    run_parser.add_argument("--train-budget-s", type=float, default=240.0, help="wall seconds for paper_run training")
    run_parser.add_argument("--max-epochs", type=int, default=None, help="epoch cap (default: the paper preset's)")
    run_parser.add_argument("--budget-s", type=float, default=540.0, help="wall seconds for the whole run")
    run_parser.add_argument("--deadline", type=float, default=None, help="absolute end (epoch seconds), instead of --budget-s")
    run_parser.add_argument("--started", type=float, default=None, help="when the shell script started (epoch seconds)")
    run_parser.add_argument("--install-report", type=Path, default=None, help="JSON written by `wheels --report`")
    run_parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one, removed)")
    wheels_parser = commands.add_parser("wheels", help="print the wheels of DIR whose package is missing or off its range")
    wheels_parser.add_argument("dir", type=Path)
    wheels_parser.add_argument("--report", type=Path, default=None, help="write the decision per wheel as JSON")
    pack_parser = commands.add_parser("pack", help="copy a PNG slice folder with the images as lossless JPEG 2000")
    pack_parser.add_argument("src", type=Path)
    pack_parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "wheels":
        for path in wheels_to_install(args.dir, args.report):
            print(path)
        return 0
    if args.command == "pack":
        info = pack(args.src, args.dest)
        print(f"packed {info['count']} slices into {args.dest}: {info['bytes'] / 2**20:.1f} MiB "
              f"(source {info['source_bytes'] / 2**20:.1f} MiB)")
        return 0
    return run(args)


# ---------------------------------------------------------------- wheels


def wheels_to_install(folder: Path, report: Path | None = None) -> list[Path]:
    """Wheels of `folder` whose distribution is not installed, or installed at a version outside the
    range pyproject.toml asks for; `report` gets each wheel's decision."""
    from importlib import metadata

    ranges = _dependency_ranges()
    chosen, decisions = [], []
    for wheel in sorted(Path(folder).glob("*.whl")) if Path(folder).is_dir() else []:
        name, version = wheel.name.split("-")[:2]
        key = _normalize(name)
        try:
            present: str | None = metadata.version(key)
        except metadata.PackageNotFoundError:
            present = None
        wanted = ranges.get(key)
        if present is None:
            why, install = "not installed", True
        elif wanted is not None and not _in_range(present, wanted):
            why, install = f"installed {present} outside {wanted}", True
        else:
            why, install = f"installed {present}", False
        decisions.append({"wheel": wheel.name, "version": version, "install": install, "why": why})
        if install:
            chosen.append(wheel)
    if report is not None:
        report.write_text(json.dumps({"folder": str(folder), "wheels": decisions}, indent=1))
    return chosen


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _dependency_ranges() -> dict[str, str]:
    """pyproject.toml's dependencies as {normalised name: specifier}."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {}
    for line in project.get("dependencies", []):
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*([^;]*)", line)
        if match:
            ranges[_normalize(match.group(1))] = match.group(3).strip()
    return ranges


def _in_range(version: str, specifier: str) -> bool:
    """Whether `version` satisfies `specifier` (True when `packaging` is not there to tell)."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:
        return True
    return Version(version) in SpecifierSet(specifier)


# ---------------------------------------------------------------- data: pack, unpack, smoke slices


def pixel_digest(array: Any) -> str:
    """sha256 of an image's dtype, shape and pixel bytes."""
    import numpy as np

    array = np.ascontiguousarray(array)
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()


def _pack_one(job: tuple[Path, Path]) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    src, dest = job
    with Image.open(src) as picture:
        pixels = np.asarray(picture)
    Image.fromarray(pixels).save(dest, format="JPEG2000")  # OpenJPEG's default: reversible 5/3 wavelet, lossless
    return src.stem, pixel_digest(pixels)


def pack(src: Path, dest: Path) -> dict[str, Any]:
    """Copy a PNG slice folder (`images/N.png`, `masks/N.png`, `metadata.csv`) to `dest` with the images
    as lossless JPEG 2000 (`images/N.j2k`) and each image's `pixel_digest` in pack.json: the 2400
    figshare-png256 slices take 58 MB instead of 67, small enough to carry to the GPU machine."""
    src, dest = Path(src), Path(dest)
    images = sorted((src / "images").glob("*.png"), key=lambda p: (len(p.stem), p.stem))
    if not images or not (src / "masks").is_dir():
        raise SystemExit(f"pack: {src} has no images/*.png and masks/")
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"pack: {dest} exists and is not empty")
    (dest / "images").mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "masks", dest / "masks")
    if (src / "metadata.csv").is_file():
        shutil.copyfile(src / "metadata.csv", dest / "metadata.csv")
    jobs = [(path, dest / "images" / f"{path.stem}.j2k") for path in images]
    with multiprocessing.get_context("fork").Pool(max(1, min(8, os.cpu_count() or 1))) as pool:
        digests = dict(pool.map(_pack_one, jobs, chunksize=16))
    info = {"format": "gpu_proof pack 1", "source": str(src), "codec": "JPEG 2000, lossless (OpenJPEG via Pillow)",
            "count": len(images), "images": digests,
            "source_bytes": sum(p.stat().st_size for p in images),
            "bytes": sum(p.stat().st_size for p in (dest / "images").iterdir())}
    (dest / PACK_FILE).write_text(json.dumps(info))
    return info


def is_pack(folder: Path) -> bool:
    return (Path(folder) / PACK_FILE).is_file()


def _read_j2k(path: Path) -> Any:
    """Decode a JPEG 2000 file with Pillow, or OpenCV where Pillow has no OpenJPEG."""
    import numpy as np
    from PIL import Image, features

    if features.check("jpg_2000"):
        with Image.open(path) as picture:
            return np.asarray(picture)
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ValueError(f"{path}: neither Pillow (no OpenJPEG) nor OpenCV could decode it")
    return pixels


def _unpack_one(job: tuple[Path, Path, str]) -> str | None:
    from PIL import Image

    src, dest, digest = job
    pixels = _read_j2k(src)
    if pixel_digest(pixels) != digest:
        return src.name
    Image.fromarray(pixels).save(dest, format="PNG", compress_level=1)
    return None


def unpack(packed: Path, dest: Path) -> dict[str, Any]:
    """Restore the PNG folder of a `pack`, checking every image against its digest."""
    info = json.loads((packed / PACK_FILE).read_text())
    (dest / "images").mkdir(parents=True, exist_ok=True)
    shutil.copytree(packed / "masks", dest / "masks")
    if (packed / "metadata.csv").is_file():
        shutil.copyfile(packed / "metadata.csv", dest / "metadata.csv")
    jobs = [(packed / "images" / f"{stem}.j2k", dest / "images" / f"{stem}.png", digest)
            for stem, digest in info["images"].items()]
    with multiprocessing.get_context("fork").Pool(max(1, min(16, os.cpu_count() or 1))) as pool:
        bad = [name for name in pool.map(_unpack_one, jobs, chunksize=16) if name]
    if bad:
        raise ValueError(f"{len(bad)} image(s) differ from the packed digests, e.g. {bad[0]}")
    return {"source": info["source"], "count": len(jobs), "pixels_verified": True, "codec": info["codec"]}


def write_smoke_pngs(root: Path, patients_per_fold: int = 2, slices: int = 2, size: int = 64) -> dict[str, Any]:
    """A tiny PNG slice folder in the figshare-png256 layout: bright discs on a textured background,
    folds 1-4 (1-3 train, 4 val), classes cycling."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, file_id = [], 0
    for fold in (1, 2, 3, 4):
        for p in range(patients_per_fold):
            pid, label = f"{fold}{p:02d}", 1 + (fold + p) % 3
            for _ in range(slices):
                file_id += 1
                cy, cx = rng.uniform(0.3, 0.7, 2) * size
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (rng.uniform(0.08, 0.16) * size) ** 2
                image = np.clip(0.3 + 0.1 * rng.standard_normal((size, size)) + 0.5 * mask, 0, 1)
                Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"{file_id}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{file_id}.png")
                rows.append({"file_id": file_id, "pid": pid, "label": label, "fold": fold})
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_id", "pid", "label", "fold"])
        writer.writeheader()
        writer.writerows(rows)
    return {"source": "synthetic discs (smoke)", "count": file_id, "size": size}


# ---------------------------------------------------------------- child processes and the clock


class Recorder:
    """A step's results, rewritten to a JSON file at every `set`, so a killed step keeps what it recorded."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        os.replace(tmp, self.path)


@dataclass
class Outcome:
    status: str  # ok, error, timeout
    seconds: float
    result: dict[str, Any]
    log_tail: list[str]

    def brief(self) -> dict[str, Any]:
        brief = {"status": self.status, "seconds": round(self.seconds, 1)}
        if self.status != "ok":
            brief["log_tail"] = self.log_tail
        return brief


def _child(fn: Callable[..., None], kwargs: dict[str, Any], result: Path, log: Path) -> None:
    os.setpgrp()  # the parent kills the whole group on timeout (prepare's workers, compile workers)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # the child's streams for its whole life, also where sys.stdout was not fd 1 (under pytest)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    record = Recorder(result)
    try:
        fn(record, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the CLI's SystemExit too: every failure is recorded
        code = exc.code if isinstance(exc, SystemExit) else 1
        if code not in (0, None):
            traceback.print_exc()
            record.set("error", f"{type(exc).__name__}: {exc}"[:500])
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()


def run_child(name: str, fn: Callable[..., None], kwargs: dict[str, Any], timeout: float, logs: Path,
              method: str = "fork") -> Outcome:
    """Run `fn(record, **kwargs)` in a child process (forked, or `method`) with its output in logs/NAME.log;
    kill it and its process group after `timeout` s."""
    stem = name.replace("/", "_")
    log, result = logs / f"{stem}.log", logs / f"{stem}.json"
    result.unlink(missing_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    proc = multiprocessing.get_context(method).Process(target=_child, args=(fn, kwargs, result, log), name=name)
    start = time.perf_counter()
    proc.start()
    proc.join(max(0.0, timeout))
    status = "ok"
    if proc.is_alive():
        status = "timeout"
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.join()
    elif proc.exitcode != 0:
        status = "error"
    seconds = time.perf_counter() - start
    data = json.loads(result.read_text()) if result.is_file() else {}
    tail = log.read_text(errors="replace").splitlines()[-15:] if log.is_file() else []
    return Outcome(status, seconds, data, tail)


class Clock:
    """The deadline of the run and each step's share of what is left."""

    def __init__(self, deadline: float, steps: dict[str, Step]) -> None:
        self.deadline, self.steps = deadline, steps

    def left(self) -> float:
        return self.deadline - FINAL_MARGIN_S - time.time()

    def allot(self, step: str, cap: float | None = None) -> tuple[float | None, str]:
        """(seconds the step may run, "") or (None, why it is skipped).

        seconds = min(cap, max(left - later, left * reserve / (reserve + later), minimum)), `later` the
        reserves of the steps after it: all the slack when the budget holds every reserve, else a share
        of what is left in proportion to the reserves; skipped when less than its minimum is left."""
        rule = self.steps[step]
        cap = rule.cap if cap is None else cap
        later = sum(self.steps[s].reserve for s in STEPS[STEPS.index(step) + 1:])
        left = self.left()
        if min(cap, left) < rule.minimum:
            return None, (f"budget: {left:.0f} s left{'' if cap >= left else f', {cap:.0f} s allowed'}, "
                          f"it needs at least {rule.minimum:.0f} s")
        share = left * rule.reserve / (rule.reserve + later) if rule.reserve + later > 0 else left
        return min(cap, max(left - later, share, rule.minimum)), ""


@dataclass
class Context:
    smoke: bool
    out: Path
    work: Path
    logs: Path
    clock: Clock
    data: Path | None
    train_budget_s: float
    max_epochs: int | None
    report: dict[str, Any]
    start_method: str = "fork"
    run_dir: Path = field(init=False)
    prepared: Path = field(init=False)

    def __post_init__(self) -> None:
        self.run_dir = self.work / "run"
        self.prepared = self.work / "prepared"

    def skip(self, step: str, reason: str) -> None:
        self.report["skipped"].append({"stage": step, "reason": reason})
        _say(f"{step}: skipped ({reason})")

    def write(self) -> None:
        path = self.out / JSON_NAME
        self.report["wall_s"] = round(time.time() - self.report["_started"], 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v for k, v in self.report.items() if not k.startswith("_")}, indent=1,
                                  default=_jsonable))
        os.replace(tmp, path)

    def step(self, rule: str, fn: Callable[..., None], kwargs: dict[str, Any], cap: float | None = None,
             label: str | None = None) -> Outcome | None:
        """Run one timed step under the time rule `rule` of STEPS (recorded as `label`, default `rule`);
        None (and a `skipped` entry) when the budget has no room for it."""
        name = label or rule
        seconds, why = self.clock.allot(rule, cap)
        if seconds is None:
            self.skip(name, why)
            return None
        _say(f"{name}: start (timeout {seconds:.0f} s)")
        outcome = run_child(name, fn, kwargs, seconds, self.logs, self.start_method)
        self.report["stages"][name] = {**outcome.brief(), "timeout_s": round(seconds, 1)}
        if outcome.status == "timeout":
            self.skip(name, f"stopped at its timeout of {seconds:.0f} s; results recorded before that are kept")
        elif outcome.status == "error":
            last = outcome.log_tail[-1] if outcome.log_tail else "no output"
            self.report["skipped"].append({"stage": name, "reason": f"failed: {outcome.result.get('error', '')} | {last}"})
        _say(f"{name}: {outcome.status} in {outcome.seconds:.1f} s")
        if outcome.status != "ok":
            for line in outcome.log_tail[-6:]:
                _say(f"    | {line}")
        return outcome


def _say(message: str) -> None:
    print(f"[gpu_proof {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _jsonable(value: Any) -> Any:
    """JSON for numpy scalars and arrays, paths; NaN is written as null by `_clean`."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _clean(value: Any) -> Any:
    """Round floats to 6 significant digits; NaN and infinities become None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> int:
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
    }
    report["environment"]["install"] = {"report": install, "seconds_before_python": round(time.time() - started, 1)}
    data = None if args.smoke else (args.data or _default_data())
    ctx = Context(smoke=args.smoke, out=out, work=work, logs=logs, clock=Clock(deadline, SMOKE_STEPS if args.smoke else GPU_STEPS),
                  data=data, train_budget_s=args.train_budget_s, max_epochs=args.max_epochs, report=report)
    _say(f"start: budget {deadline - time.time():.0f} s left, out {out}, work {work}, smoke {args.smoke}")
    report["environment"]["preimport"] = _preimport()
    try:
        outcome = ctx.step("environment", _environment, {"smoke": args.smoke})
        if outcome is not None and outcome.status == "error" and not args.smoke:
            ctx.start_method = "spawn"  # CUDA failed in a forked child: fresh interpreters from here on
            outcome = ctx.step("environment", _environment, {"smoke": args.smoke}, label="environment_spawn")
        report["start_method"] = ctx.start_method
        if outcome:
            report["environment"].update(outcome.result)
        ctx.write()
        try:
            _paper_run(ctx)
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
        _archive(ctx)
        ctx.write()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    _say(f"done in {time.time() - started:.0f} s: {out / JSON_NAME}, {len(report['skipped'])} skipped")
    for line in summary_lines(report):
        print(line)
    return 0


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The headline figures of a report, one line each ("-" where not measured)."""

    def get(*keys: str) -> Any:
        value: Any = report
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return "-" if value is None else value

    per_class = get("paper_run", "val_dice", "per_class")
    classes = ", ".join(f"{k} {v.get('mean')}" for k, v in per_class.items()) if isinstance(per_class, dict) else "-"
    maps = get("explain", "tumorcam")
    rates = ", ".join(f"{k.removeprefix('gradcam_')} {v['maps_per_s']}" for k, v in maps.items()) if isinstance(maps, dict) else "-"
    skipped = "; ".join(f"{s['stage']} ({s['reason'][:80]})" for s in report["skipped"]) or "nothing"
    return [
        (f"device: {get('environment', 'gpu', 'name')} ({get('environment', 'device')}), torch "
         f"{get('environment', 'versions', 'torch')}, bf16 matmul {get('environment', 'bf16_matmul_tflops')} TFLOP/s"),
        (f"paper_run: {get('paper_run', 'train', 'epochs')} epochs, {get('paper_run', 'train', 's_per_epoch')} s/epoch, "
         f"val Dice {get('paper_run', 'val_dice', 'overall', 'mean')} ({classes})"),
        (f"bf16_agreement: {get('bf16_agreement', 'summary', 'agree')} of {get('bf16_agreement', 'summary', 'rows')} "
         f"rows agree, worst mean Spearman {get('bf16_agreement', 'summary', 'worst_spearman')}"),
        (f"training img/s: seed {get('training', 'seed_style', 'img_per_s')}, eager "
         f"{get('training', 'tumorcam', 'img_per_s')}, compiled {get('training', 'tumorcam_compiled', 'img_per_s')}, "
         f"speedup {get('training', 'speedup')}"),
        f"Grad-CAM maps/s: seed {get('explain', 'seed_loop', 'maps_per_s')}; {rates}",
        (f"Deletion/Insertion: {get('faithfulness', 'tumorcam', 'slices_per_s')} slices/s, "
         f"{get('faithfulness', 'fraction_of_inference_bound')} of the bf16 bound, "
         f"{get('faithfulness', 'seconds_per_664_slices')} s per 664 slices"),
        f"skipped: {skipped}",
    ]


def _default_data() -> Path:
    packed = ROOT / ".data" / "figshare-png256-j2k"
    return packed if packed.is_dir() else ROOT.parent / "shared" / "data" / "figshare-png256"


def _preimport() -> dict[str, str]:
    """Import the libraries once in the parent, so forked steps start without importing them
    (the parent never initialises CUDA: a forked child could not use it then)."""
    failed = {}
    for name in ("torch", "numpy", "scipy.stats", "PIL.Image", "segmentation_models_pytorch", "captum.attr",
                 "tumorcam.cli", "tumorcam.training", "tumorcam.explain", "tumorcam.explain.run",
                 "tumorcam.evaluate.faithfulness", "tumorcam.evaluate.segmentation", "common", "bench_train",
                 "bench_explain", "bench_faithfulness"):
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - the steps that need it report it
            failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    return failed


def _later_steps(ctx: Context) -> Iterator[tuple[str, Callable[..., None], dict[str, Any]]]:
    sizes = SMOKE_SIZES if ctx.smoke else GPU_SIZES
    device = "cpu" if ctx.smoke else "auto"
    weights = ctx.run_dir / "unet_trained.pth"
    yield "bf16_agreement", _bf16_agreement, {"run": ctx.run_dir if weights.is_file() else None,
                                              "prepared": ctx.prepared, "sizes": sizes["bf16"], "device": device}
    yield "training", _training, {"shape": sizes["training"], "device": device, "compiled": False}
    yield "explain", _explain, {"shape": sizes["explain"], "device": device}
    yield "faithfulness", _faithfulness, {"quick": ctx.smoke, "device": device}
    if ctx.smoke:
        ctx.skip("training_compiled", "smoke mode: torch.compile is timed on the GPU only")
        return
    yield "training_compiled", _training, {"shape": sizes["training"], "device": device, "compiled": True}


def _archive(ctx: Context) -> None:
    """OUT/paper_run_jsons.tar.gz: the run's JSON files (paper_run/...) and every step's log (logs/...)."""
    with tarfile.open(ctx.out / TAR_NAME, "w:gz") as tar:
        for name in RUN_FILES:
            if (ctx.run_dir / name).is_file():
                tar.add(ctx.run_dir / name, arcname=f"paper_run/{name}")
        for log in sorted(ctx.logs.glob("*.log")):
            tar.add(log, arcname=f"logs/{log.name}")


# ---------------------------------------------------------------- environment


def _environment(record: Recorder, smoke: bool) -> None:
    from importlib import metadata

    import torch

    versions = {}
    for name in ("torch", "torchvision", "segmentation-models-pytorch", "captum", "timm", "huggingface-hub", "numpy",
                 "scipy", "pillow", "typer", "safetensors", "triton"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    record.set("python", platform.python_version())
    record.set("platform", platform.platform())
    record.set("cpus", len(os.sched_getaffinity(0)))
    record.set("versions", versions)
    record.set("numpy_config_threads", os.environ.get("OMP_NUM_THREADS"))
    record.set("git_commit", _git("rev-parse", "HEAD"))
    record.set("git_dirty_files", len((_git("status", "--porcelain") or "").splitlines()) if _git("rev-parse", "HEAD") else None)
    cuda = torch.cuda.is_available() and not smoke
    record.set("cuda_available", torch.cuda.is_available())
    record.set("device", "cuda" if cuda else "cpu")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        record.set("gpu", {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                           "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}",
                           "count": torch.cuda.device_count(), "bf16_supported": torch.cuda.is_bf16_supported()})
        record.set("cuda", torch.version.cuda)
        record.set("cudnn", torch.backends.cudnn.version())
        record.set("nvidia_smi", _nvidia_smi())
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()
        record.set("bf16_matmul_tflops", round(10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12, 1))


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _nvidia_smi() -> dict[str, str] | None:
    fields = "name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit,temperature.gpu"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                              check=False, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return dict(zip(fields.split(","), (v.strip() for v in done.stdout.splitlines()[0].split(","))))


# ---------------------------------------------------------------- paper_run


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


def _data_step(record: Recorder, source: Path | None, dest: Path) -> None:
    start = time.perf_counter()
    info = write_smoke_pngs(dest) if source is None else unpack(source, dest)
    record.set("info", {**info, "seconds": round(time.perf_counter() - start, 1)})


def _paper_run(ctx: Context) -> None:
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
        outcome = ctx.step("paper_run/data", _data_step, {"source": source, "dest": png})
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
    _archive(ctx)


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


# ---------------------------------------------------------------- bf16_agreement


def spearman_rows(a: Any, b: Any) -> Any:
    """Spearman's rho of each row pair of a and b (N, P): Pearson's r of the average ranks (ties share
    their mean rank); NaN for a row where either side is constant."""
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
    """Per-slice AUC differences other - fp32 (NaN slices dropped): their mean, mean and max |.|, the
    fp32 mean and its standard error, and |mean difference| in standard errors of the fp32 mean."""
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


def _bf16_agreement(record: Recorder, run: Path | None, prepared: Path, sizes: dict[str, Any], device: str) -> None:
    import numpy as np
    import torch

    from tumorcam.config import EvaluateConfig, ExplainConfig, ModelConfig
    from tumorcam.evaluate.faithfulness import PerturbationGame
    from tumorcam.explain import METHODS, compute_maps
    from tumorcam.device import resolve_device, setup_backend

    try:
        from tumorcam.evaluate.faithfulness import TARGET_SCORES
    except ImportError:
        TARGET_SCORES = {}
    dev = resolve_device(device)
    setup_backend(dev, seed=0, deterministic=False)
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is plain fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    explain_cfg, evaluate_cfg = ExplainConfig(), EvaluateConfig()
    steps = sizes["steps"] or evaluate_cfg.steps
    ig_steps = sizes["ig_steps"] or explain_cfg.ig_steps
    if run is not None:
        from tumorcam.run_folder import load_run_model

        model, config = load_run_model(run, "last", dev)
        size, what = config.train.size, f"trained: {run.name}/unet_trained.pth"
    else:
        from tumorcam.model import build_model

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
            with precision(bf16):
                parts.append(compute_maps(model, images[start:start + sizes["batch"]], method=method, target=target,
                                          layer=layer, ig_steps=ig_steps, seed=0, amp=bf16 and cuda).float())
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
    methods = [m for m in methods if m in METHODS]
    record.set("not_compared", {m: "does not depend on the model's precision" for m in methods if m in SAME_BY_CONSTRUCTION})
    methods = [m for m in methods if m not in SAME_BY_CONSTRUCTION]
    rows = []
    targets = sizes["targets"] or list(explain_cfg.targets)
    for method, target, layer in _combos(methods, {m: METHODS[m].uses_layer for m in methods}, targets):
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
        rows.append(_clean(row))
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


# ---------------------------------------------------------------- throughput: training, explain, faithfulness


def _peak(device: Any) -> Callable[[], float | None]:
    """Reset the peak-memory counter; the returned function reads the peak in MiB."""
    import gc

    import torch

    if device.type != "cuda":
        return lambda: None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return lambda: round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def _training(record: Recorder, shape: dict[str, Any], device: str, compiled: bool) -> None:
    from bench_train import _seed_loop, _tumorcam_loop, _write_random_prepared

    from tumorcam.device import resolve_device, setup_backend

    dev = resolve_device(device)
    setup_backend(dev, seed=0, deterministic=False)
    record.set("shape", shape)
    with tempfile.TemporaryDirectory() as tmp:
        root = _write_random_prepared(Path(tmp), shape["n"], shape["stored"])
        if compiled:
            peak = _peak(dev)
            start = time.perf_counter()
            result = _tumorcam_loop(root, shape, dev, compile_model=True)
            record.set("tumorcam_compiled", {**result, "peak_mib": peak(), "wall_s": round(time.perf_counter() - start, 1)})
            return
        peak = _peak(dev)
        seed = _seed_loop(root, shape, dev)
        record.set("seed_style", {**seed, "peak_mib": peak()})
        peak = _peak(dev)
        ours = _tumorcam_loop(root, shape, dev, compile_model=False)
        record.set("tumorcam", {**ours, "peak_mib": peak()})
        record.set("speedup", round(ours["img_per_s"] / seed["img_per_s"], 2))


def _explain(record: Recorder, shape: dict[str, Any], device: str) -> None:
    import torch
    from bench_explain import LAYER, OTHER_METHODS, _seed_loop
    from common import inference_model

    from tumorcam.explain import compute_maps
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
    peak = _peak(dev)
    seed_rate = _seed_loop(model, images[:shape["loop_slices"]], dev)
    record.set("seed_loop", {"maps_per_s": round(seed_rate, 2), "precision": "fp32", "batch": 1,
                             "method": "captum LayerGradCam on the mean-logits wrapper", "peak_mib": peak()})
    results = {}
    for amp in (True, False):
        for target in ("mean-logits", "predicted-region"):
            peak = _peak(dev)
            maps_per_s = rate(lambda x, t=target, a=amp: compute_maps(model, x, method="gradcam", target=t, layer=LAYER,
                                                                      amp=a), batches)
            key = f"gradcam_{target}_{'bf16' if amp else 'fp32'}"
            inference = record.data[f"inference_img_per_s_{'bf16' if amp else 'fp32'}"]
            results[key] = {"maps_per_s": round(maps_per_s, 1), "speedup_vs_seed": round(maps_per_s / seed_rate, 1),
                            "ratio_to_inference": round(maps_per_s / inference, 3), "peak_mib": peak()}
            record.set("tumorcam", results)
    others = {}
    for method in OTHER_METHODS:
        others[method] = round(rate(lambda x, m=method: compute_maps(model, x, method=m, target="mean-logits", layer=LAYER,
                                                                     amp=True), batches[:shape["method_batches"]]), 1)
        record.set("other_methods_bf16_maps_per_s", others)


def _faithfulness(record: Recorder, quick: bool, device: str) -> None:
    import bench_faithfulness

    result = bench_faithfulness.run(argparse.Namespace(quick=quick, device=device, faith_batch=None, faith_slices=None))
    game, inference = result["tumorcam"], result["inference_img_per_s"]
    result["fraction_of_inference_bound"] = round(game["forwarded_img_per_s"] / inference, 3)
    result["seconds_per_664_slices"] = round(664 / game["slices_per_s"], 2)
    for key, value in result.items():
        record.set(key, value)


if __name__ == "__main__":
    sys.exit(main())
