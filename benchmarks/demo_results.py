"""The demos' figures for the docs: read finished demo run folders, write docs/demo-results.json,
and render the blocks of README.md and docs/*.md that quote them.

    python benchmarks/demo_results.py [--run runs/demo] [--volumes runs/volumes]   # JSON, then the docs
    python benchmarks/demo_results.py --render                                       # the docs from the JSON
    python benchmarks/demo_results.py --check                                        # exit 1 if they differ

`--run` is a finished `tumorcam run` (slices, `demo` preset; default runs/demo), `--volumes` a
finished `tumorcam run --volumes`; without `--volumes` the volume figures already in the JSON are
kept. Every figure the docs quote from the demos is a key of the JSON (`FIELDS` says what each
means) and appears in the docs only between marker comments

    <!-- demo-results:start:NAME -->  ...  <!-- demo-results:end:NAME -->

whose content is `render(NAME, results)`; the files are rewritten atomically (temporary file, then
rename). tests/test_demo_results.py re-renders every block and fails when one differs.

It reads the files with the package's reader (`tumorcam.io.optional_json`) and finds the primary row
by `tumorcam.evaluate.summary.is_primary_row`; `write_atomic` keeps a doc file's mode, which
`tumorcam.io.write_text` does not. It lives in benchmarks/ beside the other scripts that turn runs into the figures the docs quote
(`benchmarks/results/`), which the tests already import that way; it is not part of the package
(it reads the repository's docs, not a user's run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tumorcam.evaluate.summary import is_primary_row
from tumorcam.io import optional_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("docs/demo-results.json")
# the files that quote the demos, relative to the repository root
DOCS = (Path("README.md"), Path("docs/findings.md"), Path("docs/report.md"))
CURVES = ("deletion", "insertion")
QUESTIONS = {"vs_random": "random", "vs_mask": "mask"}  # comparison key -> name in the JSON keys
MARKER = re.compile(r"<!-- demo-results:start:(?P<name>[a-z-]+) -->\n(?P<body>.*?)<!-- demo-results:end:(?P=name) -->",
                    re.DOTALL)

ABOUT = ("Figures of the two demos (`tumorcam run`, `tumorcam run --volumes`), read from their run folders by "
         "benchmarks/demo_results.py. README.md and docs/*.md quote them only between "
         "<!-- demo-results:start:NAME --> markers, rendered from this file; do not edit either by hand: "
         "rerun the demos and `python benchmarks/demo_results.py --run RUN --volumes VOLUME_RUN`.")

# What each key of "slices" and "volumes" holds ("unit" = patient for slices, case for volumes).
FIELDS = {
    "source": "the run folder read",
    "commit": "git commit of the checkout when the figures were read (+ if src/ had uncommitted changes)",
    "finished": "when the run's last stage finished (slices: stages.json; volumes: timings.json's mtime)",
    "preset": "config preset (slices)",
    "epochs": "training epochs",
    "size": "training input side (slices) / volume side (volumes), voxels or pixels",
    "threads": "CPU threads torch used for training (slices: provenance.json)",
    "n_patients": "patients (cases) of the explained and evaluated split",
    "n_slices": "slices of the evaluated split (slices only)",
    "dice_mean": "mean Dice over slices (slices) or cases (volumes)",
    "dice_patient": "mean of per-patient Dice (slices; volumes: = dice_mean, one case = one patient)",
    "dice_patient_ci_low": "95% bootstrap CI of dice_patient, low",
    "dice_patient_ci_high": "95% bootstrap CI of dice_patient, high",
    "dice_n_patients": "patients (cases) in the Dice CI",
    "dice_n_slices": "slices in the Dice over slices (slices only)",
    "val_dice": "validation Dice of the demo network after training (volumes)",
    "train_cases": "cases the demo network trained on (volumes)",
    "primary_method": "the primary comparison's method (config.evaluate.primary)",
    "primary_target": "its target",
    "primary_layer": "its layer",
    "primary_baseline": "its baseline",
    "steps": "Deletion/Insertion steps K",
    "schedule": "step schedule (log or uniform)",
    "baselines": "baselines played",
    "alpha": "significance level of every verdict",
    "CURVE_auc": "the primary map's mean AUC over patients (CURVE = deletion or insertion)",
    "CURVE_auc_ci_low": "its 95% cluster-bootstrap CI, low",
    "CURVE_auc_ci_high": "its 95% cluster-bootstrap CI, high",
    "CURVE_REF_auc": "the reference map's mean AUC (REF = random or mask: the predicted-mask control)",
    "CURVE_vs_REF_p": "raw p of the paired test of the primary map against REF",
    "CURVE_vs_REF_p_adjusted": "its Holm-adjusted p (within its family)",
    "CURVE_vs_REF_family": "its Holm family (primary or exploratory)",
    "CURVE_vs_REF_verdict": "better / worse / not shown to differ / undetermined, from the adjusted p",
    "CURVE_vs_REF_n_pairs": "patients the test used",
    "holm_primary_tests": "tests in faithfulness.json's primary Holm family",
    "holm_exploratory_tests": "tests in faithfulness.json's exploratory Holm family",
    "holm_localization_tests": "tests in localization.json's one (exploratory) Holm family",
    "sanity": "sanity check per method: passes / fails / undetermined",
    "headline_level": "faithfulness.json's headline level, when the run wrote one",
    "headline_sentence": "its sentence",
    "top_channel": "volumes: the sequence with the largest attribution share",
    "top_channel_share": "its mean share",
    "top_channel_dice_drop": "its mean Dice drop when ablated",
    "seconds": "seconds per stage (slices: stages.json; volumes: timings.json), machine- and load-dependent",
    "seconds_total": "sum of seconds",
}


# ---------------------------------------------------------------------------------------------- reading

def _get(data: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(data, Mapping):
            data = data.get(key)
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return None
    return data


def _reference_row(rows: list[dict[str, Any]], method: str, primary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row of control `method` (random, predicted-mask) of the primary's baseline and trained model,
    with the primary's target when there is one (as `tumorcam.runs.faithfulness.references`: a
    generated random map has target "none")."""
    candidates = [row for row in rows if row.get("method") == method and row.get("baseline") == primary.get("baseline")
                  and row.get("model", "trained") == "trained" and not row.get("times_gt", False)]
    same_target = [row for row in candidates if row.get("target") == primary.get("target")]
    return (same_target or candidates or [None])[0]


