"""tools/refine_detections.py end to end on real COCO images: a refiner trained through tools/train_net.py
refines a handful of detections; AP, per-box change and the refined file; bad input is one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from d2_helpers import REPO, refiner_cfg, run_train_net
from detectron2.data import DatasetCatalog

from ebm_refine.detectron2.refine_detections import jittered_ground_truth
from ebm_refine.evaluation import load_per_sample_errors


def run_cli(args, env):
    cmd = [sys.executable, str(REPO / "tools" / "refine_detections.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "EBM_DEBUG": "", **env})


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """A tiny refiner trained for 3 iterations on coco_tiny_train2017 with tools/train_net.py, and a
    4-image subset of that dataset with stand-in detections (jittered ground truth)."""
    tmp = tmp_path_factory.mktemp("refiner")
    env = {"EBM_SHARED_DATA": str(shared_data)}
    run_train_net(tmp, refiner_cfg(tmp / "out", train="coco_tiny_train2017", extra=["MODEL.ROI_HEADS.NUM_CLASSES", "80"]),
                  env=env)
    coco = shared_data / "coco" / "tiny"
    gt = json.loads((coco / "instances_train2017_small.json").read_text())
    keep = {im["id"] for im in gt["images"][:4]}
    gt["images"] = [im for im in gt["images"] if im["id"] in keep]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    (tmp / "gt4.json").write_text(json.dumps(gt))
    os.environ.setdefault("EBM_SHARED_DATA", str(shared_data))
    records = [r for r in DatasetCatalog.get("coco_tiny_train2017") if r["image_id"] in keep]
    dets = jittered_ground_truth(records, "coco_tiny_train2017", sigma=0.1, seed=3)
    (tmp / "dets.json").write_text(json.dumps(dets))
    return {"dir": tmp, "weights": tmp / "out" / "model_final.pth", "gt": tmp / "gt4.json", "dets": tmp / "dets.json",
            "images": coco / "train_2017_small", "env": env}


def cli_args(t, detections, output, *extra, images=None):
    return ["--config-file", str(REPO / "configs" / "COCO-Refine" / "ebm_refiner_mobilenet_v2_fpn.yaml"),
            "--weights", str(t["weights"]), "--detections", str(detections), "--dataset-json", str(t["gt"]),
            "--image-root", str(images or t["images"]), "--output", str(output), *extra,
            "MODEL.MOBILENET_V2.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
            "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.EBM.HEAD.FC_DIM", "32"]


def test_refines_a_detectors_file_and_reports_the_change(trained):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t = trained
    out, report = t["dir"] / "refined.json", t["dir"] / "report.json"
    per_box = t["dir"] / "per_box.json"
    proc = run_cli(cli_args(t, t["dets"], out, "--report", str(report), "--step-size-center", "0.02",
                            "--step-size-size", "0.02", "--steps", "5", "--per-box-errors", str(per_box)), t["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("| AP75 |", "Per-box IoU change", "matched detections: mean IoU", "Wilcoxon p =", "s per image"):
        assert line in proc.stdout, proc.stdout
    refined, given = json.loads(out.read_text()), json.loads(t["dets"].read_text())
    assert len(refined) == len(given) > 10
    assert all(np.isfinite(d["bbox"]).all() and d["bbox"][2] > 0 and "energy" in d for d in refined)
    key = lambda d: (d["image_id"], d["category_id"], round(d["bbox"][0]))  # noqa: E731
    assert sorted(d["score"] for d in refined) == sorted(d["score"] for d in given)
    assert any(abs(a - b) > 1e-3 for r, g in zip(refined, sorted(given, key=key)) for a, b in zip(r["bbox"], g["bbox"]))
    summary = json.loads(report.read_text())
    # The "unrefined" column is the detections file's own AP, as pycocotools computes it directly.
    coco_gt = COCO(str(t["gt"]))
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(t["dets"])), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert summary["ap"]["unrefined"]["AP"] == pytest.approx(100 * ev.stats[0], abs=1e-6)
    assert summary["box_change"]["matched"] > 0 and summary["detections"]["used"] == len(given)
    # Per-ground-truth-box errors: one sample per matched ground truth ("<image id>/<annotation id>").
    (run,) = load_per_sample_errors(str(per_box)).runs
    gt_ids = {f"{a['image_id']}/{a['id']}" for a in json.loads(t["gt"].read_text())["annotations"]}
    assert 0 < len(run.ids) <= summary["box_change"]["matched"] and set(run.ids) <= gt_ids
    assert ((run.errors["unrefined"] >= 0) & (run.errors["unrefined"] <= 0.5)).all()  # matched: IoU >= 0.5


def test_bad_input_is_one_line_and_leaves_no_output(trained, tmp_path):
    t = trained
    given = json.loads(t["dets"].read_text())
    bad = tmp_path / "unknown_images.json"
    bad.write_text(json.dumps([{**given[0], "image_id": 123456789}] + given[1:]))
    out = tmp_path / "out.json"
    proc = run_cli(cli_args(t, bad, out), t["env"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1 detections name images that are not in dataset" in proc.stderr.strip().splitlines()[-1]
    # A truncated image: named, and no (partial) output file.
    images = tmp_path / "images"
    images.mkdir()
    for f in os.listdir(t["images"]):
        (images / f).symlink_to(t["images"] / f)
    first = json.loads(t["gt"].read_text())["images"][0]["file_name"]
    (images / first).unlink()
    data = (t["images"] / first).read_bytes()
    (images / first).write_bytes(data[: len(data) // 3])
    proc = run_cli(cli_args(t, t["dets"], out, images=images), t["env"])
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and f"{first}: cannot read image" in last, proc.stderr[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


def test_tune_refinement_on_a_detectors_own_output(trained, tmp_path):
    """tools/tune_refinement.py --detections: the settings table over the detector's own boxes (here the
    stand-ins of 4 images), each setting's AP computed by pycocotools, the no-op setting keeping the input AP."""
    t = trained
    out = tmp_path / "tune.json"
    cmd = [sys.executable, str(REPO / "tools" / "tune_refinement.py"), *cli_args(t, t["dets"], tmp_path / "unused")[:4],
           "--dataset", "coco_tiny_train2017", "--detections", str(t["dets"]), "--steps", "0", "5",
           "--step-sizes", "2,2", "--json", str(out), *cli_args(t, t["dets"], tmp_path / "unused")[12:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "EBM_DEBUG": "", **t["env"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads(out.read_text())
    assert table["detections"] == str(t["dets"]) and table["sigmas"] is None
    (zero, five) = table["rows"]
    assert zero["num_steps"] == 0 and zero["ap_refined"] == pytest.approx(zero["ap_inputs"], abs=1e-9)
    assert zero["mean_iou_gain"] == pytest.approx(0.0, abs=1e-6)  # boxes go to the input scale and back
    assert five["ap_inputs"] == zero["ap_inputs"] and abs(five["mean_iou_gain"]) > 1e-5  # the boxes moved (a 3-iteration head: small gradients)
    assert f"detections {t['dets']}" in proc.stdout and "<- best" in proc.stdout
