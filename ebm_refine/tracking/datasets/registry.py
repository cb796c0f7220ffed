"""Dataset registry: name -> loader. Every loader is ``loader(root, sequences=None, **options)`` and returns
a list of :class:`~ebm_refine.tracking.datasets.Sequence`.

Add a dataset with :func:`register_dataset`; ``tools/eval_tracking.py --dataset NAME`` then finds it.
"""
from __future__ import annotations

import functools
import os
from typing import Callable, Dict, List, Optional, Sequence as _Seq

from ...utils import MissingFileError, UnknownNameError
from .folder import load_folder
from .io import DatasetError, log_invalid_ground_truth
from .otb import load_otb
from .sequence import Sequence
from .trackingnet import load_trackingnet
from .training import load_got10k, load_lasot
from .uav import load_uav
from .vot import load_vot

DatasetLoader = Callable[..., List[Sequence]]

_REGISTRY: Dict[str, DatasetLoader] = {
    "uav123": functools.partial(load_uav, variant="uav123"),
    "uav20l": functools.partial(load_uav, variant="uav20l"),
    "uav123_10fps": functools.partial(load_uav, variant="uav123_10fps"),
    "trackingnet": load_trackingnet,   # option: chunks="TEST" | "TRAIN" | "TRAIN_3" | [...]
    "otb": load_otb,
    "vot": load_vot,                   # option: rotated_box_mode="minmax" | "preserve_area"
    "folder": load_folder,             # option: anno_path=...
    "lasot": load_lasot,               # option: split="train" | "test" | "all"
    "got10k": load_got10k,             # option: split="train" | "val" | "test"
}


def register_dataset(name: str, loader: DatasetLoader, overwrite: bool = False) -> None:
    """Register ``loader`` under ``name`` (lower-case). Refuses to replace an entry unless ``overwrite``."""
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise KeyError(f"dataset {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = loader


def dataset_names() -> List[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def load_dataset(name: str, root: str, sequences: Optional[_Seq[str]] = None, **options) -> List[Sequence]:
    """Load dataset ``name`` from ``root``; ``sequences`` restricts to a subset (in that order).

    Logs one line (``logging.INFO``) counting the ground-truth rows without a valid box (NaN or zero size).

    Raises:
        UnknownNameError for an unregistered ``name`` or an unknown sequence; MissingFileError when
        ``root`` (or a file the layout needs) does not exist; DatasetError / AnnotationError naming the
        file for anything malformed, and when the dataset holds no sequence at all.
    """
    key = name.lower()
    if key not in _REGISTRY:
        raise UnknownNameError(f"unknown dataset {name!r}; registered: {', '.join(dataset_names())}")
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: dataset root folder not found; check --root")
    seqs = _REGISTRY[key](root, sequences=sequences, **options)
    if not seqs:
        raise DatasetError(f"{root}: no {name} sequence found (with these options: {options or 'none'}); check "
                           "--root, --split and the layout in docs/tracking_evaluation.md")
    log_invalid_ground_truth(name, seqs)
    return seqs
