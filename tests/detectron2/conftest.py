"""Fixtures for the Detectron2 plugin tests: a small synthetic dataset."""
import pytest

pytest.importorskip("detectron2")

from d2_helpers import SMALL, WEIGHTS_DIR  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402

from ebm_refine.detectron2.datasets import register_synthetic_detection  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_names(tmp_path_factory):
    """Registers a 16-image train and an 8-image val split of 128 px images."""
    root = tmp_path_factory.mktemp("synthetic")
    names = ("test_synth_train", "test_synth_val")
    for name, split, n in zip(names, ("train", "val"), (16, 8)):
        if name not in DatasetCatalog.list():
            register_synthetic_detection(name, split, n, root=root, config=SMALL, seed=1)
    return names


@pytest.fixture(scope="session")
def yolox_onnx():
    """The project's COCO-trained YOLOX-nano ONNX export."""
    path = WEIGHTS_DIR / "yolox_nano.onnx"
    if not path.is_file():
        pytest.skip(f"YOLOX-nano's ONNX export not found at {path} (set EBM_WEIGHTS_DIR)")
    return path


@pytest.fixture(scope="session")
def yolox_pth(yolox_onnx, tmp_path_factory):
    """That export converted to a Detectron2 checkpoint (tools/convert_yolox_onnx.py's library function)."""
    from ebm_refine.detectron2.yolox_onnx import convert_yolox_onnx

    path = tmp_path_factory.mktemp("yolox") / "yolox_nano.pth"
    assert convert_yolox_onnx(str(yolox_onnx), str(path)) == 226  # 113 convolutions, weight + bias
    return path
