"""Annotation noise for outlier experiments: a share of a detection training set's boxes made wrong.

:func:`corrupt_annotations` turns ``fraction`` of all boxes of Detectron2 dataset dicts into outliers, chosen
and altered deterministically from ``seed``, and flags every annotation with ``ebm_outlier`` (True for the
altered ones) and ``ebm_clean_bbox`` (the original box). :func:`register_noisy_dataset` registers such a copy
of a registered dataset under a new name (generated when first loaded, like the synthetic splits).

The kinds of noise are :func:`ebm_refine.data.annotation_noise.alter_box`'s (one implementation, shared with
tracker training): ``random``, ``shift``, ``scale``, ``shift_scale``; ``random`` boxes take their sides from the
5th-95th percentile of the set's widths / heights.
"""
from __future__ import annotations

import copy
import random
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..data.annotation_noise import NOISE_KINDS, alter_box
from ..utils.errors import UserError

__all__ = ["NOISE_KINDS", "corrupt_annotations", "register_noisy_dataset", "noisy_dataset_name"]


def _xyxy(ann: dict) -> List[float]:
    return [float(v) for v in BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)]


def _percentile(values: List[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q * (len(v) - 1)))))]


def corrupt_annotations(records: List[dict], fraction: float, kind: str, seed: int = 0) -> List[dict]:
    """A copy of Detectron2 dataset dicts with ``round(fraction * boxes)`` boxes made outliers.

    Args:
        records: dataset dicts (``annotations`` with ``bbox``, ``bbox_mode``; ``height``, ``width``).
        fraction: share of all boxes to alter, in [0, 1).
        kind: one of :data:`NOISE_KINDS` (module docstring).
        seed: chooses the boxes and their alterations.
    Returns:
        new dicts; each annotation has ``ebm_outlier`` (bool) and ``ebm_clean_bbox`` (the original ``bbox``);
        altered boxes are stored as XYXY_ABS pixels, clipped to the image, at least 4 px per side.
    """
    if kind not in NOISE_KINDS:
        raise UserError(f"annotation noise kind {kind!r} unknown; use one of {', '.join(NOISE_KINDS)}")
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"annotation noise fraction must be in [0, 1), got {fraction}")
    out = copy.deepcopy(records)
    anns = [(r, a) for r in out for a in r.get("annotations", [])]
    for _, a in anns:
        a["ebm_outlier"] = False
        a["ebm_clean_bbox"] = list(a["bbox"])
    if not anns or fraction == 0.0:
        return out
    rng = random.Random(f"ebm_refine.annotation_noise/{kind}/{fraction}/{seed}")
    boxes = [_xyxy(a) for _, a in anns]
    widths, heights = [b[2] - b[0] for b in boxes], [b[3] - b[1] for b in boxes]
    w_lo, w_hi = _percentile(widths, 0.05), _percentile(widths, 0.95)
    h_lo, h_hi = _percentile(heights, 0.05), _percentile(heights, 0.95)
    chosen = rng.sample(range(len(anns)), int(round(fraction * len(anns))))
    for i in chosen:
        record, ann = anns[i]
        width, height = float(record["width"]), float(record["height"])
        ann["bbox"] = alter_box(boxes[i], kind, rng, width, height, ((w_lo, w_hi), (h_lo, h_hi)))
        ann["bbox_mode"] = BoxMode.XYXY_ABS
        ann["ebm_outlier"] = True
    return out


def noisy_dataset_name(base: str, kind: str, fraction: float, seed: int) -> str:
    """``<base>_noisy_<kind>_<percent>_s<seed>``, the name :func:`register_noisy_dataset` uses by default."""
    return f"{base}_noisy_{kind}_{int(round(100 * fraction))}_s{seed}"


def register_noisy_dataset(base: str, kind: str, fraction: float, seed: int = 0, name: str = "") -> str:
    """Register a copy of dataset ``base`` with annotation noise (:func:`corrupt_annotations`); returns its name.

    The copy is made when first loaded; metadata (classes) are the base's. Registering an existing name again
    is a no-op.
    """
    name = name or noisy_dataset_name(base, kind, fraction, seed)
    if kind not in NOISE_KINDS:
        raise UserError(f"annotation noise kind {kind!r} unknown; use one of {', '.join(NOISE_KINDS)}")
    if name in DatasetCatalog.list():
        return name
    DatasetCatalog.register(name, lambda: corrupt_annotations(DatasetCatalog.get(base), fraction, kind, seed))
    base_meta = MetadataCatalog.get(base)
    extra = {k: getattr(base_meta, k) for k in ("thing_classes", "thing_dataset_id_to_contiguous_id")
             if hasattr(base_meta, k)}
    MetadataCatalog.get(name).set(**extra)
    return name
