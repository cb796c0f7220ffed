"""Another detector's detections as Detectron2 inputs, and refined detections back as a COCO results file.

Follows Detectron2's precomputed-proposals pattern: :func:`load_detections_into_dataset` attaches each
image's detections to its dataset dict (``record["detections"]``), :class:`DetectionsMapper` brings them to
the network's input resolution as ``Instances``, and :class:`RefinedDetectionsWriter` (a
``DatasetEvaluator``) collects the model's refined outputs into a COCO results file.

Input rules (a COCO results file: a JSON list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}``, pixels of the original image):

* not a JSON list, an entry without those keys, an ``image_id`` that is not in the dataset, or a
  ``category_id`` the dataset does not know -> :class:`DetectionsError` (one line naming the file);
* non-finite numbers, zero / negative width or height, or a box entirely outside its image -> skipped,
  counted, and reported in one log line; a box partly outside its image is clipped to it (counted);
* ``score < min_score`` -> not refined; per image at most ``max_per_image`` detections, highest scores
  first (COCO's AP reads 100 per image, so ``max_per_image=100`` keeps a detector's AP unchanged).
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm

from ..utils.errors import UserError
from ..utils.fileio import atomic_write_text
from .data import CheckedDatasetMapper, LetterboxResize, letterbox_scale

__all__ = ["DetectionsError", "DetectionStats", "read_detections", "load_detections_into_dataset",
           "DetectionsMapper", "RefinedDetectionsWriter"]

logger = logging.getLogger(__name__)
_KEYS = ("image_id", "category_id", "bbox", "score")


class DetectionsError(UserError):
    """A detections file that cannot be used."""


@dataclass
class DetectionStats:
    """What happened to a detections file's entries (see the module docstring)."""

    total: int = 0
    used: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    clipped: int = 0
    below_min_score: int = 0
    over_max_per_image: int = 0

    def summary(self, path: str) -> str:
        skipped = ", ".join(f"{v} {k}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"{path}: {self.used} of {self.total} detections used; skipped: {skipped}; clipped to the image: "
                f"{self.clipped}; below the minimum score: {self.below_min_score}; over the per-image limit: "
                f"{self.over_max_per_image}")


def read_detections(path: str) -> List[dict]:
    """The entries of a COCO results file, checked for shape (see the module docstring)."""
    if not os.path.isfile(path):
        raise DetectionsError(f"detections file {path} not found")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DetectionsError(f"{path}: not a JSON file ({e}); expected a COCO results list") from None
    if not isinstance(data, list):
        raise DetectionsError(f"{path}: expected a COCO results list [{{image_id, category_id, bbox, score}}, ...], "
                              f"got a JSON {type(data).__name__}")
    for i, d in enumerate(data):
        if not isinstance(d, dict) or any(k not in d for k in _KEYS):
            raise DetectionsError(f"{path}: entry {i} lacks one of {list(_KEYS)}: {str(d)[:120]}")
        if not isinstance(d["bbox"], (list, tuple)) or len(d["bbox"]) != 4:
            raise DetectionsError(f"{path}: entry {i} has a bbox that is not [x, y, w, h]: {d['bbox']!r}")
    return data


def _clean_box(bbox, score, width: int, height: int):
    """(xyxy box clipped to the image, clipped?) or (None, reason) for an unusable detection."""
    try:
        x, y, w, h = (float(v) for v in bbox)
        score = float(score)
    except (TypeError, ValueError):
        return None, "non-numeric"
    if not all(math.isfinite(v) for v in (x, y, w, h, score)):
        return None, "non-finite"
    if w <= 0 or h <= 0:
        return None, "zero or negative size"
    x0, y0, x1, y1 = x, y, x + w, y + h
    c0, c1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    r0, r1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if c1 <= c0 or r1 <= r0:
        return None, "outside the image"
    return (c0, r0, c1, r1), (c0, r0, c1, r1) != (x0, y0, x1, y1)


