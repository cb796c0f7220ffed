#!/usr/bin/env python
"""Render EBM box refinement on videos, image lists, frame folders or a webcam.

Two modes (the first argument, or ``--mode``):

``detect``
    A Detectron2 model with the EBM ROI head. Every frame shows the detector's boxes before refinement
    (thin, dashed) and after the EBM gradient ascent (solid), with class name and score::

        python demo/demo.py detect --config-file configs/Synthetic/ebm_compact_fpn_synthetic.yaml \\
            --input "datasets/ebm_synthetic/val/*.jpg" --output output/demo/synthetic.mp4 \\
            --opts MODEL.WEIGHTS output/quickstart/detection/ebm/model_final.pth

``track``
    The ATOM-style EBM tracker on a video file or a folder of frames, started from ``--init-box`` or the
    first line of ``--ground-truth``; draws the tracked box, the ground truth when given, and the energy
    of the estimated box as its confidence::

        python demo/demo.py track --input ../shared/data/tracking/otb/Crossing/img \\
            --ground-truth ../shared/data/tracking/otb/Crossing/groundtruth_rect.txt \\
            --checkpoint checkpoints/tracking/ebm_mobilenet_real/net.pth --output output/demo/crossing.mp4

Outputs are written to a hidden temporary file next to the target and renamed into place only when
complete, so a failed or interrupted run never leaves a truncated video that looks finished, and never
replaces a complete earlier output. Ctrl-C ends a webcam recording and keeps what was rendered; on any
other input it discards the partial render and leaves an existing output as it was (exit status 130).
Temporary files that a killed run left behind are removed by the next run to the same output; two runs
cannot write the same output at once.

Bad input (a missing or unreadable video or image, an unsupported codec, an empty folder, frames smaller
than 16x16 px, an unwritable output, a bad start box, a missing or wrong checkpoint, ``detect`` without
``MODEL.WEIGHTS``) ends with one line on stderr naming the file or option and what to do, exit status 2;
``--debug`` shows the traceback. Truncated JPEG frames are drawn as far as their data goes, and a
non-finite energy is drawn as "n/a": each gives one warning, then a count at the end.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import math
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The script must work from a checkout without `pip install -e .` (like tools/*.py).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from ebm_refine.utils import UserError, check_writable, file_lock  # noqa: E402
from ebm_refine.utils import read_image as decode_image  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".m4v")
MODES = ("detect", "track")
# Smaller frames cannot hold a box, a label and the legend (and OpenCV's mp4 writer refuses 1x1).
MIN_FRAME_SIDE = 16
# What loading a file of the wrong kind raises (torch.load on a text file, a state dict without the
# expected keys, shapes that do not fit). Anything else from a loader is a bug and keeps its traceback.
WRONG_FILE_ERRORS = (RuntimeError, KeyError, ValueError, TypeError, AttributeError, EOFError, pickle.UnpicklingError)


class DemoError(UserError):
    """A problem with the user's input or output that ends the run with a one-line message (exit code 2)."""


class Warnings:
    """Problems that may repeat on every frame: the first of each kind is printed, the rest counted."""

    def __init__(self) -> None:
        self.counts: Dict[str, int] = collections.Counter()

    def __call__(self, kind: str, message: str) -> None:
        if not self.counts[kind]:
            from tqdm import tqdm

            tqdm.write(f"demo.py: warning: {message}", file=sys.stderr)  # above the progress bar
        self.counts[kind] += 1

    def summary(self) -> None:
        for kind, n in self.counts.items():
            if n > 1:
                print(f"demo.py: warning: {n} frames with {kind} in all", file=sys.stderr)


