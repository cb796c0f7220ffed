"""EBM refinement on a case where the energy is trained: IoU goes up, energy never goes down."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ebm_refine.core.boxes import box_iou_aligned, decode_relative
from ebm_refine.core.refine import refine_boxes
from ebm_refine.tracking.tracker import load_tracker_params
from ebm_refine.tracking.tracker.box_estimation import estimate_box, scale_log_prior

from tracker_helpers import fit_tiny_estimator, target_crop


@pytest.fixture(scope="module")
def trained(small_seq):
    """A tiny estimator fitted with ML-IS to one synthetic (reference, test) pair."""
    net, (ref_f, ref_box), (test_f, test_box) = fit_tiny_estimator(small_seq, 100)
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
    test_img, gt = target_crop(small_seq, 2)
    f = tiny_net.extract(test_img)
    with torch.no_grad():
        tf = tiny_net.estimator.test_features(f, tiny_net.estimator.reference(f, gt[None]))
    init = decode_relative(torch.randn(16, 4, generator=torch.Generator().manual_seed(2)) * 0.2, gt[None])
    res = refine_boxes(lambda b: tiny_net.estimator.score(tf, b[None])[0], init, num_steps=5,
                       step_size_center=1e-2, step_size_size=1e-2)
    assert (res.scores >= res.initial_scores).all()


def test_scale_log_prior_values():
    prev = torch.tensor([40.0, 20.0])
    sizes = torch.tensor([[40.0, 20.0], [80.0, 20.0], [20.0, 40.0]])
    np.testing.assert_allclose(scale_log_prior(sizes, prev, 0.5).tolist(),
                               [0.0, -np.log(2) ** 2 / 0.5, -2 * np.log(2) ** 2 / 0.5], rtol=1e-6)
    assert scale_log_prior(sizes, prev, None).tolist() == [0.0, 0.0, 0.0]


def test_scale_prior_ranks_by_the_log_posterior(tiny_net, small_seq):
    """The top-k are chosen by f + the log-prior of the size change: a narrow prior picks the candidate of the
    previous size whatever f says; no prior ranks by f alone (the paper)."""
    test_img, gt = target_crop(small_seq, 2)
    f = tiny_net.extract(test_img)
    modulation = tiny_net.estimator.reference(f, gt[None])
    c = (gt[:2] + gt[2:]) / 2
    size = gt[2:] - gt[:2]
    scales = torch.tensor([0.5, 0.7, 1.0, 1.4, 2.0])
    boxes = torch.cat([c - size * scales[:, None] / 2, c + size * scales[:, None] / 2], dim=1)
    cfg = {**load_tracker_params("ebm")["box_refinement"], "num_steps": 1, "step_size_center": 0.0,
           "step_size_size": 0.0, "top_k": 1, "feature_window": None}
    plain = estimate_box(tiny_net.estimator, f, modulation, c, size, dict(cfg, scale_prior_sigma=None), boxes=boxes)
    best_f = int(plain.scores.argmax())
    assert best_f != 2, plain.scores  # f alone prefers another size: the prior has something to overrule
    assert plain.box[2:].tolist() == pytest.approx((size * scales[best_f]).tolist(), rel=1e-5)
    narrow = estimate_box(tiny_net.estimator, f, modulation, c, size, dict(cfg, scale_prior_sigma=1e-3), boxes=boxes)
    assert narrow.box[2:].tolist() == pytest.approx(size.tolist(), rel=1e-5)
    assert torch.equal(narrow.scores, plain.scores)  # the reported energies stay f
    # A wide prior changes nothing.
    wide = estimate_box(tiny_net.estimator, f, modulation, c, size, dict(cfg, scale_prior_sigma=1e6), boxes=boxes)
    assert torch.equal(wide.box, plain.box)
