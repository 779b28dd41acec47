"""`tumorcam run --model MODULE:FACTORY --weights W --data DIR` on slices: no training stage; the
user's network is explained, evaluated and reported, on a tiny prepared set with a factory module
written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from tumorcam.runs.pipeline import STAGES_FILE

FACTORY = '''
from torch import nn


class Tiny(nn.Module):
    """A 2-D network on one grey channel: two convolution blocks and a 1x1 head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        return self.head(self.features(x))


def make():
    return Tiny()


def three_channels():
    return nn.Conv2d(3, 1, 1)
'''


@pytest.fixture
def factory(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "tiny_net.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    import importlib
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        weights = tmp_path / "tiny.pth"
        torch.save(importlib.import_module("tiny_net").make().state_dict(), weights)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiny_net", None)
    return weights


def test_a_users_network_on_slices_is_explained_without_training(blob_prepared: Path, factory: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    code, out, err = run_cli(["run", "--data", str(blob_prepared), "--model", "tiny_net:make", "--weights", str(factory),
                              "--out", str(run), "--device", "cpu", "--steps", "4", "--baselines", "zero",
                              "--methods", "gradcam,saliency,random,predicted-mask"], capsys)
    assert code in (0, None), err
    assert out.strip().splitlines()[-1] == str(run / "report.html")
    stages = json.loads((run / STAGES_FILE).read_text())["stages"]
    assert list(stages) == ["segmentation", "explain", "faithfulness", "localization", "sanity", "report"]
    assert not (run / "unet_trained.pth").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "own-model" and config["model"]["network"] == "tiny_net:make"
    assert config["explain"]["layers"] == ["features"] and config["evaluate"]["primary"]["layer"] == "features"
    assert config["explain"]["split"] == "test" and config["evaluate"]["steps"] == 4
    index = json.loads((run / "explanations" / "index.json").read_text())
    assert {e["model"] for e in index["entries"]} == {"trained"}
    faithfulness = json.loads((run / "faithfulness.json").read_text())
    assert faithfulness["primary"]["layer"] == "features" and faithfulness["steps"] == 4
    assert (run / "report.html").is_file()

    code, _, err = run_cli(["run", "--data", str(blob_prepared), "--model", "tiny_net:three_channels",
                            "--out", str(tmp_path / "run3"), "--device", "cpu"], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --model: tiny_net:three_channels fails on")


def test_weights_need_a_model(blob_prepared: Path, factory: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["run", "--data", str(blob_prepared), "--weights", str(factory)], capsys)
    assert code == 2 and "--weights" in err
