"""`tumorcam run --nnunet`: a trained nnU-Net model (the session fixture `nnunet_model`) explained and
evaluated on its raw dataset's cases, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("nnunetv2")

from nnunet_model import DATASET  # noqa: E402

CASES = 2


def _settings():
    from tumorcam.config import preset

    return preset("own-model").replace({"explain.methods": ["gradcam"], "explain.ig_steps": 2,
                                        "evaluate.steps": 4, "evaluate.baselines": ["zero"],
                                        "evaluate.bootstrap": 50, "evaluate.batch_size": 4, "evaluate.sanity": 1})


@pytest.fixture(scope="module")
def nnunet_run(nnunet_model, tmp_path_factory):
    """(run folder, raw dataset, report path) of `run_nnunet` on the first CASES cases."""
    from tumorcam.nnunet.run import run_nnunet

    folder, _, _ = nnunet_model
    raw = folder.parents[2] / "raw" / DATASET
    out = tmp_path_factory.mktemp("nnunet-run")
    report = run_nnunet(out, raw, folder, label="edema", cases=CASES, settings=_settings(), device="cpu",
                        log=lambda line: None)
    return out, raw, report


def test_run_writes_the_files_with_finite_aucs_and_a_headline(nnunet_run):
    from tumorcam.evaluate.sanity import MIN_PATIENTS

    out, _, report = nnunet_run
    files = {name: json.loads((out / f"{name}.json").read_text())
             for name in ("faithfulness", "localization", "segmentation", "channels", "sanity")}
    assert all(doc["n_cases"] == CASES for doc in files.values())
    rows = files["faithfulness"]["results"]
    assert {r["method"] for r in rows} == {"gradcam", "random", "predicted-mask"}
    for row in rows:
        assert all(np.isfinite(row["per_case"][curve]).all() for curve in ("deletion", "insertion")), row["method"]
        assert row["layer"].startswith("decoder.stages") if row["method"] == "gradcam" else row["layer"] == "input"
    headline, sanity = files["faithfulness"]["headline"], files["sanity"]
    assert headline["level"] == "undetermined" and headline["sanity"]["verdict"] == sanity["verdict"]
    # every fold's stages, output first, on the first case: fewer than the verdict needs
    assert sanity["stages"][0] == "model.networks.*.decoder.seg_layers" and len(sanity["stages"]) == 8
    assert sanity["stages"][-1] == "model.networks.*.encoder.stages.0"
    assert sanity["results"][0]["layer"] == rows[0]["layer"] and sanity["case_ids"] == ["TCAM_000"]
    assert sanity["verdict"] == "undetermined" and str(MIN_PATIENTS) in sanity["reason"]
    assert len(sanity["results"][0]["spearman"]) == 8 and all(np.isfinite(sanity["results"][0]["spearman"]))
    assert len(files["segmentation"]["per_case"]["dice"]) == CASES
    assert report == out / "report.html" and "Is the explanation true?" in report.read_text()


def test_maps_are_on_the_raw_grid(nnunet_run):
    import nibabel as nib

    out, raw, _ = nnunet_run
    for case in ("TCAM_000", "TCAM_001"):
        written = nib.load(out / "explanations" / "nifti" / f"{case}_gradcam.nii.gz")
        image = nib.load(raw / "imagesTr" / f"{case}_0000.nii.gz")
        assert written.shape == image.shape
        np.testing.assert_allclose(written.affine, image.affine, atol=1e-5)
        values = np.asarray(written.dataobj)
        assert 0.0 <= values.min() and 0.0 < values.max() <= 1.0


def test_cli_refuses_model_with_nnunet(nnunet_model, tmp_path, capsys):
    from conftest import run_cli

    folder, _, _ = nnunet_model
    raw = folder.parents[2] / "raw" / DATASET
    code, _, err = run_cli(["run", "--data", str(raw), "--nnunet", str(folder), "--model", "m:f",
                            "--out", str(tmp_path)], capsys)
    assert code == 2 and "--nnunet:" in err and "--model" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
