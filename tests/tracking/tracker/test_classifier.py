"""The online target classifier on hand-made feature maps."""
from __future__ import annotations

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
