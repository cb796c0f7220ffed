"""Parsing annotation files and listing frame folders, with errors that name the file and line.

Every loader goes through these helpers, so a malformed dataset fails loudly and points at the offending
line instead of surfacing later as a shape mismatch inside a metric. Every error here is a
:class:`~ebm_refine.utils.UserError` whose message names the file and says what to do (the command-line
tools print it as one line).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence as _Seq, Tuple, Union

import numpy as np

from ...utils import BadValueError, MissingFileError
from ...utils.images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

# OTB mixes commas, tabs and spaces between files (Crossing uses tabs, DragonBaby commas); any run of
# them is one separator.
_SEP = re.compile(r"[,\s]+")
_DIGITS = re.compile(r"(\d+)")


class DatasetError(BadValueError):
    """A dataset folder that does not have the expected layout (a stray file, duplicate frame numbers)."""


class AnnotationError(DatasetError):
    """A malformed annotation or result file; the message starts with ``path:line:``."""


def short_list(names: Iterable[str], limit: int = 10) -> str:
    """``a, b, c, ... (N in all)``: at most ``limit`` names for an error message."""
    names = list(names)
    if not names:
        return "none"
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_box_file(path: str, ncols: _Seq[int] = (4,), allow_nan: bool = True) -> np.ndarray:
    """Read a text file with one box per line.

    Args:
        path: file to read.
        ncols: accepted numbers of values per line (4 for ``x,y,w,h``; VOT also allows 8 for a
            rotated box ``x1,y1,...,x4,y4``). All lines must have the same count.
        allow_nan: whether ``NaN`` values are accepted (UAV123 marks out-of-view frames with them).

    Returns:
        float64 array (L, C), one row per non-empty line.

    Raises:
        MissingFileError if the file does not exist; :class:`AnnotationError` naming ``path:line``
        for a non-numeric value, a wrong number of values, an infinite value, a disallowed NaN, or a
        blank line followed by more data (it would shift every later frame).
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: annotation file not found; check the dataset root and layout")
    with open(path, "r", encoding="utf-8-sig") as fh:
        lines = fh.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows: List[List[float]] = []
    width: Optional[int] = None
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            raise AnnotationError(f"{path}:{lineno}: blank line inside the annotation (it would shift every "
                                  "later frame); delete the line")
        tokens = [t for t in _SEP.split(text) if t]
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise AnnotationError(f"{path}:{lineno}: non-numeric value {bad!r} in line {text!r}; "
                                  "write numbers (NaN for a missing box)") from None
        if len(values) not in ncols:
            want = " or ".join(str(c) for c in ncols)
            raise AnnotationError(f"{path}:{lineno}: expected {want} values, got {len(values)} ({text!r}); "
                                  "fix the line")
        if width is not None and len(values) != width:
            raise AnnotationError(f"{path}:{lineno}: {len(values)} values but earlier lines have {width}; "
                                  "use one box format for the whole file")
        width = len(values)
        arr = np.asarray(values)
        if np.any(np.isinf(arr)):
            raise AnnotationError(f"{path}:{lineno}: infinite value in {text!r}; write a finite box "
                                  "(NaN for a missing one)")
        if not allow_nan and np.any(np.isnan(arr)):
            raise AnnotationError(f"{path}:{lineno}: NaN value not allowed here ({text!r}); write the box")
        rows.append(values)
    if not rows:
        raise AnnotationError(f"{path}:1: empty annotation file; write one x,y,w,h line per frame")
    return np.asarray(rows, dtype=np.float64)


