"""A deterministic synthetic detection dataset in COCO format, for the embedded benchmark.

What an image contains (see :mod:`.shapes` and :mod:`.clutter` for the details):

* a procedural background (lighting, texture, soft patterns) and unannotated distractors (strokes,
  dots, soft blobs, thin outlines; optionally real COCO photos and object cut-outs);
* 2-8 objects (by default) of the classes in :data:`CLASS_NAMES`, each a hard-edged shape with a
  random colour and texture, of scale ``sqrt(w * h)`` log-uniform in 12-100 px and aspect ratio
  log-uniform in 1/3-3 on 256 x 256 images, rotated by up to 30 degrees;
* occlusion: objects are painted in order, later ones on top. With probability ``occlusion`` an
  object is placed deliberately overlapping an earlier one; with probability ``truncation`` it may
  extend past the image border.

Annotation rules (COCO's: the box is the tight box of the *visible* mask)
-----------------------------------------------------------------------
* ``bbox`` = tight ``[x, y, w, h]`` box of the object's visible pixels; ``area`` = their count;
  ``segmentation`` = COCO compressed RLE of the visible mask. Extra fields: ``visible_fraction``
  (visible pixels / pixels of the whole silhouette, counting parts hidden by other objects *and*
  parts outside the image) and ``amodal_bbox`` (tight box of the whole silhouette, may leave the
  image).
* ``visible_fraction >= min_visible_fraction`` (0.3, i.e. at most 70 % hidden) and a visible box of
  at least ``min_visible_side`` px on each side: a normal annotation (``iscrowd = 0``).
* otherwise, if any pixel is visible: ``iscrowd = 1``, an ignore region. Detectron2 drops crowd
  boxes from training, and COCOeval neither rewards nor penalises detections matched to them, so a
  detector is not punished for finding a mostly hidden object. Fully hidden objects are dropped.
* Placement rejects positions that would hide more than ``1 - min_visible_fraction`` of an earlier
  object, so heavy occlusion is rare and crowd regions come mostly from truncation at the border.

Files: ``root/<split>/NNNNNN.jpg`` (image id from 1; JPEG quality 95 without chroma subsampling by
default, lossless PNG with ``image_format="png"``) and ``root/annotations/instances_<split>.json``.
Every image draws from its own random stream, seeded by (seed, split, index): the data do not depend
on how many images are generated or in which process, and the same seed gives byte-identical files.

(Past the ~400-line guide on purpose: a tenth of it is the annotation rules above, and the rest is one
pipeline -- place, render, annotate, write atomically -- whose parts share the config and the per-image
random stream; the object shapes and the backgrounds already live in :mod:`.shapes` and :mod:`.clutter`.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from ..utils import BadValueError
from ..utils.fileio import file_lock
from .clutter import CocoObjectSource, draw_distractors, render_background
from .rle import encode_rle, mask_to_box
from .shapes import SHAPE_NAMES, ShapeGeometry, polygon_bounds, rasterize, render_fill, sample_shape

__all__ = [
    "CLASS_NAMES",
    "SyntheticDetectionConfig",
    "RenderedImage",
    "generate_synthetic_coco",
    "dataset_paths",
    "render_image",
    "image_rng",
]

CLASS_NAMES: Tuple[str, ...] = SHAPE_NAMES
# Bump when the rendering changes, so existing datasets are regenerated instead of silently reused.
GENERATOR_VERSION = "1"
_SPLIT_RE = re.compile(r"^[A-Za-z0-9_]+$")
PathLike = Union[str, Path]


@dataclass(frozen=True)
class SyntheticDetectionConfig:
    """Everything that determines the dataset (besides seed, split and image count).

    Sizes are in pixels; probabilities and fractions in [0, 1].
    """

    image_size: Tuple[int, int] = (256, 256)  # (height, width)
    num_train_images: int = 800  # used when generate_synthetic_coco gets no num_images for "train"
    num_val_images: int = 200  # likewise for "val" / "test"
    classes: Tuple[str, ...] = CLASS_NAMES  # category ids are 1..len(classes) in this order
    objects_per_image: Tuple[int, int] = (2, 8)  # inclusive range of objects attempted per image
    size_range: Tuple[float, float] = (12.0, 100.0)  # object scale sqrt(w * h), log-uniform
    aspect_range: Tuple[float, float] = (1.0 / 3.0, 3.0)  # w / h of the unrotated shape, log-uniform
    max_rotation_deg: float = 30.0
    clutter: float = 0.5  # 0: plain backgrounds, no distractors; 1: busy
    occlusion: float = 0.3  # probability that an object is placed overlapping an earlier one
    truncation: float = 0.1  # probability that an object may cross the image border
    min_visible_fraction: float = 0.3  # below: iscrowd ignore region (see module docstring)
    min_visible_side: int = 3  # visible boxes thinner than this (px) are ignore regions too
    min_contrast: float = 60.0  # RGB distance between object colour and the background beneath it
    noise_std: float = 3.0  # sensor noise, grey levels
    image_format: str = "jpg"  # "jpg" (quality below, 4:4:4 chroma) or "png" (lossless, ~6x slower)
    jpeg_quality: int = 95
    coco_dir: Optional[str] = None  # COCO-format folder for photo backgrounds / real distractors
    photo_probability: float = 0.3  # with coco_dir: chance of a photographic background
    seed: int = 0  # default seed; generate_synthetic_coco(seed=...) overrides it

    def __post_init__(self) -> None:
        # Accept lists (YAML, argparse) but store tuples so the config stays hashable.
        for name in ("image_size", "classes", "objects_per_image", "size_range", "aspect_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise BadValueError(f"image_size must be (height, width) >= 16 px, got {self.image_size}")
        h, w = self.image_size
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise BadValueError(f"classes must be non-empty and unique, got {self.classes}")
        unknown = set(self.classes) - set(CLASS_NAMES)
        if unknown:
            raise BadValueError(f"unknown classes {sorted(unknown)}; available: {CLASS_NAMES}")
        lo, hi = self.objects_per_image
        if not 0 <= lo <= hi:
            raise BadValueError(f"objects_per_image must be 0 <= min <= max, got {self.objects_per_image}")
        for name in ("size_range", "aspect_range"):
            lo_f, hi_f = getattr(self, name)
            if not 0 < lo_f <= hi_f:
                raise BadValueError(f"{name} must be 0 < min <= max, got {getattr(self, name)}")
        if self.size_range[1] > 0.9 * min(h, w):
            raise BadValueError(f"size_range max {self.size_range[1]} too large for images of {self.image_size}")
        for name in ("clutter", "occlusion", "truncation", "min_visible_fraction", "photo_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise BadValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.image_format not in ("png", "jpg"):
            raise BadValueError(f"image_format must be 'png' or 'jpg', got {self.image_format!r}")
        if not 50 <= self.jpeg_quality <= 100:
            raise BadValueError(f"jpeg_quality must be in [50, 100], got {self.jpeg_quality}")
        if min(self.num_train_images, self.num_val_images, self.seed) < 0 or self.noise_std < 0:
            raise BadValueError("image counts, seed and noise_std must be non-negative")

    def num_images(self, split: str) -> int:
        """Default image count of a split: ``num_train_images`` for names starting with "train"."""
        return self.num_train_images if split.startswith("train") else self.num_val_images

    def stamp(self, split: str, num_images: int, seed: int) -> str:
        """Hash of everything that determines the files of one split (not the default counts)."""
        fields = dataclasses.asdict(self)
        for name in ("num_train_images", "num_val_images", "seed", "coco_dir"):
            fields.pop(name)
        fields["coco"] = CocoObjectSource(self.coco_dir).fingerprint if self.coco_dir else None
        key = {"version": GENERATOR_VERSION, "config": fields, "split": split, "n": num_images, "seed": seed}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class RenderedImage:
    """One generated image and what is needed to annotate it.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        owner: (H, W) int16, index into ``objects`` of the object seen at each pixel, -1 elsewhere.
        objects: per painted object (in painting order): ``class_index`` into the config's classes,
            ``full_area`` (silhouette pixels, including hidden and out-of-image ones) and
            ``amodal_box`` (x, y, w, h) of the whole silhouette in image coordinates.
        background, clean: (H, W, 3) float32 before the objects / before sensor noise; only with
            ``keep_layers=True`` (tests use them to check annotations against the pixels).
    """

    image: np.ndarray
    owner: np.ndarray
    objects: List[Dict[str, Any]] = field(default_factory=list)
    background: Optional[np.ndarray] = None
    clean: Optional[np.ndarray] = None


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The independent random stream of image ``index`` of ``split``."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def _boxes_touch(a: Tuple[float, ...], b: Tuple[float, ...], margin: float) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _place(
    rng: np.random.Generator, cfg: SyntheticDetectionConfig, spec: ShapeGeometry,
    placed: List[Tuple[float, float, float, float]], owner: np.ndarray, full_areas: List[int],
) -> Optional[Tuple[np.ndarray, int, int, Tuple[float, float, float, float]]]:
    """Find a position for ``spec``; returns (patch, x0, y0, float box) or None if none was found."""
    h, w = cfg.image_size
    bx0, by0, bx1, by1 = polygon_bounds(spec)
    overlap = bool(placed) and rng.random() < cfg.occlusion
    truncate = rng.random() < cfg.truncation
    for _ in range(25):
        if overlap:
            # Centre at a fraction of the reach towards a random earlier object, so the two overlap.
            t = placed[int(rng.integers(len(placed)))]
            phi = rng.uniform(0.0, 2.0 * math.pi)
            reach = 0.5 * (abs(math.cos(phi)) * (bx1 - bx0 + t[2] - t[0]) + abs(math.sin(phi)) * (by1 - by0 + t[3] - t[1]))
            d = rng.uniform(0.35, 0.95) * reach
            cx, cy = 0.5 * (t[0] + t[2]) + d * math.cos(phi), 0.5 * (t[1] + t[3]) + d * math.sin(phi)
        elif truncate:
            cx, cy = rng.uniform(0.0, w), rng.uniform(0.0, h)
        else:
            if bx1 - bx0 > w - 2 or by1 - by0 > h - 2:
                return None
            cx, cy = rng.uniform(1.0 - bx0, w - 1.0 - bx1), rng.uniform(1.0 - by0, h - 1.0 - by1)
        box = (cx + bx0, cy + by0, cx + bx1, cy + by1)
        if not (0.0 <= cx < w and 0.0 <= cy < h):
            continue
        if not truncate and (box[0] < 0 or box[1] < 0 or box[2] > w or box[3] > h):
            continue
        if not overlap and any(_boxes_touch(box, b, 2.0) for b in placed):
            continue
        patch, x0, y0 = rasterize(spec, cx, cy)
        if overlap and not _occlusion_ok(cfg, patch, x0, y0, owner, full_areas):
            continue
        return patch, x0, y0, box
    return None


def _clip(x0: int, y0: int, ph: int, pw: int, h: int, w: int) -> Tuple[slice, slice, slice, slice]:
    """Image and patch slices of the part of a patch at (x0, y0) that lies inside an (h, w) image."""
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + pw, w), min(y0 + ph, h)
    ix1, iy1 = max(ix1, ix0), max(iy1, iy0)
    return (slice(iy0, iy1), slice(ix0, ix1), slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def _occlusion_ok(cfg: SyntheticDetectionConfig, patch: np.ndarray, x0: int, y0: int,
                  owner: np.ndarray, full_areas: List[int]) -> bool:
    """True if painting ``patch`` keeps every earlier object at least ``min_visible_fraction`` visible."""
    ys, xs, pys, pxs = _clip(x0, y0, *patch.shape, *owner.shape)
    covered = owner[ys, xs][patch[pys, pxs]]
    hidden = np.bincount(covered[covered >= 0], minlength=len(full_areas))
    for k in np.flatnonzero(hidden):
        visible_now = int(np.count_nonzero(owner == k))
        if visible_now - hidden[k] < cfg.min_visible_fraction * full_areas[k]:
            return False
    return True


def render_image(cfg: SyntheticDetectionConfig, rng: np.random.Generator,
                 source: Optional[CocoObjectSource] = None, keep_layers: bool = False) -> RenderedImage:
    """Draw one image: background, distractors, objects in painting order, sensor noise."""
    h, w = cfg.image_size
    img = render_background(rng, h, w, cfg.clutter, source, cfg.photo_probability)
    draw_distractors(rng, img, cfg.clutter, cfg.size_range, source)
    background = img.copy() if keep_layers else None
    owner = np.full((h, w), -1, dtype=np.int16)
    objects: List[Dict[str, Any]] = []
    placed: List[Tuple[float, float, float, float]] = []
    n = int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))
    for _ in range(n):
        cls = int(rng.integers(len(cfg.classes)))
        spec = sample_shape(rng, cfg.classes[cls], cfg.size_range, cfg.aspect_range, cfg.max_rotation_deg)
        found = _place(rng, cfg, spec, placed, owner, [o["full_area"] for o in objects])
        if found is None:
            continue
        patch, x0, y0, box = found
        ys, xs, pys, pxs = _clip(x0, y0, *patch.shape, h, w)
        inside = patch[pys, pxs]
        region = img[ys, xs]
        # Colour: resample until it stands out from what lies beneath (background and earlier objects).
        beneath = region[inside].mean(axis=0)
        best, best_d = None, -1.0
        for _ in range(16):
            c = rng.uniform(0.0, 255.0, size=3)
            d = float(np.linalg.norm(c - beneath))
            if d > best_d:
                best, best_d = c, d
            if d >= cfg.min_contrast:
                break
        fill = render_fill(rng, *inside.shape, best, min(0.4 * best_d, 60.0) * rng.uniform(0.3, 1.0))
        region[inside] = fill[inside]
        owner[ys, xs][inside] = len(objects)
        py, px = np.nonzero(patch)
        objects.append({
            "class_index": cls,
            "full_area": int(py.size),
            "amodal_box": (int(px.min()) + x0, int(py.min()) + y0, int(np.ptp(px)) + 1, int(np.ptp(py)) + 1),
        })
        placed.append(box)
    clean = img.copy() if keep_layers else None
    if cfg.noise_std > 0:
        # Sensor noise: sum of two uniform bytes, a triangular distribution (close enough to Gaussian
        # for noise, and ~4x cheaper to draw than normals; this was the single largest cost).
        b = np.frombuffer(rng.bytes(2 * img.size), dtype=np.uint8).reshape(2, *img.shape)
        tri = b[0].astype(np.float32) + b[1] - np.float32(255.0)  # std sqrt(2 * (256**2 - 1) / 12)
        img += tri * np.float32(cfg.noise_std / math.sqrt((256.0**2 - 1.0) / 6.0))
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return RenderedImage(image, owner, objects, background, clean)


def annotate(cfg: SyntheticDetectionConfig, rendered: RenderedImage) -> List[Dict[str, Any]]:
    """COCO annotations (without ``id`` / ``image_id``) of one image, by the rules of the module docstring."""
    anns = []
    for k, obj in enumerate(rendered.objects):
        visible = rendered.owner == k
        area = int(np.count_nonzero(visible))
        if area == 0:
            continue  # fully hidden: nothing to detect, nothing to ignore
        box = mask_to_box(visible)
        fraction = round(area / obj["full_area"], 4)  # the value written is the value the rule used
        crowd = fraction < cfg.min_visible_fraction or min(box[2], box[3]) < cfg.min_visible_side
        anns.append({
            "category_id": obj["class_index"] + 1,
            "bbox": list(box),
            "area": area,
            "iscrowd": int(crowd),
            "segmentation": encode_rle(visible),
            "visible_fraction": fraction,
            "amodal_bbox": list(obj["amodal_box"]),
        })
    return anns


def dataset_paths(root: PathLike, split: str) -> Tuple[Path, Path]:
    """(annotation json, image folder) of a split, e.g. for ``register_coco_instances``."""
    root = Path(root)
    return root / "annotations" / f"instances_{split}.json", root / split


@contextlib.contextmanager
def _split_lock(root: Path, split: str) -> Iterator[None]:
    """Exclusive lock per (root, split): e.g. two distributed ranks generating at the same time."""
    with file_lock(root / f".{split}.lock"):
        yield


def _is_complete(json_path: Path, image_dir: Path, stamp: str) -> bool:
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return False
    if data.get("info", {}).get("stamp") != stamp:
        return False
    return all((image_dir / im["file_name"]).is_file() for im in data.get("images", []))


def _write_image(path: Path, image: np.ndarray, cfg: SyntheticDetectionConfig) -> None:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if cfg.image_format == "jpg":
        # No chroma subsampling: 4:2:0 smears colour edges over 2 px (errors up to ~120 grey levels
        # at object boundaries), which would blur exactly the extents the benchmark is about.
        params = [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality,
                  cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    else:
        # The sensor noise is incompressible; RLE strategy at level 1 is the fastest useful setting.
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    if not cv2.imwrite(str(path), bgr, params):
        raise OSError(f"could not write {path}")


def generate_synthetic_coco(
    root: PathLike,
    split: str,
    num_images: Optional[int] = None,
    config: SyntheticDetectionConfig = SyntheticDetectionConfig(),
    seed: Optional[int] = None,
    *,
    force: bool = False,
) -> Path:
    """Generate (or reuse) one split and return the path of its annotation json.

    Args:
        root: dataset folder; gets ``<split>/`` and ``annotations/instances_<split>.json``.
        split: name made of letters, digits and underscores ("train", "val", ...).
        num_images: images in the split; default ``config.num_images(split)``.
        config: what to draw.
        seed: overrides ``config.seed``.
        force: regenerate even if a complete split with the same stamp exists.

    The split is reused if its json carries the same stamp (hash of config, split, count, seed and
    generator version) and all its images exist. Otherwise it is drawn into a temporary folder
    inside ``root`` and moved into place; the json is moved last, so a json at the final path always
    describes a complete image folder, and an interrupted run leaves no json (or the old, complete
    split). Concurrent calls for the same split wait for each other (file lock).
    """
    if not _SPLIT_RE.match(split):
        raise BadValueError(f"split must match {_SPLIT_RE.pattern}, got {split!r}")
    seed = config.seed if seed is None else int(seed)
    n = config.num_images(split) if num_images is None else int(num_images)
    if n < 0 or seed < 0:
        raise BadValueError("num_images and seed must be non-negative")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    json_path, image_dir = dataset_paths(root, split)
    stamp = config.stamp(split, n, seed)
    with _split_lock(root, split):
        if not force and _is_complete(json_path, image_dir, stamp):
            return json_path
        for stale in root.glob(f".tmp-{split}-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{split}-", dir=root))
        try:
            _generate_into(tmp, split, n, config, seed, stamp)
            _commit(tmp, json_path, image_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return json_path


def _generate_into(tmp: Path, split: str, n: int, cfg: SyntheticDetectionConfig, seed: int, stamp: str) -> None:
    """Draw all images into ``tmp/images`` and write ``tmp/annotations.json``."""
    (tmp / "images").mkdir()
    source = CocoObjectSource(cfg.coco_dir) if cfg.coco_dir else None
    images, annotations = [], []
    for index in range(n):
        image_id = index + 1
        rendered = render_image(cfg, image_rng(seed, split, index), source)
        file_name = f"{image_id:06d}.{cfg.image_format}"
        _write_image(tmp / "images" / file_name, rendered.image, cfg)
        images.append({"id": image_id, "file_name": file_name, "height": cfg.image_size[0], "width": cfg.image_size[1]})
        for ann in annotate(cfg, rendered):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    data = {
        "info": {
            "description": "ebm_refine synthetic detection dataset",
            "version": GENERATOR_VERSION,
            "split": split,
            "seed": seed,
            "stamp": stamp,
            "config": dataclasses.asdict(cfg),
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(cfg.classes)],
    }
    # Fixed separators and key order: the same inputs give a byte-identical file.
    (tmp / "annotations.json").write_text(json.dumps(data, separators=(",", ":")))


def _commit(tmp: Path, json_path: Path, image_dir: Path) -> None:
    """Swap the new split in. Order matters: old json out first, new json in last."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.unlink(missing_ok=True)  # from here until the end the split reads as incomplete
    if image_dir.exists():
        os.rename(image_dir, tmp / "old_images")  # same filesystem: atomic; removed with tmp
    os.rename(tmp / "images", image_dir)
    os.replace(tmp / "annotations.json", json_path)
