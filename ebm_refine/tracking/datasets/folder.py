"""A generic "folder of frames + annotation file" loader, for footage that belongs to no benchmark.

A sequence folder holds its frames either directly or in ``img/``, ``color/`` or ``frames/``, and an
annotation file with one ``x,y,w,h`` line per frame (commas, tabs or spaces; NaN rows allowed). The
annotation is found as the first existing of ``groundtruth.txt``, ``groundtruth_rect.txt``,
``gt.txt``, ``anno.txt``, ``<folder>.txt`` unless given explicitly. A file with a single line (first box
only) is accepted: such a sequence can be tracked but not scored.

``root`` may be one sequence folder or a folder of sequence folders.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence as _Seq

from ...utils import MissingFileError, UnknownNameError
from .io import (IMAGE_EXTENSIONS, check_box_sizes, check_rows, list_frames, polygon_to_xywh, read_box_file,
                 short_list)
from .sequence import Sequence

ANNOTATION_NAMES = ("groundtruth.txt", "groundtruth_rect.txt", "gt.txt", "anno.txt")
FRAME_SUBDIRS = ("img", "color", "frames")


def _frame_dir(seq_dir: str) -> Optional[str]:
    for sub in FRAME_SUBDIRS:
        if os.path.isdir(os.path.join(seq_dir, sub)):
            return os.path.join(seq_dir, sub)
    if any(n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(seq_dir)):
        return seq_dir
    return None


def _anno_file(seq_dir: str) -> Optional[str]:
    for name in ANNOTATION_NAMES + (os.path.basename(os.path.normpath(seq_dir)) + ".txt",):
        if os.path.isfile(os.path.join(seq_dir, name)):
            return os.path.join(seq_dir, name)
    return None


def load_folder_sequence(seq_dir: str, anno_path: Optional[str] = None, name: Optional[str] = None,
                         dataset: str = "folder", rotated_box_mode: str = "minmax") -> Sequence:
    """Load one sequence folder (see module docstring). 8-value lines are converted like VOT boxes."""
    seq_dir = os.path.abspath(seq_dir)
    frame_dir = _frame_dir(seq_dir)
    if frame_dir is None:
        raise MissingFileError(f"{seq_dir}: no frames (looked in {', '.join(FRAME_SUBDIRS)} and the folder); put "
                               "the frames in one of them")
    anno_path = anno_path or _anno_file(seq_dir)
    if anno_path is None:
        raise MissingFileError(f"{seq_dir}: no annotation file (looked for {', '.join(ANNOTATION_NAMES)}); add "
                               "one or pass it with --anno")
    raw = read_box_file(anno_path, ncols=(4, 8), allow_nan=True)
    frames = list_frames(frame_dir, contiguous=True)
    check_rows(anno_path, raw, len(frames), first_only_ok=True)
    boxes = check_box_sizes(anno_path, polygon_to_xywh(raw, rotated_box_mode))
    return Sequence(name=name or os.path.basename(seq_dir), frames=frames, ground_truth=boxes, dataset=dataset,
                    meta={"anno_path": anno_path})


def load_folder(root: str, sequences: Optional[_Seq[str]] = None, anno_path: Optional[str] = None,
                rotated_box_mode: str = "minmax") -> List[Sequence]:
    """Load ``root`` as one sequence (if it has frames and an annotation) or as a folder of sequences."""
    if not os.path.isdir(root):
        raise MissingFileError(f"{root}: folder not found; check --root")
    if anno_path is not None or (_anno_file(root) is not None and _frame_dir(root) is not None):
        seqs = [load_folder_sequence(root, anno_path, rotated_box_mode=rotated_box_mode)]
    else:
        subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if sequences is not None:
            missing = [n for n in sequences if n not in subdirs]
            if missing:
                raise UnknownNameError(f"{root}: no sequence folder(s) {', '.join(missing)}; available: "
                                       f"{short_list(subdirs)}")
            subdirs = list(sequences)
        seqs = [load_folder_sequence(os.path.join(root, d), rotated_box_mode=rotated_box_mode) for d in subdirs
                if _anno_file(os.path.join(root, d)) is not None or sequences is not None]
        if not seqs:
            raise MissingFileError(f"{root}: no sequence (frames + annotation file) in the folder or its "
                                   "sub-folders; check --root (docs/tracking_evaluation.md shows the layout)")
        return seqs
    if sequences is not None and [s.name for s in seqs] != list(sequences):
        raise UnknownNameError(f"{root}: this folder is the single sequence {seqs[0].name!r}; asked for "
                               f"{', '.join(sequences)}: drop --sequences or pass the parent folder as --root")
    return seqs
