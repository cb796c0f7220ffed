"""The ATOM-style tracker with energy-based box estimation (pytracking's tracker API).

Per frame:

1. crop a square search region around the previous position (``search_area_factor`` x the target's
   geometric-mean size), resample it to ``image_sample_size`` and run the backbone once;
2. the online classifier's score map on ``layer3`` gives the new centre (or says the target is lost,
   or that a distractor makes the answer uncertain);
3. box estimation on the same features (:mod:`.box_estimation`): the classifier's box (new centre,
   previous size) plus random perturbations are refined by gradient ascent on the estimator's output
   with the core refiner, and the final box is the mean of the top-k refined boxes by energy (centre
   and log-size averaged); with ``min_energy_gain`` the previous size is kept unless the refined
   boxes' energy beats the classifier box's by that margin; ``mode: none`` skips this step (centre +
   previous size);
4. scale and position clamps, then the classifier memory is updated with the frame.

``initialize(image, info)`` takes ``info['init_bbox'] = [x, y, w, h]`` (pixels, top-left corner) and
returns ``{'time', 'time_adapt'}`` (seconds; the second for ``box_refinement.adaptation``);
``track(image, info=None)`` returns ``{'target_bbox': [x, y, w, h], 'energy', 'score', 'flag', 'time',
'time_refine'}``. Images are (H, W, 3) RGB uint8 arrays (grayscale (H, W) is accepted).

Devices: the network, the classifier and box estimation run on ``params['device']``; per frame, the
crop goes to the device once and only the classifier's peak and the estimated box (a few numbers) come
back to the host, where the tracker's state (position, size) lives.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor

from ..models.network import TrackerNet, load_net
from ..models.onnx_backbone import OnnxBackbone
from .adaptation import adapt_to_first_frame, check_adaptation
from .box_estimation import estimate_box
from .classifier import OnlineClassifier
from ..processing import CropTransform, as_rgb_image, image_to_tensor, sample_patch, search_region_side
from ...utils.config import merge_params
from .params import RENAMED_KEYS, check_tracker_params, load_tracker_params

__all__ = ["EBMAtomTracker", "validate_init_box"]

REFINEMENT_MODES = ("ebm", "iounet", "none")
BACKBONE_RUNTIMES = ("torch", "onnxruntime")


def validate_init_box(box, image_shape: Tuple[int, int]) -> np.ndarray:
    """Check an initial ``[x, y, w, h]`` box against an image of ``(H, W)`` pixels.

    Raises:
        ValueError if the box is not 4 finite numbers, has zero/negative size, or does not overlap the
        image.
    """
    try:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"init_bbox must be 4 numbers [x, y, w, h], got {box!r}") from None
    if b.shape[0] != 4 or not np.all(np.isfinite(b)):
        raise ValueError(f"init_bbox must be 4 finite numbers [x, y, w, h], got {box!r}")
    if b[2] <= 0 or b[3] <= 0:
        raise ValueError(f"init_bbox has zero or negative size (w={b[2]}, h={b[3]}); the target needs an area")
    h, w = image_shape
    if b[0] >= w or b[1] >= h or b[0] + b[2] <= 0 or b[1] + b[3] <= 0:
        raise ValueError(f"init_bbox {b.tolist()} lies outside the {w}x{h} image")
    return b


class EBMAtomTracker:
    """ATOM-style tracker whose box estimation maximises a learned energy.

    Args:
        params: a parameter dict (see :data:`~ebm_refine.tracking.tracker.params.DEFAULT_TRACKER_PARAMS`)
            or the name/path of a YAML file in ``configs/tracking/``.
        net: optional :class:`TrackerNet` to use instead of loading ``params['checkpoint']``.
        overrides: nested dict merged over the parameters (e.g. ``{"checkpoint": "/x/net.pth"}``).
    """

    def __init__(self, params: Dict[str, Any] | str | None = None, net: Optional[TrackerNet] = None,
                 overrides: Optional[Dict[str, Any]] = None):
        if params is None or isinstance(params, str):
            params = load_tracker_params(params, overrides)
        else:  # a dict built by the caller: the same range checks as a parameter file's
            params = check_tracker_params(merge_params(params, overrides, renamed=RENAMED_KEYS) if overrides
                                          else params)
        self.params = params
        self.mode = params["box_refinement"]["mode"]
        if self.mode not in REFINEMENT_MODES:
            raise ValueError(f"box_refinement.mode must be one of {REFINEMENT_MODES}, got {self.mode!r}")
        if net is None:
            if not params.get("checkpoint"):
                raise ValueError("tracker parameters name no 'checkpoint' and no network was given")
            net = load_net(params["checkpoint"])
        check_adaptation(params["box_refinement"]["adaptation"])
        if int(params["box_refinement"]["adaptation"]["steps"]) > 0:
            if self.mode != "ebm":
                raise ValueError(f"box_refinement.adaptation adapts an energy (mode 'ebm'), not mode {self.mode!r}; "
                                 "set box_refinement.adaptation.steps: 0")
            if net.config["loss"]["method"] == "iou_confidence":
                raise ValueError("box_refinement.adaptation needs a network trained with an EBM loss, and "
                                 f"{params.get('checkpoint') or 'the given network'} was trained with iou_confidence; "
                                 "set box_refinement.adaptation.steps: 0")
        self.device = torch.device(params.get("device", "cpu"))
        self.net = net.to(self.device).eval()
        self.fast_kernels = bool(params["fast_kernels"])
        self._backbone = self.net.backbone
        runtime = params["backbone_runtime"]
        if runtime not in BACKBONE_RUNTIMES:
            raise ValueError(f"backbone_runtime must be one of {BACKBONE_RUNTIMES}, got {runtime!r}")
        if runtime == "onnxruntime":
            if self.device.type != "cpu":
                raise ValueError(f"backbone_runtime: onnxruntime runs on the CPU, not on device {self.device}")
            self._backbone = OnnxBackbone(self._backbone)
        elif self.fast_kernels and self._backbone.frozen:
            # The frozen trunk in channels-last memory (oneDNN's fast layout for its depthwise and 1x1
            # convolutions on a CPU); a copy, so that the caller's network is left as it was.
            self._backbone = copy.deepcopy(self._backbone).to(memory_format=torch.channels_last)
        self.name = params.get("name", "ebm_atom")
        self._initialized = False

    # ------------------------------------------------------------------ helpers
    def _crop(self, image: np.ndarray, center: np.ndarray, size: np.ndarray) -> Tuple[np.ndarray, CropTransform]:
        side = search_region_side(size[0], size[1], self.params["search_area_factor"])
        return sample_patch(image, (center[0], center[1]), side, int(self.params["image_sample_size"]))

    def _features(self, crops: np.ndarray) -> Dict[str, Tensor]:
        x = image_to_tensor(crops).to(self.device)
        if self._backbone is self.net.backbone or isinstance(self._backbone, OnnxBackbone):
            with torch.no_grad():
                return self._backbone(x)
        with torch.no_grad():
            feats = self._backbone(x.contiguous(memory_format=torch.channels_last))
        # Back to the default layout: the classifier and the box estimator see the tensors they always did.
        return {k: v.contiguous() for k, v in feats.items()}

    def _stride(self) -> float:
        return float(self.net.backbone.strides["layer3"])

    def _tensor(self, values) -> Tensor:
        """Host numbers -> float32 tensor on the tracker's device."""
        return torch.as_tensor(np.asarray(values, dtype=np.float32), device=self.device)

    def _to_cells(self, crop_xy: np.ndarray) -> Tensor:
        return self._tensor(np.asarray(crop_xy) / self._stride() - 0.5)

    def _from_cells(self, cells: Tensor) -> np.ndarray:
        return (np.asarray(cells.tolist(), dtype=np.float64) + 0.5) * self._stride()

    def _augment(self, crop: np.ndarray) -> Tuple[List[np.ndarray], List[np.ndarray]]:
        """First-frame augmentations of a target-centred crop, with the target centre in each."""
        cfg = self.params["classifier"]["augmentation"]
        s = crop.shape[0]
        c = np.array([s / 2.0, s / 2.0])
        crops, centers = [crop], [c]
        if cfg.get("flip"):
            crops.append(np.ascontiguousarray(crop[:, ::-1]))
            centers.append(np.array([s - c[0], c[1]]))
        for fx, fy in cfg.get("shifts", []):
            m = np.array([[1.0, 0.0, fx * s], [0.0, 1.0, fy * s]])
            crops.append(cv2.warpAffine(crop, m, (s, s), borderMode=cv2.BORDER_REPLICATE))
            centers.append(c + np.array([fx * s, fy * s]))
        for deg in cfg.get("rotations", []):
            m = cv2.getRotationMatrix2D((s / 2.0 - 0.5, s / 2.0 - 0.5), float(deg), 1.0)
            crops.append(cv2.warpAffine(crop, m, (s, s), borderMode=cv2.BORDER_REPLICATE))
            centers.append(c)  # rotation about the crop centre, where the target is
        for sigma in cfg.get("blur", []):
            crops.append(cv2.GaussianBlur(crop, (0, 0), float(sigma)))
            centers.append(c)
        return crops, centers

    # ------------------------------------------------------------------ API
    def initialize(self, image, info: Dict[str, Any]) -> Dict[str, Any]:
        """Start tracking the target ``info['init_bbox'] = [x, y, w, h]`` in ``image``.

        Raises:
            ValueError for a malformed image, or a box that is degenerate or outside the image.
        """
        t0 = time.perf_counter()
        if not isinstance(info, dict) or "init_bbox" not in info:
            raise ValueError("info must be a dict with 'init_bbox' = [x, y, w, h]")
        image = as_rgb_image(image)
        box = validate_init_box(info["init_bbox"], image.shape[:2])
        self.gen = torch.Generator(device=self.device).manual_seed(int(self.params.get("seed", 0)))
        self.pos = box[:2] + box[2:] / 2.0
        self.size = box[2:].copy()
        self.base_size = box[2:].copy()
        self.frame_num = 1

        crop, tf = self._crop(image, self.pos, self.size)
        crops, centers = self._augment(crop)
        feats = self._features(np.stack(crops))
        ccfg = self.params["classifier"]
        self.classifier = OnlineClassifier(ccfg, structured_gram=self.fast_kernels)
        size_cells = self.size * tf.scale / self._stride()
        sigma = self._tensor([float(ccfg["output_sigma_factor"]) * math.sqrt(size_cells[0] * size_cells[1])] * 2)
        self.classifier.initialize(feats["layer3"], torch.stack([self._to_cells(c) for c in centers]), sigma)

        t_adapt = 0.0
        if self.mode != "none":
            ref_box = self._tensor(tf.boxes_to_crop(np.r_[box[:2], box[:2] + box[2:]]))
            first = {k: v[:1] for k, v in feats.items()}
            with torch.no_grad():
                self.modulation = self.net.estimator.reference(first, ref_box[None])
            if self.mode == "ebm" and int(self.params["box_refinement"]["adaptation"]["steps"]) > 0:
                t1 = time.perf_counter()
                self.modulation = adapt_to_first_frame(self.net, image, box, self.modulation, self.params, self.gen,
                                                       plain=(first, ref_box))
                t_adapt = time.perf_counter() - t1
        self._initialized = True
        return {"time": time.perf_counter() - t0, "time_adapt": t_adapt}

    def track(self, image, info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Locate the target in the next frame; returns ``{'target_bbox': [x, y, w, h], ...}``."""
        if not self._initialized:
            raise RuntimeError("call initialize() before track()")
        t0 = time.perf_counter()
        image = as_rgb_image(image)
        self.frame_num += 1
        crop, tf = self._crop(image, self.pos, self.size)
        feats = self._features(crop)
        ccfg = self.params["classifier"]
        size_cells = self._tensor(self.size * tf.scale / self._stride())
        prior = self._to_cells(tf.boxes_to_crop(np.r_[self.pos, self.pos])[:2])
        loc = self.classifier.localize(self.classifier.scores(feats["layer3"])[0], size_cells, prior)

        energy = float("nan")
        t_refine = 0.0
        if loc.flag != "not_found":
            center_crop = self._from_cells(loc.center)
            new_pos = center_crop / tf.scale + np.array([tf.x0, tf.y0])
            new_size = self.size.copy()
            if self.mode != "none":
                t1 = time.perf_counter()
                est = estimate_box(self.net.estimator, feats, self.modulation, self._tensor(center_crop),
                                   self._tensor(self.size * tf.scale), self.params["box_refinement"], self.gen)
                if est is not None:
                    # The one read-back of box estimation: 4 numbers and 2 energies.
                    values = torch.cat([est.box, est.energy[None], est.initial_energy[None]]).tolist()
                    box_crop, energy, initial = np.asarray(values[:4], dtype=np.float64), values[4], values[5]
                    new_pos = box_crop[:2] / tf.scale + np.array([tf.x0, tf.y0])
                    margin = self.params["box_refinement"]["min_energy_gain"]
                    # Keep the previous size unless the energy clearly prefers the refined box.
                    if margin is None or energy - initial >= float(margin):
                        new_size = box_crop[2:] / tf.scale
                t_refine = time.perf_counter() - t1
            self.size = self._clamp_size(new_size, image.shape[:2])
            self.pos = self._clamp_pos(new_pos, image.shape[:2])
            if loc.flag in ("normal", "hard_negative"):
                hard = loc.flag == "hard_negative"
                lr = ccfg["hard_negative_learning_rate"] if hard else ccfg["learning_rate"]
                solve = hard or (self.frame_num - 1) % int(ccfg["train_skipping"]) == 0
                target_cells = self._to_cells(tf.boxes_to_crop(np.r_[self.pos, self.pos])[:2])
                self.classifier.update(feats["layer3"], target_cells, lr, solve=solve)
        box = np.r_[self.pos - self.size / 2.0, self.size]
        return {"target_bbox": [float(v) for v in box], "energy": energy, "score": float(loc.score),
                "flag": loc.flag, "time": time.perf_counter() - t0, "time_refine": t_refine}

    def _clamp_size(self, size: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
        s = self.params["scale"]
        r = float(s["max_change_per_frame"])
        size = np.clip(size, self.size / r, self.size * r)
        size = np.clip(size, self.base_size * float(s["min_scale_factor"]), self.base_size * float(s["max_scale_factor"]))
        h, w = image_hw
        size = np.minimum(size, np.array([w, h], dtype=np.float64) * float(s["max_image_ratio"]))
        return np.maximum(size, float(s["min_size"]))

    def _clamp_pos(self, pos: np.ndarray, image_hw: Tuple[int, int]) -> np.ndarray:
        # Keep part of the box inside the image so a target that leaves the frame is picked up again
        # near where it left, and the reported box always overlaps the image.
        h, w = image_hw
        r = float(self.params["scale"]["inside_ratio"])
        dims = np.array([w, h], dtype=np.float64)
        inside = np.minimum(r * self.size, dims)
        lo = inside - self.size / 2.0
        hi = dims - inside + self.size / 2.0
        pos = np.where(np.isfinite(pos), pos, self.pos)
        return np.clip(pos, lo, hi)
