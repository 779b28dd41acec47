"""The run-folder stage of `tumorcam.evaluate.localization`: `evaluate_localization`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.evaluate.localization import (
    METRICS,
    TESTS,
    check_top_percent,
    localization_scores,
)
from tumorcam.evaluate.summary import adjust_file, finite_list, metric_summary


def evaluate_localization(run: str | Path, data: str | Path | None = None, split: str | None = None,
                          top_percent: float | None = None, patients: int | None = None,
                          slices_per_patient: int | None = None) -> dict[str, Any]:
    """Localisation of every map of RUN/explanations (trained and untrained model, controls included);
    writes RUN/localization.json.

    Each row's metric has the patient-level summary of `tumorcam.evaluate.summary.metric_summary`
    (higher is better), compared with the random map (`vs_random`) and the predicted-mask control
    (`vs_mask`) of the same model kind and target, each with the Wilcoxon signed-rank test on the
    patients' mean differences (`TESTS`). Every comparison is exploratory: one Holm adjustment over
    the file.

    Args:
        run: the run folder.
        data: the prepared folder (None: the run's config.data).
        split: the split of the explained slices (None: the run's).
        top_percent: p of the top-p% IoU, in (0, 100] (None: config.evaluate.top_percent).
        patients: with `slices_per_patient`, selects the slices (`load_inputs`).
        slices_per_patient: with `patients`, selects the slices (`load_inputs`).

    Returns:
        The contents of RUN/localization.json (schema in docs/evaluate.md).

    Raises:
        TumorcamError: for a top_percent outside (0, 100], a run folder without config.json, or maps
            that do not fit its data and weights (`load_inputs`).
    """
    from tumorcam.config import overridden
    from tumorcam.io import write_json
    from tumorcam.runs.faithfulness import references
    from tumorcam.runs.inputs import load_inputs
    from tumorcam.runs.shard import join, patient_shard

    run = Path(run)
    if top_percent is not None:
        check_top_percent(top_percent)
    info, _ = join(torch.device("cpu"), "evaluate")
    inputs = load_inputs(run, data=data, split=split, device="cpu", with_model=False, patients=patients,
                         slices_per_patient=slices_per_patient)
    cfg = overridden(inputs.config.evaluate, top_percent=top_percent)
    percent = cfg.top_percent
    shard = patient_shard(inputs.patient_ids, info)
    masks = inputs.masks[torch.from_numpy(shard.rows)]
    scores = {(e.key, metric): values for e in inputs.entries
              for metric, values in localization_scores(torch.from_numpy(e.maps[shard.rows]), masks,
                                                        top_percent=percent, seed=cfg.seed, rows=shard.rows).items()}
    gathered = shard.gather(scores)
    if gathered is None:
        return shard.share(None)
    per_entry = {e.key: {metric: gathered[e.key, metric] for metric in METRICS} for e in inputs.entries}
    patient_ids = np.asarray(inputs.patient_ids).astype(str)
    rows = []
    for entry in inputs.entries:
        random_map, mask_map = references(entry, inputs.entries)
        row: dict[str, Any] = {
            **entry.describe(), "control": entry.control,
            "random_reference": None if random_map is None else random_map.describe(),
            "mask_reference": None if mask_map is None else mask_map.describe(),
        }
        for metric in METRICS:
            compared = {name: None if other is None else per_entry[other.key][metric]
                        for name, other in (("random", random_map), ("mask", mask_map))}
            row[metric] = metric_summary(per_entry[entry.key][metric], compared, patient_ids, lower_is_better=False,
                                         test=TESTS[metric], resamples=cfg.bootstrap, seed=cfg.seed, alpha=cfg.alpha)
        row["per_slice"] = {metric: finite_list(per_entry[entry.key][metric]) for metric in METRICS}
        rows.append(row)
    adjust_file(rows, METRICS, primary=None, alpha=cfg.alpha)
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_patients": len(np.unique(patient_ids)),
        "n_slices": len(inputs.file_ids),
        "n_with_tumour": int((inputs.masks.flatten(1) > 0.5).any(1).sum()),
        "alpha": cfg.alpha,
        "tests": dict(TESTS),
        "file_ids": inputs.file_ids.tolist(),
        "patient_ids": patient_ids.tolist(),
        "top_percent": percent,
        "seed": cfg.seed,
        "bootstrap": cfg.bootstrap,
        "results": rows,
    }
    write_json(run / "localization.json", out)
    return shard.share(out)
