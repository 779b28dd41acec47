"""What the steps of the GPU proof share: time rules, forked children, recorded results, JSON output."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import signal
import sys
import tarfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
JSON_NAME = "gpu_proof.json"
TAR_NAME = "paper_run_jsons.tar.gz"
RUN_FILES = ("config.json", "provenance.json", "history.json", "metrics.json", "faithfulness.json",
             "localization.json", "sanity.json", "explanations/index.json")
FINAL_MARGIN_S = 8.0  # kept free at the deadline for writing gpu_proof.json and the archive


@dataclass(frozen=True)
class Step:
    """Time rules of one step: it runs at most `cap` s, the steps before it leave it `reserve` s,
    and it is not started with less than `minimum` s."""

    cap: float
    reserve: float
    minimum: float


class Clock:
    """The deadline of the run and each step's share of what is left.

    Args:
        deadline: the run's end, in epoch seconds.
        steps: the time rule of every step, in the order the steps run.
    """

    def __init__(self, deadline: float, steps: dict[str, Step]) -> None:
        self.deadline, self.steps = deadline, steps

    def left(self) -> float:
        """Seconds to the deadline, less FINAL_MARGIN_S."""
        return self.deadline - FINAL_MARGIN_S - time.time()

    def allot(self, step: str, cap: float | None = None) -> tuple[float | None, str]:
        """The time box of `step`.

        seconds = min(cap, max(left - later, left * reserve / (reserve + later), minimum)), `later` the
        reserves of the steps after it: all the slack when the budget holds every reserve, else a share
        of what is left in proportion to the reserves; skipped when less than its minimum is left.

        Args:
            step: a key of `steps`.
            cap: replaces the step's own cap.

        Returns:
            (seconds the step may run, "") or (None, why it is skipped).
        """
        rule = self.steps[step]
        cap = rule.cap if cap is None else cap
        names = list(self.steps)
        later = sum(self.steps[s].reserve for s in names[names.index(step) + 1:])
        left = self.left()
        if min(cap, left) < rule.minimum:
            return None, (f"budget: {left:.0f} s left{'' if cap >= left else f', {cap:.0f} s allowed'}, "
                          f"it needs at least {rule.minimum:.0f} s")
        share = left * rule.reserve / (rule.reserve + later) if rule.reserve + later > 0 else left
        return min(cap, max(left - later, share, rule.minimum)), ""


class Recorder:
    """A step's results, rewritten to a JSON file at every `set`, so a killed step keeps what it recorded."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def set(self, key: str, value: Any) -> None:
        """Record `value` under `key` and rewrite the file."""
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=jsonable))
        os.replace(tmp, self.path)


@dataclass
class Outcome:
    """How a child step ended (`status`: ok, error or timeout) and what it recorded."""

    status: str
    seconds: float
    result: dict[str, Any]
    log_tail: list[str]

    def brief(self) -> dict[str, Any]:
        """Status and seconds, with the log's tail when the step did not end well."""
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
    """Run `fn(record, **kwargs)` in a child process, killed with its process group after `timeout` s.

    Args:
        name: the step's name; its output goes to logs/NAME.log ("/" written "_").
        fn: the step, called with a `Recorder` and `kwargs`.
        kwargs: its arguments.
        timeout: seconds.
        logs: the folder of the log and of the recorded results.
        method: the multiprocessing start method (fork, or spawn where CUDA fails in forked children).

    Returns:
        The step's outcome, with what it recorded before it ended or was killed.
    """
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


@dataclass
class Context:
    """One proof run: its options, folders, clock and report (written to OUT/gpu_proof.json)."""

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
        """List `step` under `skipped` with `reason`."""
        self.report["skipped"].append({"stage": step, "reason": reason})
        say(f"{step}: skipped ({reason})")

    def write(self) -> None:
        """Rewrite OUT/gpu_proof.json (keys starting with _ left out)."""
        path = self.out / JSON_NAME
        self.report["wall_s"] = round(time.time() - self.report["_started"], 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: v for k, v in self.report.items() if not k.startswith("_")}, indent=1,
                                  default=jsonable))
        os.replace(tmp, path)

    def step(self, rule: str, fn: Callable[..., None], kwargs: dict[str, Any], cap: float | None = None,
             label: str | None = None) -> Outcome | None:
        """Run one step in a child under its time box, and record it under `stages`.

        Args:
            rule: the step's time rule, a key of the clock's steps.
            fn: the step, called as `fn(record, **kwargs)` in the child.
            kwargs: its arguments.
            cap: replaces the rule's cap.
            label: the name it is recorded under (default `rule`).

        Returns:
            Its outcome, or None (and a `skipped` entry) when the budget has no room for it.
        """
        name = label or rule
        seconds, why = self.clock.allot(rule, cap)
        if seconds is None:
            self.skip(name, why)
            return None
        say(f"{name}: start (timeout {seconds:.0f} s)")
        outcome = run_child(name, fn, kwargs, seconds, self.logs, self.start_method)
        self.report["stages"][name] = {**outcome.brief(), "timeout_s": round(seconds, 1)}
        if outcome.status == "timeout":
            self.skip(name, f"stopped at its timeout of {seconds:.0f} s; results recorded before that are kept")
        elif outcome.status == "error":
            last = outcome.log_tail[-1] if outcome.log_tail else "no output"
            self.report["skipped"].append({"stage": name, "reason": f"failed: {outcome.result.get('error', '')} | {last}"})
        say(f"{name}: {outcome.status} in {outcome.seconds:.1f} s")
        if outcome.status != "ok":
            for line in outcome.log_tail[-6:]:
                say(f"    | {line}")
        return outcome

    def archive(self) -> None:
        """OUT/paper_run_jsons.tar.gz: the run's JSON files (paper_run/...) and every step's log (logs/...)."""
        with tarfile.open(self.out / TAR_NAME, "w:gz") as tar:
            for name in RUN_FILES:
                if (self.run_dir / name).is_file():
                    tar.add(self.run_dir / name, arcname=f"paper_run/{name}")
            for log in sorted(self.logs.glob("*.log")):
                tar.add(log, arcname=f"logs/{log.name}")


def say(message: str) -> None:
    """Print a timestamped progress line."""
    print(f"[gpu_proof {time.strftime('%H:%M:%S')}] {message}", flush=True)


def jsonable(value: Any) -> Any:
    """JSON for numpy scalars and arrays, paths; NaN is written as null by `clean`."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def clean(value: Any) -> Any:
    """Round floats to 6 significant digits; NaN and infinities become None."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not hasattr(value, "__len__"):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def peak_memory(device: Any) -> Callable[[], float | None]:
    """Reset the device's peak-memory counter.

    Args:
        device: a torch.device.

    Returns:
        A function that reads the peak since the reset in MiB (None off CUDA).
    """
    import gc

    import torch

    if device.type != "cuda":
        return lambda: None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return lambda: round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
