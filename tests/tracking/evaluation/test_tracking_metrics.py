"""Metrics and the three protocols: hand-computed cases, each protocol's documented rules, and agreement
with the got10k package's own code (function level over the shared sequences, and its full UAV123
experiment on a fixture tree)."""
import os

import numpy as np
import pytest

from ebm_refine.tracking.datasets import AnnotationError, Sequence, load_dataset
from ebm_refine.tracking.evaluation import (evaluate_results, score_sequence_otb, score_sequence_pytracking,
                                            score_sequence_trackingnet, summarize_curves, write_boxes)
from ebm_refine.tracking.evaluation import metrics as M
from ebm_refine.tracking.evaluation.protocols import pytracking_frame_errors
from ebm_refine.tracking.evaluation.results import write_times
from tracking_helpers import touch_frames, write_boxes_txt

NAN = np.nan
# The worked example of docs/tracking_evaluation.md (a UAV sequence, frame 2 out of view).
EX_GT = np.array([[10, 10, 20, 20], [12, 10, 20, 20], [NAN] * 4, [20, 12, 20, 20], [24, 14, 20, 20.]])
EX_PRED = np.array([[0, 0, 1, 1], [12, 10, 20, 10], [30, 30, 20, 20], [45, 40, 20, 20], [24.6, 14.4, 19.5, 20.5]])


def _scores(protocol, res):
    return summarize_curves(protocol, res["success"], res["precision"], res["norm_precision"])


def test_iou_and_center_error_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 0, 0]])
    b = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [20, 20, 5, 5], [5, 5, 0, 0]])
    np.testing.assert_allclose(M.iou(a[:3], b[:3]), [50 / 150, 1.0, 0.0])
    assert np.isnan(M.iou(a, b)[3])                              # 0/0 without eps
    assert M.iou(a, b, eps=np.finfo(float).eps, clip=True)[3] == 0.0
    np.testing.assert_allclose(M.center_error(a[:3], b[:3]), [5.0, 0.0, np.hypot(22 - 4.5, 22 - 4.5)])
    np.testing.assert_allclose(M.normalized_center_error(a[:1], b[:1]), [0.5])


def test_threshold_sets():
    assert len(M.PYTRACKING_IOU_THRESHOLDS) == 21 and M.PYTRACKING_IOU_THRESHOLDS[10] == 0.5
    assert M.PYTRACKING_CENTER_THRESHOLDS[20] == 20 and M.PYTRACKING_NORM_THRESHOLDS[20] == 0.2
    assert M.TRACKINGNET_CENTER_THRESHOLDS[8] == 20 and len(M.TRACKINGNET_NORM_THRESHOLDS) == 21


def test_worked_example_numbers():
    py = _scores("pytracking", score_sequence_pytracking(EX_PRED, EX_GT, "uav123"))
    otb = _scores("otb", score_sequence_otb(EX_PRED, EX_GT))
    tn_res = score_sequence_trackingnet(EX_PRED, EX_GT)
    tn = _scores("trackingnet", tn_res)
    r = lambda d: {k: round(v, 2) for k, v in d.items()}  # noqa: E731
    assert r(py) == {"auc": 46.67, "precision": 80.0, "norm_precision": 60.0, "op50": 40.0, "op75": 40.0}
    py_ex = _scores("pytracking", score_sequence_pytracking(EX_PRED, EX_GT, "uav123", exclude_invalid_frames=True))
    assert r(py_ex) == {"auc": 58.33, "precision": 75.0, "norm_precision": 50.0, "op50": 50.0, "op75": 50.0}
    assert r(otb) == {"auc": 58.33, "precision": 75.0, "norm_precision": 50.0, "op50": 50.0, "op75": 50.0}
    assert r(tn) == {"auc": 49.5, "precision": 62.5, "norm_precision": 49.0, "op50": 60.0, "op75": 40.0}
    assert tn_res["covered_frames"] == 5


