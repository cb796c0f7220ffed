"""Backbones, the energy box estimator and network files (the loss: tests/tracking/train/test_loss.py)."""
from __future__ import annotations

import pytest
import torch

from ebm_refine.models.imagenet import WeightsError
from ebm_refine.tracking.models import Backbone, EnergyBoxEstimator, load_net, save_net


@pytest.mark.parametrize("name,channels", [("resnet18", (128, 256)), ("resnet50", (512, 1024)),
                                           ("mobilenet_v2", (32, 96))])
def test_backbone_levels(name, channels):
    bb = Backbone(name, weights=None)
    out = bb(torch.rand(1, 3, 64, 96) * 255)
    assert out["layer2"].shape == (1, channels[0], 8, 12)
    assert out["layer3"].shape == (1, channels[1], 4, 6)
    assert bb.out_channels == {"layer2": channels[0], "layer3": channels[1]}
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training  # frozen backbones never leave eval mode


def test_frozen_backbone_folds_batchnorm_exactly():
    torch.manual_seed(1)
    plain = Backbone("resnet18", frozen=False).eval()
    torch.manual_seed(1)
    folded = Backbone("resnet18", frozen=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        a, b = plain(x), folded(x)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4 * float(a[k].abs().max()))


def test_backbone_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        Backbone("vgg16")
    with pytest.raises(WeightsError, match="missing.pth not found"):
        Backbone("resnet18", weights=str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="lack"):
        Backbone("resnet18", weights=str(tmp_path / "partial.pth"))


def test_mobilenet_local_weights(mobilenet_weights):
    bb = Backbone("mobilenet_v2", weights=str(mobilenet_weights))
    out = bb(torch.rand(1, 3, 64, 64) * 255)
    assert torch.isfinite(out["layer3"]).all() and out["layer3"].abs().sum() > 0


