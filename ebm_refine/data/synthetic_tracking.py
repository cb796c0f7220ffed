"""Procedurally generated tracking sequences for training and held-out testing.

Each sequence is a textured object (rectangle, ellipse or rounded box with a random grating/blob/
checker texture) moving, scaling and changing its aspect ratio over a background that pans slowly. The
background is either procedural (smooth colour fields plus random clutter shapes) or a real image
(e.g. a COCO photo). Optional extras: occluders that cross the scene (drawn over the target), a
distractor object with a similar texture, and a slow global brightness drift.

Everything is a deterministic function of the seed: frames are rendered on demand by ``frame(i)``, so
a data set of thousands of sequences costs nothing until a frame is read, and a held-out test set is
just another seed range.

The ground-truth box is the object's full extent ``[x, y, w, h]`` in pixels (continuous coordinates,
top-left corner) even where it is occluded or partly outside the frame; ``visible[i]`` is False when
less than ``min_visible_fraction`` of the object can be seen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence as _Seq

import cv2
import numpy as np

from ..utils import BadValueError, atomic_write_bytes, atomic_write_text, read_image

__all__ = ["SyntheticConfig", "SyntheticSequence", "SyntheticDataset", "write_sequence"]

_TEX = 64  # texture resolution (pixels); rendered with bilinear warping at any box size


@dataclass
class SyntheticConfig:
    """Generator settings. Sizes are fractions of min(height, width) unless noted; speeds in pixels/frame."""

    height: int = 240
    width: int = 320
    num_frames: int = 60
    min_size: float = 0.12
    max_size: float = 0.4
    max_speed: float = 5.0
    scale_walk: float = 0.02  # std of the per-frame change of log-size
    aspect_walk: float = 0.015  # std of the per-frame change of log-aspect ratio
    camera_speed: float = 1.0  # background pan, pixels/frame
    num_occluders: _Seq[int] = (0, 2)  # inclusive range
    distractor_prob: float = 0.3
    brightness_drift: float = 0.1  # max relative change over the sequence
    noise_std: float = 3.0  # per-frame pixel noise (grey levels)
    min_visible_fraction: float = 0.5
    background_images: List[str] = field(default_factory=list)  # real backgrounds; procedural if empty
    real_background_prob: float = 0.5


def _texture(rng: np.random.Generator) -> np.ndarray:
    """(_TEX, _TEX, 3) float32 texture in [0, 255]."""
    yy, xx = np.mgrid[0:_TEX, 0:_TEX].astype(np.float32) / _TEX
    base = rng.uniform(30, 225, size=3).astype(np.float32)
    tex = np.broadcast_to(base, (_TEX, _TEX, 3)).copy()
    kind = rng.integers(3)
    if kind == 0:  # gratings
        for _ in range(rng.integers(2, 4)):
            ang, freq, ph = rng.uniform(0, np.pi), rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * freq * (np.cos(ang) * xx + np.sin(ang) * yy) + ph)
            tex += wave[..., None] * rng.uniform(-60, 60, size=3).astype(np.float32)
    elif kind == 1:  # coloured blobs
        for _ in range(rng.integers(3, 8)):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            tex += blob[..., None] * rng.uniform(-120, 120, size=3).astype(np.float32)
    else:  # checker with a second colour
        n = rng.integers(2, 6)
        check = ((np.floor(xx * n) + np.floor(yy * n)) % 2)[..., None]
        tex = tex * (1 - check) + check * rng.uniform(30, 225, size=3).astype(np.float32)
    tex += rng.normal(0, 8, size=tex.shape).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.float32)


def _mask(rng: np.random.Generator) -> np.ndarray:
    """(_TEX, _TEX) float32 alpha mask of the object's shape, touching all four texture borders."""
    kind = rng.integers(3)
    yy, xx = (np.mgrid[0:_TEX, 0:_TEX].astype(np.float32) + 0.5) / _TEX * 2 - 1
    if kind == 0:
        m = np.ones((_TEX, _TEX), np.float32)
    elif kind == 1:
        m = (xx ** 2 + yy ** 2 <= 1.0).astype(np.float32)
    else:
        p = rng.uniform(3, 6)  # superellipse: a rounded box
        m = (np.abs(xx) ** p + np.abs(yy) ** p <= 1.0).astype(np.float32)
    return m


