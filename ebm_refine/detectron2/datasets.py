"""Registration of the embedded synthetic detection benchmark in Detectron2's DatasetCatalog.

``ebm_synthetic_train`` / ``ebm_synthetic_val`` / ``ebm_synthetic_tune`` are registered when the plugin is
imported. ``ebm_synthetic_tune`` is a held-out split for choosing settings (e.g. the number of refinement
steps of the fast configs) without looking at ``ebm_synthetic_val``, on which results are reported: every
image's random stream is seeded by (seed, split name, index), so its images are independent of both. Their files
are generated on first use (deterministically, see :mod:`ebm_refine.data.synthetic_detection`) under
``$EBM_DATASETS/ebm_synthetic`` or, like Detectron2's builtin datasets, ``$DETECTRON2_DATASETS``
(default ``./datasets``). Nothing is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..data.synthetic_detection import CLASS_NAMES, SyntheticDetectionConfig, dataset_paths, generate_synthetic_coco

__all__ = ["register_synthetic_detection", "default_synthetic_root", "SYNTHETIC_SPLITS"]

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


def _register_defaults() -> None:
    for name, (split, n) in SYNTHETIC_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_synthetic_detection(name, split, n)


_register_defaults()
assert len(CLASS_NAMES) > 0
