"""Sanity check (cascading randomisation): similarity measures, stage order, a weight-blind map is
flagged, Grad-CAM of a small trained net passes, and the run-folder wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.sanity import (
    SSIM_K1,
    SanityResult,
    cascade_stages,
    cascading_randomization,
    evaluate_sanity,
    spearman_rows,
    ssim,
)
from tumorcam.explain import compute_maps
from tumorcam.model import GreyUnet
from conftest import write_blob_prepared
from test_faithfulness import make_run

THRESHOLD = 0.5  # EvaluateConfig.sanity_threshold


def test_spearman_rows_matches_scipy_and_handles_flat_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((3, 50))
    b = a + rng.normal(0, 0.3, a.shape)
    b[2] = np.round(b[2], 1)  # ties
    expected = [spearmanr(x, y).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(spearman_rows(a, b), expected, atol=1e-12)
    assert spearman_rows(a[:1], -a[:1])[0] == pytest.approx(-1.0)
    flat = np.zeros((1, 50))
    assert spearman_rows(a[:1], flat)[0] == 0.0  # the randomised model's map went flat: it changed
    assert np.isnan(spearman_rows(flat, a[:1])[0]) and np.isnan(spearman_rows(flat, flat)[0])  # nothing to compare


def test_ssim_is_one_for_equal_maps_and_exact_for_constant_maps() -> None:
    x = torch.rand((2, 20, 20), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-5)
    a, b = 0.2, 0.6  # constant maps: only the luminance term differs from 1
    c1 = SSIM_K1**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    value = ssim(torch.full((1, 16, 16), a), torch.full((1, 16, 16), b))[0]
    assert value == pytest.approx(expected, abs=1e-4)
    other = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = (x + 0.3 * other).clamp(0, 1)
    assert (np.abs(ssim(x, other)) < 0.2).all()  # independent maps: no structure in common
    assert ((ssim(x, noisy) > 0.5) & (ssim(x, noisy) < 0.99)).all()
    np.testing.assert_allclose(ssim(x, noisy), ssim(noisy, x), atol=1e-6)


def test_cascade_stages_run_from_the_output_down() -> None:
    unet = GreyUnet("resnet18", encoder_weights=None, classes=1)
    assert cascade_stages(unet) == [
        "segmentation_head", "decoder.blocks.4", "decoder.blocks.3", "decoder.blocks.2", "decoder.blocks.1",
        "decoder.blocks.0", "encoder.layer4", "encoder.layer3", "encoder.layer2", "encoder.layer1",
        "encoder.bn1", "encoder.conv1"]
    assert cascade_stages(tiny_net()) == ["8", "6", "3", "0"]


def tiny_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1))


def edge_map(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """A 'map' that ignores the model: gradient magnitude of the input, normalised to [0, 1]."""
    gx = F.pad((images[..., :, 1:] - images[..., :, :-1]).abs(), (0, 1))
    gy = F.pad((images[..., 1:, :] - images[..., :-1, :]).abs(), (0, 0, 0, 1))
    edges = (gx + gy)[:, 0]
    return edges / edges.flatten(1).amax(1).view(-1, 1, 1)


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, torch.Tensor]:
    """A tiny conv net trained for 40 steps to segment blobs, and 8 held-out slices."""
    data = load_prepared(write_blob_prepared(tmp_path_factory.mktemp("blobs"), n=48, size=32, seed=0))
    images, masks = data.tensors(np.arange(48))
    net = tiny_net()
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        rows = torch.randint(0, 40, (16,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(net(images[rows]), masks[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():  # it learned: held-out Dice well above chance
        pred = net(images[40:]) > 0
        dice = 2 * (pred & (masks[40:] > 0)).sum() / (pred.sum() + masks[40:].sum())
    assert dice > 0.7
    return net, images[40:]


def test_a_map_that_ignores_the_weights_fails(trained_tiny: tuple[nn.Module, torch.Tensor]) -> None:
    net, images = trained_tiny
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = cascading_randomization(net, images, edge_map)
    np.testing.assert_allclose(result.spearman, 1.0)
    np.testing.assert_allclose(result.ssim, 1.0, atol=1e-5)
    assert result.fails(THRESHOLD)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is left intact


def test_gradcam_of_a_trained_net_passes(trained_tiny: tuple[nn.Module, torch.Tensor]) -> None:
    net, images = trained_tiny

    def gradcam(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return compute_maps(model, x, method="gradcam", target="mean-logits", layer="6")

    result = cascading_randomization(net, images, gradcam)
    assert result.stages == ["8", "6", "3", "0"]
    assert result.spearman.shape == result.ssim.shape == (4, 8)
    assert not result.fails(THRESHOLD)
    assert result.final_spearman < THRESHOLD


def test_evaluate_sanity_flags_the_fixed_seed_random_map(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    with pytest.raises(TumorcamError, match="--methods: no maps of hirescam"):
        evaluate_sanity(run, methods=["hirescam"])
    out = evaluate_sanity(run, limit=2, methods=["random"])  # Grad-CAM of a U-Net: covered above, slow here
    assert json.loads((run / "sanity.json").read_text()) == json.loads(json.dumps(out))
    assert out["n_slices"] == 2 and len(out["stages"]) == 12 and out["threshold"] == THRESHOLD
    [row] = out["results"]
    assert (row["method"], row["target"], row["layer"]) == ("random", "mean-logits", "input")
    assert len(row["spearman"]) == len(row["ssim"]) == 12
    assert row["spearman"] == pytest.approx([1.0] * 12) and row["passes"] is False
    assert row["final_spearman"] == row["spearman"][-1]


def test_flat_original_maps_leave_the_verdict_undetermined() -> None:
    flat = SanityResult(stages=["segmentation_head"], spearman=np.full((1, 3), np.nan), ssim=np.ones((1, 3)))
    assert flat.final_spearman is None and flat.fails(0.5) is None
    mixed = SanityResult(stages=["segmentation_head"], spearman=np.array([[np.nan, 0.9, 0.7]]), ssim=np.ones((1, 3)))
    assert mixed.final_spearman == pytest.approx(0.8) and mixed.fails(0.5) is True
