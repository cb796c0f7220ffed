"""Run a tracker over sequences, in parallel worker processes, resumably.

Any object with pytracking's API works::

    tracker.initialize(image, {"init_bbox": [x, y, w, h], ...})
    tracker.track(image, info) -> {"target_bbox": [x, y, w, h], ...}

with ``image`` an (H, W, 3) uint8 RGB array. A fresh tracker is built for every sequence by a picklable
zero-argument ``tracker_factory`` (see :class:`~ebm_refine.tracking.evaluation.registry.TrackerFactory`),
inside the worker that runs the sequence.

Outputs follow :mod:`.results`: ``<results_dir>/<seq>.txt`` and ``<seq>_time.txt``, each written
atomically, the box file last. A sequence whose box file exists with one row per frame is skipped, so an
interrupted run resumes where it stopped and never rewrites finished sequences. Each sequence is run under
a lock (``<results_dir>/.<seq>.lock``), so several runners (processes, machines sharing the folder) can
work on one results folder: a sequence another runner is on is reported ``"busy"`` and left to it.

Frames are read with :func:`~ebm_refine.tracking.datasets.load_frame`. A truncated JPEG is decoded as far
as its data goes (the rest is grey), counted per sequence (``SequenceRun.truncated_frames``) and reported
in one warning per run; a frame that cannot be decoded at all fails its sequence with a message naming it.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence as _Seq, Tuple

import numpy as np

from ...utils import UserError
from ...utils.fileio import file_lock, remove_stale_locks, remove_stale_temp_files
from ..datasets.sequence import Sequence, load_frame
from .results import is_finished, result_path, time_path, write_boxes, write_times

logger = logging.getLogger(__name__)

TrackerFactoryType = Callable[[], Any]


@dataclass
class SequenceRun:
    """Outcome for one sequence.

    Attributes:
        status: ``"done"``, ``"skipped"`` (already finished), ``"busy"`` (another runner holds the
            sequence's lock) or ``"failed"``.
        seconds: summed per-frame tracking time.
        error: for ``"failed"``: the one-line message of a bad input (``input_error``) or the traceback
            of a crash.
        input_error: the failure is a bad input (a frame that cannot be read, an invalid first box), not
            a tracker crash.
        truncated_frames: frames that were truncated JPEGs, decoded partially.
    """

    name: str
    status: str
    n_frames: int
    seconds: float = 0.0
    error: Optional[str] = None
    input_error: bool = False
    truncated_frames: List[str] = field(default_factory=list)


class RunError(RuntimeError):
    """Raised after a run in which some sequences failed; ``runs`` holds every outcome."""

    def __init__(self, message: str, runs: List[SequenceRun]):
        super().__init__(message)
        self.runs = runs


class RunInputError(RunError, UserError):
    """A :class:`RunError` where every failure is a bad input; its message is one line."""


def _as_box(out: Any, seq: Sequence, frame: int) -> List[float]:
    if isinstance(out, dict):
        out = out.get("target_bbox")
    box = np.asarray(out, dtype=np.float64).reshape(-1) if out is not None else np.zeros(0)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"sequence {seq.name!r}, frame {frame} ({seq.frames[frame]}): tracker returned "
                         f"{out!r}; expected {{'target_bbox': [x, y, w, h]}} with 4 finite numbers")
    return box.tolist()


def track_sequence(tracker: Any, seq: Sequence, truncated_frames: Optional[List[str]] = None,
                   on_frame: Optional[Callable[[], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Run ``tracker`` over ``seq``.

    Args:
        truncated_frames: when given, the paths of truncated JPEG frames (decoded partially) are
            appended to it.
        on_frame: called after every frame (progress reporting).

    Returns:
        boxes (N, 4) -- row 0 is the initialisation box as returned by ``initialize`` (or the init box
        when it returns nothing) -- and per-frame wall-clock times (N,) in seconds (frame 0: initialize).
    """
    def frame(i: int) -> np.ndarray:
        image, truncated = load_frame(seq.frames[i])
        if truncated and truncated_frames is not None:
            truncated_frames.append(seq.frames[i])
        return image

    boxes = np.zeros((len(seq), 4))
    times = np.zeros(len(seq))
    info = seq.init_info()
    image = frame(0)
    t0 = time.perf_counter()
    out = tracker.initialize(image, info)
    times[0] = time.perf_counter() - t0
    boxes[0] = _as_box(out, seq, 0) if out and isinstance(out, dict) and "target_bbox" in out else info["init_bbox"]
    prev = {"target_bbox": boxes[0].tolist()}
    if on_frame is not None:
        on_frame()
    for i in range(1, len(seq)):
        image = frame(i)
        t0 = time.perf_counter()
        out = tracker.track(image, {"frame_index": i, "previous_output": prev})
        times[i] = time.perf_counter() - t0
        boxes[i] = _as_box(out, seq, i)
        prev = out
        if on_frame is not None:
            on_frame()
    return boxes, times


def run_sequence(tracker_factory: TrackerFactoryType, seq: Sequence, results_dir: str,
                 result_format: str = "float", on_frame: Optional[Callable[[], None]] = None) -> SequenceRun:
    """Build a tracker, track ``seq`` and write its two result files atomically (times first), the boxes in
    ``result_format`` (:data:`~.results.RESULT_FORMATS`).

    No lock is taken here; :func:`run_dataset` runs each sequence under its lock.
    """
    truncated: List[str] = []
    tracker = tracker_factory()
    boxes, times = track_sequence(tracker, seq, truncated, on_frame)
    write_times(time_path(results_dir, seq.name), times)
    write_boxes(result_path(results_dir, seq.name), boxes, result_format=result_format)
    return SequenceRun(seq.name, "done", len(seq), float(times.sum()), truncated_frames=truncated)


def lock_path(results_dir: str, seq_name: str) -> str:
    """The lock file a runner holds while it works on ``seq_name`` (hidden, removed afterwards)."""
    return os.path.join(results_dir, f".{seq_name}.lock")


# A worker process's end of the progress queue (set by _init_worker): one item per tracked frame.
_FRAME_QUEUE = None


def _report_frame() -> None:
    _FRAME_QUEUE.put(1)


def _worker(args) -> SequenceRun:
    tracker_factory, seq, results_dir, overwrite, result_format, on_frame = args
    if on_frame is None and _FRAME_QUEUE is not None:
        on_frame = _report_frame
    with file_lock(lock_path(results_dir, seq.name), blocking=False, remove=True) as acquired:
        if not acquired:
            return SequenceRun(seq.name, "busy", len(seq))
        # Another runner may have finished it between our first check and the lock.
        if not overwrite and is_finished(results_dir, seq.name, len(seq)):
            return SequenceRun(seq.name, "skipped", len(seq))
        try:
            return run_sequence(tracker_factory, seq, results_dir, result_format, on_frame)
        except UserError as exc:  # a bad frame or annotation: one line, no traceback
            return SequenceRun(seq.name, "failed", len(seq), error=str(exc), input_error=True)
        except Exception:  # reported to the parent; KeyboardInterrupt still stops the worker
            return SequenceRun(seq.name, "failed", len(seq), error=traceback.format_exc())


def _init_worker(frame_queue=None) -> None:
    global _FRAME_QUEUE
    _FRAME_QUEUE = frame_queue
    # One process per core already; stop OpenCV from spawning its own thread pool in each of them.
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass


def run_dataset(sequences: _Seq[Sequence], tracker_factory: TrackerFactoryType, results_dir: str,
                num_workers: int = 1, overwrite: bool = False, progress: bool = True,
                mp_context: str = "spawn", raise_on_error: bool = True, result_format: str = "float"
                ) -> List[SequenceRun]:
    """Run ``tracker_factory()`` trackers over ``sequences`` and write results under ``results_dir``.

    Args:
        sequences: sequences to run (only the first-frame box is used).
        tracker_factory: picklable zero-argument callable returning a fresh tracker.
        results_dir: output folder (``<results_root>/<tracker>/<params>``).
        num_workers: worker processes; ``<= 1`` runs in this process (no pickling, easiest to debug).
        overwrite: re-run sequences that are already finished (a sequence another runner holds is still
            left to it).
        progress: on stderr, a progress bar over the frames to track (its rate: frames per second of wall
            time, all workers together) and a line per finished sequence with its frames and its tracker FPS
            (frames / summed per-frame tracking time, the figure the report gives).
        mp_context: multiprocessing start method; ``spawn`` (default) is safe with CUDA and threads.
        raise_on_error: after the run, raise :class:`RunError` if a sequence failed (finished sequences
            are kept either way); :class:`RunInputError`, a one-line ``UserError``, when every failure
            is a bad input.
        result_format: how the box files are written, ``float`` or ``pytracking`` (:mod:`.results`).

    Returns:
        One :class:`SequenceRun` per sequence, in input order.
    """
    from tqdm import tqdm

    runs = {}
    pending = []
    for seq in sequences:
        if not overwrite and is_finished(results_dir, seq.name, len(seq)):
            runs[seq.name] = SequenceRun(seq.name, "skipped", len(seq))
        else:
            pending.append(seq)
    os.makedirs(results_dir, exist_ok=True)
    # Killed runs (SIGKILL) leave their sequences' lock files and half-written temporary files: nobody
    # holds their locks any more, so they are removed here (a live runner's are left alone).
    remove_stale_locks(results_dir)
    remove_stale_temp_files(results_dir)
    bar = tqdm(total=sum(len(s) for s in pending), desc="tracking", unit="frame", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)

    def finished(run: SequenceRun) -> None:
        runs[run.name] = run
        if progress and run.status == "done":
            fps = run.n_frames / run.seconds if run.seconds > 0 else float("nan")
            bar.write(f"  {run.name}: {run.n_frames} frames, {fps:.1f} FPS", file=sys.stderr)
        elif progress:
            bar.write(f"  {run.name}: {run.status}", file=sys.stderr)

    try:
        if num_workers <= 1 or len(pending) <= 1:
            for seq in pending:
                finished(_worker((tracker_factory, seq, results_dir, overwrite, result_format,
                                  lambda: bar.update(1))))
        else:
            ctx = mp.get_context(mp_context)
            frames = ctx.Queue()
            # The workers put one item per frame; this thread moves them to the bar while the pool runs.
            reader = threading.Thread(target=_drain, args=(frames, bar), daemon=True)
            reader.start()
            try:
                with ctx.Pool(min(num_workers, len(pending)), initializer=_init_worker,
                              initargs=(frames if progress else None,)) as pool:
                    jobs = [(tracker_factory, seq, results_dir, overwrite, result_format, None) for seq in pending]
                    for run in pool.imap_unordered(_worker, jobs):
                        finished(run)
                    # Let the workers exit on their own (leaving the block terminates them), which flushes
                    # their last progress items into the queue.
                    pool.close()
                    pool.join()
            finally:
                frames.put(None)
                reader.join(timeout=10)
    finally:
        bar.close()
    ordered = [runs[s.name] for s in sequences]
    _warn_truncated(ordered)
    failed = [r for r in ordered if r.status == "failed"]
    if failed and raise_on_error:
        head = f"{len(failed)} of {len(ordered)} sequence(s) failed (finished sequences are kept)"
        if all(r.input_error for r in failed):
            raise RunInputError(f"{head}: " + "; ".join(f"{r.name}: {r.error}" for r in failed), ordered)
        details = "\n".join(f"--- {r.name}\n{r.error}" for r in failed)
        raise RunError(f"{head}: {', '.join(r.name for r in failed)}\n{details}", ordered)
    return ordered


def _drain(frames, bar) -> None:
    """Advance ``bar`` by one per item on the queue ``frames`` until it yields None."""
    while frames.get() is not None:
        bar.update(1)


def _warn_truncated(runs: List[SequenceRun]) -> None:
    """One warning per run naming the truncated frames (at most 3) and counting them."""
    hit = [r for r in runs if r.truncated_frames]
    if not hit:
        return
    frames = [f for r in hit for f in r.truncated_frames]
    listed = ", ".join(frames[:3]) + (", ..." if len(frames) > 3 else "")
    logger.warning("%d truncated JPEG frame(s) in %d sequence(s) were decoded only partially (the rest of the "
                   "image is grey) and tracked anyway: %s; copy them again for a clean evaluation",
                   len(frames), len(hit), listed)
