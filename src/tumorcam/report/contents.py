"""What a run folder holds, read for the report: every section optional, a missing one says why.

The report never fails because a stage has not run: each JSON file, the explanations index and
the prepared data are loaded into a `Section` that is either present (`value`) or missing
(`reason`, a sentence naming the file and the command that writes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.data.arrays import PreparedData, load_prepared
from tumorcam.errors import TumorcamError


@dataclass
class Section:
    """One part of a run: `value` when it could be read, else `reason` says why not."""

    value: Any = None
    reason: str = ""

    @property
    def present(self) -> bool:
        return self.value is not None


@dataclass
class ExplanationEntry:
    """One `.npz` of RUN/explanations: maps (N,S,S) float32 and their file ids."""

    file: str
    method: str
    target: str
    layer: str
    model: str
    times_gt: bool
    path: Path

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.path, allow_pickle=False) as npz:
            return npz["maps"].astype(np.float32), npz["file_ids"].astype(np.int64)


@dataclass
class RunContents:
    """Everything the report shows, loaded once."""

    run: Path
    config: Section = field(default_factory=Section)
    history: Section = field(default_factory=Section)
    metrics: Section = field(default_factory=Section)
    faithfulness: Section = field(default_factory=Section)
    localization: Section = field(default_factory=Section)
    sanity: Section = field(default_factory=Section)
    explanations: Section = field(default_factory=Section)  # list[ExplanationEntry]
    prepared: Section = field(default_factory=Section)  # PreparedData

    def entries(self, *, model: str | None = None, times_gt: bool | None = None) -> list[ExplanationEntry]:
        """Explanation entries filtered by model ("trained"/"untrained") and Grad-CAM x GT flag."""
        if not self.explanations.present:
            return []
        return [e for e in self.explanations.value
                if (model is None or e.model == model) and (times_gt is None or e.times_gt == times_gt)]


JSON_SECTIONS = {
    "history": ("history.json", "tumorcam train"),
    "metrics": ("metrics.json", "tumorcam evaluate RUN --segmentation"),
    "faithfulness": ("faithfulness.json", "tumorcam evaluate RUN --faithfulness"),
    "localization": ("localization.json", "tumorcam evaluate RUN --localization"),
    "sanity": ("sanity.json", "tumorcam evaluate RUN --sanity"),
}


def load_run_contents(run: str | Path) -> RunContents:
    """Read a run folder for the report; only a folder without config.json is an error."""
    run = Path(run)
    if not run.is_dir():
        raise TumorcamError(f"{run}: no such run folder")
    if not (run / "config.json").is_file():
        raise TumorcamError(f"{run}: not a run folder (no config.json); run `tumorcam train` or `tumorcam run` first")
    contents = RunContents(run=run, config=_read_json(run / "config.json", "tumorcam train"))
    if not contents.config.present:
        raise TumorcamError(f"{run / 'config.json'}: {contents.config.reason}")
    for name, (filename, command) in JSON_SECTIONS.items():
        setattr(contents, name, _read_json(run / filename, command))
    contents.explanations = _read_explanations(run / "explanations")
    contents.prepared = _open_prepared(run, contents.config.value)
    return contents


def _read_json(path: Path, command: str) -> Section:
    if not path.is_file():
        return Section(reason=f"{path.name} is missing (written by `{command}`)")
    try:
        return Section(value=json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        return Section(reason=f"{path.name} could not be read ({exc})")


def _read_explanations(folder: Path) -> Section:
    index = _read_json(folder / "index.json", "tumorcam explain RUN")
    if not index.present:
        return Section(reason=f"explanations/{index.reason}")
    try:
        entries = [
            ExplanationEntry(file=str(e["file"]), method=str(e["method"]), target=str(e["target"]),
                             layer=str(e["layer"]), model=str(e.get("model", "trained")),
                             times_gt=bool(e.get("times_gt", False)), path=folder / str(e["file"]))
            for e in index.value["entries"]
        ]
    except (KeyError, TypeError) as exc:
        return Section(reason=f"explanations/index.json does not list entries as documented ({exc!r})")
    present = [e for e in entries if e.path.is_file()]
    if not present:
        return Section(reason="explanations/index.json lists no map file that exists")
    return Section(value=present)


def _open_prepared(run: Path, config: dict[str, Any]) -> Section:
    data = str(config.get("data") or "")
    if not data:
        return Section(reason="config.json names no prepared data folder")
    path = Path(data)
    candidates = [path] if path.is_absolute() else [path, run / path]
    for candidate in candidates:
        if candidate.is_dir():
            try:
                return Section(value=load_prepared(candidate))
            except TumorcamError as exc:
                return Section(reason=str(exc))
    return Section(reason=f"the prepared data folder {data} named in config.json is not there")


def rows_of_file_ids(prepared: PreparedData, file_ids: np.ndarray) -> np.ndarray:
    """Row index in the prepared arrays of each file id (a file id not found is an error)."""
    order = {int(f): i for i, f in enumerate(np.asarray(prepared.file_ids))}
    try:
        return np.array([order[int(f)] for f in file_ids], dtype=np.int64)
    except KeyError as exc:
        raise TumorcamError(f"{prepared.root}: file id {exc.args[0]} of the explanations is not in the prepared data") from None
