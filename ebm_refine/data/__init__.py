"""The generated datasets (pure numpy + OpenCV; no Detectron2 import).

synthetic_detection   the deterministic synthetic COCO-format dataset used by the embedded default
shapes, clutter       its object classes and its backgrounds / distractors
rle                   COCO run-length encoding of masks and tight boxes
synthetic_tracking    procedurally generated tracking sequences (tracker training and held-out tests);
                      import it by name (its names are not re-exported here)
annotation_noise      wrong boxes for outlier experiments (detection and tracker training); import it by name
"""
from .synthetic_detection import (
    CLASS_NAMES,
    RenderedImage,
    SyntheticDetectionConfig,
    dataset_paths,
    generate_synthetic_coco,
    render_image,
)

__all__ = [
    "CLASS_NAMES",
    "SyntheticDetectionConfig",
    "RenderedImage",
    "generate_synthetic_coco",
    "dataset_paths",
    "render_image",
]
