"""The registry of explanation methods, one module each over `base.Method`."""

from __future__ import annotations

from tumorcam.explain.methods.base import Method, Options, ScalarOutput
from tumorcam.explain.methods.controls import DilatedMask, Edges, PredictedMask, PredictedProbability
from tumorcam.explain.methods.gradcam import GradCAM
from tumorcam.explain.methods.gradcam_plusplus import GradCAMPlusPlus
from tumorcam.explain.methods.hirescam import HiResCAM
from tumorcam.explain.methods.integrated_gradients import IntegratedGradients
from tumorcam.explain.methods.layercam import LayerCAM
from tumorcam.explain.methods.random_map import RandomMap
from tumorcam.explain.methods.saliency import Saliency

METHODS: dict[str, Method] = {
    m.name: m
    for m in (GradCAM(), GradCAMPlusPlus(), HiResCAM(), LayerCAM(), Saliency(), IntegratedGradients(), RandomMap(),
              PredictedMask(), PredictedProbability(), DilatedMask(), Edges())
}

__all__ = ["METHODS", "Method", "Options", "ScalarOutput"]
