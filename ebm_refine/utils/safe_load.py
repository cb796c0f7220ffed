"""Loading data files without running code from them.

A pickle (and so a ``torch.save`` file, or a Detectron2 ``.pkl``) can name any importable function and call
it while loading; a YAML file with ``!!python/...`` tags can too. Every file the package reads from the
user goes through one of these loaders, which admit plain data only:

* :func:`read_torch_file`: ``torch.load(..., weights_only=True)`` (tensors, containers, plain values);
* :func:`load_plain_pickle`: a restricted unpickler for model-zoo ``.pkl`` weights (containers, plain
  values, numpy arrays and scalars);
* YAML: ``yaml.safe_load`` (:mod:`ebm_refine.utils.config`; Detectron2 configs through
  :func:`ebm_refine.detectron2.engine.load_config`, which merges with ``allow_unsafe=False``).

A file one of them refuses is a :class:`UnsafeFileError` naming the file and what it tried to load.
"""
from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Tuple

from .errors import MissingFileError, UserError

__all__ = ["UnsafeFileError", "read_torch_file", "load_plain_pickle", "PlainUnpickler"]

# Exceptions torch.load raises for a file that is not a torch checkpoint (empty, truncated, text, ...).
_UNREADABLE = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, AttributeError,
               ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError, OverflowError, MemoryError)


class UnsafeFileError(UserError):
    """A data file that would import or call something other than plain data while loading."""


def _refusal(path: str, culprit: str, what: str, hint: str) -> UnsafeFileError:
    return UnsafeFileError(f"{path}: refused to load: it would import or call {culprit} ({what} holds plain data "
                           f"only; never load files from an untrusted source); {hint}")


def _one_line(text: str, limit: int = 120) -> str:
    return " ".join(str(text).split())[:limit]


def read_torch_file(path: str, what: str, hint: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` of a file the user pointed at.

    Tensors, dicts, lists, tuples, OrderedDicts and plain values load; a pickle that would import or call
    anything else is refused, so no code from the file runs.

    Args:
        what: what the file should be ("a tracker network file", ...); hint: what to do about it.

    Raises:
        MissingFileError; UnsafeFileError for a refused file; UserError naming ``path`` for an
        empty or unreadable one.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: no such file; {hint}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file, not {what}; {hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found is None:  # not a pickle the safe loader understands (text, truncated, ...): unreadable
            reason = re.search(r"Unsupported operand \d+|Unsupported operand .*", text)
            raise UserError(f"{path}: not {what} (torch.load: UnpicklingError: "
                            f"{_one_line(reason.group(0) if reason else text)}); {hint}") from None
        raise _refusal(path, found.group(1), what, hint) from None
    except _UNREADABLE as exc:
        raise UserError(f"{path}: not {what} (torch.load: {type(exc).__name__}: {_one_line(exc)}); {hint}") from None


def _plain_globals() -> Dict[Tuple[str, str], Callable[..., Any]]:
    """What a model-zoo pickle may name: numpy's array / scalar reconstructors and dtype, OrderedDict, and
    ``_codecs.encode`` (protocol-2 pickles store ``bytes`` as ``_codecs.encode(text, "latin1")``). Each is
    harmless whatever arguments the file passes it."""
    import codecs

    import numpy as np

    try:  # numpy >= 2 keeps its internals in numpy._core and maps numpy.core there
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    allowed: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only: dicts, lists, tuples, str / bytes / int / float / bool /
    None, OrderedDict, numpy arrays and numpy scalars. Any other global, and persistent ids, raise
    :class:`pickle.UnpicklingError` naming it: ``find_class`` is the one door through which a pickle reaches
    code, so even an object array can only hold what this unpickler built."""

    _allowed: Dict[Tuple[str, str], Callable[..., Any]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if not PlainUnpickler._allowed:
            PlainUnpickler._allowed = _plain_globals()
        found = PlainUnpickler._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("forbidden persistent id")


def load_plain_pickle(fh: BinaryIO, path: str, what: str, hint: str, encoding: str = "latin1") -> Any:
    """Unpickle the open file ``fh`` (named ``path`` in messages) with :class:`PlainUnpickler`.

    ``encoding="latin1"`` reads Python-2 pickles (Detectron / Caffe2 model-zoo files) as Detectron2 does.

    Raises:
        UnsafeFileError naming ``path`` and the refused global; UserError for a file that is not a pickle.
    """
    try:
        return PlainUnpickler(fh, encoding=encoding).load()
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if text.startswith("forbidden "):
            raise _refusal(path, text[len("forbidden "):], what, hint) from None
        raise UserError(f"{path}: not {what} (unpickling: {_one_line(text)}); {hint}") from None
    except _UNREADABLE as exc:
        raise UserError(f"{path}: not {what} (unpickling: {type(exc).__name__}: {_one_line(exc)}); {hint}") from None
