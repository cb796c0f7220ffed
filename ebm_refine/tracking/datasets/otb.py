"""OTB-2013/2015 (Wu, Lim, Yang) in the layout of the benchmark's download::

    <root>/<Seq>/img/%04d.jpg
    <root>/<Seq>/groundtruth_rect.txt          x,y,w,h separated by commas, tabs or spaces

Quirks of the release handled here:

* two targets in one folder (``Jogging``, ``Skating2``): ``groundtruth_rect.1.txt`` and
  ``groundtruth_rect.2.txt`` become sequences ``Jogging-1`` and ``Jogging-2``;
* an empty ground-truth file (``Human4``'s ``groundtruth_rect.1.txt``) is ignored;
* a few sequences are annotated on a frame range only (``David`` 300-770, ``Football1`` 1-74,
  ``Freeman3`` 1-460, ``Freeman4`` 1-283, ``Diving`` 1-215), from the benchmark's configuration; a copy whose
  folder holds exactly one image per annotation row (cut to the annotated frames, renumbered) is taken as it is;
* frame folders that do not start at 1 (``BlurCar1`` starts at 0247) are taken as they are.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Optional, Sequence as _Seq, Tuple

from ...utils import MissingFileError, UnknownNameError
from .io import check_box_sizes, check_rows, list_frames, read_box_file, short_list
from .sequence import Sequence

#: lower-case folder name -> inclusive (first, last) frame numbers that carry ground truth.
OTB_FRAME_RANGES: Dict[str, Tuple[int, int]] = {
    "david": (300, 770),
    "football1": (1, 74),
    "freeman3": (1, 460),
    "freeman4": (1, 283),
    "diving": (1, 215),
}

_GT_NAME = re.compile(r"^groundtruth_rect(?:\.(\d+))?\.txt$")


def _sequence_entries(root: str) -> List[Tuple[str, str, str]]:
    """(sequence name, folder, annotation path) for every annotated target under ``root``."""
    entries = []
    for folder in sorted(os.listdir(root)):
        seq_dir = os.path.join(root, folder)
        if not os.path.isdir(os.path.join(seq_dir, "img")):
            continue
        gts = []
        for fname in os.listdir(seq_dir):
            m = _GT_NAME.match(fname)
            if m and os.path.getsize(os.path.join(seq_dir, fname)) > 0:
                gts.append((int(m.group(1)) if m.group(1) else 0, fname))
        gts.sort()
        for idx, fname in gts:
            name = folder if len(gts) == 1 else f"{folder}-{idx}"
            entries.append((name, seq_dir, os.path.join(seq_dir, fname)))
    return entries


def _frame_count(img_dir: str) -> int:
    return len(list_frames(img_dir, contiguous=False))


def load_otb(root: str, sequences: Optional[_Seq[str]] = None) -> List[Sequence]:
    """Load OTB sequences found under ``root`` (every folder with ``img/`` and a ground-truth file).

    Args:
        root: the OTB folder (holding ``Basketball/``, ``Crossing/``, ...).
        sequences: optional subset of names (``"Jogging-1"`` style for the two-target folders).

    Raises:
        MissingFileError for a missing root or frame; UnknownNameError for a sequence that is not there;
        AnnotationError naming file and line for malformed annotation lines or a row count that differs
        from the number of frames.
    """
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: OTB root folder not found; check --root")
    entries = _sequence_entries(root)
    by_name = {e[0]: e for e in entries}
    if sequences is not None:
        unknown = [n for n in sequences if n not in by_name]
        if unknown:
            raise UnknownNameError(f"{root}: no OTB sequence(s) {', '.join(unknown)} (a folder with img/ and "
                                   f"groundtruth_rect.txt); available: {short_list(by_name)}")
        entries = [by_name[n] for n in sequences]
    elif not entries:
        raise MissingFileError(f"{root}: no OTB sequence folders (<seq>/img + groundtruth_rect.txt); check --root")
    out = []
    for name, seq_dir, anno_path in entries:
        boxes = check_box_sizes(anno_path, read_box_file(anno_path, allow_nan=True))
        frame_range = OTB_FRAME_RANGES.get(os.path.basename(seq_dir).lower())
        if frame_range is not None and _frame_count(os.path.join(seq_dir, "img")) == len(boxes):
            frame_range = None  # a copy cut to its annotated frames (renumbered from 1): one row per image
        frames = list_frames(os.path.join(seq_dir, "img"), contiguous=True, frame_range=frame_range)
        check_rows(anno_path, boxes, len(frames))
        out.append(Sequence(name=name, frames=frames, ground_truth=boxes, dataset="otb",
                            meta={"anno_path": anno_path}))
    return out
