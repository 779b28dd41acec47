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

import tumorcam
from tumorcam.config import EvaluateConfig, preset
from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.stats import cluster_bootstrap_ci
from tumorcam.evaluate.sanity import CRITERION, SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, THRESHOLD_SOURCE, SanityResult, cascade_stages, cascading_randomization, fixed_region_map_fn, foreground_mask, pick_slices, intact_region, randomize_, region_source, spearman_rows, ssim
from tumorcam.runs.sanity import evaluate_sanity
from tumorcam.explain import compute_maps
from tumorcam.io import write_json
from tumorcam.models.unet import GrayUnet
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


def ssim_by_loops(a: np.ndarray, b: np.ndarray, centres: np.ndarray | None = None) -> float:
    """SSIM of two maps written out window position by window position (Wang et al. 2004), averaged
    over the positions whose window centre is in `centres` (H, W) bool (None: every position)."""
    size, half = SSIM_WINDOW, (SSIM_WINDOW - 1) // 2
    coords = np.arange(size) - half
    g = np.exp(-coords**2 / (2 * SSIM_SIGMA**2))
    w = np.outer(g, g) / g.sum() ** 2
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            if centres is not None and not centres[i + half, j + half]:
                continue
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
    def result(rho: float, similarity: float) -> SanityResult:  # equal values: zero-width CIs at the value
        return SanityResult(stages=["a", "b"], spearman=np.array([[1.0, 1.0], [rho, rho]]),
                            ssim=np.array([[1.0, 1.0], [similarity, similarity]]), min_patients=2)

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
    assert mixed.fails(THRESHOLD) is None and mixed.patients_compared == [3, 2]  # 2 maps, each its own unit
    assert mixed.reason == "2 patients compared; at least 5 are needed"
    flat = SanityResult(stages=["a"], spearman=np.full((1, 3), np.nan), ssim=np.full((1, 3), np.nan))
    assert flat.n_compared == [0] and flat.fails(THRESHOLD) is None and np.isnan(flat.mean_abs_spearman[0])
    assert flat.verdict == "undetermined" and flat.reason == "0 maps compared: every intact map is flat"


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


