"""Fixtures of the tracker tests: a tiny random-init network, small synthetic sequences, thread settings."""
from __future__ import annotations

import pytest
import torch

from ebm_refine.tracking.synthetic import SyntheticConfig, SyntheticSequence

from tracker_helpers import TINY_NET, TINY_TRACKER  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Two OpenMP threads on a shared 2-core machine are ~10x slower than one (spin-waiting). Session scope
    # so that module- and session-scoped fixtures (which train small models) run under it too.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_net():
    from ebm_refine.tracking.models import TrackerNet

    torch.manual_seed(0)
    return TrackerNet(TINY_NET).eval()


@pytest.fixture(scope="session")
def small_seq_cfg() -> SyntheticConfig:
    return SyntheticConfig(height=120, width=160, num_frames=12, num_occluders=(0, 0), distractor_prob=0.0,
                           min_size=0.25, max_size=0.35, max_speed=2.0)


@pytest.fixture(scope="session")
def small_seq(small_seq_cfg) -> SyntheticSequence:
    return SyntheticSequence(3, small_seq_cfg)

