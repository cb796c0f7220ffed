"""TrackingNet submission packer.

The evaluation server wants a zip with one ``<seq>.txt`` per TEST sequence at the archive root, one
``x,y,w,h`` line per frame, comma-separated. We write two decimals (the server rounds to integers
anyway) and refuse to pack an incomplete submission: the server would silently score a missing sequence
as all zeros.
"""
from __future__ import annotations

import os
import zipfile
from typing import List, Sequence as _Seq

from ...utils import BadValueError
from ...utils.fileio import atomic_writer
from ..datasets.sequence import Sequence
from .results import format_boxes, read_result, result_path


class SubmissionError(BadValueError):
    """The results cannot be packed (missing sequence, wrong row count, invalid values)."""


def pack_trackingnet(sequences: _Seq[Sequence], results_dir: str, zip_path: str) -> List[str]:
    """Pack the results of ``sequences`` (the TEST set) from ``results_dir`` into ``zip_path``.

    Args:
        sequences: the TrackingNet TEST sequences (their frame counts define the expected rows).
        results_dir: folder holding ``<seq>.txt`` (tabs or commas).
        zip_path: output archive; written atomically (:mod:`ebm_refine.utils.fileio`).

    Returns:
        The archive member names, in sequence order.

    Raises:
        SubmissionError listing every missing file and every file with a wrong row count or invalid
        values (nothing is written in that case).
    """
    problems, payload = [], []
    for seq in sequences:
        path = result_path(results_dir, seq.name)
        if not os.path.isfile(path):
            problems.append(f"{path}: missing")
            continue
        try:
            boxes = read_result(path)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if boxes.shape[0] != len(seq):
            problems.append(f"{path}: {boxes.shape[0]} rows but sequence {seq.name} has {len(seq)} frames")
            continue
        if not (boxes == boxes).all():
            problems.append(f"{path}: NaN values")
            continue
        if (boxes[:, 2:] < 0).any():
            problems.append(f"{path}:{int((boxes[:, 2:] < 0).any(1).argmax()) + 1}: negative width or height")
            continue
        payload.append((f"{seq.name}.txt", format_boxes(boxes, decimals=2)))
    if problems:
        raise SubmissionError(f"refusing to pack {zip_path}: {len(problems)} problem(s): " + "; ".join(problems)
                              + "; run the missing sequences (--mode run) and re-run those with bad files "
                              "(--overwrite)")
    if not payload:
        raise SubmissionError(f"refusing to pack {zip_path}: no sequence to pack")
    with atomic_writer(zip_path, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member, text in payload:
            zf.writestr(member, text)
    return [m for m, _ in payload]
