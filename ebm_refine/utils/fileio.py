"""Atomic file writing: a reader (or a resumed run) sees either the old complete file or the new one.

Each writer creates a temporary file next to the target (same folder, hence the same file system),
flushes and fsyncs it, gives it the permissions a plain ``open(path, "w")`` would (``mkstemp`` creates
0600 files), and moves it into place with ``os.replace``. On any exception, KeyboardInterrupt included,
the temporary file is removed and the target is left untouched.

A process killed outright (SIGKILL, power loss) cannot remove its temporary file, so each writer holds an
``flock`` on its own temporary ``.NAME.XXXX.tmp`` while writing; the next write to the same target removes
every such file nobody holds (the lock dies with its process, whatever machine or pid reuse). Lock files
(:func:`remove_stale_locks`) and temporary folders (:func:`temporary_folder`) are swept the same way.

:func:`file_lock` is the inter-process lock that goes with it: two processes that would produce the same
file (two evaluation runners on one results folder, two ranks generating one dataset) take turns.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from typing import IO, Any, Iterator, Optional, Tuple

from .errors import BadValueError

__all__ = ["atomic_writer", "atomic_write_text", "atomic_write_bytes", "atomic_save_torch", "default_file_mode",
           "file_lock", "check_writable", "atomic_write_json", "finished_writes", "remove_stale_locks", "remove_stale_temp_files", "temporary_folder"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, no sweeping
    fcntl = None

# atomic_writer's temporary files: ".<target name>.<mkstemp's 8 random characters>.tmp".
_TEMP_NAME = "*.????????.tmp"
# Output files this process finished writing (count, last path): what an interrupted run says it kept.
_FINISHED = {"count": 0, "last": None}


def finished_writes() -> Tuple[int, Optional[str]]:
    """How many files this process wrote atomically, and the last one (None before the first)."""
    return _FINISHED["count"], _FINISHED["last"]


def _lock_fresh(path: str, fd: int) -> bool:
    """Take a non-blocking exclusive flock on ``fd`` (opened on ``path``); True when held *and* ``path``
    still names that file (a sweeper may have removed it between the open and the lock)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _remove_if_unheld(path: str, remove) -> bool:
    """Remove ``path`` (with ``remove(path)``) when no process holds an flock on the file ``lock``; True if removed.

    For a folder, the lock is on its ``.owner`` file. The lock is held while removing, so an owner that
    locks after us sees its file gone (``_lock_fresh``) and starts over.
    """
    lock = os.path.join(path, ".owner") if os.path.isdir(path) else path
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not _lock_fresh(lock, fd):
            return False
        with contextlib.suppress(OSError):
            remove(path)
        return not os.path.exists(path)
    finally:
        os.close(fd)


def _sweep(pattern: str, remove=os.unlink) -> int:
    """Remove every path matching the glob ``pattern`` whose owner's lock is free; returns how many."""
    if fcntl is None:
        return 0
    return sum(_remove_if_unheld(p, remove) for p in glob.glob(pattern))


def remove_stale_locks(folder: str, pattern: str = ".*.lock") -> int:
    """Remove the :func:`file_lock` files in ``folder`` that no process holds (left by killed runs);
    returns how many. A lock a live process holds is left alone."""
    return _sweep(os.path.join(glob.escape(os.fspath(folder)), pattern))


def remove_stale_temp_files(folder: str) -> int:
    """Remove the temporary files of :func:`atomic_writer` in ``folder`` whose writer is gone (killed while
    writing); returns how many. Files a live writer holds are left alone."""
    return _sweep(os.path.join(glob.escape(os.fspath(folder)), "." + _TEMP_NAME))


@contextlib.contextmanager
def temporary_folder(prefix: str = "ebm_refine-") -> Iterator[str]:
    """``with temporary_folder() as tmp:`` a fresh folder under the system temp dir, removed on exit.

    Unlike ``tempfile.TemporaryDirectory``, a folder of a killed process is removed by the next call:
    the owner holds an flock on ``<folder>/.owner`` for the folder's life.
    """
    base = tempfile.gettempdir()
    _sweep(os.path.join(glob.escape(base), glob.escape(prefix) + "*"), remove=shutil.rmtree)
    while True:
        folder = tempfile.mkdtemp(prefix=prefix, dir=base)
        owner = os.path.join(folder, ".owner")
        fd = os.open(owner, os.O_RDWR | os.O_CREAT, 0o600)
        if _lock_fresh(owner, fd):
            break
        os.close(fd)  # swept between creation and lock (it looked like a dead run's): make another
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)


def default_file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open(path, "w")`` would create a file with."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_writer(path: str, mode: str = "w", encoding: str | None = None) -> Iterator[IO[Any]]:
    """``with atomic_writer(path) as fh: ...`` writes ``path`` atomically (text ``"w"`` or binary ``"wb"``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = f".{os.path.basename(path)}."
    _sweep(os.path.join(glob.escape(folder), glob.escape(prefix) + _TEMP_NAME[2:]))  # killed writers' leftovers
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        if _lock_fresh(tmp, fd):  # held until the file is closed: a live writer's file is never swept
            break
        os.close(fd)
    try:
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.chmod(tmp, default_file_mode())
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _FINISHED["count"] += 1
    _FINISHED["last"] = path


def check_writable(folder: str) -> None:
    """Create ``folder`` (with its parents) and prove a file can be made in it.

    Scripts call it for their output folders before any slow work, so that a typo or a read-only disk
    fails at once instead of after hours of computing.

    Raises:
        BadValueError naming the folder and the reason.
    """
    folder = os.fspath(folder) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise BadValueError(f"{folder}: folder is not writable ({e.strerror or e}); choose another output "
                            "location") from None


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_writer(path, "w", encoding=encoding) as fh:
        fh.write(text)


def _strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf: not JSON, though Python writes them) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def atomic_write_json(path: str, data: Any, indent: Optional[int] = 2) -> None:
    """Write ``data`` as standard JSON atomically: NaN and infinity become ``null`` (every JSON reader
    accepts the file, and a missing number is not mistaken for a value)."""
    atomic_write_text(path, json.dumps(_strict_json(data), indent=indent, allow_nan=False))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data)


def atomic_save_torch(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` atomically: a run killed (or a pickle failing) while saving leaves no partial file."""
    import torch

    with atomic_writer(path, "wb") as fh:
        torch.save(obj, fh)


@contextlib.contextmanager
def file_lock(path: str, blocking: bool = True, remove: bool = False) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the ``with`` block.

    ``with file_lock(p, blocking=False) as acquired:`` yields False at once when another process holds
    the lock; otherwise (and always with ``blocking=True``) it yields True once the lock is held. The
    lock goes away with the process, so a killed holder never leaves a stale lock behind.

    Args:
        path: the lock file.
        blocking: wait for the lock instead of giving up.
        remove: delete the lock file when releasing it (for per-item locks that would otherwise pile
            up). A process that opened the file before it was deleted notices and locks the new one.

    On systems without ``fcntl`` (Windows) no lock is taken and True is yielded.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        yield True
        return
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, default_file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except BaseException:
            os.close(fd)
            raise
        # The previous holder may have removed the file between our open and our lock: then we hold a
        # lock on a deleted file that the next process will not see; start again on the current one.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        yield True
    finally:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.close(fd)  # releases the lock
