"""The online target classifier on hand-made feature maps."""
from __future__ import annotations

import pytest
import torch

from ebm_refine.tracking.tracker.classifier import OnlineClassifier

CFG = {"compressed_dim": 8, "filter_size": 3, "filter_reg": 0.05, "cg_iterations_init": 60,
       "cg_iterations_update": 10}


def _scene(positions, c=12, h=18, w=18, seed=0, noise=0.3):
    """Noise features with a fixed 3x3 'target' pattern stamped at each (x, y) cell position."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.randn(c, 3, 3, generator=torch.Generator().manual_seed(99)) * 2.0
    x = torch.randn(1, c, h, w, generator=g) * noise
    for px, py in positions:
        x[0, :, py - 1:py + 2, px - 1:px + 2] += pattern
    return x


def _fit(seed=0):
    clf = OnlineClassifier(CFG)
    feats = torch.cat([_scene([(9, 9)], seed=seed + k) for k in range(4)])
    clf.initialize(feats, torch.tensor([[9.0, 9.0]] * 4), torch.tensor([1.0, 1.0]))
    return clf


def test_classifier_follows_the_target():
    clf = _fit()
    s = clf.scores(_scene([(5, 12)], seed=10))[0]
    loc = clf.localize(s, torch.tensor([3.0, 3.0]), torch.tensor([9.0, 9.0]))
    assert loc.flag in ("normal", "hard_negative")
    assert torch.allclose(loc.center, torch.tensor([5.0, 12.0]), atol=0.6)
    assert loc.score > 0.5


def test_classifier_update_keeps_working():
    clf = _fit()
    for k in range(5):
        clf.update(_scene([(9 + k, 9)], seed=20 + k), torch.tensor([9.0 + k, 9.0]), 0.1)
    loc = clf.localize(clf.scores(_scene([(14, 9)], seed=40))[0], torch.tensor([3.0, 3.0]), torch.tensor([13.0, 9.0]))
    assert torch.allclose(loc.center, torch.tensor([14.0, 9.0]), atol=0.6)


def test_target_absent_is_not_found():
    clf = _fit()
    loc = clf.localize(clf.scores(_scene([], seed=50))[0], torch.tensor([3.0, 3.0]), torch.tensor([9.0, 9.0]))
    assert loc.flag == "not_found"
    assert torch.equal(loc.center, torch.tensor([9.0, 9.0]))  # the previous position is kept


def test_two_identical_targets_are_uncertain_and_the_nearer_one_wins():
    clf = _fit()
    s = clf.scores(_scene([(4, 4), (14, 14)], seed=60))[0]
    loc = clf.localize(s, torch.tensor([3.0, 3.0]), torch.tensor([12.0, 12.0]))
    assert loc.flag == "uncertain"
    assert torch.allclose(loc.center, torch.tensor([14.0, 14.0]), atol=0.6)


@pytest.mark.parametrize("d,h,w,k", [(64, 18, 18, 5), (3, 7, 11, 3), (4, 3, 2, 5), (2, 1, 6, 5), (5, 9, 4, 1)])
def test_structured_gram_equals_the_im2col_product(d, h, w, k):
    """The classifier's Gram update (shift structure of im2col) is U^T U in row-block order."""
    import torch.nn.functional as F

    from ebm_refine.tracking.tracker.classifier import accumulate_im2col_gram

    g = torch.Generator().manual_seed(d * 100 + h)
    z = torch.randn(d, h, w, generator=g, dtype=torch.float64)
    u = F.unfold(z[None], k, padding=k // 2)[0].T  # (H W, D k k), columns (d, a, b)
    expected = (u.T @ u).view(d, k, k, d, k, k).permute(1, 0, 2, 4, 3, 5).reshape(d * k * k, -1)
    for structured in (True, False):
        gram = torch.full((d * k * k,) * 2, 2.0, dtype=torch.float64)
        accumulate_im2col_gram(gram, z, k, 0.25, structured)
        torch.testing.assert_close(gram, 2.0 + 0.25 * expected, rtol=1e-12, atol=1e-12)
