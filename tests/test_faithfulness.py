"""Deletion/Insertion: batched game vs the plain loop, a model with a known causal region, schedules,
scores (Dice, regions, following the target), RISE's baselines, exact AUCs, ROAD's imputation vs its
sparse system, bad options, and the run-folder wrapper's faithfulness.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from tumorcam.config import Config, ModelConfig
from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.baselines import BASELINES, ROAD_WEIGHTS, blur_images, blur_kernel, road_impute
from tumorcam.evaluate.faithfulness import target_score
from tumorcam.runs.faithfulness import evaluate_faithfulness
from tumorcam.evaluate.game import GAME_SCORES, PerturbationGame, deletion_insertion
from tumorcam.evaluate.ranking import auc, rank_pixels, step_counts, step_fractions
from tumorcam.io import save_npz, write_json
from tumorcam.models.unet import GrayUnet, save_weights
from tumorcam.runfolder.folder import load_run_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from seed_reference import reference_curves  # noqa: E402 - the seed's loop lives beside the benchmarks


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)).eval()


class RegionModel(nn.Module):
    """Logits everywhere = 8 * (mean of the input over a fixed region) - 4: only the region matters."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = (x * self.region).sum(dim=(1, 2, 3)) / self.region.sum()
        return (8 * inside - 4).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])


class PixelModel(nn.Module):
    """sigmoid(output) == input: the mean-sigmoid score is the mean intensity, the predicted region x > 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x)


def disc(size: int, cy: float, cx: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).float()


def game_inputs(n: int = 5, size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module]:
    """Random slices, four-level maps (many ties), ground-truth masks (the last one empty) and a
    small net whose predicted region is neither empty nor everything."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand((n, 1, size, size), generator=g)
    maps = (torch.rand((n, size, size), generator=g) * 4).floor() / 4
    masks = (torch.rand((n, 1, size, size), generator=g) < 0.3).float()
    masks[-1] = 0
    model = small_net()
    with torch.no_grad():
        model[2].bias.fill_(-float(model(images).median()))
    return images, maps, masks, model


@pytest.mark.parametrize("schedule", ["uniform", "log"])
@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("score", GAME_SCORES)
def test_batched_curves_equal_the_per_step_loop(baseline: str, score: str, schedule: str) -> None:
    images, maps, masks, model = game_inputs()
    options = dict(steps=6, baseline=baseline, score=score, schedule=schedule, masks=masks, seed=3, road_noise=0.0)
    batched = deletion_insertion(model, images, maps, batch_size=7, **options)
    loop = reference_curves(model, images, maps, **options)
    assert batched.deletion.shape == batched.insertion.shape == (5, 7)
    np.testing.assert_allclose(batched.deletion, loop.deletion, atol=1e-5)
    np.testing.assert_allclose(batched.insertion, loop.insertion, atol=1e-5)
    np.testing.assert_array_equal(batched.fractions, step_fractions(6, schedule))
    # the original slice ends deletion and insertion alike, whatever the map
    np.testing.assert_allclose(batched.deletion[:, 0], batched.insertion[:, -1], atol=1e-6)
    if baseline != "rise":  # one baseline: the full baseline is shared too
        np.testing.assert_allclose(batched.deletion[:, -1], batched.insertion[:, 0], atol=1e-6)
    finite = np.isfinite(batched.deletion[:, 0])
    assert not np.allclose(batched.deletion[finite, 0], batched.deletion[finite, -1])
    if score == "gt-region":  # the last mask is empty: no region, no curve
        assert np.isnan(batched.deletion[-1]).all() and finite[:-1].all()


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("score", ["predicted-region", "dice"])
def test_batched_curves_of_a_softmax_model_with_three_input_channels_equal_the_loop(baseline: str,
                                                                                    score: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1)).eval()
    g = torch.Generator().manual_seed(4)
    images = torch.rand((3, 3, 12, 12), generator=g)
    maps = (torch.rand((3, 12, 12), generator=g) * 3).floor()
    with torch.no_grad():  # center each class's logits so that every class wins somewhere
        model[2].bias -= model(images).transpose(0, 1).flatten(1).median(dim=1).values
        assert ((model(images).argmax(1) == 1).flatten(1).sum(1) > 0).all()
    options = dict(steps=4, baseline=baseline, score=score, schedule="log", channel=1, seed=2, road_noise=0.0)
    batched = deletion_insertion(model, images, maps, batch_size=5, **options)
    loop = reference_curves(model, images, maps, **options)
    np.testing.assert_allclose(batched.deletion, loop.deletion, atol=1e-5)
    np.testing.assert_allclose(batched.insertion, loop.insertion, atol=1e-5)
    channel_zero = deletion_insertion(model, images, maps, batch_size=5, **{**options, "channel": 0})
    assert not np.allclose(channel_zero.deletion, batched.deletion, equal_nan=True)


