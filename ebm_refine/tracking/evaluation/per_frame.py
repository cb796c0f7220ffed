"""Per-frame tracking errors over several runs, and the significance of the differences between trackers.

The tracker's headline comparison (EBM refinement vs IoU-Net refinement vs no refinement) is tested on
paired per-frame errors, not read off one run's AUC. For each method, R result folders (runs: candidate-box
seeds, training seeds, ...; pytracking layout ``<folder>/<seq>.txt``) are scored frame by frame with the
``pytracking`` protocol's rules (:func:`~.protocols.pytracking_frame_errors`: frame 0 replaced by the ground
truth, zero-size boxes carried forward, short results padded with zero boxes, LaSOT rules), and

* a sample is a frame ``"<seq>/<frame>"`` with a valid ground truth (``x, y, w, h > 0``, the pytracking
  protocol's rule; visible when the dataset says), frame 0 excluded (every method is given the ground truth there); its error is ``1 - IoU``;
* or, with ``unit="sequence"``, a sequence, its error the mean ``1 - IoU`` over its valid frames. Frames of
  one sequence are not independent (a lost target stays lost), so per-frame p-values are optimistic; the
  per-sequence test is the conservative one.

:func:`tracker_significance` compares every pair of methods with
:func:`ebm_refine.evaluation.compare_methods` (per run and pooled over the runs, Holm over the pairs). Every
run of every method covers the same sequences, so the pooled test averages each sample over the runs.
"""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence as _Seq, Tuple

import numpy as np

from ...evaluation import Comparison, PerSampleErrors, compare_methods
from ...utils import BadValueError, MissingFileError
from ..datasets.sequence import Sequence
from .protocols import pytracking_frame_errors
from .results import read_result, result_path

__all__ = ["sequence_frame_errors", "tracker_per_sample_errors", "tracker_significance", "UNITS"]

UNITS = ("frame", "sequence")


def sequence_frame_errors(pred: np.ndarray, seq: Sequence,
                          source: str = "<prediction>") -> Tuple[np.ndarray, np.ndarray]:
    """(frame indices (V,), errors 1 - IoU (V,)) of the valid frames after frame 0 of one sequence.

    A frame whose ground truth is not a box (NaN, e.g. an OTB row for a target out of view) has no error and is
    left out, on every dataset: the ``otb`` protocol scores it as an invalid frame, and pytracking's own rule
    (NaN only on UAV datasets) is a rule for its success curves, not for a paired test.
    """
    if not seq.has_full_ground_truth:
        raise BadValueError(f"sequence {seq.name!r} has only the first-frame box: it has no per-frame errors")
    gt = np.array(seq.ground_truth, dtype=np.float64)
    gt[~np.isfinite(gt).all(1)] = 0.0  # zero size: an invalid frame under the protocol's rules
    frames = pytracking_frame_errors(pred, gt, seq.dataset, seq.target_visible, source)
    keep = frames["valid"].copy()
    keep[0] = False
    index = np.flatnonzero(keep)
    return index, 1.0 - frames["overlap"][index]


def tracker_per_sample_errors(sequences: _Seq[Sequence], method_dirs: Mapping[str, _Seq[str]],
                              run_names: Optional[_Seq[str]] = None, unit: str = "frame") -> PerSampleErrors:
    """Per-frame (or per-sequence) errors of every method over R runs.

    Args:
        sequences: the sequences (full ground truth).
        method_dirs: method name -> R result folders (run r of every method is paired with run r of the others).
        run_names: names of the R runs (default ``"0"``..).
        unit: ``"frame"`` or ``"sequence"`` (see the module docstring).
    Raises:
        BadValueError: unequal numbers of runs or a bad ``unit``; MissingFileError: a missing result file;
        AnnotationError: a result file that breaks the protocol's rules (named with its line).
    """
    if unit not in UNITS:
        raise BadValueError(f"unit must be one of {UNITS}, got {unit!r}")
    methods = list(method_dirs)
    counts = {m: len(d) for m, d in method_dirs.items()}
    if len(methods) < 2 or len(set(counts.values())) != 1 or not next(iter(counts.values())):
        raise BadValueError(f"need >= 2 methods with the same number (>= 1) of result folders each, got {counts}")
    num_runs = counts[methods[0]]
    run_names = [str(r) for r in (run_names if run_names is not None else range(num_runs))]
    if len(run_names) != num_runs:
        raise BadValueError(f"{len(run_names)} run names for {num_runs} runs")
    out = PerSampleErrors(metric="1 - IoU" if unit == "frame" else "1 - mean IoU", unit=unit)
    for r, name in enumerate(run_names):
        errors: Dict[str, List[float]] = {m: [] for m in methods}
        ids: List[str] = []
        for seq in sequences:
            per_method = {}
            for m in methods:
                path = result_path(method_dirs[m][r], seq.name)
                if not os.path.isfile(path):
                    raise MissingFileError(f"{path}: result file not found ({m}, run {name}); run the tracker on "
                                           f"{seq.name} or leave the sequence out")
                per_method[m] = sequence_frame_errors(read_result(path), seq, source=path)
            index = per_method[methods[0]][0]
            if index.size == 0:
                continue  # no valid frame after the first: nothing to compare
            if unit == "frame":
                ids += [f"{seq.name}/{i}" for i in index]
                for m in methods:
                    errors[m] += per_method[m][1].tolist()
            else:
                ids.append(seq.name)
                for m in methods:
                    errors[m].append(float(per_method[m][1].mean()))
        if not ids:
            raise BadValueError("no valid frame to compare in these sequences")
        out.add_run(name, errors, ids)
    return out


def tracker_significance(data: PerSampleErrors, methods: Optional[_Seq[str]] = None, **kwargs) -> List[Comparison]:
    """Every pair of ``methods`` (default: all, in ``data``'s order) per run and pooled; Holm over the pairs.

    ``kwargs`` go to :func:`ebm_refine.evaluation.compare_methods` (confidence, alpha, ci_method, ...)."""
    methods = list(methods or data.methods)
    missing = [m for m in methods if m not in data.methods]
    if missing:
        raise BadValueError(f"no method {missing[0]!r} in the errors; methods: {', '.join(data.methods)}")
    return compare_methods({m: data.method_runs(m) for m in methods}, ids=data.ids(),
                           run_names=[r.name for r in data.runs], metric=data.metric, **kwargs)
