"""Checked data loading for Detectron2 training and evaluation.

* :func:`check_annotations` drops degenerate boxes (non-finite, zero or negative size, entirely outside
  the image) and logs one line per dataset with the counts; a dataset left without a valid box is an error.
* :func:`load_dataset_dicts` is ``get_detection_dataset_dicts`` with those checks, per dataset, and with
  one-line errors for unregistered or empty datasets.
* :class:`CheckedDatasetMapper` is Detectron2's ``DatasetMapper`` whose image-reading failures (missing,
  empty, truncated or undecodable files) are errors naming the file; with ``INPUT.LETTERBOX_SIZE`` it resizes
  like YOLOX (:class:`LetterboxResize`) instead of Detectron2's ``ResizeShortestEdge``.
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import (
    filter_images_with_few_keypoints,
    filter_images_with_only_crowd_annotations,
    load_proposals_into_dataset,
    print_instances_class_histogram,
)
from detectron2.structures import BoxMode

from ..utils.errors import UserError

__all__ = ["check_annotations", "load_dataset_dicts", "CheckedDatasetMapper", "DatasetError", "ImageReadError",
           "LetterboxResize", "LetterboxTransform", "letterbox_scale"]

logger = logging.getLogger(__name__)
_AXIS_ALIGNED = (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


class DatasetError(UserError):
    """A dataset that cannot be used: not registered, empty, or without a valid box."""


class ImageReadError(UserError):
    """An image file that cannot be read or decoded."""


def _box_problem(ann: dict, height: Optional[int], width: Optional[int]) -> Optional[str]:
    """Why an annotation's box is unusable ("non-finite", "non-positive size", "outside the image"), or None."""
    mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
    if mode not in _AXIS_ALIGNED or "bbox" not in ann:
        return None  # rotated / relative boxes: not ours to judge
    values = [float(v) for v in ann["bbox"]]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return "non-finite"
    x0, y0, x1, y1 = BoxMode.convert(values, mode, BoxMode.XYXY_ABS)
    if x1 <= x0 or y1 <= y0:
        return "non-positive size"
    if width and height and (x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height):
        return "outside the image"
    return None


def check_annotations(dataset_dicts: List[dict], name: str) -> List[dict]:
    """Drop degenerate boxes from ``dataset_dicts`` (in place, per record) and log what was dropped.

    Returns:
        the same list (records whose every box was dropped stay, without annotations).
    Raises:
        DatasetError: the dataset has annotations but none of its boxes is valid.
    """
    total, dropped = 0, {}
    for record in dataset_dicts:
        anns = record.get("annotations")
        if anns is None:
            continue
        kept = []
        for ann in anns:
            total += 1
            problem = _box_problem(ann, record.get("height"), record.get("width"))
            if problem is None:
                kept.append(ann)
            else:
                dropped[problem] = dropped.get(problem, 0) + 1
        record["annotations"] = kept
    n_dropped = sum(dropped.values())
    if n_dropped:
        details = ", ".join(f"{v} {k}" for k, v in sorted(dropped.items()))
        logger.warning("Dataset %r: dropped %d of %d boxes (%s).", name, n_dropped, total, details)
    if total and n_dropped == total:
        raise DatasetError(f"dataset {name!r}: none of its {total} boxes is valid ({details}); check its annotation file")
    return dataset_dicts


