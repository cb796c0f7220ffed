"""The one sequence type every loader returns, and frame reading."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence as _Seq

import numpy as np


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
            raise ValueError(f"sequence {self.name!r}: first-frame box {box.tolist()} is not a valid box")
        return {"init_bbox": [float(v) for v in box], "sequence_name": self.name, "dataset": self.dataset}


def read_frame(path: str) -> np.ndarray:
    """Read one frame as an (H, W, 3) uint8 **RGB** array (pytracking's convention).

    Raises:
        FileNotFoundError / ValueError naming the file when it is missing or cannot be decoded.
    """
    import cv2  # local import: keeps `import ebm_refine.tracking.datasets` cheap

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        import os

        if not os.path.exists(path):
            raise FileNotFoundError(f"frame not found: {path}")
        raise ValueError(f"frame could not be decoded as an image: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def select_sequences(seqs: _Seq[Sequence], names: Optional[_Seq[str]]) -> List[Sequence]:
    """Keep the sequences named in ``names`` (in that order); all of them when ``names`` is None.

    Raises:
        KeyError listing the unknown names.
    """
    if names is None:
        return list(seqs)
    by_name = {s.name: s for s in seqs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"unknown sequence(s): {', '.join(unknown)}")
    return [by_name[n] for n in names]
