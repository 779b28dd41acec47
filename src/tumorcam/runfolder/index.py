"""The explanations index of a run: RUN/explanations/index.json and the map files it lists.

    index.json = {"split", "size", "weights_sha256", "selection" ("sample" | "ids"), "patients",
                  "slices_per_patient", "limit", "seed", "n_patients", "n_slices",
                  "entries": [{"file", "method", "target", "layer", "model", "times_gt", "control",
                               "weights_sha256"}]}

Each entry's `.npz` holds `maps` float16 (N,S,S) in [0, 1] and `file_ids` int64 (N,). `Entry` is
the one type of a map set, on disk or made in memory: the index lists entries, `explain_run` plans
and writes them, the evaluation and the report read their maps, which are loaded only when asked
for (`Entry.load`, `Entry.maps`). `read_index` is the one reader of index.json, `write_index` the
one writer. Entries written before the fields existed read as model "trained", no x GT, the method
registry's control flag and no weights hash.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tumorcam.errors import TumorcamError
from tumorcam.io import write_json

EXPLANATIONS_DIR = "explanations"
INDEX_FILE = "index.json"
REQUIRED = ("file", "method", "target", "layer")


def entry_file(method: str, target: str, layer: str, model: str, times_gt: bool) -> str:
    """The map file of an entry: `<model>__<method>[-x-gt]__<target>__<layer>.npz` ("+" spelt "plus")."""
    name = method.replace("+", "plus") + ("-x-gt" if times_gt else "")
    return f"{model}__{name}__{target}__{layer}.npz"


def method_is_control(method: str) -> bool:
    """The method registry's control flag; False for a method the registry does not know."""
    from tumorcam.explain.methods import METHODS

    return method in METHODS and METHODS[method].control


