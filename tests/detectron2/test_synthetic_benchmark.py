"""The README's main job (ebm_refine.detectron2.benchmark, run by tools/synthetic_benchmark.py) in a small configuration."""
import json

import pytest
import torch
from detectron2.data import MetadataCatalog

from ebm_refine.data.synthetic_detection import image_rng
from ebm_refine.detectron2 import get_ebm_cfg
from ebm_refine.detectron2.benchmark import run_synthetic_benchmark


@pytest.mark.slow
def test_benchmark_trains_both_heads_and_reports_three_columns(synthetic_names, tmp_path):
    small = [
        "DATASETS.TRAIN", "('test_synth_train',)", "DATASETS.TEST", "('test_synth_val',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "128", "MODEL.EBM.NUM_SAMPLES", "16", "SOLVER.IMS_PER_BATCH", "2",
        "DATALOADER.NUM_WORKERS", "0",
    ]
    result = run_synthetic_benchmark(tmp_path, iters=6, baseline_iters=2, quick=True, opts=small)
    assert list(result["box_ap"]) == ["unrefined", "EBM (ML-IS) refined", "IoU-Net refined"]
    on_disk = json.loads((tmp_path / "synthetic_benchmark.json").read_text())
    for name, column in result["box_ap"].items():
        assert on_disk["box_ap"][name]["AP75"] == column["AP75"]
    for column in result["box_ap"].values():
        assert all(0.0 <= column[m] <= 100.0 for m in ("AP", "AP50", "AP75"))
    assert "| AP75 |" in result["table"] and "EBM (ML-IS) refined" in result["table"]
    # The baseline started from the detector only, frozen: its checkpoint has no energy head.
    detector = torch.load(tmp_path / "detector_only.pth")["model"]
    assert detector and not any(".energy_head." in k for k in detector)


def test_held_out_tuning_split_is_registered_apart_from_val():
    tune, val = MetadataCatalog.get("ebm_synthetic_tune"), MetadataCatalog.get("ebm_synthetic_val")
    assert tune.json_file.endswith("instances_tune.json") and tune.json_file != val.json_file
    assert tune.evaluator_type == "coco" and tune.thing_classes == val.thing_classes
    # Every image draws from a stream seeded by the split's name too: image i of "tune" is not image i of "val".
    assert image_rng(0, "tune", 0).random() != image_rng(0, "val", 0).random()


def test_fast_configs_change_only_the_number_of_refinement_steps():
    for base in ("Synthetic/ebm_compact_fpn_synthetic", "COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x"):
        full, fast = get_ebm_cfg(base + ".yaml"), get_ebm_cfg(base + "_fast.yaml")
        assert full.MODEL.EBM.REFINE.NUM_STEPS == 10 and fast.MODEL.EBM.REFINE.NUM_STEPS == 6
        fast.MODEL.EBM.REFINE.NUM_STEPS, fast.OUTPUT_DIR = 10, full.OUTPUT_DIR
        assert fast == full


def test_baseline_config_changes_only_the_loss_the_freezing_and_the_step_sizes():
    ebm, iounet = get_ebm_cfg("Synthetic/ebm_compact_fpn_synthetic.yaml"), get_ebm_cfg("Synthetic/iounet_compact_fpn_synthetic.yaml")
    assert iounet.MODEL.EBM.LOSS == "iou_confidence" and iounet.MODEL.EBM.FREEZE_DETECTOR
    assert (iounet.MODEL.EBM.REFINE.STEP_SIZE_CENTER, iounet.MODEL.EBM.REFINE.STEP_SIZE_SIZE) == (0.02, 0.02)
    e = iounet.MODEL.EBM
    e.LOSS, e.FREEZE_DETECTOR, iounet.OUTPUT_DIR = ebm.MODEL.EBM.LOSS, ebm.MODEL.EBM.FREEZE_DETECTOR, ebm.OUTPUT_DIR
    e.REFINE.STEP_SIZE_CENTER, e.REFINE.STEP_SIZE_SIZE = ebm.MODEL.EBM.REFINE.STEP_SIZE_CENTER, ebm.MODEL.EBM.REFINE.STEP_SIZE_SIZE
    assert iounet == ebm
