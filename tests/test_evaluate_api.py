"""The library's evaluation calls on the user's own models: `tumorcam.faithfulness` (multi-class,
binary, multi-output, 3-D, patients as units), `tumorcam.localization` (2-D and 3-D, known values)
and `tumorcam.sanity`, with their statistics checked against scipy and their errors naming the
parameter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from scipy import stats
from torch import nn

import tumorcam
from tumorcam.evaluate.localization import localization_scores
from tumorcam.evaluate.reference import random_maps
from tumorcam.evaluate.sanity import SSIM_K1, SSIM_K2, SSIM_SIGMA, cascade_stages, ssim
from tumorcam.evaluate.stats import holm

VERDICTS = ("better", "worse", "not shown to differ", "undetermined")


def centered(model: nn.Module, head: nn.Conv2d, images: torch.Tensor) -> nn.Module:
    """The model with each class's logits shifted by their median on `images`, so every class wins somewhere."""
    with torch.no_grad():
        head.bias -= model(images).transpose(0, 1).flatten(1).median(dim=1).values
    return model


@pytest.fixture(scope="module")
def three_class() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 3-channel, 3-class smp U-Net (random weights, eval), 6 images of 32 px and Grad-CAM maps of class 1."""
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=3).eval()
    images = torch.rand((6, 3, 32, 32), generator=torch.Generator().manual_seed(1))
    centered(model, model.segmentation_head[0], images)
    maps = tumorcam.explain(model, images, channel=1)
    return model, images, maps


def hand_wilcoxon(values: np.ndarray, reference: np.ndarray) -> float:
    d = values - reference
    d = d[np.isfinite(d) & (d != 0)]
    return float(stats.wilcoxon(d, method="exact").pvalue)


def test_faithfulness_of_a_three_class_unet_against_random(three_class: tuple) -> None:
    model, images, maps = three_class
    result = tumorcam.faithfulness(model, images, maps, channel=1, steps=4)
    assert isinstance(result, tumorcam.FaithfulnessResult)
    assert result.deletion_auc.shape == result.insertion_auc.shape == (6,)
    assert result.curves.deletion.shape == result.curves.insertion.shape == (6, 5)
    assert np.isfinite(result.deletion_auc).all() and np.isfinite(result.insertion_auc).all()
    # the default score: the mean softmax probability of class 1 over its predicted region
    with torch.no_grad():
        logits = model(images)
    p = logits.softmax(dim=1)[:, 1]
    region = (logits.argmax(dim=1) == 1).float()
    np.testing.assert_allclose(result.curves.deletion[:, 0], ((p * region).sum((1, 2)) / region.sum((1, 2))).numpy(),
                               atol=1e-5)
    # the reference is the seeded random map, played on the same game
    ref = result.reference_curves
    np.testing.assert_allclose(ref.deletion[:, 0], result.curves.deletion[:, 0])
    again = tumorcam.faithfulness(model, images, random_maps(6, (32, 32), seed=0), channel=1, steps=4, reference=None)
    np.testing.assert_allclose(again.deletion_auc, ref.deletion_auc)
    assert again.reference_curves is None and again.summary()["deletion"]["vs_random"] is None

    summary = result.summary(bootstrap=200)
    assert (summary["baseline"], summary["score"], summary["schedule"], summary["steps"], summary["reference"]) == (
        "zero", "predicted-region", "log", 4, "random")
    p_values = []
    for name, values, reference in (("deletion", result.deletion_auc, ref.deletion_auc),
                                    ("insertion", result.insertion_auc, ref.insertion_auc)):
        row = summary[name]
        assert (row["unit"], row["n_patients"], row["n_slices"]) == ("slice", 6, 6)  # each image its own unit
        assert row["mean"] == pytest.approx(values.mean()) and row["ci_low"] <= row["mean"] <= row["ci_high"]
        assert len(row["curve_mean"]) == 5 and len(summary["per_slice"][name]) == 6
        test = row["vs_random"]
        assert test["n_pairs"] == 6 and test["verdict"] in VERDICTS and test["family"] == "primary"
        assert test["p_value"] == pytest.approx(hand_wilcoxon(values, reference))
        p_values.append(test["p_value"])
    # the predicted-mask control is played too: vs_mask of both curves, the four tests one Holm family
    masks = [summary[c]["vs_mask"] for c in ("deletion", "insertion")]
    assert all(t["family"] == "primary" and t["n_pairs"] <= 6 for t in masks)
    adjusted = holm(p_values + [t["p_value"] for t in masks])  # Holm over the call's four comparisons
    assert [summary[c][k]["p_adjusted"] for k in ("vs_random", "vs_mask") for c in ("deletion", "insertion")] == \
        pytest.approx(adjusted)
    # 6 images: the smallest adjusted p reachable is 4 x 2/64 = 0.125, so the headline cannot decide
    assert summary["headline"]["level"] == "undetermined" and "6 slices" in summary["headline"]["reason"]


def test_patient_ids_make_the_patient_the_unit(three_class: tuple) -> None:
    model, images, maps = three_class
    pids = ["a", "a", "b", "b", "c", "c"]
    result = tumorcam.faithfulness(model, images, maps, channel=1, steps=3, patient_ids=pids, baseline="mean")
    row = result.summary(bootstrap=200)["insertion"]
    assert (row["unit"], row["n_patients"], row["n_slices"]) == ("patient", 3, 6)
    per_patient = result.insertion_auc.reshape(3, 2).mean(axis=1)
    assert row["mean"] == pytest.approx(per_patient.mean())
    assert row["vs_random"]["n_pairs"] == 3
    differences = (result.insertion_auc - result.reference_curves.insertion_auc).reshape(3, 2).mean(axis=1)
    assert row["vs_random"]["p_value"] == pytest.approx(stats.wilcoxon(differences, method="exact").pvalue)


def test_a_multi_output_model_is_read_through_output(three_class: tuple) -> None:
    model, images, maps = three_class

    class DeepSupervision(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.net(x)
            return logits, logits[:, :1] * 0  # an auxiliary head

    class Named(DeepSupervision):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
            return {"aux": self.net(x)[:, :1], "out": self.net(x)}

    plain = tumorcam.faithfulness(model, images, maps, channel=1, steps=3, score="dice")
    for wrapper, output in ((DeepSupervision(model), 0), (Named(model), "out"), (Named(model), lambda o: o["out"])):
        picked = tumorcam.faithfulness(wrapper, images, maps, channel=1, steps=3, score="dice", output=output)
        np.testing.assert_allclose(picked.deletion_auc, plain.deletion_auc)
        np.testing.assert_allclose(picked.insertion_auc, plain.insertion_auc)
    np.testing.assert_allclose(plain.curves.deletion[:, 0], 1.0)  # Dice of the prediction with itself
    with pytest.raises(ValueError, match="^output: the model returns a tuple of 2"):
        tumorcam.faithfulness(DeepSupervision(model), images, maps, channel=1, steps=3)


def test_a_binary_model_is_read_with_a_sigmoid() -> None:
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1).eval()
    images = torch.rand((4, 1, 32, 32), generator=torch.Generator().manual_seed(2))
    centered(model, model.segmentation_head[0], images)
    maps = tumorcam.explain(model, images)
    masks = images > 0.5
    result = tumorcam.faithfulness(model, images, maps, steps=3, score="gt-region", masks=masks, baseline="blur")
    with torch.no_grad():
        p = model(images).sigmoid()
    expected = (p * masks).sum(dim=(1, 2, 3)) / masks.sum(dim=(1, 2, 3))
    np.testing.assert_allclose(result.curves.deletion[:, 0], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(result.curves.insertion[:, -1], expected.numpy(), atol=1e-5)
    assert result.summary(bootstrap=100)["deletion"]["vs_random"]["verdict"] in VERDICTS


class ThreeClassOfIntensity(nn.Module):
    """Logits z = (0, 4x - 2, 2 - 4x) of a one-channel image x: class 1 wins where x > 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 4 * x - 2, 2 - 4 * x], dim=1)


