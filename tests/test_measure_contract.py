"""The contract every measure of `tumorcam.evaluate.measures.MEASURES` keeps, one class run for each
(as smp's tests/models/base.py) in 2-D and 3-D; each subclass names only what differs: how to build
it, a bad setting, and its count of units in the summary."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import tumorcam
from tumorcam.errors import TumorcamError
from tumorcam.evaluate import measures
from tumorcam.evaluate.localization import localization_scores
from tumorcam.evaluate.reference import random_maps

SHAPES = {2: (4, 2, 16, 16), 3: (4, 2, 8, 8, 8)}
PATIENTS = np.array(["a", "a", "b", "c"])  # patient a spans both batches below


def tiny_model(dims: int) -> nn.Module:
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[dims]
    torch.manual_seed(0)
    return nn.Sequential(conv(2, 4, 3, padding=1), nn.ReLU(), conv(4, 4, 3, padding=1), nn.ReLU(),
                         conv(4, 2, 1)).eval()


def batch(dims: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(dims)
    images = torch.rand(SHAPES[dims], generator=generator)
    maps = torch.rand((SHAPES[dims][0], *SHAPES[dims][2:]), generator=generator)
    masks = (images[:, :1] > 0.6).float()
    return images, maps, masks


def fed(measure: measures.Measure, dims: int, patient_ids: Any = PATIENTS) -> measures.Measure:
    """`measure` updated with the batch in two parts (images 0-1, then 2-3)."""
    images, maps, masks = batch(dims)
    for part in (slice(0, 2), slice(2, 4)):
        measure.update(images[part], maps[part], masks=masks[part],
                       patient_ids=None if patient_ids is None else patient_ids[part])
    return measure


def quiet_summary(measure: measures.Measure) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flat maps or empty regions of a random tiny model
        return measure.summary(bootstrap=50)


def n_units(summary: dict[str, Any], name: str) -> int:
    """The units a summary counts."""
    return {"deletion/insertion": lambda s: s["deletion"]["n_patients"],
            "localization": lambda s: s["pointing_game"]["n_patients"],
            "dice": lambda s: s["dice"]["n_patients"],
            "sanity": lambda s: s["n_patients"],
            "channels": lambda s: s["n_patients"]}[name](summary)


@pytest.mark.parametrize("dims", sorted(SHAPES))
class MeasureContract:
    name: str
    bad_setting: dict[str, Any]
    bad_param: str

    def build(self, dims: int, **settings: Any) -> measures.Measure:
        raise NotImplementedError

    def test_registered(self, dims: int) -> None:
        assert measures.MEASURES[self.name] is type(self.build(dims))

    def test_constructor_names_the_bad_setting(self, dims: int) -> None:
        with pytest.raises(TumorcamError) as error:
            self.build(dims, **self.bad_setting)
        assert error.value.param == self.bad_param
        assert str(error.value).startswith(self.bad_param)

    def test_summary_before_update_is_refused(self, dims: int) -> None:
        with pytest.raises(TumorcamError, match="no batch yet"):
            self.build(dims).summary()

    def test_missing_input_is_refused(self, dims: int) -> None:
        measure = self.build(dims)
        images, maps, masks = batch(dims)
        if measure.needs_maps:
            with pytest.raises(TumorcamError, match="^maps:"):
                measure.update(images, None, masks=masks)
        if measure.needs_masks:
            with pytest.raises(TumorcamError, match="^masks:"):
                measure.update(images, maps)
        assert measure.n_images == 0

    def test_patients_are_counted_over_batches(self, dims: int) -> None:
        summary = quiet_summary(fed(self.build(dims), dims))
        assert n_units(summary, self.name) == 3  # a, b, c: a counted once though it is in both batches

    def test_without_patient_ids_each_image_is_a_unit(self, dims: int) -> None:
        summary = quiet_summary(fed(self.build(dims), dims, patient_ids=None))
        assert n_units(summary, self.name) == 4

    def test_reset_forgets_and_repeats(self, dims: int) -> None:
        measure = fed(self.build(dims), dims)
        first = quiet_summary(measure)
        measure.reset()
        assert measure.n_images == 0
        assert quiet_summary(fed(measure, dims)) == first

    def test_mixing_units_is_refused(self, dims: int) -> None:
        measure = self.build(dims)
        images, maps, masks = batch(dims)
        measure.update(images[:2], maps[:2], masks=masks[:2], patient_ids=PATIENTS[:2])
        with pytest.raises(TumorcamError, match="^patient_ids:"):
            measure.update(images[2:], maps[2:], masks=masks[2:])


class TestDeletionInsertion(MeasureContract):
    name = "deletion/insertion"
    bad_setting = {"steps": 0}
    bad_param = "steps"

    def build(self, dims: int, **settings: Any) -> measures.Measure:
        return measures.DeletionInsertion(tiny_model(dims), channel=1, **{"steps": 4, **settings})

    def test_pooled_curves_are_the_library_calls(self, dims: int) -> None:
        measure = fed(self.build(dims), dims)
        images, maps, _ = batch(dims)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parts = [tumorcam.faithfulness(tiny_model(dims), images[p], maps[p], channel=1, steps=4, seed=seed)
                     for p, seed in ((slice(0, 2), 0), (slice(2, 4), 2))]
        expected = np.concatenate([r.deletion_auc for r in parts])
        np.testing.assert_array_equal(measure.result().deletion_auc, expected)


class TestLocalization(MeasureContract):
    name = "localization"
    bad_setting = {"top_percent": 0}
    bad_param = "top_percent"

    def build(self, dims: int, **settings: Any) -> measures.Measure:
        return measures.Localization(**settings)

    def test_scores_are_the_library_scores(self, dims: int) -> None:
        measure = fed(self.build(dims), dims)
        _, maps, masks = batch(dims)
        hits = np.concatenate([localization_scores(maps[p], masks[p], seed=seed)["pointing_game"]
                               for p, seed in ((slice(0, 2), 0), (slice(2, 4), 2))])
        reference = localization_scores(random_maps(2, tuple(maps.shape[1:]), 2), masks[2:], seed=2)
        np.testing.assert_array_equal(np.concatenate([r[0]["pointing_game"] for r in measure.results]), hits)
        np.testing.assert_array_equal(measure.results[1][1]["pointing_game"], reference["pointing_game"])


class LinearThreshold(nn.Module):
    """Logits (B, 2, *spatial): class 1 where the first channel is above 0.5, class 0 elsewhere."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        z = images[:, :1] - 0.5
        return torch.cat([-z, z], dim=1) * 10


