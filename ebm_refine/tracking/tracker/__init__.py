"""The ATOM-style tracker with EBM box estimation (pytracking's ``initialize`` / ``track`` API).

ebm_atom    :class:`EBMAtomTracker` (modes ``ebm``, ``iounet``, ``none`` via ``box_refinement.mode``)
classifier  the online target classifier (PCA projection + conv filter, least squares solved by CG)
params      YAML parameter files under ``configs/tracking/``
"""
from .classifier import Localization, OnlineClassifier
from ..processing import CropTransform, as_rgb_image, image_to_tensor, sample_patch
from .ebm_atom import EBMAtomTracker, validate_init_box
from .params import CONFIG_DIR, DEFAULT_TRACKER_PARAMS, load_tracker_params

__all__ = ["EBMAtomTracker", "validate_init_box", "OnlineClassifier", "Localization", "CropTransform",
           "as_rgb_image", "image_to_tensor", "sample_patch", "CONFIG_DIR", "DEFAULT_TRACKER_PARAMS",
           "load_tracker_params"]
