"""Fixtures for the Detectron2 plugin tests: a small synthetic dataset."""
import pytest

pytest.importorskip("detectron2")

from d2_helpers import SMALL  # noqa: E402
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