class TestDice(MeasureContract):
    name = "dice"
    bad_setting = {"batch_size": 0}
    bad_param = "batch_size"

    def build(self, dims: int, **settings: Any) -> measures.Measure:
        return measures.Dice(tiny_model(dims), channel=1, **settings)

    def test_dice_by_hand(self, dims: int) -> None:
        measure = measures.Dice(LinearThreshold(), channel=1)
        images, _, masks = batch(dims)
        fed(measure, dims)
        predicted = (images[:, 0] > 0.5).flatten(1)
        truth = (images[:, 0] > 0.6).flatten(1)
        by_hand = (2 * (predicted & truth).sum(1) / (predicted.sum(1) + truth.sum(1))).double().numpy()
        np.testing.assert_allclose(measure.summary(bootstrap=10)["per_image"], by_hand, rtol=1e-6)
        patient_means = [by_hand[:2].mean(), by_hand[2], by_hand[3]]
        assert measure.summary(bootstrap=10)["dice"]["mean"] == pytest.approx(np.mean(patient_means))


class TestSanity(MeasureContract):
    name = "sanity"
    bad_setting = {"threshold": 2.0}
    bad_param = "threshold"

    def build(self, dims: int, **settings: Any) -> measures.Measure:
        return measures.Sanity(tiny_model(dims), channel=1, method="saliency", **settings)


class TestChannels(MeasureContract):
    name = "channels"
    bad_setting = {"ig_steps": 0}
    bad_param = "ig_steps"

    def build(self, dims: int, **settings: Any) -> measures.Measure:
        return measures.Channels(tiny_model(dims), channel=1, **{"ig_steps": 4, **settings})


def test_every_measure_has_a_contract_class() -> None:
    tested = {cls.name for cls in MeasureContract.__subclasses__()}
    assert tested == set(measures.MEASURES)
