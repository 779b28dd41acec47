"""What a run folder holds, read for the report: every section optional, a missing one says why.

The report never fails because a stage has not run: each JSON file, the explanations index and
the prepared data are loaded into a `Section` that is either present (`value`) or missing
(`reason`, a sentence naming the file and the command that writes it). The run folder is opened
as a `tumorcam.Run` on the CPU; only a folder that is not a run is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.data.arrays import PreparedData
from tumorcam.errors import TumorcamError
from tumorcam.runfolder.index import INDEX_FILE, Entry
from tumorcam.runfolder.folder import Run


@dataclass
class Section:
    """One part of a run: `value` when it could be read, else `reason` says why not."""

    value: Any = None
    reason: str = ""

    @property
    def present(self) -> bool:
        return self.value is not None


@dataclass
class RunContents:
    """Everything the report shows, loaded once."""

    run: Run
    config: Section = field(default_factory=Section)  # the config as a dict
    history: Section = field(default_factory=Section)
    metrics: Section = field(default_factory=Section)
    faithfulness: Section = field(default_factory=Section)
    localization: Section = field(default_factory=Section)
    sanity: Section = field(default_factory=Section)
    explanations: Section = field(default_factory=Section)  # list[Entry] whose map file exists
    prepared: Section = field(default_factory=Section)  # PreparedData

    def entries(self, *, model: str | None = None, times_gt: bool | None = None) -> list[Entry]:
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
    """Read a run folder for the report; only a folder that is not a run (no config.json) is an error."""
    folder = Run.open(run, device="cpu")
    contents = RunContents(run=folder, config=Section(value=folder.config.to_dict()))
    for name, (filename, command) in JSON_SECTIONS.items():
        setattr(contents, name, _read_json(folder.path / filename, command))
    contents.explanations = _read_explanations(folder)
    contents.prepared = _open_prepared(folder)
    return contents


def _read_json(path: Path, command: str) -> Section:
    if not path.is_file():
        return Section(reason=f"{path.name} is missing (written by `{command}`)")
    try:
        return Section(value=json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        return Section(reason=f"{path.name} could not be read ({exc})")


def _read_explanations(run: Run) -> Section:
    if not (run.explanations_folder / INDEX_FILE).is_file():
        return Section(reason=f"{run.explanations_folder.name}/{INDEX_FILE} is missing (written by `tumorcam explain RUN`)")
    try:
        entries = run.explanations.entries
    except TumorcamError as exc:
        return Section(reason=str(exc))
    present = [e for e in entries if e.path.is_file()]
    if not present:
        return Section(reason=f"{run.explanations_folder.name}/{INDEX_FILE} lists no map file that exists")
    return Section(value=present)


def _open_prepared(run: Run) -> Section:
    try:
        return Section(value=run.prepared())
    except TumorcamError as exc:
        return Section(reason=str(exc))


def rows_of_file_ids(prepared: PreparedData, file_ids: np.ndarray) -> np.ndarray:
    """Row index in the prepared arrays of each file id (a file id not found is an error)."""
    order = {int(f): i for i, f in enumerate(np.asarray(prepared.file_ids))}
    try:
        return np.array([order[int(f)] for f in file_ids], dtype=np.int64)
    except KeyError as exc:
        raise TumorcamError(f"{prepared.root}: file id {exc.args[0]} of the explanations is not in the prepared data") from None
