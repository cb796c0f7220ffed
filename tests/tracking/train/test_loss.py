"""The box estimator's training loss (ebm_refine.tracking.train.loss)."""
from __future__ import annotations

import pytest
import torch

from ebm_refine.tracking.models import TrackerNet
from ebm_refine.tracking.train.loss import BoxEstimationActor, box_estimation_loss

from tracker_helpers import TINY_NET


@pytest.mark.parametrize("method", ["ml_is", "iou_confidence", "nce", "kld_is"])
def test_losses_train_only_the_estimator(method):
    net = TrackerNet(dict(TINY_NET, loss={"method": method, "sigmas": [0.05, 0.5], "num_samples": 8,
                                          "label_sigma": 0.05}))
    net.train()
    imgs = torch.rand(2, 3, 64, 64) * 255
    boxes = torch.tensor([[20.0, 20.0, 44.0, 40.0], [10.0, 12.0, 30.0, 50.0]])
    loss = BoxEstimationActor(net)(imgs, boxes, imgs, boxes, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.estimator.parameters())
    assert all(p.grad is None for p in net.backbone.parameters())


def test_loss_ignores_degenerate_ground_truth(tiny_net):
    imgs = torch.rand(2, 3, 64, 64) * 255
    good = torch.tensor([[20.0, 20.0, 44.0, 40.0]])
    bad = torch.tensor([[20.0, 20.0, 20.0, 40.0]])  # zero width
    feats = tiny_net.extract(imgs)
    cfg = dict(tiny_net.config["loss"])
    mixed = box_estimation_loss(tiny_net.estimator, feats, torch.cat([good, bad]), feats, torch.cat([good, bad]),
                                cfg, torch.Generator().manual_seed(0))
    assert torch.isfinite(mixed) and mixed != 0
    none = box_estimation_loss(tiny_net.estimator, feats, torch.cat([bad, bad]), feats, torch.cat([bad, bad]),
                               cfg, torch.Generator().manual_seed(0))
    assert float(none) == 0.0
    none.backward()  # an all-invalid batch still has a graph


def test_part_weight_draws_the_ml_is_samples_from_the_part_proposal(tiny_net):
    from ebm_refine.core.objectives import ebm_loss
    from ebm_refine.core.proposal import BoxProposal

    imgs = torch.rand(2, 3, 64, 64) * 255
    boxes = torch.tensor([[20.0, 20.0, 44.0, 40.0], [10.0, 12.0, 30.0, 50.0]])
    feats = tiny_net.extract(imgs)
    cfg = dict(tiny_net.config["loss"], method="ml_is", num_samples=16, part_weight=0.25, part_sigma=0.1)
    loss = box_estimation_loss(tiny_net.estimator, feats, boxes, feats, boxes, cfg, torch.Generator().manual_seed(5))
    s = BoxProposal(cfg["sigmas"], part_weight=0.25, part_sigma=0.1).sample(
        boxes, 16, include_reference=True, generator=torch.Generator().manual_seed(5))
    scores = tiny_net.estimator(feats, boxes, feats, s.boxes)
    expected = ebm_loss("ml_is", scores, s.log_q)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    plain = box_estimation_loss(tiny_net.estimator, feats, boxes, feats, boxes, dict(cfg, part_weight=0.0),
                                torch.Generator().manual_seed(5))
    assert abs(float(plain) - float(loss)) > 1e-3  # the part samples change the estimate of log Z


@pytest.mark.parametrize("loss, message", [
    ({"part_weight": 1.0}, r"net\.loss\.part_weight: 1\.0 must be a number in \[0, 1\)"),
    ({"part_sigma": 0}, r"net\.loss\.part_sigma: 0 must be a number > 0"),
    ({"method": "iou_confidence", "part_weight": 0.2}, r"net\.loss\.part_weight: part samples are for"),
])
def test_part_config_errors_name_the_key(loss, message):
    from ebm_refine.tracking.train import check_train_config
    from ebm_refine.utils import UserError

    cfg = {"net": dict(TINY_NET, loss=dict(TINY_NET.get("loss", {}), **loss)),
           "data": {"sources": [{"type": "synthetic", "num_sequences": 2}]}}
    with pytest.raises(UserError, match=message):
        check_train_config(cfg)
