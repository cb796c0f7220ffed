"""Annotation noise for outlier experiments: one wrong box, made from a right one (pure Python, no framework).

:func:`alter_box` is the one implementation of the noise kinds, used by Detectron2 training
(:mod:`ebm_refine.detectron2.annotation_noise`, a share of a dataset's boxes) and by tracker training
(:class:`AnnotationNoise`, a share of the frames' boxes of every training sequence).

Kinds (s = (w, h), the original box's size; every altered box is clipped to the image, at least 4 px a side):

* ``random``: a box of random size (log-uniform per side within ``size_range``) placed uniformly in the
  image: an annotation of nothing, or of the wrong object.
* ``shift``: the centre moved by 50-100 % of the box's width and of its height, random signs (mirrored
  back when it would leave the image).
* ``scale``: width and height multiplied by one factor, 1.8-2.5 or its inverse (loose or cut boxes).
* ``shift_scale``: both.
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["NOISE_KINDS", "MIN_SIDE", "alter_box", "clip_box", "AnnotationNoise"]

NOISE_KINDS = ("random", "shift", "scale", "shift_scale")
MIN_SIDE = 4.0  # px: an altered box never collapses below this (training drops degenerate boxes)


def clip_box(box: Sequence[float], width: float, height: float) -> List[float]:
    """xyxy pixels clipped to a ``width`` x ``height`` image, at least :data:`MIN_SIDE` px a side."""
    x1, y1, x2, y2 = box
    x1, x2 = min(max(x1, 0.0), width - MIN_SIDE), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height - MIN_SIDE), min(max(y2, 0.0), height)
    return [x1, y1, max(x2, x1 + MIN_SIDE), max(y2, y1 + MIN_SIDE)]


def alter_box(box: Sequence[float], kind: str, rng: random.Random, width: float, height: float,
              size_range: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None) -> List[float]:
    """One wrong annotation made from ``box``.

    Args:
        box: xyxy pixels, the correct box.
        kind: one of :data:`NOISE_KINDS` (module docstring).
        rng: the draws' source (the caller seeds it, so a corruption is reproducible).
        width, height: the image size in pixels.
        size_range: ``((w_lo, w_hi), (h_lo, h_hi))`` pixels, the side ranges of ``random`` boxes; needed by
            ``random`` only.
    Returns:
        the altered box, xyxy pixels, clipped to the image.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"annotation noise kind {kind!r} unknown; use one of {', '.join(NOISE_KINDS)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    if kind == "random":
        if size_range is None:
            raise ValueError("random annotation noise needs size_range")
        (w_lo, w_hi), (h_lo, h_hi) = size_range
        w = math.exp(rng.uniform(math.log(w_lo), math.log(w_hi)))
        h = math.exp(rng.uniform(math.log(h_lo), math.log(h_hi)))
        w, h = min(w, width), min(h, height)
        cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
    if kind in ("shift", "shift_scale"):
        cx += rng.choice((-1, 1)) * rng.uniform(0.5, 1.0) * w
        cy += rng.choice((-1, 1)) * rng.uniform(0.5, 1.0) * h
        # A shift that would leave the image is mirrored, so the box stays (mostly) inside.
        if not 0 <= cx <= width:
            cx = (x1 + x2) - cx
        if not 0 <= cy <= height:
            cy = (y1 + y2) - cy
    if kind in ("scale", "shift_scale"):
        factor = rng.uniform(1.8, 2.5) ** rng.choice((-1, 1))
        w, h = w * factor, h * factor
    return clip_box([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], width, height)


class AnnotationNoise:
    """Wrong boxes in a share of the frames of tracker training sequences, the same wrong box every time.

    Frame ``i`` of sequence ``key`` is an outlier with probability ``fraction``, decided (and altered) by a
    random stream seeded from ``(kind, fraction, seed, key, i)`` alone: a corrupted annotation is a property
    of the dataset, not of the draw, so every pair that uses the frame, as reference or as test frame, sees
    the same wrong box (what DeepGUM's EM must find). ``random`` boxes get sides log-uniform in 5-50 % of the
    image's width and height (a per-sequence stand-in for detection's 5th-95th percentile of the set).

    Args:
        fraction: expected share of frames altered, in [0, 1).
        kind: one of :data:`NOISE_KINDS`.
        seed: chooses the frames and their alterations.
    """

    def __init__(self, fraction: float, kind: str, seed: int = 0):
        if kind not in NOISE_KINDS:
            raise ValueError(f"annotation noise kind {kind!r} unknown; use one of {', '.join(NOISE_KINDS)}")
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"annotation noise fraction must be in [0, 1), got {fraction}")
        self.fraction, self.kind, self.seed = float(fraction), kind, int(seed)

    def __repr__(self) -> str:
        return f"AnnotationNoise(fraction={self.fraction}, kind={self.kind!r}, seed={self.seed})"

    def __call__(self, key: str, frame: int, box_xyxy: Sequence[float], width: float, height: float
                 ) -> Tuple[List[float], bool]:
        """(box, is_outlier) for frame ``frame`` of sequence ``key``: the box as given, or altered."""
        if self.fraction == 0.0:
            return [float(v) for v in box_xyxy], False
        rng = random.Random(f"ebm_refine.annotation_noise/{self.kind}/{self.fraction}/{self.seed}/{key}/{frame}")
        if rng.random() >= self.fraction:
            return [float(v) for v in box_xyxy], False
        size_range = ((0.05 * width, 0.5 * width), (0.05 * height, 0.5 * height))
        return alter_box(box_xyxy, self.kind, rng, width, height, size_range), True

    @staticmethod
    def from_config(cfg: Optional[Dict]) -> Optional["AnnotationNoise"]:
        """From a ``{fraction, kind, seed}`` dict; None for None or fraction 0."""
        if not cfg or not float(cfg.get("fraction", 0.0)):
            return None
        return AnnotationNoise(float(cfg["fraction"]), str(cfg.get("kind", "shift_scale")), int(cfg.get("seed", 0)))