def test_pytracking_invalid_frames_uav_vs_default():
    gt = np.array([[5, 5, 10, 10], [5, 5, 10, 10], [5, 5, 0, 10], [5, 5, 10, 10]], float)
    pred = np.array([[5, 5, 10, 10], [100, 100, 10, 10], [5, 5, 10, 10], [5, 5, 10, 10]], float)
    uav = score_sequence_pytracking(pred, gt, "uav123")
    other = score_sequence_pytracking(pred, gt, "otb")
    # current pytracking: every frame in the denominator, on every dataset (exclude_invalid_frames=False);
    # invalid frame 2: IoU failure, centre success on UAV / failure elsewhere, normalised success always
    assert uav["denominator"] == 4 and other["denominator"] == 4
    assert uav["success"][10] == pytest.approx(2 / 4) and other["success"][10] == pytest.approx(2 / 4)
    assert uav["precision"][20] == pytest.approx(3 / 4) and other["precision"][20] == pytest.approx(2 / 4)
    assert uav["norm_precision"][20] == pytest.approx(3 / 4) and other["norm_precision"][20] == pytest.approx(3 / 4)
    # exclude_invalid_frames=True: only the 3 valid frames count, numerator and denominator alike
    # (pytracking would still count frame 2's -1 errors as successes: norm. precision 3/3 from 2 good frames)
    for dataset in ("uav123", "otb"):
        ex = score_sequence_pytracking(pred, gt, dataset, exclude_invalid_frames=True)
        assert ex["denominator"] == 3
        assert [ex["success"][10], ex["precision"][20], ex["norm_precision"][20]] == pytest.approx([2 / 3] * 3)
    # NaN ground truth is only allowed on UAV datasets
    gt_nan = gt.copy()
    gt_nan[2] = NAN
    assert score_sequence_pytracking(pred, gt_nan, "uav20l")["precision"][0] == pytest.approx(3 / 4)
    with pytest.raises(AnnotationError, match="only on UAV datasets -- use --protocol otb"):
        score_sequence_pytracking(pred, gt_nan, "otb")


def test_pytracking_lasot_visibility_and_lengths():
    gt = np.tile([5.0, 5.0, 10.0, 10.0], (4, 1))
    pred = gt.copy()
    vis = np.array([1, 1, 0, 1], bool)
    res = score_sequence_pytracking(pred, gt, "lasot", vis)
    assert res["denominator"] == 4
    assert res["success"][0] == pytest.approx(3 / 4) and res["norm_precision"][20] == pytest.approx(3 / 4)
    with pytest.raises(AnnotationError, match=r"r\.txt:3: result has 2 rows for 4 frames"):
        score_sequence_pytracking(pred[:2], gt, "lasot", vis, source="r.txt")


def test_pytracking_zero_size_carry_forward_padding_and_invalid():
    gt = np.tile([10.0, 10.0, 10.0, 10.0], (5, 1))
    pred = gt.copy()
    pred[2] = [50, 50, 0, 0]                                      # zero size -> previous box (perfect)
    res = score_sequence_pytracking(pred, gt, "otb")
    assert res["success"][-2] == 1.0
    short = score_sequence_pytracking(pred[:3], gt, "otb")        # padded with zero boxes -> failures
    assert short["success"][0] == pytest.approx(3 / 5) and short["precision"][20] == pytest.approx(3 / 5)
    bad = pred.copy()
    bad[3, 2] = -1
    with pytest.raises(AnnotationError, match=r"res\.txt:4: invalid prediction"):
        score_sequence_pytracking(bad, gt, "otb", source="res.txt")


def test_otb_drops_nan_frames_and_needs_full_length():
    gt = np.array([[0, 0, 10, 10], [NAN] * 4, [0, 0, 10, 10]], float)
    pred = np.array([[5, 5, 1, 1], [0, 0, 10, 10], [100, 100, 10, 10]], float)
    res = score_sequence_otb(pred, gt)
    assert res["denominator"] == 2 and res["success"][0] == 0.5 and res["precision"][50] == 0.5
    with pytest.raises(AnnotationError, match=r"x\.txt:3: result has 2 rows but the sequence has 3 frames"):
        score_sequence_otb(pred[:2], gt, source="x.txt")
    pred_nan = pred.copy()
    pred_nan[2] = NAN                                              # NaN predictions simply fail
    assert score_sequence_otb(pred_nan, gt)["success"][0] == 0.5


