"""The command-line error convention shared by every script (``tools/*.py``, ``demo/demo.py``).

Expected failures (a bad path, an unreadable or malformed file, an unknown config key or a value out of
range, a checkpoint of the wrong kind) end the command with **one line** on stderr that names the file or
key and says what to do, and exit status 2. Real bugs keep their traceback (status 1). ``--debug`` on the
command line, or ``EBM_DEBUG=1`` in the environment, shows the traceback of expected failures too.
Ctrl-C ends with status 130 and one line.

Usage in a script::

    def main(argv=None): ...
    if __name__ == "__main__":
        sys.exit(run_cli(main))
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, List, Optional, Sequence

from .errors import UserError

__all__ = ["run_cli", "add_debug_argument", "debug_enabled", "user_message", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "EBM_DEBUG"


def add_debug_argument(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--debug`` (show tracebacks of expected errors too) to ``parser``; returns it."""
    parser.add_argument("--debug", action="store_true",
                        help=f"show full tracebacks for expected errors too (or set {DEBUG_ENV}=1)")
    return parser


def debug_enabled(argv: Optional[Sequence[str]] = None) -> bool:
    """``--debug`` in ``argv`` or ``EBM_DEBUG`` set to anything but empty / 0."""
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    return "--debug" in (argv if argv is not None else sys.argv[1:])


def _reraised_user_error(text: str) -> Optional[str]:
    """The message of a UserError re-raised from another process as text (DataLoader workers and
    ``torch.multiprocessing`` put the worker's traceback in the message; its last line is ``module.Class: msg``)."""
    if "Traceback (most recent call last)" not in text:
        return None
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    match = re.match(r"^([\w.]+)\.(\w+): (.*)$", last)
    if not match:
        return None
    module, name, message = match.groups()
    cls = getattr(sys.modules.get(module), name, None)
    return message if isinstance(cls, type) and issubclass(cls, UserError) else None


def user_message(error: BaseException) -> Optional[str]:
    """The one-line message for an expected failure, or None when ``error`` looks like a bug."""
    reraised = _reraised_user_error(str(error))
    if reraised is not None:
        return reraised
    if isinstance(error, UserError):
        return " ".join(str(error).split("\n")).strip() or type(error).__name__
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        name = error.filename if error.filename is not None else ""
        what = error.strerror or str(error)
        return f"{name}: {what}" if name else what
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        yaml = None
    if yaml is not None and isinstance(error, yaml.YAMLError):
        mark = getattr(error, "problem_mark", None)
        where = f"{mark.name}:{mark.line + 1}: " if mark is not None else ""
        return f"{where}invalid YAML ({getattr(error, 'problem', None) or error}); fix the file's syntax"
    return None


def run_cli(main: Callable[[Optional[List[str]]], Any], argv: Optional[Sequence[str]] = None,
            prog: Optional[str] = None) -> int:
    """Call ``main(argv)`` under the error convention; returns the exit status for ``sys.exit``.

    ``main`` returning an int uses it as the status; anything else means 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0] or "ebm_refine")
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - sorted into expected failures and bugs below
        message = user_message(e)
        if message is None or debug_enabled(argv):
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return status if isinstance(status, int) else 0
