"""What the demo (``ebm-refine demo``, ebm_refine/cli/demo.py) draws and the predictors behind it (the
counterpart of Detectron2's demo/predictor.py).

- :class:`DetectionDemo`: :class:`~ebm_refine.detectron2.EBMPredictor` (Detectron2's ``DefaultPredictor``
  loading with :class:`~ebm_refine.detectron2.EBMCheckpointer`) and :func:`draw_detections`: the detector's boxes
  before refinement thin and dashed, the EBM-refined boxes solid, labelled with class, score and energy, and the
  model's time on the frame (detector and refinement apart when the model refines in a separate stage).
- :class:`TrackingDemo`: the ATOM-style EBM tracker (:func:`build_tracker`) and its box, labelled with the
  energy of the estimated box, plus the ground truth (dashed) when there is one and the tracker's time for
  the frame. The energy is the network's score f(x, y) of the box y in the frame x (p(y | x) is proportional
  to exp f): higher means a better-fitting box; its scale depends on the network, so compare values within
  one video.

Both are callables ``(frame_index, frame) -> image`` on BGR uint8 (H, W, 3) frames, the form
:func:`ebm_refine.utils.video.write_frames` renders. Boxes are in pixels of the frame. Problems that may
repeat on every frame go to ``warn(kind, message)`` (the demo prints the first of each kind and counts).
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from ebm_refine.core.boxes import xywh_to_xyxy
from ebm_refine.utils import BadValueError, UserError

Color = Tuple[int, int, int]  # BGR
Warn = Callable[[str, str], None]

PALETTE = [(66, 135, 245), (60, 180, 75), (230, 25, 75), (255, 225, 25), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (245, 130, 48), (0, 128, 128), (170, 110, 40)]  # RGB
LEGEND_GREY: Color = (200, 200, 200)
ENERGY_LEGEND = "energy: the EBM's score of the box, higher = better fit"
DASH_PX = 6
# Below this many pixels on the short side text becomes unreadable; at 700 px it is OpenCV's scale 1.
MIN_FONT_SCALE, FONT_SCALE_PX = 0.3, 700.0
FONT = cv2.FONT_HERSHEY_SIMPLEX


# ------------------------------------------------------------------------------------------- drawing
def color(i: int) -> Color:
    """BGR colour of class (or role) ``i``."""
    r, g, b = PALETTE[i % len(PALETTE)]
    return (b, g, r)


def dashed_line(img: np.ndarray, a: Tuple[float, float], b: Tuple[float, float], col: Color,
                thickness: int = 1, dash: int = DASH_PX) -> None:
    """A dashed segment from ``a`` to ``b`` (pixels): dashes and gaps of ``dash`` pixels, starting with a dash."""
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    steps = max(int(length // dash), 1)
    for s in range(0, steps, 2):
        t0, t1 = s / steps, min((s + 1) / steps, 1.0)
        p = (int(round(a[0] + (b[0] - a[0]) * t0)), int(round(a[1] + (b[1] - a[1]) * t0)))
        q = (int(round(a[0] + (b[0] - a[0]) * t1)), int(round(a[1] + (b[1] - a[1]) * t1)))
        cv2.line(img, p, q, col, thickness, cv2.LINE_AA)


def draw_box(img: np.ndarray, box: Sequence[float], col: Color, thickness: int = 1, dashed: bool = False) -> None:
    """A rectangle ``x0, y0, x1, y1`` (pixels), solid or dashed (OpenCV draws no dashed one)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not dashed:
        cv2.rectangle(img, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), col, thickness,
                      cv2.LINE_AA)
        return
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        dashed_line(img, a, b, col, thickness)


def font_scale(img: np.ndarray) -> float:
    """Text size that stays readable from 128 px thumbnails to HD video."""
    return max(MIN_FONT_SCALE, min(img.shape[:2]) / FONT_SCALE_PX)


