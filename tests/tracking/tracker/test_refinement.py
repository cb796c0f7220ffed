"""EBM refinement on a case where the energy is trained: IoU goes up, energy never goes down."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebm_refine.core.boxes import box_iou_aligned, decode_relative
from ebm_refine.core.refine import refine_boxes
from ebm_refine.tracking.models import TrackerNet
from ebm_refine.tracking.processing import image_to_tensor, sample_patch

from tracker_helpers import TINY_NET


def _crop(seq, i, size=128):
    x, y, w, h = seq.boxes[i]
    crop, tf = sample_patch(seq.frame(i), (x + w / 2, y + h / 2), float(np.sqrt(w * h)) * 4.0, size)
    box = torch.tensor(tf.boxes_to_crop(np.array([x, y, x + w, y + h])), dtype=torch.float32)
    return image_to_tensor(crop), box


@pytest.fixture(scope="module")
def trained(small_seq):
    """A tiny estimator fitted with ML-IS to one synthetic (reference, test) pair."""
    torch.manual_seed(0)
    net = TrackerNet(dict(TINY_NET, loss={"method": "ml_is", "sigmas": [0.05, 0.5], "num_samples": 32}))
    ref_img, ref_box = _crop(small_seq, 0)
    test_img, test_box = _crop(small_seq, 3)
    ref_f, test_f = net.extract(ref_img), net.extract(test_img)
    opt = torch.optim.Adam(net.estimator.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    from ebm_refine.tracking.train.loss import box_estimation_loss

    net.train()
    for _ in range(100):
        loss = box_estimation_loss(net.estimator, ref_f, ref_box[None], test_f, test_box[None], net.config["loss"], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        tf = net.estimator.test_features(test_f, net.estimator.reference(ref_f, ref_box[None]))
    return net, tf, test_box


def test_refinement_improves_iou_of_perturbed_boxes(trained):
    net, tf, gt = trained
    g = torch.Generator().manual_seed(1)
    rel = torch.randn(32, 4, generator=g) * torch.tensor([0.08, 0.08, 0.1, 0.1])
    init = decode_relative(rel, gt[None])

    def energy(b):
        return net.estimator.score(tf, b[None])[0]

    # An energy fitted to a single image is far sharper than one trained on many sequences (gradients of
    # 1e4-1e5 per relative unit instead of ~1e2), so the paper's fixed step sizes would overshoot; scale
    # them so that the first step moves a typical box by ~2% of its size.
    u = torch.zeros_like(init, requires_grad=True)
    (grad,) = torch.autograd.grad(energy(decode_relative(u, init)).sum(), u)
    lam_c = 0.02 / float(grad[:, :2].abs().median())
    lam_s = 0.02 / float(grad[:, 2:].abs().median())
    res = refine_boxes(energy, init, num_steps=10, step_size_center=lam_c, step_size_size=lam_s)
    before = box_iou_aligned(init, gt[None]).mean()
    after = box_iou_aligned(res.boxes, gt[None]).mean()
    assert (res.scores >= res.initial_scores).all()
    assert float(after) > float(before) + 0.05, (float(before), float(after))
    # The ground truth scores higher than the typical perturbed box.
    with torch.no_grad():
        assert float(energy(gt[None])[0]) > float(res.initial_scores.median())


def test_refiner_never_lowers_the_energy_of_an_untrained_net(tiny_net, small_seq):
    test_img, gt = _crop(small_seq, 2)
    f = tiny_net.extract(test_img)
    with torch.no_grad():
        tf = tiny_net.estimator.test_features(f, tiny_net.estimator.reference(f, gt[None]))
    init = decode_relative(torch.randn(16, 4, generator=torch.Generator().manual_seed(2)) * 0.2, gt[None])
    res = refine_boxes(lambda b: tiny_net.estimator.score(tf, b[None])[0], init, num_steps=5,
                       step_size_center=1e-2, step_size_size=1e-2)
    assert (res.scores >= res.initial_scores).all()
