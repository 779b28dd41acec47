"""Per-sequence attribution (evaluate/channels.py): shares and ablation drops on models with a known
dependence on the input channels, and the summary's statistics checked against scipy and by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch import nn

import tumorcam
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.channels import (
    ChannelResult,
    channel_ablation,
    channel_shares,
    channels,
)


class OnlyChannel1(nn.Module):
    """3-D logits (B, 1, D, H, W) that read input channel 1 alone: a local mean minus 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 27)
            self.conv.bias.fill_(-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, 1:2])


def volumes(n: int, c: int = 2, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, c, size, size, size), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["integrated-gradients", "saliency", "input-x-gradient"])
def test_shares_of_a_model_reading_one_channel(method: str) -> None:
    shares = channel_shares(OnlyChannel1(), volumes(3), method=method, ig_steps=8, batch_size=2)
    assert shares.shape == (3, 2)
    assert (shares[:, 0] == 0).all() and (shares[:, 1] == 1).all()


def test_ablation_of_a_model_reading_one_channel() -> None:
    model, x = OnlyChannel1(), volumes(3)
    for baseline in ("zero", "mean"):
        drop = channel_ablation(model, x, baseline=baseline, batch_size=4)
        assert drop.shape == (3, 2)
        assert (drop[:, 0] == 0).all()
    zero = channel_ablation(model, x, batch_size=4)
    np.testing.assert_array_equal(zero[:, 1], 1.0)  # logits -0.5 everywhere: nothing predicted, Dice 0
    np.testing.assert_array_equal(channel_ablation(model, x, batch_size=1), zero)  # batching changes nothing


def test_empty_prediction_and_no_attribution_give_nan() -> None:
    x = volumes(2)
    x[1, 1] = 0.0  # image 1: logits -0.5 everywhere, no predicted voxel
    model = OnlyChannel1()
    drop = channel_ablation(model, x)
    shares = channel_shares(model, x, method="saliency")  # predicted-region target: empty region, s = 0
    assert np.isfinite(drop[0]).all() and np.isnan(drop[1]).all()
    assert np.isfinite(shares[0]).all() and np.isnan(shares[1]).all()


def test_one_input_channel_has_all_the_share() -> None:
    model = nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    shares = channel_shares(model, x, target="mean-logits", ig_steps=4)
    np.testing.assert_array_equal(shares, np.ones((3, 1)))


def test_2d_model_with_a_dict_output_and_a_masks_target() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 1))

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(x), "aux": x.mean(dim=1, keepdim=True)}

    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(4, 1, 16, 16)
    masks[:, :, 4:12, 4:12] = 1
    for method in ("integrated-gradients", "saliency", "input-x-gradient"):
        shares = channel_shares(Heads(), x, output="logits", target="gt-region", masks=masks, method=method,
                                ig_steps=4)
        np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-12)
    result = tumorcam.channels(Heads(), x, output="logits", target="mean-logits", ig_steps=4, baseline="mean",
                               patient_ids=["a", "a", "b", "b"], channel_names=["T1", "T2", "FLAIR"])
    assert result.unit == "patient" and result.channel_names == ("T1", "T2", "FLAIR")
    assert result.shares.shape == result.dice_drop.shape == (4, 3)
    with pytest.raises(TumorcamError, match="^masks:"):
        channel_shares(Heads(), x, output="logits", target="gt-region")


