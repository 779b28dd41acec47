"""What the explanation checks read from a run: the maps of RUN/explanations, the slices they
explain (images, masks and patient ids from the prepared data, matched by file id), and the model;
the summaries the checks write are built by `tumorcam.evaluate.summary`.

`RUN/explanations/index.json` (written by `tumorcam.explain.run.explain_run`) = {"split", "size",
"weights_sha256", "patients", "slices_per_patient", ..., "entries": [{"file", "method", "target",
"layer", "model": "trained"|"untrained", "times_gt", "control", "weights_sha256"}]}; each entry's
`.npz` holds `maps` (N,S,S) and `file_ids` (N,).

`load_inputs` first makes the maps fit the request (`ensure_maps`): it explains the run when there
are no maps, and again, with a note on stderr, when they are of another split, of other slices than
`patients`/`slices_per_patient` ask for, or of other weights than the run's now (a model kind whose
entries' `weights_sha256` differs). Remaking needs the trained model; a run without one gets one
clear error instead. Maps that carry no weights hash (hand-made, or from before hashes) are taken
as they are, with a note.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.config import Config
from tumorcam.data.arrays import PreparedData, load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.io import write_json
from tumorcam.model import WEIGHTS_FILE, load_run_model

RANDOM = "random"


@dataclass
class MapEntry:
    """One set of maps (N,S,S) float32 of one method, target and layer, aligned to the run's file ids."""

    method: str
    target: str
    layer: str
    model: str
    times_gt: bool
    maps: np.ndarray
    file: str = ""
    generated: bool = False  # a random map made here because the explanations had none
    control: bool = False  # a control map (random, predicted mask, ...), not an explanation

    @property
    def key(self) -> tuple[str, str, str, str, bool]:
        return (self.method, self.target, self.layer, self.model, self.times_gt)

    def describe(self) -> dict[str, Any]:
        out = {"method": self.method, "target": self.target, "layer": self.layer, "model": self.model,
               "times_gt": self.times_gt, "control": self.control, "file": self.file}
        if self.generated:
            out["generated"] = True
        return out


@dataclass
class RunInputs:
    """The maps of a run with the slices they explain: images and masks (N,1,S,S) on `device`;
    `patient_ids` (N,) str aligned with `file_ids`."""

    run: Path
    config: Config
    split: str
    size: int
    file_ids: np.ndarray
    patient_ids: np.ndarray
    images: torch.Tensor
    masks: torch.Tensor
    labels: np.ndarray
    entries: list[MapEntry]
    device: torch.device
    model: torch.nn.Module | None = field(default=None)


def _device(name: str | torch.device | None, config: Config) -> torch.device:
    from tumorcam.training.device import resolve_device

    if isinstance(name, torch.device):
        return name
    return resolve_device(name or config.train.device)


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _prepared(run: Path, config: Config, data: str | Path | None) -> PreparedData:
    data_dir = data or config.data
    if not data_dir:
        raise TumorcamError(f"--data: {run}/config.json names no prepared folder; pass --data DIR")
    return load_prepared(data_dir)


def load_inputs(run: str | Path, data: str | Path | None = None, split: str | None = None,
                device: str | torch.device | None = None, with_model: bool = True,
                patients: int | None = None, slices_per_patient: int | None = None) -> RunInputs:
    """Read RUN/explanations (made or remade first by `ensure_maps`), the matching slices of the
    prepared data (`data`, default the run's config.data) and, if `with_model`, the trained model."""
    run = Path(run)
    ensure_maps(run, data=data, split=split, patients=patients, slices_per_patient=slices_per_patient)
    index_path = run / "explanations" / "index.json"
    config = Config.load(run / "config.json")
    index = _read_index(index_path)
    entries, file_ids = _read_entries(index_path.parent, index)
    prepared = _prepared(run, config, data)
    row_of = {int(f): i for i, f in enumerate(prepared.file_ids)}
    missing = [int(f) for f in file_ids if int(f) not in row_of]
    if missing:
        raise TumorcamError(f"--data {prepared.root}: has no slice for {len(missing)} file id(s) of the maps "
                            f"(first {missing[0]}); the maps were made from other data")
    rows = np.array([row_of[int(f)] for f in file_ids])
    dev = _device(device, config)
    images, masks = prepared.tensors(rows, index["size"])
    _add_random_entries(entries, file_ids, index["size"], config.evaluate.seed)
    model = None
    if with_model:
        model, _ = load_run_model(run, device=dev)
    return RunInputs(run=run, config=config, split=index["split"], size=int(index["size"]), file_ids=file_ids,
                     patient_ids=np.asarray(prepared.pids[rows]).astype(str), images=images.to(dev),
                     masks=masks.to(dev), labels=np.asarray(prepared.labels[rows]), entries=entries, device=dev,
                     model=model)


