"""Datasets the plugin registers in Detectron2's DatasetCatalog, and COCO-format registration by path.

Registered when the plugin is imported (like Detectron2's builtin datasets; nothing is downloaded):

* ``ebm_synthetic_train`` / ``ebm_synthetic_val``: the embedded synthetic benchmark. Its files are
  generated on first use (deterministically, see :mod:`ebm_refine.data.synthetic_detection`) under
  ``$EBM_DATASETS/ebm_synthetic`` or ``$DETECTRON2_DATASETS/ebm_synthetic`` (default ``./datasets``).
* ``ebm_synthetic_tune``: a held-out synthetic split for choosing settings (e.g. the number of
  refinement steps of the fast configs) without looking at ``ebm_synthetic_val``, on which results are
  reported: every image's random stream is seeded by (seed, split name, index), so its images are
  independent of both.
* ``coco128_train2017``, ``coco_tiny_train2017``, ``coco_val2017_first128``: the small real COCO sets of
  the project's data folder (``$EBM_SHARED_DATA``; in a source checkout ``../shared/data``), with the 80
  COCO categories. Loading one whose files are absent is a one-line error.
* ``coco128_train2017_fit`` / ``coco128_train2017_holdout``: the first 104 / last 24 images of
  ``coco128_train2017`` (file order), so settings can be chosen on training images the model did not fit.

:func:`register_coco` registers any COCO-format json + image folder (``tools/train_net.py --register-coco``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..data.synthetic_detection import CLASS_NAMES, SyntheticDetectionConfig, dataset_paths, generate_synthetic_coco
from ..utils.resources import shared_data_dir
from .data import DatasetError

__all__ = ["register_synthetic_detection", "default_synthetic_root", "SYNTHETIC_SPLITS", "register_coco",
           "SHARED_COCO_SPLITS"]

# name -> (split, number of images)
SYNTHETIC_SPLITS = {"ebm_synthetic_train": ("train", 600), "ebm_synthetic_val": ("val", 100),
                    "ebm_synthetic_tune": ("tune", 100)}


def default_synthetic_root() -> Path:
    base = os.environ.get("EBM_DATASETS") or os.environ.get("DETECTRON2_DATASETS", "datasets")
    return Path(base) / "ebm_synthetic"


def register_synthetic_detection(
    name: str,
    split: str,
    num_images: int,
    root: Optional[os.PathLike] = None,
    config: SyntheticDetectionConfig = SyntheticDetectionConfig(),
    seed: int = 0,
) -> None:
    """Register a synthetic split under ``name``; its files are generated (once) when first loaded.

    The metadata has ``json_file`` / ``image_root`` / ``evaluator_type="coco"`` like
    ``register_coco_instances``, so ``COCOEvaluator`` works on it.
    """
    root = Path(root) if root is not None else default_synthetic_root()
    json_path, image_dir = dataset_paths(root, split)

    def load():
        generate_synthetic_coco(root, split, num_images, config, seed)
        return load_coco_json(str(json_path), str(image_dir), name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=str(json_path), image_root=str(image_dir), evaluator_type="coco",
        thing_classes=list(config.classes),
    )


# name -> (annotation json, image folder), relative to the project's data folder
SHARED_COCO_SPLITS = {
    "coco128_train2017": ("coco/coco128_train2017/instances_train2017.json", "coco/coco128_train2017/images"),
    "coco_tiny_train2017": ("coco/tiny/instances_train2017_small.json", "coco/tiny/train_2017_small"),
    "coco_val2017_first128": ("coco/val2017_first128/instances_val2017_first128.json", "coco/val2017_first128/images"),
}


def register_coco(name: str, json_file: os.PathLike, image_root: os.PathLike, hint: str = "") -> None:
    """Register a COCO-format dataset (``register_coco_instances`` with a one-line error for absent files).

    Registering the same name again with the same files is a no-op; with other files it is an error.
    """
    json_file, image_root = str(json_file), str(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
            return
        raise DatasetError(f"dataset {name!r} is already registered with other files ({getattr(meta, 'json_file', '?')}); "
                           "pick another name")

    def load():
        for path, what in ((json_file, "annotation file"), (image_root, "image folder")):
            if not os.path.exists(path):
                raise DatasetError(f"dataset {name!r}: {what} {path} not found{hint}")
        try:
            return load_coco_json(json_file, image_root, name)
        except (AssertionError, KeyError, TypeError, AttributeError, ValueError) as e:  # pycocotools' checks
            raise DatasetError(f"{json_file}: not a COCO-format annotation file for dataset {name!r} ({type(e).__name__}: "
                               f"{' '.join(str(e).split())[:120]}); it needs an object with 'images', "
                               f"'annotations' and 'categories'{hint}") from None

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


# name -> (parent dataset, first image, end image) in the parent's file order
SUBSETS = {"coco128_train2017_fit": ("coco128_train2017", 0, 104),
           "coco128_train2017_holdout": ("coco128_train2017", 104, 128)}


def register_subset(name: str, parent: str, start: int, stop: int) -> None:
    """Register images ``start:stop`` of the registered COCO-format dataset ``parent`` as ``name``."""
    def load():
        records = DatasetCatalog.get(parent)
        if len(records) < stop:
            raise DatasetError(f"dataset {name!r} needs images {start}:{stop} of {parent!r}, which has {len(records)}")
        parent_meta = MetadataCatalog.get(parent)
        MetadataCatalog.get(name).set(thing_classes=parent_meta.thing_classes,
                                      thing_dataset_id_to_contiguous_id=parent_meta.thing_dataset_id_to_contiguous_id)
        return records[start:stop]

    DatasetCatalog.register(name, load)
    parent_meta = MetadataCatalog.get(parent)
    MetadataCatalog.get(name).set(json_file=parent_meta.json_file, image_root=parent_meta.image_root,
                                  evaluator_type="coco")


def _register_defaults() -> None:
    for name, (split, n) in SYNTHETIC_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_synthetic_detection(name, split, n)
    root = shared_data_dir() or Path(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    for name, (json_rel, images_rel) in SHARED_COCO_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_coco(name, root / json_rel, root / images_rel,
                          hint="; set EBM_SHARED_DATA to the folder that holds coco/")
    for name, (parent, start, stop) in SUBSETS.items():
        if name not in DatasetCatalog.list():
            register_subset(name, parent, start, stop)


_register_defaults()
assert len(CLASS_NAMES) > 0
