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


def _result(seed_aps, opts=(), iters=500, method="plain"):
    """A well-formed outlier_benchmark.json result with one 20 % shift_scale run per (seed, refined AP)."""
    runs = [{"kind": "shift_scale", "fraction": 0.2, "seed": seed, "method": method,
             "box_ap": {"unrefined": {"AP": ap - 4.0, "AP75": ap - 5.0}, "refined": {"AP": ap, "AP75": ap + 1.0}},
             "outlier_detection": {"precision": 0.5, "recall": 0.25, "rho": 0.9}} for seed, ap in seed_aps]
    return {"iterations": iters, "fractions": [0.2], "kinds": ["shift_scale"], "seeds": [s for s, _ in seed_aps],
            "opts": list(opts), "seed_varies": "annotation noise and Detectron2 SEED", "runs": runs}


def test_merge_combines_processes_and_keeps_settings_apart(tmp_path, one_line_error):
    from ebm_refine.detectron2.outlier_benchmark import merge_results

    # One process per seed for plain, one for DeepGUM with a residual option: 3 + 3 runs, two methods.
    parts = [_result([(0, 14.0)]), _result([(1, 16.0)]), _result([(2, 18.0)]),
             _result([(0, 13.0), (1, 15.0), (2, 14.0)], opts=["MODEL.EBM.ROBUST.RESIDUAL_START", "best_sample"],
                     method="deepgum")]
    merged = merge_results(parts)
    rows = {r["method"]: r for r in merged["summary"]}
    assert set(rows) == {"plain", "deepgum (MODEL.EBM.ROBUST.RESIDUAL_START best_sample)"}
    assert rows["plain"]["AP_refined"] == {"mean": 16.0, "std": 2.0, "n": 3}  # sample std of 14, 16, 18
    assert rows["plain"]["AP_unrefined"]["mean"] == 12.0
    assert rows["deepgum (MODEL.EBM.ROBUST.RESIDUAL_START best_sample)"]["AP_refined"]["mean"] == 14.0
    assert merged["seeds"] == [0, 1, 2] and merged["iterations"] == 500 and len(merged["runs"]) == 6
    with pytest.raises(ValueError, match="also in"):
        merge_results([parts[0], parts[0]], ["a.json", "b.json"])
    with pytest.raises(ValueError, match="different iteration counts"):
        merge_results([parts[0], _result([(1, 16.0)], iters=30)])

    # The tool: files in, one JSON and figure out; a bad file is a one-line error naming it.
    import subprocess
    import sys

    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(part))
    tool = [sys.executable, str(REPO / "tools" / "outlier_detection_benchmark.py")]
    res = subprocess.run(tool + ["--merge", *map(str, paths), "--output", str(tmp_path / "all")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "16.0 ± 2.0" in res.stdout
    assert json.loads((tmp_path / "all" / "outlier_benchmark.json").read_text())["summary"] == merged["summary"]
    assert (tmp_path / "all" / "outlier_benchmark.png").stat().st_size > 10_000
    (tmp_path / "bad.json").write_text("{not json")
    res = subprocess.run(tool + ["--merge", str(paths[0]), str(tmp_path / "bad.json"), "--output", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert res.returncode != 0
    one_line_error(res.stderr, "outlier_detection_benchmark.py", "bad.json", "not JSON")


@pytest.mark.parametrize("damage, field", [
    (lambda r: r["runs"][0].pop("kind"), "runs[0].kind is 'missing'"),
    (lambda r: r.update(runs="abc"), "'runs' is 'abc'"),
    (lambda r: r.update(iterations=[500]), "'iterations' is [500]"),
    (lambda r: r["runs"][0]["box_ap"]["refined"].update(AP=float("nan")), "runs[0].box_ap.refined.AP is nan"),
    (lambda r: r["runs"][0].update(fraction=1.5), "runs[0].fraction is 1.5"),
])
def test_merge_refuses_a_malformed_result_naming_the_field(damage, field):
    from ebm_refine.detectron2.outlier_benchmark import merge_results

    good, bad = _result([(0, 14.0)]), _result([(1, 16.0)])
    damage(bad)
    with pytest.raises(ValueError) as info:
        merge_results([good, bad], ["good.json", "bad.json"])
    assert str(info.value).startswith(f"bad.json: not an outlier_benchmark.json written by this tool ({field}")
