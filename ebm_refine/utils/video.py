"""Frame sources (a video file, a list of image files, a webcam) and outputs that appear only when complete.

Frames are OpenCV's: (H, W, 3) uint8 arrays in **BGR** order, sizes in pixels. A :class:`FrameSource`
knows its first frame up front (so a caller can check the size and open the output before any slow
work) and yields the rest lazily. The two outputs, :class:`VideoOutput` (one mp4) and
:class:`ImageFolderOutput` (one image per frame), write to hidden temporary files next to the target and
move them into place in :meth:`FrameOutput.commit`: a failed, interrupted or killed run never leaves a
truncated video that looks finished, and never replaces a complete earlier output.
:func:`write_frames` runs the loop with those rules (Ctrl-C included). Typical use::

    source = open_video("clip.mp4")
    path, is_video = output_target("out/", source.name, images=False)      # -> out/clip.mp4
    out = VideoOutput(path, source.fps, source.size)
    with out.abort_on_error():
        model = load_something_slow()
    write_frames(source, out, lambda i, frame: draw(model(frame), frame))

Expected failures are :class:`~ebm_refine.utils.UserError` subclasses naming the file and what to do.
Folders of images are listed by :func:`ebm_refine.tracking.datasets.io.list_frames`.

(Just past the ~400-line guide: a quarter of it is documentation, and sources, outputs and the loop that joins
them under one set of commit / discard rules read best together.)
"""
from __future__ import annotations

import abc
import contextlib
import glob
import itertools
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .errors import BadValueError, MissingFileError
from .fileio import check_writable, default_file_mode, file_lock
from .images import read_image