def holm_counts(data: Any) -> dict[str, int]:
    """Tests per Holm family of an evaluation file: {family: count} over every vs_random/vs_mask of
    every metric of every row."""
    counts: dict[str, int] = {}
    for row in _get(data, "results") or []:
        for metric in [k for k, v in row.items() if isinstance(v, dict)]:
            for key in QUESTIONS:
                comparison = _get(row, metric, key)
                if isinstance(comparison, dict):
                    family = comparison.get("family") or "none"
                    counts[family] = counts.get(family, 0) + 1
    return counts


def primary_figures(faithfulness: Any) -> dict[str, Any]:
    """The primary comparison's figures of a faithfulness.json (slices or volumes), flat."""
    primary = _get(faithfulness, "primary") or {}
    rows = _get(faithfulness, "results") or []
    row = next((r for r in rows if is_primary_row(r, primary)), None)
    out: dict[str, Any] = {f"primary_{k}": primary.get(k) for k in ("method", "target", "layer", "baseline")}
    out.update({k: _get(faithfulness, k) for k in ("steps", "schedule", "baselines", "alpha")})
    references = {"random": _reference_row(rows, "random", primary),
                  "mask": _reference_row(rows, "predicted-mask", primary)}
    for curve in CURVES:
        summary = _get(row, curve) or {}
        out[f"{curve}_auc"] = summary.get("mean")
        out[f"{curve}_auc_ci_low"] = summary.get("ci_low")
        out[f"{curve}_auc_ci_high"] = summary.get("ci_high")
        for key, name in QUESTIONS.items():
            out[f"{curve}_{name}_auc"] = _get(references[name], curve, "mean")
            test = summary.get(key) if isinstance(summary.get(key), dict) else {}
            for field, source in (("p", "p_value"), ("p_adjusted", "p_adjusted"), ("family", "family"),
                                  ("verdict", "verdict"), ("n_pairs", "n_pairs")):
                out[f"{curve}_vs_{name}_{field}"] = test.get(source)
    counts = holm_counts(faithfulness)
    out["holm_primary_tests"] = counts.get("primary", 0)
    out["holm_exploratory_tests"] = counts.get("exploratory", 0)
    headline = _get(faithfulness, "headline")
    out["headline_level"] = _get(headline, "level") if isinstance(headline, dict) else None
    out["headline_sentence"] = _get(headline, "sentence") if isinstance(headline, dict) else None
    return out


