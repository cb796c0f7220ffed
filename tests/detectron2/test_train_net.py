"""tools/train_net.py end to end: training, evaluation JSON, resume, 2-process gloo, real COCO images."""
import json
import os
import socket
import subprocess
import sys

import pytest
from d2_helpers import REPO, load_train_net, small_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train_net(tmp_path, cfg, eval_only=False, resume=False):
    train_net = load_train_net()
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(cfg.dump())
    args = train_net.default_argument_parser().parse_args(
        ["--config-file", str(cfg_file)] + (["--eval-only"] if eval_only else []) + (["--resume"] if resume else [])
    )
    return train_net.main(args)


def test_train_then_evaluate_writes_refined_and_unrefined_ap(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path / "out", extra=["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"])
    run_train_net(tmp_path, cfg)
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file()
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("loss_ebm" in m for m in metrics)
    # --eval-only on the trained weights: both box sets evaluated from one pass, JSON written.
    cfg2 = small_cfg(out, extra=["MODEL.WEIGHTS", str(out / "model_final.pth"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    res = run_train_net(tmp_path, cfg2, eval_only=True)
    assert set(res) == {"bbox", "bbox_unrefined"}
    table = json.loads((out / "inference" / "test_synth_val" / "ebm_refinement_results.json").read_text())
    for key in ("unrefined", "refined"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(table[key])
    assert table["refined"]["AP"] == pytest.approx(res["bbox"]["AP"])
    # --resume continues from the last checkpoint without redoing finished iterations.
    cfg3 = small_cfg(out, extra=["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2"])
    run_train_net(tmp_path, cfg3, resume=True)
    assert "Starting training from iteration 4" in (out / "log.txt").read_text()


def test_distributed_training_with_two_gloo_processes(tmp_path):
    # tools/train_net.py as a user runs it: `--num-gpus 2` on a CPU machine starts two gloo processes.
    # Each registers the plugin's synthetic datasets; the generator's file lock makes that safe.
    cfg = small_cfg(tmp_path / "out", train="ebm_synthetic_val", test="ebm_synthetic_val",
                    extra=["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2"])
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(cfg.dump())
    env = {**os.environ, "EBM_DATASETS": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--num-gpus", "2",
           "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--config-file", str(cfg_file)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "World size: 2" in log
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert "EBM refinement on ebm_synthetic_val" in log


def test_real_coco_images_train_and_evaluate(shared_data, tmp_path):
    root = shared_data / "coco" / "tiny"
    if "coco_tiny_real" not in DatasetCatalog.list():
        register_coco_instances("coco_tiny_real", {}, str(root / "instances_train2017_small.json"),
                                str(root / "train_2017_small"))
    cfg = small_cfg(tmp_path / "out", train="coco_tiny_real", test="coco_tiny_real",
                    extra=["MODEL.ROI_HEADS.NUM_CLASSES", "80", "INPUT.MIN_SIZE_TRAIN", "(192,)",
                           "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "256",
                           "SOLVER.MAX_ITER", "2"])
    res = run_train_net(tmp_path, cfg)
    out = tmp_path / "out"
    assert (out / "model_final.pth").is_file()
    res = run_train_net(tmp_path, small_cfg(out, train="coco_tiny_real", test="coco_tiny_real", extra=[
        "MODEL.ROI_HEADS.NUM_CLASSES", "80", "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "256",
        "MODEL.WEIGHTS", str(out / "model_final.pth"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]), eval_only=True)
    assert set(res) == {"bbox", "bbox_unrefined"}
    assert 0.0 <= res["bbox"]["AP"] <= 100.0
    preds = json.loads((out / "inference" / "coco_tiny_real" / "coco_instances_results.json").read_text())
    assert len(preds) > 0 and {p["image_id"] for p in preds} <= {
        im["id"] for im in json.loads((root / "instances_train2017_small.json").read_text())["images"]}
