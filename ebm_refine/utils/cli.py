"""The command-line error convention shared by every script (``tools/*.py``, ``demo/demo.py``).

Expected failures (a bad path, an unreadable or malformed file, an unknown config key or a value out of
range, a checkpoint of the wrong kind) end the command with **one line** on stderr that names the file or
key and says what to do, and exit status 2. Real bugs keep their traceback (status 1). ``--debug`` on the
command line, or ``EBM_DEBUG=1`` in the environment, shows the traceback of expected failures too.
Command-line usage errors (argparse's: a missing option, a value the option's ``type=`` refuses, see
:mod:`ebm_refine.utils.cli_args`) are one line and status 2 too, without the usage text. Ctrl-C ends with
status 130 and one line saying what was kept: the output files this run finished (every writer is atomic,
so a file being written is discarded), or the message of a ``KeyboardInterrupt("after 44 frames; ...")``
raised by the script. SIGTERM ends the same way (status 143), so temporary folders and files are removed.

Usage in a script (``exit_on_interrupt_while_starting`` before the slow imports: Ctrl-C while torch or
Detectron2 load is one line and 130 as well, instead of a ``KeyboardInterrupt`` traceback)::

    from ebm_refine.utils.cli import exit_on_interrupt_while_starting
    exit_on_interrupt_while_starting()
    import torch  # noqa: E402
    ...
    def main(argv=None): ...
    if __name__ == "__main__":
        sys.exit(run_cli(main))
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence

from .errors import BadValueError, UserError

__all__ = ["run_cli", "add_debug_argument", "debug_enabled", "user_message", "log_to_stderr", "device_arg",
           "exit_on_interrupt_while_starting", "UsageError", "EXIT_USER_ERROR", "EXIT_INTERRUPTED",
           "EXIT_TERMINATED"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class UsageError(BadValueError):
    """A command-line usage error found by argparse (under :func:`run_cli`, instead of its usage text)."""
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
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
                          FileExistsError)):
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


def device_arg(name: str, option: str = "--device"):
    """A ``--device`` value as a ``torch.device``; a one-line error for a bad name or a GPU that is not there."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadValueError(f"{option} {name!r}: not a device name; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadValueError(f"{option} {name}: CUDA is not available on this machine; use {option} cpu")
    return device


class _StderrHandler(logging.Handler):
    """Writes each record as one plain line to the *current* ``sys.stderr`` (which tests may swap)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def log_to_stderr(level: int = logging.INFO, name: str = "ebm_refine") -> None:
    """Show the package's log lines (``name`` and below, ``level`` and above) as plain lines on stderr.

    For scripts that do not set up logging themselves; calling it again changes nothing but the level.
    """
    log = logging.getLogger(name)
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(level)


def _script_name() -> str:
    return os.path.basename(sys.argv[0] or "ebm_refine")


def _starting_handler(signum, frame) -> None:
    interrupted = signum == signal.SIGINT
    sys.stderr.write(f"{_script_name()}: {'interrupted' if interrupted else 'terminated'} while starting; "
                     "nothing was written\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED)  # not an exception: imports may swallow it


_DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}


def exit_on_interrupt_while_starting() -> None:
    """Until :func:`run_cli` starts, Ctrl-C (and SIGTERM) end the process at once with one line and
    status 130 (143): nothing has been written yet. Call it first in a script, before its slow imports.

    Leaves a signal that is ignored (``nohup``, background jobs) or handled by someone else alone, and does
    nothing in worker processes (``spawn`` re-imports the script there; the parent reports the interruption).
    """
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return
    for sig, default in _DEFAULTS.items():
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(sig) is default:
                signal.signal(sig, _starting_handler)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that ``finally`` blocks and context managers clean up."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


@contextlib.contextmanager
def _run_signals() -> Iterator[None]:
    """While ``main`` runs, Ctrl-C raises KeyboardInterrupt and SIGTERM :class:`_Terminated` (a signal
    that is ignored, or handled by someone else, is left alone); afterwards the defaults are back."""
    previous = {}
    for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _raise_terminated)):
        with contextlib.suppress(ValueError):  # not the main thread
            current = signal.getsignal(sig)
            if current in (_DEFAULTS[sig], _starting_handler):
                previous[sig] = _DEFAULTS[sig]
                signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    """argparse's ``error`` raises :class:`UsageError` instead of printing the usage text and exiting."""
    original = argparse.ArgumentParser.error

    def error(self, message):
        raise UsageError(f"{' '.join(str(message).split())} (see --help)")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def _interrupted_line(prog: str, error: KeyboardInterrupt) -> str:
    """``<prog>: interrupted ...`` saying what was kept: the script's own account (the message of the
    KeyboardInterrupt it raised), else the output files this process finished (atomic writes)."""
    what = "terminated" if isinstance(error, _Terminated) else "interrupted"
    if str(error):
        return f"{prog}: {what} {error}"
    from .fileio import finished_writes

    count, last = finished_writes()
    if not count:
        return f"{prog}: {what} before any output file was written; nothing was kept"
    return (f"{prog}: {what}; kept the {count} output file(s) finished before it (last: {last}); the file being "
            "written, if any, was discarded, so no output is partial")


def run_cli(main: Callable[[Optional[List[str]]], Any], argv: Optional[Sequence[str]] = None,
            prog: Optional[str] = None) -> int:
    """Call ``main(argv)`` under the error convention; returns the exit status for ``sys.exit``.

    ``main`` returning an int uses it as the status; anything else means 0.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or _script_name()
    try:
        with _run_signals(), _one_line_usage_errors():
            status = main(argv)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: one line saying what was kept
        print(_interrupted_line(prog, e), file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, _Terminated) else EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - sorted into expected failures and bugs below
        message = user_message(e)
        if message is None or debug_enabled(argv):
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return status if isinstance(status, int) else 0