def _procedural_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.uniform(0, 255, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    bg = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    detail = cv2.resize(rng.normal(0, 25, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_LINEAR)
    bg = bg + detail
    for _ in range(rng.integers(5, 20)):  # clutter: edges and colours for the classifier to ignore
        colour = tuple(float(c) for c in rng.uniform(0, 255, size=3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.integers(4, max(5, min(h, w) // 5)))
        if rng.random() < 0.5:
            cv2.rectangle(bg, (x, y), (x + s, y + int(s * rng.uniform(0.3, 2))), colour, -1)
        else:
            cv2.circle(bg, (x, y), s // 2, colour, -1)
    return np.clip(bg, 0, 255).astype(np.float32)


def _image_background(path: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img, _ = read_image(path)  # a missing, broken or truncated background is an error naming it
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32)
    ih, iw = img.shape[:2]
    s = max(h / ih, w / iw) * rng.uniform(1.0, 1.5)
    img = cv2.resize(img, (max(w, int(np.ceil(iw * s))), max(h, int(np.ceil(ih * s)))), interpolation=cv2.INTER_AREA)
    y0 = int(rng.integers(0, img.shape[0] - h + 1))
    x0 = int(rng.integers(0, img.shape[1] - w + 1))
    return img[y0:y0 + h, x0:x0 + w].copy()


class _Object:
    """A textured shape with a trajectory of boxes (N, 4) xywh."""

    def __init__(self, rng: np.random.Generator, cfg: SyntheticConfig, n: int, texture=None,
                 size_range=None, speed=None):
        self.texture = _texture(rng) if texture is None else texture
        self.mask = _mask(rng)
        h, w = cfg.height, cfg.width
        short = min(h, w)
        lo, hi = size_range or (cfg.min_size, cfg.max_size)
        size = short * np.exp(rng.uniform(np.log(lo), np.log(hi)))
        log_ar = rng.uniform(-0.7, 0.7)
        pos = np.array([rng.uniform(0.25, 0.75) * w, rng.uniform(0.25, 0.75) * h])
        sp = cfg.max_speed if speed is None else speed
        vel = rng.normal(0, sp / 2, size=2)
        boxes = np.zeros((n, 4))
        log_s = np.log(size)
        for i in range(n):
            ar = np.exp(log_ar)
            bw, bh = np.exp(log_s) * np.sqrt(ar), np.exp(log_s) / np.sqrt(ar)
            boxes[i] = [pos[0] - bw / 2, pos[1] - bh / 2, bw, bh]
            # Smooth random motion: velocity changes slowly and the centre bounces off a margin.
            vel = 0.9 * vel + rng.normal(0, sp / 4, size=2)
            vel = np.clip(vel, -sp, sp)
            pos = pos + vel
            for d, lim in ((0, w), (1, h)):
                if pos[d] < 0.08 * lim or pos[d] > 0.92 * lim:
                    vel[d] = -vel[d]
                    pos[d] = np.clip(pos[d], 0.08 * lim, 0.92 * lim)
            log_s = np.clip(log_s + rng.normal(0, cfg.scale_walk), np.log(short * lo * 0.7), np.log(short * hi * 1.3))
            log_ar = np.clip(log_ar + rng.normal(0, cfg.aspect_walk), -1.0, 1.0)
        self.boxes = boxes

    def render(self, i: int, h: int, w: int):
        """Warped texture (H, W, 3) and alpha (H, W) of frame i."""
        x, y, bw, bh = self.boxes[i]
        sx, sy = bw / _TEX, bh / _TEX
        # Texture pixel centres (u + 0.5) map to x + (u + 0.5) * sx; cv2 indexes pixel centres at integers.
        m = np.array([[sx, 0, x + 0.5 * sx - 0.5], [0, sy, y + 0.5 * sy - 0.5]], dtype=np.float64)
        tex = cv2.warpAffine(self.texture, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        alpha = cv2.warpAffine(self.mask, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        return tex, alpha


def _mask_at(obj: _Object, i: int, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Object alpha (nearest texel) at image points (px, py) in frame i; 0 outside its box."""
    x, y, bw, bh = obj.boxes[i]
    u = np.floor((px - x) / bw * _TEX).astype(int)
    v = np.floor((py - y) / bh * _TEX).astype(int)
    ok = (u >= 0) & (u < _TEX) & (v >= 0) & (v < _TEX)
    return np.where(ok, obj.mask[v.clip(0, _TEX - 1), u.clip(0, _TEX - 1)], 0.0)


class SyntheticSequence:
    """One generated sequence (see module docstring).

    Attributes:
        name: ``synthetic_<seed>``.
        boxes: (N, 4) float64 ``[x, y, w, h]`` pixels.
        visible: (N,) bool.
    """

    def __init__(self, seed: int, cfg: Optional[SyntheticConfig] = None):
        self.cfg = cfg = cfg or SyntheticConfig()
        self.seed = int(seed)
        self.name = f"synthetic_{self.seed:06d}"
        rng = np.random.default_rng([self.seed, 20200823])
        n, h, w = cfg.num_frames, cfg.height, cfg.width
        pad = int(np.ceil(cfg.camera_speed * n)) + 2
        if cfg.background_images and rng.random() < cfg.real_background_prob:
            path = cfg.background_images[int(rng.integers(len(cfg.background_images)))]
            self._background = _image_background(path, rng, h + 2 * pad, w + 2 * pad)
        else:
            self._background = _procedural_background(rng, h + 2 * pad, w + 2 * pad)
        cam_dir = rng.normal(size=2)
        cam_dir /= np.linalg.norm(cam_dir) + 1e-9
        self._camera = pad + np.outer(np.arange(n) - n / 2, cam_dir * cfg.camera_speed * rng.uniform(0, 1))
        self.target = _Object(rng, cfg, n)
        self.distractors: List[_Object] = []
        if rng.random() < cfg.distractor_prob:
            tex = np.clip(self.target.texture + rng.normal(0, 25, size=3).astype(np.float32), 0, 255)
            self.distractors.append(_Object(rng, cfg, n, texture=tex))
        lo, hi = cfg.num_occluders
        self.occluders = [_Object(rng, cfg, n, size_range=(0.08, 0.25), speed=cfg.max_speed * 1.5)
                          for _ in range(int(rng.integers(lo, hi + 1)))]
        self._gain = 1.0 + np.linspace(0, rng.uniform(-cfg.brightness_drift, cfg.brightness_drift), n)
        self._noise_seed = int(rng.integers(2 ** 31))
        self.boxes = self.target.boxes.copy()
        self.visible = np.array([self._visible_fraction(i) >= cfg.min_visible_fraction for i in range(n)])

    def __len__(self) -> int:
        return self.cfg.num_frames

    def _visible_fraction(self, i: int) -> float:
        """Share of the object's area that is inside the frame and not covered by an occluder.

        Estimated on a 12 x 12 grid of points inside the box (exact masks, no rendering), which is
        accurate to a few percent and ~100x cheaper than compositing the frame.
        """
        h, w = self.cfg.height, self.cfg.width
        x, y, bw, bh = self.boxes[i]
        g = (np.arange(12) + 0.5) / 12
        px, py = np.meshgrid(x + g * bw, y + g * bh)
        inside = _mask_at(self.target, i, px, py)
        seen = inside * ((px >= 0) & (px < w) & (py >= 0) & (py < h))
        for occ in self.occluders:
            seen = seen * (1.0 - _mask_at(occ, i, px, py))
        return float(seen.sum()) / max(float(inside.sum()), 1e-6)

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as (H, W, 3) uint8 RGB."""
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        h, w = self.cfg.height, self.cfg.width
        cx, cy = self._camera[i]
        m = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy]])  # the frame is the canvas window at the camera offset
        img = cv2.warpAffine(self._background, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        for obj in self.distractors + [self.target] + self.occluders:  # occluders are drawn last, on top
            tex, alpha = obj.render(i, h, w)
            img = img * (1.0 - alpha[..., None]) + tex * alpha[..., None]
        img = img * self._gain[i]
        img = img + np.random.default_rng([self._noise_seed, i]).normal(0, self.cfg.noise_std, size=img.shape)
        return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticDataset:
    """An indexable family of sequences: item k is ``SyntheticSequence(first_seed + k, cfg)``.

    Sequences are built on access (cheap: a background and a few textures), so worker processes of a
    data loader each build what they read.
    """

    def __init__(self, num_sequences: int, first_seed: int = 0, cfg: Optional[SyntheticConfig] = None,
                 **overrides):
        self.num_sequences = int(num_sequences)
        self.first_seed = int(first_seed)
        self.cfg = replace(cfg or SyntheticConfig(), **overrides)
        self._cache: Dict[int, SyntheticSequence] = {}

    def __len__(self) -> int:
        return self.num_sequences

    def __getitem__(self, k: int) -> SyntheticSequence:
        if not 0 <= k < self.num_sequences:
            raise IndexError(k)
        seq = self._cache.get(k)
        if seq is None:
            if len(self._cache) >= 16:
                self._cache.pop(next(iter(self._cache)))
            seq = self._cache[k] = SyntheticSequence(self.first_seed + k, self.cfg)
        return seq


def write_sequence(seq: SyntheticSequence, out_dir: str) -> str:
    """Write frames (``img/%06d.jpg``, 1-based) and ``groundtruth.txt`` (x,y,w,h per line) to
    ``out_dir/<name>``, a layout the generic folder loader of :mod:`ebm_refine.tracking.datasets` reads.

    Every file is written atomically, so a frame that exists is complete: a run killed half-way is
    resumed by writing the missing frames only.

    Returns the sequence folder.
    """
    folder = os.path.join(out_dir, seq.name)
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    for i in range(len(seq)):
        path = os.path.join(folder, "img", f"{i + 1:06d}.jpg")
        if not os.path.isfile(path):
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(seq.frame(i), cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise BadValueError(f"{path}: OpenCV cannot encode the frame as JPEG")
            atomic_write_bytes(path, data.tobytes())
    atomic_write_text(os.path.join(folder, "groundtruth.txt"),
                      "".join(",".join(f"{v:.3f}" for v in box) + "\n" for box in seq.boxes))
    return folder