def load_dataset_dicts(names: Sequence[str], *, filter_empty: bool = True, min_keypoints: int = 0,
                       proposal_files: Optional[Sequence[str]] = None, require_boxes: bool = True) -> List[dict]:
    """Dataset dicts of the registered datasets ``names``, checked (see module docstring) and merged.

    ``require_boxes``: a dataset without any box annotation is an error (training needs boxes).
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise DatasetError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    unknown = [n for n in names if n not in DatasetCatalog.list()]
    if unknown:
        raise DatasetError(f"dataset {unknown[0]!r} is not registered; register it first (e.g. "
                           "register_coco_instances) or pick one of: " + ", ".join(sorted(DatasetCatalog.list())[:20]))
    per_dataset = []
    for i, name in enumerate(names):
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise DatasetError(f"dataset {name!r} has no images; check its annotation file and image folder")
        if require_boxes and not any(r.get("annotations") for r in dicts):
            raise DatasetError(f"dataset {name!r} has no box annotations; check its annotation file")
        if proposal_files:
            dicts = load_proposals_into_dataset(dicts, proposal_files[i])
        per_dataset.append(check_annotations(dicts, name))
    merged = list(itertools.chain.from_iterable(per_dataset))
    has_instances = "annotations" in merged[0]
    if filter_empty and has_instances:
        merged = filter_images_with_only_crowd_annotations(merged)
    if min_keypoints > 0 and has_instances:
        merged = filter_images_with_few_keypoints(merged, min_keypoints)
    if not merged:
        raise DatasetError(f"no image with a usable box in {', '.join(names)}")
    classes = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
    if has_instances and classes:
        print_instances_class_histogram(merged, classes)
    return merged


def letterbox_scale(height: float, width: float, size: int) -> float:
    """YOLOX's letterbox factor from original to input pixels: both sides fit ``size``."""
    return min(size / height, size / width)


class LetterboxTransform(T.Transform):
    """Resize by one factor ``scale`` to ``int(h scale) x int(w scale)`` with OpenCV's bilinear interpolation.

    YOLOX's preprocessing (the model pads to the square). Coordinates scale by ``scale`` exactly, as YOLOX's
    labels and decoded boxes do (not by the rounded size ratio).
    """

    def __init__(self, h: int, w: int, scale: float):
        super().__init__()
        self._set_attributes(locals())
        self.new_h, self.new_w = int(h * scale), int(w * scale)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"LetterboxTransform made for {self.h}x{self.w} got an image of {img.shape[:2]}")
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords * self.scale

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def inverse(self) -> T.Transform:
        return T.ResizeTransform(self.new_h, self.new_w, self.h, self.w)


class LetterboxResize(T.Augmentation):
    """YOLOX's letterbox resize to fit ``size`` x ``size`` (:class:`LetterboxTransform`)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        return LetterboxTransform(h, w, letterbox_scale(h, w, self.size))


class CheckedDatasetMapper(DatasetMapper):
    """``DatasetMapper`` whose image-reading failures name the file (:class:`ImageReadError`).

    The image is read once, by the parent; only when mapping fails is the file read again to tell an
    unreadable image from a bug elsewhere. With ``INPUT.LETTERBOX_SIZE`` > 0 the resize augmentation is
    :class:`LetterboxResize` (the others, e.g. the training flip, stay).
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if cfg.INPUT.LETTERBOX_SIZE > 0:
            augs = [a for a in ret["augmentations"] if not isinstance(a, T.ResizeShortestEdge)]
            # After any crop, before the flip (Detectron2's order).
            at = next((i for i, a in enumerate(augs) if not isinstance(a, (T.RandomCrop, T.RandomCrop_CategoryAreaConstraint))), len(augs))
            ret["augmentations"] = augs[:at] + [LetterboxResize(cfg.INPUT.LETTERBOX_SIZE)] + augs[at:]
        return ret

    def __call__(self, dataset_dict: Dict) -> Dict:
        try:
            return super().__call__(dataset_dict)
        except Exception as error:  # noqa: BLE001 - re-raised unless the image itself is unreadable
            file_name = dataset_dict.get("file_name")
            if file_name is not None:
                raise_if_unreadable(file_name, self.image_format, error)
            raise


def raise_if_unreadable(file_name: str, image_format: str, cause: Optional[BaseException] = None) -> None:
    """Raise :class:`ImageReadError` naming ``file_name`` if it cannot be read and decoded."""
    try:
        image = utils.read_image(file_name, format=image_format)
    except Exception as e:  # noqa: BLE001 - PIL/OS raise many types for bad files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageReadError(f"{file_name}: cannot read image ({reason}); fix the file or remove it from the "
                             "dataset") from cause
    if image.size == 0:
        raise ImageReadError(f"{file_name}: empty image; fix the file or remove it from the dataset") from cause
