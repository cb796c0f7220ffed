"""Classical baseline trackers with pytracking's API. **Baselines, not our method**: they exist so that the
runner, the metrics and the reports can be exercised end to end, and to give a floor to compare against.
:class:`OpenCVContribTracker` wraps OpenCV-contrib's CSRT and KCF, the classical trackers a user could pick
instead of a learned one (optional dependency ``opencv-contrib-python-headless``); :class:`OpenCVNanoTracker`
wraps OpenCV's NanoTrack (a small Siamese network in ONNX, run by OpenCV's DNN module), the learned CPU tracker
a user would compare against.

API (pytracking's)::

    out = tracker.initialize(image, {"init_bbox": [x, y, w, h]})
    out = tracker.track(image, info)          # out["target_bbox"] == [x, y, w, h]

``image`` is an (H, W, 3) uint8 RGB array; boxes are in pixels, ``x, y`` the top-left corner.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence as _Seq

import numpy as np


class IdentityTracker:
    """Reports the initial box in every frame (got10k's sanity baseline): the score of "no tracking"."""

    def initialize(self, image: np.ndarray, info: Dict[str, Any]) -> Dict[str, Any]:
        self.box = [float(v) for v in info["init_bbox"]]
        return {"target_bbox": list(self.box)}

    def track(self, image: np.ndarray, info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        return {"target_bbox": list(self.box)}


class NCCTracker:
    """Normalised cross-correlation template tracker (OpenCV ``matchTemplate``, ``TM_CCOEFF_NORMED``).

    The target's first-frame appearance (grey levels) is the template. In each frame a search window of
    ``search_area`` times the target size around the previous centre is resampled so that the target has
    template size, at each relative scale in ``scales``; the best normalised correlation wins (non-unit
    scales are multiplied by ``scale_penalty`` so the size does not drift on noise). The size follows the
    winning scale with rate ``scale_lr``; the template is blended with the new appearance at rate
    ``template_lr`` (0 keeps the first frame's template: no drift, but no adaptation to appearance change;
    the default 0.05 follows slow changes).

    Args:
        search_area: side of the search window relative to the target side.
        scales: relative scales tried per frame.
        scale_penalty: factor on the correlation score of scales other than 1.
        scale_lr: how fast the box size moves to the winning scale (0..1).
        template_lr: template update rate (0..1).
        max_template_side: the template is downsampled so that its longer side is at most this many
            pixels (speed; correlation is computed at that resolution).
        min_score: below this correlation the target is considered lost and the box is kept in place.
    """

    def __init__(self, search_area: float = 2.5, scales: _Seq[float] = (0.97, 1.0, 1.03),
                 scale_penalty: float = 0.985, scale_lr: float = 0.6, template_lr: float = 0.05,
                 max_template_side: int = 48, min_score: float = 0.2) -> None:
        self.search_area = float(search_area)
        self.scales = tuple(float(s) for s in scales)
        self.scale_penalty = float(scale_penalty)
        self.scale_lr = float(scale_lr)
        self.template_lr = float(template_lr)
        self.max_template_side = int(max_template_side)
        self.min_score = float(min_score)

    @staticmethod
    def _gray(image: np.ndarray) -> np.ndarray:
        import cv2

        if image.ndim == 2:
            return image.astype(np.float32)
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32)

    @staticmethod
    def _crop(gray: np.ndarray, center: np.ndarray, size: np.ndarray, out_size) -> np.ndarray:
        """Crop ``size`` (w, h) pixels around ``center`` (border pixels replicated outside the image)
        and resample to ``out_size`` (w, h)."""
        import cv2

        w, h = max(int(round(size[0])), 1), max(int(round(size[1])), 1)
        # getRectSubPix puts pixel centres at integers; our boxes put them at i + 0.5
        patch = cv2.getRectSubPix(gray, (w, h), (float(center[0]) - 0.5, float(center[1]) - 0.5))
        return cv2.resize(patch, (int(out_size[0]), int(out_size[1])), interpolation=cv2.INTER_AREA)

    def initialize(self, image: np.ndarray, info: Dict[str, Any]) -> Dict[str, Any]:
        x, y, w, h = (float(v) for v in info["init_bbox"])
        if w <= 0 or h <= 0:
            raise ValueError(f"NCCTracker needs a box with positive size, got {info['init_bbox']}")
        self.center = np.array([x + w / 2.0, y + h / 2.0])
        self.size = np.array([w, h])
        r = min(1.0, self.max_template_side / max(w, h))
        self.tsize = (max(int(round(w * r)), 4), max(int(round(h * r)), 4))
        self.template = self._crop(self._gray(image), self.center, self.size, self.tsize)
        return {"target_bbox": [x, y, w, h]}

    def track(self, image: np.ndarray, info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        import cv2

        gray = self._gray(image)
        tw, th = self.tsize
        best = (-np.inf, None, None, 1.0)
        for s in self.scales:
            size = self.size * s
            ratio = tw / size[0]                       # template pixels per image pixel
            region = size * self.search_area
            out = (max(int(round(region[0] * ratio)), tw + 1), max(int(round(region[1] * ratio)), th + 1))
            patch = self._crop(gray, self.center, region, out)
            resp = cv2.matchTemplate(patch, self.template, cv2.TM_CCOEFF_NORMED)
            _, score, _, loc = cv2.minMaxLoc(resp)
            if s != 1.0:
                score *= self.scale_penalty
            if score > best[0]:
                # offset of the matched template centre from the patch centre, back in image pixels
                # (patch pixels -> image pixels is region / out per axis)
                offset = (np.array(loc, float) + np.array([tw, th]) / 2.0 - np.array(out) / 2.0) * (region / np.array(out))
                best = (score, offset, patch, s)
        score, offset, _, s = best
        if np.isfinite(score) and score >= self.min_score:
            self.center = self.center + offset
            self.size = self.size * (1.0 + self.scale_lr * (s - 1.0))
            if self.template_lr > 0:
                new = self._crop(gray, self.center, self.size, self.tsize)
                self.template = (1.0 - self.template_lr) * self.template + self.template_lr * new
        hgt, wid = gray.shape[:2]
        # keep the centre inside the image so that a lost target can be re-found
        self.center = np.clip(self.center, [0.0, 0.0], [wid - 1.0, hgt - 1.0])
        w, h = self.size
        return {"target_bbox": [float(self.center[0] - w / 2.0), float(self.center[1] - h / 2.0), float(w), float(h)],
                "score": float(score)}


_CONTRIB = {"csrt": "TrackerCSRT", "kcf": "TrackerKCF"}


def require_opencv_contrib() -> None:
    """Raise a :class:`~ebm_refine.utils.UserError` unless OpenCV's contrib trackers can be imported.

    They come with ``opencv-contrib-python-headless``, which must be the version of the installed OpenCV
    (both packages provide the ``cv2`` module; the one installed last wins).
    """
    import cv2

    from ...utils.errors import UserError

    if not all(hasattr(cv2, cls) for cls in _CONTRIB.values()):
        raise UserError(
            f"the csrt / kcf baselines need OpenCV's contrib trackers, which this cv2 ({cv2.__version__}) lacks; "
            f"pip install 'opencv-contrib-python-headless=={cv2.__version__}.*' (ebm_refine's own dependency),"
            f" the same version as the installed OpenCV")


class OpenCVContribTracker:
    """OpenCV-contrib's CSRT (Lukezic et al., CVPR 2017) or KCF (Henriques et al., TPAMI 2015) tracker.

    A peer baseline a user could pick instead of a learned tracker: classical correlation filters on
    hand-crafted features, OpenCV's default parameters. OpenCV takes integer boxes; the initial box is
    rounded. When OpenCV reports a failure the previous box is kept (pytracking's API needs a box in
    every frame) and ``found`` is False.

    Args:
        algorithm: ``"csrt"`` or ``"kcf"``.
    """

    def __init__(self, algorithm: str = "csrt") -> None:
        if algorithm not in _CONTRIB:
            raise ValueError(f"algorithm must be one of {sorted(_CONTRIB)}, got {algorithm!r}")
        require_opencv_contrib()
        self.algorithm = algorithm

    def initialize(self, image: np.ndarray, info: Dict[str, Any]) -> Dict[str, Any]:
        import cv2

        x, y, w, h = (float(v) for v in info["init_bbox"])
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.algorithm} needs a box with positive size, got {info['init_bbox']}")
        self.tracker = self._create()
        rect = (int(round(x)), int(round(y)), max(1, int(round(w))), max(1, int(round(h))))
        self.tracker.init(self._bgr(image), rect)
        self.box = [float(v) for v in rect]
        return {"target_bbox": list(self.box)}

    def _create(self) -> Any:
        import cv2

        return getattr(cv2, _CONTRIB[self.algorithm]).create()

    def track(self, image: np.ndarray, info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        found, rect = self.tracker.update(self._bgr(image))
        if found and rect[2] > 0 and rect[3] > 0:
            self.box = [float(v) for v in rect]
        return {"target_bbox": list(self.box), "found": bool(found)}

    @staticmethod
    def _bgr(image: np.ndarray) -> np.ndarray:
        import cv2

        if image.ndim == 2:
            return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2BGR)
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)


