"""Shared fixtures: the real data in ../shared/data (skipped when absent) and tiny prepared folders."""

from __future__ import annotations

import json
from pathlib import Path

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
