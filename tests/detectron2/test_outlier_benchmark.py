"""Annotation noise and the synthetic-detection outlier experiment (tools/outlier_detection_benchmark.py, quick mode)."""
import importlib.util
import json

import pytest
import torch
from d2_helpers import REPO
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from ebm_refine.core.boxes import box_iou_aligned
from ebm_refine.detectron2.annotation_noise import corrupt_annotations, register_noisy_dataset
from ebm_refine.detectron2.outlier_benchmark import outlier_detection_scores
from ebm_refine.utils.errors import UserError


def _boxes(records, key="bbox"):
    return torch.tensor([BoxMode.convert(list(a[key]), a["bbox_mode"] if key == "bbox" else BoxMode.XYWH_ABS,
                                         BoxMode.XYXY_ABS) for r in records for a in r["annotations"]], dtype=torch.float32)


@pytest.mark.parametrize("kind, max_iou", [("shift", 0.3), ("scale", 0.6), ("shift_scale", 0.3), ("random", 1.0)])
def test_corrupt_annotations_alters_the_chosen_share(synthetic_names, kind, max_iou):
    clean = DatasetCatalog.get(synthetic_names[0])
    noisy = corrupt_annotations(clean, 0.4, kind, seed=3)
    again = corrupt_annotations(clean, 0.4, kind, seed=3)
    flags = torch.tensor([a["ebm_outlier"] for r in noisy for a in r["annotations"]])
    assert int(flags.sum()) == round(0.4 * len(flags))
    assert _boxes(noisy).tolist() == _boxes(again).tolist()  # deterministic in the seed
    assert flags.tolist() != [a["ebm_outlier"] for r in corrupt_annotations(clean, 0.4, kind, 4) for a in r["annotations"]]
    before, after = _boxes(clean), _boxes(noisy)
    assert torch.equal(_boxes(noisy, "ebm_clean_bbox"), before)
    assert torch.allclose(after[~flags], before[~flags])
    iou = box_iou_aligned(after[flags], before[flags])
    assert float(iou.max()) < max_iou and float(iou.mean()) < 0.3
    h, w = clean[0]["height"], clean[0]["width"]
    assert float(after[:, :2].min()) >= 0 and float(after[:, 2].max()) <= w and float(after[:, 3].max()) <= h
    assert float((after[:, 2:] - after[:, :2]).min()) >= 4.0 - 1e-4
    assert clean[0]["annotations"][0].get("ebm_outlier") is None  # the input is not modified


def test_noise_errors_and_registration(synthetic_names):
    with pytest.raises(UserError, match="noise kind 'blur' unknown"):
        corrupt_annotations([], 0.2, "blur")
    with pytest.raises(UserError, match=r"fraction must be in \[0, 1\), got 1.0"):
        corrupt_annotations([], 1.0, "shift")
    name = register_noisy_dataset(synthetic_names[0], "random", 0.2, seed=1)
    assert name == "test_synth_train_noisy_random_20_s1"
    assert sum(a["ebm_outlier"] for r in DatasetCatalog.get(name) for a in r["annotations"]) > 0


def test_outlier_detection_scores():
    r = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3])
    s = outlier_detection_scores(r, torch.tensor([True, True, False, False, False]))
    assert (s["precision"], s["recall"], s["flagged"], s["outliers"]) == (1 / 3, 0.5, 3, 2)
    assert s["mean_r_outliers"] == pytest.approx(0.5) and s["mean_r_inliers"] == pytest.approx(1.3 / 3)
    clean = outlier_detection_scores(torch.ones(3), torch.zeros(3, dtype=torch.bool))
    assert clean["precision"] is None and clean["recall"] is None


@pytest.mark.slow
def test_tool_quick_mode_writes_json_and_figure(synthetic_names, tmp_path):
    spec = importlib.util.spec_from_file_location("outlier_tool", REPO / "tools" / "outlier_detection_benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    small = ["DATASETS.TEST", "('test_synth_val',)", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
             "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "MODEL.EBM.NUM_SAMPLES", "16",
             "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
    out = tmp_path / "out"
    # Quick mode cut to its noisy cell (2 trainings instead of 4): ~2-5 min on a busy 2-core machine.
    assert tool.main(["--quick", "--fractions", "0.4", "--iters", "8", "--dataset", synthetic_names[0],
                      "--output", str(out), *small]) == 0
    result = json.loads((out / "outlier_benchmark.json").read_text())
    assert (out / "outlier_benchmark.png").stat().st_size > 10_000
    cells = [(r["kind"], r["fraction"], r["method"]) for r in result["runs"]]
    assert cells == [("shift_scale", 0.4, "plain"), ("shift_scale", 0.4, "deepgum")]
    for run in result["runs"]:
        for boxes in ("unrefined", "refined"):
            assert 0.0 <= run["box_ap"][boxes]["AP75"] <= 100.0
        det = run["outlier_detection"]
        assert det["annotations"] == sum(len(r["annotations"]) for r in DatasetCatalog.get(synthetic_names[0]))
        assert det["outliers"] == round(0.4 * det["annotations"])
        assert det["recall"] is not None and 0.0 <= det["recall"] <= 1.0
        assert 0.05 < det["rho"] <= 1.0  # EM never collapsed to "everything is an outlier"
        # DeepGUM runs also say what the mixture they trained with makes of the annotations.
        assert ("outlier_detection_training_state" in run) == (run["method"] == "deepgum")
    state = result["runs"][1]["outlier_detection_training_state"]
    assert state["annotations"] == det["annotations"] and 0.0 < state["rho"] <= 1.0
    assert len(result["summary"]) == 2 and result["summary"][0]["AP_refined"]["n"] == 1


@pytest.mark.slow
def test_tool_runs_deepgum_alone_with_the_detectors_residuals(synthetic_names, tmp_path):
    spec = importlib.util.spec_from_file_location("outlier_tool", REPO / "tools" / "outlier_detection_benchmark.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    small = ["DATASETS.TEST", "('test_synth_val',)", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
             "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", "MODEL.EBM.NUM_SAMPLES", "16",
             "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "MODEL.EBM.ROBUST.RESIDUAL", "detector"]
    out = tmp_path / "out"
    assert tool.main(["--quick", "--fractions", "0.4", "--iters", "8", "--dataset", synthetic_names[0],
                      "--methods", "deepgum", "--output", str(out), *small]) == 0
    result = json.loads((out / "outlier_benchmark.json").read_text())
    assert [(r["kind"], r["method"]) for r in result["runs"]] == [("shift_scale", "deepgum")]
    assert result["opts"][-2:] == ["MODEL.EBM.ROBUST.RESIDUAL", "detector"]
    det = result["runs"][0]["outlier_detection"]
    # Every annotation is scored (the annotation itself is always one of its foreground proposals).
    assert det["annotations"] == sum(len(r["annotations"]) for r in DatasetCatalog.get(synthetic_names[0]))
    assert det["outliers"] == round(0.4 * det["annotations"]) and 0.05 < det["rho"] <= 1.0
