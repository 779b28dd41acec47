"""What the explanation checks read from a run: the maps of RUN/explanations, the slices they
explain (images and masks from the prepared data, matched by file id), the model, and the
per-method summaries they write (mean with bootstrap CI, Wilcoxon test against the random map).

`RUN/explanations/index.json` = {"split", "size", "entries": [{"file", "method", "target", "layer",
"model": "trained"|"untrained", "times_gt"}]}; each entry's `.npz` holds `maps` (N,S,S) and
`file_ids` (N,). Without it, the maps are made with `tumorcam.explain.run.explain_run` when the
run has a trained model; with neither, that is one clear error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tumorcam.config import Config
from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.stats import bootstrap_ci, wilcoxon_paired
from tumorcam.model import WEIGHTS_FILE, load_run_model

RANDOM = "random"
ALPHA = 0.05  # significance level of the `verdict` against the random map


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

    @property
    def key(self) -> tuple[str, str, str, str, bool]:
        return (self.method, self.target, self.layer, self.model, self.times_gt)

    def describe(self) -> dict[str, Any]:
        out = {"method": self.method, "target": self.target, "layer": self.layer, "model": self.model,
               "times_gt": self.times_gt, "file": self.file}
        if self.generated:
            out["generated"] = True
        return out


@dataclass
class RunInputs:
    """The maps of a run with the slices they explain: images and masks (N,1,S,S) on `device`."""

    run: Path
    config: Config
    split: str
    size: int
    file_ids: np.ndarray
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


def load_inputs(run: str | Path, data: str | Path | None = None, split: str | None = None,
                device: str | torch.device | None = None, with_model: bool = True) -> RunInputs:
    """Read RUN/explanations (making it first when absent and the run has a model), the matching
    slices of the prepared data (`data`, default the run's config.data) and, if `with_model`, the
    trained model."""
    run = Path(run)
    index_path = run / "explanations" / "index.json"
    has_model = (run / "config.json").is_file() and (run / WEIGHTS_FILE).is_file()
    if not index_path.is_file():
        if not has_model:
            raise TumorcamError(f"{run}: no maps (explanations/index.json) and no trained model ({WEIGHTS_FILE}) "
                                "to make them; run `tumorcam train` and `tumorcam explain RUN` first")
        from tumorcam.explain.run import explain_run

        explain_run(run, data=data, split=split)
    if not (run / "config.json").is_file():
        raise TumorcamError(f"{run}: not a run folder (no config.json)")
    config = Config.load(run / "config.json")
    index = _read_index(index_path)
    if split is not None and split != index["split"]:
        raise TumorcamError(f"--split {split}: the maps in {index_path} are of split {index['split']!r}; "
                            f"run `tumorcam explain {run} --split {split}` first")
    entries, file_ids = _read_entries(index_path.parent, index)
    data_dir = data or config.data
    if not data_dir:
        raise TumorcamError(f"--data: {run}/config.json names no prepared folder; pass --data DIR")
    prepared = load_prepared(data_dir)
    row_of = {int(f): i for i, f in enumerate(prepared.file_ids)}
    missing = [int(f) for f in file_ids if int(f) not in row_of]
    if missing:
        raise TumorcamError(f"--data {data_dir}: has no slice for {len(missing)} file id(s) of the maps "
                            f"(first {missing[0]}); the maps were made from other data")
    rows = np.array([row_of[int(f)] for f in file_ids])
    dev = _device(device, config)
    images, masks = prepared.tensors(rows, index["size"])
    _add_random_entries(entries, file_ids, index["size"], config.evaluate.seed)
    model = None
    if with_model:
        model, _ = load_run_model(run, device=dev)
    return RunInputs(run=run, config=config, split=index["split"], size=int(index["size"]), file_ids=file_ids,
                     images=images.to(dev), masks=masks.to(dev), labels=np.asarray(prepared.labels[rows]),
                     entries=entries, device=dev, model=model)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TumorcamError(f"{path}: not a readable JSON index ({exc})") from None
    if not isinstance(index, dict) or not {"split", "size", "entries"} <= set(index) or not index["entries"]:
        raise TumorcamError(f"{path}: not an explanations index (needs split, size and a non-empty entries list)")
    return index


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
        entries.append(MapEntry(method=str(item["method"]), target=str(item["target"]), layer=str(item["layer"]),
                                model=str(item.get("model", "trained")), times_gt=bool(item.get("times_gt", False)),
                                maps=np.nan_to_num(maps), file=str(item["file"])))
    assert reference is not None
    return entries, reference


def _add_random_entries(entries: list[MapEntry], file_ids: np.ndarray, size: int, seed: int) -> None:
    """A seeded uniform random map for each model kind whose explanations have none."""
    for kind in sorted({e.model for e in entries}):
        if not any(e.method == RANDOM and e.model == kind for e in entries):
            maps = torch.rand((len(file_ids), size, size), generator=torch.Generator().manual_seed(seed)).numpy()
            entries.append(MapEntry(method=RANDOM, target="none", layer="input", model=kind, times_gt=False,
                                    maps=maps, generated=True))


def random_reference(entry: MapEntry, entries: list[MapEntry]) -> MapEntry:
    """The random map an entry is compared with: same model kind, the same target when there is one."""
    candidates = [e for e in entries if e.method == RANDOM and e.model == entry.model and not e.times_gt]
    same_target = [e for e in candidates if e.target == entry.target]
    return (same_target or candidates)[0]


def finite_list(values: np.ndarray) -> list[float | None]:
    """Floats for JSON, None where a value is NaN or infinite."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64).ravel()]


def summary_rows(
    entries: list[MapEntry],
    per_entry: dict[tuple, dict[str, np.ndarray]],
    *,
    lower_is_better: dict[str, bool],
    resamples: int,
    seed: int,
    reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One JSON row per entry: for each metric, the mean with bootstrap CI of its per-slice values,
    the Wilcoxon test against the entry's random map, and a verdict; with `reduce` (curves ->
    per-slice values) each metric also keeps its mean curve."""
    rows = []
    for entry in entries:
        if entry.key not in per_entry:
            continue
        reference = random_reference(entry, entries)
        row: dict[str, Any] = {**entry.describe(), **(extra or {}), "random_reference": reference.describe()}
        per_slice: dict[str, list[float | None]] = {}
        for metric, better_low in lower_is_better.items():
            raw = per_entry[entry.key][metric]
            values = reduce(raw) if reduce else raw
            summary: dict[str, Any] = bootstrap_ci(values, resamples=resamples, seed=seed)
            if reduce is not None:
                summary["curve_mean"] = finite_list(_mean_curve(raw))
            if reference is not entry:
                ref_raw = per_entry[reference.key][metric]
                test = wilcoxon_paired(values, reduce(ref_raw) if reduce else ref_raw)
                better_share = test["share_a_lower" if better_low else "share_a_higher"]
                summary["vs_random"] = {**test, "better_share": better_share, "verdict": _verdict(test, better_low)}
            per_slice[metric] = finite_list(values)
            row[metric] = summary
        row["per_slice"] = per_slice
        rows.append(row)
    return rows


def _mean_curve(curves: np.ndarray) -> np.ndarray:
    """Mean over slices (axis 0) of curves (N, K+1), ignoring NaN; NaN where every slice is NaN."""
    curves = np.asarray(curves, dtype=np.float64)
    finite = np.isfinite(curves)
    counts = finite.sum(axis=0)
    return np.where(counts > 0, np.where(finite, curves, 0).sum(axis=0) / np.maximum(counts, 1), np.nan)


def _verdict(test: dict[str, Any], lower_is_better: bool) -> str:
    """`better` / `worse` than random at p < ALPHA in the direction of the mean difference, else `no difference`."""
    if test["p_value"] is None or test["p_value"] >= ALPHA or not test["mean_difference"]:
        return "no difference"
    better = test["mean_difference"] < 0 if lower_is_better else test["mean_difference"] > 0
    return "better" if better else "worse"