def label(img: np.ndarray, text: str, org: Tuple[int, int], col: Color) -> None:
    """Text with its bottom-left at ``org`` (kept inside the image) on a filled background of colour ``col``."""
    fs = font_scale(img)
    (tw, th), base = cv2.getTextSize(text, FONT, fs, 1)
    x = int(np.clip(org[0], 0, max(img.shape[1] - tw - 2, 0)))
    y = int(np.clip(org[1], th + base + 1, img.shape[0] - 1))
    cv2.rectangle(img, (x, y - th - base - 1), (x + tw + 2, y), col, -1)
    lum = 0.114 * col[0] + 0.587 * col[1] + 0.299 * col[2]  # ITU-R BT.601 luma: dark text on light colours
    cv2.putText(img, text, (x + 1, y - base), FONT, fs, (0, 0, 0) if lum > 140 else (255, 255, 255), 1, cv2.LINE_AA)


def legend(img: np.ndarray, entries: Sequence[Tuple[str, Color, bool]], extra: Sequence[str] = ()) -> None:
    """Top-left legend on a darkened panel: a line sample per ``(text, colour, dashed)`` entry, then text lines."""
    fs = font_scale(img)
    (_, th), base = cv2.getTextSize("Ag", FONT, fs, 1)
    line_h = th + base + 4
    sample = int(3 * th) + 6
    widths = [cv2.getTextSize(t, FONT, fs, 1)[0][0] for t, _, _ in entries]
    widths += [cv2.getTextSize(t, FONT, fs, 1)[0][0] - sample - 4 for t in extra]
    w = sample + 8 + max(widths + [0])
    h = line_h * (len(entries) + len(extra)) + 4
    overlay = img.copy()
    cv2.rectangle(overlay, (2, 2), (2 + w, 2 + h), (0, 0, 0), -1)
    cv2.addWeighted(overlay, 0.55, img, 0.45, 0, dst=img)
    y = 2 + line_h
    for text, col, dashed in entries:
        yl = y - th // 2 - 1
        if dashed:
            dashed_line(img, (6, yl), (6 + sample, yl), col, 1, dash=4)
        else:
            cv2.line(img, (6, yl), (6 + sample, yl), col, 2, cv2.LINE_AA)
        cv2.putText(img, text, (10 + sample, y - 2), FONT, fs, (255, 255, 255), 1, cv2.LINE_AA)
        y += line_h
    for text in extra:
        cv2.putText(img, text, (6, y - 2), FONT, fs, (255, 255, 255), 1, cv2.LINE_AA)
        y += line_h


# ----------------------------------------------------------------------------------------- detection
def class_names(cfg) -> List[str]:
    """``thing_classes`` of the config's test (else train) dataset when known, else COCO's 80 classes (in
    Detectron2's contiguous order, that of COCO-trained detectors such as YOLOX) for an 80-class model."""
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        names = MetadataCatalog.get(name).get("thing_classes", None)
        if names:
            return list(names)
    coco = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    return coco if cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(coco) else []


