"""Training data in the spirit of pytracking's ``ltr``: (reference, test) crop pairs from sequences.

The pipeline consumes sequences through a small interface (:class:`TrainSequence`): ``len(seq)``
frames, ``seq.frame(i)`` -> (H, W, 3) uint8 RGB, ``seq.boxes`` (N, 4) ``[x, y, w, h]`` pixels (NaN where
unknown) and ``seq.visible`` (N,) bool. Adapters turn the other sources into it:

* :class:`~ebm_refine.data.synthetic_tracking.SyntheticSequence` already has it;
* :class:`FileSequence` wraps a :class:`ebm_refine.tracking.datasets.Sequence` (TrackingNet TRAIN_i,
  LaSOT, GOT-10k, any folder) -- frames read from disk;
* :class:`ImageSequence` is one still image with one box (COCO objects as one-frame sequences).

One sample (:class:`PairDataset`): pick a source by weight and a sequence uniformly, a visible test
frame, and a visible reference frame at most ``max_gap`` frames away; crop the reference around its
box, and the test frame around a jittered box (centre and scale jitter, as the tracker's search region
is centred on an imperfect prediction); photometric jitter. Every draw is a function of
``(seed, index)``, so a resumed run reads exactly the samples an uninterrupted one would.

For outlier experiments (DeepGUM), ``annotation_noise`` makes a share of the frames' boxes wrong
(:class:`ebm_refine.data.annotation_noise.AnnotationNoise`; the same wrong box whenever the frame is drawn);
items then say which boxes were altered.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Protocol, Sequence as _Seq, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ...data.annotation_noise import AnnotationNoise
from ..processing import jitter_box, photometric_jitter, sample_patch, search_region_side

__all__ = ["TrainSequence", "FileSequence", "ImageSequence", "coco_sequences", "PairDataset",
           "IndexSampler", "DEFAULT_PROCESSING"]

DEFAULT_PROCESSING: Dict[str, Any] = {
    "search_area_factor": 5.0,  # crop side = factor * sqrt(w h), like the tracker's search region
    "output_size": 288,
    "center_jitter": 3.0,  # test-crop centre offset up to +-center_jitter/2 * sqrt(w h) (uniform)
    "scale_jitter": 0.25,  # std of the log-size jitter of the test crop
    "max_gap": 50,  # frames between reference and test
    "brightness_jitter": 0.2,
    "grayscale_prob": 0.05,
}


class TrainSequence(Protocol):
    """What the pair sampler needs from a sequence."""

    name: str
    boxes: np.ndarray
    visible: np.ndarray

    def __len__(self) -> int: ...

    def frame(self, i: int) -> np.ndarray: ...


class FileSequence:
    """Adapter from :class:`ebm_refine.tracking.datasets.Sequence` (frame files) to :class:`TrainSequence`."""

    def __init__(self, seq):
        if not seq.has_full_ground_truth:
            raise ValueError(f"sequence {seq.name!r} has no per-frame ground truth; it cannot be used for training")
        self.name = seq.name
        self._frames = list(seq.frames)
        self.boxes = np.asarray(seq.ground_truth, dtype=np.float64)
        ok = np.isfinite(self.boxes).all(1) & (self.boxes[:, 2] > 0) & (self.boxes[:, 3] > 0)
        tv = seq.target_visible
        self.visible = ok if tv is None else ok & np.asarray(tv, dtype=bool)

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, i: int) -> np.ndarray:
        from ..datasets.sequence import read_frame

        return read_frame(self._frames[i])


class ImageSequence:
    """A still image with one object box, as a one-frame sequence (reference = test frame, jittered)."""

    def __init__(self, path: str, box_xywh: _Seq[float], name: Optional[str] = None):
        self.name = name or os.path.basename(path)
        self.path = path
        self.boxes = np.asarray([box_xywh], dtype=np.float64)
        self.visible = np.array([True])

    def __len__(self) -> int:
        return 1

    def frame(self, i: int) -> np.ndarray:
        import cv2

        img = cv2.imread(self.path, cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"image not readable: {self.path}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def coco_sequences(ann_file: str, image_dir: str, min_size: float = 16.0, min_area_fraction: float = 0.002
                   ) -> List[ImageSequence]:
    """Every non-crowd COCO instance with both sides >= ``min_size`` px and at least
    ``min_area_fraction`` of the image, as an :class:`ImageSequence`."""
    with open(ann_file, "r", encoding="utf-8") as fh:
        coco = json.load(fh)
    images = {im["id"]: im for im in coco["images"]}
    out = []
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        im = images.get(ann["image_id"])
        if im is None or w < min_size or h < min_size or w * h < min_area_fraction * im["width"] * im["height"]:
            continue
        out.append(ImageSequence(os.path.join(image_dir, im["file_name"]), [x, y, w, h], name=f"coco_{ann['id']}"))
    return out


def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], dtype=np.float64)


class PairDataset(Dataset):
    """(reference, test) crop pairs; see the module docstring.

    Args:
        sources: list of (indexable of :class:`TrainSequence`, weight).
        processing: overrides of :data:`DEFAULT_PROCESSING`.
        seed: base seed; sample ``index`` uses ``np.random.default_rng([seed, index])``.
        length: nominal length (the :class:`IndexSampler` decides which indices are read).
        annotation_noise: optional wrong boxes in a share of the frames (keyed by source and sequence
            index, so the same frame is always altered the same way).

    Items are dicts: ``ref_image``/``test_image`` (3, S, S) uint8 tensors (RGB), ``ref_box``/``test_box``
    (4,) float32 xyxy crop pixels, ``ref_outlier``/``test_outlier`` () bool: whether the box is an altered one.
    """

    def __init__(self, sources: List[Tuple[Any, float]], processing: Optional[Dict[str, Any]] = None,
                 seed: int = 0, length: int = 10 ** 9, annotation_noise: Optional[AnnotationNoise] = None):
        sources = [(s, float(w)) for s, w in sources if len(s) > 0 and w > 0]
        if not sources:
            raise ValueError("no training sequences: every source is empty or has zero weight")
        self.sources = [s for s, _ in sources]
        w = np.array([w for _, w in sources])
        self.weights = w / w.sum()
        self.p = dict(DEFAULT_PROCESSING, **(processing or {}))
        self.seed = int(seed)
        self.length = int(length)
        self.noise = annotation_noise

    def _box(self, key: str, i: int, box_xywh: np.ndarray, image: np.ndarray) -> Tuple[np.ndarray, bool]:
        """Frame ``i``'s annotated box ([x, y, w, h]), altered when the noise picks it."""
        if self.noise is None:
            return box_xywh, False
        x, y, w, h = (float(v) for v in box_xywh)
        b, outlier = self.noise(key, i, [x, y, x + w, y + h], float(image.shape[1]), float(image.shape[0]))
        return np.array([b[0], b[1], b[2] - b[0], b[3] - b[1]], dtype=np.float64), outlier

    def __len__(self) -> int:
        return self.length

    def _pick_frames(self, rng: np.random.Generator, seq) -> Optional[Tuple[int, int]]:
        vis = np.flatnonzero(np.asarray(seq.visible, dtype=bool))
        if vis.size == 0:
            return None
        test = int(rng.choice(vis))
        gap = int(self.p["max_gap"])
        near = vis[np.abs(vis - test) <= gap]
        return int(rng.choice(near)), test

    def _crop(self, rng: np.random.Generator, image: np.ndarray, box: np.ndarray, jitter: bool):
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        w, h = box[2], box[3]
        if jitter:
            cx, cy, w, h = jitter_box(rng, cx, cy, w, h, float(self.p["center_jitter"]), float(self.p["scale_jitter"]))
        side = search_region_side(w, h, self.p["search_area_factor"])
        crop, tf = sample_patch(image, (cx, cy), side, int(self.p["output_size"]))
        crop = photometric_jitter(rng, crop, float(self.p["brightness_jitter"]), float(self.p["grayscale_prob"]))
        return crop, tf.boxes_to_crop(_xywh_to_xyxy(box)).astype(np.float32)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        for _ in range(20):  # a sequence without a visible frame pair is skipped, with a fresh draw
            src_i = int(rng.choice(len(self.sources), p=self.weights))
            src = self.sources[src_i]
            seq_i = int(rng.integers(len(src)))
            seq = src[seq_i]
            picked = self._pick_frames(rng, seq)
            if picked is None:
                continue
            ref_i, test_i = picked
            ref_img = seq.frame(ref_i)
            test_img = ref_img if test_i == ref_i else seq.frame(test_i)
            ref_xywh, ref_out = self._box(f"{src_i}/{seq_i}", ref_i, seq.boxes[ref_i], ref_img)
            test_xywh, test_out = self._box(f"{src_i}/{seq_i}", test_i, seq.boxes[test_i], test_img)
            ref_crop, ref_box = self._crop(rng, ref_img, ref_xywh, jitter=False)
            test_crop, test_box = self._crop(rng, test_img, test_xywh, jitter=True)
            return {
                "ref_image": torch.from_numpy(ref_crop).permute(2, 0, 1).contiguous(),
                "ref_box": torch.from_numpy(ref_box),
                "test_image": torch.from_numpy(test_crop).permute(2, 0, 1).contiguous(),
                "test_box": torch.from_numpy(test_box),
                "ref_outlier": torch.tensor(ref_out),
                "test_outlier": torch.tensor(test_out),
            }
        raise RuntimeError("could not draw a training pair with a visible target in 20 attempts")


class IndexSampler(Sampler):
    """Indices ``start, start + 1, ...`` of one rank's share of a global sample stream.

    Global sample g of iteration t is ``t * batch * world + rank * batch + j``; this sampler yields
    rank ``rank``'s indices from iteration ``start_iteration`` to ``num_iterations`` - so different ranks
    never read the same sample and a resumed run continues the stream where it stopped.
    """

    def __init__(self, start_iteration: int, num_iterations: int, batch_size: int, rank: int = 0,
                 world_size: int = 1):
        self.start, self.stop = int(start_iteration), int(num_iterations)
        self.batch, self.rank, self.world = int(batch_size), int(rank), int(world_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.batch

    def __iter__(self):
        for t in range(self.start, self.stop):
            base = (t * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)
