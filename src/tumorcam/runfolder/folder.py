"""`Run`: a run folder as one object, the way every stage and the report read it.

    import tumorcam

    run = tumorcam.Run.open("runs/demo")            # RUN/config.json, read once
    model = run.model("best")                       # unet_best.pth on run.device, in eval mode
    rows = run.split("test")                        # rows of the prepared data (config.data)
    index = run.explanations                        # RUN/explanations/index.json (`tumorcam.runfolder.index`)

`run.device` is resolved once, from config.train.device unless `Run.open(path, device=...)` gives
one; models, prepared folders and the weights hash are read once per `Run`. The explanations index
is read anew at each access (a stage may have rewritten it).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from tumorcam.config import Config
from tumorcam.errors import TumorcamError

if TYPE_CHECKING:
    from tumorcam.data.arrays import PreparedData
    from tumorcam.runfolder.index import Index
    from tumorcam.models.unet import GrayUnet

CONFIG_FILE = "config.json"
SETTINGS_FILE = "volume_config.json"  # the settings of a run on volumes
NNUNET_RUN_FILE = "nnunet_run.json"  # beside SETTINGS_FILE: a run of an nnU-Net model (`tumorcam.nnunet.run`)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_volume_run(path: str | Path) -> bool:
    """Whether `path` is a run on volumes: volume_config.json and no config.json."""
    path = Path(path)
    return (path / SETTINGS_FILE).is_file() and not (path / CONFIG_FILE).is_file()


def is_nnunet_run(path: str | Path) -> bool:
    """Whether `path` is the run of an nnU-Net model: a run on volumes whose measures only that run
    makes (nnunet_run.json beside its settings; it is read by the report, never evaluated again)."""
    return (Path(path) / NNUNET_RUN_FILE).is_file()


def refuse_other_run(out: str | Path, kind: str) -> None:
    """Refuse an `out` folder that holds a run of another kind than `kind` (`slices`, `volumes` or
    `nnunet`), before anything in it is written or removed: one error naming `out`."""
    out = Path(out)
    if (out / CONFIG_FILE).is_file():
        found = "slices"
    elif is_nnunet_run(out):
        found = "nnunet"
    elif (out / SETTINGS_FILE).is_file():
        found = "volumes"
    else:
        return
    if found != kind:
        held = {"slices": f"a run on slices ({CONFIG_FILE})", "volumes": f"a run on volumes ({SETTINGS_FILE})",
                "nnunet": f"the run of an nnU-Net model ({NNUNET_RUN_FILE})"}[found]
        raise TumorcamError(f"out {out}: holds {held}; choose another folder", param="out")


class Run:
    """A run folder: `path`, `config`, `device`, and its model, prepared data and explanations on demand.

    Models, prepared folders and the weights hash are read once per `Run`; the explanations index is
    read anew at each access (a stage may have rewritten it). `Run.open` is the usual way in.

    Args:
        path: the run folder.
        config: its settings (RUN/config.json).
        device: auto, cpu, cuda, cuda:N or a torch.device; None: config.train.device, resolved at
            first use.

    Raises:
        TumorcamError: for a device that cannot be resolved (`tumorcam.device.resolve_device`).

    Example:
        >>> run = tumorcam.Run.open("runs/demo")            # RUN/config.json, read once
        >>> model = run.model("best")                       # unet_best.pth on run.device, in eval mode
        >>> rows = run.split("test")                        # rows of the prepared data (config.data)
        >>> index = run.explanations                        # RUN/explanations/index.json
    """

    def __init__(self, path: Path, config: Config, device: str | torch.device | None = None) -> None:
        self.path = path
        self.config = config
        if device is not None:
            self.device = _resolve(device)
        self._models: dict[str, GrayUnet] = {}
        self._prepared: dict[Path, PreparedData] = {}

    @classmethod
    def open(cls, path: str | Path, *, device: str | torch.device | None = None) -> Run:
        """The run folder at `path`, its config.json read once.

        Args:
            path: a run folder (one that holds config.json).
            device: auto, cpu, cuda, cuda:N or a torch.device; replaces config.train.device.

        Returns:
            The `Run`.

        Raises:
            TumorcamError: for a folder without config.json, an invalid config.json, or a device that
                cannot be resolved.

        Example:
            >>> run = tumorcam.Run.open("runs/demo", device="cpu")
        """
        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise TumorcamError(f"{path}: not a run folder (no {CONFIG_FILE}); train one with `tumorcam train`")
        return cls(path, Config.load(path / CONFIG_FILE), device)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @cached_property
    def device(self) -> torch.device:
        """Where the run's models run: config.train.device resolved (`tumorcam.device.resolve_device`)."""
        return _resolve(self.config.train.device)

    def model(self, checkpoint: str = "last") -> GrayUnet:
        """The trained network, in eval mode on `device`, loaded once.

        A run of a user's network (config.model.network) has one model, whatever the checkpoint.

        Args:
            checkpoint: `last` (unet_trained.pth) or `best` (unet_best.pth).

        Returns:
            The model.

        Raises:
            TumorcamError: for an unknown checkpoint, or a run without that weights file.
        """
        from tumorcam.models.unet import CHECKPOINTS

        if checkpoint not in CHECKPOINTS:
            raise TumorcamError(f"checkpoint: unknown checkpoint {checkpoint!r} (choose {' or '.join(CHECKPOINTS)})")
        if self.config.model.network is not None:  # a user's network: the one model, whatever the checkpoint
            from tumorcam.models.user import load_user_model

            checkpoint = "last"
            if checkpoint not in self._models:
                self._models[checkpoint] = load_user_model(self.config.model.network, self.config.model.weights)
                self._models[checkpoint].to(self.device).eval()
        if checkpoint not in self._models:
            self._models[checkpoint], _ = load_run_model(self.path, checkpoint, self.device, config=self.config)
        return self._models[checkpoint]

    def prepared(self, data: str | Path | None = None) -> PreparedData:
        """The prepared data of a folder, read once.

        Args:
            data: the prepared folder; None: config.data (a relative config.data is looked for from
                the working directory, then from the run folder).

        Returns:
            The `PreparedData` (`tumorcam.data.arrays`).

        Raises:
            TumorcamError: when neither `data` nor config.data names a folder, or the folder is not
                prepared data.
        """
        from tumorcam.data.arrays import load_prepared

        if data is None:
            if not self.config.data:
                raise TumorcamError(f"data: {self.path / CONFIG_FILE} names no prepared data folder; "
                                    "give one", param="data")
            data = Path(self.config.data)
            if not data.is_absolute() and not data.is_dir() and (self.path / data).is_dir():
                data = self.path / data
        root = Path(data)
        if root not in self._prepared:
            self._prepared[root] = load_prepared(root)
        return self._prepared[root]

    def split(self, name: str, data: str | Path | None = None) -> np.ndarray:
        """Rows of the prepared data in a split, to evaluate; a split with training slices warns
        (`data.arrays.warn_training_split`).

        Args:
            name: train, val, test or all.
            data: the prepared folder, as in `prepared`.

        Returns:
            The row indices of the split in `prepared(data)`.

        Raises:
            TumorcamError: for a split without slices, or as `prepared`.
        """
        from tumorcam.data.arrays import warn_training_split

        prepared = self.prepared(data)
        rows = prepared.indices(name)
        if len(rows) == 0:
            raise TumorcamError(f"split: no slices of the {name} split in {prepared.root} (splits.json)")
        warn_training_split(prepared.splits, name, prepared.file_ids, rows, "slice")
        return rows

    @property
    def explanations_folder(self) -> Path:
        """RUN/explanations/."""
        from tumorcam.runfolder.index import EXPLANATIONS_DIR

        return self.path / EXPLANATIONS_DIR

    @property
    def explanations(self) -> Index:
        """RUN/explanations/index.json (read at each access); no index is an error naming `tumorcam explain`."""
        from tumorcam.runfolder.index import read_index

        return read_index(self.explanations_folder)

    @cached_property
    def weights_sha256(self) -> str | None:
        """sha256 of the trained weights (unet_trained.pth, or a user's network's model.weights), None when
        the run has none."""
        from tumorcam.models.unet import WEIGHTS_FILE

        weights = self.config.model.weights if self.config.model.network is not None else None
        path = Path(weights) if weights is not None else self.path / WEIGHTS_FILE
        return file_sha256(path) if path.is_file() else None