def test_trackingnet_rounding_ge_short_results_and_coverage():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    pred = np.array([[9, 9, 9, 9], [0.4, 0.4, 10.4, 4.6], [0, 0, 0, 0], [0, 0, 10, 10]], float)
    res = score_sequence_trackingnet(pred, gt)
    # frame 1 rounds to (0, 0, 10, 5): IoU exactly 0.5 passes ">= 0.5"; frame 2 all zeros is uncovered
    assert res["success"][10] == pytest.approx(3 / 4) and res["covered_frames"] == 3
    assert score_sequence_otb(pred, gt)["success"][10] == pytest.approx(2 / 4)   # continuous and ">"
    short = score_sequence_trackingnet(pred[:2], gt)
    assert short["covered_frames"] == 2 and short["success"][0] == pytest.approx(2 / 4)
    perfect = score_sequence_trackingnet(gt, gt)
    assert _scores("trackingnet", perfect)["auc"] == pytest.approx(100.0)
    # the "precision" score is an area over 0..50 px, not the value at 20 px
    assert _scores("trackingnet", perfect)["precision"] == pytest.approx(100.0)


def _seq(name, gt, dataset="otb"):
    return Sequence(name=name, frames=[f"/nonexistent/{name}/{i}.jpg" for i in range(len(gt))],
                    ground_truth=gt, dataset=dataset)


def test_evaluate_results_missing_files_and_fps(tmp_path):
    gt = np.tile([5.0, 5.0, 10.0, 10.0], (4, 1))
    seqs = [_seq("a", gt), _seq("b", gt)]
    write_boxes(str(tmp_path / "a.txt"), gt)
    write_times(str(tmp_path / "a_time.txt"), [0.5, 0.1, 0.1, 0.3])
    with pytest.raises(FileNotFoundError, match=r"b\.txt"):
        evaluate_results(seqs, str(tmp_path), "otb")
    skip = evaluate_results(seqs, str(tmp_path), "pytracking", on_missing="skip")
    assert skip["sequences"] == ["a"] and skip["missing"] == ["b"] and skip["auc"] == pytest.approx(100 * 20 / 21)
    assert skip["fps"] == pytest.approx(4 / 1.0)
    zeros = evaluate_results(seqs, str(tmp_path), "trackingnet", on_missing="zeros")
    assert zeros["coverage"] == pytest.approx(100 * 5 / 8)          # b: only the GT-replaced frame 0
    assert zeros["per_sequence"]["b"]["coverage"] == pytest.approx(25.0)
    otb = evaluate_results(seqs[:1], str(tmp_path), "otb")
    assert otb["fps"] == skip["fps"] == zeros["fps"]  # one figure per run: frames / seconds, in every protocol