# --------------------------------------------------------------------------------------------- frames
def natural_key(path: str) -> List[Any]:
    """Sort key that orders ``img2.jpg`` before ``img10.jpg`` (frame folders are rarely zero-padded)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.path.basename(path))]


def list_images(folder: str) -> List[str]:
    """Image files directly inside ``folder``, in numeric frame order."""
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS)]
    return sorted(files, key=natural_key)


def expand_inputs(items: Sequence[str]) -> List[str]:
    """Resolve ``--input`` items (files, folders, quoted glob patterns) into an ordered list of images."""
    paths: List[str] = []
    for item in items:
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item), key=natural_key)
            if not matches:
                raise DemoError(f"no files match the pattern {item!r}; check the pattern (quote it for the shell)")
            paths.extend(matches)
        elif os.path.isdir(item):
            found = list_images(item)
            if not found:
                raise DemoError(f"folder {item!r} contains no images ({', '.join(IMAGE_EXTS)}); pass the folder that "
                               "holds the frames")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise DemoError(f"input {item!r} does not exist; check the path")
    if not paths:
        raise DemoError("no input images given; pass --input with images, a pattern or a folder")
    return paths


@dataclass
class FrameSource:
    """Frames as BGR uint8 arrays plus what the writer needs to know up front."""

    name: str
    first: np.ndarray
    rest: Iterator[np.ndarray]
    fps: float
    total: Optional[int]
    names: Optional[List[str]] = None  # per-frame file names (image inputs), for image-folder output
    live: bool = False  # a camera: Ctrl-C is how a recording ends, so it keeps what was rendered

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.first
        yield from self.rest


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
    """Open a video file; fails clearly when the file is missing, not a video, or decodes to no frames."""
    if not os.path.exists(path):
        raise DemoError(f"video {path!r} does not exist; check the path")
    if not os.path.isfile(path):
        raise DemoError(f"video {path!r} is not a file; a folder of frames goes to --input")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise DemoError(f"cannot open video {path!r} (unreadable file or unsupported container/codec); convert it "
                        "to H.264 mp4 or pass its frames with --input")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise DemoError(f"video {path!r} yields no frames (empty file or unsupported codec); convert it to H.264 "
                        "mp4 or pass its frames with --input")
    fps = cap.get(cv2.CAP_PROP_FPS)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    return FrameSource(Path(path).stem, first, _capture_frames(cap), fps if 0 < fps < 1000 else 25.0,
                       count if count > 0 else None)


def open_webcam(index: int = 0) -> FrameSource:
    """Frames from a camera (OpenCV device index)."""
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise DemoError(f"cannot open webcam {index}; check that a camera is connected and free")
    ok, first = cap.read()
    if not ok:
        cap.release()
        raise DemoError(f"webcam {index} delivers no frames; check that no other program uses it")
    fps = cap.get(cv2.CAP_PROP_FPS)
    return FrameSource("webcam", first, _capture_frames(cap), fps if 0 < fps < 1000 else 25.0, None, live=True)


def read_image(path: str, warn: Optional[Warnings] = None) -> np.ndarray:
    """A BGR image; a truncated JPEG is drawn as far as its data goes, with a warning (once per run)."""
    img, truncated = decode_image(path, allow_truncated=True)
    if truncated and warn is not None:
        warn("a truncated image file", f"{path}: truncated JPEG, drawn as far as its data goes (the rest is grey); "
             "copy the file again for a clean video")
    return img


def open_images(paths: List[str], fps: float, warn: Optional[Warnings] = None) -> FrameSource:
    """Frames from image files; later frames are resized to the first one's size (one video, one size)."""
    first = read_image(paths[0], warn)
    h, w = first.shape[:2]

    def rest() -> Iterator[np.ndarray]:
        for p in paths[1:]:
            img = read_image(p, warn)
            if img.shape[:2] != (h, w):
                img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            yield img

    name = Path(os.path.dirname(os.path.abspath(paths[0]))).name or "images"
    return FrameSource(name, first, rest(), fps, len(paths), names=[os.path.basename(p) for p in paths])


def check_frame_size(source: FrameSource, what: str) -> None:
    """Refuse frames too small to draw on (a 1x1 video, a thumbnail by mistake)."""
    h, w = source.first.shape[:2]
    if min(h, w) < MIN_FRAME_SIDE:
        raise DemoError(f"{what}: frames are {w}x{h} px; the demo needs at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} px, "
                        "use the full-size video or images")


def limit(frames: Iterator[np.ndarray], max_frames: Optional[int]) -> Iterator[np.ndarray]:
    """The first ``max_frames`` frames (all when None)."""
    for i, f in enumerate(frames):
        if max_frames is not None and i >= max_frames:
            return
        yield f


# --------------------------------------------------------------------------------------------- output
class _Output:
    """What both outputs share: a lock on the target, and removal of what killed runs left behind.

    The lock (a hidden ``.<name>.lock`` next to the target, held with ``flock``) keeps two demo runs from
    writing the same output; with it held, hidden temporary files of earlier runs can only be leftovers
    of a run that was killed (SIGKILL, a power cut) and are removed.
    """

    path: str

    def _lock(self, lock: str, stale_pattern: str) -> None:
        self._stack = contextlib.ExitStack()
        try:
            acquired = self._stack.enter_context(file_lock(lock, blocking=False, remove=True))
        except OSError as e:
            raise DemoError(f"cannot write output {self.path!r}: {e.strerror or e}") from None
        if not acquired:
            self._stack.close()
            raise DemoError(f"another demo.py run is writing {self.path!r}; wait for it or choose another --output")
        for stale in glob.glob(stale_pattern):
            if os.path.isdir(stale):
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(stale)

    def _unlock(self) -> None:
        self._stack.close()