def _resolve(device: str | torch.device) -> torch.device:
    from tumorcam.device import resolve_device

    return device if isinstance(device, torch.device) else resolve_device(device)


def as_run(run: str | Path | Run, device: str | torch.device | None = None) -> Run:
    """`run` itself when it is a `Run` (on `device` when one is given), else `Run.open(run, device=device)`."""
    if not isinstance(run, Run):
        return Run.open(run, device=device)
    if device is None:
        return run
    return Run(run.path, run.config, device)


def load_run_model(run: str | Path, which: str = "last", device: str | torch.device = "cpu", *,
                   config: Config | None = None) -> tuple[GrayUnet, Config]:
    """The trained model of a run folder (`last`: unet_trained.pth, `best`: unet_best.pth), in eval mode;
    `config` is the run's when the caller has read it already (`tumorcam.Run.model`)."""
    from tumorcam.models.unet import CHECKPOINTS, GrayUnet, load_weights

    run = Path(run)
    if config is None:
        config = Run.open(run).config
    name = CHECKPOINTS[which]
    if not (run / name).is_file():
        raise TumorcamError(f"{run}: no trained model ({name} missing); run `tumorcam train` first")
    model = GrayUnet(config.model.encoder, encoder_weights=None, classes=config.model.classes)
    load_weights(model, run / name)
    return model.to(device).eval(), config


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