@dataclass
class Entry:
    """One map set: (method, target, layer, model, times_gt) is its identity (`key`, equality).

    `file` defaults to `entry_file(...)`, `control` to the method's flag (never for x GT maps).
    `folder` is where its file lies; `size` (S), when known, is checked on loading; `order`, when
    given, is the file ids `maps` are put in. A map set made in memory (`Entry.in_memory`) has no
    file and is `generated`.
    """

    method: str
    target: str
    layer: str
    model: str = "trained"
    times_gt: bool = False
    control: bool | None = field(default=None, compare=False)
    weights_sha256: str | None = field(default=None, compare=False)
    file: str | None = field(default=None, compare=False)
    folder: Path | None = field(default=None, compare=False, repr=False)
    size: int | None = field(default=None, compare=False, repr=False)
    order: np.ndarray | None = field(default=None, compare=False, repr=False)
    generated: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.file is None:
            self.file = entry_file(self.method, self.target, self.layer, self.model, self.times_gt)
        if self.control is None:
            self.control = not self.times_gt and method_is_control(self.method)
        self._maps: np.ndarray | None = None

    @classmethod
    def in_memory(cls, maps: np.ndarray, *, method: str, target: str, layer: str, model: str,
                  control: bool) -> Entry:
        """A generated map set (N,S,S) that lives in memory only (no file)."""
        entry = cls(method, target, layer, model, control=control, file="", generated=True)
        entry._maps = maps
        return entry

    @property
    def key(self) -> tuple[str, str, str, str, bool]:
        return (self.method, self.target, self.layer, self.model, self.times_gt)

    @property
    def path(self) -> Path:
        if self.folder is None or not self.file:
            raise TumorcamError(f"{self.method} ({self.model}, {self.target}): a map set without a file")
        return self.folder / self.file

    def as_json(self) -> dict[str, Any]:
        """The entry as index.json lists it."""
        return {"file": self.file, "method": self.method, "target": self.target, "layer": self.layer,
                "model": self.model, "times_gt": self.times_gt, "control": self.control,
                "weights_sha256": self.weights_sha256}

    def describe(self) -> dict[str, Any]:
        """The entry as the evaluation files name a map (`generated` only when true)."""
        out = {"method": self.method, "target": self.target, "layer": self.layer, "model": self.model,
               "times_gt": self.times_gt, "control": self.control, "file": self.file}
        if self.generated:
            out["generated"] = True
        return out

    def stored_file_ids(self) -> np.ndarray:
        """The file ids (N,) int64 of the file, without reading its maps."""
        path = self.path
        try:
            with np.load(path, allow_pickle=False) as npz:
                return np.asarray(npz["file_ids"], dtype=np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise TumorcamError(f"{path}: not a readable maps file with `maps` and `file_ids` ({exc})") from None

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """The file's maps (N,S,S) float32 and file ids (N,) int64, as stored."""
        path = self.path
        try:
            with np.load(path, allow_pickle=False) as npz:
                maps = np.asarray(npz["maps"], dtype=np.float32)
                ids = np.asarray(npz["file_ids"], dtype=np.int64)
        except (OSError, KeyError, ValueError) as exc:
            raise TumorcamError(f"{path}: not a readable maps file with `maps` and `file_ids` ({exc})") from None
        size = self.size
        if maps.ndim != 3 or maps.shape[0] != ids.shape[0] or (size is not None and maps.shape[1:] != (size, size)):
            expected = f"(N,{size},{size})" if size is not None else "(N,S,S)"
            raise TumorcamError(f"{path}: maps {maps.shape} with {ids.shape[0]} file ids; expected {expected}")
        return maps, ids

    @property
    def maps(self) -> np.ndarray:
        """The maps (N,S,S) float32 with NaN read as 0, in the order of `order` when given; read on first use."""
        if self._maps is None:
            maps, ids = self.load()
            if self.order is not None and not np.array_equal(ids, self.order):
                position = {int(f): i for i, f in enumerate(ids)}
                if len(ids) != len(self.order) or any(int(f) not in position for f in self.order):
                    raise TumorcamError(f"{self.path}: explains other slices than the index's first map file")
                maps = maps[[position[int(f)] for f in self.order]]
            self._maps = np.nan_to_num(maps)
        return self._maps


@dataclass
class Index:
    """RUN/explanations/index.json read: `header` (every top-level field but `entries`) and the entries."""

    folder: Path
    header: dict[str, Any]
    entries: list[Entry]

    @property
    def path(self) -> Path:
        return self.folder / INDEX_FILE

    @property
    def split(self) -> str:
        return str(self.header["split"])

    @property
    def size(self) -> int:
        return int(self.header["size"])

    @property
    def weights_sha256(self) -> str | None:
        return self.header.get("weights_sha256")

    @cached_property
    def file_ids(self) -> np.ndarray:
        """The slices the maps explain: the file ids of the first entry's file."""
        return self.entries[0].stored_file_ids()

    def aligned(self) -> list[Entry]:
        """The entries with their `maps` put in the order of `file_ids` (another set of slices is an error)."""
        return [dataclasses.replace(entry, order=self.file_ids) for entry in self.entries]

    def as_json(self) -> dict[str, Any]:
        return {**self.header, "entries": [entry.as_json() for entry in self.entries]}


def read_index(folder: str | Path) -> Index:
    """Read `folder`/index.json; a missing or malformed index is one clear error."""
    folder = Path(folder)
    path = folder / INDEX_FILE
    if not path.is_file():
        raise TumorcamError(f"{path}: no explanations index; run `tumorcam explain RUN` first")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TumorcamError(f"{path}: not a readable JSON index ({exc})") from None
    items = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items or not {"split", "size"} <= set(data):
        raise TumorcamError(f"{path}: not an explanations index (needs split, size and a non-empty entries list)")
    try:
        size = int(data["size"])
    except (TypeError, ValueError):
        raise TumorcamError(f"{path}: size {data['size']!r} is not a whole number of pixels") from None
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or any(key not in item for key in REQUIRED):
            raise TumorcamError(f"{path}: entry {i} does not list {', '.join(REQUIRED)}")
        control = item.get("control")
        entries.append(Entry(str(item["method"]), str(item["target"]), str(item["layer"]),
                             model=str(item.get("model", "trained")), times_gt=bool(item.get("times_gt", False)),
                             control=None if control is None else bool(control),
                             weights_sha256=item.get("weights_sha256") or None, file=str(item["file"]),
                             folder=folder, size=size))
    header = {key: value for key, value in data.items() if key != "entries"}
    return Index(folder=folder, header=header, entries=entries)


def write_index(index: Index) -> Path:
    """Write index.json (atomically) and return its path."""
    write_json(index.path, index.as_json())
    return index.path
