"""The volume figures of `tumorcam.report.volumes`: orthogonal views through the tumour's centre of mass
(on a constructed case whose centre is known), NaN-free with flat maps, and the channel-share bars drawn
from a real `ChannelResult.summary()`."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from scipy import ndimage

from tumorcam.evaluate.channels import ChannelResult
from tumorcam.report.volumes import (
    PLANES,
    draw_channel_shares,
    draw_orthogonal_views,
    plane,
    view_centre,
)

SHAPE = (18, 20, 22)


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"))
    return ((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2


def _panel_labels(fig) -> list[str]:
    return [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def test_views_cross_at_the_masks_centre_of_mass_with_one_row_per_map():
    rng = np.random.default_rng(0)
    mask = _ball((5, 12, 15), 3) | _ball((7, 12, 15), 3)  # centre of mass (6, 12, 15)
    predicted = _ball((13, 6, 4), 2)
    volume = rng.random((4, *SHAPE)).astype(np.float32)
    maps = {"gradcam": rng.random(SHAPE), "saliency": rng.random(SHAPE)}

    expected = tuple(int(v) for v in np.rint(ndimage.center_of_mass(mask)))
    assert expected == (6, 12, 15) and view_centre(SHAPE, mask, predicted) == expected
    fig = draw_orthogonal_views(volume, maps, mask, predicted, channel_index=3, title="case")
    assert len(fig.axes) == 3 * 3 + 1  # the image and two maps, three planes each, and the colorbar
    assert _panel_labels(fig) == ["axial: axis2 = 15", "coronal: axis1 = 12", "sagittal: axis0 = 6"] * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == [name for name, _ in PLANES]
    assert fig.axes[0].get_ylabel() == "image (channel 3)" and fig.axes[6].get_ylabel() == "saliency"
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), volume[3][:, :, 15].T)  # axial: axis2 fixed
    np.testing.assert_allclose(fig.axes[5].images[1].get_array(), maps["gradcam"][6].T, rtol=1e-6)  # axis0 fixed
    assert "solid: ground truth, dashed: prediction" in fig.get_suptitle()
    assert _png(fig).startswith(b"\x89PNG")


def test_the_centre_falls_back_to_the_prediction_then_the_volume_centre_or_is_given():
    predicted = _ball((13, 6, 4), 2)
    empty = np.zeros(SHAPE, bool)
    assert view_centre(SHAPE, empty, predicted) == (13, 6, 4)
    assert view_centre(SHAPE, None, empty) == (9, 10, 11)
    fig = draw_orthogonal_views(np.zeros(SHAPE), {}, None, predicted, centre=(1, 2, 3))
    assert len(fig.axes) == 3  # the image row alone, no colorbar without a map
    assert _panel_labels(fig) == ["axial: axis2 = 3", "coronal: axis1 = 2", "sagittal: axis0 = 1"]
    assert plane(np.arange(24).reshape(2, 3, 4), 1, 2).shape == (4, 2)


def test_flat_maps_and_empty_masks_draw_without_nan():
    maps = {"zero": np.zeros(SHAPE), "one": np.ones(SHAPE), "nan": np.full(SHAPE, np.nan)}
    fig = draw_orthogonal_views(np.zeros(SHAPE), maps, np.zeros(SHAPE, bool), np.zeros(SHAPE, bool))
    assert len(fig.axes) == 4 * 3 + 1
    assert _panel_labels(fig)[:3] == ["axial: axis2 = 11", "coronal: axis1 = 10", "sagittal: axis0 = 9"]
    for ax in fig.axes[:-1]:
        for image in ax.images:
            assert np.isfinite(np.asarray(image.get_array(), dtype=float)).all()
    assert _png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match=r"maps\['zero'\]: expected the volume's spatial shape"):
        draw_orthogonal_views(np.zeros(SHAPE), {"zero": np.zeros((2, 2, 2))})
    with pytest.raises(ValueError, match="channel_index: the volume has 1 channel"):
        draw_orthogonal_views(np.zeros((1, *SHAPE)), {}, channel_index=1)


def test_channel_shares_from_a_channel_result_summary():
    rng = np.random.default_rng(0)
    shares = rng.dirichlet([1, 2, 3, 8], size=12)
    drops = np.clip(shares + 0.05 * rng.standard_normal(shares.shape), 0, 1)
    drops[:, 0] = np.nan  # a channel without a finite drop: no bar, marked n/a
    result = ChannelResult(shares=shares, dice_drop=drops, unit_ids=np.repeat(np.arange(6), 2), unit="patient",
                           channel_names=("T1", "T1CE", "T2", "FLAIR"), settings={"seed": 0})
    summary = result.summary(bootstrap=200)
    fig = draw_channel_shares(summary, title="per-sequence attribution")
    assert len(fig.axes) == 2
    share_ax, drop_ax = fig.axes
    assert [t.get_text() for t in share_ax.get_xticklabels()] == ["T1", "T1CE", "T2", "FLAIR"]
    heights = [bar.get_height() for bar in share_ax.patches]
    np.testing.assert_allclose(heights, [summary["channels"][n]["share"]["mean"] for n in result.channel_names])
    assert share_ax.get_title() == "mean share, patient level (95% CI)"
    assert drop_ax.patches[0].get_height() == 0 and any(t.get_text() == "n/a" for t in drop_ax.texts)
    errorbars = next(c for c in share_ax.containers if isinstance(c, ErrorbarContainer))
    low, high = summary["channels"]["FLAIR"]["share"]["ci_low"], summary["channels"]["FLAIR"]["share"]["ci_high"]
    segment = errorbars.lines[2][0].get_segments()[3]  # FLAIR's error bar: from ci_low to ci_high
    np.testing.assert_allclose([segment[0][1], segment[1][1]], [low, high])
    assert _png(fig).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="summary: no channel to draw"):
        draw_channel_shares({"channels": {}})


def test_report_command_builds_the_report_of_a_run_on_volumes(tmp_path, capsys):
    """`tumorcam report RUN` on a run folder made by a run on volumes (volume_config.json, no
    config.json) builds its report with build_volume_report instead of refusing it."""
    import json

    from tumorcam.cli import main

    run = tmp_path / "volume-run"
    run.mkdir()
    (run / "volume_config.json").write_text(json.dumps({"model": "tiny-unet3d", "weights": None, "data": "cases"}))
    (run / "segmentation.json").write_text(json.dumps(
        {"dice": {"mean": 0.8, "ci_low": 0.7, "ci_high": 0.9}, "n_cases": 2}))

    main(["report", str(run)])

    assert capsys.readouterr().out.strip() == str(run / "report.html")
    page = (run / "report.html").read_text()
    assert "model tiny-unet3d" in page and "Segmentation: Dice 0.800 [0.700, 0.900] over 2 cases" in page
    assert not (run / "config.json").exists()