class VideoOutput(_Output):
    """An mp4 written to a hidden temporary file in the target folder and renamed into place by ``commit``.

    ``os.replace`` within one folder is atomic, so the target path either does not exist or holds a
    complete video (the old one until ``commit``); ``abort`` deletes the temporary file.
    """

    def __init__(self, path: str, fps: float, size_wh: Tuple[int, int]):
        self.path = os.path.abspath(path)
        folder = os.path.dirname(self.path)
        stem = Path(path).stem
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise DemoError(f"cannot write output {path!r}: {e.strerror or e}") from None
        self._lock(os.path.join(folder, f".{Path(path).name}.lock"),
                   os.path.join(glob.escape(folder), f".{glob.escape(stem)}.*.partial.mp4"))
        try:
            # The suffix must stay .mp4: OpenCV picks the container from the extension.
            fd, self.tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".partial.mp4", dir=folder)
            os.close(fd)
        except OSError as e:
            self._unlock()
            raise DemoError(f"cannot write output {path!r}: {e.strerror or e}") from None
        self.size = size_wh
        self.count = 0
        self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size_wh)
        if not self.writer.isOpened():
            self.abort()
            raise DemoError(f"OpenCV cannot open an mp4 writer for {path!r} ({size_wh[0]}x{size_wh[1]} px at "
                            f"{fps:g} fps); check that OpenCV was built with video support")

    def write(self, frame: np.ndarray, name: Optional[str] = None) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)
        self.count += 1

    def commit(self) -> str:
        self.writer.release()
        if self.count == 0 or os.path.getsize(self.tmp) == 0:
            self.abort()
            raise DemoError(f"no frames were written to {self.path!r}; check the input")
        # mkstemp creates the file 0600; give the video the permissions a normal file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)
        os.replace(self.tmp, self.path)
        self._unlock()
        return self.path

    def abort(self) -> None:
        try:
            self.writer.release()
        except Exception:  # noqa: BLE001 - cleanup must not mask the original error
            pass
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
        self._unlock()


class ImageFolderOutput(_Output):
    """Rendered frames as images in a folder; written to a hidden staging folder and moved in at the end."""

    def __init__(self, folder: str):
        self.path = os.path.abspath(folder)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise DemoError(f"cannot write output folder {folder!r}: {e.strerror or e}") from None
        self._lock(os.path.join(self.path, ".demo.lock"), os.path.join(glob.escape(self.path), ".partial.*"))
        try:
            self.tmp = tempfile.mkdtemp(prefix=".partial.", dir=self.path)
        except OSError as e:
            self._unlock()
            raise DemoError(f"cannot write output folder {folder!r}: {e.strerror or e}") from None
        self.count = 0

    def write(self, frame: np.ndarray, name: Optional[str] = None) -> None:
        name = name or f"{self.count:06d}.jpg"
        if not cv2.imwrite(os.path.join(self.tmp, name), frame):
            raise DemoError(f"cannot write image {name!r} to {self.path!r}; check the free space and the name")
        self.count += 1

    def commit(self) -> str:
        if self.count == 0:
            self.abort()
            raise DemoError(f"no frames were written to {self.path!r}; check the input")
        for f in os.listdir(self.tmp):
            os.replace(os.path.join(self.tmp, f), os.path.join(self.path, f))
        os.rmdir(self.tmp)
        self._unlock()
        return self.path

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._unlock()


def output_path(output: str, source: FrameSource, want_video: bool) -> Tuple[str, bool]:
    """Decide between an mp4 file and an image folder; a folder for a video input gets ``<name>.mp4``."""
    if output.lower().endswith(VIDEO_EXTS):
        if not output.lower().endswith(".mp4"):
            raise DemoError(f"only .mp4 video output is supported, got {output!r}; name the output <name>.mp4")
        if os.path.isdir(output):
            raise DemoError(f"output {output!r} is a folder, not a video file; pass the folder without the .mp4 "
                           "name or another file name")
        check_writable(os.path.dirname(os.path.abspath(output)))
        return output, True
    if want_video:
        check_writable(output)
        return os.path.join(output, f"{source.name}.mp4"), True
    check_writable(output)
    return output, False