def test_one_step_game_scores_only_the_original_and_the_baseline() -> None:
    images = torch.full((2, 1, 8, 8), 0.5)
    curves = deletion_insertion(PixelModel(), images, torch.rand(2, 8, 8), steps=1, baseline="zero")
    np.testing.assert_allclose(curves.deletion, [[0.5, 0.0]] * 2, atol=1e-6)
    np.testing.assert_allclose(curves.insertion, [[0.0, 0.5]] * 2, atol=1e-6)


@pytest.mark.parametrize("baseline", BASELINES)
def test_map_of_the_causal_region_wins_and_random_sits_between(baseline: str) -> None:
    size = 24
    region = disc(size, 8, 14, 5).view(1, 1, size, size)
    g = torch.Generator().manual_seed(0)
    images = (0.2 + 0.05 * torch.rand((6, 1, size, size), generator=g) + 0.7 * region).clamp(0, 1)
    maps = {
        "region": region[0, 0].expand(6, -1, -1),
        "random": torch.rand((6, size, size), generator=g),
        "outside": 1 - region[0, 0].expand(6, -1, -1),
    }
    game = PerturbationGame(RegionModel(region), images, steps=12, baseline=baseline, batch_size=32, road_noise=0.0)
    deletion = {name: game.curves(m).deletion_auc.mean() for name, m in maps.items()}
    insertion = {name: game.curves(m).insertion_auc.mean() for name, m in maps.items()}
    assert deletion["region"] < deletion["random"] < deletion["outside"]
    assert insertion["region"] > insertion["random"] > insertion["outside"]


def test_dice_deletion_of_the_predicted_region_runs_from_one_to_zero() -> None:
    size = 32
    region = disc(size, 12, 18, 6)  # the predicted region R: PixelModel predicts x > 0.5
    images = torch.stack([0.2 + 0.7 * region, torch.full((size, size), 0.2)]).unsqueeze(1)  # the 2nd: R empty
    maps = region.expand(2, -1, -1)
    steps = 16
    curves = deletion_insertion(PixelModel(), images, maps, steps=steps, baseline="zero", score="dice")
    r = int(region.sum())
    removed = np.minimum(step_counts(steps, size * size), r)  # the map ranks R first: n_k of R go
    expected = 2 * (r - removed) / (2 * r - removed)  # P = R less n_k pixels: 2|P n R| / (|P| + |R|)
    assert curves.deletion[0, 0] == 1.0 and curves.deletion[0, -1] == 0.0
    np.testing.assert_allclose(curves.deletion[0], expected, atol=1e-6)
    assert np.isnan(curves.deletion[1]).all() and np.isnan(curves.insertion[1]).all()
    # insertion puts R back first: Dice |P| / (|P| + |R|) * 2 with P the inserted part of R
    inserted = np.minimum(step_counts(steps, size * size), r)
    np.testing.assert_allclose(curves.insertion[0], 2 * inserted / (inserted + r), atol=1e-6)
    # a map of everything but R keeps Dice at 1 until R's pixels go
    outside = deletion_insertion(PixelModel(), images[:1], 1 - maps[:1], steps=steps, baseline="zero", score="dice")
    assert outside.deletion_auc[0] > 0.8 > 0.3 > curves.deletion_auc[0]


