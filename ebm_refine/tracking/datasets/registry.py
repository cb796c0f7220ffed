"""Dataset registry: name -> loader. Every loader is ``loader(root, sequences=None, **options)`` and returns
a list of :class:`~ebm_refine.tracking.datasets.Sequence`.

Add a dataset with :func:`register_dataset`; ``tools/eval_tracking.py --dataset NAME`` then finds it.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence as _Seq

from .folder import load_folder
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
        raise KeyError(f"dataset {name!r} is already registered")
    _REGISTRY[key] = loader


def dataset_names() -> List[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def load_dataset(name: str, root: str, sequences: Optional[_Seq[str]] = None, **options) -> List[Sequence]:
    """Load dataset ``name`` from ``root``; ``sequences`` restricts to a subset (in that order)."""
    key = name.lower()
    if key not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; registered: {', '.join(dataset_names())}")
    return _REGISTRY[key](root, sequences=sequences, **options)
