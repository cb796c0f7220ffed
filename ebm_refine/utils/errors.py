"""``UserError``: an expected failure caused by the user's input (a path, a file, a key, a value).

Library code raises it with a message that names the file or key and says what to do; the command-line
entry points (:func:`ebm_refine.utils.cli.run_cli`) print that message as one line and exit non-zero,
without a traceback. Anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input a user can fix. ``str(error)`` is the whole one-line message."""