__all__ = ["VIDEO_EXTENSIONS", "FrameSource", "open_video", "open_webcam", "open_images", "FrameOutput",
           "VideoOutput", "ImageFolderOutput", "output_target", "write_frames"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
# Containers report 0, or nonsense such as 90000 (the time base), when they do not know the frame rate.
FALLBACK_FPS = 25.0
_MAX_PLAUSIBLE_FPS = 1000.0


@dataclass
class FrameSource:
    """Frames as BGR uint8 (H, W, 3) arrays plus what an output needs to know before the first write.

    Attributes:
        name: a short name for output files (the video's stem, the images' folder, ``"webcam"``).
        first: the first frame, already read (every source has at least one).
        rest: the other frames, read lazily.
        fps: frames per second of the source (videos made from images: the caller's choice).
        total: the number of frames when known (None for a webcam or a container that does not say).
        names: per-frame file names (image inputs), so that an image-folder output can keep them.
        live: a camera, where Ctrl-C is how a recording ends (:func:`write_frames` keeps what it wrote).
    """

    name: str
    first: np.ndarray
    rest: Iterator[np.ndarray]
    fps: float
    total: Optional[int]
    names: Optional[List[str]] = None
    live: bool = False

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the first frame in pixels, in OpenCV's order."""
        return int(self.first.shape[1]), int(self.first.shape[0])

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.first
        yield from self.rest


def _fps(cap: "cv2.VideoCapture") -> float:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if 0 < fps < _MAX_PLAUSIBLE_FPS else FALLBACK_FPS


def _capture_frames(cap: "cv2.VideoCapture") -> Iterator[np.ndarray]:
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def open_video(path: str) -> FrameSource:
    """A video file as a :class:`FrameSource` named after the file's stem.

    Raises:
        MissingFileError: no such file. BadValueError: a folder, not a video OpenCV can open, or no frames.
    """
    if not os.path.exists(path):
        raise MissingFileError(f"video {path!r} does not exist; check the path")
    if not os.path.isfile(path):
        raise BadValueError(f"video {path!r} is not a file; a folder of frames goes to --input")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise BadValueError(f"cannot open video {path!r} (unreadable file or unsupported container/codec); convert "
                            "it to H.264 mp4 or pass its frames with --input")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise BadValueError(f"video {path!r} yields no frames (empty file or unsupported codec); convert it to "
                            "H.264 mp4 or pass its frames with --input")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return FrameSource(Path(path).stem, first, _capture_frames(cap), _fps(cap), count if count > 0 else None)


def open_webcam(index: int = 0) -> FrameSource:
    """Frames from a camera (OpenCV device ``index``); a live source without a frame count."""
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise BadValueError(f"cannot open webcam {index}; check that a camera is connected and free")
    ok, first = cap.read()
    if not ok:
        cap.release()
        raise BadValueError(f"webcam {index} delivers no frames; check that no other program uses it")
    return FrameSource("webcam", first, _capture_frames(cap), _fps(cap), None, live=True)


def open_images(paths: Sequence[str], fps: float, on_truncated: Optional[Callable[[str], None]] = None,
                name: Optional[str] = None) -> FrameSource:
    """Image files as frames, in the given order, read lazily.

    Later frames of another size are resized (``INTER_AREA``) to the first one's: a video has one size.

    Args:
        paths: image files (at least one).
        fps: the frame rate of a video made from them.
        on_truncated: called with the path of each truncated JPEG, which is decoded as far as its data
            goes (the rest grey); without it such a file is an error naming it.
        name: the source's name; by default the folder holding the first image.

    Raises:
        MissingFileError / ImageDecodeError naming a file that is missing or cannot be decoded (for later
        frames, when the iteration reaches them).
    """
    if not paths:
        raise BadValueError("no input images given; pass at least one image")

    def read(path: str) -> np.ndarray:
        img, truncated = read_image(path, allow_truncated=on_truncated is not None)
        if truncated:
            on_truncated(path)
        return img

    first = read(paths[0])
    h, w = first.shape[:2]

    def rest() -> Iterator[np.ndarray]:
        for p in paths[1:]:
            img = read(p)
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            yield img

    name = name or Path(os.path.dirname(os.path.abspath(paths[0]))).name or "images"
    return FrameSource(name, first, rest(), fps, len(paths), names=[os.path.basename(p) for p in paths])


# ---------------------------------------------------------------------------------------------- outputs
class FrameOutput(abc.ABC):
    """What both outputs share: a lock on the target, removal of what killed runs left behind, and the
    ``write`` / ``commit`` / ``abort`` protocol.

    The lock (a hidden ``flock``-ed file next to the target) keeps two processes from writing the same
    output; with it held, hidden temporary files of earlier runs can only be leftovers of a run that was
    killed (SIGKILL, a power cut) and are removed.

    Attributes: ``path``, the absolute target path; ``count``, the frames written so far.
    """

    count: int = 0

    def __init__(self, path: str, program: Optional[str] = None):
        self.path = os.path.abspath(path)
        # Named in the message for a target that is busy: "another <program> run is writing ...".
        self._holder = f"another {program} run" if program else "another process"

    def _lock(self, lock: str, stale_pattern: str) -> None:
        self._stack = contextlib.ExitStack()
        try:
            acquired = self._stack.enter_context(file_lock(lock, blocking=False, remove=True))
        except OSError as e:
            raise BadValueError(f"cannot write output {self.path!r}: {e.strerror or e}") from None
        if not acquired:
            self._stack.close()
            raise BadValueError(f"{self._holder} is writing {self.path!r}; wait for it or choose another output")
        for stale in glob.glob(stale_pattern):
            if os.path.isdir(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)

    def _unlock(self) -> None:
        self._stack.close()

    @abc.abstractmethod
    def write(self, frame: np.ndarray, name: Optional[str] = None) -> None:
        """Append one BGR uint8 (H, W, 3) frame; ``name`` is its file name where the output has files."""
        raise NotImplementedError

    @abc.abstractmethod
    def commit(self) -> str:
        """Move the complete output into place, release the lock; returns the target path."""
        raise NotImplementedError

    @abc.abstractmethod
    def abort(self) -> None:
        """Delete what was written, release the lock; an existing target stays as it was."""
        raise NotImplementedError

    @contextlib.contextmanager
    def abort_on_error(self) -> Iterator[None]:
        """``with out.abort_on_error():`` aborts the output when the block raises (Ctrl-C included)."""
        try:
            yield
        except BaseException:
            self.abort()
            raise


class VideoOutput(FrameOutput):
    """An mp4 written to a hidden ``.<stem>.<random>.partial.mp4`` in the target folder, renamed into place by
    :meth:`commit` (``os.replace`` within one folder is atomic: the target either holds the old complete
    video or the new one).

    Args:
        path: the target ``.mp4``.
        fps: frames per second.
        size_wh: (width, height) in pixels; frames of another size are resized to it.
        program: named in the "another ... run is writing" error.
    """

    def __init__(self, path: str, fps: float, size_wh: Tuple[int, int], program: Optional[str] = None):
        super().__init__(path, program)
        folder, stem = os.path.dirname(self.path), Path(path).stem
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise BadValueError(f"cannot write output {path!r}: {e.strerror or e}") from None
        self._lock(os.path.join(folder, f".{Path(path).name}.lock"),
                   os.path.join(glob.escape(folder), f".{glob.escape(stem)}.*.partial.mp4"))
        try:
            # The suffix must stay .mp4: OpenCV picks the container from the extension.
            fd, self.tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".partial.mp4", dir=folder)
            os.close(fd)
        except OSError as e:
            self._unlock()
            raise BadValueError(f"cannot write output {path!r}: {e.strerror or e}") from None
        self.size = (int(size_wh[0]), int(size_wh[1]))
        self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), self.size)
        if not self.writer.isOpened():
            self.abort()
            raise BadValueError(f"OpenCV cannot open an mp4 writer for {path!r} ({self.size[0]}x{self.size[1]} px "
                                f"at {fps:g} fps); check that OpenCV was built with video support")

    def write(self, frame: np.ndarray, name: Optional[str] = None) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)
        self.count += 1

    def commit(self) -> str:
        self.writer.release()
        if self.count == 0 or os.path.getsize(self.tmp) == 0:
            self.abort()
            raise BadValueError(f"no frames were written to {self.path!r}; check the input")
        os.chmod(self.tmp, default_file_mode())  # mkstemp made it 0600; give it a plain file's mode
        os.replace(self.tmp, self.path)
        self._unlock()
        return self.path

    def abort(self) -> None:
        try:
            self.writer.release()
        except Exception:  # noqa: BLE001 - cleanup must not mask the original error
            pass
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp)
        self._unlock()


