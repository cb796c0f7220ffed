"""Three scoring protocols over the same result files.

Result-file rules shared by all three (:func:`check_prediction`): a result with **more rows than the
sequence has frames** is an error naming the file (no protocol truncates it: the file belongs to another
sequence or another version of it); a prediction with a **negative width or height** is an invalid
prediction and an error naming the file and line (pytracking's rule, now applied everywhere). Each
protocol's own rules follow.

``pytracking`` -- pytracking's ``analysis/extract_results.py`` (``calc_seq_err_robust`` and
``extract_results``) + ``plot_results.py``, as of its current version (with ``exclude_invalid_frames``)
    * frame 0 of the prediction is replaced by the ground truth;
    * a prediction with zero width or height is replaced by the previous frame's prediction (when that
      frame's ground truth has no NaN); a NaN prediction is an error, as in pytracking;
    * a shorter result is padded with all-zero boxes (they fail every threshold), except on LaSOT where
      it is an error;
    * a frame is *valid* when all four numbers of its ground truth are > 0 (``x, y, w, h``; NaN is not:
      pytracking's ``(anno_bb > 0.0).sum(1) == 4``) and, when the dataset has visibility flags, the target is
      visible. A box touching the image's top or left border (x or y <= 0) is therefore not scored. Invalid frames get IoU -1 (a failure at every
      threshold), normalised centre error -1 (a success at every threshold) and centre error -1
      (success) on UAV datasets but +inf (failure) elsewhere. On LaSOT invisible frames get +inf for both
      centre errors;
    * ``exclude_invalid_frames=False`` (pytracking's default): the denominator is the number of frames.
      ``exclude_invalid_frames=True``: only valid frames are scored, numerator and denominator alike.
      (pytracking itself divides by the valid frames but still counts the invalid ones' -1 errors as
      precision successes, which puts normalised precision above 100 % -- 111.11 on a sequence with 12
      zero-size boxes in 120 frames; we do not reproduce that);
    * NaN ground truth outside UAV datasets is an error, as in pytracking;
    * success: IoU > t for t in 0:0.05:1; AUC = mean of the curve; OP50/OP75 = the curve at 0.5/0.75;
      precision = rate of centre error <= 20 px; normalised precision = rate of normalised error <= 0.2.
``otb`` -- the got10k toolkit (``ExperimentOTB`` / ``ExperimentUAV123``, ``utils.metrics``)
    * frame 0 replaced by the ground truth; the result must have exactly one row per frame;
    * frames whose ground truth has a NaN are removed from numerator and denominator;
    * IoU with got10k's ``eps`` in the union and clipping; NaN predictions fail;
    * success: IoU > t for t = linspace(0, 1, 21); AUC = mean; precision at 20 px (error <= t). got10k has
      no normalised precision: we add it with the same frame rule (error <= 0.2, thresholds 0:0.01:0.5).
      FPS is :func:`fps_from_times`, as in the other protocols, not got10k's mean of 1/t.
``trackingnet`` -- the evaluation server's devkit (``metrics.py``)
    * every coordinate of prediction and ground truth rounded to an integer (``np.round``: halves to even);
      frame 0 replaced by the ground truth;
    * pixel-inclusive boxes: ``x2 = x + w - 1``, intersection side ``round(x2' - x1' + 1)`` clipped at 0,
      centre ``x + (w + 1) / 2``;
    * success: IoU >= t for t = linspace(0, 1, 21); precision thresholds linspace(0, 50, 21) px;
      normalised thresholds linspace(0, 0.5, 21); every frame counts, a NaN (missing row, NaN ground truth,
      NaN prediction) fails;
    * every score is the trapezoidal area under its 21-point curve over x = linspace(0, 1, 21), times 100
      (so "precision" is an area, not the value at 20 px);
    * coverage: percentage of all frames (pooled over sequences) whose rounded ``x + y + w + h > 0``;
      missing rows are uncovered failures, and a missing file counts as all zeros when
      ``on_missing="zeros"`` (the server's rule).

All summary numbers are percentages (got10k prints fractions: divide by 100 to compare); no score exceeds
100. Curves are computed in float64; pytracking accumulates its per-sequence curves in float32, so its
printed scores can differ from ours around the 5th significant digit.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence as _Seq

import numpy as np

from ...utils import BadValueError, MissingFileError, UnknownNameError
from ..datasets.io import AnnotationError
from ..datasets.sequence import Sequence
from . import metrics as M
from .results import read_result, read_times, result_path, time_path

PROTOCOLS = ("pytracking", "otb", "trackingnet")
SCORE_KEYS = ("auc", "precision", "norm_precision", "op50", "op75")


def pytracking_dataset_rule(dataset: str) -> str:
    """pytracking's dataset switch: ``"uav"`` for every UAV123 variant, ``"lasot"``, else ``"default"``."""
    key = dataset.lower()
    if key.startswith("uav"):
        return "uav"
    if key == "lasot":
        return "lasot"
    return "default"


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0]) + 1


