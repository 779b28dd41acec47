"""Open a trained nnU-Net v2 model and explain it on nnU-Net's own grid, tiles and folds.

    import tumorcam.nnunet

    model = tumorcam.nnunet.load("nnUNet_results/Dataset001_X/nnUNetTrainer__nnUNetPlans__3d_fullres",
                                 folds=(0,))                       # weights-only checkpoint loading
    volume, properties = model.preprocess(["CASE_0000.nii.gz", "CASE_0001.nii.gz"])
    result = model.explain(volume, "edema")                      # Grad-CAM, stitched over the tiles
    model.export_map(result.heatmap, properties)                 # the map on the raw case's grid

`load` (model.py) builds the folds' networks from the plans and reads their checkpoints without
unpickling (checkpoint.py); `NnunetModel` runs nnU-Net's sliding window with gradients
(sliding.py); `explain_volume` explains tile by tile and stitches (explain.py); `map_to_raw` and
`write_map` undo nnU-Net's preprocessing on a map (export.py); `LabelOutput` is the model's output
for one label, what tumorcam's checks take (label.py). Needs the `nnunet` extra (nnunetv2).
"""

from __future__ import annotations

from tumorcam.nnunet.explain import NnunetExplanation, explain_volume
from tumorcam.nnunet.export import map_to_raw, write_map
from tumorcam.nnunet.label import LabelOutput
from tumorcam.nnunet.model import NnunetModel, load

__all__ = ["LabelOutput", "NnunetExplanation", "NnunetModel", "explain_volume", "load", "map_to_raw", "write_map"]
