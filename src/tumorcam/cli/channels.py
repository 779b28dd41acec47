"""`tumorcam channels RUN`: per-sequence attribution of a run's model -> RUN/channels.json.

A run on volumes (volume_config.json) is measured case by case with its settings
(`tumorcam.runs.volume_stages.volume_channels`, the file `tumorcam run` writes); a trained run on slices
on the slices its explain step samples, each input channel of the 2-D slices a sequence
(`tumorcam.runs.channels.run_channels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from tumorcam.cli._command import Command, THREADS_HELP, use_threads


def channels_table(doc: dict[str, Any]) -> str:
    """The file's summary as a short table: per channel the mean share and Dice drop with their CIs."""
    summary = doc["summary"]
    tests = {t["channel"]: t for t in summary.get("tests", []) if t.get("kind") == "dice_drop_vs_zero"}
    lines = [f"{'sequence':<12} {'share [95% CI]':<26} {'Dice drop [95% CI]':<26} drop vs 0"]
    for name, values in summary.get("channels", {}).items():
        test = tests.get(name) or {}
        lines.append(f"{name:<12} {_ci(values['share']):<26} {_ci(values['dice_drop']):<26} {test.get('verdict', '-')}")
    lines.append(f"top sequence: {summary.get('top_channel') or '-'}")
    return "\n".join(lines)


def _ci(summary: dict[str, Any]) -> str:
    if summary.get("mean") is None:
        return "-"
    low, high = summary.get("ci_low"), summary.get("ci_high")
    interval = "" if low is None or high is None else f" [{low:.3f}, {high:.3f}]"
    return f"{summary['mean']:.3f}{interval}"


def channels_command(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder: a trained run (config.json) or a run on "
                               "volumes (volume_config.json)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared folder of a run on slices (default: the "
                                        "one it trained on)."),
    split: Optional[str] = typer.Option(None, "--split", help="Split of a run on slices (default: the run's "
                                        "config.evaluate.split)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: the run's)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0, metavar="N", help=THREADS_HELP),
) -> None:
    """Per-sequence attribution shares and channel-ablation Dice drops -> RUN/channels.json."""
    from tumorcam.errors import TumorcamError
    from tumorcam.runfolder.folder import is_volume_run
    from tumorcam.training.distributed import refuse_under_torchrun

    refuse_under_torchrun("channels")
    use_threads(threads)
    if is_volume_run(run):
        from tumorcam.runs.volume_stages import volume_channels

        for name, value in (("data", data), ("split", split)):
            if value is not None:
                raise TumorcamError(f"{name}: a run on volumes is measured on its own cases; leave it out", param=name)
        doc = volume_channels(run, device=device or "auto")
        scope = f"{doc['n_cases']} case" + ("" if doc["n_cases"] == 1 else "s")
    else:
        from tumorcam.runs.channels import run_channels

        doc = run_channels(run, data=data, split=split, device=device)
        scope = f"{doc['n_slices']} slice(s) of {doc['n_patients']} patient(s)"
    typer.echo(f"channels ({doc['split']}, {scope}, {doc['method']}, {doc['ablation_baseline']} ablation) -> "
               f"{run / 'channels.json'}")
    typer.echo(channels_table(doc))


def register(app: typer.Typer) -> None:
    app.command("channels", cls=Command)(channels_command)
