"""Training on tiny blob data on CPU: loss goes down, checkpoints load without pickle, resume is
exact, a non-finite loss stops cleanly, bad input gets one clear error."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_blob_prepared
from tumorcam.cli import main
from tumorcam.config import Config, preset
from tumorcam.errors import TumorcamError
from tumorcam.models.unet import GrayUnet, load_weights
from tumorcam.training.loop import epoch_lr, train
from tumorcam.training.augment import augment
from tumorcam.training.data import epoch_batches, steps_per_epoch
from tumorcam.device import cpu_threads, resolve_device


def tiny_config(data: Path, **train_settings) -> Config:
    """The demo preset shrunk for tests: 32 px, batch 4, a ResNet18 encoder (same code, less to save)."""
    config = preset("demo")
    config.data = str(data)
    config.model.encoder, config.model.encoder_weights = "resnet18", "none"
    settings = {"size": 32, "epochs": 1, "batch_size": 4, "lr": 1e-3, "augment": False, "device": "cpu",
                "loss": "dice+bce", "eval_batch_size": 8}
    settings.update(train_settings)
    for name, value in settings.items():
        setattr(config.train, name, value)
    config.evaluate.bootstrap = 50
    return config


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A run of 3 epochs on blob data, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("trained")
    data = write_blob_prepared(root / "prepared")
    return root / "run", train(tiny_config(data, epochs=3, augment=True), root / "run")


def test_tiny_training_lowers_the_loss_and_writes_the_run_folder(trained):
    run, result = trained
    losses = [row["loss"] for row in result["history"]]
    assert losses[-1] < losses[0]
    for name in ("config.json", "provenance.json", "train_state.pth", "unet_trained.pth", "unet_best.pth",
                 "history.json", "history.csv"):
        assert (run / name).is_file(), name
    assert Config.load(run / "config.json").train.epochs == 3
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3]
    assert history["best_val_dice"] == max(r["val_dice"] for r in history["epochs"])
    assert all(r["img_per_s"] > 0 and 0 <= r["val_dice"] <= 1 for r in history["epochs"])
    assert (run / "history.csv").read_text().splitlines()[0].startswith("epoch,loss,val_dice,val_iou,seconds,img_per_s")
    assert len((run / "history.csv").read_text().splitlines()) == 4
    provenance = json.loads((run / "provenance.json").read_text())
    assert len(provenance["data"]["manifest_sha256"]) == 64 and provenance["software"]["torch"] == torch.__version__
    assert "metrics" not in result and not (run / "metrics.json").exists()  # the test split is the CLI's and the run's


def test_checkpoints_round_trip_with_weights_only(trained):
    run, result = trained
    state = torch.load(run / "unet_trained.pth", map_location="cpu", weights_only=True)
    model = GrayUnet("resnet18", encoder_weights=None, classes=1)
    assert set(state) == set(model.state_dict())
    load_weights(model, run / "unet_trained.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    train_state = torch.load(run / "train_state.pth", map_location="cpu", weights_only=True)
    assert train_state["epoch"] == 3
    assert all(torch.equal(train_state["model"][k], v) for k, v in state.items())
    assert train_state["optimizer"]["state"]  # Adam moments are saved
    best = torch.load(run / "unet_best.pth", map_location="cpu", weights_only=True)
    assert set(best) == set(state)
    best_epoch = result["best_epoch"]
    assert all(torch.equal(best[k], state[k]) for k in state) == (best_epoch == 3)


def test_resume_continues_at_the_right_epoch_with_the_same_optimizer_state(blob_prepared, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(tiny_config(blob_prepared, epochs=2, augment=True), straight)
    train(tiny_config(blob_prepared, epochs=1, augment=True), resumed)
    after_one = torch.load(resumed / "train_state.pth", weights_only=True)
    result = train(tiny_config(blob_prepared, epochs=2, augment=True), resumed, resume=True)

    assert [row["epoch"] for row in result["history"]] == [1, 2]
    a = torch.load(straight / "train_state.pth", weights_only=True)
    b = torch.load(resumed / "train_state.pth", weights_only=True)
    assert b["epoch"] == 2
    steps = steps_per_epoch(16, 4)  # 16 training slices in the blob fixture
    first = next(iter(b["optimizer"]["state"].values()))
    assert float(first["step"]) == 2 * steps == float(next(iter(after_one["optimizer"]["state"].values()))["step"]) + steps
    # resuming replays exactly what an uninterrupted run does: same weights, same Adam moments
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    for index, moments in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][index]["exp_avg"], moments["exp_avg"], rtol=1e-4, atol=1e-7)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(blob_prepared, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(blob_prepared, epochs=1), run)
    before = {name: _sha(run / name) for name in ("unet_trained.pth", "unet_best.pth", "train_state.pth",
                                           "history.json", "config.json")}

    with pytest.raises(TumorcamError, match=r"loss became (nan|inf|-inf) in epoch 2.*last good checkpoint \(epoch 1\)"):
        train(tiny_config(blob_prepared, epochs=2, lr=float("inf")), run, resume=True)

    assert {name: _sha(run / name) for name in before} == before
    weights = torch.load(run / "unet_trained.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_bad_input_gets_one_clear_error(blob_prepared, tmp_path):
    with pytest.raises(TumorcamError, match="not a prepared folder"):
        train(tiny_config(tmp_path), tmp_path / "run")
    with pytest.raises(TumorcamError, match=r"resume: .*train_state.pth does not exist"):
        train(tiny_config(blob_prepared), tmp_path / "empty", resume=True)
    with pytest.raises(TumorcamError, match="unknown device"):
        train(tiny_config(blob_prepared, device="tpu"), tmp_path / "run")
    with pytest.raises(TumorcamError, match="multiple of 32"):
        train(tiny_config(blob_prepared, size=50), tmp_path / "run")

    run = tmp_path / "run"
    train(tiny_config(blob_prepared), run)
    with pytest.raises(TumorcamError, match="already holds a training run"):
        train(tiny_config(blob_prepared), run)
    other = tiny_config(blob_prepared, epochs=2)
    other.model.encoder = "resnet34"
    with pytest.raises(TumorcamError, match="another architecture"):
        train(other, run, resume=True)
    with pytest.raises(TumorcamError, match="already trained 1 epoch"):
        train(tiny_config(blob_prepared), run, resume=True)


def test_unknown_and_unavailable_devices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(TumorcamError, match="device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(TumorcamError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cli_train_then_resume_and_error_line(blob_prepared, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(blob_prepared), "--out", str(run), "--preset", "demo", "--size", "32",
            "--epochs", "1", "--batch-size", "4", "--no-augment", "--device", "cpu", "--encoder-weights", "none"]
    main(args)
    config = Config.load(run / "config.json")
    assert (config.preset, config.model.encoder, config.train.augment) == ("demo-2d", "resnet34", False)
    assert "trained 1 epoch(s)" in capsys.readouterr().out
    main(["train", "--out", str(run), "--resume", "--epochs", "2"])  # the run's own config is the base
    capsys.readouterr()
    config = Config.load(run / "config.json")
    assert (config.train.epochs, config.train.size, config.train.batch_size) == (2, 32, 4)
    assert len(json.loads((run / "history.json").read_text())["epochs"]) == 2

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2"), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --data {tmp_path / 'nowhere'}: no such folder"]


def test_cpu_threads_follow_the_idle_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpu_threads(3) == 3  # asked for: given
    monkeypatch.setattr(os, "getloadavg", lambda: (0.4, 0.0, 0.0))
    assert cpu_threads(0) == 2  # idle machine: torch's default
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 0.0, 0.0))
    assert cpu_threads(0) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 0.0, 0.0))
    assert cpu_threads(0) == 1  # never below one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads(0) == 2  # the user's explicit choice stands


def test_learning_rate_schedules():
    assert [epoch_lr(0.1, "constant", e, 4) for e in (1, 4)] == [0.1, 0.1]
    assert [epoch_lr(0.1, "cosine", e, 4) for e in (1, 3, 5)] == pytest.approx([0.1, 0.05, 0.0])
    with pytest.raises(TumorcamError, match="unknown schedule 'step'"):
        epoch_lr(0.1, "step", 1, 4)


def test_augmentation_keeps_image_and_mask_aligned():
    masks = torch.zeros(6, 1, 32, 32)
    masks[:, :, 8:20, 4:14] = 1
    images = masks.clone()
    out_images, out_masks = augment(images, masks, torch.Generator().manual_seed(0))
    again_images, _ = augment(images, masks, torch.Generator().manual_seed(0))
    assert torch.equal(out_images, again_images)  # seeded: reproducible
    assert not torch.equal(out_masks, masks)  # something moved
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert out_images.min() >= 0 and out_images.max() <= 1
    agreement = ((out_images > 0.5).float() == out_masks).float().mean()
    assert agreement > 0.98


def test_epoch_batches_shard_one_shared_permutation():
    shards = [torch.cat(list(epoch_batches(10, 2, seed=1, epoch=3, device=torch.device("cpu"),
                                           rank=r, world_size=2))) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4  # 5 per rank, last partial batch dropped
    assert not set(shards[0].tolist()) & set(shards[1].tolist())
    single = torch.cat(list(epoch_batches(10, 5, seed=1, epoch=3, device=torch.device("cpu"))))
    assert sorted(single.tolist()) == list(range(10))
    other_epoch = torch.cat(list(epoch_batches(10, 5, seed=1, epoch=4, device=torch.device("cpu"))))
    assert not torch.equal(single, other_epoch)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_ddp_with_two_gloo_processes_on_cpu(blob_prepared, tmp_path):
    run = tmp_path / "ddp"
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", str(bin_dir / "tumorcam"),
           "train", "--data", str(blob_prepared), "--out", str(run), "--preset", "demo", "--size", "32",
           "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--encoder-weights", "none"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "provenance.json").read_text())["world_size"] == 2
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert len(history) == 1 and history[0]["loss"] > 0
    assert (run / "unet_trained.pth").is_file() and (run / "metrics.json").is_file()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_resumed_adam_moments_take_their_parameters_memory_layout():
    from tumorcam.training.loop import _match_param_layout

    param = torch.nn.Parameter(torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last))
    optimizer = torch.optim.Adam([param])
    param.grad = torch.randn_like(param)
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0]["exp_avg"] = saved["state"][0]["exp_avg"].contiguous()  # as a CPU run saves it
    expected = saved["state"][0]["exp_avg"].clone()
    resumed = torch.optim.Adam([param])
    resumed.load_state_dict(saved)
    _match_param_layout(resumed)
    assert resumed.state[param]["exp_avg"].stride() == param.stride()
    assert torch.equal(resumed.state[param]["exp_avg"], expected)