def test_monai_3d_unet_with_softmax() -> None:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(spatial_dims=3, in_channels=3, out_channels=2, channels=(4, 8), strides=(2,))
    x = torch.rand(2, 3, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    result = channels(model, x, channel=1, ig_steps=4, batch_size=2)
    assert result.shares.shape == result.dice_drop.shape == (2, 3)
    assert np.isfinite(result.shares).all()
    np.testing.assert_allclose(result.shares.sum(axis=1), 1.0, rtol=1e-12)
    assert ((result.dice_drop >= 0) & (result.dice_drop <= 1)).all()
    summary = result.summary(bootstrap=50)
    json.dumps(summary, allow_nan=False)
    assert summary["unit"] == "slice" and summary["channel_names"] == ["channel_0", "channel_1", "channel_2"]
    assert (summary["method"], summary["target"], summary["channel"], summary["baseline"]) == (
        "integrated-gradients", "predicted-region", 1, "zero")
    assert model.training  # the model's own mode is given back


def test_errors_name_the_parameter() -> None:
    model, x = OnlyChannel1(), volumes(2)
    with pytest.raises(TumorcamError, match="^patient_ids:"):
        channels(model, x, patient_ids=["a"])
    with pytest.raises(TumorcamError, match="^baseline:"):
        channels(model, x, baseline="blur")
    with pytest.raises(TumorcamError, match="^baseline:"):
        channel_ablation(model, x, baseline="noise")
    with pytest.raises(TumorcamError, match="^channel_names:"):
        channels(model, x, channel_names=["T1"])
    with pytest.raises(TumorcamError, match="^channel_names:"):
        channels(model, x, channel_names=["T1", "T1"])
    with pytest.raises(TumorcamError, match="^method:"):
        channel_shares(model, x, method="gradcam")
    with pytest.raises(TumorcamError, match="^ig_steps:"):
        channel_shares(model, x, ig_steps=0)
    with pytest.raises(TumorcamError, match="^images:"):
        channel_ablation(model, x[0, 0])
    with pytest.raises(TumorcamError, match="^channel:"):
        channel_ablation(model, x, channel=1)
    with pytest.raises(TumorcamError, match="^batch_size:"):
        channel_shares(model, x, batch_size=0)


# --- the summary's statistics ---------------------------------------------------------------------------------

def constructed_result() -> tuple[ChannelResult, np.ndarray]:
    """6 patients x 2 images, 3 channels: T1 never changes the prediction and has little share, FLAIR
    has the largest share; the drops are distinct so every Wilcoxon test is exact."""
    rng = np.random.default_rng(7)
    ids = np.repeat([f"P{p}" for p in range(6)], 2)
    shares = np.column_stack([np.full(12, 0.1), rng.uniform(0.2, 0.4, 12), np.zeros(12)])
    shares[:, 2] = 1 - shares[:, 0] - shares[:, 1]
    drops = np.column_stack([np.zeros(12), rng.uniform(0.0, 0.3, 12), rng.uniform(0.1, 0.6, 12)])
    drops[3] = np.nan  # one image without a prediction: its patient keeps the other image
    result = ChannelResult(shares=shares, dice_drop=drops, unit_ids=ids, unit="patient",
                           channel_names=("T1", "T2", "FLAIR"), settings={"method": "integrated-gradients", "seed": 0})
    return result, ids


def test_summary_statistics_against_scipy_and_holm_by_hand() -> None:
    result, ids = constructed_result()
    summary = result.summary(bootstrap=200)
    json.dumps(summary, allow_nan=False)
    assert summary["top_channel"] == "FLAIR" and (summary["n_patients"], summary["n_slices"]) == (6, 12)
    means = {name: np.array([np.nanmean(result.dice_drop[ids == p, c]) for p in np.unique(ids)])
             for c, name in enumerate(result.channel_names)}
    flair = summary["channels"]["FLAIR"]
    assert flair["dice_drop"]["mean"] == pytest.approx(means["FLAIR"].mean())
    assert (flair["n_patients"], flair["n_slices"], flair["dice_drop"]["unit"]) == (6, 11, "patient")
    assert flair["share"]["ci_low"] <= flair["share"]["mean"] <= flair["share"]["ci_high"]

    tests = summary["tests"]
    assert [(t["kind"], t["channel"], t["versus"]) for t in tests] == [
        ("dice_drop_vs_zero", "T1", None), ("dice_drop_vs_zero", "T2", None), ("dice_drop_vs_zero", "FLAIR", None),
        ("top_vs_channel", "FLAIR", "T1"), ("top_vs_channel", "FLAIR", "T2")]
    expected = [None,  # T1: every drop is 0, nothing to test
                sps.wilcoxon(means["T2"]).pvalue, sps.wilcoxon(means["FLAIR"]).pvalue,
                sps.wilcoxon(means["FLAIR"] - means["T1"]).pvalue, sps.wilcoxon(means["FLAIR"] - means["T2"]).pvalue]
    # T1: every drop is 0 in all 6 patients: no difference to test, p = 1, not "undetermined"
    assert tests[0]["p_value"] == 1.0 and tests[0]["verdict"] == "no drop shown" and tests[0]["n_pairs"] == 0
    for row, p in zip(tests[1:], expected[1:], strict=True):
        assert row["p_value"] == pytest.approx(p) and row["n_pairs"] == 6 and row["test"] == "wilcoxon"
        assert row["method"] == "exact" and row["family"] == "exploratory"

    # Holm by hand over the 5 p-values (T1's p = 1 counts): sorted p_(1..5) times 5, 4, 3, 2, 1, running
    # maximum, capped at 1
    raw = np.array([1.0] + expected[1:], dtype=float)
    order = np.argsort(raw, kind="stable")
    adjusted = np.empty(5)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (5 - rank) * raw[i]))
        adjusted[i] = running
    for row, p_adj in zip(tests, adjusted, strict=True):
        assert row["p_adjusted"] == pytest.approx(p_adj) and row["adjusted_over"] == 5
    raw = raw[1:]
    # every drop is positive in 6 of 6 patients: exact p = 2/64 each, Holm 4 x 2/64 = 0.125 > 0.05
    assert raw[0] == pytest.approx(2 / 64) and raw[1] == pytest.approx(2 / 64)
    assert [row["verdict"] for row in tests[1:3]] == ["no drop shown"] * 2
    assert summary_with_alpha(result, 0.2)[1:3] == ["drop", "drop"]


