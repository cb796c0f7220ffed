"""Fixtures for the tracking tests (tests/tracking/{datasets,evaluation,models,tracker,train}): the real
sequences in shared data, a tiny random-init network, one thread. Helpers shared by name (the tests have
no packages): tracking_helpers (small dataset trees built in tmp_path), tracker_helpers (tiny network and
tracker parameters)."""
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
# tracking_helpers must be importable here and in spawned runner workers (they inherit sys.path).
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from tracker_helpers import TINY_NET, one_torch_thread  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Session scope, so that module- and session-scoped fixtures (which train small models) run under it too.
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_net():
    from ebm_refine.tracking.models import TrackerNet

    torch.manual_seed(0)
    return TrackerNet(TINY_NET).eval()


@pytest.fixture(scope="session")
def eval_tracking_tool():
    """The eval-tracking command's module, ebm_refine.cli.eval_tracking (its ``main(argv)`` raises;
    ``run_cli(main, argv)`` is the command)."""
    from ebm_refine.cli import eval_tracking

    return eval_tracking


@pytest.fixture(scope="session")
def tracking_data(shared_data) -> Path:
    root = Path(shared_data) / "tracking"
    if not root.is_dir():
        pytest.skip(f"real tracking sequences not found at {root} (set EBM_SHARED_DATA)")
    return root
