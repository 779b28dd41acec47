"""Shared fixtures: the real data in ../shared/data (skipped when absent) and tiny prepared folders."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; the test is skipped where it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def write_blob_prepared(root: Path, n: int = 24, size: int = 64, seed: int = 0) -> Path:
    """A tiny prepared folder (the layout of `tumorcam.data.arrays`) of bright discs on a dim textured background:
    easy to learn, with a known mask per slice. 4 patients per class, patient-wise splits."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((n, size, size), np.float16)
    masks = np.empty((n, size, size), bool)
    labels = np.empty(n, np.int8)
    pids = np.empty(n, dtype="<U8")
    for i in range(n):
        cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
        r = rng.uniform(0.08 * size, 0.18 * size)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        image = 0.3 + 0.1 * rng.standard_normal((size, size))
        image[mask] += 0.5
        image = np.clip(image, 0, None)
        images[i] = image / image.max()
        masks[i] = mask
        labels[i] = 1 + i % 3
        pids[i] = f"P{i % 12:03d}"
    file_ids = np.arange(1, n + 1, dtype=np.int64)
    split_of_pid = {f"P{p:03d}": ("train" if p < 8 else "val" if p < 10 else "test") for p in range(12)}
    splits = {"train": [], "val": [], "test": []}
    for f, p in zip(file_ids, pids):
        splits[split_of_pid[p]].append(int(f))
    root.mkdir(parents=True, exist_ok=True)
    for name, array in (("images", images), ("masks", masks), ("labels", labels), ("pids", pids), ("file_ids", file_ids)):
        np.save(root / f"{name}.npy", array, allow_pickle=False)
    (root / "manifest.json").write_text(json.dumps({"source": "test blobs", "size": size, "count": n}))
    (root / "splits.json").write_text(json.dumps(splits))
    return root


@pytest.fixture
def blob_prepared(tmp_path: Path) -> Path:
    """A tiny prepared folder (24 slices, 64x64) that any stage can read."""
    return write_blob_prepared(tmp_path / "prepared")


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`tumorcam ARGS` in-process: (exit code, stdout, stderr)."""
    from tumorcam.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tiny_config_file(path: Path) -> Path:
    """The demo preset shrunk to seconds: ResNet18, 64 px, one epoch, 3 slices explained, K = 4."""
    from tumorcam.config import preset

    cfg = preset("demo")
    cfg.model.encoder = "resnet18"
    cfg.train = dataclasses.replace(cfg.train, size=64, epochs=1, batch_size=8, device="cpu")
    cfg.explain = dataclasses.replace(cfg.explain, limit=3, batch_size=3,
                                      methods=["gradcam", "saliency", "random", "predicted-mask"])
    cfg.evaluate = dataclasses.replace(cfg.evaluate, steps=4, baselines=["zero"], bootstrap=20, sanity=1)
    cfg.save(path)
    return path


def tiny_run_args(config: Path, run: Path) -> list[str]:
    """`tumorcam run` of `config` (`tiny_config_file`) on 15 synthetic patients x 2 slices at 64 px into `run`."""
    return ["run", "--config", str(config), "--out", str(run), "--synthetic-patients", "15", "--synthetic-slices", "2",
            "--prepare-size", "64"]


class TinyRun(NamedTuple):
    """One finished `tumorcam run` of `tiny_config_file`: ROOT/tiny.json, ROOT/run, its stdout and stderr."""
    root: Path
    out: str
    err: str

    @property
    def run(self) -> Path:
        return self.root / "run"

    def copy_to(self, root: Path) -> Path:
        """ROOT copied to `root` (file times kept, so a rerun there sees every stage done); returns root/run."""
        shutil.copytree(self.root, root, symlinks=True)
        return root / "run"


@pytest.fixture(scope="session")
def tiny_slice_run(tmp_path_factory) -> TinyRun:
    """`tumorcam run` of the tiny configuration (`tiny_run_args`), once per session: the run folder is
    read, never changed; a test that reruns or changes it works on a copy (`TinyRun.copy_to`)."""
    from tumorcam.cli import main

    root = tmp_path_factory.mktemp("tiny_slice_run")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(tiny_run_args(tiny_config_file(root / "tiny.json"), root / "run"))
        except SystemExit as exc:
            raise AssertionError(f"tumorcam run exited {exc.code}:\n{err.getvalue()[-3000:]}") from exc
    return TinyRun(root, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def volume_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset, run): 6 synthetic cases (16^3, seed 3) in DATASET/raw, the FLAIR-only network in
    DATASET/flair_only.py, and `tumorcam run` of it into DATASET/run (test_volumes_run's `_run`), once per
    session for test_volumes_run and test_run_keys; the run folder is read, never changed."""
    from test_volumes_run import FLAIR_ONLY, _run

    from tumorcam.data.synth_volumes import write_synthetic_volumes

    root = tmp_path_factory.mktemp("volumes")
    write_synthetic_volumes(root / "raw", cases=6, size=16, seed=3)
    (root / "flair_only.py").write_text(FLAIR_ONLY)
    _run(root, root / "run")
    return root, root / "run"


@pytest.fixture(scope="session")
def nnunet_root(tmp_path_factory):
    """(root, big case files, plan+preprocess seconds): tumorcam's synthetic raw dataset planned and
    preprocessed by nnU-Net for 3d_fullres and 2d (`nnunet_model.prepare_root`), once per session;
    skipped without nnunetv2."""
    pytest.importorskip("nnunetv2")
    from nnunet_model import prepare_root

    root = tmp_path_factory.mktemp("nnunet")
    files, planned = prepare_root(root)
    return root, files, planned


@pytest.fixture(scope="session")
def nnunet_model(nnunet_root):
    """(model folder, big case files, timings) of a small 3d_fullres nnU-Net v2 model trained here
    (`nnunet_model.train_model`), once per session."""
    from nnunet_model import train_model

    root, files, planned = nnunet_root
    folder, trained = train_model(root, "3d_fullres")
    return folder, files, {"plan_and_preprocess_s": planned, "train_s": trained}


@pytest.fixture(scope="session")
def nnunet_model_2d(nnunet_root):
    """(model folder, big case files, timings) of a small 2d nnU-Net v2 model trained here on the same
    plans and preprocessed cases (`nnunet_model.train_model`), once per session."""
    from nnunet_model import train_model

    root, files, planned = nnunet_root
    folder, trained = train_model(root, "2d")
    return folder, files, {"plan_and_preprocess_s": planned, "train_s": trained}
