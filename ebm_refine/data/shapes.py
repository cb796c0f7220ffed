"""Object classes of the synthetic detection dataset: shape sampling, polygons, rasterisation, fills.

Every object is a union of filled polygons minus hole polygons, in a local frame centred on the
object (pixels, x right, y down), rotated by ``angle``. Rasterisation is hard-edged (no
anti-aliasing): a pixel either belongs to the object or not, so the object's extent, and hence its
tight box, is exactly defined. That is what makes AP75 on this data a meaningful measure of
localisation precision.

The class is carried by the *shape* alone: fills (flat, gradient, stripes, checker, noise) are drawn
independently of the class, so a detector cannot classify by colour or texture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np

__all__ = ["SHAPE_NAMES", "ShapeGeometry", "sample_shape", "shape_polygons", "rasterize", "render_fill"]

SHAPE_NAMES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "ring", "cross")

# Sides below this (px) make rings lose their hole and crosses their arms: the class would become
# ambiguous, which is label noise rather than difficulty.
_MIN_SIDE = 5.0
# cv2.fillPoly fixed-point precision: vertices are placed to 1/16 px.
_SHIFT = 4
_FIXED = float(1 << _SHIFT)


@dataclass(frozen=True)
class ShapeGeometry:
    """One object's geometry before placement.

    Attributes:
        kind: one of :data:`SHAPE_NAMES`.
        width, height: extent in pixels of the unrotated shape along its own axes.
        angle: rotation in radians (counter-clockwise on screen is negative, as y points down).
        params: kind-specific shape parameters, all unitless (see :func:`sample_shape`).
    """

    kind: str
    width: float
    height: float
    angle: float
    params: Tuple[float, ...] = ()


def sample_shape(
    rng: np.random.Generator,
    kind: str,
    size_range: Tuple[float, float],
    aspect_range: Tuple[float, float],
    max_rotation_deg: float,
) -> ShapeGeometry:
    """Draw a shape's size, aspect ratio, rotation and kind-specific parameters.

    The scale ``sqrt(width * height)`` is log-uniform in ``size_range`` (px) and the aspect ratio
    ``width / height`` log-uniform in ``aspect_range``, so small and large, wide and tall objects are
    equally represented on a log scale (as box sizes are in natural images).
    """
    size = math.exp(rng.uniform(math.log(size_range[0]), math.log(size_range[1])))
    aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
    w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
    w, h = max(w, _MIN_SIDE), max(h, _MIN_SIDE)
    angle = math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg))
    params: Tuple[float, ...] = ()
    if kind == "triangle":
        params = (float(rng.uniform(-1.0, 1.0)),)  # apex position along the top edge, -1..1
    elif kind == "ring":
        m = 0.5 * min(w, h)  # smallest semi-axis (px)
        # Inner/outer ratio; keep both the hole and the band at least ~1.5 px wide.
        lo, hi = min(1.5 / m, 0.5), max(1.0 - 1.5 / m, 0.5)
        params = (float(np.clip(rng.uniform(0.4, 0.7), lo, hi)),)
    elif kind == "cross":
        # Bar thicknesses as fractions of the perpendicular extent, and the crossing point's offset
        # from the centre as a fraction of the half-extent ('+' to off-centre crosses).
        th = max(float(rng.uniform(0.25, 0.45)), 2.0 / h)
        tv = max(float(rng.uniform(0.25, 0.45)), 2.0 / w)
        params = (th, tv, float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)))
    elif kind not in SHAPE_NAMES:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPE_NAMES}")
    return ShapeGeometry(kind, w, h, angle, params)


def _ellipse(a: float, b: float) -> np.ndarray:
    """(N, 2) polygon of an axis-aligned ellipse with semi-axes a, b (px), ~1 vertex per 2 px."""
    perimeter = math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))  # Ramanujan
    n = int(np.clip(perimeter / 2.0, 16, 128))
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def shape_polygons(spec: ShapeGeometry) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(fills, holes): lists of (N_i, 2) float64 polygons in the rotated local frame (px).

    The object is the union of ``fills`` minus the union of ``holes``.
    """
    a, b = 0.5 * spec.width, 0.5 * spec.height
    fills: List[np.ndarray]
    holes: List[np.ndarray] = []
    if spec.kind == "rectangle":
        fills = [_rect(-a, -b, a, b)]
    elif spec.kind == "ellipse":
        fills = [_ellipse(a, b)]
    elif spec.kind == "triangle":
        # Apex on the top edge, base along the bottom edge: the triangle spans the full w x h extent.
        fills = [np.array([[spec.params[0] * a, -b], [a, b], [-a, b]])]
    elif spec.kind == "ring":
        fills = [_ellipse(a, b)]
        holes = [_ellipse(a * spec.params[0], b * spec.params[0])]
    elif spec.kind == "cross":
        th, tv, oy, ox = spec.params
        cy, cx = oy * b, ox * a  # crossing point
        fills = [
            _rect(-a, cy - th * b, a, cy + th * b),  # horizontal bar
            _rect(cx - tv * a, -b, cx + tv * a, b),  # vertical bar
        ]
    else:
        raise ValueError(f"unknown shape kind {spec.kind!r}")
    c, s = math.cos(spec.angle), math.sin(spec.angle)
    rot = np.array([[c, s], [-s, c]])  # row-vector convention: p @ rot
    return [p @ rot for p in fills], [p @ rot for p in holes]