def load_detections_into_dataset(dataset_dicts: List[dict], path: str, dataset_name: str, *,
                                 min_score: float = 0.0, max_per_image: int = 100) -> DetectionStats:
    """Attach the detections in ``path`` to ``dataset_dicts`` (in place) as ``record["detections"]``.

    ``record["detections"]`` holds numpy arrays: ``boxes`` (N, 4) xyxy pixels of the original image,
    ``classes`` (N,) contiguous class ids, ``scores`` (N,) float64 as in the file, sorted by score
    (descending). Every record gets the field (N = 0 without detections), so evaluation still counts
    the image's ground truth.
    """
    entries = read_detections(path)
    meta = MetadataCatalog.get(dataset_name)
    id_map = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
    if id_map is None:
        raise DetectionsError(f"dataset {dataset_name!r} has no category id mapping (load it before the detections)")
    by_id = {r["image_id"]: r for r in dataset_dicts}
    unknown_images = [d["image_id"] for d in entries if d["image_id"] not in by_id]
    if unknown_images:
        raise DetectionsError(f"{path}: {len(unknown_images)} detections name images that are not in dataset "
                              f"{dataset_name!r} (e.g. image_id {unknown_images[0]!r}); pass the matching dataset")
    unknown_cats = sorted({d["category_id"] for d in entries if d["category_id"] not in id_map}, key=str)
    if unknown_cats:
        raise DetectionsError(f"{path}: category ids {unknown_cats[:5]} are not categories of dataset "
                              f"{dataset_name!r}; pass the matching dataset or fix the ids")
    stats, skipped = DetectionStats(total=len(entries)), Counter()
    per_image = defaultdict(list)
    for d in entries:
        record = by_id[d["image_id"]]
        box, note = _clean_box(d["bbox"], d["score"], record["width"], record["height"])
        if box is None:
            skipped[note] += 1
            continue
        if float(d["score"]) < min_score:
            stats.below_min_score += 1
            continue
        stats.clipped += int(note)
        per_image[d["image_id"]].append((float(d["score"]), box, d["category_id"]))
    for record in dataset_dicts:
        dets = sorted(per_image.get(record["image_id"], []), key=lambda t: -t[0])
        stats.over_max_per_image += max(0, len(dets) - max_per_image)
        dets = dets[:max_per_image]
        stats.used += len(dets)
        record["detections"] = {
            "boxes": np.array([t[1] for t in dets], dtype=np.float64).reshape(-1, 4),
            "scores": np.array([t[0] for t in dets], dtype=np.float64),
            "classes": np.array([id_map[t[2]] for t in dets], dtype=np.int64),
        }
    stats.skipped = dict(skipped)
    logger.info("%s", stats.summary(path))
    return stats


class DetectionsMapper(CheckedDatasetMapper):
    """Test-time ``DatasetMapper`` that also brings ``record["detections"]`` to the input resolution.

    Output ``dataset_dict["detections"]``: Instances of the resized image with ``pred_boxes`` (xyxy),
    ``pred_classes``, ``scores``. Test-time augmentation must be resizing only (Detectron2's default
    ``ResizeShortestEdge``, or YOLOX's letterbox with ``INPUT.LETTERBOX_SIZE``), so boxes scale like the image.
    """

    def __init__(self, cfg, is_train: bool = False):
        super().__init__(cfg, is_train)
        self.letterbox_size = cfg.INPUT.LETTERBOX_SIZE
        augs = getattr(self.augmentations, "augs", [])
        if is_train or not all(isinstance(a, (T.ResizeShortestEdge, T.Resize, LetterboxResize)) for a in augs):
            raise UserError(f"DetectionsMapper is for testing with resize-only augmentation, got {augs}")

    def __call__(self, dataset_dict: Dict) -> Dict:
        if "detections" not in dataset_dict:
            raise DetectionsError(f"{dataset_dict.get('file_name')}: no detections attached to this image "
                                  "(DATASETS.DETECTION_FILES_TEST, or load_detections_into_dataset)")
        dets = dataset_dict["detections"]
        out = super().__call__(dataset_dict)
        h, w = out["image"].shape[-2:]
        if self.letterbox_size > 0:  # one exact factor, as the model's post-processing divides by
            sx = sy = letterbox_scale(dataset_dict["height"], dataset_dict["width"], self.letterbox_size)
        else:
            sx, sy = w / dataset_dict["width"], h / dataset_dict["height"]
        boxes = torch.as_tensor(dets["boxes"], dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(boxes)
        inst.pred_classes = torch.as_tensor(dets["classes"], dtype=torch.int64)
        # float64: the detector's scores pass through unchanged (float32 could create ties in AP's ranking).
        inst.scores = torch.as_tensor(dets["scores"], dtype=torch.float64)
        out["detections"] = inst
        return out


class RefinedDetectionsWriter(DatasetEvaluator):
    """Collects refined outputs as COCO results (``bbox`` refined, ``score`` kept, ``energy`` added) and
    writes them atomically to ``output_file`` on :meth:`evaluate`; returns ``{}`` (no metrics)."""

    def __init__(self, dataset_name: str, output_file: str, distributed: bool = True):
        meta = MetadataCatalog.get(dataset_name)
        self._to_dataset_id = {v: k for k, v in meta.thing_dataset_id_to_contiguous_id.items()}
        self.output_file = output_file
        self.distributed = distributed
        self._results: List[dict] = []

    def reset(self) -> None:
        self._results = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            boxes = inst.pred_boxes.tensor.numpy().astype(np.float64)
            energies = inst.pred_energies.tolist() if inst.has("pred_energies") else [None] * len(inst)
            for box, cls, score, energy in zip(boxes, inst.pred_classes.tolist(), inst.scores.tolist(), energies):
                record = {"image_id": inp["image_id"], "category_id": self._to_dataset_id[cls],
                          "bbox": [round(float(v), 3) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])],
                          "score": float(score)}
                if energy is not None:
                    record["energy"] = round(float(energy), 5)
                self._results.append(record)

    def evaluate(self) -> Optional[dict]:
        results = self._results
        if self.distributed:
            comm.synchronize()
            results = [r for part in comm.gather(results, dst=0) for r in part]
            if not comm.is_main_process():
                return {}
        atomic_write_text(self.output_file, json.dumps(results))
        logger.info("Wrote %d refined detections to %s", len(results), self.output_file)
        return {}