def _feats(b, c3=8, c4=16, h=16):
    return {"layer2": torch.randn(b, c3, h, h), "layer3": torch.randn(b, c4, h // 2, h // 2)}


def test_estimator_scores_and_box_gradients():
    torch.manual_seed(0)
    est = EnergyBoxEstimator(in_dims=(8, 16), pred_dims=(8, 8), inter_dims=(16, 16)).eval()
    feats = _feats(2)
    ref = torch.tensor([[40.0, 40.0, 80.0, 90.0], [30.0, 20.0, 60.0, 70.0]])
    boxes = torch.tensor([[[40.0, 40.0, 80.0, 90.0], [35.0, 42.0, 85.0, 88.0]],
                          [[30.0, 20.0, 60.0, 70.0], [25.0, 25.0, 70.0, 60.0]]], requires_grad=True)
    tf = est.test_features(feats, est.reference(feats, ref))
    s = est.score(tf, boxes)
    assert s.shape == (2, 2)
    (g,) = torch.autograd.grad(s.sum(), boxes)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # Rows are independent: scoring a box alone gives the same value (the refiner relies on it).
    alone = est.score((tf[0][1:], tf[1][1:]), boxes[1:, 1:].detach())
    assert torch.allclose(alone[0, 0], s[1, 1], atol=1e-5)


def test_save_and_load_net(tmp_path, tiny_net):
    path = str(tmp_path / "net.pth")
    save_net(path, tiny_net)
    loaded = load_net(path)
    x = torch.rand(1, 3, 64, 64) * 255
    fa, fb = tiny_net.extract(x), loaded.extract(x)
    assert torch.allclose(fa["layer3"], fb["layer3"])
    box = torch.tensor([[16.0, 16.0, 48.0, 40.0]])
    with torch.no_grad():
        a = tiny_net.estimator(fa, box, fa, box[None])
        b = loaded.estimator(fb, box, fb, box[None])
    assert torch.allclose(a, b)
    with pytest.raises(FileNotFoundError, match="train_tracker"):
        load_net(str(tmp_path / "nope.pth"))


def test_network_files_with_pre_rename_loss_names_still_load(tmp_path, tiny_net):
    """Files written before issue 17 store loss "beta" and method "iou"; they load with today's names."""
    path = str(tmp_path / "old.pth")
    save_net(path, tiny_net)
    state = torch.load(path, weights_only=True)
    loss = state["config"]["loss"]
    loss["method"], loss["beta"] = "iou", 0.2
    del loss["nce_beta"]
    torch.save(state, path)
    cfg = load_net(path).config["loss"]
    assert cfg["method"] == "iou_confidence" and cfg["nce_beta"] == 0.2 and "beta" not in cfg


def _trained_like_estimator():
    """A small estimator whose hidden units are partly active (random init leaves most ReLUs on)."""
    torch.manual_seed(3)
    est = EnergyBoxEstimator(in_dims=(8, 16), pred_dims=(8, 8), inter_dims=(16, 16)).eval()
    feats = {"layer2": torch.randn(1, 8, 32, 32), "layer3": torch.randn(1, 16, 16, 16)}
    with torch.no_grad():
        mod = est.reference(feats, torch.tensor([[100.0, 90.0, 160.0, 170.0]]))
    return est, feats, mod


def test_fused_box_energy_equals_autograd_through_score():
    est, feats, mod = _trained_like_estimator()
    with torch.no_grad():
        tf = est.test_features(feats, mod)
    boxes = torch.tensor([[100.0, 90.0, 160.0, 170.0], [95.3, 97.1, 171.2, 160.4], [2.0, 3.0, 60.5, 41.0],
                          [200.0, 180.0, 262.0, 250.0]])  # the last one hangs over the border
    b = boxes.clone().requires_grad_(True)
    s = est.score(tf, b[None])[0]
    (g,) = torch.autograd.grad(s.sum(), b)
    s2, g2 = est.box_energy(tf)(boxes)
    torch.testing.assert_close(s2, s.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g2, g, rtol=1e-4, atol=1e-7)
    assert g.abs().max() > 1e-4


def test_test_features_on_a_window_are_exact_inside_it():
    est, feats, mod = _trained_like_estimator()
    boxes = torch.tensor([[100.0, 90.0, 160.0, 170.0], [95.3, 97.1, 171.2, 160.4]])
    region = [80.0, 70.0, 190.0, 190.0]
    with torch.no_grad():
        full = est.test_features(feats, mod)
        win = est.test_features(feats, mod, region)
        corner = est.test_features(feats, mod, [-30.0, -20.0, 40.0, 50.0])  # clipped at the map's border
    assert win.level3.shape[-1] < full.level3.shape[-1] and win.offset == (64.0, 48.0)
    assert corner.offset == (0.0, 0.0)
    for tf in (win, corner):
        assert tf.level3.shape[-2:] == (2 * tf.level4.shape[-2], 2 * tf.level4.shape[-1])
    torch.testing.assert_close(est.score(win, boxes[None]), est.score(full, boxes[None]), rtol=1e-5, atol=1e-6)
    s_win, g_win = est.box_energy(win)(boxes)
    s_full, g_full = est.box_energy(full)(boxes)
    torch.testing.assert_close(s_win, s_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_win, g_full, rtol=1e-4, atol=1e-7)
    small = torch.tensor([[0.0, 0.0, 30.0, 30.0]])
    torch.testing.assert_close(est.score(corner, small[None]), est.score(full, small[None]), rtol=1e-5, atol=1e-6)
    # The window's margin is read from the test branches: two 3x3 convolutions per level reach 2 cells.
    from ebm_refine.tracking.models.box_estimator import _receptive_radius

    assert _receptive_radius(est.test_conv3) == 2 and _receptive_radius(est.test_conv4) == 2
    assert _receptive_radius(torch.nn.Conv2d(1, 1, 5, padding=4, dilation=2)) == 4
