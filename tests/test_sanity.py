"""Sanity check (cascading randomisation): similarity measures and their flat-map rule, the two-sided
criterion, stage order, a weight-blind map is flagged, the fixed target region, slice picking, and the
run-folder wrapper."""

from __future__ import annotations

import copy
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
    CRITERION,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    THRESHOLD_SOURCE,
    SanityResult,
    cascade_stages,
    cascading_randomization,
    evaluate_sanity,
    fixed_region_map_fn,
    pick_slices,
    intact_region,
    randomize_,
    region_source,
    spearman_rows,
    ssim,
)
from tumorcam.explain import compute_maps
from tumorcam.io import write_json
from tumorcam.model import GrayUnet
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


def ssim_by_loops(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps written out window position by window position (Wang et al. 2004)."""
    size = SSIM_WINDOW
    coords = np.arange(size) - (size - 1) / 2
    g = np.exp(-coords**2 / (2 * SSIM_SIGMA**2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            x, y = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
            cov = (w * (x - mx) * (y - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_formula_and_treats_flat_maps_like_spearman() -> None:
    x = torch.rand((2, 20, 20), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ssim(x, x), 1.0, atol=1e-5)
    other = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = (x + 0.3 * other).clamp(0, 1)
    expected = [ssim_by_loops(x[i].double().numpy(), noisy[i].double().numpy()) for i in range(2)]
    np.testing.assert_allclose(ssim(x, noisy), expected, atol=1e-5)  # 10 x 10 window positions each
    assert (np.abs(ssim(x, other)) < 0.2).all()  # independent maps: no structure in common
    assert ((ssim(x, noisy) > 0.5) & (ssim(x, noisy) < 0.99)).all()
    np.testing.assert_allclose(ssim(x, noisy), ssim(noisy, x), atol=1e-6)
    flat = torch.full((1, 20, 20), 0.3)
    assert ssim(x[:1], flat)[0] == 0.0  # as spearman_rows: the randomised map went flat
    assert np.isnan(ssim(flat, x[:1])[0]) and np.isnan(ssim(flat, flat)[0])
    assert np.isnan(ssim(torch.zeros((1, 20, 20)), x[:1])[0])  # an all-zero original is flat too


def test_cascade_stages_run_from_the_output_down() -> None:
    unet = GrayUnet("resnet18", encoder_weights=None, classes=1)
    assert cascade_stages(unet) == [
        "segmentation_head", "decoder.blocks.4", "decoder.blocks.3", "decoder.blocks.2", "decoder.blocks.1",
        "decoder.blocks.0", "encoder.layer4", "encoder.layer3", "encoder.layer2", "encoder.layer1",
        "encoder.bn1", "encoder.conv1"]
    assert cascade_stages(tiny_net()) == ["8", "6", "3", "0"]


def test_the_criterion_is_two_sided_and_covers_ssim() -> None:
    def result(rho: float, similarity: float) -> SanityResult:
        return SanityResult(stages=["a", "b"], spearman=np.array([[1.0, 1.0], [rho, rho]]),
                            ssim=np.array([[1.0, 1.0], [similarity, similarity]]))

    assert result(-0.9, 0.1).fails(THRESHOLD) is True  # an inverted map did not change enough
    assert result(0.1, 0.6).fails(THRESHOLD) is True  # the structure survived by SSIM
    assert result(0.5, 0.0).fails(THRESHOLD) is True and result(0.0, 0.5).fails(THRESHOLD) is True  # >=
    assert result(-0.3, 0.2).fails(THRESHOLD) is False
    assert result(0.9, 0.9).fails(1.0) is False  # only the last stage counts, against the given threshold
    assert result(-0.9, 0.1).mean_abs_spearman.tolist() == [1.0, pytest.approx(0.9)]


def test_n_compared_counts_the_maps_that_entered_and_flat_originals_are_undetermined() -> None:
    rho = np.array([[np.nan, 0.9, 0.7, -0.4], [np.nan, np.nan, 0.2, -0.6]])
    similarity = np.array([[np.nan, 0.8, 0.6, 0.1], [np.nan, np.nan, 0.3, 0.1]])
    mixed = SanityResult(stages=["a", "b"], spearman=rho, ssim=similarity)
    assert mixed.n_compared == [3, 2]
    np.testing.assert_allclose(mixed.mean_spearman, [0.4, -0.2])
    np.testing.assert_allclose(mixed.mean_abs_spearman, [2.0 / 3, 0.4])
    np.testing.assert_allclose(mixed.mean_ssim, [0.5, 0.2])
    np.testing.assert_allclose(mixed.std_spearman, [np.std([0.9, 0.7, -0.4]), np.std([0.2, -0.6])])
    assert mixed.fails(THRESHOLD) is False
    flat = SanityResult(stages=["a"], spearman=np.full((1, 3), np.nan), ssim=np.full((1, 3), np.nan))
    assert flat.n_compared == [0] and flat.fails(THRESHOLD) is None and np.isnan(flat.mean_abs_spearman[0])


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
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        rows = torch.randint(0, 40, (16,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(net(images[rows]), masks[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
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
    assert result.n_compared == [8] * 4
    assert result.fails(THRESHOLD) is True
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is left intact


def test_gradcam_of_a_trained_net_passes(trained_tiny: tuple[nn.Module, torch.Tensor]) -> None:
    net, images = trained_tiny

    def gradcam(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return compute_maps(model, x, method="gradcam", target="mean-logits", layer="6")

    result = cascading_randomization(net, images, gradcam)
    assert result.stages == ["8", "6", "3", "0"]
    assert result.spearman.shape == result.ssim.shape == (4, 8)
    assert result.fails(THRESHOLD) is False
    assert result.mean_abs_spearman[-1] < THRESHOLD and result.mean_ssim[-1] < THRESHOLD


def test_the_predicted_region_is_fixed_from_the_intact_model(trained_tiny: tuple[nn.Module, torch.Tensor]) -> None:
    net, images = trained_tiny
    region = intact_region(net, images, "predicted-region", amp=False)
    with torch.no_grad():
        assert torch.equal(region, (net(images) > 0).float())
    assert (region.flatten(1).sum(1) > 0).all()  # every held-out slice has a predicted tumour
    map_fn = fixed_region_map_fn(net, images, method="gradcam", target="predicted-region", layer="6", masks=None,
                                 amp=False)
    # on the intact model it is the predicted-region map itself
    expected = compute_maps(net, images, method="gradcam", target="predicted-region", layer="6", amp=False)
    torch.testing.assert_close(map_fn(net, images), expected)
    # a fully randomised model is explained over the same region: its maps are not flat
    randomized = copy.deepcopy(net)
    for i, stage in enumerate(cascade_stages(net)):
        randomize_(dict(randomized.named_modules())[stage], i)
    maps = map_fn(randomized, images).flatten(1)
    assert (maps.amax(1) > maps.amin(1)).all()
    result = cascading_randomization(net, images, map_fn)
    assert result.n_compared == [8] * 4  # non-flat maps entered at every stage
    assert np.isfinite(result.spearman).all() and np.isfinite(result.ssim).all()


def test_region_sources() -> None:
    assert region_source("predicted-region") == region_source("boundary") == "intact model"
    assert region_source("gt-region") == "ground truth" and region_source("mean-logits") is None


def test_pick_slices_takes_one_per_patient_first() -> None:
    pids = np.array(["B", "B", "A", "B", "C", "A"])
    assert pick_slices(6, 3, pids).tolist() == [0, 2, 4]  # the first slice of B, A and C
    assert pick_slices(6, 4, pids).tolist() == [0, 1, 2, 4]  # then B's second one, in the given order
    assert pick_slices(6, 10, pids).tolist() == [0, 1, 2, 3, 4, 5]
    assert pick_slices(6, 2).tolist() == [0, 1] and pick_slices(3, 8).tolist() == [0, 1, 2]  # no ids: the order given
    with pytest.raises(TumorcamError, match="sanity_slices"):
        pick_slices(6, 0, pids)


def test_evaluate_sanity_writes_the_contract_names(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    with pytest.raises(TumorcamError, match="--methods: no maps of hirescam"):
        evaluate_sanity(run, methods=["hirescam"])
    with pytest.raises(TumorcamError, match="--methods random: the random map is not sanity-checked"):
        evaluate_sanity(run, methods=["random"])
    out = evaluate_sanity(run, limit=2)
    assert json.loads((run / "sanity.json").read_text()) == json.loads(json.dumps(out))
    assert out["n_slices"] == 2 and len(out["file_ids"]) == 2 and len(out["stages"]) == 12
    assert (out["threshold"], out["criterion"], out["threshold_source"]) == (THRESHOLD, CRITERION, THRESHOLD_SOURCE)
    assert "no numeric cut-off" in out["threshold_source"]
    assert len(set(out["patient_ids"])) == 2  # one slice of each of the two patients
    [row] = out["results"]  # the random map is left out
    assert (row["method"], row["target"], row["layer"], row["region"]) == ("gradcam", "mean-logits",
                                                                          "decoder.blocks.4", None)
    for name in ("spearman", "mean_abs_spearman", "ssim", "n_compared"):
        assert len(row[name]) == 12, name
    assert "abs_spearman" not in row
    assert all(n in (0, 1, 2) for n in row["n_compared"])
    assert row["final_mean_abs_spearman"] == row["mean_abs_spearman"][-1] and row["final_ssim"] == row["ssim"][-1]
    for rho, abs_rho in zip(row["spearman"], row["mean_abs_spearman"]):
        assert rho is None or abs(rho) <= abs_rho + 1e-12
    final = (row["final_mean_abs_spearman"], row["final_ssim"])
    assert row["passes"] is (None if None in final else all(v < THRESHOLD for v in final))


def test_evaluate_sanity_fails_the_edges_control_and_fixes_the_region(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    index = json.loads((run / "explanations" / "index.json").read_text())
    for method, layer in (("edges", "input"), ("predicted-mask", "input"), ("gradcam", "decoder.blocks.4")):
        # the maps on disk are not read: the check recomputes them
        index["entries"].append({**index["entries"][0], "method": method, "target": "predicted-region", "layer": layer})
    write_json(run / "explanations" / "index.json", index)
    out = evaluate_sanity(run, limit=3, methods=["edges", "predicted-mask", "gradcam"])
    rows = {(r["method"], r["target"]): r for r in out["results"]}
    assert set(rows) == {("edges", "predicted-region"), ("predicted-mask", "predicted-region"),
                         ("gradcam", "predicted-region"), ("gradcam", "mean-logits")}
    edges = rows["edges", "predicted-region"]
    assert edges["n_compared"] == [3] * 12
    assert edges["final_mean_abs_spearman"] == pytest.approx(1.0)
    assert edges["final_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert edges["passes"] is False
    # the randomised net predicts no tumour: its predicted mask is flat and scores 0 on both measures ...
    mask = rows["predicted-mask", "predicted-region"]
    assert mask["n_compared"][-1] == 3 and (mask["final_mean_abs_spearman"], mask["final_ssim"]) == (0.0, 0.0)
    # ... while Grad-CAM of the predicted region is still computed over the intact net's region: not flat
    gradcam = rows["gradcam", "predicted-region"]
    assert gradcam["region"] == "intact model" and gradcam["n_compared"] == [3] * 12
    assert 0 < gradcam["final_mean_abs_spearman"] < THRESHOLD and gradcam["passes"] is True