def test_a_softmax_models_score_is_the_class_probability() -> None:
    image = torch.full((1, 1, 4, 4), 0.25)
    image[..., :2, :] = 0.75  # 8 pixels at 0.75 (class 1 predicted), 8 at 0.25
    maps = torch.rand((1, 4, 4), generator=torch.Generator().manual_seed(0))

    def p(x: float, c: int = 1) -> float:
        z = (0.0, 4 * x - 2, 2 - 4 * x)
        return math.exp(z[c]) / sum(math.exp(v) for v in z)

    region = tumorcam.faithfulness(ThreeClassOfIntensity(), image, maps, channel=1, steps=2, reference=None)
    whole = tumorcam.faithfulness(ThreeClassOfIntensity(), image, maps, channel=1, steps=2, reference=None,
                                  score="mean-sigmoid")
    assert region.curves.deletion[0, 0] == pytest.approx(p(0.75), abs=1e-6)  # over the predicted region only
    assert whole.curves.deletion[0, 0] == pytest.approx((p(0.75) + p(0.25)) / 2, abs=1e-6)
    assert region.curves.deletion[0, -1] == pytest.approx(p(0.0), abs=1e-6)  # everything zero: z = (0, -2, 2)
    class2 = tumorcam.faithfulness(ThreeClassOfIntensity(), image, maps, channel=2, steps=2, reference=None)
    assert class2.curves.deletion[0, 0] == pytest.approx(p(0.25, 2), abs=1e-6)  # class 2 wins where x < 0.5


