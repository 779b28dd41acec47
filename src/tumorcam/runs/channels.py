"""The run-folder stage of `tumorcam.evaluate.channels`: `run_channels`."""

from __future__ import annotations

from typing import Any

import numpy as np

from tumorcam.evaluate.channels import channels


def run_channels(run: Any, *, data: Any = None, split: str | None = None, device: Any = None) -> dict[str, Any]:
    """Per-sequence attribution of a trained run on slices: `channels` of the run's model on the
    slices its explain step samples (config.explain's patients, slices_per_patient, limit and seed)
    of `split` (default config.evaluate.split) of `data` (default config.data), the patient the
    unit, the primary target of config.explain; written to RUN/channels.json in the schema of a run
    on volumes. Returns the file's content."""
    from pathlib import Path

    from tumorcam.io import write_json
    from tumorcam.runs.explain import select_rows
    from tumorcam.runfolder.folder import as_run

    run = as_run(run, device=device)
    config = run.config
    split = split or config.evaluate.split
    prepared = run.prepared(data)
    rows = select_rows(prepared, split, patients=config.explain.patients,
                       slices_per_patient=config.explain.slices_per_patient, limit=config.explain.limit,
                       seed=config.explain.seed)
    images, _ = prepared.tensors(rows)
    names = prepared.manifest.get("channels") or [f"channel_{c}" for c in range(images.shape[1])]
    pids = np.asarray(prepared.pids[rows]).astype(str)
    result = channels(run.model(), images.to(run.device), patient_ids=pids, channel_names=names,
                      target=config.explain.targets[0], ig_steps=config.explain.ig_steps,
                      batch_size=config.explain.batch_size, seed=config.evaluate.seed)
    header = {"data": str(prepared.root), "split": split, "n_patients": len(np.unique(pids)),
              "n_slices": len(rows), "file_ids": np.asarray(prepared.file_ids[rows]).astype(int).tolist(),
              "size": prepared.size, "channels": list(result.channel_names)}
    doc = {**header, "method": result.settings["method"], "ablation_baseline": result.settings["baseline"],
           "summary": result.summary(bootstrap=config.evaluate.bootstrap, alpha=config.evaluate.alpha)}
    write_json(Path(run.path) / "channels.json", doc)
    return doc
