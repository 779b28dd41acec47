"""The settings of a run on volumes (`VolumeSettings`), kept in RUN/volume_config.json.

Every stage of `tumorcam.volumes.run` reads them; `check` turns a wrong value into one error
naming the setting (the CLI flag where there is one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumorcam.errors import TumorcamError

SETTINGS_FILE = "volume_config.json"
RUN_KEYS = ("model", "weights", "weights_sha256", "data")  # what volume_config.json records beside the settings
CONTROLS = ("random", "predicted-mask")  # always explained: the references of every comparison


@dataclass
class VolumeSettings:
    """What a run on volumes explains and how it tests it.

    `methods` (controls `random` and `predicted-mask` are added), `target`, `layer` (None: the last
    convolution block before the head), `channel` (the explained class) and `output` as in
    `tumorcam.explain`; `split` of the prepared volumes (None: `test` when the data has a test split,
    else `all`; a split with training cases, `train` or `all`, is warned about when there is a test split);
    `cases`: at most this many cases of the split, in case order (None: all). The game: `baselines`,
    `steps` K, `schedule`, `score`, `batch_size` perturbed volumes per forward. Localisation:
    `top_percent`. Per-sequence attribution: `channel_method` and `ablation_baseline`. Sanity:
    `sanity_cases` cases (None: every case of the run; 0: skip). Statistics: `bootstrap`, `alpha`, `primary_method`; `seed`
    seeds every random draw (per case: seed + the case's index in the split).
    """

    split: str | None = None
    cases: int | None = None
    methods: list[str] = field(default_factory=lambda: ["gradcam", "saliency"])
    target: str = "predicted-region"
    layer: str | None = None
    channel: int = 0
    output: int | str | None = None
    baselines: list[str] = field(default_factory=lambda: ["zero", "blur"])
    steps: int = 20
    schedule: str = "log"
    score: str = "predicted-region"
    batch_size: int = 16
    ig_steps: int = 16
    top_percent: float = 5.0
    channel_method: str = "integrated-gradients"
    ablation_baseline: str = "zero"
    sanity_cases: int | None = None
    primary_method: str = "gradcam"
    bootstrap: int = 1000
    alpha: float = 0.05
    seed: int = 0

    @property
    def all_methods(self) -> list[str]:
        """The methods with the controls every comparison needs."""
        return list(dict.fromkeys([*self.methods, *CONTROLS]))

    def check(self) -> None:
        """One TumorcamError for the first setting out of range."""
        from tumorcam.evaluate.baselines import BASELINES
        from tumorcam.evaluate.channels import CHANNEL_METHODS
        from tumorcam.evaluate.localization import check_top_percent
        from tumorcam.evaluate.game import GAME_SCORES
        from tumorcam.evaluate.ranking import check_schedule, check_steps
        from tumorcam.explain import METHODS, TARGETS

        if not isinstance(self.methods, list) or not all(isinstance(m, str) for m in self.methods):
            raise TumorcamError(f"--methods: a list of method names, got {self.methods!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise TumorcamError(f"--methods: unknown method(s) {', '.join(map(repr, unknown)) or 'none given'} "
                                f"(choose from {', '.join(METHODS)})")
        if self.target not in TARGETS or TARGETS[self.target].needs_masks:
            raise TumorcamError(f"--target: {self.target!r} is not a target of a run on volumes (choose "
                                "predicted-region, mean-logits or boundary)")
        if not isinstance(self.baselines, list) or not self.baselines or any(b not in BASELINES for b in self.baselines):
            raise TumorcamError(f"--baselines: choose from {', '.join(BASELINES)}, got {self.baselines}")
        if self.score not in GAME_SCORES or self.score == "gt-region":
            raise TumorcamError(f"--score: choose predicted-region, dice or mean-sigmoid, got {self.score!r}")
        check_steps(self.steps, "--steps")
        check_schedule(self.schedule, "--schedule")
        for name in ("batch_size", "ig_steps", "bootstrap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TumorcamError(f"{name}: must be an integer >= 1, got {value!r}")
        if self.cases is not None and (isinstance(self.cases, bool) or not isinstance(self.cases, int)
                                       or self.cases < 1):
            raise TumorcamError(f"--cases: must be an integer >= 1, got {self.cases!r}")
        if self.sanity_cases is not None and (isinstance(self.sanity_cases, bool) or not isinstance(self.sanity_cases, int)
                                              or self.sanity_cases < 0):
            raise TumorcamError(f"sanity_cases: must be an integer >= 0 (0: skip) or null (every case), "
                                f"got {self.sanity_cases!r}")
        if self.ablation_baseline not in ("zero", "mean"):
            raise TumorcamError(f"ablation_baseline: choose zero or mean, got {self.ablation_baseline!r}")
        if self.primary_method not in self.methods or METHODS[self.primary_method].control:
            raise TumorcamError(f"primary_method: {self.primary_method!r} must be one of --methods "
                                f"{','.join(self.methods)} and not a control")
        if self.split not in (None, "train", "val", "test", "all"):
            raise TumorcamError(f"--split: unknown split {self.split!r} (choose train, val, test or all)")
        if self.channel_method not in CHANNEL_METHODS:
            raise TumorcamError(f"channel_method: unknown method {self.channel_method!r} (choose from "
                                f"{', '.join(CHANNEL_METHODS)})")
        check_top_percent(self.top_percent)
        if not 0 < self.alpha < 1:
            raise TumorcamError(f"alpha: must be in (0, 1), got {self.alpha!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "settings",
                  defaults: dict[str, Any] | None = None) -> VolumeSettings:
        """The settings of `values` (a run's volume_config.json too: its `RUN_KEYS` are left out),
        `defaults` where `values` has none; an unknown key is an error naming `source`."""
        known = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in values.items() if k not in RUN_KEYS}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TumorcamError(f"{source}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**{**(defaults or {}), **given})

    @classmethod
    def load(cls, path: str | Path, defaults: dict[str, Any] | None = None) -> VolumeSettings:
        """The settings of the JSON file `path` (`from_dict`)."""
        from tumorcam.io import read_json_object

        return cls.from_dict(read_json_object(path), str(path), defaults)


def data_label(root: Path, out: Path) -> str:
    """The prepared folder as the run's files name it: relative to the run folder when inside it (so a
    run's files do not depend on where the run folder is), else its absolute path."""
    try:
        return str(root.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(root.resolve())


def data_folder(run: str | Path, label: str) -> Path:
    """The prepared folder of a run's `data` label (`data_label`)."""
    path = Path(label)
    return path if path.is_absolute() or not (Path(run) / path).is_dir() else Path(run) / path