def _verdict(result: Mapping[str, Any]) -> str:
    """A sanity result's verdict: its `verdict` ("passes", "fails", "undetermined") when it has one,
    else read from `passes` (true, false, null)."""
    if result.get("verdict") in ("passes", "fails", "undetermined"):
        return result["verdict"]
    passes = result.get("passes")
    return "passes" if passes is True else "fails" if passes is False else "undetermined"


def _commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "src", "pyproject.toml", "constraints.txt"],
                                 cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if changed else "")


def _seconds(seconds: Mapping[str, Any]) -> dict[str, Any]:
    seconds = {k: round(float(v), 1) for k, v in seconds.items() if isinstance(v, (int, float))}
    return {"seconds": seconds, "seconds_total": round(sum(seconds.values()), 1) if seconds else None}


def extract_slices(run: Path) -> dict[str, Any]:
    """The slice demo's figures from a finished run folder (config, provenance, metrics, faithfulness,
    localization, sanity, stages)."""
    run = Path(run)
    faithfulness = optional_json(run / "faithfulness.json")
    metrics = optional_json(run / "metrics.json")
    if faithfulness is None or metrics is None:
        raise SystemExit(f"{run}: not a finished `tumorcam run` folder (no faithfulness.json or metrics.json)")
    config = optional_json(run / "config.json") or {}
    stages = _get(optional_json(run / "stages.json"), "stages") or {}
    patient = _get(metrics, "per_patient", "summary", "dice") or {}
    out: dict[str, Any] = {
        "source": str(run), "commit": _commit(),
        "finished": max((s.get("finished") for s in stages.values() if s.get("finished")), default=None),
        "preset": config.get("preset"), "epochs": _get(config, "train", "epochs"), "size": _get(config, "train", "size"),
        "threads": _get(optional_json(run / "provenance.json"), "cpu_threads"),
        "n_patients": faithfulness.get("n_patients"), "n_slices": faithfulness.get("n_slices"),
        "dice_mean": _get(metrics, "overall", "dice", "mean"),
        "dice_patient": patient.get("mean"), "dice_patient_ci_low": patient.get("ci_low"),
        "dice_patient_ci_high": patient.get("ci_high"),
        "dice_n_patients": _get(metrics, "per_patient", "summary", "n"),
        "dice_n_slices": _get(metrics, "overall", "n"),
    }
    out.update(primary_figures(faithfulness))
    localization = optional_json(run / "localization.json")
    out["holm_localization_tests"] = sum(holm_counts(localization).values())
    sanity = optional_json(run / "sanity.json") or {}
    out["sanity"] = {r["method"]: _verdict(r) for r in sanity.get("results") or []
                     if r.get("model", "trained") == "trained" and r.get("method")}
    out.update(_seconds({name: s.get("seconds") for name, s in stages.items()}))
    return out