def check_prediction(pred: np.ndarray, n_frames: int, source: str = "<prediction>") -> np.ndarray:
    """The result-file rules every protocol shares; returns ``pred`` as an (P, 4) float64 copy.

    Raises:
        AnnotationError naming ``source:line`` when the result has more rows than the sequence has frames
        or a prediction has a negative width or height.
    """
    pred = M.as_boxes(pred)
    if pred.shape[0] > n_frames:
        raise AnnotationError(f"{source}:{n_frames + 1}: result has {pred.shape[0]} rows but the sequence has "
                              f"{n_frames} frames; it belongs to another sequence or version (re-run it with "
                              "--overwrite)")
    with np.errstate(invalid="ignore"):
        negative = (pred[:, 2:] < 0).any(1)
    if negative.any():
        row = _first_bad_row(negative)
        raise AnnotationError(f"{source}:{row}: invalid prediction {pred[row - 1].tolist()} (negative width or "
                              "height); fix the tracker's output or re-run it")
    return pred


def pytracking_frame_errors(pred: np.ndarray, gt: np.ndarray, dataset: str = "otb",
                            target_visible: Optional[np.ndarray] = None,
                            source: str = "<prediction>") -> Dict[str, np.ndarray]:
    """Per-frame overlap and centre errors of one sequence under the ``pytracking`` protocol's rules.

    Args: as :func:`score_sequence_pytracking`.

    Returns:
        dict of (N,) arrays: ``overlap`` (IoU; -1 on invalid frames), ``center_error`` and
        ``norm_center_error`` (with the protocol's values on invalid frames) and ``valid`` (bool).
    """
    rule = pytracking_dataset_rule(dataset)
    gt = M.as_boxes(gt)
    n = gt.shape[0]
    pred = check_prediction(pred, n, source)
    if np.isnan(pred).any():
        row = _first_bad_row(np.isnan(pred).any(1))
        raise AnnotationError(f"{source}:{row}: invalid prediction {pred[row - 1].tolist()} (NaN; the pytracking "
                              "protocol rejects it); fix the tracker's output or score with --protocol otb")
    gt_nan = np.isnan(gt).any(1)
    if gt_nan.any() and rule != "uav":
        raise AnnotationError(f"{source}: the ground truth has NaN rows (first: frame {_first_bad_row(gt_nan)}); the "
                              "pytracking protocol allows that only on UAV datasets -- use --protocol otb")
    # Zero-size boxes mean "target lost" to many trackers; pytracking carries the previous box forward.
    for i in range(1, pred.shape[0]):
        if (pred[i, 2:] == 0).any() and not gt_nan[i]:
            pred[i] = pred[i - 1]
    if pred.shape[0] < n:
        if rule == "lasot":
            raise AnnotationError(f"{source}:{pred.shape[0] + 1}: result has {pred.shape[0]} rows for {n} frames "
                                  f"(pytracking rejects short LaSOT results); re-run the sequence")
        pred = np.concatenate([pred, np.zeros((n - pred.shape[0], 4))], axis=0)
    pred[0] = gt[0]

    with np.errstate(invalid="ignore"):
        valid = (gt > 0).all(axis=1)
    if target_visible is not None:
        valid &= np.asarray(target_visible, bool)
    err_center = M.center_error(pred, gt)
    err_norm = M.normalized_center_error(pred, gt)
    overlap = M.iou(pred, gt)
    err_center[~valid] = -1.0 if rule == "uav" else np.inf
    err_norm[~valid] = -1.0
    overlap[~valid] = -1.0
    if rule == "lasot" and target_visible is not None:
        invisible = ~np.asarray(target_visible, bool)
        err_norm[invisible] = np.inf
        err_center[invisible] = np.inf
    if np.isnan(overlap).any():
        raise AnnotationError(f"{source}:{_first_bad_row(np.isnan(overlap))}: the overlap is NaN (zero-size "
                              "prediction and ground truth); fix the tracker's output")
    return {"overlap": overlap, "center_error": err_center, "norm_center_error": err_norm, "valid": valid}


