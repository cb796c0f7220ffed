"""YOLOX-nano in the plugin: the PyTorch port against onnxruntime, its COCO AP, the converter's errors, and the
letterbox input. The EBM on its frozen features: tests/detectron2/test_yolox_ebm.py."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from d2_helpers import REPO, WEIGHTS_DIR, yolox_cfg
from detectron2.modeling import build_model

from ebm_refine.detectron2 import CheckedDatasetMapper, EBMCheckpointer, EBMTrainer, YOLOXHead, YOLOXTrunk
from ebm_refine.detectron2.checkpoint import CheckpointError
from ebm_refine.detectron2.data import LetterboxResize
from ebm_refine.detectron2.yolox_detector import check_letterbox_inputs
from ebm_refine.detectron2.yolox_onnx import YOLOXWeightsError, read_yolox_onnx
from ebm_refine.utils.cli import run_cli
from ebm_refine.utils.errors import UserError

def numpy_letterbox(image_bgr: np.ndarray, size: int = 416) -> np.ndarray:
    """YOLOX's preprocessing written independently: (1, 3, size, size) float32, BGR, grey 114 bottom/right."""
    h, w = image_bgr.shape[:2]
    r = min(size / h, size / w)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: int(h * r), : int(w * r)] = cv2.resize(image_bgr, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
    return canvas.transpose(2, 0, 1)[None].astype(np.float32)


def test_trunk_shapes_and_freezing():
    trunk = YOLOXTrunk(416, frozen=True)
    trunk.train()
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())
    out = trunk(torch.rand(2, 3, 416, 416) * 255)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"p3": (2, 64, 52, 52), "p4": (2, 64, 26, 26),
                                                           "p5": (2, 64, 13, 13)}
    assert {k: (s.channels, s.stride) for k, s in trunk.output_shape().items()} == {
        "p3": (64, 8), "p4": (64, 16), "p5": (64, 32)}
    assert trunk.padding_constraints == {"square_size": 416} and trunk.pad_value == 114.0
    # Trunk + head hold the ONNX export's 904,463 conv weight and bias values (BatchNorm folded).
    assert sum(p.numel() for p in trunk.parameters()) == 830_288
    assert sum(p.numel() for p in YOLOXHead().parameters()) == 74_175


def test_letterbox_resize_geometry():
    image = np.random.default_rng(0).integers(0, 255, (426, 640, 3), dtype=np.uint8)
    t = LetterboxResize(416).get_transform(image)
    out = t.apply_image(image)
    assert out.shape == (276, 416, 3)  # int(426 * 0.65) x 640 * 0.65: YOLOX truncates, Detectron2 would round
    np.testing.assert_array_equal(out, cv2.resize(image, (416, 276), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_allclose(t.apply_box(np.array([[10.0, 20.0, 640.0, 426.0]])), [[6.5, 13.0, 416.0, 276.9]])
    ok = {"image": torch.zeros(3, 276, 416), "height": 426, "width": 640}
    check_letterbox_inputs([ok], 416)
    with pytest.raises(UserError, match="letterbox-resized to fit 416 px .*276x416"):
        check_letterbox_inputs([{**ok, "image": torch.zeros(3, 277, 416)}], 416)


def test_raw_outputs_match_onnxruntime(yolox_onnx, yolox_pth, shared_data):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(yolox_onnx), options, providers=["CPUExecutionProvider"])
    cfg = yolox_cfg(yolox_pth)
    model = build_model(cfg).eval()
    EBMCheckpointer(model).load(str(yolox_pth))
    mapper = CheckedDatasetMapper(cfg, False)
    root = shared_data / "coco" / "val2017_first128"
    images = json.loads((root / "instances_val2017_first128.json").read_text())["images"][:3]
    for im in images:
        path = root / "images" / im["file_name"]
        inputs = [mapper({"file_name": str(path), "height": im["height"], "width": im["width"], "image_id": im["id"]})]
        batch = model.preprocess_image(inputs).tensor
        # The plugin's mapper + padding are YOLOX's preprocessing exactly.
        np.testing.assert_array_equal(batch.numpy(), numpy_letterbox(cv2.imread(str(path))))
        with torch.no_grad():
            raw = model.head([model.backbone(batch)[f] for f in ("p3", "p4", "p5")])
        ref = session.run(None, {"images": batch.numpy()})[0]
        assert raw.shape == ref.shape == (1, 3549, 85)
        assert np.abs(raw.numpy() - ref).max() <= 1e-3


@pytest.mark.slow
def test_coco_ap_on_val2017_first128(yolox_pth, shared_data):
    # The shared detections file (onnxruntime + the same post-processing) gives AP 33.7 / AP50 49.4 / AP75 37.1.
    os.environ.setdefault("EBM_SHARED_DATA", str(shared_data))
    torch.set_num_threads(1)
    cfg = yolox_cfg(yolox_pth, "OUTPUT_DIR", str(yolox_pth.parent / "out"))
    model = build_model(cfg).eval()
    EBMCheckpointer(model).load(str(yolox_pth))
    bbox = EBMTrainer.test(cfg, model)["bbox"]
    assert abs(bbox["AP"] - 33.7) <= 0.05, bbox
    assert abs(bbox["AP50"] - 49.4) <= 0.05 and abs(bbox["AP75"] - 37.1) <= 0.05, bbox


def test_weights_load_from_the_onnx_file_too(yolox_onnx, yolox_pth):
    a, b = build_model(yolox_cfg(yolox_onnx)), build_model(yolox_cfg(yolox_pth))
    EBMCheckpointer(a).load(str(yolox_onnx))
    EBMCheckpointer(b).load(str(yolox_pth))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.load(yolox_pth, weights_only=True)["model"].keys() == read_yolox_onnx(str(yolox_onnx)).keys()


def test_missing_weights_say_how_to_convert(tmp_path):
    model = build_model(yolox_cfg(tmp_path / "yolox_nano.pth"))
    with pytest.raises(CheckpointError, match="yolox_nano.onnx .*tools/convert_yolox_onnx.py .*--output "):
        EBMCheckpointer(model).load(str(tmp_path / "yolox_nano.pth"))
    with pytest.raises(UserError, match="inference-only"):
        model.train()({})


def run_converter(*args):
    cmd = [sys.executable, str(REPO / "tools" / "convert_yolox_onnx.py"), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "EBM_DEBUG": ""})