def extract_volumes(run: Path) -> dict[str, Any]:
    """The volume demo's figures from a finished `tumorcam run --volumes` folder."""
    run = Path(run)
    faithfulness = optional_json(run / "faithfulness.json")
    segmentation = optional_json(run / "segmentation.json")
    if faithfulness is None or segmentation is None:
        raise SystemExit(f"{run}: not a finished `tumorcam run --volumes` folder (no faithfulness.json or "
                         "segmentation.json)")
    training = optional_json(run / "demo_training.json") or {}
    timings = optional_json(run / "timings.json") or {}
    dice = segmentation.get("dice") or {}
    out: dict[str, Any] = {
        "source": str(run), "commit": _commit(),
        "finished": _mtime(run / "timings.json"),
        "epochs": training.get("epochs"), "size": segmentation.get("size"),
        "n_patients": segmentation.get("n_cases"),
        "dice_mean": dice.get("mean"), "dice_patient": dice.get("mean"),
        "dice_patient_ci_low": dice.get("ci_low"), "dice_patient_ci_high": dice.get("ci_high"),
        "dice_n_patients": segmentation.get("n_cases"),
        "val_dice": training.get("val_dice_mean"),
        "train_cases": len(_get(optional_json(run / "prepared" / "splits.json"), "train") or []) or None,
    }
    out.update(primary_figures(faithfulness))
    localization = optional_json(run / "localization.json")
    out["holm_localization_tests"] = sum(holm_counts(localization).values())
    sanity = optional_json(run / "sanity.json") or {}
    out["sanity"] = {sanity["method"]: _verdict(sanity)} if sanity.get("method") else {}
    out.update(_channels(optional_json(run / "channels.json")))
    seconds = dict(timings.get("seconds") or {})
    if isinstance(training.get("seconds"), (int, float)):
        seconds = {"train": training["seconds"], **seconds}
    out.update(_seconds(seconds))
    return out


def _channels(channels: Any) -> dict[str, Any]:
    """The sequence with the largest mean attribution share (channels.json's `top_channel`), its share
    and its Dice drop when ablated."""
    summary = _get(channels, "summary") or {}
    top = summary.get("top_channel")
    entry = _get(summary, "channels", top) if top is not None else None
    return {"top_channel": top, "top_channel_share": _get(entry, "share", "mean"),
            "top_channel_dice_drop": _get(entry, "dice_drop", "mean")}


def _mtime(path: Path) -> str | None:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(path.stat().st_mtime)) if path.exists() else None


# ---------------------------------------------------------------------------------------------- rendering

def fmt(value: Any, digits: int = 3) -> str:
    """A figure as the docs print it: 3 decimals; n/a when absent."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.{digits}f}"


def fmt_p(p: Any) -> str:
    """A p-value: 3 decimals down to 0.001, then 2 significant digits (0.00049, 6.1e-05)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.2g}"


def _ci(r: Mapping[str, Any], key: str) -> str:
    return f"{fmt(r.get(key))} [{fmt(r.get(key + '_ci_low'))}, {fmt(r.get(key + '_ci_high'))}]"


def _test(r: Mapping[str, Any], curve: str, name: str) -> str:
    """'better (p = 0.00049, adj 0.002)' for one test of the primary map."""
    verdict = r.get(f"{curve}_vs_{name}_verdict") or "no test"
    bold = verdict in ("worse", "not shown to differ")
    return (f"{'**' if bold else ''}{verdict}{'**' if bold else ''} (p = {fmt_p(r.get(f'{curve}_vs_{name}_p'))}, "
            f"adj {fmt_p(r.get(f'{curve}_vs_{name}_p_adjusted'))})")


def _primary_sentence(r: Mapping[str, Any], unit: str) -> str:
    parts = []
    for curve in CURVES:
        parts.append(f"{curve} AUC {_ci(r, f'{curve}_auc')}: vs random {fmt(r.get(f'{curve}_random_auc'))} "
                     f"{_test(r, curve, 'random')}, vs the predicted mask {fmt(r.get(f'{curve}_mask_auc'))} "
                     f"{_test(r, curve, 'mask')}")
    n_pairs = r.get("deletion_vs_random_n_pairs")
    return (f"{'; '.join(parts)} (exact Wilcoxon on {n_pairs if n_pairs is not None else 'n/a'} {unit}s; Holm "
            f"over the {r.get('holm_primary_tests')} tests of the primary family, the file's other "
            f"{r.get('holm_exploratory_tests')} exploratory)")


def _sanity(r: Mapping[str, Any]) -> str:
    sanity = r.get("sanity") or {}
    return ", ".join(f"{m} {v}" for m, v in sanity.items()) or "not run"


def _headline(r: Mapping[str, Any]) -> str:
    if not r.get("headline_level"):
        return ""
    return f"**{r['headline_level']}**: {r.get('headline_sentence') or ''}".rstrip()


