"""What the library's checks (`faithfulness`, `localization`) compare a map with, and over which units.

- Reference maps: `reference="random"` is `random_maps(N, spatial, seed)`, U(0, 1) noise per pixel
  from one CPU generator seeded with `seed`; a tensor gives the reference maps itself (one per
  map, same shape); None compares with nothing.
- Units: with `patient_ids` (one per image) the patient is the unit, as in the run folder's JSON
  (each patient's images are averaged first, see `tumorcam.evaluate.stats`); without them each
  image is its own unit, and the summaries say so with unit "slice" (their `n_patients` then
  counts images).
"""

from __future__ import annotations

import numpy as np
import torch

from tumorcam.errors import TumorcamError

Reference = str | torch.Tensor | np.ndarray | None


def as_maps(maps: object, spatial: tuple[int, ...] | None = None, count: int | None = None,
            name: str = "maps") -> torch.Tensor:
    """Maps (N, *spatial), or (N, 1, *spatial), as a float32 tensor (N, *spatial); `spatial` and
    `count`, when given, are what the maps must have; `name` is the parameter in the error."""
    if not isinstance(maps, (torch.Tensor, np.ndarray)):
        raise TumorcamError(f"{name}: expected a tensor (N, *spatial), got {type(maps).__name__}")
    maps = torch.as_tensor(maps)
    if spatial is not None and maps.dim() == len(spatial) + 2 and maps.shape[1] == 1:
        maps = maps[:, 0]
    fits = maps.dim() >= 2 and (spatial is None or tuple(maps.shape[1:]) == spatial) and \
        (count is None or maps.shape[0] == count)
    if not fits:
        dims = "*spatial" if spatial is None else ", ".join(map(str, spatial))
        raise TumorcamError(f"{name}: expected maps ({'N' if count is None else count}, {dims}), "
                            f"got {tuple(maps.shape)}")
    return maps.float()


def random_maps(count: int, spatial: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The random reference: `count` maps (count, *spatial) float32 of U(0, 1) noise from one CPU
    generator seeded with `seed`, in one draw."""
    return torch.rand((count, *spatial), generator=torch.Generator().manual_seed(seed))


def reference_maps(reference: Reference, maps: torch.Tensor, seed: int = 0) -> torch.Tensor | None:
    """The maps (N, *spatial) that `maps` are compared with, on their device: seeded random maps for
    "random", the given tensor (checked against `maps`), or None."""
    if reference is None:
        return None
    if isinstance(reference, str):
        if reference != "random":
            raise TumorcamError(f"reference: unknown reference {reference!r}; give 'random', a tensor of "
                                "reference maps shaped like `maps`, or None")
        return random_maps(len(maps), tuple(maps.shape[1:]), seed).to(maps.device)
    return as_maps(reference, tuple(maps.shape[1:]), len(maps), name="reference").to(maps.device)


def units(patient_ids: object, count: int) -> tuple[np.ndarray, str]:
    """The unit id of each of `count` images and the unit's name: the patient ids ("patient"), or
    without them one id per image ("slice")."""
    if patient_ids is None:
        return np.arange(count).astype(str), "slice"
    ids = np.asarray(patient_ids).astype(str).ravel()
    if ids.size != count:
        raise TumorcamError(f"patient_ids: {ids.size} ids for {count} images; give one patient id per image")
    return ids, "patient"
