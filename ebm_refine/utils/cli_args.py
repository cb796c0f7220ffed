"""Argument types and range checks shared by every command-line tool (``tools/*.py``, ``demo/demo.py``).

Each is an ``argparse`` ``type=`` (a callable from the option's text to its value) that raises
``argparse.ArgumentTypeError`` with a short reason; under :func:`ebm_refine.utils.cli.run_cli` argparse's
error becomes the convention's one line (``<tool>: error: argument --threads: must be an integer >= 1, got
'0'``) and exit status 2, before any work starts. Example::

    p.add_argument("--threads", type=positive_int)
    p.add_argument("--min-score", type=finite_float(0.0, 1.0), default=0.0)
    p.add_argument("--init-scales", type=number_list(min_value=0.0, open_min=True), default="0.7,1,1.4")
    p.add_argument("--json", type=output_file)

Output paths are checked without creating anything (the nearest existing folder must be a writable
folder, the path itself not a folder), so a typo fails at once instead of after hours of work.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Callable, List, Optional, Sequence

__all__ = ["positive_int", "non_negative_int", "int_in_range", "finite_float", "number_list", "existing_file",
           "existing_folder", "check_existing_file", "output_file", "output_folder", "output_path", "check_dataset_name",
           "detectron2_dataset"]

ArgType = Callable[[str], object]


def _bound_text(low: Optional[float], high: Optional[float], open_low: bool, open_high: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if open_low else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if open_high else '<='} {high:g}")
    return " and ".join(parts)


def _in_range(value: float, low: Optional[float], high: Optional[float], open_low: bool, open_high: bool) -> bool:
    if low is not None and (value <= low if open_low else value < low):
        return False
    return not (high is not None and (value >= high if open_high else value > high))


def int_in_range(low: Optional[int] = None, high: Optional[int] = None) -> ArgType:
    """An integer in ``[low, high]`` (either bound may be None)."""
    bounds = _bound_text(low, high, False, False)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be an integer{' ' + bounds if bounds else ''}, got {text!r}") from None
        if not _in_range(value, low, high, False, False):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {text!r}")
        return value

    parse.__name__ = f"integer {bounds}".strip()  # argparse names the type in some messages
    return parse


positive_int = int_in_range(1)
non_negative_int = int_in_range(0)


def _finite(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what}, got {text!r} (not a finite number)")
    return value


def finite_float(low: Optional[float] = None, high: Optional[float] = None, open_low: bool = False,
                 open_high: bool = False) -> ArgType:
    """A finite float (no nan / inf) in the given range; ``open_low`` / ``open_high`` exclude the bound."""
    bounds = _bound_text(low, high, open_low, open_high)
    what = f"must be a finite number{' ' + bounds if bounds else ''}"

    def parse(text: str) -> float:
        value = _finite(text, what)
        if not _in_range(value, low, high, open_low, open_high):
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value

    parse.__name__ = "finite number"
    return parse


def number_list(count: Optional[int] = None, low: Optional[float] = None, high: Optional[float] = None,
                open_low: bool = False, open_high: bool = False, integer: bool = False,
                min_count: int = 1) -> ArgType:
    """A comma-separated list of finite numbers (``"0.7,1,1.4"``) as a list of float (int with ``integer``).

    Args:
        count: exactly this many values (None: at least ``min_count``).
        low, high, open_low, open_high: the range of every value (as :func:`finite_float`).
    """
    bounds = _bound_text(low, high, open_low, open_high)
    kind = "integers" if integer else "finite numbers"
    size = f"{count}" if count is not None else f"{min_count} or more"
    what = f"must be {size} comma-separated {kind}{' ' + bounds if bounds else ''}"

    def parse(text: str) -> List[float]:
        items = [t.strip() for t in str(text).split(",")]
        if any(not t for t in items) or (count is not None and len(items) != count) or len(items) < min_count:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        values = []
        for item in items:
            value = _finite(item, what)
            if integer and value != int(value):
                raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
            if not _in_range(value, low, high, open_low, open_high):
                raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
            values.append(int(value) if integer else value)
        return values

    parse.__name__ = "number list"
    return parse


def _file_problem(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return "no such file; check the path"
    return None if os.path.isfile(path) else "not a file (a folder?)"


def existing_file(text: str) -> str:
    """A path to an existing file (not a folder)."""
    problem = _file_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


def check_existing_file(path: str, option: str = "") -> str:
    """Raise :class:`~ebm_refine.utils.errors.MissingFileError` unless ``path`` is an existing file (for paths
    inside other values, e.g. ``NAME=FILE``). Returns ``path``."""
    from .errors import MissingFileError

    problem = _file_problem(path)
    if problem:
        raise MissingFileError(f"{option + ' ' if option else ''}{path}: {problem}")
    return path


def existing_folder(text: str) -> str:
    """A path to an existing folder."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such folder; check the path")
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    return text


def _writable_ancestor_problem(path: str) -> Optional[str]:
    """Why nothing can be created at ``path`` (its nearest existing ancestor is a file or read-only), or None."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        return f"{parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"folder {parent} is not writable"
    return None


def _output_file_problem(path: str) -> Optional[str]:
    if not path:
        return "empty path"
    if os.path.isdir(path):
        return "it is a folder"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "it is read-only"
    return _writable_ancestor_problem(path)


def _output_folder_problem(path: str) -> Optional[str]:
    if not path:
        return "empty path"
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "it is a file"
        return None if os.access(path, os.W_OK | os.X_OK) else "it is read-only"
    return _writable_ancestor_problem(os.path.join(path, "x"))


def output_file(text: str) -> str:
    """An output file path that can be written (checked, not created)."""
    problem = _output_file_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: cannot write this output file ({problem}); choose another path")
    return text


def output_folder(text: str) -> str:
    """An output folder that exists and is writable, or can be created (checked, not created)."""
    problem = _output_folder_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: cannot write to this output folder ({problem}); choose another path")
    return text


def output_path(text: str) -> str:
    """An output that may be a file or a folder (a tool decides which from the input): nothing in the way
    of creating it, and writable if it exists (checked, not created)."""
    problem = "empty path" if not text else (
        "it is read-only" if os.path.exists(text) and not os.access(text, os.W_OK) else _writable_ancestor_problem(text))
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: cannot write this output ({problem}); choose another path")
    return text


def check_dataset_name(name: str, option: str = "--dataset", hint: str = "") -> str:
    """Raise :class:`~ebm_refine.utils.errors.UnknownNameError` unless ``name`` is a registered Detectron2
    dataset (the plugin's datasets are registered by importing :mod:`ebm_refine.detectron2`)."""
    from detectron2.data import DatasetCatalog

    import ebm_refine.detectron2  # noqa: F401 - registers the plugin's datasets

    from .errors import UnknownNameError

    names: Sequence[str] = DatasetCatalog.list()
    if name not in names:
        shown = ", ".join(sorted(n for n in names if not n.startswith(("coco_20", "keypoints_", "lvis_", "cityscapes",
                                                                         "voc_", "ade20k")))[:12])
        raise UnknownNameError(f"{option} {name!r}: not a registered Detectron2 dataset (e.g. {shown}, ...)"
                               f"{'; ' + hint if hint else ''}")
    return name


def detectron2_dataset(text: str) -> str:
    """A registered Detectron2 dataset name (for tools that register none of their own)."""
    from .errors import UnknownNameError

    try:
        return check_dataset_name(text, option="")
    except UnknownNameError as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None