def _seconds_text(r: Mapping[str, Any], stages: tuple[str, ...]) -> str:
    seconds = r.get("seconds") or {}
    shown = ", ".join(f"{s} {seconds[s]:.0f} s" for s in stages if s in seconds)
    return f"{fmt(r.get('seconds_total'), 0)} s in all ({shown})" if seconds else "not recorded"


def _baselines(r: Mapping[str, Any]) -> str:
    names = list(r.get("baselines") or [])
    return f"{', '.join(names) or 'no'} baseline{'s' if len(names) > 1 else ''}"


def _source(r: Mapping[str, Any]) -> str:
    return f"commit {r.get('commit') or 'n/a'}, run finished {r.get('finished') or 'n/a'}"


def render(name: str, results: Mapping[str, Any]) -> str:
    """The markdown of block `name` from the JSON `results`, ending in a blank line (so that the end
    marker, an HTML comment, never continues a table or paragraph)."""
    return _render(name, results).rstrip("\n") + "\n\n"


def _render(name: str, results: Mapping[str, Any]) -> str:
    s, v = results.get("slices") or {}, results.get("volumes") or {}
    if name == "readme":
        rows = ["| demo | command, data | result |", "|---|---|---|"]
        if s:
            headline = _headline(s)
            rows.append(
                f"| `make run` | `tumorcam run` on the synthetic default, `{s.get('preset')}` preset ({s.get('epochs')} "
                f"epochs at {s.get('size')} px, {s.get('threads')} CPU thread), {s.get('n_patients')} test patients, "
                f"{s.get('n_slices')} slices, K = {s.get('steps')} {s.get('schedule')}-spaced steps, "
                f"{_baselines(s)}; {_source(s)} | "
                f"test Dice {_ci(s, 'dice_patient')} per patient ({s.get('dice_n_patients')} patients; "
                f"{fmt(s.get('dice_mean'))} over {s.get('dice_n_slices')} slices); stages "
                f"{_seconds_text(s, ('train', 'faithfulness', 'sanity'))}" + (f"; headline {headline}" if headline else "") + " |")
            rows.append(
                f"| the primary comparison, slices | {s.get('primary_method')} (`{s.get('primary_target')}`, "
                f"`{s.get('primary_layer')}`, {s.get('primary_baseline')} baseline) of that run | "
                f"{_primary_sentence(s, 'patient')}; sanity check: {_sanity(s)} "
                "([docs/findings.md](docs/findings.md)) |")
        if v:
            headline = _headline(v)
            rows.append(
                f"| `tumorcam run --volumes` | 4-sequence synthetic cases at {v.get('size')}^3, MONAI 3-D U-Net "
                f"trained {v.get('epochs')} epochs on {v.get('train_cases')} cases, the checks on the "
                f"{v.get('n_patients')} test cases; {_source(v)} | Dice {_ci(v, 'dice_patient')} "
                f"({v.get('dice_n_patients')} cases); primary {v.get('primary_method')}: {_primary_sentence(v, 'case')}; "
                f"largest attribution share {v.get('top_channel')} ({fmt(v.get('top_channel_share'))}, Dice drop "
                f"when ablated {fmt(v.get('top_channel_dice_drop'))}); sanity check: {_sanity(v)}; "
                f"{_seconds_text(v, ('train', 'explain_and_evaluate'))}" + (f"; headline {headline}" if headline else "")
                + " ([docs/findings.md](docs/findings.md)) |")
        return "\n".join(rows) + "\n"
    if name in ("findings-slices", "findings-volumes"):
        r, unit = (s, "patient") if name == "findings-slices" else (v, "case")
        if not r:
            return "Not generated yet: run the demo and `python benchmarks/demo_results.py`.\n"
        lines = [
            f"Generated from docs/demo-results.json ({_source(r)}; `{r.get('source')}`).",
            "",
            f"Segmentation: Dice {_ci(r, 'dice_patient')} per {unit} ({r.get('dice_n_patients')} {unit}s)"
            + (f"; {fmt(r.get('dice_mean'))} over {r.get('dice_n_slices')} slices" if r.get("dice_n_slices") else "")
            + (f"; validation Dice after training {fmt(r.get('val_dice'))}" if r.get("val_dice") is not None else "")
            + ".",
            "",
            f"Primary comparison: {r.get('primary_method')}, target `{r.get('primary_target')}`, layer "
            f"`{r.get('primary_layer')}`, {r.get('primary_baseline')} baseline, K = {r.get('steps')} "
            f"{r.get('schedule')}-spaced steps, {r.get('n_patients')} {unit}s. Holm families: primary "
            f"{r.get('holm_primary_tests')} tests, exploratory {r.get('holm_exploratory_tests')} "
            f"(faithfulness.json), localisation {r.get('holm_localization_tests')}.",
            "",
            "| curve | map AUC | reference | reference AUC | raw p | adj p (family) | verdict | pairs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for curve in CURVES:
            for name_ in ("random", "mask"):
                lines.append(
                    f"| {curve} | {_ci(r, f'{curve}_auc')} | {'random' if name_ == 'random' else 'predicted mask'} | "
                    f"{fmt(r.get(f'{curve}_{name_}_auc'))} | {fmt_p(r.get(f'{curve}_vs_{name_}_p'))} | "
                    f"{fmt_p(r.get(f'{curve}_vs_{name_}_p_adjusted'))} ({r.get(f'{curve}_vs_{name_}_family')}) | "
                    f"{r.get(f'{curve}_vs_{name_}_verdict')} | {r.get(f'{curve}_vs_{name_}_n_pairs')} |")
        lines += ["", f"Sanity check: {_sanity(r)}."]
        if r.get("top_channel"):
            lines.append(f"Largest attribution share: {r['top_channel']} ({fmt(r.get('top_channel_share'))}; "
                         f"Dice drop when ablated {fmt(r.get('top_channel_dice_drop'))}).")
        if r.get("headline_level"):
            lines.append(f"Headline (faithfulness.json): {_headline(r)}")
        return "\n".join(lines) + "\n"
    if name == "report-stages":
        if not s:
            return "Not generated yet.\n"
        seconds = s.get("seconds") or {}
        listed = ", ".join(f"{k} {val:.1f} s" for k, val in seconds.items())
        return (f"Per stage from `stages.json` ({_source(s)}; {s.get('threads')} CPU thread, fixed by the "
                f"`demo` preset): {listed or 'not recorded'}; all stages {fmt(s.get('seconds_total'), 0)} s. "
                f"Test Dice {_ci(s, 'dice_patient')} per patient ({s.get('dice_n_patients')} patients).\n")
    raise KeyError(f"unknown block {name!r}")


def blocks(text: str) -> dict[str, str]:
    """The blocks of a document: {name: current content between its markers}."""
    return {m.group("name"): m.group("body") for m in MARKER.finditer(text)}


def render_blocks(text: str, results: Mapping[str, Any]) -> str:
    """`text` with the content of every marked block replaced by its rendering."""
    return MARKER.sub(lambda m: (f"<!-- demo-results:start:{m.group('name')} -->\n{render(m.group('name'), results)}"
                                 f"<!-- demo-results:end:{m.group('name')} -->"), text)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="finished slice demo run (runs/demo)")
    parser.add_argument("--volumes", type=Path, default=None,
                        help="finished volume demo run (runs/volumes); without it the JSON's volume figures stay")
    parser.add_argument("--json", type=Path, default=ROOT / RESULTS, help=f"the figures' file ({RESULTS})")
    parser.add_argument("--render", action="store_true", help="only re-render the docs from the JSON")
    parser.add_argument("--check", action="store_true", help="only check the docs against the JSON (exit 1 if stale)")
    args = parser.parse_args(argv)

    if args.render or args.check:
        results = optional_json(args.json)
        if results is None:
            print(f"{args.json}: missing", file=sys.stderr)
            return 1
    else:
        previous = optional_json(args.json) or {}
        results = {"about": ABOUT, "fields": FIELDS, "slices": extract_slices(args.run),
                   "volumes": extract_volumes(args.volumes) if args.volumes else previous.get("volumes")}
        write_atomic(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    stale = []
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text()
        new = render_blocks(text, results)
        if new != text:
            stale.append(str(doc))
            if not args.check:
                write_atomic(path, new)
                print(f"rendered {doc}")
    if args.check and stale:
        print(f"stale demo figures in {', '.join(stale)}: python benchmarks/demo_results.py --render", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
