"""The EBM tracker behind the tracker APIs people already use.

:func:`create_tracker` returns an OpenCV-style tracker, a drop-in for ``cv2.TrackerCSRT_create()``::

    import cv2
    from ebm_refine.tracking import create_tracker

    cap = cv2.VideoCapture("my_video.mp4")
    ok, frame = cap.read()
    tracker = create_tracker("ebm")
    tracker.init(frame, cv2.selectROI(frame))             # (x, y, w, h) in pixels
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        found, (x, y, w, h) = tracker.update(frame)

Colour order: OpenCV's tracker API takes **BGR** frames (what ``cv2.VideoCapture`` and ``cv2.imread``
give); :class:`~ebm_refine.tracking.tracker.EBMAtomTracker` itself (pytracking's ``initialize`` / ``track``)
takes **RGB**, and the got10k adapter (:mod:`ebm_refine.tracking.got10k_tracker`) PIL images (RGB). Frames
must be uint8 (H, W, 3); anything else is a one-line :class:`~ebm_refine.utils.BadValueError` saying what
was passed.

``found`` (the first value :meth:`OpenCVTracker.update` returns) is pytracking's target-not-found rule:
False when the peak of the online classifier's score map is below ``classifier.target_not_found_threshold``
(0.25 in the shipped parameter files). The tracker then keeps the previous box, does not update its
classifier, and returns that box with ``found`` False, as OpenCV trackers return their last box with
``ok`` False. ``tracker.last_result`` has the details of the last frame: ``target_bbox`` (floats),
``score`` (the classifier's peak), ``energy`` (the box estimator's score of the final box: higher is more
box-like; NaN when the target was not found or without refinement), ``flag`` and ``time`` (seconds).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from ..utils.errors import BadValueError

__all__ = ["create_tracker", "OpenCVTracker", "check_frame"]

Box = Tuple[int, int, int, int]


def check_frame(frame, order: str = "BGR") -> np.ndarray:
    """``frame`` if it is a uint8 (H, W, 3) numpy array, else a one-line :class:`BadValueError`.

    ``order`` only names the expected colour order in the message (it cannot be checked).
    """
    if not isinstance(frame, np.ndarray):
        raise BadValueError(f"frame must be a numpy array (H, W, 3) uint8 {order}, got {type(frame).__name__}")
    if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
        hint = " (grayscale: convert with cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))" if frame.ndim == 2 else ""
        raise BadValueError(f"frame must have shape (H, W, 3) ({order}), got {frame.shape}{hint}")
    if frame.dtype != np.uint8:
        raise BadValueError(f"frame must be uint8 (0-255), got {frame.dtype}; convert it, e.g. "
                            "(frame * 255).clip(0, 255).astype(np.uint8) for a float image in [0, 1]")
    return frame


class OpenCVTracker:
    """OpenCV's tracker API over a pytracking-style tracker (RGB ``initialize`` / ``track``).

    Args:
        tracker: e.g. an :class:`~ebm_refine.tracking.tracker.EBMAtomTracker`.
    """

    def __init__(self, tracker):
        self.tracker = tracker
        self.last_result: Dict[str, Any] = {}

    def init(self, image: np.ndarray, boundingBox) -> None:
        """Start on ``image`` (BGR uint8 (H, W, 3)) from ``boundingBox`` = (x, y, w, h) in pixels.

        Raises:
            BadValueError for a wrong frame, or a box that is degenerate or outside the image.
        """
        rgb = cv2.cvtColor(check_frame(image), cv2.COLOR_BGR2RGB)
        try:
            box = [float(v) for v in boundingBox]
        except (TypeError, ValueError):
            raise BadValueError(f"boundingBox must be 4 numbers (x, y, w, h), got {boundingBox!r}") from None
        try:
            self.tracker.initialize(rgb, {"init_bbox": box})
        except ValueError as e:
            raise BadValueError(f"boundingBox {tuple(box)}: {e}") from None
        self.last_result = {"target_bbox": box, "flag": "init"}

    def update(self, image: np.ndarray) -> Tuple[bool, Box]:
        """Track into ``image`` (BGR uint8 (H, W, 3)); returns ``(found, (x, y, w, h))`` in integer pixels,
        as OpenCV's trackers do (the float box is ``last_result['target_bbox']``)."""
        if not self.last_result:
            raise RuntimeError("call init(frame, box) before update(frame)")
        rgb = cv2.cvtColor(check_frame(image), cv2.COLOR_BGR2RGB)
        res = self.tracker.track(rgb, {})
        self.last_result = res
        x, y, w, h = (int(round(v)) for v in res["target_bbox"])
        return res.get("flag") != "not_found", (x, y, w, h)


def create_tracker(name: str = "ebm", overrides: Optional[Dict[str, Any]] = None) -> OpenCVTracker:
    """An OpenCV-style tracker (``init(frame_bgr, box)`` / ``update(frame_bgr) -> (found, box)``).

    Args:
        name: a parameter file in ``configs/tracking/`` (``ebm``, ``ebm_fast``, ``ebm_paper``, ``iounet``,
            ``norefine``, ...) or the path of a YAML file of your own.
        overrides: tracker parameters over the file's, e.g. ``{"device": "cuda", "checkpoint": "net.pth"}``.
    """
    from .tracker import EBMAtomTracker, load_tracker_params

    return OpenCVTracker(EBMAtomTracker(load_tracker_params(name, overrides)))