@contextlib.contextmanager
def aborting(out) -> Iterator[None]:
    """Abort ``out`` (delete its temporary file, release its lock) when the block raises."""
    try:
        yield
    except BaseException:
        out.abort()
        raise


def run_frames(source: FrameSource, out, render: Callable[[int, np.ndarray], np.ndarray],
               max_frames: Optional[int], desc: str, warn: Optional[Warnings] = None) -> int:
    """Render every frame into ``out`` with a progress bar; commit on success, clean up on any failure.

    Ctrl-C commits what was rendered only for a live source (a webcam recording ends that way); otherwise
    the partial render is discarded and an existing output stays as it was.
    """
    from tqdm import tqdm

    total = source.total if max_frames is None else min(source.total or max_frames, max_frames)
    n = 0
    t0 = time.perf_counter()
    try:
        with tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, file=sys.stderr) as bar:
            for i, frame in enumerate(limit(iter(source), max_frames)):
                out.write(render(i, frame), source.names[i] if source.names else None)
                n += 1
                bar.update(1)
                bar.set_postfix(fps=f"{n / max(time.perf_counter() - t0, 1e-9):.1f}")
    except KeyboardInterrupt:
        if n == 0 or not source.live:
            existed = os.path.exists(out.path)
            out.abort()
            raise KeyboardInterrupt(f"after {n} frame(s); the partial render was discarded and {out.path} "
                                    + ("was left as it was" if existed else "was not written")) from None
        # A webcam recording ends with Ctrl-C: keep what was rendered (it is complete up to that frame).
    except BaseException:
        out.abort()
        raise
    finally:
        if warn is not None:
            warn.summary()
    path = out.commit()
    print(f"wrote {n} frames to {path}", file=sys.stderr)
    return n


# --------------------------------------------------------------------------------------------- drawing
PALETTE = [(66, 135, 245), (60, 180, 75), (230, 25, 75), (255, 225, 25), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (245, 130, 48), (0, 128, 128), (170, 110, 40)]  # RGB


def color(i: int) -> Tuple[int, int, int]:
    """BGR colour of class (or role) ``i``."""
    r, g, b = PALETTE[i % len(PALETTE)]
    return (b, g, r)


def dashed_line(img: np.ndarray, a: Tuple[float, float], b: Tuple[float, float], col: Tuple[int, int, int],
                thickness: int = 1, dash: int = 6) -> None:
    """A dashed segment from ``a`` to ``b``: dashes and gaps of ``dash`` pixels, starting with a dash."""
    length = math.hypot(b[0] - a[0], b[1] - a[1])
    steps = max(int(length // dash), 1)
    for s in range(0, steps, 2):
        t0, t1 = s / steps, min((s + 1) / steps, 1.0)
        p = (int(round(a[0] + (b[0] - a[0]) * t0)), int(round(a[1] + (b[1] - a[1]) * t0)))
        q = (int(round(a[0] + (b[0] - a[0]) * t1)), int(round(a[1] + (b[1] - a[1]) * t1)))
        cv2.line(img, p, q, col, thickness, cv2.LINE_AA)


def dashed_rect(img: np.ndarray, box: Sequence[float], col: Tuple[int, int, int], thickness: int = 1,
                dash: int = 6) -> None:
    """A dashed rectangle (OpenCV has none); ``box`` is x0, y0, x1, y1."""
    x0, y0, x1, y1 = (float(v) for v in box)
    for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        dashed_line(img, a, b, col, thickness, dash)


def font_scale(img: np.ndarray) -> float:
    """Text size that stays readable from 128 px thumbnails to HD video."""
    return max(0.3, min(img.shape[:2]) / 700.0)


def label(img: np.ndarray, text: str, org: Tuple[int, int], col: Tuple[int, int, int]) -> None:
    """Text on a filled background so that it reads on any image."""
    fs = font_scale(img)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
    x = int(np.clip(org[0], 0, max(img.shape[1] - tw - 2, 0)))
    y = int(np.clip(org[1], th + base + 1, img.shape[0] - 1))
    cv2.rectangle(img, (x, y - th - base - 1), (x + tw + 2, y), col, -1)
    lum = 0.114 * col[0] + 0.587 * col[1] + 0.299 * col[2]
    cv2.putText(img, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, fs,
                (0, 0, 0) if lum > 140 else (255, 255, 255), 1, cv2.LINE_AA)


def legend(img: np.ndarray, entries: Sequence[Tuple[str, Tuple[int, int, int], bool]],
           extra: Sequence[str] = ()) -> None:
    """Top-left legend: one line sample per entry (dashed or solid) plus free text lines."""
    fs = font_scale(img)
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
    line_h = th + base + 4
    sample = int(3 * th) + 6
    widths = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)[0][0] for t, _, _ in entries]
    widths += [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)[0][0] - sample - 4 for t in extra]
    w = sample + 8 + max(widths + [0])
    h = line_h * (len(entries) + len(extra)) + 4
    overlay = img.copy()
    cv2.rectangle(overlay, (2, 2), (2 + w, 2 + h), (0, 0, 0), -1)
    cv2.addWeighted(overlay, 0.55, img, 0.45, 0, dst=img)
    y = 2 + line_h
    for text, col, dashed in entries:
        yl = y - th // 2 - 1
        if dashed:
            dashed_line(img, (6, yl), (6 + sample, yl), col, 1, dash=4)
        else:
            cv2.line(img, (6, yl), (6 + sample, yl), col, 2, cv2.LINE_AA)
        cv2.putText(img, text, (10 + sample, y - 2), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1, cv2.LINE_AA)
        y += line_h
    for text in extra:
        cv2.putText(img, text, (6, y - 2), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1, cv2.LINE_AA)
        y += line_h


