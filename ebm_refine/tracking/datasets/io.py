"""Parsing annotation files and listing frame folders, with errors that name the file and line.

Every loader goes through these helpers, so a malformed dataset fails loudly and points at the offending
line instead of surfacing later as a shape mismatch inside a metric.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, List, Optional, Sequence as _Seq, Tuple

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

# OTB mixes commas, tabs and spaces between files (Crossing uses tabs, DragonBaby commas); any run of
# them is one separator.
_SEP = re.compile(r"[,\s]+")
_DIGITS = re.compile(r"(\d+)")


class AnnotationError(ValueError):
    """A malformed annotation or result file; the message starts with ``path:line:``."""


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
        FileNotFoundError if the file does not exist; :class:`AnnotationError` naming ``path:line``
        for a non-numeric value, a wrong number of values, an infinite value, a disallowed NaN, or a
        blank line followed by more data (it would shift every later frame).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, "r", encoding="utf-8-sig") as fh:
        lines = fh.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    rows: List[List[float]] = []
    width: Optional[int] = None
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            raise AnnotationError(f"{path}:{lineno}: blank line inside the annotation")
        tokens = [t for t in _SEP.split(text) if t]
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise AnnotationError(f"{path}:{lineno}: non-numeric value {bad!r} in line {text!r}") from None
        if len(values) not in ncols:
            want = " or ".join(str(c) for c in ncols)
            raise AnnotationError(f"{path}:{lineno}: expected {want} values, got {len(values)} ({text!r})")
        if width is not None and len(values) != width:
            raise AnnotationError(f"{path}:{lineno}: {len(values)} values but earlier lines have {width}")
        width = len(values)
        arr = np.asarray(values)
        if np.any(np.isinf(arr)):
            raise AnnotationError(f"{path}:{lineno}: infinite value in {text!r}")
        if not allow_nan and np.any(np.isnan(arr)):
            raise AnnotationError(f"{path}:{lineno}: NaN value not allowed here ({text!r})")
        rows.append(values)
    if not rows:
        raise AnnotationError(f"{path}:1: empty annotation file")
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
        raise FileNotFoundError(f"flag file not found: {path}")
    out: List[bool] = []
    with open(path, "r", encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            for tok in (t for t in _SEP.split(line.strip()) if t):
                try:
                    out.append(bool(int(float(tok))))
                except ValueError:
                    raise AnnotationError(f"{path}:{lineno}: non-numeric flag {tok!r}") from None
    return np.asarray(out, dtype=bool)


def frame_number(filename: str) -> int:
    """The integer in a frame file name's stem (``"000123.jpg"`` -> 123, ``"img_0007.png"`` -> 7)."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    found = _DIGITS.findall(stem)
    if not found:
        raise ValueError(f"frame file name has no number: {filename}")
    return int(found[-1])


def list_frames(folder: str, extensions: Iterable[str] = IMAGE_EXTENSIONS, contiguous: bool = True,
                frame_range: Optional[Tuple[int, int]] = None) -> List[str]:
    """List the image files of ``folder`` sorted by frame number (so ``10.jpg`` follows ``9.jpg``).

    Args:
        folder: directory holding the frames.
        extensions: accepted (lower-case) file extensions.
        contiguous: require consecutive frame numbers; a gap raises an error naming the missing file.
        frame_range: optional inclusive ``(first, last)`` frame numbers to keep (OTB's David starts at
            300); every number in it must be present.

    Raises:
        FileNotFoundError naming the folder or the first missing frame.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"frame folder not found: {folder}")
    exts = tuple(e.lower() for e in extensions)
    names = [n for n in os.listdir(folder) if n.lower().endswith(exts) and not n.startswith(".")]
    if not names:
        raise FileNotFoundError(f"no frames ({', '.join(exts)}) in {folder}")
    numbered = sorted((frame_number(n), n) for n in names)
    nums = [k for k, _ in numbered]
    if len(set(nums)) != len(nums):
        dup = next(k for k in nums if nums.count(k) > 1)
        raise ValueError(f"{folder}: two frame files carry number {dup}")
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
                raise FileNotFoundError(f"missing frame {os.path.join(folder, _frame_name_like(example, k))} "
                                        f"(frames {expected.start}..{expected.stop - 1} expected)")
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
            raise FileNotFoundError(f"frame folder not found: {folder}")
        present = set(os.listdir(folder))
        for p in paths:
            if os.path.basename(p) not in present:
                raise FileNotFoundError(f"missing frame {p} (frames {first}..{last} expected)")
    return paths


def check_rows(anno_path: str, boxes: np.ndarray, n_frames: int, first_only_ok: bool = False) -> None:
    """Raise an :class:`AnnotationError` naming the file when its row count does not match the frames."""
    if boxes.shape[0] == n_frames or (first_only_ok and boxes.shape[0] == 1):
        return
    line = min(boxes.shape[0], n_frames) + 1
    raise AnnotationError(f"{anno_path}:{line}: {boxes.shape[0]} ground-truth rows but {n_frames} frames")


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
        raise ValueError(f"unknown rotated-box mode {mode!r}; choose from {ROTATED_BOX_MODES}")
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
