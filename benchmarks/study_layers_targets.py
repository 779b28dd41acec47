"""Which Grad-CAM layer and target are most faithful? One study on a trained run, printed as JSON.

For every method/target/layer of the study: explain the split (`explain_run`), score
Deletion/Insertion under each baseline (`evaluate_faithfulness`), localisation against the
ground truth (`evaluate_localization`) and, with `--sanity`, the cascading randomisation check
(`evaluate_sanity`). The JSON holds, per (method, target, layer): the deletion and insertion AUC
(mean, 95% bootstrap CI, Wilcoxon p against the random map of the same target, verdict, share of
slices beating random) per baseline; the energy pointing game, pointing game and top-p% IoU
(mean, CI, p against random); and the sanity check's final Spearman rho and pass/fail.

Everything is computed by the public stage APIs and also left in the run folder
(RUN/explanations/, RUN/faithfulness.json, RUN/localization.json, RUN/sanity.json), so a
study overwrites those files of RUN: run it on a run made for the study.

    python benchmarks/study_layers_targets.py --run RUN --data DIR --split test --limit 24 \
        --methods gradcam,layercam,saliency,random --layers decoder.blocks.4,decoder.blocks.2 --steps 20

Grad-CAM x GT maps (which `explain_run` always writes beside Grad-CAM) are left out of the
perturbation game unless `--times-gt`: they answer no layer/target question and cost as much as
any other map; the study does this by listing only the other entries in explanations/index.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tumorcam.runs.faithfulness import evaluate_faithfulness
from tumorcam.runs.localization import evaluate_localization
from tumorcam.runs.sanity import evaluate_sanity
from tumorcam.runfolder.index import EXPLANATIONS_DIR, read_index, write_index
from tumorcam.runs.explain import explain_run
from tumorcam.device import cpu_threads

LOCALIZATION_METRICS = ("energy_pointing_game", "pointing_game", "top_iou")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="trained run folder (tumorcam train)")
    parser.add_argument("--data", default=None, help="prepared folder (default: the run's config.data)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N slices of the split (default 24)")
    parser.add_argument("--ids", type=lambda t: [int(i) for i in _names(t)], default=None,
                        help="file ids of the split to explain instead of the first --limit")
    parser.add_argument("--methods", type=_names, default=_names("gradcam,layercam,saliency,random"))
    parser.add_argument("--targets", type=_names, default=_names("mean-logits,predicted-region"))
    parser.add_argument("--layers", type=_names,
                        default=_names("decoder.blocks.4,decoder.blocks.3,decoder.blocks.2,encoder.layer4"))
    parser.add_argument("--steps", type=int, default=20, help="Deletion/Insertion steps K")
    parser.add_argument("--baselines", type=_names, default=_names("zero,blur"))
    parser.add_argument("--score", default=None, help="mean-sigmoid or predicted-region (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=None, help="maps per explain batch")
    parser.add_argument("--times-gt", action="store_true", help="also score the Grad-CAM x GT maps")
    parser.add_argument("--sanity", action="store_true", help="also run the cascading randomisation check")
    parser.add_argument("--sanity-slices", type=int, default=None)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: the idle cores, see cpu_threads)")
    parser.add_argument("--reuse-maps", action="store_true", help="skip explain_run: use RUN/explanations as is")
    return parser.parse_args(argv)


def drop_times_gt(run: Path) -> None:
    """List only the maps that are not Grad-CAM x GT in RUN/explanations/index.json (files stay on disk)."""
    index = read_index(run / EXPLANATIONS_DIR)
    index.entries = [e for e in index.entries if not e.times_gt]
    write_index(index)


def _key(row: dict[str, Any]) -> tuple[str, str, str, bool]:
    return (row["method"], row["target"], row["layer"], bool(row["times_gt"]))


def _summary(metric: dict[str, Any]) -> dict[str, Any]:
    out = {name: metric.get(name) for name in ("mean", "ci_low", "ci_high", "n")}
    test = metric.get("vs_random")
    if test is not None:
        out.update(p_vs_random=test["p_value"], verdict=test["verdict"], better_share=test["better_share"],
                   mean_difference=test["mean_difference"])
    return out


def collect(faith: dict[str, Any], local: dict[str, Any], sanity: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per (method, target, layer, times_gt) with the figures of every stage."""
    rows: dict[tuple, dict[str, Any]] = {}

    def row_of(result: dict[str, Any]) -> dict[str, Any]:
        key = _key(result)
        return rows.setdefault(key, {"method": key[0], "target": key[1], "layer": key[2], "times_gt": key[3]})

    for result in faith["results"]:
        entry = row_of(result)
        entry.setdefault("faithfulness", {})[result["baseline"]] = {
            curve: _summary(result[curve]) for curve in ("deletion", "insertion")}
    for result in local["results"]:
        if result["model"] != "trained":
            continue
        row_of(result)["localization"] = {m: _summary(result[m]) for m in LOCALIZATION_METRICS}
    for result in (sanity or {}).get("results", []):
        row_of({**result, "times_gt": False})["sanity"] = {
            "final_spearman": result["final_spearman"], "passes": result["passes"]}
    return list(rows.values())


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(cpu_threads(args.threads))
    seconds: dict[str, float] = {}
    start_machine = machine()

    began = time.perf_counter()
    limit = None if args.ids else (args.limit or 24)
    if not args.reuse_maps:
        explain_run(args.run, data=args.data, split=args.split, limit=limit, ids=args.ids, methods=args.methods,
                    targets=args.targets, layers=args.layers, batch_size=args.batch_size)
    if not args.times_gt:
        drop_times_gt(args.run)
    seconds["explain"] = time.perf_counter() - began

    began = time.perf_counter()
    faith = evaluate_faithfulness(args.run, data=args.data, split=args.split, steps=args.steps,
                                  baselines=args.baselines, score=args.score)
    seconds["faithfulness"] = time.perf_counter() - began

    began = time.perf_counter()
    local = evaluate_localization(args.run, data=args.data, split=args.split)
    seconds["localization"] = time.perf_counter() - began

    sanity = None
    if args.sanity:
        began = time.perf_counter()
        sanity = evaluate_sanity(args.run, data=args.data, split=args.split, limit=args.sanity_slices)
        seconds["sanity"] = time.perf_counter() - began

    out = {
        "run": str(args.run), "data": args.data, "split": faith["split"], "size": faith["size"],
        "n_slices": faith["n_slices"], "n_with_tumour": local["n_with_tumour"], "steps": faith["steps"],
        "score": faith["score"], "baselines": faith["baselines"], "top_percent": local["top_percent"],
        "bootstrap": faith["bootstrap"], "argv": sys.argv[1:] if argv is None else argv,
        "machine": start_machine, "load_average_end": machine()["load_average"],
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "rows": collect(faith, local, sanity),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
