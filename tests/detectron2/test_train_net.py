"""tools/train_net.py end to end, as a user runs it: training, evaluation JSON, resume, 2-process gloo,
real COCO images, and one-line errors for bad input."""
import json
import socket

import pytest
from d2_helpers import run_train_net, small_cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_train_then_evaluate_writes_refined_and_unrefined_ap(synthetic_names, tmp_path):
    out = tmp_path / "out"
    cfg = small_cfg(out, extra=["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2"])
    run_train_net(tmp_path, cfg, datasets=synthetic_names)
    assert (out / "model_final.pth").is_file() and (out / "model_0000001.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not list(out.glob(".*.tmp"))  # atomic saves leave no temporary files
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert any("loss_ebm" in m for m in metrics)
    # --eval-only on the trained weights: both box sets evaluated from one pass, JSON written.
    cfg2 = small_cfg(out, extra=["MODEL.WEIGHTS", str(out / "model_final.pth"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    proc = run_train_net(tmp_path, cfg2, "--eval-only", datasets=synthetic_names)
    table = json.loads((out / "inference" / "test_synth_val" / "ebm_refinement_results.json").read_text())
    for key in ("unrefined", "refined"):
        assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(table[key])
    assert "EBM refinement on test_synth_val" in proc.stdout + proc.stderr
    # --resume continues from the last checkpoint without redoing finished iterations.
    cfg3 = small_cfg(out, extra=["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2"])
    run_train_net(tmp_path, cfg3, "--resume", datasets=synthetic_names)
    assert "Starting training from iteration 4" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_distributed_training_with_two_gloo_processes(tmp_path):
    # `--num-gpus 2` on a CPU machine starts two gloo processes. Each registers the plugin's synthetic
    # datasets; the generator's file lock makes that safe.
    cfg = small_cfg(tmp_path / "out", train="ebm_synthetic_val", test="ebm_synthetic_val",
                    extra=["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2"])
    run_train_net(tmp_path, cfg, "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}",
                  env={"EBM_DATASETS": str(tmp_path / "datasets")})
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "World size: 2" in log
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert "EBM refinement on ebm_synthetic_val" in log


@pytest.mark.slow
def test_real_coco_images_train_and_evaluate(shared_data, tmp_path):
    # coco_tiny_train2017 is registered by the plugin from the project's data folder.
    out = tmp_path / "out"
    sizes = ["INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "256"]
    cfg = small_cfg(out, train="coco_tiny_train2017", test="coco_tiny_train2017",
                    extra=["MODEL.ROI_HEADS.NUM_CLASSES", "80", "INPUT.MIN_SIZE_TRAIN", "(192,)",
                           "INPUT.MAX_SIZE_TRAIN", "256", "SOLVER.MAX_ITER", "2", *sizes])
    run_train_net(tmp_path, cfg, env={"EBM_SHARED_DATA": str(shared_data)})
    assert (out / "model_final.pth").is_file()
    cfg = small_cfg(out, train="coco_tiny_train2017", test="coco_tiny_train2017", extra=[
        "MODEL.ROI_HEADS.NUM_CLASSES", "80", *sizes, "MODEL.WEIGHTS", str(out / "model_final.pth"),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    run_train_net(tmp_path, cfg, "--eval-only", env={"EBM_SHARED_DATA": str(shared_data)})
    result = json.loads((out / "inference" / "coco_tiny_train2017" / "ebm_refinement_results.json").read_text())
    assert 0.0 <= result["refined"]["AP"] <= 100.0 and 0.0 <= result["unrefined"]["AP"] <= 100.0
    preds = json.loads((out / "inference" / "coco_tiny_train2017" / "coco_instances_results.json").read_text())
    images = json.loads((shared_data / "coco" / "tiny" / "instances_train2017_small.json").read_text())["images"]
    assert len(preds) > 0 and {p["image_id"] for p in preds} <= {im["id"] for im in images}
    # Every prediction lies inside its original image (boxes rescaled from the 192-px input).
    size = {im["id"]: (im["width"], im["height"]) for im in images}
    assert all(p["bbox"][0] + p["bbox"][2] <= size[p["image_id"]][0] + 1e-3 for p in preds)


@pytest.mark.parametrize("case", ["unknown_key", "text_weights"])
def test_bad_input_is_one_line(synthetic_names, tmp_path, case):
    # The script's error convention end to end; each kind of bad input is tested in-process in test_checks.py.
    (tmp_path / "weights.txt").write_text("not a checkpoint\n")
    extra = ["MODEL.WEIGHTS", str(tmp_path / "weights.txt")] if case == "text_weights" else []
    flags = ["MODEL.EBM.NOT_A_KEY", "1"] if case == "unknown_key" else []
    proc = run_train_net(tmp_path, small_cfg(tmp_path / "out", extra=extra), *flags, datasets=synthetic_names,
                         check=False)
    expected = {"unknown_key": "Non-existent key: MODEL.EBM.NOT_A_KEY",
                "text_weights": "weights.txt: not a readable checkpoint"}[case]
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last.startswith("train_net.py: error: ") and expected in last, last
    assert "Traceback" not in proc.stderr