def score_sequence_pytracking(pred: np.ndarray, gt: np.ndarray, dataset: str = "otb",
                              target_visible: Optional[np.ndarray] = None, source: str = "<prediction>",
                              exclude_invalid_frames: bool = False) -> Dict[str, Any]:
    """Curves of one sequence under the ``pytracking`` protocol (see module docstring).

    Args:
        pred: (P, 4) predicted boxes, P <= N; gt: (N, 4) ground truth (NaN rows allowed on UAV datasets).
        dataset: dataset key, mapped through :func:`pytracking_dataset_rule`.
        target_visible: optional (N,) bool flags.
        source: file name used in error messages.
        exclude_invalid_frames: score only the valid frames (pytracking's option of that name, without
            counting the invalid frames as precision successes).

    Returns:
        dict with ``success`` (21,), ``precision`` (51,), ``norm_precision`` (51,) rates in [0, 1],
        ``n_frames`` and ``denominator``.
    """
    frames = pytracking_frame_errors(pred, gt, dataset, target_visible, source)
    overlap, err_center, err_norm = frames["overlap"], frames["center_error"], frames["norm_center_error"]
    valid, n = frames["valid"], frames["overlap"].shape[0]
    if exclude_invalid_frames:
        overlap, err_center, err_norm = overlap[valid], err_center[valid], err_norm[valid]
    denominator = int(valid.sum()) if exclude_invalid_frames else n
    if denominator <= 0:
        raise AnnotationError(f"{source}: no valid ground-truth frame to score (every box is NaN, has zero size "
                              "or is marked invisible); leave the sequence out")
    return {
        "success": M.rate_curve(overlap, M.PYTRACKING_IOU_THRESHOLDS, ">", denominator),
        "precision": M.rate_curve(err_center, M.PYTRACKING_CENTER_THRESHOLDS, "<=", denominator),
        "norm_precision": M.rate_curve(err_norm, M.PYTRACKING_NORM_THRESHOLDS, "<=", denominator),
        "n_frames": n, "denominator": denominator,
    }


