"""`tumorcam.Run`: a run folder as one object (config, device, model, prepared data, split, weights
hash); the explanations index read and written by one module; loading that never explains, and
`tumorcam evaluate` that explains first when the maps are of other weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tumorcam
from tumorcam.cli import main
from tumorcam.config import Config, ExplainConfig, ModelConfig, TrainConfig
from tumorcam.errors import TumorcamError
from tumorcam.runs.inputs import load_inputs
from tumorcam.runfolder.index import Entry, Index, read_index, write_index
from tumorcam.runs.explain import explain_run
from tumorcam.io import save_npz
from tumorcam.models.unet import WEIGHTS_FILE, build_model, save_weights
from tumorcam.runfolder.folder import Run

TEST_IDS = [11, 12, 23, 24]  # the blob fixture's test split


def _config(data: str) -> Config:
    return Config(preset="demo", data=data, model=ModelConfig(encoder="resnet18", encoder_weights="none"),
                  train=TrainConfig(size=32, device="cpu", seed=0),
                  explain=ExplainConfig(limit=4, methods=["gradcam", "random"], targets=["mean-logits"],
                                        batch_size=4))


@pytest.fixture
def run(tmp_path: Path, blob_prepared: Path) -> Path:
    """config.json (32 px, the blob data) and a fresh ResNet18 U-Net's weights."""
    folder = tmp_path / "run"
    config = _config(str(blob_prepared))
    config.save(folder / "config.json")
    torch.manual_seed(1)
    save_weights(build_model(config.model), folder / WEIGHTS_FILE)
    return folder


def _index(run: Path) -> dict:
    return json.loads((run / "explanations" / "index.json").read_text())


def test_a_folder_that_is_not_a_run_is_one_error(tmp_path: Path):
    assert tumorcam.Run is Run
    for folder in (tmp_path, tmp_path / "nowhere"):
        with pytest.raises(TumorcamError) as error:
            Run.open(folder)
        assert str(error.value) == f"{folder}: not a run folder (no config.json); train one with `tumorcam train`"


