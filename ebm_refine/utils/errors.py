"""``UserError``: an expected failure caused by the user's input (a path, a file, a key, a value).

Library code raises it with a message that names the file or key and says what to do; the command-line
entry points (:func:`ebm_refine.utils.cli.run_cli`) print that message as one line and exit non-zero,
without a traceback. Anything else that escapes is a bug and keeps its traceback.

The subclasses also derive from the built-in exception a Python caller would expect, so ``except
FileNotFoundError`` / ``except KeyError`` / ``except ValueError`` keep working around library calls.
"""
from __future__ import annotations

__all__ = ["UserError", "MissingFileError", "UnknownNameError", "BadValueError"]


class UserError(Exception):
    """Bad input a user can fix. ``str(error)`` is the whole one-line message."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a layout requires) does not exist."""

    def __str__(self) -> str:  # FileNotFoundError formats "[Errno ...]" only when given errno arguments
        return str(self.args[0]) if self.args else ""


class UnknownNameError(UserError, KeyError):
    """An unknown name: dataset, sequence, tracker, parameter set, config key."""

    def __str__(self) -> str:  # KeyError would quote the message: "'unknown tracker ...'"
        return str(self.args[0]) if self.args else ""


class BadValueError(UserError, ValueError):
    """A value, file content or combination of options that cannot be used as given."""