def score_sequence_otb(pred: np.ndarray, gt: np.ndarray, source: str = "<prediction>") -> Dict[str, Any]:
    """Curves of one sequence under the ``otb`` (got10k) protocol: NaN-GT frames dropped entirely.

    Returns:
        dict with ``success`` (21,), ``precision`` (51,), ``norm_precision`` (51,), ``n_frames``,
        ``denominator`` (number of frames with a non-NaN ground truth).
    """
    gt = M.as_boxes(gt)
    pred = check_prediction(pred, gt.shape[0], source)
    if pred.shape[0] < gt.shape[0]:
        raise AnnotationError(f"{source}:{pred.shape[0] + 1}: result has {pred.shape[0]} rows but the sequence "
                              f"has {gt.shape[0]} frames (the otb protocol needs one row per frame); re-run the "
                              "sequence")
    pred[0] = gt[0]
    keep = ~np.isnan(gt).any(1)
    if not keep.any():
        raise AnnotationError(f"{source}: every ground-truth row is NaN; nothing to score, leave the sequence out")
    p, g = pred[keep], gt[keep]
    overlap = M.iou(p, g, eps=np.finfo(float).eps, clip=True)
    return {
        "success": M.rate_curve(overlap, M.OTB_IOU_THRESHOLDS, ">"),
        "precision": M.rate_curve(M.center_error(p, g), M.OTB_CENTER_THRESHOLDS, "<="),
        "norm_precision": M.rate_curve(M.normalized_center_error(p, g), M.OTB_NORM_THRESHOLDS, "<="),
        "n_frames": gt.shape[0], "denominator": int(keep.sum()),
    }


