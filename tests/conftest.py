"""Shared pytest fixtures: the location of the real test data (never copied into the repo), and the check of
the command-line error convention."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The scripts the tests run in subprocesses (tools/*.py, demo/demo.py) import the installed ebm_refine; put
# this checkout first, so that they test it even when the environment's editable install is another copy.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])


def shared_data_dir() -> Path:
    """``$EBM_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("EBM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (set EBM_SHARED_DATA)")
    return root


@pytest.fixture()
def one_line_error():
    """``check(stderr, prog, *fragments)``: stderr ends in ``<prog>: error: ...`` holding every fragment, with
    no traceback (ebm_refine.utils.cli's convention); returns that line."""
    def check(stderr: str, prog: str, *fragments: str) -> str:
        assert "Traceback" not in stderr, stderr
        line = stderr.strip().splitlines()[-1]
        assert line.startswith(f"{prog}: error: "), stderr
        for fragment in fragments:
            assert fragment in line, (fragment, line)
        return line

    return check


def mobilenet_weights_path() -> Path:
    """The project's ImageNet MobileNetV2 file: ``$EBM_WEIGHTS_DIR`` or ``<repo>/../shared/weights``."""
    return Path(os.environ.get("EBM_WEIGHTS_DIR", REPO.parent / "shared" / "weights")) / "mobilenet_v2_imagenet_features.pth"


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    path = mobilenet_weights_path()
    if not path.is_file():
        pytest.skip(f"MobileNetV2 ImageNet weights not found at {path} (set EBM_WEIGHTS_DIR)")
    return path


@pytest.fixture(scope="session")
def small_seq_cfg():
    """A small, easy generated tracking sequence's settings (tests/data and tests/tracking use it)."""
    from ebm_refine.data.synthetic_tracking import SyntheticConfig

    return SyntheticConfig(height=120, width=160, num_frames=12, num_occluders=(0, 0), distractor_prob=0.0,
                           min_size=0.25, max_size=0.35, max_speed=2.0)


@pytest.fixture(scope="session")
def small_seq(small_seq_cfg):
    from ebm_refine.data.synthetic_tracking import SyntheticSequence

    return SyntheticSequence(3, small_seq_cfg)
