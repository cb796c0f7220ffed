"""Per-sample error files: what a benchmark writes so that :mod:`.significance` can compare methods.

Format (JSON, ``format: "ebm_refine.per_sample_errors/1"``)::

    {"format": "ebm_refine.per_sample_errors/1",
     "metric": "1 - IoU",                 # what an error is (lower is better)
     "unit": "box",                       # what a sample is: box, frame, sample, ...
     "runs": [{"name": "seed0",
               "ids": ["17/3", ...],      # optional: one id per sample, shared by the methods of the run
               "errors": {"unrefined": [...], "refined": [...]}},   # method -> one error per sample
              ...]}

Within a run every method has one error per sample, in the same order (paired). Runs may have different
samples; when all runs list the same ids, the pooled significance test averages each sample over the runs.
``tools/compare_runs.py`` reads these files, or plain text files of one error per line (one file per run
and method).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..utils.errors import UserError
from ..utils.fileio import atomic_write_text

__all__ = ["FORMAT", "ErrorRun", "PerSampleErrors", "load_per_sample_errors", "read_error_column",
           "check_distinct_runs"]

FORMAT = "ebm_refine.per_sample_errors/1"


@dataclass
class ErrorRun:
    """One run: per-sample errors of each method on the same samples (``ids`` optional)."""

    name: str
    errors: Dict[str, np.ndarray]
    ids: Optional[List[str]] = None


@dataclass
class PerSampleErrors:
    """Runs of per-sample errors of several methods, with what the errors measure."""

    metric: str = "error"
    unit: str = "sample"
    runs: List[ErrorRun] = field(default_factory=list)

    @property
    def methods(self) -> List[str]:
        """Methods present in every run, in the order of the first run."""
        if not self.runs:
            return []
        first = list(self.runs[0].errors)
        return [m for m in first if all(m in r.errors for r in self.runs)]

    def add_run(self, name: str, errors: Dict[str, Sequence[float]], ids: Optional[Sequence] = None) -> None:
        """Append a run; every method needs one error per sample (and per id when ``ids`` is given)."""
        arrays = {m: np.asarray(e, dtype=np.float64).ravel() for m, e in errors.items()}
        sizes = {m: a.size for m, a in arrays.items()}
        if not arrays or len(set(sizes.values())) > 1 or (ids is not None and len(ids) != next(iter(sizes.values()))):
            raise ValueError(f"run {name!r}: methods and ids need the same number of samples, got {sizes}"
                             + (f" and {len(ids)} ids" if ids is not None else ""))
        self.runs.append(ErrorRun(str(name), arrays, [str(i) for i in ids] if ids is not None else None))

    def method_runs(self, method: str) -> List[np.ndarray]:
        """The R runs of one method's errors."""
        return [r.errors[method] for r in self.runs]

    def ids(self) -> Optional[List[List[str]]]:
        """Per-run sample ids, or None unless every run has them."""
        if self.runs and all(r.ids is not None for r in self.runs):
            return [r.ids for r in self.runs]  # type: ignore[misc]
        return None

    def to_dict(self) -> dict:
        runs = []
        for r in self.runs:
            entry = {"name": r.name, "errors": {m: e.tolist() for m, e in r.errors.items()}}
            if r.ids is not None:
                entry["ids"] = list(r.ids)
            runs.append(entry)
        return {"format": FORMAT, "metric": self.metric, "unit": self.unit, "runs": runs}

    def save(self, path: str) -> None:
        """Write the JSON file atomically."""
        atomic_write_text(path, json.dumps(self.to_dict()))


def load_per_sample_errors(path: str) -> PerSampleErrors:
    """Read a per-sample error file; raises :class:`UserError` naming the file and the problem."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; give a per-sample error file (JSON, {FORMAT})")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); give a per-sample error file ({FORMAT})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: 'format' is not {FORMAT!r}; write the file with PerSampleErrors.save")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError(f"{path}: 'runs' must be a non-empty list of runs")
    out = PerSampleErrors(str(data.get("metric", "error")), str(data.get("unit", "sample")))
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("errors"), dict) or not run["errors"]:
            raise UserError(f"{path}: runs[{i}] needs an 'errors' mapping of method -> list of errors")
        try:
            errors = {m: np.asarray(e, dtype=np.float64) for m, e in run["errors"].items()}
        except (TypeError, ValueError):
            raise UserError(f"{path}: runs[{i}].errors must hold lists of numbers") from None
        bad = [m for m, e in errors.items() if e.ndim != 1 or e.size == 0 or not np.isfinite(e).all()]
        if bad:
            raise UserError(f"{path}: runs[{i}].errors[{bad[0]!r}] must be a non-empty flat list of finite numbers")
        try:
            out.add_run(run.get("name", str(i)), errors, run.get("ids"))
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
    if not out.methods:
        raise UserError(f"{path}: no method appears in every run")
    check_distinct_runs(out, path)
    return out


def check_distinct_runs(data: PerSampleErrors, source: str) -> None:
    """Refuse two runs with the same name, or with identical errors for every method: the same run given
    twice would be pooled as if it were an independent repetition (a smaller p-value for nothing).

    Raises:
        UserError naming ``source`` and both runs.
    """
    seen: Dict[str, str] = {}
    for run in data.runs:
        if run.name in seen.values():
            raise UserError(f"{source}: two runs are named {run.name!r}; each run needs its own name (seed)")
        key = repr(sorted((m, e.tobytes()) for m, e in run.errors.items()))
        if key in seen:
            raise UserError(f"{source}: runs {seen[key]!r} and {run.name!r} hold identical errors: the same run "
                            "given twice, which would be counted as two independent runs; give each run once")
        seen[key] = run.name


def read_error_column(path: str) -> np.ndarray:
    """One error per line (``#`` comments and blank lines skipped; ``id,error`` lines keep the last
    field) from a text file; ``.npy`` files are read with numpy. Raises :class:`UserError`."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file; give one error per line (or a .npy array)")
    if path.endswith(".npy"):
        try:
            values = np.load(path, allow_pickle=False).astype(np.float64).ravel()
        except (ValueError, OSError) as e:
            raise UserError(f"{path}: not a numeric .npy array ({e})") from None
    else:
        values = []
        try:
            with open(path, "r", encoding="utf-8") as fh:
                for k, line in enumerate(fh, 1):
                    line = line.split("#", 1)[0].strip()
                    if not line:
                        continue
                    field = line.replace("\t", ",").split(",")[-1].strip()
                    try:
                        values.append(float(field))
                    except ValueError:
                        raise UserError(f"{path}:{k}: {field!r} is not a number; one error per line") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a text file (binary content); give one error per line, or a .npy "
                            "array named *.npy") from None
        values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not all(math.isfinite(v) for v in values):
        raise UserError(f"{path}: needs at least one error and only finite values")
    return values