def ensure_maps(run: str | Path, data: str | Path | None = None, split: str | None = None,
                patients: int | None = None, slices_per_patient: int | None = None) -> None:
    """Make RUN/explanations fit the request (see the module docstring); None leaves that part as it is.

    `patients` / `slices_per_patient` ask for the slices `explain_run` would sample with them (the
    other one, and the cap, from config.explain); the maps fit when they explain the same file ids.
    Remade maps keep the methods, targets and layers of the maps they replace, per model kind.
    """
    from tumorcam.explain.run import explain_run, run_weights_sha256, select_rows, untrained_sha256

    run = Path(run)
    index_path = run / "explanations" / "index.json"
    has_model = (run / "config.json").is_file() and (run / WEIGHTS_FILE).is_file()
    if not index_path.is_file():
        if not has_model:
            raise TumorcamError(f"{run}: no maps (explanations/index.json) and no trained model ({WEIGHTS_FILE}) "
                                "to make them; run `tumorcam train` and `tumorcam explain RUN` first")
        _note(f"{run}: no maps in explanations/ yet; making them (tumorcam explain)")
        explain_run(run, data=data, split=split, patients=patients, slices_per_patient=slices_per_patient)
        return
    if not (run / "config.json").is_file():
        raise TumorcamError(f"{run}: not a run folder (no config.json)")
    config = Config.load(run / "config.json")
    index = _read_index(index_path)
    items = index["entries"]
    file_ids = _index_file_ids(index_path.parent, index)

    reason = None
    if split is not None and split != index["split"]:
        reason = f"are of the {index['split']} split, not {split}"
    elif patients is not None or slices_per_patient is not None:
        settings = config.explain
        prepared = _prepared(run, config, data)
        wanted = prepared.file_ids[select_rows(
            prepared, index["split"], patients=settings.patients if patients is None else patients,
            slices_per_patient=settings.slices_per_patient if slices_per_patient is None else slices_per_patient,
            limit=settings.limit, seed=settings.seed)]
        if sorted(int(f) for f in wanted) != sorted(int(f) for f in file_ids):
            asked = " ".join(f"{option} {value}" for option, value in (("--patients", patients),
                             ("--slices-per-patient", slices_per_patient)) if value is not None)
            reason = f"explain other slices than {asked} selects"
    stale: list[str] = []
    if reason is None and has_model:
        unhashed = [str(e.get("file")) for e in items if not e.get("weights_sha256")]
        if unhashed:
            _note(f"{len(unhashed)} map file(s) in {index_path.parent} record no weights_sha256 (first "
                  f"{unhashed[0]}); taken as made by the run's weights")
        for kind in sorted({str(e.get("model", "trained")) for e in items}):
            recorded = {e["weights_sha256"] for e in items if e.get("weights_sha256")
                        and str(e.get("model", "trained")) == kind}
            if not recorded:
                continue
            if kind == "untrained":
                try:
                    now = untrained_sha256(config)
                except TumorcamError:  # e.g. ImageNet weights unavailable: cannot tell, keep the maps
                    continue
            else:
                now = run_weights_sha256(run)
            if recorded != {now}:
                stale.append(kind)
        if stale:
            reason = f"were made by other weights than the run's now ({', '.join(stale)} model)"
    if reason is None:
        return
    if not has_model:
        raise TumorcamError(f"{run}: the maps in explanations/ {reason}, and there is no trained model "
                            f"({WEIGHTS_FILE}) to remake them")
    _note(f"the maps in {index_path.parent} {reason}; explaining again")
    kinds = stale or sorted({str(e.get("model", "trained")) for e in items}, key=lambda k: k != "trained")
    for kind in kinds:
        mine = [e for e in items if str(e.get("model", "trained")) == kind and not e.get("times_gt")]
        methods = list(dict.fromkeys(str(e["method"]) for e in mine))
        targets = list(dict.fromkeys(str(e["target"]) for e in mine))
        layers = list(dict.fromkeys(str(e["layer"]) for e in mine if e["layer"] != "input")) or None
        if stale:  # the same slices, by file id
            selection: dict[str, Any] = {"split": index["split"], "ids": [int(f) for f in file_ids]}
        else:
            selection = {"split": split or index["split"], "patients": patients,
                         "slices_per_patient": slices_per_patient}
        explain_run(run, data=data, methods=methods, targets=targets, layers=layers, untrained=kind == "untrained",
                    **selection)
    if stale and index.get("selection") == "sample":  # the same slices: the sample's record still holds
        remade = _read_index(index_path)
        remade.update({key: index.get(key) for key in ("selection", "patients", "slices_per_patient", "limit", "seed")})
        write_json(index_path, remade)


