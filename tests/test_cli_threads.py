"""`--threads N` on every command that computes: torch's CPU threads once the command is set up
(0: automatic, `tumorcam.device.cpu_threads`); `tumorcam run --threads` is also the config's
train.num_threads, which the pipeline applies to every stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import run_cli
from tumorcam.config import preset


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("command", [["explain", "--threads", "3"], ["evaluate", "--threads", "3"]])
def test_threads_are_set_before_the_run_is_read(command, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli([*command, str(tmp_path / "no-run")], capsys)
    assert code == 2 and err.startswith("error: ") and "not a run folder" in err
    assert torch.get_num_threads() == 3


def test_train_threads(tmp_path: Path, monkeypatch, capsys) -> None:
    import tumorcam.training

    seen = {}

    def train(config, out, resume=False):
        seen["num_threads"], seen["torch"] = config.train.num_threads, torch.get_num_threads()
        return {"best_val_dice": None, "epochs": 0}

    monkeypatch.setattr(tumorcam.training, "train", train)
    code, _, err = run_cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--threads", "3"], capsys)
    assert code in (0, None), err
    assert seen == {"num_threads": 3, "torch": 3}


def test_run_threads_are_the_configs(tmp_path: Path, monkeypatch, capsys) -> None:
    import tumorcam.runs.pipeline

    seen = {}

    def run_pipeline(**kwargs):
        seen.update(kwargs, torch=torch.get_num_threads())
        return tmp_path / "report.html"

    monkeypatch.setattr(tumorcam.runs.pipeline, "run_pipeline", run_pipeline)
    code, out, err = run_cli(["run", "--out", str(tmp_path), "--threads", "3"], capsys)
    assert code in (0, None), err
    assert seen["config"].train.num_threads == 3 and seen["torch"] == 3
    assert out.strip() == str(tmp_path / "report.html")
    code, _, err = run_cli(["run", "--out", str(tmp_path)], capsys)
    assert code in (0, None), err
    assert seen["config"].train.num_threads == 1  # not given: the demo's own


def test_run_volume_demo_threads(tmp_path: Path, monkeypatch, capsys) -> None:
    import tumorcam.runs.volumes

    seen = {}
    monkeypatch.setattr(tumorcam.runs.volumes, "run_volume_demo", lambda out, **kw: seen.update(kw))
    code, _, err = run_cli(["run", "--volumes", "--out", str(tmp_path), "--threads", "2"], capsys)
    assert code in (0, None), err
    assert seen["threads"] == 2 and torch.get_num_threads() == 2


def test_zero_is_automatic_and_config_override(tmp_path: Path, monkeypatch, capsys) -> None:
    import tumorcam.device

    monkeypatch.setattr(tumorcam.device, "cpu_threads", lambda requested: requested or 2)  # 0: automatic
    code, _, _ = run_cli(["explain", "--threads", "0", str(tmp_path / "no-run")], capsys)
    assert code == 2 and torch.get_num_threads() == 2
    assert preset("demo").train.num_threads == 1  # the demo's, unchanged
    assert preset("demo").replace({"train.num_threads": 3}).train.num_threads == 3
    assert preset("paper").replace({"train.num_threads": 0}).train.num_threads == 0


def test_negative_threads_are_a_usage_error(capsys) -> None:
    code, _, err = run_cli(["train", "--threads", "-1", "--out", "x"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--threads" in err