def score_sequence_trackingnet(pred: np.ndarray, gt: np.ndarray, source: str = "<prediction>"
                               ) -> Dict[str, Any]:
    """Curves of one sequence under the ``trackingnet`` (server devkit) protocol.

    Returns:
        dict with ``success``, ``precision``, ``norm_precision`` (21,) rates over all frames,
        ``n_frames``, ``denominator`` (= n_frames) and ``covered_frames``.
    """
    gt = M.as_boxes(gt)
    n = gt.shape[0]
    pred = check_prediction(pred, n, source)
    if pred.shape[0] < n:
        # The devkit aligns rows by index: rows the submission lacks become NaN.
        pred = np.concatenate([pred, np.full((n - pred.shape[0], 4), np.nan)], axis=0)
    pred, gt = np.round(pred), np.round(gt)
    pred[0] = gt[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        g_x2, g_y2 = gt[:, 0] + gt[:, 2] - 1.0, gt[:, 1] + gt[:, 3] - 1.0
        p_x2, p_y2 = pred[:, 0] + pred[:, 2] - 1.0, pred[:, 1] + pred[:, 3] - 1.0
        inter_w = np.round(np.minimum(g_x2, p_x2) - np.maximum(gt[:, 0], pred[:, 0]) + 1.0)
        inter_h = np.round(np.minimum(g_y2, p_y2) - np.maximum(gt[:, 1], pred[:, 1]) + 1.0)
        inter = np.where(inter_w < 0, 0.0, inter_w) * np.where(inter_h < 0, 0.0, inter_h)
        overlap = inter / (gt[:, 2] * gt[:, 3] + pred[:, 2] * pred[:, 3] - inter)
        dx = (gt[:, 0] + (gt[:, 2] + 1.0) / 2.0) - (pred[:, 0] + (pred[:, 2] + 1.0) / 2.0)
        dy = (gt[:, 1] + (gt[:, 3] + 1.0) / 2.0) - (pred[:, 1] + (pred[:, 3] + 1.0) / 2.0)
        dist = np.sqrt(dx * dx + dy * dy)
        ndist = np.sqrt((dx / gt[:, 2]) ** 2 + (dy / gt[:, 3]) ** 2)
        covered = pred.sum(axis=1) > 0
    return {
        "success": M.rate_curve(overlap, M.TRACKINGNET_IOU_THRESHOLDS, ">="),
        "precision": M.rate_curve(dist, M.TRACKINGNET_CENTER_THRESHOLDS, "<="),
        "norm_precision": M.rate_curve(ndist, M.TRACKINGNET_NORM_THRESHOLDS, "<="),
        "n_frames": n, "denominator": n, "covered_frames": int(covered.sum()),
    }


def score_sequence(protocol: str, pred: np.ndarray, seq: Sequence, source: str = "<prediction>",
                   exclude_invalid_frames: bool = False) -> Dict[str, Any]:
    """Dispatch to the protocol's per-sequence scorer; ``seq`` must have full ground truth.

    ``exclude_invalid_frames`` applies to the ``pytracking`` protocol only.
    """
    if not seq.has_full_ground_truth:
        raise BadValueError(f"sequence {seq.name!r} has only the first-frame box: it cannot be scored locally "
                            "(use the benchmark's evaluation server)")
    if protocol == "pytracking":
        return score_sequence_pytracking(pred, seq.ground_truth, seq.dataset, seq.target_visible, source,
                                         exclude_invalid_frames)
    if protocol == "otb":
        return score_sequence_otb(pred, seq.ground_truth, source)
    if protocol == "trackingnet":
        return score_sequence_trackingnet(pred, seq.ground_truth, source)
    raise UnknownNameError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def thresholds(protocol: str) -> Dict[str, np.ndarray]:
    """The x-axes of the protocol's success, precision and normalised-precision curves."""
    if protocol == "pytracking":
        return {"success": M.PYTRACKING_IOU_THRESHOLDS, "precision": M.PYTRACKING_CENTER_THRESHOLDS,
                "norm_precision": M.PYTRACKING_NORM_THRESHOLDS}
    if protocol == "otb":
        return {"success": M.OTB_IOU_THRESHOLDS, "precision": M.OTB_CENTER_THRESHOLDS.astype(float),
                "norm_precision": M.OTB_NORM_THRESHOLDS}
    if protocol == "trackingnet":
        return {"success": M.TRACKINGNET_IOU_THRESHOLDS, "precision": M.TRACKINGNET_CENTER_THRESHOLDS,
                "norm_precision": M.TRACKINGNET_NORM_THRESHOLDS}
    raise UnknownNameError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def summarize_curves(protocol: str, success: np.ndarray, precision: np.ndarray, norm_precision: np.ndarray
                     ) -> Dict[str, float]:
    """Scores (percent) from mean curves: ``auc``, ``precision``, ``norm_precision``, ``op50``, ``op75``."""
    out = {"op50": 100.0 * float(success[10]), "op75": 100.0 * float(success[15])}
    if protocol == "trackingnet":
        x = np.linspace(0, 1, 21)  # the devkit integrates all three curves over this x
        out.update(auc=100.0 * _trapezoid(success, x), precision=100.0 * _trapezoid(precision, x),
                   norm_precision=100.0 * _trapezoid(norm_precision, x))
    else:
        # index 20 is 20 px on the 0..50 px axis and 0.20 on the 0..0.5 axis
        out.update(auc=100.0 * float(np.mean(success)), precision=100.0 * float(precision[20]),
                   norm_precision=100.0 * float(norm_precision[20]))
    return {k: out[k] for k in SCORE_KEYS}


def fps_from_times(times: List[Optional[np.ndarray]]) -> Optional[float]:
    """Frames per second of a run, the same in every protocol: the number of timed frames (t > 0, the first
    frame's initialisation included) over their total seconds, pooled over the sequences -- what pytracking's
    runner prints per sequence. (got10k's report instead averages 1/t per frame, then over sequences, which
    weighs fast frames more: a tracker with a slow first frame gets a higher number.) None without timing
    files."""
    times = [t[t > 0] for t in times if t is not None]
    times = [t for t in times if t.size]
    if not times:
        return None
    return float(sum(t.size for t in times) / sum(float(t.sum()) for t in times))


def evaluate_results(sequences: _Seq[Sequence], results_dir: str, protocol: str, on_missing: str = "error",
                     name: Optional[str] = None, exclude_invalid_frames: bool = False) -> Dict[str, Any]:
    """Score the result files in ``results_dir`` (``<seq>.txt`` per sequence) under ``protocol``.

    Args:
        sequences: the sequences to score (full ground truth needed).
        results_dir: folder with ``<seq>.txt`` (and optional ``<seq>_time.txt``).
        protocol: ``pytracking``, ``otb`` or ``trackingnet``.
        on_missing: what a missing ``<seq>.txt`` does: ``"error"`` (default), ``"skip"`` (leave the
            sequence out, like pytracking's ``skip_missing_seq``) or ``"zeros"`` (score all-zero boxes,
            the TrackingNet server's rule).
        name: display name stored in the output (default: ``results_dir``).
        exclude_invalid_frames: ``pytracking`` protocol: score only frames with a valid ground truth
            (see the module docstring); stored in the output.

    Returns:
        dict with ``protocol``, ``name``, ``results_dir``, ``sequences`` (scored names), ``missing``,
        ``thresholds`` / ``curves`` (mean curves, fractions) keyed ``success``, ``precision``,
        ``norm_precision``, the scores ``auc``, ``precision``, ``norm_precision``, ``op50``, ``op75``
        (percent), ``fps`` (None without time files), ``coverage`` (percent, trackingnet only) and
        ``per_sequence``: name -> the same scores for that sequence alone.

    Raises:
        MissingFileError for a missing result file (``on_missing="error"``) or a missing results folder;
        AnnotationError naming ``file:line`` for a result file that breaks the rules above.
    """
    if protocol not in PROTOCOLS:
        raise UnknownNameError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if on_missing not in ("error", "skip", "zeros"):
        raise BadValueError(f"on_missing must be error, skip or zeros, got {on_missing!r}")
    if on_missing != "zeros" and not os.path.isdir(results_dir):
        raise MissingFileError(f"{results_dir}: results folder not found; run the tracker first (--mode run) or "
                               "check --results / --result-dir")
    per_seq: Dict[str, Dict[str, Any]] = {}
    curves: Dict[str, List[np.ndarray]] = {"success": [], "precision": [], "norm_precision": []}
    missing, times = [], []
    covered = total = 0
    for seq in sequences:
        path = result_path(results_dir, seq.name)
        if os.path.isfile(path):
            pred = read_result(path)
            times.append(read_times(time_path(results_dir, seq.name)))
        elif on_missing == "skip":
            missing.append(seq.name)
            continue
        elif on_missing == "zeros":
            missing.append(seq.name)
            pred = np.zeros((len(seq), 4))
        else:
            raise MissingFileError(f"{path}: result file not found; run the tracker first (--mode run) or pass "
                                   "--on-missing skip")
        res = score_sequence(protocol, pred, seq, source=path, exclude_invalid_frames=exclude_invalid_frames)
        for key in curves:
            curves[key].append(res[key])
        scores = summarize_curves(protocol, res["success"], res["precision"], res["norm_precision"])
        scores["n_frames"] = res["n_frames"]
        if protocol == "trackingnet":
            covered += res["covered_frames"]
            total += res["n_frames"]
            scores["coverage"] = 100.0 * res["covered_frames"] / res["n_frames"]
        per_seq[seq.name] = scores
    if not per_seq:
        raise MissingFileError(f"{results_dir}: no result file of these {len(sequences)} sequence(s) to score; "
                               "run the tracker first (--mode run)")
    mean_curves = {k: np.mean(np.stack(v), axis=0) for k, v in curves.items()}
    out: Dict[str, Any] = {
        "protocol": protocol, "name": name or results_dir, "results_dir": results_dir,
        "exclude_invalid_frames": bool(exclude_invalid_frames) if protocol == "pytracking" else None,
        "sequences": list(per_seq), "missing": missing,
        "thresholds": thresholds(protocol), "curves": mean_curves,
    }
    out.update(summarize_curves(protocol, mean_curves["success"], mean_curves["precision"],
                                mean_curves["norm_precision"]))
    out["fps"] = fps_from_times(times)
    if protocol == "trackingnet":
        out["coverage"] = 100.0 * covered / total
    out["per_sequence"] = per_seq
    return out