def draw_detections(frame: np.ndarray, instances, names: List[str], threshold: float,
                    warn: Optional[Warn] = None, info: Sequence[str] = ()) -> np.ndarray:
    """A copy of ``frame`` with the detections scoring at least ``threshold``: unrefined boxes dashed and thin,
    refined boxes solid, labelled with class name, score and energy ``f`` (``n/a`` when not finite); ``info``
    lines (e.g. the time per frame) go under the legend."""
    img = frame.copy()
    inst = instances[instances.scores >= threshold]
    refined = inst.pred_boxes.tensor.numpy()
    unrefined = inst.pred_boxes_unrefined.tensor.numpy() if inst.has("pred_boxes_unrefined") else None
    scores = inst.scores.numpy()
    classes = inst.pred_classes.numpy()
    energies = inst.pred_energies.numpy() if inst.has("pred_energies") else None
    if energies is not None and warn is not None and not np.isfinite(energies).all():
        warn("a non-finite energy", f"{int((~np.isfinite(energies)).sum())} detection(s) with a non-finite energy "
             "(drawn as f=n/a): the energy head is broken (non-finite weights?); check MODEL.WEIGHTS")
    for i in np.argsort(scores):  # low scores first, so that the confident boxes are drawn on top
        col = color(int(classes[i]))
        if unrefined is not None:
            draw_box(img, unrefined[i], col, 1, dashed=True)
        draw_box(img, refined[i], col, 2)
        cls = names[classes[i]] if 0 <= classes[i] < len(names) else f"class {classes[i]}"
        text = f"{cls} {scores[i]:.2f}"
        if energies is not None:
            text += f" f={energies[i]:.2f}" if math.isfinite(energies[i]) else " f=n/a"
        label(img, text, (int(round(refined[i][0])), int(round(refined[i][1])) - 2), col)
    legend(img, [("detector (unrefined)", LEGEND_GREY, True), ("EBM-refined", LEGEND_GREY, False)],
           [f"{len(scores)} detections >= {threshold:.2f}", *info])
    return img


class DetectionDemo:
    """``(index, frame) -> image``: the detections of :class:`~ebm_refine.detectron2.EBMPredictor` drawn by
    :func:`draw_detections` with the time the model took on the frame. Builds the model and loads
    ``cfg.MODEL.WEIGHTS``.

    Attributes:
        timing: ``{"total": s}`` of the last frame, in seconds, plus ``"refine"`` (the energy head's gradient
            ascent) and ``"detect"`` (the rest) for a model that refines its detector's boxes in a separate
            stage (``EBMYOLOX``: its ``EnergyROIHeads``).
    """

    def __init__(self, cfg, threshold: float, warn: Optional[Warn] = None):
        from ebm_refine.detectron2 import EBMPredictor
        from ebm_refine.detectron2.refiner import EnergyROIHeads

        self.predictor = EBMPredictor(cfg)
        self.names = class_names(cfg)
        self.threshold = threshold
        self.warn = warn
        self.timing: Dict[str, float] = {}
        self._sync = torch.cuda.synchronize if self.predictor.model.device.type == "cuda" else (lambda: None)
        refiner = getattr(self.predictor.model, "roi_heads", None)
        if isinstance(refiner, EnergyROIHeads):  # refinement only (EBMRCNN's ROI heads also classify)
            refiner.register_forward_pre_hook(lambda *_: self._mark("refine_start"))
            refiner.register_forward_hook(lambda *_: self._mark("refine_end"))

    def _mark(self, event: str) -> None:
        self._sync()
        self.timing[event] = time.perf_counter()

    def time_text(self) -> str:
        """The last frame's time, e.g. ``"detect 41 ms + refine 23 ms"`` or ``"model 64 ms"``."""
        t = self.timing
        if "refine" in t:
            return f"detect {1e3 * t['detect']:.0f} ms + refine {1e3 * t['refine']:.0f} ms"
        return f"model {1e3 * t['total']:.0f} ms"

    def __call__(self, index: int, frame: np.ndarray) -> np.ndarray:
        self.timing = {}
        self._mark("start")
        instances = self.predictor(frame)
        self._mark("end")
        t = self.timing
        self.timing = {"total": t["end"] - t["start"]}
        if "refine_end" in t:
            self.timing["refine"] = t["refine_end"] - t["refine_start"]
            self.timing["detect"] = self.timing["total"] - self.timing["refine"]
        # draw_detections is looked up at call time, so that a test can wrap it.
        return draw_detections(frame, instances, self.names, self.threshold, self.warn, [self.time_text()])


