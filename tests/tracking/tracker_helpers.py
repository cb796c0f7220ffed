"""Constants and helpers shared by the tracker tests (imported by name: tests/ has no packages)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
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


def target_crop(seq, i: int, size: int = 128):
    """Frame ``i`` of a generated sequence cropped around its target (4x its size): (1, 3, size, size) image
    tensor and the (4,) xyxy crop-pixel box."""
    from ebm_refine.tracking.processing import image_to_tensor, sample_patch

    x, y, w, h = seq.boxes[i]
    crop, tf = sample_patch(seq.frame(i), (x + w / 2, y + h / 2), float(np.sqrt(w * h)) * 4.0, size)
    box = torch.tensor(tf.boxes_to_crop(np.array([x, y, x + w, y + h])), dtype=torch.float32)
    return image_to_tensor(crop), box


def fit_tiny_estimator(seq, iterations: int):
    """A tiny estimator (TINY_NET, 32 ML-IS samples) fitted by Adam to one (frame 0, frame 3) pair of ``seq``:
    an energy that depends on the box, sharp on that pair. Returns the network in eval mode with no gradients
    left on it, and the pair as ((ref features, ref box), (test features, test box))."""
    from ebm_refine.tracking.models import TrackerNet
    from ebm_refine.tracking.train.loss import box_estimation_loss

    torch.manual_seed(0)
    net = TrackerNet(dict(TINY_NET, loss={"method": "ml_is", "sigmas": [0.05, 0.5], "num_samples": 32}))
    ref_img, ref_box = target_crop(seq, 0)
    test_img, test_box = target_crop(seq, 3)
    ref_f, test_f = net.extract(ref_img), net.extract(test_img)
    opt = torch.optim.Adam(net.estimator.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(iterations):
        loss = box_estimation_loss(net.estimator, ref_f, ref_box[None], test_f, test_box[None], net.config["loss"], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.zero_grad(set_to_none=True)
    return net.eval(), (ref_f, ref_box), (test_f, test_box)
