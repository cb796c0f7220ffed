"""demo detect's default model (the model-zoo entry detection/ebm_yolox_nano: YOLOX-nano + an energy head) on
real street frames (OTB Crossing), with a tiny head trained here by tools/train_net.py; the bad-input lines
for YOLOX weights that are missing and a head trained on other features."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "detectron2"))

from d2_helpers import WEIGHTS_DIR, refiner_cfg, run_train_net, yolox_cfg  # noqa: E402

from ebm_refine import visualization  # noqa: E402
from ebm_refine.cli import demo  # noqa: E402
from ebm_refine.detectron2 import get_shipped_model_cfg, shipped_checkpoint  # noqa: E402

# A tiny head (and large steps, so that three training iterations move boxes measurably); the demo gets the
# same keys, so that the model it builds fits the head.
TINY = ["MODEL.EBM.HEAD.FC_DIM", "32", "MODEL.EBM.NUM_SAMPLES", "8", "MODEL.EBM.REFINE.STEP_SIZE_CENTER", "0.02",
        "MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.02"]
ENTRY = "detection/ebm_yolox_nano"


@pytest.fixture(scope="module")
def yolox_onnx() -> Path:
    path = WEIGHTS_DIR / "yolox_nano.onnx"
    if not path.is_file():
        pytest.skip(f"YOLOX-nano's ONNX export not found at {path} (set EBM_WEIGHTS_DIR)")
    return path


@pytest.fixture(scope="module")
def head(shared_data, yolox_onnx, tmp_path_factory) -> Path:
    """A YOLOX-feature energy head: the COCO-Refine config trained 2 iterations on coco_tiny_train2017."""
    tmp = tmp_path_factory.mktemp("yolox_head")
    cfg = yolox_cfg(yolox_onnx, "DATASETS.TRAIN", "('coco_tiny_train2017',)", "SOLVER.IMS_PER_BATCH", "2",
                    "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
                    "OUTPUT_DIR", str(tmp / "out"), *TINY, config="COCO-Refine/ebm_refiner_yolox_nano.yaml")
    run_train_net(tmp, cfg, env={"EBM_SHARED_DATA": str(shared_data)})
    return tmp / "out" / "model_final.pth"


def test_model_zoo_entry_is_the_ebm_yolox_config_with_the_shipped_head():
    cfg = get_shipped_model_cfg(ENTRY)
    shipped = shipped_checkpoint(ENTRY, must_exist=False)
    assert shipped.endswith(os.path.join("checkpoints", "detection", "ebm_yolox_nano", "model_final.pth"))
    assert cfg.MODEL.META_ARCHITECTURE == "EBMYOLOX" and cfg.MODEL.WEIGHTS == "yolox_nano.onnx"
    assert cfg.MODEL.EBM.HEAD.WEIGHTS == (shipped if os.path.isfile(shipped) else "")
    # opts come after the shipped head, so they can name another one
    assert get_shipped_model_cfg(ENTRY, ["MODEL.EBM.HEAD.WEIGHTS", "mine.pth"]).MODEL.EBM.HEAD.WEIGHTS == "mine.pth"
    with pytest.raises(FileNotFoundError, match="no shipped model 'detection/nope'; available: detection/ebm_yolox"):
        shipped_checkpoint("detection/nope")


@pytest.mark.slow
def test_detect_default_model_on_street_frames(head, shared_data, tmp_path, monkeypatch):
    frames = shared_data / "tracking" / "otb" / "Crossing" / "img"
    drawn = []
    real_draw = visualization.draw_detections

    def keep(frame, instances, names, threshold, warn=None, info=()):
        drawn.append((instances, names, list(info)))
        return real_draw(frame, instances, names, threshold, warn, info)

    monkeypatch.setattr(visualization, "draw_detections", keep)
    out = tmp_path / "crossing.mp4"
    # No --config-file: the model-zoo entry, its MODEL.WEIGHTS "yolox_nano.onnx" found in the weights folder.
    assert demo.main(["detect", "--input", str(frames), "--max-frames", "3", "--confidence-threshold", "0.3",
                      "--output", str(out), "--opts", *TINY, "MODEL.EBM.HEAD.WEIGHTS", str(head)]) == 0
    cap = cv2.VideoCapture(str(out))
    assert (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (3, 360, 240)
    cap.release()
    assert len(drawn) == 3
    for instances, names, info in drawn:
        assert len(names) == 80 and names[0] == "person"
        # YOLOX kept exactly the detections drawn (score >= 0.3): people on the street
        assert len(instances) > 0 and (instances.scores >= 0.3).all()
        assert (instances.pred_classes == 0).any()
        refined, unrefined = instances.pred_boxes.tensor, instances.pred_boxes_unrefined.tensor
        assert torch.isfinite(refined).all() and torch.isfinite(instances.pred_energies).all()
        moved = (refined - unrefined).abs().max(dim=1).values
        assert (moved > 1e-3).float().mean() > 0.5, moved
        assert re.fullmatch(r"detect \d+ ms \+ refine \d+ ms", info[0]), info


def test_missing_yolox_weights_is_one_line(tmp_path, monkeypatch, capsys, one_line_error):
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "1.jpg"), np.full((64, 64, 3), 90, np.uint8))
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("EBM_WEIGHTS_DIR", str(empty))
    out = tmp_path / "o.mp4"
    assert demo.main(["detect", "--input", str(frames), "--output", str(out),
                      "--opts", "MODEL.EBM.HEAD.WEIGHTS", str(tmp_path / "head.pth")]) == 2
    one_line_error(capsys.readouterr().err, "demo.py", "MODEL.WEIGHTS 'yolox_nano.onnx' not found",
                   str(empty / "yolox_nano.onnx"), "YOLOX's release, Apache-2.0", "EBM_WEIGHTS_DIR")
    assert not out.exists()


def test_head_of_other_features_is_one_line(yolox_onnx, tmp_path, capsys, one_line_error):
    # A MobileNetV2-FPN refiner's checkpoint given as the YOLOX model's energy head.
    from detectron2.modeling import build_model

    from ebm_refine.detectron2 import EBMCheckpointer

    model = build_model(refiner_cfg(tmp_path, extra=["MODEL.FPN.OUT_CHANNELS", "64", "MODEL.EBM.HEAD.FC_DIM", "32"]))
    EBMCheckpointer(model, str(tmp_path)).save("mobilenet_refiner")
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "1.jpg"), np.full((64, 64, 3), 90, np.uint8))
    head = tmp_path / "mobilenet_refiner.pth"
    assert demo.main(["detect", "--input", str(frames), "--output", str(tmp_path / "o.mp4"),
                      "--opts", *TINY, "MODEL.WEIGHTS", str(yolox_onnx), "MODEL.EBM.HEAD.WEIGHTS", str(head)]) == 2
    one_line_error(capsys.readouterr().err, "demo.py", f"{head}: its energy head was trained on other features")
    assert not (tmp_path / "o.mp4").exists()


def test_copy_without_the_shipped_head_is_one_line(tmp_path, monkeypatch, capsys, one_line_error):
    # A copy of ebm_refine whose checkpoints/ lacks the head (the shipped path pointed at an absent file).
    from ebm_refine.detectron2 import model_zoo

    monkeypatch.setattr(model_zoo, "shipped_checkpoint", lambda name, must_exist=True: str(tmp_path / "absent.pth"))
    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "1.jpg"), np.full((64, 64, 3), 90, np.uint8))
    assert demo.main(["detect", "--input", str(frames), "--output", str(tmp_path / "o.mp4")]) == 2
    one_line_error(capsys.readouterr().err, "demo.py", "the shipped energy head", "is not in this copy",
                   "--opts MODEL.EBM.HEAD.WEIGHTS")
