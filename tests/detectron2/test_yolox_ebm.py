"""The EBM on YOLOX-nano's frozen features (the paper's setting): a tiny energy head trained with
tools/train_net.py on COCO tiny, refining YOLOX's own detections in one pass (EBMYOLOX) and another detector's
results file (tools/refine_detections.py); the trunk never moves; heads of other features are refused."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from d2_helpers import REPO, refiner_cfg, run_train_net, yolox_cfg
from detectron2.modeling import build_model

from ebm_refine.detectron2 import CheckedDatasetMapper, EBMCheckpointer
from ebm_refine.detectron2.checkpoint import CheckpointError
from ebm_refine.detectron2.meta_arch import UntrainedDetectorError
from ebm_refine.detectron2.refine_detections import load_refiner
from ebm_refine.detectron2.yolox_onnx import read_yolox_onnx

# A tiny head (and large steps, so three training iterations move boxes measurably).
TINY = ["MODEL.EBM.HEAD.FC_DIM", "32", "MODEL.EBM.NUM_SAMPLES", "8", "MODEL.EBM.REFINE.STEP_SIZE_CENTER", "0.02",
        "MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.02"]
REFINER = "COCO-Refine/ebm_refiner_yolox_nano.yaml"


@pytest.fixture(scope="module")
def trained(shared_data, yolox_pth, tmp_path_factory):
    """The YOLOX-feature refiner config trained for 3 iterations on coco_tiny_train2017 by tools/train_net.py."""
    tmp = tmp_path_factory.mktemp("yolox_refiner")
    os.environ.setdefault("EBM_SHARED_DATA", str(shared_data))
    cfg = yolox_cfg(yolox_pth, "DATASETS.TRAIN", "('coco_tiny_train2017',)", "SOLVER.IMS_PER_BATCH", "2",
                    "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
                    "OUTPUT_DIR", str(tmp / "out"), *TINY, config=REFINER)
    run_train_net(tmp, cfg, env={"EBM_SHARED_DATA": str(shared_data)})
    return {"dir": tmp, "weights": tmp / "out" / "model_final.pth"}


def val_inputs(cfg, shared_data, n):
    root = shared_data / "coco" / "val2017_first128"
    images = json.loads((root / "instances_val2017_first128.json").read_text())["images"][:n]
    mapper = CheckedDatasetMapper(cfg, False)
    return [mapper({"file_name": str(root / "images" / im["file_name"]), "height": im["height"],
                    "width": im["width"], "image_id": im["id"]}) for im in images]


@pytest.mark.slow
def test_head_trains_on_the_frozen_trunk_and_refines_yolox_in_one_pass(trained, yolox_onnx, yolox_pth, shared_data):
    saved = torch.load(trained["weights"], weights_only=True)["model"]
    metrics = [json.loads(line) for line in (trained["weights"].parent / "metrics.json").read_text().splitlines()]
    assert all(np.isfinite(m["loss_ebm"]) for m in metrics if "loss_ebm" in m) and len(metrics) >= 1
    # Only the energy head trained: every trunk tensor is still the ONNX export's.
    original = read_yolox_onnx(str(yolox_onnx))
    trunk = [k for k in saved if k.startswith("backbone.")]
    assert len(trunk) == len([k for k in original if k.startswith("backbone.")]) > 150
    assert all(torch.equal(saved[k], original[k]) for k in trunk)
    assert any(k.startswith("roi_heads.energy_head.") for k in saved)

    # EBMYOLOX: YOLOX's weights + the trained head (MODEL.EBM.HEAD.WEIGHTS), detect and refine in one pass.
    cfg = yolox_cfg(yolox_pth, "MODEL.EBM.HEAD.WEIGHTS", str(trained["weights"]), *TINY,
                    config="COCO-Detection/ebm_yolox_nano.yaml")
    model = build_model(cfg).eval()
    ckpt = EBMCheckpointer(model)
    ckpt.load(cfg.MODEL.WEIGHTS)
    assert ckpt.energy_head_loaded
    assert [n for n, p in model.named_parameters() if p.requires_grad] == \
        [n for n in model.state_dict() if n.startswith("roi_heads.energy_head.")]
    plain = build_model(yolox_cfg(yolox_pth)).eval()
    EBMCheckpointer(plain).load(str(yolox_pth))
    inputs = val_inputs(cfg, shared_data, 2)
    with torch.no_grad():
        refined, detected = model(inputs), plain(inputs)
    for r, d, x in zip(refined, detected, inputs):
        r, d = r["instances"], d["instances"]
        assert len(r) == len(d) > 0
        # The unrefined boxes are YOLOX's own detections, in original pixels.
        torch.testing.assert_close(r.pred_boxes_unrefined.tensor, d.pred_boxes.tensor)
        torch.testing.assert_close(r.scores, d.scores)
        assert torch.equal(r.pred_classes, d.pred_classes)
        boxes = r.pred_boxes.tensor
        assert torch.isfinite(boxes).all() and torch.isfinite(r.pred_energies).all()
        assert (boxes[:, 2:] <= torch.tensor([x["width"], x["height"]])).all() and (boxes >= 0).all()
        moved = (boxes - d.pred_boxes.tensor).abs().max(dim=1).values
        assert (moved > 1e-3).float().mean() > 0.5, moved
    # Training EBMYOLOX leaves YOLOX in eval mode and produces the EBM loss only.
    model.train()
    assert not model.backbone.training and not model.head.training and model.roi_heads.energy_head.training
    losses = model([dict(x, instances=_as_targets(d["instances"][:3], x)) for x, d in zip(inputs, detected)])
    assert set(losses) == {"loss_ebm"} and torch.isfinite(losses["loss_ebm"])

    # A head file whose trunk differs from the loaded YOLOX weights is refused, naming the file.
    saved_other = {k: v.clone() for k, v in saved.items()}
    saved_other[trunk[0]] += 1.0
    other = trained["dir"] / "other_trunk.pth"
    torch.save({"model": saved_other}, other)
    cfg2 = yolox_cfg(yolox_pth, "MODEL.EBM.HEAD.WEIGHTS", str(other), *TINY, config="COCO-Detection/ebm_yolox_nano.yaml")
    with pytest.raises(CheckpointError, match="other_trunk.pth: its energy head was trained on other backbone weights"):
        EBMCheckpointer(build_model(cfg2)).load(str(yolox_pth))
    # The refiner's checkpoint has no YOLOX head: as MODEL.WEIGHTS it is refused, pointing to HEAD.WEIGHTS.
    with pytest.raises(UntrainedDetectorError, match="head.cls_branches.*energy head goes in MODEL.EBM.HEAD.WEIGHTS"):
        EBMCheckpointer(build_model(cfg)).load(str(trained["weights"]))


def _as_targets(detections, inputs):
    """Detections (original pixels) as ground-truth Instances of the letterboxed input."""
    from detectron2.structures import Boxes, Instances

    r = min(416 / inputs["height"], 416 / inputs["width"])
    t = Instances(tuple(inputs["image"].shape[-2:]))
    t.gt_boxes = Boxes(detections.pred_boxes.tensor * r)
    t.gt_classes = detections.pred_classes
    return t


@pytest.mark.slow
def test_refine_detections_cli_refines_another_detectors_file(trained, shared_data, tmp_path):
    # FastestDet's results on 3 val images, refined by the YOLOX-feature refiner, as a user runs the tool.
    root = shared_data / "coco" / "val2017_first128"
    gt = json.loads((root / "instances_val2017_first128.json").read_text())
    keep = {im["id"] for im in gt["images"][:3]}
    gt["images"] = [im for im in gt["images"] if im["id"] in keep]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = [d for d in json.loads((shared_data / "coco" / "detections" / "fastestdet_val2017_first128.json").read_text())
            if d["image_id"] in keep]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "refined.json"
    cmd = [sys.executable, str(REPO / "tools" / "refine_detections.py"),
           "--config-file", str(REPO / "configs" / "COCO-Refine" / "ebm_refiner_yolox_nano.yaml"),
           "--weights", str(trained["weights"]), "--detections", str(tmp_path / "dets.json"),
           "--dataset-json", str(tmp_path / "gt.json"), "--image-root", str(root / "images"),
           "--output", str(out), "--max-per-image", "20", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "EBM_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "COCO box AP" in proc.stdout
    written = json.loads(out.read_text())
    assert 0 < len(written) <= 60 and all(np.isfinite(d["bbox"]).all() and "energy" in d for d in written)
    by_key = {(d["image_id"], d["category_id"], round(d["score"], 6)): d["bbox"] for d in dets}
    moved = [np.abs(np.subtract(w["bbox"], by_key[(w["image_id"], w["category_id"], round(w["score"], 6))])).max()
             for w in written]
    assert np.mean(np.array(moved) > 1e-3) > 0.5


@pytest.mark.slow
def test_exported_head_loads_by_fingerprint_only_onto_its_trunk(trained, yolox_onnx, yolox_pth, shared_data, tmp_path):
    """tools/export_energy_head.py: the head alone (no YOLOX tensors shipped), checked by its trunk's fingerprint;
    it refines exactly as the full refiner checkpoint does, from the .pth or the .onnx YOLOX weights."""
    head = tmp_path / "head.pth"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "export_energy_head.py"), str(trained["weights"]),
                           "--output", str(head)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "EBM_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr
    saved = torch.load(head, weights_only=True)
    assert not any(k.startswith("backbone.") for k in saved["model"]) and len(saved["backbone_fingerprint"]) == 64
    assert head.stat().st_size < 0.8 * trained["weights"].stat().st_size
    outputs = []
    for weights, head_file in ((yolox_pth, trained["weights"]), (yolox_pth, head), (yolox_onnx, head)):
        cfg = yolox_cfg(str(weights), "MODEL.EBM.HEAD.WEIGHTS", str(head_file), *TINY,
                        config="COCO-Detection/ebm_yolox_nano.yaml")
        model = build_model(cfg).eval()
        EBMCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        with torch.no_grad():
            outputs.append(model(val_inputs(cfg, shared_data, 1))[0]["instances"].pred_boxes.tensor)
    torch.testing.assert_close(outputs[1], outputs[0])
    torch.testing.assert_close(outputs[2], outputs[0], atol=1e-3, rtol=0)
    # onto another trunk: one line naming the file
    other = {k: v.clone() for k, v in read_yolox_onnx(str(yolox_onnx)).items()}
    first = sorted(k for k in other if k.startswith("backbone."))[0]
    other[first] += 1.0
    torch.save({"model": other}, tmp_path / "other_yolox.pth")
    cfg = yolox_cfg(str(tmp_path / "other_yolox.pth"), "MODEL.EBM.HEAD.WEIGHTS", str(head), *TINY,
                    config="COCO-Detection/ebm_yolox_nano.yaml")
    with pytest.raises(CheckpointError, match="head.pth: its energy head was trained on other backbone weights"):
        EBMCheckpointer(build_model(cfg)).load(cfg.MODEL.WEIGHTS)


def test_head_of_other_features_is_refused(yolox_pth, tmp_path):
    # A MobileNetV2-FPN refiner's checkpoint: its energy head has the YOLOX head's shapes (64 channels, 7 x 7),
    # but it was trained on other features.
    mobilenet = build_model(refiner_cfg(tmp_path, extra=["MODEL.FPN.OUT_CHANNELS", "64", "MODEL.EBM.HEAD.FC_DIM", "32"]))
    EBMCheckpointer(mobilenet, str(tmp_path)).save("mobilenet_refiner")
    path = str(tmp_path / "mobilenet_refiner.pth")
    with pytest.raises(CheckpointError, match="mobilenet_refiner.pth: its energy head was trained on other features"):
        load_refiner(yolox_cfg(yolox_pth, *TINY, config=REFINER), path)
    cfg = yolox_cfg(yolox_pth, "MODEL.EBM.HEAD.WEIGHTS", path, *TINY, config="COCO-Detection/ebm_yolox_nano.yaml")
    with pytest.raises(CheckpointError, match="mobilenet_refiner.pth: its energy head was trained on other features"):
        EBMCheckpointer(build_model(cfg)).load(str(yolox_pth))


def test_levels_and_training_refuses_an_unloaded_trunk(shared_data, tmp_path):
    cfg = yolox_cfg("", *TINY, config=REFINER)
    model = build_model(cfg)
    model.train()
    assert not model.backbone.training and not any(p.requires_grad for p in model.backbone.parameters())
    # Boxes of 50, 150 and 300 letterbox pixels pool from p3, p4 and p5 (POOLER_CANONICAL_BOX_SIZE 112).
    boxes = torch.tensor([[0.0, 0.0, 50.0, 50.0], [0.0, 0.0, 150.0, 150.0], [0.0, 0.0, 300.0, 300.0]])
    assert [g.tolist() for g in model.roi_heads.energy_pooler.level_groups(boxes)] == [[0], [1], [2]]
    with pytest.raises(UntrainedDetectorError, match="MODEL.WEIGHTS"):
        model(val_inputs(cfg, shared_data, 1))
