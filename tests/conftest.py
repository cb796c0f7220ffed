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