def summary_with_alpha(result: ChannelResult, alpha: float) -> list[str]:
    return [row["verdict"] for row in result.summary(bootstrap=20, alpha=alpha)["tests"]]


def test_top_channel_verdict_words_and_agreement() -> None:
    ids = np.repeat([f"P{p}" for p in range(8)], 2)
    shares = np.tile([0.2, 0.8], (16, 1))
    drop_top = np.linspace(0.1, 0.2, 16)
    drops = np.column_stack([drop_top + np.linspace(0.3, 0.5, 16), drop_top])  # the top channel drops less
    drops[ids == "P0", 0] = drop_top[ids == "P0"] - 0.05  # ... except in patient P0
    result = ChannelResult(shares=shares, dice_drop=drops, unit_ids=ids, unit="patient",
                           channel_names=("T1CE", "FLAIR"), settings={"seed": 0})
    summary = result.summary(bootstrap=20)
    top = [t for t in summary["tests"] if t["kind"] == "top_vs_channel"]
    assert summary["top_channel"] == "FLAIR" and len(top) == 1
    assert top[0]["comparison"] == "dice_drop[FLAIR] - dice_drop[T1CE]"
    assert top[0]["estimate"] < 0 and top[0]["p_value"] < 0.05
    assert top[0]["verdict"] == ("smaller drop" if top[0]["p_adjusted"] < 0.05 else "not shown to differ")
    assert top[0]["positive_share"] == pytest.approx(1 / 8)
    assert {k: summary["agreement"][k] for k in ("count", "n", "share")} == {"count": 1, "n": 8, "share": 1 / 8}

    flipped = ChannelResult(shares=shares, dice_drop=drops[:, ::-1].copy(), unit_ids=ids, unit="patient",
                            channel_names=("T1CE", "FLAIR"), settings={"seed": 0})
    row = next(t for t in flipped.summary(bootstrap=20)["tests"] if t["kind"] == "top_vs_channel")
    assert row["verdict"] == "larger drop"