def _index_file_ids(folder: Path, index: dict[str, Any]) -> np.ndarray:
    """The file ids of the index's first entry."""
    path = folder / str(index["entries"][0].get("file", ""))
    try:
        with np.load(path, allow_pickle=False) as npz:
            return np.asarray(npz["file_ids"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise TumorcamError(f"{path}: not a readable maps file with `maps` and `file_ids` ({exc})") from None


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TumorcamError(f"{path}: not a readable JSON index ({exc})") from None
    if not isinstance(index, dict) or not {"split", "size", "entries"} <= set(index) or not index["entries"]:
        raise TumorcamError(f"{path}: not an explanations index (needs split, size and a non-empty entries list)")
    return index


def _is_control(method: str) -> bool:
    from tumorcam.explain import METHODS
    from tumorcam.explain.methods.controls import is_control

    return method in METHODS and is_control(METHODS[method])


def _read_entries(folder: Path, index: dict[str, Any]) -> tuple[list[MapEntry], np.ndarray]:
    """Every entry's maps, reordered to the first entry's file ids; another set of slices is an error."""
    entries: list[MapEntry] = []
    reference: np.ndarray | None = None
    size = int(index["size"])
    for item in index["entries"]:
        path = folder / str(item.get("file", ""))
        try:
            with np.load(path, allow_pickle=False) as npz:
                maps = np.asarray(npz["maps"], dtype=np.float32)
                ids = np.asarray(npz["file_ids"], dtype=np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise TumorcamError(f"{path}: not a readable maps file with `maps` and `file_ids` ({exc})") from None
        if maps.ndim != 3 or maps.shape[1:] != (size, size) or maps.shape[0] != ids.shape[0]:
            raise TumorcamError(f"{path}: maps {maps.shape} with {ids.shape[0]} file ids; expected (N,{size},{size})")
        if reference is None:
            reference = ids
        elif not np.array_equal(ids, reference):
            if sorted(ids.tolist()) != sorted(reference.tolist()):
                raise TumorcamError(f"{path}: explains other slices than {folder / index['entries'][0]['file']}")
            order = np.argsort(ids)
            maps = maps[order[np.searchsorted(ids[order], reference)]]
        times_gt = bool(item.get("times_gt", False))
        control = bool(item["control"]) if "control" in item else (not times_gt and _is_control(str(item["method"])))
        entries.append(MapEntry(method=str(item["method"]), target=str(item["target"]), layer=str(item["layer"]),
                                model=str(item.get("model", "trained")), times_gt=times_gt,
                                maps=np.nan_to_num(maps), file=str(item["file"]), control=control))
    assert reference is not None
    return entries, reference


def _add_random_entries(entries: list[MapEntry], file_ids: np.ndarray, size: int, seed: int) -> None:
    """A seeded uniform random map for each model kind whose explanations have none."""
    for kind in sorted({e.model for e in entries}):
        if not any(e.method == RANDOM and e.model == kind for e in entries):
            maps = torch.rand((len(file_ids), size, size), generator=torch.Generator().manual_seed(seed)).numpy()
            entries.append(MapEntry(method=RANDOM, target="none", layer="input", model=kind, times_gt=False,
                                    maps=maps, generated=True, control=True))


def random_reference(entry: MapEntry, entries: list[MapEntry]) -> MapEntry:
    """The random map an entry is compared with: same model kind, the same target when there is one."""
    candidates = [e for e in entries if e.method == RANDOM and e.model == entry.model and not e.times_gt]
    same_target = [e for e in candidates if e.target == entry.target]
    return (same_target or candidates)[0]
