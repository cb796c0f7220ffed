"""Search-region crops, the coordinate maps between image and crop pixels, and the training crops' jitter
(pytracking ltr's ``processing_utils``).

Used both by the tracker and by the training pipeline, so the box estimator sees crops made the
same way at training and at tracking time: a square of :func:`search_region_side` image pixels
around the target, cut by :func:`sample_patch`. Training also jitters the test crop's centre and
size (:func:`jitter_box`, the tracker's search region is centred on an imperfect prediction) and its
colours (:func:`photometric_jitter`).

A crop of ``side`` image pixels centred at (cx, cy) is resampled to ``out_size`` x ``out_size``::

    crop_px = (image_px - origin) * scale,   origin = (cx - side / 2, cy - side / 2),  scale = out_size / side

Pixels outside the image replicate the border (as ATOM does), so a target near the edge is still
centred in its crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = ["CropTransform", "as_rgb_image", "sample_patch", "image_to_tensor", "search_region_side", "jitter_box",
           "photometric_jitter"]


@dataclass(frozen=True)
class CropTransform:
    """Maps between image pixels and crop pixels (see module docstring)."""

    x0: float
    y0: float
    scale: float
    out_size: int

    def boxes_to_crop(self, boxes_xyxy: np.ndarray | Tensor):
        """(..., 4) xyxy image pixels -> crop pixels."""
        off = [self.x0, self.y0, self.x0, self.y0]
        if isinstance(boxes_xyxy, Tensor):
            return (boxes_xyxy - boxes_xyxy.new_tensor(off)) * self.scale
        return (np.asarray(boxes_xyxy, dtype=np.float64) - np.asarray(off)) * self.scale

    def boxes_to_image(self, boxes_xyxy: np.ndarray | Tensor):
        """(..., 4) xyxy crop pixels -> image pixels."""
        off = [self.x0, self.y0, self.x0, self.y0]
        if isinstance(boxes_xyxy, Tensor):
            return boxes_xyxy / self.scale + boxes_xyxy.new_tensor(off)
        return np.asarray(boxes_xyxy, dtype=np.float64) / self.scale + np.asarray(off)


def as_rgb_image(image) -> np.ndarray:
    """Validate a frame and return it as (H, W, 3) uint8 RGB.

    Accepts (H, W) or (H, W, 1) grayscale (replicated to 3 channels), (H, W, 3) RGB and (H, W, 4) RGBA
    (alpha dropped); uint8, or float in [0, 255]; numpy arrays or CPU tensors in HWC layout.

    Raises:
        ValueError for anything else (wrong rank, channel count, empty image, non-finite values).
    """
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (H, W[, C]), got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {image.shape}")
    image = image[:, :, :3]
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.dtype != np.uint8:
        img = image.astype(np.float32)
        if not np.isfinite(img).all():
            raise ValueError("image has non-finite values")
        image = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def sample_patch(image: np.ndarray, center: Tuple[float, float], side: float, out_size: int
                 ) -> Tuple[np.ndarray, CropTransform]:
    """Crop a square of ``side`` image pixels around ``center`` and resize it to ``out_size``.

    Args:
        image: (H, W, 3) uint8.
        center: (cx, cy) image pixels.
        side: crop side in image pixels (> 0).
        out_size: output side in pixels.
    Returns:
        (out_size, out_size, 3) uint8 crop and its :class:`CropTransform`.
    """
    if not (side > 0 and math.isfinite(side)):
        raise ValueError(f"crop side must be positive and finite, got {side}")
    cx, cy = float(center[0]), float(center[1])
    x0, y0 = cx - side / 2.0, cy - side / 2.0
    scale = out_size / side
    src = image
    pre = 1
    # Strong downscaling with bilinear warping aliases; shrink by an integer factor with area averaging first.
    if scale < 0.5:
        pre = int(1.0 / scale)
        h, w = image.shape[:2]
        nw, nh = max(1, int(round(w / pre))), max(1, int(round(h / pre)))
        src = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = w / nw, h / nh
    else:
        sx = sy = 1.0
    # Affine map from (pre-shrunk) source pixels to crop pixels; pixel centres at integer + 0.5.
    ax, ay = scale * sx, scale * sy
    m = np.array([[ax, 0.0, 0.5 * ax - 0.5 - x0 * scale], [0.0, ay, 0.5 * ay - 0.5 - y0 * scale]], dtype=np.float64)
    crop = cv2.warpAffine(src, m, (out_size, out_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return crop, CropTransform(x0, y0, scale, out_size)


def search_region_side(width: float, height: float, factor: float) -> float:
    """Side, in image pixels, of the square search region around a (width, height) target: ``factor`` times
    the target's geometric-mean side ``sqrt(w h)`` (the ``search_area_factor`` of tracker and training)."""
    return math.sqrt(float(width) * float(height)) * float(factor)


def jitter_box(rng: np.random.Generator, cx: float, cy: float, w: float, h: float, center_jitter: float,
               scale_jitter: float) -> Tuple[float, float, float, float]:
    """A training crop's jittered target (centre, size), in image pixels.

    Width and height are scaled by ``exp(N(0, scale_jitter))`` each; the centre then moves uniformly by up to
    ``+-center_jitter / 2`` times the jittered ``sqrt(w h)`` on each axis. Draws from ``rng`` in that order
    (two normals, then two uniforms), so a seeded stream gives the same crops.
    """
    w, h = w * math.exp(rng.normal() * scale_jitter), h * math.exp(rng.normal() * scale_jitter)
    off = math.sqrt(w * h) * center_jitter * (rng.random(2) - 0.5)
    return cx + off[0], cy + off[1], w, h


def photometric_jitter(rng: np.random.Generator, crop: np.ndarray, brightness: float,
                       grayscale_prob: float) -> np.ndarray:
    """(H, W, 3) uint8 crop with each channel scaled by U(1 - brightness, 1 + brightness) and, with probability
    ``grayscale_prob``, turned grey; uint8 again."""
    out = crop.astype(np.float32) * rng.uniform(1 - brightness, 1 + brightness, size=3).astype(np.float32)
    if rng.random() < grayscale_prob:
        out = np.repeat(out.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(out, 0, 255).astype(np.uint8)


def image_to_tensor(crops: np.ndarray) -> Tensor:
    """(H, W, 3) or (N, H, W, 3) uint8 -> (1 or N, 3, H, W) float32 in [0, 255]."""
    t = torch.from_numpy(np.ascontiguousarray(crops)).float()
    if t.dim() == 3:
        t = t[None]
    return t.permute(0, 3, 1, 2).contiguous()
