"""`tumorcam run --nnunet` under torchrun: 2 ranks (gloo on CPU, 1 thread each) on the session's tiny
nnU-Net model (`nnunet_model`), started from the command line, write the files of `run_nnunet` in one
process (run here meanwhile, on 1 thread): the JSON files' key paths and numbers (to 1e-6), the NIfTI
maps on the raw grid (each rank wrote its own case's) and the shown cases' views; rank 0 alone writes
the report and prints its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from nnunet_model import DATASET  # noqa: E402
from json_compare import json_differences  # noqa: E402
from run_keys import key_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = ("faithfulness.json", "localization.json", "segmentation.json", "channels.json", "sanity.json",
         "nnunet_run.json", "volume_config.json", "explanations/index.json")
CASES = 2


def test_two_ranks_write_the_files_of_one_process(nnunet_model, tmp_path: Path) -> None:
    import torch

    from tumorcam.config import preset
    from tumorcam.nnunet.run import run_nnunet
    from tumorcam.runs.volume_settings import load_run_settings

    folder, _, _ = nnunet_model
    raw = folder.parents[2] / "raw" / DATASET
    settings = preset("own-model").replace({
        "explain.methods": ["gradcam"], "explain.patients": CASES, "evaluate.steps": 2, "evaluate.baselines": ["zero"],
        "evaluate.bootstrap": 50, "evaluate.batch_size": 8, "evaluate.sanity": CASES,  # a sanity part on each rank
        "evaluate.channel_method": "saliency", "train.device": "cpu", "train.num_threads": 1})
    config = tmp_path / "settings.json"
    config.write_text(json.dumps(settings.to_dict()))
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}  # CPU reductions depend on the thread count: 1 everywhere
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        ranks = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                  "-m", "tumorcam.cli", "run", "--data", str(raw), "--nnunet", str(folder), "--label",
                                  "edema", "--patients", str(CASES), "--config", str(config), "--device", "cpu",
                                  "--threads", "1", "--out", str(two)],
                                 cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:  # one process, here, while the ranks run
            report = run_nnunet(one, raw, folder, label="edema", cases=CASES, settings=load_run_settings(config),
                                device="cpu", log=lambda line: None)
        finally:
            torch.set_num_threads(threads)
            code = ranks.wait(timeout=600)
    err = (tmp_path / "stderr").read_text()
    assert code == 0, err[-3000:]

    assert report == one / "report.html"
    out = (tmp_path / "stdout").read_text().splitlines()
    assert [line for line in out if line.endswith("report.html")] == [str(two / "report.html")]  # rank 0's
    assert "TCAM_000 (1/2)" in err and "(rank 0)" in err and "TCAM_001 (2/2)" in err and "(rank 1)" in err
    for name in FILES:
        a, b = json.loads((one / name).read_text()), json.loads((two / name).read_text())
        assert key_paths(a) == key_paths(b), name
        assert json_differences(a, b, name) == [], name
    sanity = json.loads((two / "sanity.json").read_text())
    assert sanity["case_ids"] == ["TCAM_000", "TCAM_001"] and sanity["n_cases"] == CASES
    assert json.loads((two / "nnunet_run.json").read_text())["settings"]["explain"]["layers"][0].startswith("decoder")

    written = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    nifti = [name for name in written if name.endswith(".nii.gz")]
    assert nifti == [f"explanations/nifti/TCAM_{i:03d}_gradcam.nii.gz" for i in range(CASES)]
    import nibabel as nib

    for name in nifti:  # each rank wrote its own case's map
        a, b = nib.load(one / name), nib.load(two / name)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj), err_msg=name)
        np.testing.assert_array_equal(a.affine, b.affine)
    for name in [n for n in written if n.endswith(".npy")]:  # the shown cases' maps and volumes
        np.testing.assert_array_equal(np.load(one / name), np.load(two / name), err_msg=name)
