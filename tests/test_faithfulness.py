"""Deletion/Insertion: batched game vs the plain loop, a model with a known causal region, exact AUCs,
ROAD's imputation vs its sparse system, bad options, and the run-folder wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve
from torch import nn

from tumorcam.config import Config, ModelConfig
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.faithfulness import (
    BASELINES,
    ROAD_WEIGHTS,
    PerturbationGame,
    auc,
    deletion_insertion,
    evaluate_faithfulness,
    rank_pixels,
    reference_curves,
    road_impute,
)
from tumorcam.io import save_npz, write_json
from tumorcam.model import GreyUnet, save_weights


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
    """sigmoid(output) == input, so the mean-sigmoid score is the mean intensity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.logit(x)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("score", ["mean-sigmoid", "predicted-region"])
def test_batched_curves_equal_the_per_step_loop(baseline: str, score: str) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.rand((5, 1, 16, 16), generator=g)
    maps = (torch.rand((5, 16, 16), generator=g) * 4).floor() / 4  # four levels: many ties
    model = small_net()
    with torch.no_grad():  # make the predicted region non-empty and not everything
        model[2].bias.fill_(-float(model(images).median()))
    options = dict(steps=6, baseline=baseline, score=score, seed=3, road_noise=0.0)
    batched = deletion_insertion(model, images, maps, batch_size=7, **options)
    loop = reference_curves(model, images, maps, **options)
    assert batched.deletion.shape == batched.insertion.shape == (5, 7)
    np.testing.assert_allclose(batched.deletion, loop.deletion, atol=1e-5)
    np.testing.assert_allclose(batched.insertion, loop.insertion, atol=1e-5)
    # the ends are the original slice and the full baseline, whatever the map
    np.testing.assert_allclose(batched.deletion[:, 0], batched.insertion[:, -1], atol=1e-6)
    np.testing.assert_allclose(batched.deletion[:, -1], batched.insertion[:, 0], atol=1e-6)
    assert not np.allclose(batched.deletion[:, 0], batched.deletion[:, -1])


def test_one_step_game_scores_only_the_original_and_the_baseline() -> None:
    images = torch.full((2, 1, 8, 8), 0.5)
    curves = deletion_insertion(PixelModel(), images, torch.rand(2, 8, 8), steps=1, baseline="zero")
    np.testing.assert_allclose(curves.deletion, [[0.5, 0.0]] * 2, atol=1e-6)
    np.testing.assert_allclose(curves.insertion, [[0.0, 0.5]] * 2, atol=1e-6)


@pytest.mark.parametrize("baseline", BASELINES)
def test_map_of_the_causal_region_wins_and_random_sits_between(baseline: str) -> None:
    size = 24
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    region = ((yy - 8) ** 2 + (xx - 14) ** 2 <= 25).float().view(1, 1, size, size)
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
    ({"steps": 0}, "--steps"),
    ({"baseline": "gray"}, "--baselines"),
    ({"score": "max"}, "--score"),
])
def test_bad_options_fail_with_one_clear_message(options: dict, message: str) -> None:
    with pytest.raises(TumorcamError, match=message):
        deletion_insertion(PixelModel(), torch.rand(1, 1, 8, 8), torch.rand(1, 8, 8), **options)


def make_run(root: Path, prepared: Path, size: int = 32, n: int = 4, with_maps: bool = True) -> Path:
    """A run folder with a small untrained U-Net, and maps (gradcam-like centre blob, random) of n test slices."""
    run = root / "run"
    run.mkdir()
    config = Config(data=str(prepared), model=ModelConfig(encoder="resnet18", encoder_weights="none"))
    config.train.device = "cpu"
    config.evaluate.bootstrap = 200
    config.save(run / "config.json")
    torch.manual_seed(0)
    save_weights(GreyUnet("resnet18", encoder_weights=None, classes=1), run / "unet_trained.pth")
    if with_maps:
        splits = json.loads((prepared / "splits.json").read_text())
        ids = np.array(splits["test"][:n], dtype=np.int64)
        yy, xx = np.mgrid[:size, :size]
        blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 6) ** 2))
        rng = np.random.default_rng(0)
        folder = run / "explanations"
        save_npz(folder / "gradcam.npz", maps=np.repeat(blob[None], n, 0).astype(np.float16), file_ids=ids)
        save_npz(folder / "random.npz", maps=rng.random((n, size, size)).astype(np.float16), file_ids=ids[::-1].copy())
        write_json(folder / "index.json", {"split": "test", "size": size, "entries": [
            {"file": "gradcam.npz", "method": "gradcam", "target": "mean-logits", "layer": "decoder.blocks.4",
             "model": "trained", "times_gt": False},
            {"file": "random.npz", "method": "random", "target": "mean-logits", "layer": "input",
             "model": "trained", "times_gt": False}]})
    return run