# --------------------------------------------------------------------------------------------- detect
class EBMPredictor:
    """Single-image inference like Detectron2's DefaultPredictor, but loading with :class:`EBMCheckpointer`.

    Takes a BGR uint8 image, returns the model's ``Instances`` on the CPU in original-image pixels.
    """

    def __init__(self, cfg):
        import detectron2.data.transforms as T
        from detectron2.modeling import build_model

        from ebm_refine.detectron2 import EBMCheckpointer

        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        try:
            EBMCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        except UserError:
            raise
        except WRONG_FILE_ERRORS as e:
            raise DemoError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} cannot be loaded into this model "
                            f"({type(e).__name__}: {e}); pass a model_final.pth written by tools/train_net.py "
                            "with this --config-file") from e
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT

    def __call__(self, image_bgr: np.ndarray):
        import torch

        with torch.no_grad():
            img = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
            h, w = img.shape[:2]
            resized = self.resize.get_transform(img).apply_image(img)
            tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32"))
            out = self.model([{"image": tensor, "height": h, "width": w}])[0]
        return out["instances"].to("cpu")


def load_detection_cfg(config_file: str, opts: Sequence[str], threshold: float):
    """Detectron2 config with the EBM keys: a path, or a name under ``configs/`` (``Synthetic/…yaml``)."""
    from detectron2.config import get_cfg

    from ebm_refine.detectron2 import add_ebm_config, ebm_config_path

    path = config_file
    if not os.path.isfile(path):
        try:
            path = ebm_config_path(config_file)
        except Exception:  # noqa: BLE001 - any lookup failure means "not found"
            path = None
        if path is None or not os.path.isfile(path):
            raise DemoError(f"config file {config_file!r} not found; pass a path or a name under configs/ "
                            "(e.g. Synthetic/ebm_compact_fpn_synthetic.yaml)")
    cfg = get_cfg()
    add_ebm_config(cfg)
    try:
        cfg.merge_from_file(path)
        cfg.merge_from_list(list(opts))
    except Exception as e:  # noqa: BLE001 - yacs raises KeyError/ValueError/AssertionError
        raise DemoError(f"{path} or --opts: {' '.join(str(e).split())}; fix the key or value") from e
    # Let the model keep everything the user asked to see; thresholding again below is then a no-op.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, threshold)
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if not cfg.MODEL.WEIGHTS:
        raise DemoError("MODEL.WEIGHTS is not set, so the detector would be random; pass trained weights last on "
                        "the command line: --opts MODEL.WEIGHTS output/.../model_final.pth")
    if "://" not in cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise DemoError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} does not exist; pass the model_final.pth of a "
                        "training run (tools/train_net.py)")
    cfg.freeze()
    return cfg


def class_names(cfg) -> List[str]:
    """``thing_classes`` of the config's test (else train) dataset, when registered."""
    from detectron2.data import MetadataCatalog

    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        names = MetadataCatalog.get(name).get("thing_classes", None)
        if names:
            return list(names)
    return []


