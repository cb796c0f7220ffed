"""Per-frame tracking errors over runs (pytracking protocol rules) and tools/tracker_significance.py."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ebm_refine.tracking.datasets import Sequence
from ebm_refine.tracking.evaluation import evaluate_results, write_boxes
from ebm_refine.tracking.evaluation.per_frame import (sequence_frame_errors, tracker_per_sample_errors,
                                                      tracker_significance)
from ebm_refine.utils import BadValueError, MissingFileError

from tracking_helpers import touch_frames, write_boxes_txt

GT_A = np.tile([10.0, 10.0, 20.0, 20.0], (5, 1))
GT_B = np.tile([30.0, 5.0, 20.0, 20.0], (4, 1))


def _err(dx):
    """1 - IoU of a 20 x 20 box and itself shifted by dx pixels in x."""
    inter = (20 - dx) * 20
    return 1 - inter / (800 - inter)


def _sequences():
    a = Sequence("a", [f"/none/a/{i}.jpg" for i in range(5)], GT_A, "got10k")
    b = Sequence("b", [f"/none/b/{i}.jpg" for i in range(4)], GT_B, "got10k", target_visible=np.array([1, 1, 0, 1]))
    return [a, b]


def _write_run(folder: Path, shift, zero_size_frame=None):
    for name, gt in (("a", GT_A), ("b", GT_B)):
        pred = gt + [shift, 0, 0, 0]
        if zero_size_frame is not None and name == "a":
            pred[zero_size_frame, 2] = 0.0  # "target lost": the protocol carries the previous box forward
        write_boxes(str(folder / f"{name}.txt"), pred)


@pytest.fixture
def runs(tmp_path):
    """Two runs of three methods: 'good' off by 1 px (run 1 also at 2 px on one frame), 'none' 3 px, 'bad' 5 px."""
    dirs = {m: [tmp_path / m / f"run{r}" for r in range(2)] for m in ("good", "none", "bad")}
    for m, shift in (("good", 1.0), ("none", 3.0), ("bad", 5.0)):
        for r, d in enumerate(dirs[m]):
            _write_run(d, shift)
    pred = GT_A + [1.0, 0, 0, 0]
    pred[2, 0] += 1.0  # run 1 of 'good': frame 2 at 2 px, and frame 3 lost (zero size -> frame 2's box)
    pred[3, 2] = 0.0
    write_boxes(str(dirs["good"][1] / "a.txt"), pred)
    return {m: [str(d) for d in ds] for m, ds in dirs.items()}


def test_frame_errors_follow_the_pytracking_rules(runs):
    a, b = _sequences()
    index, err = sequence_frame_errors(np.loadtxt(Path(runs["good"][1]) / "a.txt", delimiter=","), a)
    assert index.tolist() == [1, 2, 3, 4]  # frame 0 left out: every method gets the ground truth there
    np.testing.assert_allclose(err, [_err(1), _err(2), _err(2), _err(1)])  # frame 3 carried frame 2 forward
    index, err = sequence_frame_errors(GT_B[:2] + [3.0, 0, 0, 0], b)
    assert index.tolist() == [1, 3]  # frame 2 invisible; frames 2-3 padded with zero boxes (IoU 0)
    np.testing.assert_allclose(err, [_err(3), 1.0])


def test_frames_without_a_ground_truth_box_are_left_out_on_every_dataset():
    # An OTB-style sequence with a NaN row (validation's group2_2 has one): that frame has no error, the rest do.
    gt = GT_A.copy()
    gt[2] = np.nan
    seq = Sequence("a", [f"/none/a/{i}.jpg" for i in range(5)], gt, "otb")
    index, err = sequence_frame_errors(GT_A + [1.0, 0, 0, 0], seq)
    assert index.tolist() == [1, 3, 4]
    np.testing.assert_allclose(err, [_err(1)] * 3)


def test_per_frame_errors_and_pooled_comparison(runs):
    seqs = _sequences()
    data = tracker_per_sample_errors(seqs, runs, run_names=["s0", "s1"])
    assert data.methods == ["good", "none", "bad"] and data.unit == "frame"
    assert data.runs[0].ids == ["a/1", "a/2", "a/3", "a/4", "b/1", "b/3"]
    np.testing.assert_allclose(data.runs[0].errors["bad"], [_err(5)] * 6)
    np.testing.assert_allclose(data.runs[1].errors["good"], [_err(1), _err(2), _err(2), _err(1), _err(1), _err(1)])
    comps = tracker_significance(data)
    assert [(c.name_a, c.name_b) for c in comps] == [("good", "none"), ("good", "bad"), ("none", "bad")]
    good_bad = comps[1]
    assert good_bad.pooling == "mean over runs" and good_bad.pooled.n == 6
    pooled_good = np.array([_err(1), (_err(1) + _err(2)) / 2, (_err(1) + _err(2)) / 2, _err(1), _err(1), _err(1)])
    assert good_bad.pooled.median_diff == pytest.approx(np.median(pooled_good - _err(5)))
    assert good_bad.pooled.p_value == pytest.approx(stats.wilcoxon(pooled_good - _err(5)).pvalue)
    assert good_bad.pooled.frac_a_better == 1.0 and good_bad.winner == "good"
    assert [s.label for s in good_bad.per_run] == ["run s0", "run s1"]
    assert all(c.p_holm is not None and c.p_holm >= c.pooled.p_value for c in comps)


def test_per_sequence_unit_and_agreement_with_the_protocols_iou(runs):
    seqs = _sequences()
    data = tracker_per_sample_errors(seqs, runs, unit="sequence")
    assert data.runs[1].ids == ["a", "b"] and data.metric == "1 - mean IoU"
    np.testing.assert_allclose(data.runs[1].errors["good"], [np.mean([_err(1), _err(2), _err(2), _err(1)]), _err(1)])
    # The same overlaps as the protocol's own scoring: success at threshold 0 counts the frames with IoU > 0.
    res = evaluate_results(seqs[:1], runs["none"][0], "pytracking")
    assert res["auc"] > 0 and data.runs[0].errors["none"][0] == pytest.approx(_err(3))


def test_bad_input_is_named(runs, tmp_path):
    seqs = _sequences()
    with pytest.raises(BadValueError, match="same number"):
        tracker_per_sample_errors(seqs, {"good": runs["good"], "bad": runs["bad"][:1]})
    with pytest.raises(BadValueError, match="unit must be one of"):
        tracker_per_sample_errors(seqs, runs, unit="video")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingFileError, match=r"empty/a\.txt: result file not found \(bad, run 0\)"):
        tracker_per_sample_errors(seqs, {"good": runs["good"][:1], "bad": [str(empty)]})
    with pytest.raises(BadValueError, match="no method 'ebm'"):
        tracker_significance(tracker_per_sample_errors(seqs, runs), methods=["ebm", "good"])


def test_tool_on_a_got10k_tree(runs, tmp_path, capsys):
    root = tmp_path / "GOT-10k"
    for name, gt, absent in (("a", GT_A, "0\n0\n0\n0\n0\n"), ("b", GT_B, "0\n0\n1\n0\n")):
        d = root / "train" / name
        touch_frames(d, range(1, len(gt) + 1), "{:08d}.jpg")
        write_boxes_txt(d / "groundtruth.txt", gt)
        (d / "absence.label").write_text(absent)
        (d / "cover.label").write_text("8\n" * len(gt))
    (root / "train" / "list.txt").write_text("a\nb\n")
    spec = importlib.util.spec_from_file_location(
        "tracker_significance_tool", Path(__file__).resolve().parents[2] / "tools" / "tracker_significance.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "sig.json"
    errors = tmp_path / "errors.json"
    assert tool.main(["--dataset", "got10k", "--root", str(root), "--split", "train",
                      "--method", "EBM", *runs["good"], "--method", "IoU-Net", *runs["none"],
                      "--method", "none", *runs["bad"], "--json", str(out), "--errors", str(errors)]) == 0
    text = capsys.readouterr().out
    assert "2 run(s), 6 frames per run" in text and "EBM vs IoU-Net (1 - IoU" in text
    assert "| pooled (2 runs) | 6 |" in text and "Holm-adjusted pooled p" in text
    report = json.loads(out.read_text())
    assert set(report) == {"EBM vs IoU-Net", "EBM vs none", "IoU-Net vs none"}
    assert report["EBM vs none"]["winner"] == "EBM" and report["EBM vs none"]["pooled"]["n"] == 6
    assert json.loads(errors.read_text())["unit"] == "frame"
