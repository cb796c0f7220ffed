"""Backgrounds and distractors for the synthetic detection dataset.

Clutter is what makes the benchmark a fair test rather than "find the only edge in the image":

* backgrounds: smooth large-scale colour variation (lighting), mid-frequency procedural texture whose
  strength grows with the clutter level, and sometimes a soft periodic pattern; optionally blended
  with a crop of a real photograph;
* distractors that are *not* objects and are never annotated: thin strokes and scribbles, small
  dots (below the smallest object size), soft blobs without a crisp extent, thin polygon outlines,
  and optionally real COCO object instances cut out with their masks.

Distractors are drawn before the objects, so they never hide object pixels: the visible extent of
every object is decided by the objects alone.

All images here are float32 (H, W, 3) RGB arrays on a 0..255 scale, modified in place.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..utils import BadValueError, MissingFileError, read_image

__all__ = ["render_background", "draw_distractors", "CocoObjectSource"]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, grain: float) -> np.ndarray:
    """(h, w, 3) float32 zero-mean, unit-ish noise varying on a length scale of ``grain`` px."""
    gh, gw = max(2, int(h / grain) + 2), max(2, int(w / grain) + 2)
    grid = rng.normal(size=(gh, gw, 3)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def render_background(
    rng: np.random.Generator,
    h: int,
    w: int,
    clutter: float,
    source: Optional["CocoObjectSource"] = None,
    photo_probability: float = 0.0,
) -> np.ndarray:
    """A (h, w, 3) float32 background image; ``clutter`` in [0, 1] scales texture strength."""
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = rng.uniform(40.0, 215.0, size=3)
    # Large-scale colour variation: a few cells across the image, like uneven lighting.
    img += _smooth_noise(rng, h, w, grain=max(h, w) / rng.uniform(2.0, 5.0)) * rng.uniform(10.0, 35.0)
    # Mid-frequency texture. Smooth (cubic) so that it never produces crisp, object-like boundaries.
    img += _smooth_noise(rng, h, w, grain=rng.uniform(3.0, 12.0)) * (3.0 + 15.0 * clutter) * rng.uniform(0.5, 1.0)
    if rng.random() < 0.4 * clutter:
        # Soft periodic pattern (floor boards, fabric): sinusoidal, so again no hard edges.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta, period = rng.uniform(0.0, math.pi), rng.uniform(6.0, 30.0)
        wave = np.sin(2.0 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
        img += wave[..., None] * rng.normal(size=3).astype(np.float32) * rng.uniform(4.0, 12.0)
    if source is not None and rng.random() < photo_probability:
        alpha = rng.uniform(0.5, 1.0)
        img *= 1.0 - alpha
        img += alpha * source.background(rng, h, w)
    return img


def _blend_patch(img: np.ndarray, alpha: np.ndarray, x0: int, y0: int, color: np.ndarray) -> None:
    """Alpha-blend ``color`` (3,) into ``img`` through ``alpha`` (ph, pw) in [0, 1] placed at (x0, y0)."""
    h, w = img.shape[:2]
    ph, pw = alpha.shape
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + pw, w), min(y0 + ph, h)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None]
    region = img[iy0:iy1, ix0:ix1]
    region += a * (color.astype(np.float32) - region)


def _stroke(img: np.ndarray, polys: Sequence[np.ndarray], color: np.ndarray, thickness: int,
            closed: bool, opacity: float) -> None:
    """Anti-aliased polyline(s) (points in image px) drawn into a local patch, then blended."""
    pts = np.concatenate(polys, axis=0)
    margin = thickness + 2
    x0, y0 = int(pts[:, 0].min()) - margin, int(pts[:, 1].min()) - margin
    pw, ph = int(pts[:, 0].max()) + margin - x0 + 1, int(pts[:, 1].max()) + margin - y0 + 1
    layer = np.zeros((ph, pw), dtype=np.uint8)
    local = [np.round((p - (x0, y0)) * 16).astype(np.int32) for p in polys]
    cv2.polylines(layer, local, closed, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
    _blend_patch(img, layer.astype(np.float32) * (opacity / 255.0), x0, y0, color)


def draw_distractors(
    rng: np.random.Generator,
    img: np.ndarray,
    clutter: float,
    size_range: Tuple[float, float],
    source: Optional["CocoObjectSource"] = None,
) -> None:
    """Draw non-object clutter into ``img`` (H, W, 3) in place; counts are Poisson in ``clutter``."""
    h, w = img.shape[:2]
    diag = math.hypot(h, w)
    counts = {
        "stroke": rng.poisson(6.0 * clutter),
        "dot": rng.poisson(10.0 * clutter),
        "blob": rng.poisson(4.0 * clutter),
        "outline": rng.poisson(2.0 * clutter),
        "photo": rng.poisson(2.0 * clutter) if source is not None else 0,
    }
    for kind, n in counts.items():
        for _ in range(n):
            color = rng.uniform(0.0, 255.0, size=3)
            opacity = rng.uniform(0.4, 1.0)
            if kind == "stroke":
                # A scribble: 2-5 points of a random walk, 1-2 px thick.
                steps = rng.normal(size=(int(rng.integers(1, 5)), 2)) * diag * rng.uniform(0.05, 0.2)
                start = rng.uniform((0, 0), (w, h))
                pts = np.concatenate([start[None], start + np.cumsum(steps, axis=0)], axis=0)
                _stroke(img, [pts], color, int(rng.integers(1, 3)), False, opacity)
            elif kind == "dot":
                # Smaller than the smallest object (diameter <= 7 px vs >= size_range[0]).
                r = float(rng.uniform(1.0, min(3.5, 0.3 * size_range[0])))
                cx, cy = rng.uniform(0, w), rng.uniform(0, h)
                n_side = int(math.ceil(r)) + 2
                yy, xx = np.mgrid[-n_side : n_side + 1, -n_side : n_side + 1].astype(np.float32)
                dx, dy = cx - math.floor(cx) - 0.5, cy - math.floor(cy) - 0.5
                alpha = np.clip(r + 0.5 - np.hypot(xx - dx, yy - dy), 0.0, 1.0) * opacity
                _blend_patch(img, alpha, int(math.floor(cx)) - n_side, int(math.floor(cy)) - n_side, color)
            elif kind == "blob":
                # Soft Gaussian blob: no crisp extent, so it cannot be mistaken for a boxed object.
                sigma = rng.uniform(4.0, 20.0)
                n_side = int(3 * sigma)
                yy, xx = np.mgrid[-n_side : n_side + 1, -n_side : n_side + 1].astype(np.float32)
                alpha = np.exp(-(xx**2 + yy**2) / (2.0 * sigma**2)) * opacity * 0.7
                _blend_patch(img, alpha, int(rng.uniform(0, w)) - n_side, int(rng.uniform(0, h)) - n_side, color)
            elif kind == "outline":
                # Thin outline of a star or a polygon: a hard edge of object size, but no filled body.
                r = rng.uniform(size_range[0], min(size_range[1], 0.3 * min(h, w))) * 0.5
                k = int(rng.integers(5, 9))
                t = np.linspace(0.0, 2.0 * math.pi, 2 * k, endpoint=False) + rng.uniform(0, math.pi)
                radius = np.where(np.arange(2 * k) % 2 == 0, r, r * rng.uniform(0.45, 1.0))
                pts = np.stack([np.cos(t) * radius, np.sin(t) * radius], axis=1) + rng.uniform((0, 0), (w, h))
                _stroke(img, [pts], color, 1, True, opacity)
            else:  # a real object instance pasted as a hard negative
                assert source is not None
                rgb, mask = source.instance(rng, rng.uniform(*size_range))
                x0 = int(rng.integers(-mask.shape[1] // 2, w - mask.shape[1] // 2))
                y0 = int(rng.integers(-mask.shape[0] // 2, h - mask.shape[0] // 2))
                alpha = mask.astype(np.float32)
                ph, pw = mask.shape
                ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + pw, w), min(y0 + ph, h)
                if ix1 > ix0 and iy1 > iy0:
                    a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None]
                    src = rgb[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
                    region = img[iy0:iy1, ix0:ix1]
                    region += a * (src - region)


class CocoObjectSource:
    """Photographs and object instances from a COCO-format folder (e.g. ``shared/data/coco/tiny``).

    Used, when enabled, for photographic backgrounds and for real objects pasted as unannotated
    distractors. The folder holds one ``*.json`` annotation file (the first in sorted order is used)
    and the images, either next to it or in a sub-folder. Only polygon (non-crowd) instances with
    boxes of at least 16 px on each side are used.
    """

    def __init__(self, coco_dir: str | Path):
        self.root = Path(coco_dir)
        if not self.root.is_dir():
            raise MissingFileError(f"{self.root}: COCO folder not found; check the path (--coco-dir)")
        jsons = sorted(self.root.glob("*.json"))
        if not jsons:
            raise MissingFileError(f"{self.root}: no COCO annotation json (*.json) in the folder; put the "
                                   "instances json next to the images")
        raw = jsons[0].read_bytes()
        try:
            data = json.loads(raw)
            data["images"], data["annotations"]
        except (ValueError, KeyError, TypeError) as e:
            raise BadValueError(f"{jsons[0]}: not a COCO instances json ({e}); use the instances_*.json of "
                                "a COCO release") from None
        folders = [self.root] + sorted(p for p in self.root.iterdir() if p.is_dir())
        self.files: Dict[int, Path] = {}
        for im in sorted(data["images"], key=lambda d: d["id"]):
            for folder in folders:
                if (folder / im["file_name"]).is_file():
                    self.files[im["id"]] = folder / im["file_name"]
                    break
        self.instances: List[Tuple[int, List[float], List[np.ndarray]]] = []
        for ann in sorted(data["annotations"], key=lambda d: d["id"]):
            seg = ann.get("segmentation")
            x, y, bw, bh = ann["bbox"]
            if ann.get("iscrowd", 0) or not isinstance(seg, list) or min(bw, bh) < 16:
                continue
            if ann["image_id"] in self.files:
                polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in seg if len(p) >= 6]
                if polys:
                    self.instances.append((ann["image_id"], [x, y, bw, bh], polys))
        if not self.files or not self.instances:
            raise BadValueError(f"{self.root}: no usable images/instances (needs polygon instances of at least "
                                f"16 px per side whose images are in the folder); check {jsons[0].name}")
        self.image_ids = sorted(self.files)
        self.fingerprint = hashlib.sha256(raw + "|".join(sorted(self.files[i].name for i in self.image_ids)).encode()).hexdigest()[:16]
        self._cache: Dict[int, np.ndarray] = {}

    def _image(self, image_id: int) -> np.ndarray:
        """(H, W, 3) float32 RGB of one photograph, decoded once and cached."""
        if image_id not in self._cache:
            bgr, _ = read_image(str(self.files[image_id]))
            self._cache[image_id] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
        return self._cache[image_id]

    def background(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        """A random (h, w, 3) float32 crop of a random photograph, resized."""
        photo = self._image(self.image_ids[int(rng.integers(len(self.image_ids)))])
        ph, pw = photo.shape[:2]
        scale = rng.uniform(0.4, 1.0) * min(ph / h, pw / w)
        ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
        y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
        return cv2.resize(photo[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_AREA)

    def instance(self, rng: np.random.Generator, size: float) -> Tuple[np.ndarray, np.ndarray]:
        """A random instance rescaled to ``sqrt(w * h) ~= size`` px: (ph, pw, 3) float32 RGB, (ph, pw) bool."""
        image_id, (x, y, bw, bh), polys = self.instances[int(rng.integers(len(self.instances)))]
        s = size / math.sqrt(bw * bh)
        pw, ph = max(2, int(math.ceil(bw * s))), max(2, int(math.ceil(bh * s)))
        mask = np.zeros((ph, pw), dtype=np.uint8)
        for p in polys:
            cv2.fillPoly(mask, [np.round(((p - (x, y)) * s - 0.5) * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        photo = self._image(image_id)
        x1, y1 = int(x), int(y)
        crop = photo[y1 : y1 + max(1, int(math.ceil(bh))), x1 : x1 + max(1, int(math.ceil(bw)))]
        rgb = cv2.resize(crop, (pw, ph), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        return rgb, mask.astype(bool)
