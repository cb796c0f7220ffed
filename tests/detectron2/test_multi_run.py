"""Per-ground-truth-box errors (BoxChangeEvaluator), their merging over stages and runs, the significance tables."""
import json

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, Instances
from scipy import stats

from ebm_refine.detectron2 import BoxChangeEvaluator
from ebm_refine.detectron2.multi_run import collect_runs, merge_stage_errors, significance_tables
from ebm_refine.evaluation import PerSampleErrors, load_per_sample_errors
from ebm_refine.utils import UserError


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_one_sample_per_ground_truth_its_best_scoring_detection(synthetic_names, tmp_path):
    name = synthetic_names[1]
    DatasetCatalog.get(name)  # generated on first use
    path = tmp_path / "per_box.json"
    ev = BoxChangeEvaluator(name, distributed=False, per_box_file=str(path), run_name="seed7")
    ev.reset()
    image_id = sorted(ev._coco.imgs)[0]
    anns = [a for a in ev._coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
    x, y, w, h = anns[0]["bbox"]
    gt = [x, y, x + w, y + h]
    cls = ev._to_contiguous[anns[0]["category_id"]]
    near = [gt[0] + 0.1 * w, gt[1], gt[2] + 0.1 * w, gt[3]]      # IoU ~0.82, score 0.5
    far = [gt[0] + 0.25 * w, gt[1], gt[2] + 0.25 * w, gt[3]]     # IoU 0.6, score 0.9: the one kept
    wrong = [gt[0], gt[1], gt[2], gt[3]]                        # another class: never matched
    inst = Instances((512, 512))
    inst.pred_boxes_unrefined = Boxes(torch.tensor([near, far, wrong]))
    inst.pred_boxes = Boxes(torch.tensor([gt, [gt[0] + 0.05 * w, gt[1], gt[2] + 0.05 * w, gt[3]], gt]))
    inst.scores = torch.tensor([0.5, 0.9, 0.99])
    inst.pred_classes = torch.tensor([cls, cls, (cls + 1) % 5])
    ev.process([{"image_id": image_id}], [{"instances": inst}])
    summary = ev.evaluate()["box_change"]
    assert summary["matched"] == 2  # per detection: near and far
    data = load_per_sample_errors(str(path))
    (run,) = data.runs
    assert run.name == "seed7" and run.ids == [f"{image_id}/{anns[0]['id']}"] and data.unit == "box"
    assert run.errors["unrefined"][0] == pytest.approx(1 - _iou(far, gt), abs=1e-5)
    assert run.errors["refined"][0] == pytest.approx(1 - _iou([gt[0] + 0.05 * w, gt[1], gt[2] + 0.05 * w, gt[3]], gt),
                                                     abs=1e-5)
    assert ev.last_per_box.runs[0].ids == run.ids


def _stage(path, ids, unrefined, refined, name="0"):
    d = PerSampleErrors("1 - IoU", "box")
    d.add_run(name, {"unrefined": unrefined, "refined": refined}, ids)
    d.save(str(path))
    return str(path)


def test_stages_merge_on_shared_boxes_and_must_share_the_detector(tmp_path):
    ebm = _stage(tmp_path / "ebm.json", ["1/1", "1/2", "2/5"], [0.3, 0.2, 0.4], [0.1, 0.25, 0.2])
    iou = _stage(tmp_path / "iou.json", ["2/5", "1/1"], [0.4, 0.3], [0.35, 0.2])
    run = merge_stage_errors({"EBM": ebm, "IoU-Net": iou}, run_name="seed3").runs[0]
    assert run.name == "seed3" and run.ids == ["1/1", "2/5"]
    assert run.errors["unrefined"].tolist() == [0.3, 0.4]
    assert run.errors["EBM"].tolist() == [0.1, 0.2] and run.errors["IoU-Net"].tolist() == [0.2, 0.35]
    other = _stage(tmp_path / "other.json", ["1/1"], [0.5], [0.1])
    with pytest.raises(UserError, match="other.json: its unrefined boxes differ"):
        merge_stage_errors({"EBM": ebm, "IoU-Net": other}, run_name="x")


def _run_file(path, name, ids, rng, shift):
    """A run where EBM is better than unrefined by ``shift`` on average."""
    u = rng.uniform(0.1, 0.5, len(ids))
    d = PerSampleErrors("1 - IoU", "box")
    d.add_run(name, {"unrefined": u, "EBM": u - shift + rng.normal(0, 0.02, len(ids)),
                     "IoU-Net": u + rng.normal(0, 0.02, len(ids))}, ids)
    d.save(str(path))
    return str(path)


def test_runs_pool_over_the_boxes_every_run_matched(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"{i}/{i + 100}" for i in range(40)]
    files = [_run_file(tmp_path / "s0.json", "seed0", ids, rng, 0.05),
             _run_file(tmp_path / "s1.json", "seed1", ids[5:] + ["99/1"], rng, 0.05),
             _run_file(tmp_path / "s2.json", "seed2", ids[::-1], rng, 0.05)]
    full, common, counts = collect_runs(files)
    assert counts == {"runs": 3, "common": 35, "dropped": 40 + 36 + 40 - 3 * 35}
    assert [len(r.ids) for r in full.runs] == [40, 36, 40]
    assert all(r.ids == sorted(ids[5:]) for r in common.runs)
    text, report = significance_tables(full, common)
    assert list(report) == ["EBM vs IoU-Net", "EBM vs unrefined", "IoU-Net vs unrefined"]
    ebm = report["EBM vs unrefined"]
    assert ebm["pooling"] == "mean over runs" and ebm["pooled"]["n"] == 35 and ebm["winner"] == "EBM"
    assert [r["n"] for r in ebm["per_run"]] == [40, 36, 40]
    # The pooled test is scipy's Wilcoxon on each box's mean difference over the runs.
    diffs = np.mean([common.runs[r].errors["EBM"] - common.runs[r].errors["unrefined"] for r in range(3)], axis=0)
    assert ebm["pooled"]["p_value"] == pytest.approx(stats.wilcoxon(diffs).pvalue)
    assert ebm["pooled"]["median_diff"] == pytest.approx(np.median(diffs))
    assert report["IoU-Net vs unrefined"]["winner"] == "none"
    assert "pooled over the 35 boxes matched in every run" in text and "Holm-adjusted" in text
    json.dumps(report)  # JSON-ready


def test_collect_runs_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    a = _run_file(tmp_path / "a.json", "seed0", ["1/1", "1/2"], rng, 0.1)
    with pytest.raises(UserError, match=r"a.json: run .seed0. is also in .*a.json; each run needs its own SEED"):
        collect_runs([a, a])
    b = _run_file(tmp_path / "b.json", "seed1", ["3/3"], rng, 0.1)
    with pytest.raises(UserError, match="no ground-truth box is matched in every run"):
        collect_runs([a, b])
    with pytest.raises(UserError, match="no per-box error files"):
        collect_runs([])


SMALL_OPTS = [
    "DATASETS.TRAIN", "('test_synth_train',)", "DATASETS.TEST", "('test_synth_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128", "MODEL.EBM.NUM_SAMPLES", "16", "SOLVER.IMS_PER_BATCH", "2",
    "DATALOADER.NUM_WORKERS", "0",
]


@pytest.mark.slow
def test_significance_tool_quick_mode_two_seeds(synthetic_names, tmp_path, capsys):
    # tools/synthetic_significance.py in its quick mode on the small test split (~100 s on 2 busy cores):
    # 60 joint iterations are the fewest that reliably give the detector matched boxes.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "synthetic_significance_tool", Path(__file__).resolve().parents[2] / "tools" / "synthetic_significance.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "sig"
    assert tool.main(["--runs", "2", "--quick", "--iters", "60", "--baseline-iters", "2", "--output", str(out),
                      *SMALL_OPTS]) == 0
    text = capsys.readouterr().out
    assert "over 2 run(s) (training seed varies)" in text and "| run seed1 |" in text
    for s in (0, 1):
        run = load_per_sample_errors(str(out / f"seed{s}" / "per_box_errors.json")).runs[0]
        assert run.name == f"seed{s}" and set(run.errors) == {"unrefined", "EBM", "IoU-Net"} and len(run.ids) > 0
        assert json.loads((out / f"seed{s}" / "synthetic_benchmark.json").read_text())["seed"] == s
    report = json.loads((out / "significance.json").read_text())
    assert report["runs"]["runs"] == 2 and set(report["comparisons"]) == {
        "EBM vs IoU-Net", "EBM vs unrefined", "IoU-Net vs unrefined"}
    # Gathering again keeps the finished runs: nothing is trained.
    assert tool.main(["--collect-only", "--output", str(out)]) == 0
    assert load_per_sample_errors(str(out / "per_box_errors.json")).methods == ["unrefined", "EBM", "IoU-Net"]
