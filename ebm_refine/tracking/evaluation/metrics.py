"""Per-frame errors and curves in pure numpy. Boxes are (N, 4) float arrays ``x, y, w, h`` in pixels.

Two box conventions exist among the toolkits and both are here, because they give different numbers:

* continuous boxes (pytracking, got10k): a box covers ``[x, x + w)``, its centre is ``x + (w - 1) / 2``;
* pixel-inclusive boxes (TrackingNet devkit, see :mod:`.protocols`): ``x2 = x + w - 1`` and the
  intersection width is ``x2' - x1' + 1``; its centre is ``x + (w + 1) / 2``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

# Threshold sets. They are built exactly the way each toolkit builds them, because np.arange and
# np.linspace differ in the last bit for some entries and an IoU can sit exactly on a threshold.
PYTRACKING_IOU_THRESHOLDS = np.arange(0.0, 1.0 + 0.05, 0.05, dtype=np.float64)    # 21 values, IoU > t
PYTRACKING_CENTER_THRESHOLDS = np.arange(0, 51, dtype=np.float64)                  # pixels, error <= t
PYTRACKING_NORM_THRESHOLDS = np.arange(0, 51, dtype=np.float64) / 100.0           # error <= t
OTB_IOU_THRESHOLDS = np.linspace(0, 1, 21)                                          # IoU > t
OTB_CENTER_THRESHOLDS = np.arange(0, 51)
OTB_NORM_THRESHOLDS = np.arange(0, 51) / 100.0
TRACKINGNET_IOU_THRESHOLDS = np.linspace(0, 1, 21)                                  # IoU >= t
TRACKINGNET_CENTER_THRESHOLDS = np.linspace(0, 50, 21)                              # pixels
TRACKINGNET_NORM_THRESHOLDS = np.linspace(0, 0.5, 21)


def as_boxes(boxes) -> np.ndarray:
    """(N, 4) float64 copy of ``boxes``; raises ValueError on any other shape."""
    arr = np.array(boxes, dtype=np.float64, copy=True)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"expected boxes of shape (N, 4), got {arr.shape}")
    return arr


def iou(pred: np.ndarray, gt: np.ndarray, eps: float = 0.0, clip: bool = False) -> np.ndarray:
    """Intersection over union of continuous boxes, per row.

    Args:
        pred, gt: (N, 4) boxes.
        eps: added to the union (got10k adds machine epsilon; pytracking adds nothing).
        clip: clip the result to [0, 1] (got10k does; NaN stays NaN).

    Returns:
        (N,) IoU; NaN where an input is NaN or the union is zero (with ``eps=0``).
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    x1 = np.maximum(pred[:, 0], gt[:, 0])
    y1 = np.maximum(pred[:, 1], gt[:, 1])
    x2 = np.minimum(pred[:, 0] + pred[:, 2], gt[:, 0] + gt[:, 2])
    y2 = np.minimum(pred[:, 1] + pred[:, 3], gt[:, 1] + gt[:, 3])
    inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = pred[:, 2] * pred[:, 3] + gt[:, 2] * gt[:, 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = inter / (union + eps)
    return np.clip(out, 0.0, 1.0) if clip else out


def centers(boxes: np.ndarray) -> np.ndarray:
    """(N, 2) centres ``x + (w - 1) / 2, y + (h - 1) / 2`` (the pytracking / OTB convention)."""
    boxes = np.asarray(boxes, np.float64)
    return boxes[:, :2] + (boxes[:, 2:] - 1.0) / 2.0


def center_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) Euclidean distance in pixels between predicted and ground-truth centres."""
    return np.sqrt(np.sum((centers(pred) - centers(gt)) ** 2, axis=1))


def normalized_center_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) centre distance with both centres divided by the ground-truth ``w, h`` (TrackingNet's
    normalised precision; dimensionless). Inf/NaN where the ground truth has zero size."""
    gt = np.asarray(gt, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = (centers(pred) - centers(gt)) / gt[:, 2:]
    return np.sqrt(np.sum(diff ** 2, axis=1))


def rate_curve(values: np.ndarray, thresholds: np.ndarray, mode: str, denominator: Optional[float] = None
               ) -> np.ndarray:
    """Fraction of frames passing each threshold.

    Args:
        values: (N,) per-frame IoUs or errors. NaN never passes.
        thresholds: (T,) thresholds.
        mode: ``">"`` or ``">="`` (success on IoU) or ``"<="`` (precision on errors).
        denominator: number of frames to divide by (default N). It must not be smaller than the number
            of passing frames (a rate above 1 is refused); :mod:`.protocols` explains the pytracking
            protocol's denominators.

    Returns:
        (T,) float64 rates in [0, 1].
    """
    values = np.asarray(values, np.float64)[:, None]
    thresholds = np.asarray(thresholds, np.float64)[None, :]
    with np.errstate(invalid="ignore"):
        if mode == ">":
            hits = values > thresholds
        elif mode == ">=":
            hits = values >= thresholds
        elif mode == "<=":
            hits = values <= thresholds
        else:
            raise ValueError(f"unknown mode {mode!r}")
    denom = float(values.shape[0] if denominator is None else denominator)
    if denom <= 0:
        raise ValueError("cannot compute a rate over zero frames")
    passing = hits.sum(axis=0)
    if passing.size and passing.max() > denom:
        raise ValueError(f"{int(passing.max())} passing frames over a denominator of {denom:g}: a rate above 1")
    return passing / denom