def test_region_scores_average_the_sigmoid_over_their_region() -> None:
    size = 20
    predicted = disc(size, 6, 6, 3)  # x = 0.8 there, 0.3 elsewhere: PixelModel predicts exactly this region
    truth = disc(size, 13, 13, 4)
    image = (0.3 + 0.5 * predicted).view(1, 1, size, size)
    masks = truth.view(1, 1, size, size)
    start = {}
    for score in ("mean-sigmoid", "predicted-region", "gt-region"):
        curves = deletion_insertion(PixelModel(), image, torch.rand(1, size, size), steps=2, score=score, masks=masks)
        start[score] = curves.deletion[0, 0]
    n_predicted = float(predicted.sum())
    assert start["predicted-region"] == pytest.approx(0.8, abs=1e-6)
    assert start["gt-region"] == pytest.approx(float((image[0, 0] * truth).sum() / truth.sum()), abs=1e-6)
    assert start["gt-region"] == pytest.approx(0.3, abs=1e-6)  # the two discs do not meet
    assert start["mean-sigmoid"] == pytest.approx((0.8 * n_predicted + 0.3 * (size * size - n_predicted)) / size**2,
                                                  abs=1e-6)
    with pytest.raises(ValueError, match="gt-region.*masks"):
        PerturbationGame(PixelModel(), image, steps=2, score="gt-region")


def test_score_target_follows_the_map_target() -> None:
    assert target_score("predicted-region", "target") == "predicted-region"
    assert target_score("gt-region", "target") == "gt-region"
    assert target_score("mean-logits", "target") == "mean-sigmoid"
    assert target_score("none", "target") == "mean-sigmoid"  # a generated random map
    assert target_score("predicted-region", "dice") == "dice"
    assert target_score("gt-region", "mean-sigmoid") == "mean-sigmoid"
    with pytest.raises(TumorcamError, match="score target: no score for maps of target 'top-class'"):
        target_score("top-class", "target")


def test_rise_is_zero_deletion_and_blur_insertion() -> None:
    images, maps, _, model = game_inputs(n=4, size=24)
    for score in ("mean-sigmoid", "dice"):
        options = dict(steps=5, score=score, schedule="log", batch_size=9)
        rise = deletion_insertion(model, images, maps, baseline="rise", **options)
        zero = deletion_insertion(model, images, maps, baseline="zero", **options)
        blur = deletion_insertion(model, images, maps, baseline="blur", **options)
        np.testing.assert_allclose(rise.deletion, zero.deletion, atol=1e-6)
        np.testing.assert_allclose(rise.insertion, blur.insertion, atol=1e-6)
        assert not np.allclose(zero.insertion, blur.insertion)


def test_blur_kernel_is_rises_11_px_at_224_and_scales_with_the_size() -> None:
    assert blur_kernel(224) == (11, 5.0)
    assert blur_kernel(448) == (23, 10.0)  # 2 floor(11) + 1
    kernel, sigma = blur_kernel(96)  # s = 3/7: 2 floor(2.36) + 1 = 5, sigma 15/7
    assert kernel == 5 and sigma == pytest.approx(15 / 7)
    assert blur_kernel(32)[0] == 3  # the smallest kernel that blurs
    x = torch.rand((1, 1, 224, 224), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(blur_images(x), gaussian_blur(x, [11, 11], [5.0, 5.0]))
    assert not torch.allclose(blur_images(x), gaussian_blur(x, [13, 13], [5.0, 5.0]))


def test_log_schedule_spreads_the_steps_over_decades_of_the_fraction() -> None:
    f = step_fractions(50, "log")
    assert f[0] == 0.0 and f[1] == pytest.approx(1e-3, rel=1e-12) and f[-1] == 1.0
    assert np.all(np.diff(f) > 0)
    np.testing.assert_allclose(f[2:] / f[1:-1], 1000 ** (1 / 49))  # a constant ratio: log-spaced
    np.testing.assert_allclose(step_fractions(4, "log"), [0.0, 1e-3, 1e-2, 1e-1, 1.0], rtol=1e-12)
    np.testing.assert_array_equal(step_fractions(1, "log"), [0.0, 1.0])
    np.testing.assert_array_equal(step_fractions(4, "uniform"), [0.0, 0.25, 0.5, 0.75, 1.0])
    counts = step_counts(50, 224 * 224, "log")
    assert counts[:2] == [0, 50] and counts[-1] == 224 * 224  # round(50.176)
    assert step_counts(4, 32 * 32, "log") == [0, 1, 10, 102, 1024]
    assert step_counts(3, 10) == [0, 3, 7, 10]  # uniform: round(k P / K)
    with pytest.raises(TumorcamError, match="schedule: unknown schedule 'linear'"):
        step_fractions(4, "linear")


def test_auc_of_known_curves_is_exact() -> None:
    assert auc(np.full(11, 0.3), 10) == pytest.approx(0.3, abs=1e-15)
    assert auc(np.linspace(0, 1, 51), 50) == pytest.approx(0.5, abs=1e-15)
    assert auc(np.array([1.0, 0.0]), 1) == pytest.approx(0.5, abs=1e-15)
    np.testing.assert_allclose(auc(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), 2), [0.75, 0.25], atol=1e-15)


