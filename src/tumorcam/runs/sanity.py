"""The run-folder stage of `tumorcam.evaluate.sanity`: `evaluate_sanity`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.errors import TumorcamError
from tumorcam.evaluate.sanity import (
    CRITERION,
    FOREGROUND,
    LEVEL,
    MIN_PATIENTS,
    THRESHOLD_SOURCE,
    SanityResult,
    cascade_stages,
    pick_slices,
    randomization_in_chunks,
    region_source,
    result_row,
)


def evaluate_sanity(run: str | Path, data: str | Path | None = None, split: str | None = None,
                    limit: int | None = None, methods: list[str] | None = None,
                    device: str | torch.device | None = None, patients: int | None = None,
                    slices_per_patient: int | None = None, min_patients: int = MIN_PATIENTS) -> dict[str, Any]:
    """Cascading randomisation of the run's model for every (method, target, layer) of its trained-model
    maps; writes RUN/sanity.json.

    The controls are included (`edges` must fail: it ignores the weights); left out: the random map
    (its seeded noise ignores the weights by construction) and the x GT maps (the method's own maps
    times the mask, checked as the method). The slices are picked by `pick_slices` from the run's
    explained slices, the maps computed `CHUNK` slices at a time and compared inside each slice's
    foreground, the patient as the unit of the verdict (`SanityResult.verdict`,
    EvaluateConfig.bootstrap resamples).

    Args:
        run: the run folder.
        data: the prepared folder (None: the run's config.data).
        split: the split of the explained slices (None: the run's).
        limit: slices checked (default EvaluateConfig.sanity; None there: every explained slice).
        methods: the methods checked (None: every method of the trained-model maps).
        device: where the model runs (None: the run's, config.train.device).
        patients: goes to the input loading (it chooses the slices when the run has no maps yet).
        slices_per_patient: goes to the input loading, as `patients`.
        min_patients: the fewest patients compared for a verdict other than undetermined.

    Returns:
        The contents of RUN/sanity.json (schema in docs/evaluate.md).

    Raises:
        TumorcamError: for `random` among the methods, a method without maps in RUN/explanations, a
            run folder without config.json, or maps that do not fit its data and weights (`load_inputs`).
    """
    from tqdm.auto import tqdm

    from tumorcam.config import overridden
    from tumorcam.io import write_json
    from tumorcam.runs.faithfulness import write_headline
    from tumorcam.runfolder.folder import as_run
    from tumorcam.runs.inputs import RANDOM, load_inputs
    from tumorcam.runs.shard import join, patient_shard

    run = Path(run)
    info, device = join(as_run(run, device).device, "evaluate")
    inputs = load_inputs(run, data=data, split=split, device=device, patients=patients,
                         slices_per_patient=slices_per_patient)
    cfg = overridden(inputs.config.evaluate, sanity=limit)
    explain_cfg = inputs.config.explain
    patient_ids = getattr(inputs, "patient_ids", None)
    rows = pick_slices(len(inputs.file_ids), cfg.sanity, patient_ids)
    units = (np.arange(len(rows)).astype(str) if patient_ids is None
             else np.asarray(patient_ids)[rows].astype(str))
    shard = patient_shard(units, info)
    index = torch.as_tensor(rows[shard.rows], device=inputs.images.device)
    images, masks = inputs.images[index], inputs.masks[index]
    if methods is not None and RANDOM in methods:
        raise TumorcamError("methods random: the random map is not sanity-checked (its seeded noise ignores "
                            "the weights by construction)", param="methods")
    combos = sorted({(e.method, e.target, e.layer) for e in inputs.entries
                     if e.model == "trained" and not e.times_gt and e.method != RANDOM})
    if methods is not None:
        unknown = sorted(set(methods) - {c[0] for c in combos})
        if unknown:
            raise TumorcamError(f"methods: no maps of {', '.join(unknown)} in {run}/explanations", param="methods")
        combos = [c for c in combos if c[0] in methods]
    stages = cascade_stages(inputs.model)
    similarities = {}  # (method, target, layer, measure) -> per slice (N, stages)
    for method, target, layer in tqdm(combos, desc="sanity check", unit="map", disable=None if shard.is_main else True):
        result = randomization_in_chunks(inputs.model, images, masks, method=method, target=target, layer=layer,
                                         stages=stages, seed=cfg.seed, map_seed=explain_cfg.seed,
                                         ig_steps=explain_cfg.ig_steps, amp=inputs.config.explain.amp)
        similarities[method, target, layer, "spearman"] = result.spearman.T
        similarities[method, target, layer, "ssim"] = result.ssim.T
    gathered = shard.gather(similarities)
    if gathered is None:
        return shard.share(None)
    results = []
    for method, target, layer in combos:
        result = SanityResult(stages=stages, spearman=gathered[method, target, layer, "spearman"].T,
                              ssim=gathered[method, target, layer, "ssim"].T, threshold=cfg.sanity_threshold,
                              patient_ids=units, min_patients=min_patients, resamples=cfg.bootstrap, seed=cfg.seed)
        results.append({"method": method, "target": target, "layer": layer, "region": region_source(target),
                        **result_row(result)})
    out = {
        "split": inputs.split,
        "size": inputs.size,
        "n_slices": len(rows),
        "n_patients": len(set(units.tolist())),
        "unit": "patient" if patient_ids is not None else "slice (no patient ids)",
        "file_ids": inputs.file_ids[rows].tolist(),
        "patient_ids": None if patient_ids is None else units.tolist(),
        "stages": stages,
        "threshold": cfg.sanity_threshold,
        "criterion": CRITERION,
        "threshold_source": THRESHOLD_SOURCE,
        "min_patients": min_patients,
        "bootstrap": cfg.bootstrap,
        "level": LEVEL,
        "foreground": FOREGROUND,
        "region": "a region target's region is fixed for every randomised model: predicted-region (and any "
                  "target whose region depends on the prediction) uses the intact model's region, e.g. its "
                  "predicted mask (logits > 0), as the gt-region target's mask; gt-region the ground-truth mask",
        "seed": cfg.seed,
        "results": results,
    }
    write_json(run / "sanity.json", out)
    write_headline(run)  # the headline of faithfulness.json reads the primary map's sanity verdict
    return shard.share(out)
