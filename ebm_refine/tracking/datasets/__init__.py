"""Tracking datasets: one :class:`Sequence` type, loaders per benchmark layout, and a name -> loader registry.

>>> from ebm_refine.tracking.datasets import load_dataset
>>> seqs = load_dataset("otb", "/data/OTB100", sequences=["Crossing"])      # doctest: +SKIP
>>> seqs[0].frames[0], seqs[0].ground_truth.shape                             # doctest: +SKIP
"""
from .folder import load_folder, load_folder_sequence
from .io import AnnotationError, DatasetError, polygon_to_xywh, read_box_file
from .otb import load_otb
from .registry import dataset_names, load_dataset, register_dataset
from .sequence import Sequence, load_frame, read_frame, select_sequences
from .trackingnet import load_trackingnet
from .training import LASOT_TEST_SEQUENCES, load_got10k, load_lasot
from .uav import UAV123_10FPS_FRAMES, UAV123_FRAMES, UAV20L_FRAMES, load_uav
from .vot import load_vot

__all__ = [
    "AnnotationError", "DatasetError", "LASOT_TEST_SEQUENCES", "Sequence", "UAV123_10FPS_FRAMES", "UAV123_FRAMES",
    "UAV20L_FRAMES", "dataset_names", "load_dataset", "load_folder", "load_folder_sequence", "load_got10k",
    "load_frame", "load_lasot", "load_otb", "load_trackingnet", "load_uav", "load_vot", "polygon_to_xywh",
    "read_box_file", "read_frame", "register_dataset", "select_sequences",
]