def draw_detections(frame: np.ndarray, instances, names: List[str], threshold: float,
                    warn: Optional[Warnings] = None) -> np.ndarray:
    """Unrefined boxes dashed and thin, refined boxes solid, label = class and score (and energy)."""
    img = frame.copy()
    keep = instances.scores >= threshold
    inst = instances[keep]
    refined = inst.pred_boxes.tensor.numpy()
    unrefined = inst.pred_boxes_unrefined.tensor.numpy() if inst.has("pred_boxes_unrefined") else None
    scores = inst.scores.numpy()
    classes = inst.pred_classes.numpy()
    energies = inst.pred_energies.numpy() if inst.has("pred_energies") else None
    if energies is not None and warn is not None and not np.isfinite(energies).all():
        warn("a non-finite energy", f"{int((~np.isfinite(energies)).sum())} detection(s) with a non-finite energy "
             "(drawn as f=n/a): the energy head is broken (non-finite weights?); check MODEL.WEIGHTS")
    # Low scores first so that the confident boxes are drawn on top.
    for i in np.argsort(scores):
        col = color(int(classes[i]))
        if unrefined is not None:
            dashed_rect(img, unrefined[i], col, 1)
        x0, y0, x1, y1 = (int(round(v)) for v in refined[i])
        cv2.rectangle(img, (x0, y0), (x1, y1), col, 2, cv2.LINE_AA)
        cls = names[classes[i]] if 0 <= classes[i] < len(names) else f"class {classes[i]}"
        text = f"{cls} {scores[i]:.2f}"
        if energies is not None:
            text += f" f={energies[i]:.2f}" if math.isfinite(energies[i]) else " f=n/a"
        label(img, text, (x0, y0 - 2), col)
    grey = (200, 200, 200)
    legend(img, [("detector (unrefined)", grey, True), ("EBM-refined", grey, False)],
           [f"{len(scores)} detections >= {threshold:.2f}"])
    return img


def run_detect(args: argparse.Namespace) -> int:
    """Detection mode: open input and output first (cheap checks), then build the model and render."""
    warn = Warnings()
    if args.webcam:
        source = open_webcam(args.webcam_index)
    elif args.video_input:
        source = open_video(args.video_input)
    else:
        source = open_images(expand_inputs(args.input), args.fps, warn)
    check_frame_size(source, args.video_input or (args.input[0] if args.input else "webcam"))
    want_video = not source.names  # image lists go to a folder unless --output names an .mp4
    path, is_video = output_path(args.output, source, want_video)
    h, w = source.first.shape[:2]
    # Take the output (its lock, stale files) before the slow model loading; give it up if that fails.
    out = VideoOutput(path, source.fps, (w, h)) if is_video else ImageFolderOutput(path)
    with aborting(out):
        cfg = load_detection_cfg(args.config_file, args.opts, args.confidence_threshold)
        predictor = EBMPredictor(cfg)
        names = class_names(cfg)

    def render(_: int, frame: np.ndarray) -> np.ndarray:
        return draw_detections(frame, predictor(frame), names, args.confidence_threshold, warn)

    run_frames(source, out, render, args.max_frames, "detect", warn)
    return 0


