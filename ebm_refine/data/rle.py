"""COCO run-length encoding of binary masks and tight boxes, in pure numpy.

COCO stores a mask of shape (H, W) as run lengths over its pixels in column-major (Fortran) order,
starting with a (possibly empty) run of zeros. The *compressed* form packs the counts into an ASCII
string: counts after the second are delta-coded against the count two places earlier, then written
as 5-bit groups (low bits first) with a continuation bit, offset by 48. This is exactly what
``pycocotools.mask.encode`` produces, so pycocotools and Detectron2 read our annotations unchanged;
we implement it here so that the generator does not depend on pycocotools (tests check the two agree).

Boxes follow COCO: ``[x, y, w, h]`` in pixels, continuous coordinates, so a mask occupying pixel
columns 3..7 has x = 3, w = 5.
"""
from __future__ import annotations

from typing import Dict, List, Tuple, Union

import numpy as np

__all__ = ["encode_rle", "decode_rle", "mask_to_box", "counts_to_string", "string_to_counts"]

RLE = Dict[str, Union[List[int], str]]


def counts_to_string(counts: List[int]) -> str:
    """COCO's compressed string for a list of run lengths (``rleToString`` in maskApi.c)."""
    out = []
    for i, count in enumerate(counts):
        x = int(count)
        if i > 2:
            # Delta against the run two places back (same value: both are runs of the same pixel value).
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas terminate at x == -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def string_to_counts(s: str) -> List[int]:
    """Inverse of :func:`counts_to_string` (``rleFrString`` in maskApi.c)."""
    counts: List[int] = []
    p = 0
    data = s.encode("ascii")
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: np.ndarray) -> Dict[str, Union[List[int], str]]:
    """Binary mask (H, W) -> COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    h, w = mask.shape
    flat = mask.ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": ""}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts.insert(0, 0)  # RLE always starts with a run of zeros
    return {"size": [h, w], "counts": counts_to_string(counts)}


def decode_rle(rle: RLE) -> np.ndarray:
    """COCO RLE (compressed string or uncompressed list counts) -> bool mask (H, W)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (bytes, str)):
        counts = string_to_counts(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    if flat.size != h * w:
        raise ValueError(f"RLE covers {flat.size} pixels, expected {h * w}")
    return flat.reshape((h, w), order="F")


def mask_to_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight COCO box ``(x, y, w, h)`` in pixels of the True pixels of a (H, W) mask; zeros if empty."""
    mask = np.asarray(mask, dtype=bool)
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return (0, 0, 0, 0)
    rows = np.flatnonzero(mask.any(axis=1))
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