def test_converter_bad_input_is_one_line(yolox_onnx, tmp_path, one_line_error, capsys, monkeypatch):
    onnx = pytest.importorskip("onnx")
    monkeypatch.delenv("EBM_DEBUG", raising=False)
    spec = importlib.util.spec_from_file_location("convert_yolox_onnx", REPO / "tools" / "convert_yolox_onnx.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def convert(*args):  # the script's main under the CLI convention, in this process
        status = run_cli(tool.main, [*map(str, args)], prog="convert_yolox_onnx.py")
        return status, capsys.readouterr().err

    out = tmp_path / "out.pth"
    status, err = convert(tmp_path / "absent.onnx", "--output", out)
    assert status == 2
    one_line_error(err, "convert_yolox_onnx.py", "absent.onnx not found", "yolox_nano.onnx")
    # YOLOX-nano's graph with another input size.
    model = onnx.load(str(yolox_onnx))
    for d, v in zip(model.graph.input[0].type.tensor_type.shape.dim, (1, 3, 640, 640)):
        d.dim_value = v
    onnx.save(model, str(tmp_path / "yolox_640.onnx"))
    status, err = convert(tmp_path / "yolox_640.onnx", "--output", out)
    assert status == 2
    one_line_error(err, "convert_yolox_onnx.py", "yolox_640.onnx", "[1, 3, 640, 640]", "input size")
    with pytest.raises(YOLOXWeightsError, match="yolox_640.onnx"):  # the library's typed error
        read_yolox_onnx(str(tmp_path / "yolox_640.onnx"))
    (tmp_path / "text.onnx").write_text("not a graph")
    status, err = convert(tmp_path / "text.onnx", "--output", out)
    assert status == 2
    one_line_error(err, "convert_yolox_onnx.py", "text.onnx", "not a readable ONNX file")
    assert not out.exists()
    status, err = convert(yolox_onnx, "--output", out)
    assert status == 0 and out.is_file(), err


@pytest.mark.slow
def test_converter_script_rejects_another_detector(tmp_path, one_line_error):
    other = WEIGHTS_DIR / "fastestdet_coco.onnx"  # another COCO detector's ONNX export
    if not other.is_file():
        pytest.skip(f"{other} not found (set EBM_WEIGHTS_DIR)")
    proc = run_converter(other, "--output", tmp_path / "out.pth")
    assert proc.returncode == 2
    one_line_error(proc.stderr, "convert_yolox_onnx.py", "fastestdet_coco.onnx", "[1, 3, 416, 416]")
    assert not (tmp_path / "out.pth").exists()