# --------------------------------------------------------------------------------------------- track
def parse_box(text: str) -> List[float]:
    """``x,y,w,h`` (commas, tabs or spaces) into four floats."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        box = [float(p) for p in parts]
    except ValueError:
        raise DemoError(f"box must be 4 numbers x,y,w,h (pixels), got {text!r}") from None
    if len(box) != 4:
        raise DemoError(f"box must be 4 numbers x,y,w,h (pixels), got {text!r}")
    return box


def read_ground_truth(path: str) -> List[Optional[List[float]]]:
    """One ``x,y,w,h`` per line (OTB/LaSOT style); unparsable or NaN lines become None."""
    if not os.path.isfile(path):
        raise DemoError(f"ground-truth file {path!r} does not exist; check the path or use --init-box")
    boxes: List[Optional[List[float]]] = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                b = parse_box(line)
            except DemoError:
                b = None
            boxes.append(b if b is not None and all(math.isfinite(v) for v in b) else None)
    if not boxes or boxes[0] is None:
        raise DemoError(f"{path}:1: not a box x,y,w,h; the first line starts the tracker (or use --init-box)")
    return boxes


def parse_sets(items: Sequence[str]) -> Dict[str, Any]:
    """``a.b=value`` items (value parsed as YAML) into a nested dict of tracker parameter overrides."""
    from ebm_refine.tracking.tracker.params import apply_dotted_overrides

    try:
        return apply_dotted_overrides({}, items)
    except ValueError as exc:
        raise DemoError(str(exc)) from None


def xywh_rect(img: np.ndarray, box: Sequence[float], col: Tuple[int, int, int], thickness: int,
              dashed: bool = False) -> None:
    x, y, w, h = box
    if dashed:
        dashed_rect(img, (x, y, x + w, y + h), col, thickness)
    else:
        cv2.rectangle(img, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))), col,
                      thickness, cv2.LINE_AA)


def build_tracker(tracker_params: str, overrides: Dict[str, Any]):
    """The EBM tracker from a parameter file plus overrides; returns it and its network's path.

    A network file of the wrong kind (a Detectron2 checkpoint, a text file) is a one-line error naming it.
    """
    from ebm_refine.tracking.models.network import load_net
    from ebm_refine.tracking.tracker.ebm_atom import EBMAtomTracker
    from ebm_refine.tracking.tracker.params import load_tracker_params

    try:
        params = load_tracker_params(tracker_params, overrides)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise DemoError(f"--tracker-params {tracker_params!r} / --set: {str(e).strip(chr(39))}") from None
    checkpoint = params.get("checkpoint") or ""
    try:
        net = load_net(checkpoint)
    except (UserError, FileNotFoundError):
        raise
    except WRONG_FILE_ERRORS as e:
        raise DemoError(f"{checkpoint}: not a tracker network ({type(e).__name__}: {e}); pass --checkpoint with a "
                        "net.pth written by tools/train_tracker.py") from e
    try:
        return EBMAtomTracker(params, net=net), checkpoint
    except ValueError as e:
        raise DemoError(f"--tracker-params {tracker_params!r} / --set: {e}") from None


def run_track(args: argparse.Namespace) -> int:
    """Tracking mode: validate input, output and start box, then load the tracker and render."""
    warn = Warnings()
    if args.video_input:
        source = open_video(args.video_input)
    elif args.input:
        if len(args.input) == 1 and os.path.isfile(args.input[0]) and args.input[0].lower().endswith(VIDEO_EXTS):
            source = open_video(args.input[0])
        else:
            if len(args.input) == 1 and os.path.isdir(args.input[0]):
                # Name the video after the sequence (…/Crossing/img -> Crossing), not after "img".
                folder = os.path.abspath(args.input[0])
                seq = Path(folder).name if Path(folder).name not in ("img", "imgs", "color") else Path(folder).parent.name
            else:
                seq = None
            source = open_images(expand_inputs(args.input), args.fps, warn)
            if seq:
                source.name = seq
            source.names = None  # tracking always writes a video
    else:
        raise DemoError("tracking needs --video-input FILE or --input FOLDER_OR_IMAGES")
    check_frame_size(source, args.video_input or args.input[0])
    gt = read_ground_truth(args.ground_truth) if args.ground_truth else None
    init = parse_box(args.init_box) if args.init_box else (gt[0] if gt else None)
    if init is None:
        raise DemoError("tracking needs a start box: --init-box x,y,w,h or --ground-truth FILE")
    path, _ = output_path(args.output, source, True)

    from ebm_refine.tracking.tracker.ebm_atom import validate_init_box

    try:
        validate_init_box(init, source.first.shape[:2])
    except ValueError as e:
        where = "--init-box" if args.init_box else f"{args.ground_truth}:1"
        raise DemoError(f"{where}: {e}; give a box x,y,w,h that overlaps the first frame") from None
    overrides = parse_sets(args.set)
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise DemoError(f"tracker checkpoint {args.checkpoint!r} does not exist; pass the net.pth written by "
                            "tools/train_tracker.py")
        overrides["checkpoint"] = os.path.abspath(args.checkpoint)
    h, w = source.first.shape[:2]
    out = VideoOutput(path, source.fps, (w, h))  # before the network loads; given up if that fails
    with aborting(out):
        tracker, checkpoint = build_tracker(args.tracker_params, overrides)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    track_col, gt_col = color(1), color(3)

    def render(i: int, frame: np.ndarray) -> np.ndarray:
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        if i == 0:
            tracker.initialize(rgb, {"init_bbox": list(init)})
            box, info = init, "initial box"
        else:
            res = tracker.track(rgb, {})
            box = res["target_bbox"]
            energy = float(res.get("energy", float("nan")))
            info = f"energy {energy:.3f}" if math.isfinite(energy) else "energy n/a"
            # NaN is normal without refinement (norefine parameters) or when the target is not found.
            if not math.isfinite(energy) and tracker.mode != "none" and res.get("flag") != "not_found":
                warn("a non-finite energy", f"frame {i + 1}: the box energy is {energy}, so box refinement cannot "
                     f"work; the network {checkpoint} is probably broken (non-finite or overflowing weights)")
            if res.get("flag") not in (None, "normal"):
                info += f" ({res['flag']})"
        img = frame.copy()
        entries = [("tracker (EBM)", track_col, False)]
        if gt is not None:
            entries.append(("ground truth", gt_col, True))
            if i < len(gt) and gt[i] is not None:
                xywh_rect(img, gt[i], gt_col, 1, dashed=True)
        xywh_rect(img, box, track_col, 2)
        label(img, info, (int(box[0]), int(box[1]) - 2), track_col)
        legend(img, entries, [f"frame {i + 1}  {info}"])
        return img

    run_frames(source, out, render, args.max_frames, "track", warn)
    return 0


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="demo.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default=None, help="detect (default) or track; or give it first")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--video-input", metavar="FILE", help="a video file")
    src.add_argument("--input", nargs="+", metavar="PATH",
                     help="images, quoted glob patterns or a folder of frames (sorted numerically)")
    src.add_argument("--webcam", action="store_true",
                     help="detect: read the camera (Ctrl-C ends the recording and keeps what was rendered)")
    ap.add_argument("--webcam-index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--output", required=True, metavar="FILE_OR_DIR",
                    help="an .mp4 file, or a folder (images for image inputs in detect mode, else <name>.mp4); "
                         "replaced only by a complete render: Ctrl-C on a file or folder input discards the "
                         "partial render and leaves an existing output as it was")
    ap.add_argument("--fps", type=float, default=10.0, help="frame rate of videos made from images")
    ap.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    det = ap.add_argument_group("detect")
    det.add_argument("--config-file", default="Synthetic/ebm_compact_fpn_synthetic.yaml",
                     help="Detectron2 config (a path, or relative to configs/)")
    det.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score drawn")
    trk = ap.add_argument_group("track")
    trk.add_argument("--tracker-params", default="ebm", help="name in configs/tracking/ or a YAML path")
    trk.add_argument("--checkpoint", help="tracker network (net.pth from tools/train_tracker.py)")
    trk.add_argument("--init-box", metavar="X,Y,W,H",
                     help="start box in the first frame (pixels; negative x, y are fine: --init-box -30,-40,50,60)")
    trk.add_argument("--ground-truth", metavar="FILE", help="x,y,w,h per frame; first line starts the tracker")
    trk.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                     help="tracker parameter overrides, e.g. image_sample_size=128")
    trk.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    # Last, because it swallows the rest of the command line (Detectron2 convention).
    det.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                     help="Detectron2 config overrides, e.g. MODEL.WEIGHTS model_final.pth (required: the "
                          "trained weights)")
    add_debug_argument(ap)
    return ap


_NUMBER_LIST = re.compile(r"^-[\d.]")


def _join_box_values(argv: List[str]) -> List[str]:
    """``--init-box -30,-40,50,60`` -> ``--init-box=-30,-40,50,60``: argparse would take the value for an
    option because it starts with "-" and is not a single number."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--opts":  # everything after it belongs to Detectron2
            return out + argv[i:]
        if tok == "--init-box" and i + 1 < len(argv) and _NUMBER_LIST.match(argv[i + 1]):
            out.append(f"--init-box={argv[i + 1]}")
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Accept the mode as a leading word (``demo.py track …``) or as ``--mode``."""
    argv = _join_box_values(list(sys.argv[1:] if argv is None else argv))
    ap = build_parser()
    mode = None
    if argv and argv[0] in MODES:
        mode = argv.pop(0)
    args = ap.parse_args(argv)
    if mode and args.mode and mode != args.mode:
        ap.error(f"mode given twice: {mode!r} and --mode {args.mode!r}")
    args.mode = mode or args.mode or "detect"
    if args.mode == "detect" and not (args.video_input or args.input or args.webcam):
        ap.error("detect needs one of --video-input, --input or --webcam")
    if args.mode == "track" and args.webcam:
        ap.error("track does not support --webcam")
    if args.max_frames is not None and args.max_frames < 1:
        ap.error("--max-frames must be >= 1")
    if args.fps <= 0:
        ap.error("--fps must be > 0")
    return args


def _run(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return run_detect(args) if args.mode == "detect" else run_track(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo under the project's error convention (:func:`ebm_refine.utils.cli.run_cli`).

    Returns the exit status: 0, 2 with one line on stderr for bad input, 130 after Ctrl-C; argparse
    usage errors raise ``SystemExit(2)``.
    """
    return run_cli(_run, argv, prog="demo.py")


if __name__ == "__main__":
    sys.exit(main())