def test_evaluate_faithfulness_writes_curves_aucs_and_tests_against_random(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    out = evaluate_faithfulness(run, steps=4, baselines=["zero", "mean"])
    assert json.loads((run / "faithfulness.json").read_text()) == json.loads(json.dumps(out))
    assert out["steps"] == 4 and out["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0] and out["n_slices"] == 4
    rows = {(r["baseline"], r["method"]): r for r in out["results"]}
    assert set(rows) == {(b, m) for b in ("zero", "mean") for m in ("gradcam", "random")}
    for (baseline, method), row in rows.items():
        for curve in ("deletion", "insertion"):
            summary = row[curve]
            assert len(summary["curve_mean"]) == 5 and len(row["per_slice"][curve]) == 4
            # the mean AUC equals the AUC of the mean curve (trapezoid is linear)
            assert summary["mean"] == pytest.approx(float(auc(np.array(summary["curve_mean"]), 4)), abs=1e-9)
            assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
            assert ("vs_random" in summary) == (method != "random")
        assert row["random_reference"]["file"] == "random.npz"
    # both curves start from the same original and baseline scores for every map
    g, r = rows[("zero", "gradcam")], rows[("zero", "random")]
    assert g["deletion"]["curve_mean"][0] == pytest.approx(r["deletion"]["curve_mean"][0], abs=1e-6)
    assert g["insertion"]["curve_mean"][0] == pytest.approx(r["insertion"]["curve_mean"][0], abs=1e-6)


def test_evaluate_faithfulness_needs_maps_or_a_model(tmp_path: Path, blob_prepared: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TumorcamError, match="no maps .* and no trained model"):
        evaluate_faithfulness(empty)
    run = make_run(tmp_path, blob_prepared)
    with pytest.raises(TumorcamError, match="--baselines"):
        evaluate_faithfulness(run, baselines=["zero", "noise"])
    with pytest.raises(TumorcamError, match="--steps"):
        evaluate_faithfulness(run, steps=0)
    assert not (run / "faithfulness.json").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "error: --steps: K must be an integer >= 1, got 0"),
    (["--baselines", "zero,grey"], "error: --baselines: unknown baseline(s) 'grey'"),
    (["--score", "max"], "error: --score: unknown score 'max'"),
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
    main(["evaluate", str(run), "--faithfulness", "--steps", "3", "--baselines", "mean", "--score", "predicted-region",
          "--device", "cpu"])
    doc = json.loads((run / "faithfulness.json").read_text())
    assert (doc["steps"], doc["baselines"], doc["score"], doc["n_slices"]) == (3, ["mean"], "predicted-region", 2)
    assert "faithfulness (test, 2 slices, K=3, predicted-region" in capsys.readouterr().out


def test_bootstrap_ci_and_wilcoxon_on_known_samples() -> None:
    from tumorcam.evaluate.stats import bootstrap_ci, wilcoxon_paired

    constant = bootstrap_ci(np.array([0.4, 0.4, np.nan, 0.4]), resamples=100)
    assert constant == {"mean": pytest.approx(0.4), "ci_low": pytest.approx(0.4), "ci_high": pytest.approx(0.4), "n": 3}
    spread = bootstrap_ci(np.arange(100.0), resamples=2000, seed=1)
    assert spread["mean"] == 49.5 and 43 < spread["ci_low"] < 47 and 52 < spread["ci_high"] < 56  # +-1.96 * 2.9
    assert bootstrap_ci(np.array([np.nan]))["mean"] is None
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 40)
    shifted = wilcoxon_paired(a - 1.0, a + rng.normal(0, 0.1, 40))
    assert shifted["p_value"] < 1e-6 and shifted["share_a_lower"] == 1.0 and shifted["mean_difference"] < -0.9
    same = wilcoxon_paired(a, a)
    assert same["p_value"] is None and same["mean_difference"] == 0.0 and same["n"] == 40
