"""Atomic file writing: a reader (or a resumed run) sees either the old complete file or the new one.

Each writer creates a temporary file next to the target (same folder, hence the same file system),
flushes and fsyncs it, gives it the permissions a plain ``open(path, "w")`` would (``mkstemp`` creates
0600 files), and moves it into place with ``os.replace``. On any exception, KeyboardInterrupt included,
the temporary file is removed and the target is left untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Iterator

__all__ = ["atomic_writer", "atomic_write_text", "atomic_write_bytes", "atomic_save_torch", "default_file_mode"]


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
