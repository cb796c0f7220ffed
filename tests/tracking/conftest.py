"""Fixtures for the tracking tests: the real sequences in shared data, and small dataset trees built in
tmp_path (frames are tiny generated JPEGs or empty placeholder files where only existence matters)."""
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# tracking_helpers must be importable here and in spawned runner workers (they inherit sys.path).
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def eval_tracking_tool():
    """tools/eval_tracking.py as a module (its ``main(argv)`` raises; ``run_cli(main, argv)`` is the command)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_tracking_tool", HERE.parents[1] / "tools" / "eval_tracking.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def tracking_data(shared_data) -> Path:
    root = Path(shared_data) / "tracking"
    if not root.is_dir():
        pytest.skip(f"real tracking sequences not found at {root} (set EBM_SHARED_DATA)")
    return root