# NanoTrack v2's two ONNX files (HonglinChu/SiamTrackers, NanoTrack/models/nanotrackv2/), found like the other
# weights files: by file name in $EBM_WEIGHTS_DIR, else <repo>/../shared/weights.
NANOTRACK_FILES = {"backbone": "nanotrack_backbone_sim.onnx", "neckhead": "nanotrack_head_sim.onnx"}
_NANOTRACK_SOURCE = ("HonglinChu/SiamTrackers on GitHub, NanoTrack/models/nanotrackv2/ (the files OpenCV's "
                     "TrackerNano sample uses)")


def require_opencv_nano() -> None:
    """Raise a :class:`~ebm_refine.utils.UserError` unless this cv2 has ``TrackerNano`` (OpenCV >= 4.7)."""
    import cv2

    from ...utils.errors import UserError

    if not hasattr(cv2, "TrackerNano"):
        raise UserError(f"the nano peer needs cv2.TrackerNano (OpenCV >= 4.7), which this cv2 ({cv2.__version__}) "
                        "lacks; pip install 'opencv-contrib-python-headless>=4.7'")


def nanotrack_files(backbone: Optional[str] = None, neckhead: Optional[str] = None) -> Dict[str, str]:
    """The two NanoTrack ONNX paths: the given ones, else the shared files (see :data:`NANOTRACK_FILES`).

    A relative path that does not exist is looked up where the weights live
    (:func:`ebm_refine.models.imagenet.resolve_weights`).

    Raises:
        UserError naming every missing file and where to get it.
    """
    import os

    from ...models.imagenet import resolve_weights
    from ...utils.errors import UserError

    given = {"backbone": backbone, "neckhead": neckhead}
    paths = {k: resolve_weights(os.path.expanduser(given[k] or NANOTRACK_FILES[k])) for k in NANOTRACK_FILES}
    missing = [f"{k}={p}" for k, p in paths.items() if not os.path.isfile(p)]
    if missing:
        raise UserError(f"NanoTrack ONNX file(s) not found: {', '.join(missing)}; get {NANOTRACK_FILES['backbone']} "
                        f"and {NANOTRACK_FILES['neckhead']} from {_NANOTRACK_SOURCE} into $EBM_WEIGHTS_DIR, or "
                        "pass --set backbone=<file> neckhead=<file>")
    return paths


class OpenCVNanoTracker(OpenCVContribTracker):
    """OpenCV's NanoTrack (``cv2.TrackerNano``): a Siamese tracker with a small ONNX backbone and head.

    A learned peer, not our method. Same behaviour as :class:`OpenCVContribTracker` (integer initial
    box, the previous box kept when OpenCV reports a failure); frames are converted to BGR, what OpenCV reads
    from a file and what its NanoTrack sample feeds the networks.

    Args:
        backbone, neckhead: the ONNX files (None: the shared NanoTrack v2 files, :func:`nanotrack_files`).
    """

    def __init__(self, backbone: Optional[str] = None, neckhead: Optional[str] = None) -> None:
        require_opencv_nano()
        self.algorithm = "nano"
        self.files = nanotrack_files(backbone, neckhead)

    def _create(self) -> Any:
        import cv2

        p = cv2.TrackerNano_Params()
        p.backbone, p.neckhead = self.files["backbone"], self.files["neckhead"]
        return cv2.TrackerNano.create(p)