def polygon_bounds(spec: ShapeGeometry) -> Tuple[float, float, float, float]:
    """(x_min, y_min, x_max, y_max) of the rotated shape relative to its centre (px)."""
    fills, _ = shape_polygons(spec)
    pts = np.concatenate(fills, axis=0)
    return (float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def rasterize(spec: ShapeGeometry, cx: float, cy: float) -> Tuple[np.ndarray, int, int]:
    """Hard-edged mask of the shape centred at continuous image coordinates (cx, cy) (px).

    Returns:
        patch: (ph, pw) bool mask covering the whole shape, possibly extending beyond the image.
        x0, y0: integer image coordinates of ``patch[0, 0]`` (may be negative).
    Pixel (i, j) covers [j, j+1) x [i, i+1) in continuous coordinates; cv2 puts pixel centres at
    integers, hence the -0.5 shift. Translating by integers never changes the rasterisation, so the
    patch is identical wherever the object lands.
    """
    fills, holes = shape_polygons(spec)
    pts = np.concatenate(fills, axis=0)
    x0 = int(math.floor(cx + pts[:, 0].min())) - 1
    y0 = int(math.floor(cy + pts[:, 1].min())) - 1
    pw = int(math.ceil(cx + pts[:, 0].max())) + 2 - x0
    ph = int(math.ceil(cy + pts[:, 1].max())) + 2 - y0
    patch = np.zeros((ph, pw), dtype=np.uint8)
    offset = np.array([cx - x0 - 0.5, cy - y0 - 0.5])

    def fixed(p: np.ndarray) -> List[np.ndarray]:
        return [np.round((p + offset) * _FIXED).astype(np.int32)]

    # One call per polygon: fillPoly with several contours would XOR where they overlap (cross bars).
    for p in fills:
        cv2.fillPoly(patch, fixed(p), 1, lineType=cv2.LINE_8, shift=_SHIFT)
    for p in holes:
        cv2.fillPoly(patch, fixed(p), 0, lineType=cv2.LINE_8, shift=_SHIFT)
    return patch.astype(bool), x0, y0


def render_fill(
    rng: np.random.Generator, h: int, w: int, base: np.ndarray, amplitude: float
) -> np.ndarray:
    """A (h, w, 3) float32 RGB fill (0..255 scale) for an object patch.

    ``base`` (3,) is the object's mean colour; ``amplitude`` (grey levels) bounds the texture's
    deviation from it, and is kept below the object/background contrast by the caller so that the
    outer edge remains the strongest edge.
    """
    kind = rng.choice(["flat", "gradient", "stripes", "checker", "noise"], p=[0.25, 0.2, 0.2, 0.15, 0.2])
    direction = rng.normal(size=3)
    second = direction / (np.linalg.norm(direction) + 1e-8) * amplitude  # (3,) colour offset
    out = np.empty((h, w, 3), dtype=np.float32)
    out[:] = base
    if kind == "flat":
        return out
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0.0, math.pi)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == "gradient":
        t = proj / max(float(np.abs(proj).max()), 1.0) * 2.0 - 1.0  # -1..1 across the patch
    elif kind == "stripes":
        period = rng.uniform(4.0, 12.0)
        t = np.where(np.sin(2.0 * math.pi * proj / period) >= 0.0, 1.0, -1.0)
    elif kind == "checker":
        cell = int(rng.integers(3, 9))
        t = np.where(((xx // cell + yy // cell) % 2) == 0, 1.0, -1.0)
    else:  # smooth noise at a random grain
        grain = rng.uniform(3.0, 10.0)
        gh, gw = max(2, int(h / grain) + 1), max(2, int(w / grain) + 1)
        t = cv2.resize(rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_LINEAR)
    out += t.astype(np.float32)[..., None] * second.astype(np.float32)
    return out