def _is_float(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def read_flag_file(path: str) -> np.ndarray:
    """Read 0/1 flags written either one per line (GOT-10k ``absence.label``) or comma-separated on
    one line (LaSOT ``full_occlusion.txt``). Returns a bool array.

    Raises:
        :class:`AnnotationError` naming ``path:line`` for a value that is not an integer.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: flag file not found; check the dataset layout")
    out: List[bool] = []
    with open(path, "r", encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            for tok in (t for t in _SEP.split(line.strip()) if t):
                try:
                    out.append(bool(int(float(tok))))
                except ValueError:
                    raise AnnotationError(f"{path}:{lineno}: non-numeric flag {tok!r}; write 0 or 1") from None
    return np.asarray(out, dtype=bool)


def frame_number(filename: str) -> int:
    """The integer in a frame file name's stem (``"000123.jpg"`` -> 123, ``"img_0007.png"`` -> 7).

    Raises:
        DatasetError naming the file when its name has no number (``thumb.jpg`` in a frame folder).
    """
    stem = os.path.splitext(os.path.basename(filename))[0]
    found = _DIGITS.findall(stem)
    if not found:
        raise DatasetError(f"{filename}: not a frame of the sequence (its name has no frame number); move it "
                           "out of the frame folder")
    return int(found[-1])


def natural_key(path: str) -> List[Union[int, str]]:
    """Sort key of a file name that compares its digit runs as numbers: ``img2.jpg`` before ``img10.jpg``
    (frame and photo folders are often not zero-padded). Only the base name counts, case-insensitively."""
    return [int(t) if t.isdigit() else t.lower() for t in _DIGITS.split(os.path.basename(path))]


def list_frames(folder: str, extensions: Iterable[str] = IMAGE_EXTENSIONS, contiguous: bool = True,
                frame_range: Optional[Tuple[int, int]] = None, numbered: bool = True) -> List[str]:
    """List the image files of ``folder`` sorted by frame number (so ``10.jpg`` follows ``9.jpg``).

    Args:
        folder: directory holding the frames.
        extensions: accepted (lower-case) file extensions.
        contiguous: require consecutive frame numbers; a gap raises an error naming the missing file.
        frame_range: optional inclusive ``(first, last)`` frame numbers to keep (OTB's David starts at
            300); every number in it must be present.
        numbered: the files are the frames of a sequence: each name carries a frame number, no number
            twice. False lists any image (a folder of photos) in :func:`natural_key` order and ignores
            ``contiguous``; ``frame_range`` needs numbered frames.

    Raises:
        MissingFileError naming the folder or the first missing frame; DatasetError naming an image
        without a frame number or two files with the same number.
    """
    if not os.path.isdir(folder):
        raise MissingFileError(f"{folder}: frame folder not found; check the dataset root and layout")
    exts = tuple(e.lower() for e in extensions)
    names = [n for n in os.listdir(folder) if n.lower().endswith(exts) and not n.startswith(".")]
    if not names:
        raise MissingFileError(f"{folder}: no images ({', '.join(exts)}); check the path, or the dataset root "
                               "and layout")
    if not numbered:
        if frame_range is not None:
            raise ValueError("list_frames: frame_range needs numbered=True")
        return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]
    numbered = sorted((frame_number(os.path.join(folder, n)), n) for n in names)
    seen: Dict[int, str] = {}
    for k, n in numbered:
        if k in seen:
            raise DatasetError(f"{os.path.join(folder, n)}: frame number {k} is also carried by {seen[k]}; keep "
                               "one file per frame in the folder")
        seen[k] = n
    example = numbered[0][1]
    if frame_range is not None:
        first, last = frame_range
        numbered = [(k, n) for k, n in numbered if first <= k <= last]
        expected = range(first, last + 1)
    else:
        expected = range(numbered[0][0], numbered[-1][0] + 1)
    if contiguous or frame_range is not None:
        have = {k for k, _ in numbered}
        for k in expected:
            if k not in have:
                raise MissingFileError(
                    f"{os.path.join(folder, _frame_name_like(example, k))}: missing frame (frames "
                    f"{expected.start}..{expected.stop - 1} expected); restore it from the dataset")
    return [os.path.join(folder, n) for _, n in numbered]


def _frame_name_like(example: str, number: int) -> str:
    """The file name frame ``number`` would have, following ``example``'s prefix, padding and extension."""
    stem, ext = os.path.splitext(example)
    match = list(_DIGITS.finditer(stem))[-1]
    digits = match.group(1)
    padded = f"{number:0{len(digits)}d}" if len(digits) > 1 and digits.startswith("0") else str(number)
    return stem[:match.start()] + padded + stem[match.end():] + ext


def expected_frames(folder: str, first: int, last: int, digits: int, ext: str = ".jpg",
                    check: bool = True) -> List[str]:
    """Frame paths ``folder/%0{digits}d{ext}`` for ``first..last`` (inclusive), optionally checking each
    exists (the UAV123 table names frames explicitly)."""
    paths = [os.path.join(folder, f"{k:0{digits}d}{ext}") for k in range(first, last + 1)]
    if check:
        if not os.path.isdir(folder):
            raise MissingFileError(f"{folder}: frame folder not found; check the dataset root and layout")
        present = set(os.listdir(folder))
        for p in paths:
            if os.path.basename(p) not in present:
                raise MissingFileError(f"{p}: missing frame (frames {first}..{last} expected); restore it from "
                                       "the dataset")
    return paths


def check_rows(anno_path: str, boxes: np.ndarray, n_frames: int, first_only_ok: bool = False) -> None:
    """Raise an :class:`AnnotationError` naming the file when its row count does not match the frames."""
    if boxes.shape[0] == n_frames or (first_only_ok and boxes.shape[0] == 1):
        return
    line = min(boxes.shape[0], n_frames) + 1
    raise AnnotationError(f"{anno_path}:{line}: {boxes.shape[0]} ground-truth rows but {n_frames} frames; the "
                          "annotation needs one x,y,w,h line per frame (or the frames are incomplete)")


def check_box_sizes(anno_path: str, boxes: np.ndarray) -> np.ndarray:
    """Refuse ground-truth boxes with a negative width or height; returns ``boxes``.

    Zero sizes and NaN rows are kept: datasets use them for frames without a visible target, and the
    protocols score them as invalid frames. A negative size has no such meaning (x2 < x1): it is a
    broken annotation that every protocol would score differently.

    Raises:
        AnnotationError naming ``anno_path:line``.
    """
    with np.errstate(invalid="ignore"):
        negative = (boxes[:, 2:4] < 0).any(axis=1)
    if negative.any():
        row = int(np.flatnonzero(negative)[0])
        raise AnnotationError(f"{anno_path}:{row + 1}: box {boxes[row].tolist()} has a negative width or height; "
                              "fix the line (0,0,0,0 or NaN marks a frame without a visible target)")
    return boxes


def invalid_rows(boxes: np.ndarray) -> int:
    """Number of rows that no protocol scores as a normal frame: NaN, or zero width or height."""
    with np.errstate(invalid="ignore"):
        return int((np.isnan(boxes).any(axis=1) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)).sum())


