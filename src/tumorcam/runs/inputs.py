"""What the explanation checks read from a run: the maps of RUN/explanations (`Run.explanations`,
entries of `tumorcam.runfolder.index`), the slices they explain (images, masks and patient ids from
the prepared data, matched by file id), and the model; the summaries the checks write are built by
`tumorcam.evaluate.summary`.

`load_inputs` reads the maps as they are and never makes them. Maps that do not fit the request
(`check_maps`: no maps, maps of another split, of other slices than `patients`/`slices_per_patient`
select, or of other weights than the run's now, per model kind by `weights_sha256`) are one error
that names the `explain_run` call to make. `tumorcam evaluate` runs that step itself first
(`explain_again`). Maps that carry no weights hash (hand-made, or from before hashes) are taken as
they are, with a note.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.config import Config
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.reference import random_maps
from tumorcam.runfolder.index import INDEX_FILE, Entry, write_index
from tumorcam.models.unet import WEIGHTS_FILE
from tumorcam.runfolder.folder import Run, as_run

RANDOM = "random"
SAMPLE_RECORD = ("selection", "patients", "slices_per_patient", "limit", "seed")


@dataclass
class RunInputs:
    """The maps of a run with the slices they explain: images and masks (N,1,S,S) on `device`;
    `patient_ids` (N,) str aligned with `file_ids`; `entries` hold maps (N,S,S) in that order."""

    run: Path
    config: Config
    split: str
    size: int
    file_ids: np.ndarray
    patient_ids: np.ndarray
    images: torch.Tensor
    masks: torch.Tensor
    labels: np.ndarray
    entries: list[Entry]
    device: torch.device
    model: torch.nn.Module | None = field(default=None)


@dataclass
class MapsCheck:
    """Whether RUN/explanations fits a request. `reason` says why not (None: it fits) and `message`
    is the error for it; `remake` holds the `explain_run` calls that make the maps fit (one per model
    kind) and `record` the sample's settings to keep when the same slices are explained again.
    `unhashed`: map files that record no weights hash."""

    reason: str | None = None
    message: str = ""
    remake: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] | None = None
    unhashed: list[str] = field(default_factory=list)


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def load_inputs(run: str | Path | Run, data: str | Path | None = None, split: str | None = None,
                device: str | torch.device | None = None, with_model: bool = True,
                patients: int | None = None, slices_per_patient: int | None = None) -> RunInputs:
    """Read RUN/explanations (an error when `check_maps` finds they do not fit), the matching slices
    of the prepared data (`data`, default the run's config.data) and, if `with_model`, the trained
    model; all on `device` (default the run's, config.train.device)."""
    run = as_run(run, device)
    check = check_maps(run, data=data, split=split, patients=patients, slices_per_patient=slices_per_patient)
    if check.reason is not None:
        raise TumorcamError(check.message)
    if check.unhashed:
        _note(f"{len(check.unhashed)} map file(s) in {run.explanations_folder} record no weights_sha256 (first "
              f"{check.unhashed[0]}); taken as made by the run's weights")
    index = run.explanations
    entries = index.aligned()
    file_ids = index.file_ids
    prepared = run.prepared(data)
    row_of = {int(f): i for i, f in enumerate(prepared.file_ids)}
    missing = [int(f) for f in file_ids if int(f) not in row_of]
    if missing:
        raise TumorcamError(f"data {prepared.root}: has no slice for {len(missing)} file id(s) of the maps "
                            f"(first {missing[0]}); the maps were made from other data", param="data")
    rows = np.array([row_of[int(f)] for f in file_ids])
    images, masks = prepared.tensors(rows, index.size)
    _add_random_entries(entries, file_ids, index.size, run.config.evaluate.seed)
    return RunInputs(run=run.path, config=run.config, split=index.split, size=index.size, file_ids=file_ids,
                     patient_ids=np.asarray(prepared.pids[rows]).astype(str), images=images.to(run.device),
                     masks=masks.to(run.device), labels=np.asarray(prepared.labels[rows]), entries=entries,
                     device=run.device, model=run.model() if with_model else None)


def check_maps(run: str | Path | Run, data: str | Path | None = None, split: str | None = None,
               patients: int | None = None, slices_per_patient: int | None = None) -> MapsCheck:
    """Do the maps of RUN/explanations fit the request? None leaves that part as the maps have it.

    They do not fit when there are none; when `split` is not theirs; when `patients` /
    `slices_per_patient` ask for other slices than the ones they explain (the slices `explain_run`
    would sample with them, the other one and the cap from config.explain); or, for a run with
    trained weights, when a model kind's entries record another `weights_sha256` than its weights
    now. The remake keeps each model kind's methods, targets and layers; maps of other weights are
    made again on the same file ids.
    """
    from tumorcam.runs.explain import select_rows, untrained_sha256

    run = as_run(run)
    has_model = run.weights_sha256 is not None
    folder = run.explanations_folder
    if not (folder / INDEX_FILE).is_file():
        selection = {"split": split, "patients": patients, "slices_per_patient": slices_per_patient}
        return _misfit(run, f"no maps in {folder} (no {INDEX_FILE})", [selection], verb="make")
    index = run.explanations
    kinds = sorted({e.model for e in index.entries}, key=lambda kind: kind != "trained")

    reason = None
    if split is not None and split != index.split:
        reason = f"the maps in {folder} are of the {index.split} split, not {split}"
    elif patients is not None or slices_per_patient is not None:
        settings = run.config.explain
        prepared = run.prepared(data)
        wanted = prepared.file_ids[select_rows(
            prepared, index.split, patients=settings.patients if patients is None else patients,
            slices_per_patient=settings.slices_per_patient if slices_per_patient is None else slices_per_patient,
            limit=settings.limit, seed=settings.seed)]
        if sorted(int(f) for f in wanted) != sorted(int(f) for f in index.file_ids):
            asked = " ".join(f"{name}={value}" for name, value in (("patients", patients),
                             ("slices_per_patient", slices_per_patient)) if value is not None)
            reason = f"the maps in {folder} explain other slices than {asked} selects"
    if reason is not None:
        selection = {"split": split or index.split, "patients": patients, "slices_per_patient": slices_per_patient}
        return _misfit(run, reason, [{**_kind_plan(index.entries, kind), **selection} for kind in kinds])
    if not has_model:
        return MapsCheck()

    unhashed = [e.file for e in index.entries if not e.weights_sha256]
    stale = []
    for kind in kinds:
        recorded = {e.weights_sha256 for e in index.entries if e.weights_sha256 and e.model == kind}
        if not recorded:
            continue
        if kind == "untrained":
            try:
                now = untrained_sha256(run.config)
            except TumorcamError:  # e.g. ImageNet weights unavailable: cannot tell, keep the maps
                continue
        else:
            now = run.weights_sha256
        if recorded != {now}:
            stale.append(kind)
    if not stale:
        return MapsCheck(unhashed=unhashed)
    same_slices = {"split": index.split, "ids": [int(f) for f in index.file_ids]}
    check = _misfit(run, f"the maps in {folder} were made by other weights than the run's now "
                         f"({', '.join(stale)} model)", [{**_kind_plan(index.entries, kind), **same_slices}
                                                          for kind in stale])
    if index.header.get("selection") == "sample":  # the same slices: the sample's record still holds
        check.record = {key: index.header.get(key) for key in SAMPLE_RECORD}
    return check


def _kind_plan(entries: list[Entry], kind: str) -> dict[str, Any]:
    """The methods, targets and layers of a model kind's entries (x GT maps come with Grad-CAM)."""
    mine = [e for e in entries if e.model == kind and not e.times_gt]
    layers = list(dict.fromkeys(e.layer for e in mine if e.layer != "input"))
    return {"untrained": kind == "untrained", "methods": list(dict.fromkeys(e.method for e in mine)),
            "targets": list(dict.fromkeys(e.target for e in mine)), "layers": layers or None}


def _misfit(run: Run, reason: str, remake: list[dict[str, Any]], verb: str = "remake") -> MapsCheck:
    """A `MapsCheck` of maps that do not fit, its error naming the commands that make them fit."""
    if run.weights_sha256 is None:
        message = (f"{run.path}: {reason}, and there is no trained model ({WEIGHTS_FILE}) to {verb} them; "
                   "train it first")
    else:
        calls = " and ".join(f"`{_call(run.path, call)}`" for call in remake)
        message = f"{run.path}: {reason}; make them with {calls} first (`explain_again` does it)"
    return MapsCheck(reason=reason, message=message, remake=remake)


def _call(path: Path, call: dict[str, Any]) -> str:
    """One `explain_run` call as Python: `explain_run('RUN', methods=['gradcam'], patients=1)`."""
    arguments = [repr(str(path))] + [f"{key}={call[key]!r}" for key in
                                     ("untrained", "methods", "targets", "layers", "ids", "split", "patients",
                                      "slices_per_patient") if call.get(key) not in (None, False, [])]
    return f"explain_run({', '.join(arguments)})"


def explain_again(run: str | Path | Run, check: MapsCheck, data: str | Path | None = None) -> None:
    """Make RUN/explanations fit as `check` (of `check_maps`) says: the `explain_run` calls of
    `check.remake`, then the sample's record kept when the same slices were explained again."""
    from tumorcam.runs.explain import explain_run

    run = as_run(run)
    if check.reason is None:
        return
    if run.weights_sha256 is None:
        raise TumorcamError(check.message)
    for call in check.remake:
        explain_run(run, data=data, **call)
    if check.record is not None:
        index = run.explanations
        index.header.update(check.record)
        write_index(index)


def _add_random_entries(entries: list[Entry], file_ids: np.ndarray, size: int, seed: int) -> None:
    """A seeded uniform random map for each model kind whose explanations have none."""
    for kind in sorted({e.model for e in entries}):
        if not any(e.method == RANDOM and e.model == kind for e in entries):
            maps = random_maps(len(file_ids), (size, size), seed).numpy()
            entries.append(Entry.in_memory(maps, method=RANDOM, target="none", layer="input", model=kind,
                                           control=True))


def random_reference(entry: Entry, entries: list[Entry]) -> Entry:
    """The random map an entry is compared with: same model kind, the same target when there is one."""
    candidates = [e for e in entries if e.method == RANDOM and e.model == entry.model and not e.times_gt]
    same_target = [e for e in candidates if e.target == entry.target]
    return (same_target or candidates)[0]