def test_auc_through_the_game_is_exact_for_linear_and_constant_curves() -> None:
    images = torch.ones((3, 1, 8, 8))  # 64 pixels, K = 16: each step removes exactly 4 pixels
    curves = deletion_insertion(PixelModel(), images, torch.rand((3, 8, 8)), steps=16, baseline="zero")
    np.testing.assert_allclose(curves.deletion, np.tile(np.linspace(1, 0, 17), (3, 1)), atol=1e-6)
    np.testing.assert_allclose(curves.deletion_auc, 0.5, atol=1e-6)
    np.testing.assert_allclose(curves.insertion_auc, 0.5, atol=1e-6)
    constant = deletion_insertion(lambda x: torch.zeros_like(x), images, torch.rand((3, 8, 8)), steps=5)
    np.testing.assert_allclose(constant.deletion_auc, 0.5, atol=1e-7)  # sigmoid(0) throughout


def test_log_schedule_auc_is_over_the_step_index() -> None:
    images = torch.full((1, 1, 20, 50), 0.9)  # 1000 pixels; K = 2 log: n = 0, 1, 1000
    curves = deletion_insertion(PixelModel(), images, torch.rand((1, 20, 50)), steps=2, schedule="log")
    np.testing.assert_allclose(curves.deletion[0], [0.9, 0.9 * 0.999, 0.0], atol=1e-6)
    # trapezoid over t = 0, 1/2, 1: (0.9 + 0.8991) / 4 + 0.8991 / 4, not the ~0.45 of the area over the fraction
    assert curves.deletion_auc[0] == pytest.approx((0.9 + 2 * 0.8991) / 4, abs=1e-6)
    np.testing.assert_allclose(curves.fractions, [0.0, 1e-3, 1.0])