def test_three_dimensional_images_start_their_curves_at_the_model_score() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1)).eval()
    images = torch.rand((3, 2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    maps = torch.rand((3, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model[2].bias -= model(images).median()
    for baseline in ("zero", "mean"):
        result = tumorcam.faithfulness(model, images, maps, steps=4, baseline=baseline, score="mean-sigmoid")
        assert result.curves.deletion.shape == (3, 5) and np.isfinite(result.deletion_auc).all()
        with torch.no_grad():
            start = model(images).sigmoid().mean(dim=(1, 2, 3, 4))
        np.testing.assert_allclose(result.curves.deletion[:, 0], start.numpy(), atol=1e-6)


def test_localization_of_hand_made_maps() -> None:
    masks = torch.zeros((4, 4, 4))
    masks[:, :2, :2] = 1  # 4 of 16 pixels
    maps = torch.zeros((4, 4, 4))
    maps[0, 0, 0] = 1.0  # peak inside, all mass inside
    maps[1, 3, 3], maps[1, 1, 1] = 1.0, 0.25  # peak outside, 0.25 of 1.25 inside
    maps[2] = 1.0  # flat: the area share 4/16
    maps[3, 0, 1], maps[3, 3, 0] = 1.0, 1.0  # two peaks, one inside; half the mass inside
    summary = tumorcam.localization(maps, masks, top_percent=25.0, bootstrap=100)
    assert set(summary) == {"pointing_game", "energy_pointing_game", "top_iou"}
    pointing = np.array([1.0, 0.0, 0.25, 0.5])
    energy = np.array([1.0, 0.2, 0.25, 0.5])
    assert summary["pointing_game"]["mean"] == pytest.approx(pointing.mean())
    assert summary["energy_pointing_game"]["mean"] == pytest.approx(energy.mean())
    for row in summary.values():
        assert (row["unit"], row["n_patients"], row["n_slices"]) == ("slice", 4, 4)
        assert row["vs_random"]["family"] == "exploratory" and row["vs_random"]["verdict"] in VERDICTS
    # the random reference is the seeded noise, tested with Wilcoxon's signed-rank test (all three)
    reference = localization_scores(random_maps(4, (4, 4), seed=0), masks, top_percent=25.0)
    assert summary["pointing_game"]["vs_random"]["p_value"] == pytest.approx(
        hand_wilcoxon(pointing, reference["pointing_game"]))
    assert summary["energy_pointing_game"]["vs_random"]["p_value"] == pytest.approx(
        hand_wilcoxon(energy, reference["energy_pointing_game"]))
    raw = [summary[m]["vs_random"]["p_value"] for m in summary]
    assert [summary[m]["vs_random"]["p_adjusted"] for m in summary] == pytest.approx(holm(raw))
    # the map against itself: no difference to test
    same = tumorcam.localization(maps, masks, reference=maps, bootstrap=100)
    assert same["energy_pointing_game"]["vs_random"]["n_pairs"] == 0
    assert same["energy_pointing_game"]["vs_random"]["verdict"] == "not shown to differ"
    assert same["energy_pointing_game"]["vs_random"]["p_value"] == 1.0
    by_patient = tumorcam.localization(maps, masks.unsqueeze(1), patient_ids=["p", "p", "q", "q"], bootstrap=100)
    row = by_patient["energy_pointing_game"]
    assert (row["unit"], row["n_patients"], row["n_slices"]) == ("patient", 2, 4)
    assert row["mean"] == pytest.approx((energy[:2].mean() + energy[2:].mean()) / 2)


def test_localization_of_three_dimensional_maps() -> None:
    masks = torch.zeros((2, 3, 4, 4))
    masks[:, 1, :2, :2] = 1  # 4 of 48 voxels, in the middle section
    maps = torch.zeros((2, 3, 4, 4))
    maps[0, 1, 0, 0] = 1.0  # the only mass, inside
    maps[1, 0, 0, 0], maps[1, 1, 1, 1] = 3.0, 1.0  # the peak one section off; a quarter of the mass inside
    summary = tumorcam.localization(maps, masks, top_percent=1.5, bootstrap=100)  # top ceil(0.72) = 1 voxel
    assert summary["pointing_game"]["mean"] == pytest.approx(0.5)
    assert summary["energy_pointing_game"]["mean"] == pytest.approx((1.0 + 0.25) / 2)
    assert summary["top_iou"]["mean"] == pytest.approx((1 / 4 + 0.0) / 2)


def test_sanity_of_a_tiny_multi_class_model() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 2, 1)).eval()
    images = torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(5))
    centered(net, net[4], images)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = tumorcam.sanity(net, images, channel=1)
    assert isinstance(result, tumorcam.SanityResult)
    assert result.stages == ["4", "2", "0"] and result.spearman.shape == result.ssim.shape == (3, 3)
    assert len(result.n_compared) == 3 and all(0 <= n <= 3 for n in result.n_compared)
    assert result.threshold == 0.5 and result.passes in (True, False, None)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    edges = tumorcam.sanity(net, images, method="edges", channel=1, threshold=0.9, min_patients=3)
    assert edges.n_compared == [3, 3, 3] and edges.passes is False  # a map of the image ignores the weights
    assert tumorcam.sanity(net, images, method="edges", channel=1).verdict == "undetermined"  # < 5 images
    np.testing.assert_allclose(edges.spearman, 1.0)

    class Shell(nn.Module):  # a wrapper: its one child's stages, by their full paths
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
            return (self.net(x),)

    assert cascade_stages(Shell()) == ["net.4", "net.2", "net.0"]
    wrapped = tumorcam.sanity(Shell(), images, channel=1, output=0, layer="net.2")
    assert wrapped.stages == ["net.4", "net.2", "net.0"] and len(wrapped.n_compared) == 3


def test_bad_parameters_raise_value_errors_naming_them(three_class: tuple) -> None:
    model, images, maps = three_class
    faithfulness = {
        "baseline": ({"baseline": "gray"}, "^baseline: unknown baseline 'gray'"),
        "score": ({"score": "target"}, "^score: unknown score 'target'"),
        "steps": ({"steps": 0}, "^steps: K must be an integer >= 1, got 0"),
        "schedule": ({"schedule": "linear"}, "^schedule: unknown schedule 'linear'"),
        "channel": ({"channel": 3}, r"^channel: the model has 3 output channel\(s\)"),
        "channel type": ({"channel": "1"}, "^channel: expected an integer"),
        "maps": ({"maps": maps[:, :16]}, r"^maps: expected maps \(6, 32, 32\)"),
        "masks": ({"score": "gt-region"}, "^masks: score 'gt-region' needs"),
        "mask shape": ({"score": "gt-region", "masks": torch.ones(6, 1, 16, 16)}, r"^masks: expected \(6, 1, 32, 32\)"),
        "patient_ids": ({"patient_ids": ["a", "b"]}, "^patient_ids: 2 ids for 6 images"),
        "reference": ({"reference": "noise"}, "^reference: unknown reference 'noise'"),
        "reference shape": ({"reference": maps[:2]}, r"^reference: expected maps \(6, 32, 32\)"),
        "batch_size": ({"batch_size": 0}, "^batch_size: must be an integer >= 1"),
        "images": ({"images": images[0]}, r"^images: expected a tensor \(B, C, H, W\)"),
    }
    for options, message in faithfulness.values():
        arguments = {"images": images, "maps": maps, "steps": 2, **options}
        with pytest.raises(ValueError, match=message):
            tumorcam.faithfulness(model, arguments.pop("images"), arguments.pop("maps"), **arguments)
    with pytest.raises(ValueError, match=r"^top_percent: must be in \(0, 100\]"):
        tumorcam.localization(maps, maps > 0.5, top_percent=0)
    with pytest.raises(ValueError, match="^masks: expected masks"):
        tumorcam.localization(maps, torch.ones(6, 16, 16))
    with pytest.raises(ValueError, match="^maps: expected a tensor"):
        tumorcam.localization([[0.0]], torch.ones(1, 1))
    with pytest.raises(ValueError, match="^method: unknown method 'gradcm' \\(did you mean gradcam\\?\\)"):
        tumorcam.sanity(model, images[:1], method="gradcm")
    with pytest.raises(ValueError, match="^stages: Unet has no layer 'decoder.block'"):
        tumorcam.sanity(model, images[:1], channel=1, stages=["decoder.block"])
    with pytest.raises(ValueError, match=r"^threshold: must be in \(0, 1\]"):
        tumorcam.sanity(model, images[:1], threshold=2)


def test_sanity_of_a_three_dimensional_model_compares_volumes() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv3d(4, 1, 1)).eval()
    images = torch.rand((2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        net[4].bias -= net(images).median()
    result = tumorcam.sanity(net, images, target="mean-logits")
    assert result.stages == ["4", "2", "0"] and result.ssim.shape == (3, 2)
    assert result.n_compared == [2, 2, 2]
    assert ((result.ssim > -1) & (result.ssim < 1)).all()
    edges = tumorcam.sanity(net, images, method="edges", target="mean-logits", min_patients=2)
    np.testing.assert_allclose(edges.ssim, 1.0, atol=1e-5)  # 3-D SSIM of a volume with itself
    assert edges.passes is False


def test_three_dimensional_ssim_is_the_formula_with_a_cubic_gaussian_window() -> None:
    g = torch.Generator().manual_seed(7)
    a = torch.rand((1, 9, 9, 9), generator=g)
    b = (a + 0.5 * torch.rand((1, 9, 9, 9), generator=g)).clamp(0, 1)
    coords = np.arange(9) - 4.0  # a 9-voxel volume: the window shrinks to 9, one position
    w1 = np.exp(-coords**2 / (2 * SSIM_SIGMA**2))
    w = np.einsum("i,j,k->ijk", w1, w1, w1) / w1.sum() ** 3
    x, y = a[0].double().numpy(), b[0].double().numpy()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cov = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim(a, b)[0] == pytest.approx(expected, abs=1e-5) and 0.2 < expected < 0.99