# ------------------------------------------------------------------------------------------ tracking
def build_tracker(tracker_params: str, overrides: Dict[str, Any]):
    """The EBM tracker from a parameter file (a name in ``configs/tracking/`` or a path) plus overrides.

    Returns ``(tracker, network_path)``. A network file of the wrong kind (a Detectron2 checkpoint, a text
    file) and bad parameters are one-line errors naming them.
    """
    from ebm_refine.tracking.models.network import load_net
    from ebm_refine.tracking.tracker.ebm_atom import EBMAtomTracker
    from ebm_refine.tracking.tracker.params import load_tracker_params

    try:
        params = load_tracker_params(tracker_params, overrides)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise BadValueError(f"--tracker-params {tracker_params!r} / --set: {str(e).strip(chr(39))}") from None
    checkpoint = params.get("checkpoint") or ""
    net = load_net(checkpoint)  # a UserError naming the file when it is not a tracker network
    try:
        return EBMAtomTracker(params, net=net), checkpoint
    except ValueError as e:
        raise BadValueError(f"--tracker-params {tracker_params!r} / --set: {e}") from None


def _xyxy(box_xywh: Sequence[float]) -> List[float]:
    return xywh_to_xyxy(torch.as_tensor(box_xywh, dtype=torch.float64)).tolist()


class TrackingDemo:
    """``(index, frame) -> image``: the tracker started on frame 0 from ``init_box``, its box on every frame.

    Args:
        tracker: a pytracking-style tracker (``initialize(image, info)``, ``track(image, info)`` on RGB images,
            ``target_bbox`` x, y, w, h in pixels; ``energy`` and ``flag`` when it has them).
        init_box: x, y, w, h of the target in frame 0, in pixels.
        ground_truth: (N, 4) x, y, w, h per frame (NaN rows are not drawn), or None.
        network: the tracker network's path, named when its energies are not finite.
    """

    def __init__(self, tracker, init_box: Sequence[float], ground_truth: Optional[np.ndarray] = None,
                 network: str = "", warn: Optional[Warn] = None):
        self.tracker, self.init_box, self.ground_truth = tracker, list(init_box), ground_truth
        self.network, self.warn = network, warn
        self.track_color, self.gt_color = color(1), color(3)

    def _step(self, index: int, frame: np.ndarray) -> Tuple[List[float], str, float]:
        """Initialise on frame 0 or track; returns the box, the text describing it and the tracker's seconds."""
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if index == 0:
            res = self.tracker.initialize(rgb, {"init_bbox": list(self.init_box)}) or {}
            return self.init_box, "initial box", float(res.get("time", float("nan")))
        res = self.tracker.track(rgb, {})
        energy = float(res.get("energy", float("nan")))
        info = f"energy {energy:.3f}" if math.isfinite(energy) else "energy n/a"
        # NaN is normal without refinement (norefine parameters) or when the target is not found.
        if (not math.isfinite(energy) and getattr(self.tracker, "mode", "none") != "none"
                and res.get("flag") != "not_found" and self.warn is not None):
            self.warn("a non-finite energy", f"frame {index + 1}: the box energy is {energy}, so box refinement "
                      f"cannot work; the network {self.network} is probably broken (non-finite or overflowing "
                      "weights)")
        if res.get("flag") not in (None, "normal"):
            info += f" ({res['flag']})"
        return res["target_bbox"], info, float(res.get("time", float("nan")))

    def __call__(self, index: int, frame: np.ndarray) -> np.ndarray:
        box, info, seconds = self._step(index, frame)
        img = frame.copy()
        entries = [("tracker (EBM)", self.track_color, False)]
        if self.ground_truth is not None:
            entries.append(("ground truth", self.gt_color, True))
            if index < len(self.ground_truth) and np.isfinite(self.ground_truth[index]).all():
                draw_box(img, _xyxy(self.ground_truth[index]), self.gt_color, 1, dashed=True)
        draw_box(img, _xyxy(box), self.track_color, 2)
        label(img, info, (int(box[0]), int(box[1]) - 2), self.track_color)
        took = f"  {1000 * seconds:.0f} ms" if math.isfinite(seconds) else ""
        legend(img, entries, [f"frame {index + 1}  {info}{took}", ENERGY_LEGEND])
        return img
