"""Constants and helpers shared by the tracker tests (imported by name: tests/ has no packages)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import torch

REPO = Path(__file__).resolve().parents[2]
MOBILENET_WEIGHTS = Path(os.environ.get("EBM_WEIGHTS_DIR", REPO.parent / "shared" / "weights")) / \
    "mobilenet_v2_imagenet_features.pth"

# Tiny estimator on a random-init ResNet-18: fast enough for CPU tests, same code paths as the real one.
TINY_NET = {
    "backbone": {"name": "resnet18", "weights": None, "frozen": True},
    "estimator": {"pred_dims": [8, 8], "inter_dims": [16, 16]},
    "loss": {"method": "ml_is", "sigmas": [0.05, 0.5], "num_samples": 16},
}


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread inside the block: two OpenMP threads on a shared 2-core machine spin-wait and run
    these tiny models ~10x slower than one."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


TINY_TRACKER = {"image_sample_size": 128,
                "classifier": {"compressed_dim": 16, "filter_size": 3, "cg_iterations_init": 20,
                               # random-init features give weak responses (~0.2); real ones ~0.5
                               "target_not_found_threshold": 0.1,
                               "augmentation": {"shifts": [[0.1, 0.1]], "rotations": [], "blur": []}}}
