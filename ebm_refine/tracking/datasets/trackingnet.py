"""TrackingNet (Mueller et al., ECCV 2018).

Layout (``root`` holds the chunks)::

    TEST/frames/<seq>/<i>.jpg       i = 0, 1, 2, ... (not zero-padded: sorted numerically)
    TEST/anno/<seq>.txt             first-frame box only (the rest is on the evaluation server)
    TRAIN_0 ... TRAIN_11/frames/<seq>/<i>.jpg
    TRAIN_k/anno/<seq>.txt          x,y,w,h for every frame

A sequence's name is its folder name; TEST names are unique, TRAIN names are unique across chunks.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence as _Seq

from ...utils import BadValueError, MissingFileError, UnknownNameError
from .io import check_box_sizes, check_rows, list_frames, read_box_file
from .sequence import Sequence

TRACKINGNET_CHUNKS = ("TEST",) + tuple(f"TRAIN_{i}" for i in range(12))


def _resolve_chunks(root: str, chunks) -> List[str]:
    if chunks is None:
        return ["TEST"]
    if isinstance(chunks, str):
        chunks = [chunks]
    out = []
    for c in chunks:
        c = str(c).upper()
        if c == "TRAIN":
            out.extend(k for k in TRACKINGNET_CHUNKS[1:] if os.path.isdir(os.path.join(root, k)))
        elif c.isdigit():
            out.append(f"TRAIN_{c}")
        elif c in TRACKINGNET_CHUNKS:
            out.append(c)
        else:
            raise BadValueError(f"unknown TrackingNet chunk {c!r}; use TEST, TRAIN, TRAIN_0..TRAIN_11 or 0..11")
    return out


def load_trackingnet(root: str, chunks=None, sequences: Optional[_Seq[str]] = None) -> List[Sequence]:
    """Load TrackingNet sequences.

    Args:
        root: folder containing ``TEST/`` and/or ``TRAIN_k/``.
        chunks: ``"TEST"`` (default), ``"TRAIN"`` (all train chunks present), ``"TRAIN_3"``, ``3`` or a
            list of these.
        sequences: optional subset of sequence names.

    Returns:
        Sequences with ``dataset="trackingnet"`` and ``meta={"chunk": ...}``. TEST sequences carry only
        the first-frame box (``ground_truth`` has 1 row, ``has_full_ground_truth`` is False); TRAIN
        sequences must have one row per frame.
    """
    out: List[Sequence] = []
    wanted = None if sequences is None else set(sequences)
    for chunk in _resolve_chunks(root, chunks):
        anno_dir = os.path.join(root, chunk, "anno")
        frame_root = os.path.join(root, chunk, "frames")
        if not os.path.isdir(anno_dir):
            raise MissingFileError(f"{anno_dir}: annotation folder of TrackingNet chunk {chunk} not found; check "
                                   "--root (the folder holding TEST/, TRAIN_0/, ...) and --split")
        names = sorted(os.path.splitext(n)[0] for n in os.listdir(anno_dir) if n.endswith(".txt"))
        for name in names:
            if wanted is not None and name not in wanted:
                continue
            anno_path = os.path.join(anno_dir, f"{name}.txt")
            boxes = check_box_sizes(anno_path, read_box_file(anno_path, allow_nan=False))
            frames = list_frames(os.path.join(frame_root, name), contiguous=True)
            check_rows(anno_path, boxes, len(frames), first_only_ok=(chunk == "TEST"))
            out.append(Sequence(name=name, frames=frames, ground_truth=boxes, dataset="trackingnet",
                                meta={"chunk": chunk, "anno_path": anno_path}))
    if wanted is not None:
        missing = wanted - {s.name for s in out}
        if missing:
            raise UnknownNameError(f"{root}: TrackingNet sequence(s) {', '.join(sorted(missing))} not in chunk(s) "
                                   f"{', '.join(_resolve_chunks(root, chunks))}; check --sequences and --split")
        order = {n: i for i, n in enumerate(sequences)}
        out.sort(key=lambda s: order[s.name])
    return out