def test_gradcam_of_a_trained_net_drops_rho_but_ssim_cannot_decide_on_8_slices(trained_tiny: tuple[nn.Module, torch.Tensor]) -> None:
    net, images = trained_tiny

    def gradcam(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return compute_maps(model, x, method="gradcam", target="mean-logits", layer="6")

    result = cascading_randomization(net, images, gradcam)
    assert result.stages == ["8", "6", "3", "0"]
    assert result.spearman.shape == result.ssim.shape == (4, 8)
    assert result.mean_abs_spearman[-1] < THRESHOLD and result.mean_ssim[-1] < THRESHOLD
    # the means are below the threshold, but on 8 slices (each its own unit) the SSIM's CI is not:
    # |rho| is shown to drop, SSIM (mean 0.47) is not shown to, so the check cannot decide
    assert result.abs_spearman_ci[-1]["ci_high"] < THRESHOLD <= result.ssim_ci[-1]["ci_high"]
    assert result.ssim_ci[-1]["ci_low"] < THRESHOLD
    assert result.fails(THRESHOLD) is None and result.verdict == "undetermined"
    assert result.reason is not None and result.reason.startswith("the SSIM CI [")
    assert result.reason.endswith("straddles the threshold 0.5")


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
    with pytest.raises(TumorcamError, match=r"evaluate\.sanity"):
        pick_slices(6, 0, pids)


def test_evaluate_sanity_writes_the_contract_names(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    with pytest.raises(TumorcamError, match="methods: no maps of hirescam"):
        evaluate_sanity(run, methods=["hirescam"])
    with pytest.raises(TumorcamError, match="methods random: the random map is not sanity-checked"):
        evaluate_sanity(run, methods=["random"])
    out = evaluate_sanity(run)  # default (evaluate.sanity null): every explained slice, 4 of 2 patients
    assert json.loads((run / "sanity.json").read_text()) == json.loads(json.dumps(out))
    assert out["n_slices"] == 4 and len(out["file_ids"]) == 4 and len(out["stages"]) == 12
    assert (out["threshold"], out["criterion"], out["threshold_source"]) == (THRESHOLD, CRITERION, THRESHOLD_SOURCE)
    assert "no numeric cut-off" in out["threshold_source"]
    assert len(set(out["patient_ids"])) == 2 and out["n_patients"] == 2 and out["unit"] == "patient"
    assert (out["min_patients"], out["bootstrap"], out["level"]) == (5, 200, 0.95)
    [row] = out["results"]  # the random map is left out
    assert (row["method"], row["target"], row["layer"], row["region"]) == ("gradcam", "mean-logits",
                                                                          "decoder.blocks.4", None)
    for name in ("spearman", "mean_abs_spearman", "ssim", "n_compared"):
        assert len(row[name]) == 12, name
    assert "abs_spearman" not in row
    assert all(0 <= n <= 4 for n in row["n_compared"]) and all(0 <= n <= 2 for n in row["patients_compared"])
    assert row["final_mean_abs_spearman"] == row["mean_abs_spearman"][-1] and row["final_ssim"] == row["ssim"][-1]
    for rho, abs_rho in zip(row["spearman"], row["mean_abs_spearman"]):
        assert rho is None or abs(rho) <= abs_rho + 1e-12
    for name in ("final_mean_abs_spearman_ci", "final_ssim_ci"):
        assert len(row[name]) == 2, name
    assert row["final_mean_abs_spearman_ci"] == row["mean_abs_spearman_ci"][-1]
    assert row["final_ssim_ci"] == row["ssim_ci"][-1] and len(row["ssim_ci"]) == 12
    assert row["min_patients"] == 5 and row["n_patients"] == row["patients_compared"][-1] <= 2
    assert set(row["per_patient"]) == {"patient_ids", "mean_abs_spearman", "ssim"}
    assert len(row["per_patient"]["patient_ids"]) == row["n_patients"]
    # 2 patients can never decide: undetermined, with the reason in a sentence
    assert row["verdict"] == "undetermined" and row["passes"] is None
    assert row["reason"] in (f"{row['n_patients']} patients compared; at least 5 are needed",
                             "0 maps compared: every intact map is flat")


def test_evaluate_sanity_fails_the_edges_control_and_fixes_the_region(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    index = json.loads((run / "explanations" / "index.json").read_text())
    for method, layer in (("edges", "input"), ("predicted-mask", "input"), ("gradcam", "decoder.blocks.4")):
        # the maps on disk are not read: the check recomputes them
        index["entries"].append({**index["entries"][0], "method": method, "target": "predicted-region", "layer": layer})
    write_json(run / "explanations" / "index.json", index)
    # 3 slices of 2 patients: min_patients 2 so that the test can decide on so few
    out = evaluate_sanity(run, limit=3, methods=["edges", "predicted-mask", "gradcam"], min_patients=2)
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


# --- the patient-level verdict ------------------------------------------------------------------------

def crafted(rho: list[float], similarity: list[float], ids: list[str], **options: object) -> SanityResult:
    """A two-stage result whose last stage has the given per-map values (the first stage: all 1)."""
    ones = np.ones(len(rho))
    return SanityResult(stages=["head", "all"], spearman=np.array([ones, rho]), ssim=np.array([ones, similarity]),
                        patient_ids=np.array(ids), **options)


SIX = ["p1", "p1", "p2", "p2", "p3", "p4", "p5", "p6"]  # 8 maps of 6 patients, two with 2 maps


def test_patient_means_weigh_each_patient_once() -> None:
    rho = [0.1, 0.3, -0.2, 0.2, 0.4, np.nan, 0.0, 0.3]  # p4's only map is flat: p4 is not compared
    similarity = [0.2, 0.2, 0.1, 0.3, 0.1, np.nan, 0.2, 0.3]
    result = crafted(rho, similarity, SIX)
    means, ids = result.patient_means(np.abs(result.spearman))
    assert ids.tolist() == ["p1", "p2", "p3", "p5", "p6"] and means == pytest.approx([0.2, 0.2, 0.4, 0.0, 0.3])
    assert result.mean_abs_spearman[-1] == pytest.approx(1.1 / 5)  # not the mean over the 7 maps (1.5 / 7)
    assert result.mean_spearman[-1] == pytest.approx((0.2 + 0.0 + 0.4 + 0.0 + 0.3) / 5)
    assert result.n_compared == [8, 7] and result.patients_compared == [6, 5] and result.n_patients == 5
    ci = cluster_bootstrap_ci(np.abs(np.array(rho)), np.array(SIX), resamples=1000, seed=0)
    assert result.abs_spearman_ci[-1] == ci and ci["n_patients"] == 5
    assert result.final_patient_means()["patient_ids"] == ["p1", "p2", "p3", "p5", "p6"]


def test_a_ci_clearly_below_the_threshold_passes() -> None:
    result = crafted([0.1, 0.2, -0.1, 0.15, 0.05, 0.1, 0.2, 0.0], [0.2, 0.1, 0.25, 0.2, 0.15, 0.3, 0.1, 0.2], SIX)
    assert result.abs_spearman_ci[-1]["ci_high"] < THRESHOLD and result.ssim_ci[-1]["ci_high"] < THRESHOLD
    assert (result.verdict, result.reason, result.passes, result.fails()) == ("passes", None, True, False)


def test_a_ci_clearly_above_the_threshold_on_either_measure_fails() -> None:
    inverted = crafted([-0.9, -0.85, -0.95, -0.9, -0.8, -0.9, -0.92, -0.88], [0.1] * 8, SIX)  # |rho| ~ 0.9
    assert inverted.abs_spearman_ci[-1]["ci_low"] >= THRESHOLD
    assert (inverted.verdict, inverted.reason, inverted.passes) == ("fails", None, False)
    kept = crafted([0.1] * 8, [0.7, 0.8, 0.75, 0.7, 0.9, 0.8, 0.7, 0.85], SIX)  # structure kept by SSIM
    assert kept.verdict == "fails" and kept.fails(THRESHOLD) is True
    straddling_rho = crafted([0.2, 0.2, 0.8, 0.8, 0.5, 0.3, 0.7, 0.4], [0.8] * 8, SIX)  # SSIM alone decides
    assert straddling_rho.verdict == "fails"


def test_a_ci_that_straddles_the_threshold_is_undetermined_with_the_interval() -> None:
    rho = [0.2, 0.2, 0.8, 0.8, 0.3, 0.7, 0.4, 0.6]  # patient means 0.2, 0.8, 0.3, 0.7, 0.4, 0.6: mean 0.5
    similarity = [0.1] * 8
    result = crafted(rho, similarity, SIX)
    ci = cluster_bootstrap_ci(np.abs(np.array(rho)), np.array(SIX), resamples=1000, seed=0)
    assert ci["mean"] == pytest.approx(0.5) and ci["ci_low"] < THRESHOLD <= ci["ci_high"]
    assert result.verdict == "undetermined" and result.passes is None and result.fails() is None
    assert result.reason == (f"the |Spearman| CI [{ci['ci_low']:.2f}, {ci['ci_high']:.2f}] straddles the "
                             "threshold 0.5")
    both = crafted(rho, rho, SIX)
    assert both.reason is not None and " and the SSIM CI [" in both.reason and both.reason.endswith(
        "straddle the threshold 0.5")
    # other resamples and seeds give other intervals; the seed makes each reproducible
    assert crafted(rho, similarity, SIX, resamples=200, seed=3).ssim_ci[-1]["ci_high"] == pytest.approx(0.1)


def test_fewer_patients_than_min_patients_is_undetermined() -> None:
    four = crafted([0.95] * 8, [0.95] * 8, ["a", "a", "b", "b", "c", "c", "d", "d"])  # clearly similar ...
    assert four.n_patients == 4 and four.verdict == "undetermined"  # ... but 4 patients do not decide
    assert four.reason == "4 patients compared; at least 5 are needed"
    assert dataclasses_replace(four, min_patients=4).verdict == "fails"
    flat = crafted([np.nan] * 8, [np.nan] * 8, SIX)
    assert flat.n_patients == 0 and flat.reason == "0 maps compared: every intact map is flat"
    no_ids = SanityResult(stages=["s"], spearman=np.full((1, 5), 0.9), ssim=np.full((1, 5), 0.9))
    assert no_ids.n_patients == 5 and no_ids.verdict == "fails"  # without ids each map is its own unit
    with pytest.raises(TumorcamError, match="patient_ids: 3 ids for 5 maps"):
        SanityResult(stages=["s"], spearman=np.zeros((1, 5)), ssim=np.zeros((1, 5)), patient_ids=["a", "b", "c"])


def dataclasses_replace(result: SanityResult, **changes: object) -> SanityResult:
    import dataclasses

    return dataclasses.replace(result, **changes)


# --- the foreground ------------------------------------------------------------------------------------

def zscored_volume() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A (1, 2, 12, 12, 12) z-scored-like image with a constant non-zero background per channel
    (-0.7, -1.2) and a 6^3 brain, and two maps that are 0 on the background and differ inside."""
    g = torch.Generator().manual_seed(11)
    image = torch.tensor([-0.7, -1.2]).view(1, 2, 1, 1, 1).repeat(1, 1, 12, 12, 12)
    brain = (slice(3, 9),) * 3
    image[(0, slice(None), *brain)] = torch.randn((2, 6, 6, 6), generator=g)
    a, b = np.zeros((1, 12, 12, 12)), np.zeros((1, 12, 12, 12))
    inside = np.random.default_rng(1).random((2, 6, 6, 6))
    a[(0, *brain)] = inside[0]
    b[(0, *brain)] = 0.5 * inside[0] + inside[1]
    return image, a, b


def test_the_foreground_excludes_a_constant_non_zero_background() -> None:
    image, _, _ = zscored_volume()
    mask = foreground_mask(image)
    assert mask.shape == (1, 12, 12, 12) and mask.sum() == 6**3 and mask[0, 3:9, 3:9, 3:9].all()
    two = image.clone()
    two[0, 1, 0, 0, 1] = 5.0  # one channel differs: that voxel is foreground
    assert foreground_mask(two)[0, 0, 0, 1] and foreground_mask(two).sum() == 6**3 + 1
    zero = torch.zeros((2, 1, 8, 8))
    zero[0, 0, 2:5, 3:6] = 1.0
    assert foreground_mask(zero)[0].sum() == 9 and foreground_mask(zero)[1].all()  # an empty foreground: all


def test_foreground_spearman_matches_scipy_over_the_foreground_voxels() -> None:
    image, a, b = zscored_volume()
    mask = foreground_mask(image).numpy()
    expected = spearmanr(a[mask], b[mask]).statistic  # by hand: only the 216 brain voxels
    rho = spearman_rows(a, b, mask)[0]
    assert rho == pytest.approx(expected, abs=1e-12)
    whole = spearmanr(a.ravel(), b.ravel()).statistic  # the background's 1512 tied zeros inflate it
    assert spearman_rows(a, b)[0] == pytest.approx(whole, abs=1e-12) and whole > rho + 0.1
    flat_inside = np.zeros_like(b)
    assert spearman_rows(a, flat_inside, mask)[0] == 0.0 and np.isnan(spearman_rows(flat_inside, a, mask)[0])


def test_foreground_ssim_averages_the_window_centres_in_the_foreground() -> None:
    g = torch.Generator().manual_seed(2)
    image = torch.full((1, 1, 24, 24), 0.4)  # a z-scored slice's constant background
    image[0, 0, 6:18, 4:20] = torch.rand((12, 16), generator=g)
    a, b = torch.zeros((1, 24, 24)), torch.zeros((1, 24, 24))
    a[0, 6:18, 4:20] = torch.rand((12, 16), generator=g)
    b[0, 6:18, 4:20] = (a[0, 6:18, 4:20] + 0.4 * torch.rand((12, 16), generator=g)).clamp(0, 1)
    mask = foreground_mask(image)
    inside = ssim(a, b, mask)[0]
    assert inside == pytest.approx(ssim_by_loops(a[0].double().numpy(), b[0].double().numpy(),
                                                    mask[0].numpy()), abs=1e-5)
    assert ssim(a, b)[0] == pytest.approx(ssim_by_loops(a[0].double().numpy(), b[0].double().numpy()), abs=1e-5)
    assert ssim(a, b)[0] > inside  # the agreeing zero background lifts the whole-map SSIM
    with pytest.raises(TumorcamError, match="foreground: expected a mask"):
        ssim(a, b, mask[:, :10])


def test_cascading_randomization_compares_inside_the_given_foreground(
        trained_tiny: tuple[nn.Module, torch.Tensor]) -> None:
    net, images = trained_tiny
    mask = torch.zeros((8, 32, 32), dtype=torch.bool)
    mask[:, 4:28, 4:28] = True
    inside = cascading_randomization(net, images, edge_map, foreground=mask)
    np.testing.assert_allclose(inside.spearman, 1.0)  # still the same map: the weights are never read
    assert inside.verdict == "fails" and inside.n_patients == 8


# --- the library call and the configs --------------------------------------------------------------------

def test_sanity_takes_patient_ids_and_chunks(trained_tiny: tuple[nn.Module, torch.Tensor]) -> None:
    net, images = trained_tiny
    ids = ["a", "a", "b", "b", "c", "d", "e", "f"]
    whole = tumorcam.sanity(net, images, method="edges", target="mean-logits", patient_ids=ids, bootstrap=100)
    chunked = tumorcam.sanity(net, images, method="edges", target="mean-logits", patient_ids=ids, bootstrap=100,
                              batch_size=3)
    np.testing.assert_array_equal(whole.spearman, chunked.spearman)
    np.testing.assert_array_equal(whole.ssim, chunked.ssim)
    assert whole.n_patients == 6 and whole.resamples == 100 and whole.verdict == "fails"
    assert tumorcam.sanity(net, images[:4], method="edges", target="mean-logits").reason == \
        "4 patients compared; at least 5 are needed"
    gradcam = tumorcam.sanity(net, images, method="gradcam", target="mean-logits", layer="6", batch_size=5)
    reference = cascading_randomization(net, images, lambda m, x: compute_maps(
        m, x, method="gradcam", target="mean-logits", layer="6", amp=False), foreground=foreground_mask(images))
    np.testing.assert_allclose(gradcam.spearman, reference.spearman, atol=1e-6, equal_nan=True)
    for options, message in (({"patient_ids": ["a"] * 7}, "^patient_ids: 7 ids for 8 images"),
                             ({"min_patients": 0}, "^min_patients: must be an integer >= 1"),
                             ({"bootstrap": 0}, "^bootstrap: must be an integer >= 1"),
                             ({"batch_size": 0}, "^batch_size: must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            tumorcam.sanity(net, images, method="edges", target="mean-logits", **options)


def test_the_defaults_check_every_explained_slice() -> None:
    from tumorcam.config import Config

    assert EvaluateConfig().sanity is None and preset("demo").evaluate.sanity is None
    assert preset("demo-3d").evaluate.sanity is None
    assert pick_slices(5, None).tolist() == [0, 1, 2, 3, 4]
    Config.from_dict({"evaluate": {"sanity": 0}})  # 0: skip (volumes)
    with pytest.raises(TumorcamError, match="sanity: must be >= 0 or null"):
        Config.from_dict({"evaluate": {"sanity": -1}})
    assert Config.from_dict({"evaluate": {"sanity_slices": 3}}).evaluate.sanity == 3  # the name in earlier runs