# --------------------------------------------------------------------------- agreement with got10k
def _random_results(gt, rng):
    """Plausible tracker output: noisy boxes, a stretch of lost frames, a few degenerate sizes."""
    n = len(gt)
    base = np.where(np.isnan(gt), np.nanmean(gt, axis=0), gt)
    pred = base + rng.normal(0, 1, (n, 4)) * np.r_[base[:, 2:] * 0.15, base[:, 2:] * 0.1].reshape(n, 4, order="F")
    lost = slice(n // 3, n // 3 + n // 6)
    pred[lost, :2] += rng.uniform(40, 120, (pred[lost].shape[0], 2))
    pred[:, 2:] = np.abs(pred[:, 2:])
    pred[rng.choice(n, 2, replace=False), 2] = 0.0
    return pred


def test_otb_protocol_agrees_with_got10k_functions(tracking_data, tmp_path):
    pytest.importorskip("got10k")
    from got10k.experiments.uav123 import ExperimentUAV123
    from got10k.utils.metrics import center_error, rect_iou

    exp = object.__new__(ExperimentUAV123)
    exp.nbins_iou, exp.nbins_ce = 21, 51
    seqs = (load_dataset("otb", str(tracking_data / "otb")) + load_dataset("uav123_10fps", str(tracking_data / "uav123_10fps"))
            + load_dataset("vot", str(tracking_data / "vot")))
    assert len(seqs) == 4
    rng = np.random.default_rng(2020)
    for trial in range(3):
        res_dir = tmp_path / f"trial{trial}"
        succ, prec = [], []
        with_nan = []
        for seq in seqs:
            gt = seq.ground_truth.copy()
            gt[rng.choice(np.arange(1, len(gt)), len(gt) // 8, replace=False)] = NAN   # out-of-view frames
            with_nan.append(Sequence(seq.name, seq.frames, gt, seq.dataset))
            pred = _random_results(gt, rng)
            write_boxes(str(res_dir / f"{seq.name}.txt"), pred)
            boxes = np.loadtxt(res_dir / f"{seq.name}.txt", delimiter=",")       # what got10k reads
            boxes[0] = gt[0]
            ious, ces = exp._calc_metrics(boxes, gt)
            np.testing.assert_allclose(ious, rect_iou(boxes[~np.isnan(gt).any(1)], gt[~np.isnan(gt).any(1)]))
            np.testing.assert_allclose(ces, center_error(boxes[~np.isnan(gt).any(1)], gt[~np.isnan(gt).any(1)]))
            s, p = exp._calc_curves(ious, ces)
            succ.append(s)
            prec.append(p)
        ours = evaluate_results(with_nan, str(res_dir), "otb")
        ref_succ, ref_prec = np.mean(succ, axis=0), np.mean(prec, axis=0)
        np.testing.assert_allclose(ours["curves"]["success"], ref_succ, atol=1e-6)
        np.testing.assert_allclose(ours["curves"]["precision"], ref_prec, atol=1e-6)
        assert ours["auc"] / 100 == pytest.approx(np.mean(ref_succ), abs=1e-6)
        assert ours["precision"] / 100 == pytest.approx(ref_prec[20], abs=1e-6)
        assert ours["op50"] / 100 == pytest.approx(ref_succ[10], abs=1e-6)
        assert 0.05 < ours["auc"] / 100 < 0.95                            # a non-trivial test case


def test_otb_protocol_agrees_with_got10k_uav123_experiment(tmp_path, monkeypatch):
    pytest.importorskip("got10k")
    import matplotlib

    matplotlib.use("Agg")
    from got10k.experiments.uav123 import ExperimentUAV123

    root = tmp_path / "UAV123"
    rng = np.random.default_rng(7)
    names = {"uav6": 109, "uav4": 157}
    for name, n in names.items():
        touch_frames(root / "data_seq" / "UAV123" / name, range(1, n + 1))
        gt = np.column_stack([rng.uniform(50, 400, (n, 2)), rng.uniform(10, 60, (n, 2))])
        gt = np.cumsum(np.r_[gt[:1], rng.normal(0, 2, (n - 1, 4))], axis=0)
        gt[:, 2:] = np.abs(gt[:, 2:])                            # a random walk can cross zero size
        gt[rng.choice(np.arange(1, n), 15, replace=False)] = NAN
        write_boxes_txt(root / "anno" / "UAV123" / f"{name}.txt", gt)
    for extra in ("x", "y"):
        (root / extra).mkdir()                                   # got10k wants > 3 entries in the root
    monkeypatch.chdir(tmp_path)
    exp = ExperimentUAV123(str(root), version="UAV123", result_dir="res", report_dir="rep")
    seqs = load_dataset("uav123", str(root))
    out_dir = tmp_path / "res" / "UAV123" / "trk"
    for seq in seqs:
        write_boxes(str(out_dir / f"{seq.name}.txt"), _random_results(seq.ground_truth, rng))
    try:
        perf = exp.report(["trk"])["trk"]["overall"]
    except Exception as exc:  # pragma: no cover - only if got10k's plotting breaks on a new matplotlib
        if not os.path.isfile(tmp_path / "rep" / "UAV123" / "trk" / "performance.json"):
            raise
        pytest.skip(f"got10k plotting failed after writing its numbers: {exc}")
    ours = evaluate_results(seqs, str(out_dir), "otb")
    assert ours["auc"] / 100 == pytest.approx(perf["success_score"], abs=1e-6)
    assert ours["precision"] / 100 == pytest.approx(perf["precision_score"], abs=1e-6)
    assert ours["op50"] / 100 == pytest.approx(perf["success_rate"], abs=1e-6)
    np.testing.assert_allclose(ours["curves"]["success"], perf["success_curve"], atol=1e-6)


# ------------------------------------------------- scalar, frame-by-frame references of the rules
def _ref_trackingnet(pred, gt):
    """The devkit's steps one frame at a time with Python scalars (round() also rounds halves to even)."""
    n = len(gt)
    rows = []
    for i in range(n):
        g = [round(v) for v in gt[i]]
        p = [round(v) for v in pred[i]] if i < len(pred) else [NAN] * 4
        if i == 0:
            p = list(g)
        gx2, gy2, px2, py2 = g[0] + g[2] - 1, g[1] + g[3] - 1, p[0] + p[2] - 1, p[1] + p[3] - 1
        iw = max(round(min(gx2, px2) - max(g[0], p[0]) + 1), 0) if not np.isnan(p[0]) else NAN
        ih = max(round(min(gy2, py2) - max(g[1], p[1]) + 1), 0) if not np.isnan(p[0]) else NAN
        inter = iw * ih
        union = g[2] * g[3] + p[2] * p[3] - inter
        iou = inter / union if union else NAN
        dx = (g[0] + (g[2] + 1) / 2) - (p[0] + (p[2] + 1) / 2)
        dy = (g[1] + (g[3] + 1) / 2) - (p[1] + (p[3] + 1) / 2)
        rows.append((iou, (dx * dx + dy * dy) ** 0.5, ((dx / g[2]) ** 2 + (dy / g[3]) ** 2) ** 0.5,
                     sum(p) > 0))
    succ = [sum(r[0] >= t for r in rows) / n for t in np.linspace(0, 1, 21)]
    prec = [sum(r[1] <= t for r in rows) / n for t in np.linspace(0, 50, 21)]
    nprec = [sum(r[2] <= t for r in rows) / n for t in np.linspace(0, 0.5, 21)]
    return succ, prec, nprec, sum(r[3] for r in rows)


def test_trackingnet_matches_a_scalar_reference():
    rng = np.random.default_rng(11)
    for trial in range(20):
        n = 30
        gt = np.column_stack([rng.uniform(0, 200, (n, 2)), rng.uniform(5, 60, (n, 2))])
        gt = np.round(gt * 2) / 2                                   # many exact halves: rounding matters
        pred = gt + np.round(rng.normal(0, 6, (n, 4)) * 2) / 2
        pred[:, 2:] = np.abs(pred[:, 2:])
        pred[rng.choice(n, 3, replace=False)] = 0.0
        cut = n if trial % 3 else n - 4                             # some short result files
        res = score_sequence_trackingnet(pred[:cut], gt)
        succ, prec, nprec, covered = _ref_trackingnet(pred[:cut], gt)
        np.testing.assert_allclose(res["success"], succ)
        np.testing.assert_allclose(res["precision"], prec)
        np.testing.assert_allclose(res["norm_precision"], nprec)
        assert res["covered_frames"] == covered


def _ref_pytracking(pred, gt, uav, exclude=False):
    """pytracking's per-frame rules written as a plain loop (UAV or a default dataset); ``exclude``: score
    the valid frames only."""
    pred = [list(r) for r in pred]
    n = len(gt)
    for i in range(1, min(len(pred), n)):
        if (pred[i][2] == 0 or pred[i][3] == 0) and not np.isnan(gt[i]).any():
            pred[i] = list(pred[i - 1])
    pred = pred[:n] + [[0.0] * 4] * (n - len(pred))
    pred[0] = list(gt[0])
    ious, ces, nces, valid = [], [], [], []
    for p, g in zip(pred, gt):
        ok = bool(g[0] > 0 and g[1] > 0 and g[2] > 0 and g[3] > 0)
        w = max(min(p[0] + p[2], g[0] + g[2]) - max(p[0], g[0]), 0)
        h = max(min(p[1] + p[3], g[1] + g[3]) - max(p[1], g[1]), 0)
        dx = (p[0] + (p[2] - 1) / 2) - (g[0] + (g[2] - 1) / 2)
        dy = (p[1] + (p[3] - 1) / 2) - (g[1] + (g[3] - 1) / 2)
        ious.append(w * h / (p[2] * p[3] + g[2] * g[3] - w * h) if ok else -1.0)
        ces.append((dx * dx + dy * dy) ** 0.5 if ok else (-1.0 if uav else np.inf))
        nces.append(((dx / g[2]) ** 2 + (dy / g[3]) ** 2) ** 0.5 if ok else -1.0)
        valid.append(ok)
    if exclude:
        ious, ces, nces = ([v for v, ok in zip(x, valid) if ok] for x in (ious, ces, nces))
    den = sum(valid) if exclude else n
    return ([sum(v > t for v in ious) / den for t in M.PYTRACKING_IOU_THRESHOLDS],
            [sum(v <= t for v in ces) / den for t in M.PYTRACKING_CENTER_THRESHOLDS],
            [sum(v <= t for v in nces) / den for t in M.PYTRACKING_NORM_THRESHOLDS])


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("dataset", ["uav123", "otb"])
def test_pytracking_matches_a_scalar_reference(dataset, exclude):
    rng = np.random.default_rng(5)
    for trial in range(15):
        n = 40
        gt = np.column_stack([rng.uniform(0, 300, (n, 2)), rng.uniform(4, 50, (n, 2))])
        pred = gt + rng.normal(0, 5, (n, 4))
        pred[:, 2:] = np.abs(pred[:, 2:])
        pred[rng.choice(np.arange(1, n), 3, replace=False), 2] = 0.0
        gt[rng.choice(np.arange(1, n), 2, replace=False), 3] = 0.0  # invalid (zero-size) ground truth
        gt[rng.choice(np.arange(1, n), 2, replace=False), 0] = 0.0  # invalid: touches the left border
        if dataset == "uav123":
            gt[rng.choice(np.arange(1, n), 4, replace=False)] = NAN
        cut = n if trial % 2 else n - 5
        res = score_sequence_pytracking(pred[:cut], gt, dataset, exclude_invalid_frames=exclude)
        succ, prec, nprec = _ref_pytracking(pred[:cut], gt, dataset == "uav123", exclude)
        np.testing.assert_allclose(res["success"], succ)
        np.testing.assert_allclose(res["precision"], prec)
        np.testing.assert_allclose(res["norm_precision"], nprec)


def test_pytracking_validity_needs_all_four_numbers_positive():
    """pytracking's rule: a ground truth touching the top or left border (x or y <= 0) is not a valid frame."""
    gt = np.array([[10.0, 10, 20, 20], [0.0, 10, 20, 20], [10.0, -2, 20, 20], [10.0, 10, 20, 20]])
    pred = gt + 1.0
    frames = pytracking_frame_errors(pred, gt, "otb")
    assert frames["valid"].tolist() == [True, False, False, True]
    assert frames["overlap"][1] == -1.0 and frames["overlap"][2] == -1.0
    res = score_sequence_pytracking(pred, gt, "otb")
    assert res["success"][0] == pytest.approx(0.5)  # IoU > 0 on the 2 valid frames of 4
