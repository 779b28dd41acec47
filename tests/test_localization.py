"""Localisation metrics on hand-made maps and masks, and the run-folder wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from tumorcam.data.arrays import load_prepared
from tumorcam.errors import TumorcamError
from tumorcam.evaluate.localization import energy_pointing_game, localization_scores, pointing_game, top_percent_iou
from tumorcam.runs.localization import evaluate_localization
from tumorcam.io import save_npz, write_json
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
    assert np.isnan(result[2])  # an empty mask: the only NaN


def test_a_flat_map_scores_the_area_share_in_both_pointing_games() -> None:
    _, masks = hand_made()  # 4 of 16 pixels in the mask of slices 0 and 1, none in slice 2
    for value in (0.0, 0.7):  # all zero (no mass) or flat: counted, with the share |G|/P
        flat = torch.full((3, 4, 4), value)
        energy = energy_pointing_game(flat, masks)
        np.testing.assert_allclose(energy, [0.25, 0.25, np.nan], rtol=1e-6)
        np.testing.assert_allclose(energy, pointing_game(flat, masks), rtol=1e-6)
    negative = -torch.rand((1, 4, 4))  # nothing left after clamping at 0: no mass either
    assert energy_pointing_game(negative, masks[:1]).tolist() == [0.25]


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
    with pytest.raises(TumorcamError, match="^top_percent: must be in"):
        top_percent_iou(maps, masks, 0.0)


def test_localization_scores_accept_channel_masks_and_rank_a_good_map_first() -> None:
    maps, masks = hand_made()
    scores = localization_scores(maps[:2], masks[:2].unsqueeze(1), top_percent=25.0)
    assert set(scores) == {"pointing_game", "energy_pointing_game", "top_iou"}
    assert scores["pointing_game"][0] > scores["pointing_game"][1]
    assert scores["energy_pointing_game"][0] > scores["energy_pointing_game"][1]


def add_mask_control(run: Path, prepared: Path) -> np.ndarray:
    """A `predicted-mask` control in the run's explanations: the ground-truth masks of the maps' slices
    (a perfect localiser). Returns those masks (N, 32, 32)."""
    index = json.loads((run / "explanations" / "index.json").read_text())
    with np.load(run / "explanations" / "gradcam.npz") as npz:
        ids = npz["file_ids"]
    data = load_prepared(prepared)
    _, masks = data.tensors(np.array([int(np.flatnonzero(data.file_ids == f)[0]) for f in ids]), 32)
    maps = masks[:, 0].numpy().astype(np.float16)
    save_npz(run / "explanations" / "mask.npz", maps=maps, file_ids=ids)
    index["entries"].append({"file": "mask.npz", "method": "predicted-mask", "target": "mean-logits",
                             "layer": "input", "model": "trained", "times_gt": False})
    write_json(run / "explanations" / "index.json", index)
    return maps.astype(np.float64)


def test_evaluate_localization_summarizes_per_patient_against_random_and_mask(tmp_path: Path,
                                                                             blob_prepared: Path) -> None:
    run = make_run(tmp_path, blob_prepared)
    add_mask_control(run, blob_prepared)
    out = evaluate_localization(run, top_percent=10.0)
    assert json.loads((run / "localization.json").read_text()) == json.loads(json.dumps(out))
    assert out["top_percent"] == 10.0 and out["n_slices"] == 4 and out["n_with_tumour"] == 4
    pids = np.array(out["patient_ids"])
    assert len(pids) == 4 and out["n_patients"] == len(set(out["patient_ids"])) == 2
    rows = {r["method"]: r for r in out["results"]}
    assert set(rows) == {"gradcam", "random", "predicted-mask"}
    assert rows["predicted-mask"]["control"] is True and rows["gradcam"]["control"] is False
    for metric in ("pointing_game", "energy_pointing_game", "top_iou"):
        gradcam = rows["gradcam"][metric]
        values = np.array(rows["gradcam"]["per_slice"][metric])
        assert len(values) == 4 and ((0 <= values) & (values <= 1)).all()
        patient_means = [values[pids == p].mean() for p in sorted(set(pids))]
        assert gradcam["mean"] == pytest.approx(np.mean(patient_means))
        assert (gradcam["unit"], gradcam["n_patients"], gradcam["n_slices"]) == ("patient", 2, 4)
        test = "wilcoxon"  # every metric: the signed-rank test of the patient-mean differences
        for reference in ("vs_random", "vs_mask"):
            comparison = gradcam[reference]
            assert comparison["test"] == test and comparison["family"] == "exploratory"
            assert comparison["p_adjusted"] is None or comparison["p_adjusted"] >= comparison["p_value"]
            assert comparison["verdict"] in ("better", "worse", "not shown to differ", "undetermined")
        assert rows["random"][metric]["vs_random"] is None  # not compared with itself
        assert rows["predicted-mask"][metric]["vs_mask"] is None
        assert rows["predicted-mask"][metric]["vs_random"]["test"] == test
        # the ground-truth mask localises perfectly: every slice's energy and pointing game are 1
        if metric != "top_iou":
            assert rows["predicted-mask"]["per_slice"][metric] == [1.0] * 4
    # the pointing game's test: Wilcoxon's signed-rank test of the patient-mean differences against the
    # mask control, as scipy computes it (2 patients: exact; nothing to test when every difference is 0)
    mask_hits = np.ones(4)
    diffs = [(np.array(rows["gradcam"]["per_slice"]["pointing_game"]) - mask_hits)[pids == p].mean()
             for p in sorted(set(pids))]
    nonzero = [d for d in diffs if d != 0]
    expected = wilcoxon(nonzero, method="exact").pvalue if len(nonzero) >= 2 else 1.0
    assert rows["gradcam"]["pointing_game"]["vs_mask"]["p_value"] == pytest.approx(expected)
    # the random map's mass inside the mask is about the mask's share of the slice
    prepared = load_prepared(blob_prepared)
    slice_rows = [int(np.flatnonzero(prepared.file_ids == f)[0]) for f in out["file_ids"]]
    _, masks = prepared.tensors(np.array(slice_rows), 32)
    share = masks.flatten(1).mean(1).numpy()
    np.testing.assert_allclose(rows_of(out, "random", "energy_pointing_game"), share, atol=0.03)


def rows_of(out: dict, method: str, metric: str) -> list[float]:
    return next(r for r in out["results"] if r["method"] == method)["per_slice"][metric]