def test_config_device_model_and_weights_hash(run: Path):
    opened = Run.open(run)
    assert opened.path == run and opened.config == Config.load(run / "config.json")
    assert opened.config.train.size == 32 and opened.device == torch.device("cpu")

    model = opened.model()
    assert model is opened.model("last") and not model.training  # loaded once, in eval mode
    saved = torch.load(run / WEIGHTS_FILE, weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    with pytest.raises(TumorcamError, match=r"no trained model \(unet_best.pth missing\)"):
        opened.model("best")
    with pytest.raises(TumorcamError, match="checkpoint: unknown checkpoint 'first' \\(choose last or best\\)"):
        opened.model("first")
    assert opened.weights_sha256 == hashlib.sha256((run / WEIGHTS_FILE).read_bytes()).hexdigest()

    config = opened.config
    config.train.device = "cuda:9"  # no such device anywhere here: resolved only when asked for
    config.save(run / "config.json")
    with pytest.raises(TumorcamError, match="cuda:9"):
        Run.open(run).device  # noqa: B018
    assert Run.open(run, device="cpu").device == torch.device("cpu")  # the caller's device wins
    assert Run.open(run, device=torch.device("cpu")).model().pixel_mean.device.type == "cpu"
    (run / WEIGHTS_FILE).unlink()
    assert Run.open(run, device="cpu").weights_sha256 is None


def test_prepared_data_and_split(run: Path, blob_prepared: Path, tmp_path: Path):
    from conftest import write_blob_prepared

    opened = Run.open(run)
    prepared = opened.prepared()
    assert prepared is opened.prepared() and prepared.root == blob_prepared
    assert np.asarray(prepared.file_ids[opened.split("test")]).tolist() == TEST_IDS
    assert len(opened.split("all")) == 24
    with pytest.raises(TumorcamError, match="unknown split 'dev'"):
        opened.split("dev")
    other = write_blob_prepared(tmp_path / "other", n=12, size=32, seed=3)
    assert opened.prepared(other).root == other and len(opened.split("all", other)) == 12

    config = opened.config
    config.data = ""
    config.save(run / "config.json")
    with pytest.raises(TumorcamError, match=r"data: .*config.json names no prepared data folder; give one"):
        Run.open(run).prepared()
    config.data = "../prepared"  # relative: not from the working directory, but from the run folder
    config.save(run / "config.json")
    assert Run.open(run).prepared().root == run / "../prepared"


def test_the_index_round_trip_keeps_the_entries_and_the_format(tmp_path: Path):
    folder = tmp_path / "explanations"
    ids = np.array([5, 3, 9], dtype=np.int64)
    maps = np.random.default_rng(0).random((3, 8, 8)).astype(np.float16)
    gradcam = Entry("gradcam", "predicted-region", "decoder.blocks.4", weights_sha256="a" * 64, folder=folder)
    times_gt = Entry("gradcam", "predicted-region", "decoder.blocks.4", times_gt=True, weights_sha256="a" * 64,
                     folder=folder)
    random = Entry("random", "predicted-region", "input", model="untrained", weights_sha256="b" * 64, folder=folder)
    save_npz(folder / gradcam.file, maps=maps, file_ids=ids)
    save_npz(folder / times_gt.file, maps=maps, file_ids=ids)
    save_npz(folder / random.file, maps=maps[[2, 0, 1]], file_ids=ids[[2, 0, 1]])  # other order, same slices
    header = {"split": "test", "size": 8, "weights_sha256": "a" * 64, "selection": "sample", "patients": None,
              "slices_per_patient": 4, "limit": None, "seed": 0, "n_patients": 2, "n_slices": 3}
    write_index(Index(folder=folder, header=header, entries=[gradcam, times_gt, random]))

    on_disk = json.loads((folder / "index.json").read_text())
    assert list(on_disk) == [*header, "entries"]
    assert on_disk["entries"][2] == {"file": "untrained__random__predicted-region__input.npz", "method": "random",
                                     "target": "predicted-region", "layer": "input", "model": "untrained",
                                     "times_gt": False, "control": True, "weights_sha256": "b" * 64}
    assert on_disk["entries"][1]["file"] == "trained__gradcam-x-gt__predicted-region__decoder.blocks.4.npz"
    assert [e["control"] for e in on_disk["entries"]] == [False, False, True]

    index = read_index(folder)
    assert index.header == header and index.entries == [gradcam, times_gt, random]
    assert [e.as_json() for e in index.entries] == on_disk["entries"]
    assert index.file_ids.tolist() == [5, 3, 9]
    aligned = index.aligned()
    np.testing.assert_array_equal(aligned[2].maps, maps.astype(np.float32))  # put in the first entry's order
    stored, stored_ids = index.entries[2].load()
    assert stored_ids.tolist() == [9, 5, 3] and np.array_equal(stored, maps[[2, 0, 1]].astype(np.float32))
    write_index(index)
    assert json.loads((folder / "index.json").read_text()) == on_disk  # read then written: the same file


def test_the_index_reads_old_entries_and_loads_maps_only_when_asked(tmp_path: Path):
    folder = tmp_path / "explanations"
    with pytest.raises(TumorcamError, match=r"index.json: no explanations index; run `tumorcam explain RUN` first"):
        read_index(folder)
    folder.mkdir()
    (folder / "index.json").write_text(json.dumps({
        "split": "val", "size": 16,
        "entries": [{"file": "gone.npz", "method": "random", "target": "none", "layer": "input"},
                    {"file": "cam.npz", "method": "gradcam", "target": "gt-region", "layer": "encoder.layer4"}]}))
    index = read_index(folder)  # the map files are not opened yet
    assert [(e.model, e.times_gt, e.control, e.weights_sha256) for e in index.entries] == [
        ("trained", False, True, None), ("trained", False, False, None)]
    with pytest.raises(TumorcamError, match=r"gone.npz: not a readable maps file"):
        index.entries[0].maps  # noqa: B018
    save_npz(folder / "cam.npz", maps=np.zeros((2, 8, 8), np.float16), file_ids=np.array([1, 2]))
    with pytest.raises(TumorcamError, match=r"cam.npz: maps \(2, 8, 8\) with 2 file ids; expected \(N,16,16\)"):
        index.entries[1].load()
    (folder / "index.json").write_text(json.dumps({"split": "val", "size": 16, "entries": []}))
    with pytest.raises(TumorcamError, match="not an explanations index"):
        read_index(folder)
    (folder / "index.json").write_text(json.dumps({"split": "val", "size": 16, "entries": [{"file": "x.npz"}]}))
    with pytest.raises(TumorcamError, match="entry 0 does not list file, method, target, layer"):
        read_index(folder)


def test_loading_never_explains(run: Path):
    with pytest.raises(TumorcamError, match=r"no maps in .*explanations \(no index.json\); make them with "
                                            rf"`explain_run\('{run}'\)` first"):
        load_inputs(run, device="cpu", with_model=False)
    assert not (run / "explanations").exists()


def test_load_inputs_refuses_maps_of_other_weights_and_evaluate_explains_them_again(run: Path, capsys):
    explain_run(run)
    before = _index(run)
    inputs = load_inputs(Run.open(run), with_model=False)  # a Run is taken as it is
    assert inputs.file_ids.tolist() == TEST_IDS and inputs.device == torch.device("cpu")
    assert [(e.method, e.times_gt) for e in inputs.entries] == [("gradcam", False), ("gradcam", True),
                                                                ("random", False)]
    assert "note:" not in capsys.readouterr().err

    torch.manual_seed(3)  # "retrained"
    save_weights(build_model(Run.open(run).config.model), run / WEIGHTS_FILE)
    with pytest.raises(TumorcamError, match=r"were made by other weights than the run's now \(trained model\); "
                                            r"make them with `explain_run\(.*ids=\[11, 12, 23, 24\], split='test'\)` first"):
        load_inputs(run, device="cpu", with_model=False)
    assert _index(run) == before  # nothing was remade by loading

    main(["evaluate", str(run), "--localization", "--device", "cpu"])
    captured = capsys.readouterr()
    assert "were made by other weights than the run's now (trained model); running `tumorcam explain` first" \
        in captured.err
    assert "localization (test, 2 patients" in captured.out
    after = _index(run)
    sha = hashlib.sha256((run / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert after["weights_sha256"] == sha and {e["weights_sha256"] for e in after["entries"]} == {sha}
    assert [(e["method"], e["times_gt"]) for e in after["entries"]] == [
        (e["method"], e["times_gt"]) for e in before["entries"]]
    assert (after["selection"], after["slices_per_patient"], after["limit"]) == ("sample", 4, 4)  # the record kept
    with np.load(run / "explanations" / after["entries"][0]["file"]) as npz:
        assert npz["file_ids"].tolist() == TEST_IDS
    assert load_inputs(run, device="cpu", with_model=False).file_ids.tolist() == TEST_IDS