def log_invalid_ground_truth(dataset: str, sequences) -> int:
    """One log line per dataset counting ground-truth rows without a valid box; returns the count.

    ``sequences`` are :class:`~ebm_refine.tracking.datasets.Sequence` objects; first-frame-only sequences
    (TrackingNet TEST, GOT-10k test) are not counted.
    """
    counts = {s.name: invalid_rows(s.ground_truth) for s in sequences if s.has_full_ground_truth}
    counts = {k: v for k, v in counts.items() if v}
    total = sum(counts.values())
    if total:
        worst = sorted(counts.items(), key=lambda kv: -kv[1])[:5]
        listed = ", ".join(f"{k} {v}" for k, v in worst) + (", ..." if len(counts) > 5 else "")
        logger.info("%s: %d ground-truth row(s) without a valid box (NaN or zero size) in %d sequence(s) (%s); "
                    "the protocols score them as invalid frames (docs/tracking_evaluation.md)",
                    dataset, total, len(counts), listed)
    return total


# ---------------------------------------------------------------------------------------------------
# Rotated (VOT) boxes
# ---------------------------------------------------------------------------------------------------
ROTATED_BOX_MODES = ("minmax", "preserve_area")


def polygon_to_xywh(poly: np.ndarray, mode: str = "minmax") -> np.ndarray:
    """Convert VOT polygons (N, 8) ``x1,y1,...,x4,y4`` to axis-aligned boxes (N, 4) ``x, y, w, h``.

    Modes:
        ``minmax`` (default): the tightest axis-aligned rectangle containing the four corners,
            ``x = min(xi), w = max(xi) - min(xi)`` (same for y). This is the VOT toolkit's own
            polygon-to-rectangle conversion; it over-covers rotated targets.
        ``preserve_area``: centred on the mean of the corners, with the min/max rectangle's aspect ratio,
            scaled so that its area equals the polygon's (|p1-p2| * |p2-p3|). This is the convention
            pytracking uses to initialise trackers on VOT; got10k's ``_corner2rect`` is the same plus
            one pixel on w and h.

    Rows of 4 values are returned unchanged; NaN polygons give NaN boxes.
    """
    poly = np.asarray(poly, dtype=np.float64)
    if poly.ndim == 1:
        poly = poly[None]
    if poly.shape[1] == 4:
        return poly.copy()
    if poly.shape[1] != 8:
        raise ValueError(f"expected (N, 8) polygons, got {poly.shape}")
    if mode not in ROTATED_BOX_MODES:
        raise BadValueError(f"unknown rotated-box mode {mode!r}; choose from {', '.join(ROTATED_BOX_MODES)}")
    xs, ys = poly[:, 0::2], poly[:, 1::2]
    x1, x2 = xs.min(1), xs.max(1)
    y1, y2 = ys.min(1), ys.max(1)
    if mode == "minmax":
        return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
    cx, cy = xs.mean(1), ys.mean(1)
    side_a = np.linalg.norm(poly[:, 0:2] - poly[:, 2:4], axis=1)
    side_b = np.linalg.norm(poly[:, 2:4] - poly[:, 4:6], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.sqrt(side_a * side_b / ((x2 - x1) * (y2 - y1)))
    w, h = scale * (x2 - x1), scale * (y2 - y1)
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)
