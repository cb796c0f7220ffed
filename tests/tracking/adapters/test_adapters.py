"""The EBM tracker behind OpenCV's tracker API (create_tracker) and got10k's (EBMGot10kTracker, run by got10k's
own ExperimentOTB machinery and scored by it and by our otb protocol)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ebm_refine.data.synthetic_tracking import SyntheticConfig, SyntheticSequence
from ebm_refine.tracking import create_tracker
from ebm_refine.tracking.evaluation.metrics import iou
from ebm_refine.tracking.tracker import EBMAtomTracker, load_tracker_params
from ebm_refine.utils import BadValueError

# The shipped fast parameters with the real network: the adapter must add nothing to what the tracker does.
PARAMS = "ebm_fast"


@pytest.fixture(scope="module")
def seq():
    return SyntheticSequence(1_000_001, SyntheticConfig(num_frames=8, height=240, width=320,
                                                        num_occluders=(0, 0), distractor_prob=0.0))


@pytest.fixture(scope="module")
def one_tracker():
    return create_tracker(PARAMS)


def test_opencv_adapter_takes_bgr_and_returns_the_trackers_boxes(seq):
    """Same boxes as EBMAtomTracker on the RGB frames (so the BGR frames were converted, not used as RGB),
    rounded to integers as OpenCV's trackers return them, and found on an easy sequence."""
    cv_tracker = create_tracker(PARAMS)
    ref = EBMAtomTracker(load_tracker_params(PARAMS))
    assert cv_tracker.init(cv2.cvtColor(seq.frame(0), cv2.COLOR_RGB2BGR), tuple(seq.boxes[0])) is None
    ref.initialize(seq.frame(0), {"init_bbox": list(seq.boxes[0])})
    boxes = []
    for i in range(1, len(seq)):
        found, box = cv_tracker.update(cv2.cvtColor(seq.frame(i), cv2.COLOR_RGB2BGR))
        expected = ref.track(seq.frame(i))
        assert found is True and all(isinstance(v, int) for v in box), (found, box)
        assert box == tuple(int(round(v)) for v in expected["target_bbox"]), (i, box, expected["target_bbox"])
        assert cv_tracker.last_result["score"] == pytest.approx(expected["score"])
        assert cv_tracker.last_result["score"] >= 0.25  # above the shipped target_not_found_threshold
        boxes.append(cv_tracker.last_result["target_bbox"])
    assert iou(np.asarray(boxes), np.asarray(seq.boxes[1:])).mean() > 0.6


def test_opencv_adapter_reports_a_lost_target(seq):
    """A frame without the target (flat grey): the classifier's peak falls below its threshold, update says
    not found and keeps the previous box, like an OpenCV tracker that lost its target."""
    tracker = create_tracker(PARAMS)
    tracker.init(cv2.cvtColor(seq.frame(0), cv2.COLOR_RGB2BGR), tuple(seq.boxes[0]))
    found, box = tracker.update(cv2.cvtColor(seq.frame(1), cv2.COLOR_RGB2BGR))
    assert found
    lost, kept = tracker.update(np.full((240, 320, 3), 127, np.uint8))
    assert lost is False and kept == box
    assert tracker.last_result["flag"] == "not_found" and tracker.last_result["score"] < 0.25


@pytest.mark.parametrize("frame, message", [
    (np.zeros((240, 320, 3), np.float32), "frame must be uint8 (0-255), got float32"),
    (np.zeros((240, 320), np.uint8), "frame must have shape (H, W, 3) (BGR), got (240, 320) (grayscale: convert"),
    (np.zeros((240, 320, 4), np.uint8), "frame must have shape (H, W, 3) (BGR), got (240, 320, 4)"),
    ([[0, 0, 0]], "frame must be a numpy array (H, W, 3) uint8 BGR, got list"),
])
def test_opencv_adapter_rejects_wrong_frames_in_one_line(seq, one_tracker, frame, message):
    tracker = one_tracker  # every check happens before the tracker is touched
    with pytest.raises(BadValueError) as err:
        tracker.init(frame, (10, 10, 40, 40))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    tracker.init(cv2.cvtColor(seq.frame(0), cv2.COLOR_RGB2BGR), tuple(seq.boxes[0]))
    with pytest.raises(BadValueError, match="frame must"):
        tracker.update(frame)
    with pytest.raises(BadValueError, match=r"boundingBox \(500.0, 10.0, 40.0, 40.0\): .*outside"):
        tracker.init(cv2.cvtColor(seq.frame(0), cv2.COLOR_RGB2BGR), (500, 10, 40, 40))


@pytest.mark.slow
def test_got10k_experiment_scores_equal_ours(tracking_data, tmp_path):
    """got10k's ExperimentOTB runs EBMGot10kTracker on OTB Crossing and reports; our otb protocol scores the
    result file it wrote to the same success (AUC) and precision, within rounding."""
    pytest.importorskip("got10k")
    from got10k.datasets import OTB
    from got10k.experiments import ExperimentOTB

    from ebm_refine.tracking.datasets import load_dataset
    from ebm_refine.tracking.evaluation import evaluate_results
    from ebm_refine.tracking.got10k_tracker import EBMGot10kTracker

    root = tracking_data / "otb"
    if not (root / "Crossing").is_dir():
        pytest.skip(f"OTB Crossing not found under {root}")
    # got10k's OTB dataset with one sequence: its __init__ would download all 100; its reading code is used.
    dataset = OTB.__new__(OTB)
    dataset.root_dir, dataset.version = str(root), 2015
    dataset.anno_files = [str(root / "Crossing" / "groundtruth_rect.txt")]
    dataset.seq_dirs, dataset.seq_names = [str(root / "Crossing")], ["Crossing"]
    experiment = ExperimentOTB.__new__(ExperimentOTB)
    experiment.dataset = dataset
    experiment.result_dir, experiment.report_dir = str(tmp_path / "results"), str(tmp_path / "reports")
    experiment.nbins_iou, experiment.nbins_ce = 21, 51
    experiment.plot_curves = lambda names: None  # matplotlib figures are not what is tested

    tracker = EBMGot10kTracker(PARAMS)
    experiment.run(tracker)
    theirs = experiment.report([tracker.name])[tracker.name]["overall"]
    ours = evaluate_results(load_dataset("otb", str(root), sequences=["Crossing"]),
                            str(tmp_path / "results" / tracker.name), "otb")
    assert ours["auc"] == pytest.approx(100 * theirs["success_score"], abs=1e-6)
    assert ours["precision"] == pytest.approx(100 * theirs["precision_score"], abs=1e-6)
    assert ours["op50"] == pytest.approx(100 * theirs["success_rate"], abs=1e-6)
    assert ours["auc"] > 50  # the shipped tracker follows the walker (a real score, not a degenerate one)
    report = json.loads((tmp_path / "reports" / tracker.name / "performance.json").read_text())
    assert report[tracker.name]["seq_wise"]["Crossing"]["success_score"] == pytest.approx(theirs["success_score"])
