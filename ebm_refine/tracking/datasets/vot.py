"""VOT short-term sequences (VOT2013-2019 style annotation)::

    <root>/<seq>/color/%08d.jpg   (VOT2017+ toolkit layout)  or  <root>/<seq>/%08d.jpg  (older releases)
    <root>/<seq>/groundtruth.txt  8 numbers per line (rotated box x1,y1,...,x4,y4) or 4 (x,y,w,h)

We evaluate axis-aligned boxes, so rotated boxes are converted with
:func:`~ebm_refine.tracking.datasets.io.polygon_to_xywh`. The default convention is ``minmax`` (the
tightest axis-aligned rectangle around the four corners, what the VOT toolkit itself does when it converts
a polygon to a rectangle); ``preserve_area`` gives pytracking's initialisation convention. The original
polygons stay available in ``Sequence.meta["polygons"]``. Segmentation-mask annotations (VOT2020+) are not
supported and raise an error naming the file.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence as _Seq

from ...utils import MissingFileError, UnknownNameError
from .io import (AnnotationError, check_box_sizes, check_rows, list_frames, polygon_to_xywh, read_box_file,
                 short_list)
from .sequence import Sequence


def _frame_dir(seq_dir: str) -> str:
    color = os.path.join(seq_dir, "color")
    return color if os.path.isdir(color) else seq_dir


def load_vot(root: str, sequences: Optional[_Seq[str]] = None, rotated_box_mode: str = "minmax") -> List[Sequence]:
    """Load VOT sequences: every folder under ``root`` holding a ``groundtruth.txt``.

    Args:
        root: the VOT folder (with ``list.txt`` or just sequence folders).
        sequences: optional subset of names.
        rotated_box_mode: ``"minmax"`` (default) or ``"preserve_area"``, see module docstring.
    """
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: VOT root folder not found; check --root")
    list_file = os.path.join(root, "list.txt")
    if os.path.isfile(list_file):
        with open(list_file) as fh:
            names = [ln.strip() for ln in fh if ln.strip()]
    else:
        names = sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "groundtruth.txt")))
    if sequences is not None:
        unknown = [n for n in sequences if n not in names]
        if unknown:
            raise UnknownNameError(f"{root}: no VOT sequence(s) {', '.join(unknown)}; available: {short_list(names)}")
        names = list(sequences)
    if not names:
        raise MissingFileError(f"{root}: no VOT sequence folders with groundtruth.txt; check --root")
    out = []
    for name in names:
        seq_dir = os.path.join(root, name)
        anno_path = os.path.join(seq_dir, "groundtruth.txt")
        if not os.path.isfile(anno_path):
            raise MissingFileError(f"{anno_path}: annotation file not found; check list.txt and --sequences")
        with open(anno_path, encoding="utf-8", errors="replace") as fh:
            head = fh.readline().strip()
        if head.startswith("m"):
            raise AnnotationError(f"{anno_path}:1: segmentation-mask annotations (VOT2020+) are not supported; "
                                  "use a release with rectangle or polygon annotations")
        raw = read_box_file(anno_path, ncols=(4, 8), allow_nan=True)
        frames = list_frames(_frame_dir(seq_dir), contiguous=True)
        check_rows(anno_path, raw, len(frames))
        boxes = check_box_sizes(anno_path, polygon_to_xywh(raw, rotated_box_mode))
        meta = {"rotated_box_mode": rotated_box_mode, "anno_path": anno_path}
        if raw.shape[1] == 8:
            meta["polygons"] = raw
        out.append(Sequence(name=name, frames=frames, ground_truth=boxes, dataset="vot", meta=meta))
    return out
