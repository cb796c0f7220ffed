"""The one sequence type every loader returns, and frame reading."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence as _Seq, Tuple

import numpy as np

from ...utils import UnknownNameError, read_image
from .io import AnnotationError


@dataclass
class Sequence:
    """One tracking sequence.

    Attributes:
        name: unique name inside its dataset (also the result file stem, ``<name>.txt``).
        frames: absolute paths of the N frames, in temporal order.
        ground_truth: float64 array (M, 4) of boxes ``x, y, w, h`` in pixels (x, y = top-left corner,
            0- or 1-based exactly as the dataset ships them; we never shift coordinates). NaN rows mean
            "no box" (UAV123 marks out-of-view targets that way). M == N for fully annotated sequences;
            M == 1 for sets that publish only the first box (TrackingNet TEST, GOT-10k test).
        dataset: dataset key (``"uav123"``, ``"otb"``, ...). Scoring protocols use it for
            dataset-specific rules (pytracking treats ``uav*`` and ``lasot`` differently).
        target_visible: optional bool array (N,): False where the dataset says the target is absent
            or fully occluded (LaSOT, GOT-10k). None when the dataset has no such flag.
        object_class: optional category name.
        meta: free-form extras (e.g. the UAV123 source folder and frame range).
    """

    name: str
    frames: List[str]
    ground_truth: np.ndarray
    dataset: str
    target_visible: Optional[np.ndarray] = None
    object_class: Optional[str] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frames = [str(f) for f in self.frames]
        gt = np.asarray(self.ground_truth, dtype=np.float64)
        if gt.ndim != 2 or gt.shape[1] != 4:
            raise ValueError(f"sequence {self.name!r}: ground_truth must be (M, 4), got {gt.shape}")
        if len(self.frames) == 0:
            raise ValueError(f"sequence {self.name!r}: no frames")
        if gt.shape[0] not in (1, len(self.frames)):
            raise ValueError(
                f"sequence {self.name!r}: {gt.shape[0]} ground-truth rows for {len(self.frames)} frames")
        self.ground_truth = gt
        if self.target_visible is not None:
            tv = np.asarray(self.target_visible).astype(bool).reshape(-1)
            if tv.shape[0] != len(self.frames):
                raise ValueError(f"sequence {self.name!r}: target_visible has {tv.shape[0]} entries "
                                 f"for {len(self.frames)} frames")
            self.target_visible = tv

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def init_box(self) -> np.ndarray:
        """First-frame box (4,) ``x, y, w, h`` used to initialise a tracker."""
        return self.ground_truth[0].copy()

    @property
    def has_full_ground_truth(self) -> bool:
        """True when every frame has a (possibly NaN) annotation row, i.e. the sequence can be scored."""
        return self.ground_truth.shape[0] == len(self.frames)

    def init_info(self) -> Dict[str, Any]:
        """The ``info`` dict passed to ``tracker.initialize`` (pytracking's API)."""
        box = self.init_box
        if not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
            where = f"{self.meta['anno_path']}:1" if "anno_path" in self.meta else f"sequence {self.name!r}"
            raise AnnotationError(f"{where}: first-frame box {box.tolist()} has no positive size, and a tracker "
                                  "starts from it; fix the annotation or leave the sequence out (--sequences)")
        return {"init_bbox": [float(v) for v in box], "sequence_name": self.name, "dataset": self.dataset}


def load_frame(path: str) -> Tuple[np.ndarray, bool]:
    """Read one frame as an (H, W, 3) uint8 **RGB** array, accepting a truncated JPEG.

    Returns:
        ``(image, truncated)``; a truncated JPEG is decoded as far as its data goes (the rest is grey)
        and flagged, so that the caller can count and report it (the evaluation runner does).

    Raises:
        MissingFileError / ImageDecodeError naming the file when it is missing or cannot be decoded.
    """
    import cv2  # local import: keeps `import ebm_refine.tracking.datasets` cheap

    img, truncated = read_image(path, allow_truncated=True)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), truncated


def read_frame(path: str) -> np.ndarray:
    """Read one frame as an (H, W, 3) uint8 **RGB** array (pytracking's convention).

    Raises:
        MissingFileError / ImageDecodeError naming the file when it is missing, cannot be decoded or is
        a truncated JPEG.
    """
    import cv2

    img, _ = read_image(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def select_sequences(seqs: _Seq[Sequence], names: Optional[_Seq[str]]) -> List[Sequence]:
    """Keep the sequences named in ``names`` (in that order); all of them when ``names`` is None.

    Raises:
        UnknownNameError (a KeyError) listing the unknown names.
    """
    if names is None:
        return list(seqs)
    by_name = {s.name: s for s in seqs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise UnknownNameError(f"unknown sequence(s): {', '.join(unknown)}; check --sequences")
    return [by_name[n] for n in names]
