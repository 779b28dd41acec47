"""Localisation metrics on hand-made maps and masks, and the run-folder wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.localization import (
    energy_pointing_game,
    evaluate_localization,
    localization_scores,
    pointing_game,
    top_percent_iou,
)
from test_faithfulness import make_run


def hand_made() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 4x4 slices. Mask: the top-left 2x2 block (slices 0, 1), nothing (slice 2)."""
    masks = torch.zeros((3, 4, 4))
    masks[:2, :2, :2] = 1
    maps = torch.zeros((3, 4, 4))
    maps[0, 0, 0] = 1.0  # peak inside; mass 1 inside of 1 + 0.5 + 0.5 = 2
    maps[0, 3, 3] = 0.5
    maps[0, 3, 2] = 0.5
    maps[1, 3, 3] = 1.0  # peak outside; mass 0.25 inside of 1.25
    maps[1, 1, 1] = 0.25
    maps[2] = torch.rand(4, 4)
    return maps, masks


def test_pointing_game_on_hand_made_maps() -> None:
    maps, masks = hand_made()
    result = pointing_game(maps, masks)
    assert result[:2].tolist() == [1.0, 0.0] and np.isnan(result[2])
    flat = torch.ones((1, 4, 4))  # every pixel is maximal: 4 of 16 in the mask
    assert pointing_game(flat, masks[:1]).tolist() == [0.25]


def test_energy_pointing_game_is_the_share_of_mass_in_the_mask() -> None:
    maps, masks = hand_made()
    result = energy_pointing_game(maps, masks)
    np.testing.assert_allclose(result[:2], [0.5, 0.2])
    assert np.isnan(result[2])
    assert np.isnan(energy_pointing_game(torch.zeros((1, 4, 4)), masks[:1])[0])  # no mass


def test_top_percent_iou_of_hand_made_maps() -> None:
    maps, masks = hand_made()
    # top 25% = 4 pixels. Slice 0: the peak, the two 0.5s and one of the 13 tied zeros (random),
    # 3 of whose 3 candidates lie in the mask: intersection 1 or 2, union 7 or 6.
    result = top_percent_iou(maps, masks, 25.0, seed=0)
    assert result[0] in (pytest.approx(1 / 7), pytest.approx(2 / 6))
    exact = torch.zeros((1, 4, 4))
    exact[0, :2, :2] = torch.tensor([[4.0, 3.0], [2.0, 1.5]])
    assert top_percent_iou(exact, masks[:1], 25.0).tolist() == [1.0]
    assert top_percent_iou(exact, masks[:1], 12.5).tolist() == [0.5]  # 2 pixels, both inside
    assert top_percent_iou(exact, masks[:1], 50.0).tolist() == [0.5]  # 8 pixels, 4 inside
    assert np.isnan(result[2])
    with pytest.raises(TumorcamError, match="--top-percent"):
        top_percent_iou(maps, masks, 0.0)


def test_localization_scores_accept_channel_masks_and_rank_a_good_map_first() -> None:
    maps, masks = hand_made()
    scores = localization_scores(maps[:2], masks[:2].unsqueeze(1), top_percent=25.0)
    assert set(scores) == {"pointing_game", "energy_pointing_game", "top_iou"}
    assert scores["pointing_game"][0] > scores["pointing_game"][1]
    assert scores["energy_pointing_game"][0] > scores["energy_pointing_game"][1]


def test_evaluate_localization_writes_metrics_beside_random(tmp_path: Path, blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    out = evaluate_localization(run, top_percent=10.0)
    assert json.loads((run / "localization.json").read_text()) == json.loads(json.dumps(out))
    assert out["top_percent"] == 10.0 and out["n_slices"] == 4 and out["n_with_tumour"] == 4
    rows = {r["method"]: r for r in out["results"]}
    assert set(rows) == {"gradcam", "random"}
    for metric in ("pointing_game", "energy_pointing_game", "top_iou"):
        values = rows["gradcam"]["per_slice"][metric]
        assert len(values) == 4 and all(0 <= v <= 1 for v in values)
        assert rows["gradcam"][metric]["mean"] == pytest.approx(np.mean(values))
        assert "vs_random" in rows["gradcam"][metric] and "vs_random" not in rows["random"][metric]
    # the random map's mass inside the mask is about the mask's share of the slice
    prepared = load_prepared(blob_prepared)
    rows = [int(np.flatnonzero(prepared.file_ids == f)[0]) for f in out["file_ids"]]
    _, masks = prepared.tensors(np.array(rows), 32)
    share = masks.flatten(1).mean(1).numpy()
    np.testing.assert_allclose(rows_of(out, "random", "energy_pointing_game"), share, atol=0.03)


def rows_of(out: dict, method: str, metric: str) -> list[float]:
    return next(r for r in out["results"] if r["method"] == method)["per_slice"][metric]
