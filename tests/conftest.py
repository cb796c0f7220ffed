"""Shared pytest fixtures: the location of the real test data (never copied into the repo)."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$EBM_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("EBM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (set EBM_SHARED_DATA)")
    return root


def mobilenet_weights_path() -> Path:
    """The project's ImageNet MobileNetV2 file: ``$EBM_WEIGHTS_DIR`` or ``<repo>/../shared/weights``."""
    return Path(os.environ.get("EBM_WEIGHTS_DIR", REPO.parent / "shared" / "weights")) / "mobilenet_v2_imagenet_features.pth"


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    path = mobilenet_weights_path()
    if not path.is_file():
        pytest.skip(f"MobileNetV2 ImageNet weights not found at {path} (set EBM_WEIGHTS_DIR)")
    return path

