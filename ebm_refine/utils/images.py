"""Reading image files with errors that name the file, and detection of truncated JPEGs.

OpenCV treats a truncated JPEG differently depending on the call: ``cv2.imread`` decodes what is there and
prints "Premature end of JPEG file" on stderr (the rest of the image is grey), while ``cv2.imdecode``
returns None. Neither tells the caller. :func:`read_image` reads the bytes once, recognises a truncated
JPEG by its missing end-of-image marker, and lets the caller decide: an error naming the file (the
default), or the partial image plus a flag that the caller counts and reports.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from .errors import BadValueError, MissingFileError

__all__ = ["IMAGE_EXTENSIONS", "ImageDecodeError", "jpeg_is_truncated", "read_image"]

# File extensions (lower case) of the image formats :func:`read_image` decodes with every OpenCV build;
# frame folders and image inputs are listed by them.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_JPEG_START = b"\xff\xd8"
_JPEG_SOS = b"\xff\xda"   # start of scan: entropy-coded data follows
_JPEG_EOI = b"\xff\xd9"   # end of image


class ImageDecodeError(BadValueError):
    """An image file that cannot be decoded (or is truncated and the caller does not accept that)."""


def jpeg_is_truncated(data: bytes) -> bool:
    """True when ``data`` is a JPEG whose last scan has no end-of-image marker after it.

    Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker, so an EOI
    (FF D9) can only be a marker. An EXIF thumbnail brings its own SOS/EOI pair before the main image's
    scans, hence the comparison of the *last* SOS with the *last* EOI.
    """
    if not data.startswith(_JPEG_START):
        return False
    return data.rfind(_JPEG_EOI) < data.rfind(_JPEG_SOS)


def read_image(path: str, allow_truncated: bool = False) -> Tuple[np.ndarray, bool]:
    """Decode an image file as OpenCV does (BGR uint8, (H, W, 3)).

    Args:
        path: image file.
        allow_truncated: decode a truncated JPEG as far as its data goes (the missing rows come out
            grey, as libjpeg fills them) instead of raising.

    Returns:
        ``(image, truncated)``: the (H, W, 3) uint8 BGR array, and whether the file was a truncated JPEG.

    Raises:
        MissingFileError: no such file.
        ImageDecodeError: not an image OpenCV can decode, or a truncated JPEG with ``allow_truncated=False``.
    """
    import cv2  # local import: keeps `import ebm_refine.utils` cheap

    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: image file not found; check the path")
    with open(path, "rb") as fh:
        data = fh.read()
    truncated = jpeg_is_truncated(data)
    if truncated and not allow_truncated:
        raise ImageDecodeError(f"{path}: truncated JPEG (the file ends before its image data does); "
                               "copy or extract the file again")
    # cv2.imdecode gives up on a JPEG without its end marker; with the marker appended it decodes the
    # data that is there, like cv2.imread does on the file.
    buf = np.frombuffer(data + _JPEG_EOI if truncated else data, np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if image is None:
        raise ImageDecodeError(f"{path}: not a readable image ({len(data)} bytes that OpenCV cannot decode); "
                               "replace the file or remove it from the input")
    return image, truncated