class ImageFolderOutput(FrameOutput):
    """One image per frame in ``folder``, written to a hidden ``.partial.*`` staging folder inside it and
    moved in by :meth:`commit` (each file by ``os.replace``; files of earlier runs with other names stay).

    Args:
        folder: the target folder (created).
        program: named in the "another ... run is writing" error.
    """

    def __init__(self, folder: str, program: Optional[str] = None):
        super().__init__(folder, program)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise BadValueError(f"cannot write output folder {folder!r}: {e.strerror or e}") from None
        self._lock(os.path.join(self.path, ".output.lock"), os.path.join(glob.escape(self.path), ".partial.*"))
        try:
            self.tmp = tempfile.mkdtemp(prefix=".partial.", dir=self.path)
        except OSError as e:
            self._unlock()
            raise BadValueError(f"cannot write output folder {folder!r}: {e.strerror or e}") from None

    def write(self, frame: np.ndarray, name: Optional[str] = None) -> None:
        """``name`` defaults to the frame's number, ``000000.jpg`` on; the extension picks the format."""
        name = name or f"{self.count:06d}.jpg"
        if not cv2.imwrite(os.path.join(self.tmp, name), frame):
            raise BadValueError(f"cannot write image {name!r} to {self.path!r}; check the free space and the name")
        self.count += 1

    def commit(self) -> str:
        if self.count == 0:
            self.abort()
            raise BadValueError(f"no frames were written to {self.path!r}; check the input")
        for f in os.listdir(self.tmp):
            os.replace(os.path.join(self.tmp, f), os.path.join(self.path, f))
        os.rmdir(self.tmp)
        self._unlock()
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._unlock()


def output_target(output: str, name: str, images: bool) -> Tuple[str, bool]:
    """Where a render goes: ``(path, is_video)``, after checking that its folder can be written.

    ``output`` ending in ``.mp4`` is the video itself; any other path is a folder, which receives
    ``<name>.mp4`` or, with ``images=True`` (image inputs whose names are worth keeping), one image per
    frame.

    Raises:
        BadValueError: another video extension, an ``.mp4`` that is a folder, or a folder that cannot be written.
    """
    if output.lower().endswith(VIDEO_EXTENSIONS):
        if not output.lower().endswith(".mp4"):
            raise BadValueError(f"only .mp4 video output is supported, got {output!r}; name the output <name>.mp4")
        if os.path.isdir(output):
            raise BadValueError(f"output {output!r} is a folder, not a video file; pass the folder without the .mp4 "
                                "name or another file name")
        check_writable(os.path.dirname(os.path.abspath(output)))
        return output, True
    check_writable(output)
    return (output, False) if images else (os.path.join(output, f"{name}.mp4"), True)


def write_frames(source: FrameSource, out: FrameOutput, render: Callable[[int, np.ndarray], np.ndarray],
                 max_frames: Optional[int] = None, desc: str = "render") -> int:
    """Write ``render(index, frame)`` for every frame of ``source`` to ``out`` and commit it.

    A progress bar with the frame rate (frames written per second) goes to stderr. On any exception ``out`` is aborted, so nothing
    partial remains and an existing target stays as it was. Ctrl-C keeps the frames written so far only
    for a live source (a webcam recording ends that way); otherwise it aborts too.

    Args:
        render: maps the frame's 0-based index and its BGR frame to the BGR image to write.
        max_frames: stop after this many frames (all when None).
        desc: the progress bar's label.

    Returns:
        the number of frames written.

    Raises:
        KeyboardInterrupt whose message says how many frames were rendered and what happened to the target
        (``after 2 frame(s); the partial render was discarded and <path> was left as it was``).
    """
    from tqdm import tqdm

    total = source.total if max_frames is None else min(source.total or max_frames, max_frames)
    n = 0
    try:
        with tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, file=sys.stderr) as bar:
            for i, frame in enumerate(itertools.islice(source, max_frames)):
                out.write(render(i, frame), source.names[i] if source.names else None)
                n += 1
                bar.update(1)  # tqdm's rate (frame/s) is the one speed figure
    except KeyboardInterrupt:
        if n == 0 or not source.live:
            existed = os.path.exists(out.path)
            out.abort()
            raise KeyboardInterrupt(f"after {n} frame(s); the partial render was discarded and {out.path} "
                                    + ("was left as it was" if existed else "was not written")) from None
        # A webcam recording ends with Ctrl-C: what was rendered is complete up to that frame.
    except BaseException:
        out.abort()
        raise
    with out.abort_on_error():  # a failed rename must not leave the temporary file and the lock behind
        out.commit()
    return n
