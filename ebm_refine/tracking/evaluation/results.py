"""Result files: layout, atomic writing and strict reading.

Layout (pytracking's ``Tracker.results_dir`` and ``_save_tracker_output``)::

    <results_root>/<tracker>/<params>[_<run id>]/<seq>.txt        one box per frame: x,y,w,h
    <results_root>/<tracker>/<params>[_<run id>]/<seq>_time.txt   one wall-clock time per frame, in seconds

with the run id in three digits (``ebm_000``) when there is one. Boxes are written in one of two
:data:`RESULT_FORMATS`: ``float`` (default), comma-separated with 4 decimals, or ``pytracking``, tab-separated
integers as pytracking writes them (``astype(int)``: truncated towards zero, which throws away sub-pixel
precision). Every reader in this package, and pytracking's and got10k's, accept both. Times are one ``%f``
number per line, as pytracking writes them. The first row is the initialisation box, as in pytracking.

Each file is written with :mod:`ebm_refine.utils.fileio` (a temporary name in the same folder, moved into
place with ``os.replace``, the permissions of a plain ``open``), so a killed run never leaves a truncated
``<seq>.txt`` that a resumed run would take as finished. The box file is written last: its presence marks a
finished sequence.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

from ...utils import BadValueError, MissingFileError
from ...utils.fileio import atomic_write_text
from ..datasets.io import AnnotationError, read_box_file

BOX_DECIMALS = 4
RESULT_FORMATS = ("float", "pytracking")


def tracker_results_dir(results_root: str, tracker: str, params: str = "default", run_id: Optional[int] = None
                        ) -> str:
    """``<results_root>/<tracker>/<params>``, or ``.../<params>_<run id:03d>`` (pytracking's naming)."""
    return os.path.join(results_root, tracker, params if run_id is None else f"{params}_{int(run_id):03d}")


def result_path(results_dir: str, seq_name: str) -> str:
    return os.path.join(results_dir, f"{seq_name}.txt")


def time_path(results_dir: str, seq_name: str) -> str:
    return os.path.join(results_dir, f"{seq_name}_time.txt")


def format_boxes(boxes: np.ndarray, decimals: int = BOX_DECIMALS, delimiter: str = ",") -> str:
    """One ``x<d>y<d>w<d>h`` line per row with ``decimals`` decimals."""
    boxes = np.asarray(boxes, dtype=np.float64)
    fmt = delimiter.join([f"{{:.{decimals}f}}"] * 4)
    return "".join(fmt.format(*row) + "\n" for row in boxes)


def write_boxes(path: str, boxes: np.ndarray, decimals: int = BOX_DECIMALS, result_format: str = "float") -> None:
    """Write (N, 4) boxes in one of :data:`RESULT_FORMATS` (see the module docstring)."""
    if result_format == "pytracking":
        rows = np.asarray(boxes, dtype=np.float64).astype(int)
        atomic_write_text(path, "".join("\t".join(str(v) for v in row) + "\n" for row in rows))
    elif result_format == "float":
        atomic_write_text(path, format_boxes(boxes, decimals))
    else:
        raise BadValueError(f"unknown result format {result_format!r}; choose from {', '.join(RESULT_FORMATS)}")


def write_times(path: str, times: Iterable[float]) -> None:
    atomic_write_text(path, "".join(f"{t:.6f}\n" for t in times))


def read_result(path: str) -> np.ndarray:
    """Read a result file (commas, tabs or spaces) as (N, 4) float64.

    Raises:
        MissingFileError, or :class:`~ebm_refine.tracking.datasets.io.AnnotationError` naming
        ``path:line`` for a non-numeric line or a line without exactly 4 values.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: result file not found; run the tracker first (--mode run) or pass "
                               "--on-missing skip")
    return read_box_file(path, ncols=(4,), allow_nan=True)


def read_times(path: str) -> Optional[np.ndarray]:
    """Per-frame times (N,) in seconds, or None when the file does not exist."""
    if not os.path.isfile(path):
        return None
    values = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    values.append(float(line.split()[0].strip(",")))
                except ValueError:
                    raise AnnotationError(f"{path}:{lineno}: non-numeric time {line.strip()!r}; delete the file "
                                          "(FPS is then not reported) or re-run the sequence") from None
    return np.asarray(values, dtype=np.float64)


def count_rows(path: str) -> int:
    """Number of non-empty lines of a file (cheap completeness check)."""
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def is_finished(results_dir: str, seq_name: str, n_frames: int) -> bool:
    """True when ``<seq>.txt`` exists with one row per frame (a resumed run skips such sequences)."""
    path = result_path(results_dir, seq_name)
    return os.path.isfile(path) and count_rows(path) == n_frames
