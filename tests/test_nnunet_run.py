"""`tumorcam run --nnunet`: a trained nnU-Net model (the session fixture `nnunet_model`) explained and
evaluated on its raw dataset's cases, end to end."""

from __future__ import annotations

import json
import re

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
    """(run folder, raw dataset, report path, log lines) of `run_nnunet` on the first CASES cases."""
    from tumorcam.nnunet.run import run_nnunet

    folder, _, _ = nnunet_model
    raw = folder.parents[2] / "raw" / DATASET
    out = tmp_path_factory.mktemp("nnunet-run")
    lines: list[str] = []
    report = run_nnunet(out, raw, folder, label="edema", cases=CASES, settings=_settings(), device="cpu",
                        log=lines.append)
    return out, raw, report, lines


def test_run_writes_the_files_with_finite_aucs_and_a_headline(nnunet_run):
    from tumorcam.evaluate.sanity import MIN_PATIENTS

    out, _, report, _ = nnunet_run
    files = {name: json.loads((out / f"{name}.json").read_text())
             for name in ("faithfulness", "localization", "segmentation", "channels", "sanity")}
    assert [doc["n_cases"] for doc in files.values()] == [CASES] * 4 + [1]  # sanity: evaluate.sanity cases
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

    out, raw, _, _ = nnunet_run
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


def _preprocessed_shapes(lines: list[str]) -> dict[str, list[int]]:
    """case -> its preprocessed shape, from the run's progress lines."""
    found = (re.match(r"case (\S+) \(\d+/\d+\): \(([\d, ]+)\) preprocessed", line) for line in lines)
    return {m[1]: [int(n) for n in m[2].split(",")] for m in found if m}


def test_report_has_the_views_of_each_case_from_the_preprocessed_maps(nnunet_run):
    out, _, report, lines = nnunet_run
    shapes = _preprocessed_shapes(lines)
    assert list(shapes) == ["TCAM_000", "TCAM_001"]
    index = json.loads((out / "explanations" / "index.json").read_text())
    assert index["map_cases"] == index["case_ids"] == list(shapes) and index["shapes"] == list(shapes.values())
    assert index["prepared"] == "explanations/preprocessed" and index["size"] == max(max(s) for s in shapes.values())
    assert {e["method"]: e["file"] for e in index["entries"]} == {
        "gradcam": "gradcam.npy", "random": "random.npy", "predicted-mask": "predicted-mask.npy"}
    gradcam = np.load(out / "explanations" / "gradcam.npy")
    assert gradcam.shape == (CASES, *(index["size"],) * 3) and gradcam.dtype == np.float16
    for i, shape in enumerate(shapes.values()):
        inside = gradcam[i][tuple(slice(0, n) for n in shape)].astype(np.float32)
        assert 0.0 < inside.max() <= 1.0 and gradcam[i].astype(np.float32).sum() == pytest.approx(inside.sum())
    from tumorcam.data.volumes import load_volumes

    views = load_volumes(out / "explanations" / "preprocessed")
    assert views.case_ids.tolist() == list(shapes) and views.images.shape[:2] == (CASES, 1)  # the drawn sequence
    assert index["channels"] == ["FLAIR"]
    assert views.masks[0].any() and 0.0 <= float(views.images.min()) and float(views.images.max()) <= 1.0
    page = report.read_text()
    for case in shapes:
        assert (out / "figures" / f"views_{case}.png").is_file()
        assert re.search(rf'<img src="data:image/png;base64,[^"]+" alt="Case {case}: axial, coronal and sagittal', page)


def test_report_subtitle_names_data_model_and_label(nnunet_run):
    out, raw, report, _ = nnunet_run
    settings = json.loads((out / "volume_config.json").read_text())
    record = settings["nnunet"]
    assert record["label"] == "edema" and record["folds"] == ["0"] and settings["data"] == str(raw)
    subtitle = re.search(r'<p class="meta">([^<]*)</p>', report.read_text())[1]
    assert subtitle.startswith(f"{CASES} cases of the imagesTr split of {raw}, nnU-Net model {record['folder']} "
                               f"(configuration {record['configuration']}, fold 0, checkpoint_final.pth), label edema")
    assert "?" not in subtitle and record["configuration"] in record["folder"]


def test_report_command_draws_the_same_page_and_evaluate_refuses(nnunet_run, capsys):
    from conftest import run_cli

    out, _, report, _ = nnunet_run
    def page() -> str:
        return re.sub(r" · generated [^·]*·", "", report.read_text())

    before = page()
    report.unlink()
    code, stdout, _ = run_cli(["report", str(out)], capsys)
    assert code == 0 and stdout.strip() == str(report) and page() == before
    code, _, err = run_cli(["evaluate", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and str(out) in err and "tumorcam run --nnunet" in err
    from tumorcam.errors import TumorcamError
    from tumorcam.runs.volume_stages import volume_channels

    with pytest.raises(TumorcamError, match="nnU-Net model") as caught:
        volume_channels(out, device="cpu")
    assert caught.value.param == "run" and str(out) in str(caught.value)


@pytest.mark.parametrize(("kind", "marker"), [("slices", "config.json"), ("volumes", "volume_config.json")])
def test_out_of_another_run_is_refused_untouched(nnunet_model, tmp_path, kind, marker):
    from tumorcam.errors import TumorcamError
    from tumorcam.nnunet.run import run_nnunet

    folder, _, _ = nnunet_model
    raw = folder.parents[2] / "raw" / DATASET
    files = {marker: "{}", "faithfulness.json": '{"mine": 1}', "report.html": "<p>mine</p>",
             "explanations/index.json": '{"entries": []}', "figures/a.png": "png"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(TumorcamError, match=f"holds a run on {kind}") as caught:
        run_nnunet(tmp_path, raw, folder, label="edema", cases=1, settings=_settings(), device="cpu",
                   log=lambda line: None)
    assert caught.value.param == "out" and str(caught.value).startswith(f"out {tmp_path}:")
    assert {str(p.relative_to(tmp_path)): p.read_text() for p in tmp_path.rglob("*") if p.is_file()} == files


def test_volume_run_refuses_an_nnunet_run_folder(nnunet_run):
    from tumorcam.errors import TumorcamError
    from tumorcam.runs.volumes import clear_outputs

    out = nnunet_run[0]
    with pytest.raises(TumorcamError, match="nnU-Net model") as caught:
        clear_outputs(out)
    assert caught.value.param == "out" and (out / "faithfulness.json").is_file()
