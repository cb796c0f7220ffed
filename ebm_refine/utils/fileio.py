"""Atomic file writing: a reader (or a resumed run) sees either the old complete file or the new one.

Each writer creates a temporary file next to the target (same folder, hence the same file system),
flushes and fsyncs it, gives it the permissions a plain ``open(path, "w")`` would (``mkstemp`` creates
0600 files), and moves it into place with ``os.replace``. On any exception, KeyboardInterrupt included,
the temporary file is removed and the target is left untouched.

:func:`file_lock` is the inter-process lock that goes with it: two processes that would produce the same
file (two evaluation runners on one results folder, two ranks generating one dataset) take turns.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Iterator

from .errors import BadValueError

__all__ = ["atomic_writer", "atomic_write_text", "atomic_write_bytes", "atomic_save_torch", "default_file_mode",
           "file_lock", "check_writable"]


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
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
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
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
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