def test_rank_pixels_orders_by_value_and_breaks_ties_by_seed() -> None:
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert rank_pixels(maps).tolist() == [[3, 0, 1, 2]]
    flat = torch.zeros((1, 10, 10))
    flat[0, 0, 0] = 1.0
    a, b, c = rank_pixels(flat, seed=0), rank_pixels(flat, seed=0), rank_pixels(flat, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a[0, 0] == 0 and sorted(a[0].tolist()) == list(range(100))


def road_sparse_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's NoisyLinearImputer system (Rong et al. 2022), noise-free, solved by scipy's spsolve."""
    h, w = image.shape
    unknown = np.flatnonzero(removed.ravel())
    var = {p: i for i, p in enumerate(unknown)}
    a = lil_matrix((len(unknown), len(unknown)))
    b = np.zeros(len(unknown))
    flat = image.ravel()
    for i, p in enumerate(unknown):
        r, c = divmod(int(p), w)
        total = 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                weight = ROAD_WEIGHTS[dr + 1][dc + 1]
                rr, cc = r + dr, c + dc
                if weight == 0 or not (0 <= rr < h and 0 <= cc < w):
                    continue
                total += weight
                q = rr * w + cc
                if q in var:
                    a[i, var[q]] = -weight
                else:
                    b[i] += weight * flat[q]
        a[i, i] = total
    out = flat.copy()
    out[unknown] = spsolve(a.tocsc(), b)
    return out.reshape(h, w)


def test_road_imputation_solves_roads_sparse_system() -> None:
    g = torch.Generator().manual_seed(2)
    images = torch.rand((3, 1, 14, 12), generator=g)
    removed = torch.rand((3, 1, 14, 12), generator=g) < torch.tensor([0.3, 0.7, 0.95]).view(3, 1, 1, 1)
    removed[2, 0, 0, 0] = False  # at least one kept pixel
    filled = road_impute(images, removed, noise=0.0, tol=1e-7)
    for i in range(3):
        expected = road_sparse_reference(images[i, 0].double().numpy(), removed[i, 0].numpy())
        np.testing.assert_allclose(filled[i, 0].numpy(), expected, atol=1e-4)
    everything = road_impute(images, torch.ones_like(removed), noise=0.1, generator=torch.Generator().manual_seed(0))
    assert abs(float(everything.mean())) < 0.02 and float(everything.std()) == pytest.approx(0.1, rel=0.15)
    noisy = road_impute(images, removed, noise=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[~removed], images[~removed])


@pytest.mark.parametrize(("options", "message"), [
    ({"steps": 0}, "^steps: K must be an integer >= 1, got 0"),
    ({"baseline": "gray"}, "^baseline: unknown baseline 'gray'"),
    ({"score": "max"}, "^score: unknown score 'max'"),
    ({"score": "target"}, "^score: unknown score 'target'"),
    ({"schedule": "linear"}, "^schedule: unknown schedule 'linear'"),
    ({"batch_size": 0}, "^batch_size: must be an integer >= 1"),
])
def test_bad_options_fail_with_one_clear_message(options: dict, message: str) -> None:
    with pytest.raises(TumorcamError, match=message):
        deletion_insertion(PixelModel(), torch.rand(1, 1, 8, 8), torch.rand(1, 8, 8), **options)


def make_run(root: Path, prepared: Path, size: int = 32, n: int = 4, with_maps: bool = True,
             targets: tuple[str, ...] = ("mean-logits",), controls: bool = False) -> Path:
    """A run folder with a small untrained U-Net, and maps of n test slices for each target: a
    gradcam-like centre blob and a random map, with `controls` also a predicted-mask-like disc."""
    run = root / "run"
    run.mkdir()
    config = Config(data=str(prepared), model=ModelConfig(encoder="resnet18", encoder_weights="none"))
    config.train.device = "cpu"
    config.evaluate.bootstrap = 200
    config.save(run / "config.json")
    torch.manual_seed(0)
    save_weights(GrayUnet("resnet18", encoder_weights=None, classes=1), run / "unet_trained.pth")
    if with_maps:
        splits = json.loads((prepared / "splits.json").read_text())
        ids = np.array(splits["test"][:n], dtype=np.int64)
        yy, xx = np.mgrid[:size, :size]
        blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 6) ** 2))
        rng = np.random.default_rng(0)
        folder = run / "explanations"
        maps = {"gradcam": (np.repeat(blob[None], n, 0), ids, "decoder.blocks.4"),
                "random": (rng.random((n, size, size)), ids[::-1].copy(), "input")}
        if controls:
            maps["predicted-mask"] = (np.repeat((blob > 0.5)[None], n, 0), ids, "input")
        entries = []
        for target in targets:
            for method, (values, file_ids, layer) in maps.items():
                name = f"{method}-{target}.npz" if len(targets) > 1 else f"{method}.npz"
                save_npz(folder / name, maps=values.astype(np.float16), file_ids=file_ids)
                entries.append({"file": name, "method": method, "target": target, "layer": layer, "model": "trained",
                                "times_gt": False, "control": method != "gradcam"})
        write_json(folder / "index.json", {"split": "test", "size": size, "entries": entries})
    return run


def test_faithfulness_json_keeps_the_patient_level_contract(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared, targets=("predicted-region", "mean-logits"), controls=True)
    out = evaluate_faithfulness(run, steps=4, baselines=["zero", "rise"])  # defaults: log schedule, score target
    assert json.loads((run / "faithfulness.json").read_text()) == json.loads(json.dumps(out))
    assert {"n_patients", "n_slices", "primary", "schedule", "fractions", "score", "baselines", "alpha", "file_ids",
            "patient_ids", "results"} <= set(out)
    assert (out["schedule"], out["score"], out["baselines"], out["alpha"]) == ("log", "target", ["zero", "rise"], 0.05)
    assert out["primary"] == {"method": "gradcam", "target": "predicted-region", "layer": "decoder.blocks.4",
                              "baseline": "zero"}
    # the headline: 2 patients cannot reach alpha after Holm over 4 (4 x 2/2^2 = 2 -> 1)
    assert out["headline"]["level"] == "undetermined" and len(out["headline"]["tests"]) == 4
    assert out["headline"]["reason"].startswith("2 patients: the smallest adjusted p reachable is 1")
    np.testing.assert_allclose(out["fractions"], [0.0, 1e-3, 1e-2, 1e-1, 1.0])
    assert out["file_ids"] == [11, 12, 23, 24] and out["patient_ids"] == ["P010", "P011", "P010", "P011"]
    assert (out["n_patients"], out["n_slices"]) == (2, 4)
    rows = {(r["baseline"], r["method"], r["target"]): r for r in out["results"]}
    assert set(rows) == {(b, m, t) for b in ("zero", "rise") for m in ("gradcam", "random", "predicted-mask")
                         for t in ("predicted-region", "mean-logits")}
    for (baseline, method, target), row in rows.items():
        assert row["score"] == {"predicted-region": "predicted-region", "mean-logits": "mean-sigmoid"}[target]
        assert row["control"] == (method != "gradcam") and row["model"] == "trained" and row["times_gt"] is False
        for curve in ("deletion", "insertion"):
            summary = row[curve]
            assert summary["unit"] == "patient" and (summary["n_patients"], summary["n_slices"]) == (2, 4)
            assert len(summary["curve_mean"]) == 5 and len(row["per_slice"][curve]) == 4
            assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
            # the mean of patient means equals the AUC of the patient-mean curve (trapezoid is linear)
            assert summary["mean"] == pytest.approx(float(auc(np.array(summary["curve_mean"]), 4)), abs=1e-9)
            assert (summary["vs_random"] is None) == (method == "random")
            assert (summary["vs_mask"] is None) == (method != "gradcam")
            for test in (summary["vs_random"], summary["vs_mask"]):
                if test is not None:
                    assert {"p_value", "p_adjusted", "verdict", "n_pairs", "family"} <= set(test)
                    assert test["verdict"] in ("better", "worse", "not shown to differ", "undetermined")
                    # the primary family: vs random and vs the predicted mask of the primary row
                    primary = (baseline, method, target) == ("zero", "gradcam", "predicted-region")
                    assert test["family"] == ("primary" if primary else "exploratory")
        reference = row["random_reference"]
        assert method == "random" and reference is None or reference["target"] == target
    # the rows of one target share the original slice's score, and each row is scored as its target says
    model, _ = load_run_model(run, device="cpu")
    prepared = load_prepared(blob_prepared)
    images, _ = prepared.tensors(np.searchsorted(prepared.file_ids, out["file_ids"]), 32)
    with torch.no_grad():
        prob = model(images).sigmoid()
    region = (prob > 0.5).float()
    per_slice = {"predicted-region": ((prob * region).sum(dim=(1, 2, 3)) / region.sum(dim=(1, 2, 3))).numpy(),
                 "mean-logits": prob.mean(dim=(1, 2, 3)).numpy()}
    for target, values in per_slice.items():
        expected = (values[[0, 2]].mean() + values[[1, 3]].mean()) / 2  # mean of the two patients' means
        for method in ("gradcam", "random", "predicted-mask"):
            assert rows["zero", method, target]["deletion"]["curve_mean"][0] == pytest.approx(expected, abs=1e-5)
            assert rows["rise", method, target]["insertion"]["curve_mean"][-1] == pytest.approx(expected, abs=1e-5)
    assert (per_slice["predicted-region"] > per_slice["mean-logits"]).all()  # a different score indeed


def test_evaluate_faithfulness_takes_the_options_and_maps_without_controls(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    out = evaluate_faithfulness(run, steps=3, baselines=["mean"], score="dice", schedule="uniform")
    assert (out["steps"], out["schedule"], out["score"], out["fractions"]) == (3, "uniform", "dice", [0, 1 / 3, 2 / 3, 1])
    rows = {r["method"]: r for r in out["results"]}
    assert set(rows) == {"gradcam", "random"}
    for row in rows.values():
        assert row["score"] == "dice" and row["deletion"]["vs_mask"] is None and row["mask_reference"] is None
        assert row["deletion"]["curve_mean"][0] == pytest.approx(1.0)  # Dice of the original prediction with itself
    assert rows["gradcam"]["deletion"]["vs_random"]["family"] == "exploratory"  # no primary row: no zero baseline


def test_evaluate_faithfulness_needs_a_run_with_maps(tmp_path: Path, blob_prepared: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TumorcamError, match=r"not a run folder \(no config.json\)"):
        evaluate_faithfulness(empty)
    (tmp_path / "no-maps").mkdir()
    no_maps = make_run(tmp_path / "no-maps", blob_prepared, with_maps=False)
    with pytest.raises(TumorcamError, match=r"no maps in .*explanations \(no index.json\); make them with `explain_run\("):
        evaluate_faithfulness(no_maps)
    assert not (no_maps / "explanations").exists()  # nothing is made as a side effect of loading
    run = make_run(tmp_path, blob_prepared)
    with pytest.raises(TumorcamError, match="baselines: unknown baseline"):
        evaluate_faithfulness(run, baselines=["zero", "noise"])
    with pytest.raises(TumorcamError, match="steps: K must be"):
        evaluate_faithfulness(run, steps=0)
    with pytest.raises(TumorcamError, match="schedule: unknown schedule"):
        evaluate_faithfulness(run, schedule="linear")
    assert not (run / "faithfulness.json").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "error: --steps: K must be an integer >= 1, got 0"),
    (["--baselines", "zero,grey"], "error: --baselines: unknown baseline(s) 'grey'"),
    (["--score", "max"], "error: --score: unknown score 'max'"),
    (["--schedule", "linear"], "error: --schedule: unknown schedule 'linear'"),
])
def test_cli_bad_options_give_one_line_and_exit_2(tmp_path: Path, blob_prepared: Path, capsys: pytest.CaptureFixture,
                                                  args: list[str], message: str) -> None:
    from tumorcam.cli import main

    run = make_run(tmp_path, blob_prepared)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(run), "--faithfulness", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err
    assert not (run / "faithfulness.json").exists()


def test_cli_runs_faithfulness_with_the_chosen_options(tmp_path: Path, blob_prepared: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    from tumorcam.cli import main

    run = make_run(tmp_path, blob_prepared, n=2)
    main(["evaluate", str(run), "--faithfulness", "--steps", "3", "--baselines", "rise", "--score", "predicted-region",
          "--schedule", "uniform", "--device", "cpu"])
    doc = json.loads((run / "faithfulness.json").read_text())
    assert (doc["steps"], doc["baselines"], doc["score"], doc["schedule"], doc["n_slices"]) == (
        3, ["rise"], "predicted-region", "uniform", 2)
    out = capsys.readouterr().out
    assert "faithfulness (test, 2 patients, 2 slices, K=3 uniform, score predicted-region" in out
    assert "vs random: -/-  vs mask: -/-" in out  # the random row
