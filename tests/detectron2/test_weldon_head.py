"""WeldonEnergyHead: WELDON top-k / bottom-k pooling of region scores, registry, gradients, fused path."""
import math
import re

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ebm_refine.core import MultiLevelBoxPooler, refine_boxes
from ebm_refine.detectron2 import ConfigValueError, WeldonEnergyHead, freeze_detector
from ebm_refine.detectron2.energy_head import ENERGY_HEAD_REGISTRY, weldon_pool

from d2_helpers import small_cfg

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
WELDON = ["MODEL.EBM.HEAD.NAME", "WeldonEnergyHead", "MODEL.EBM.HEAD.WELDON_HIDDEN", "16"]


def _head(channels=4, hidden=8, kmax=3, kmin=2, alpha=0.7, num_classes=3, agnostic=False, seed=0):
    torch.manual_seed(seed)
    head = WeldonEnergyHead(input_shape=ShapeSpec(channels=channels, height=7, width=7), hidden_dim=hidden,
                            kmax=kmax, kmin=kmin, alpha=alpha, num_classes=num_classes,
                            cls_agnostic=agnostic).double().eval()
    with torch.no_grad():  # scores large enough that boxes move by pixels
        head.score.weight.normal_(std=0.5)
        head.score.bias.normal_(std=0.1)
    return head


def _scene(seed, channels=4, num_boxes=6, height=96, width=128):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, channels, -(-height // s), -(-width // s), generator=g, dtype=torch.float64)
             for s in (4, 8, 16, 32)]
    xy = torch.rand(num_boxes, 2, generator=g, dtype=torch.float64) * torch.tensor([width * 0.6, height * 0.6])
    wh = 10 + torch.rand(num_boxes, 2, generator=g, dtype=torch.float64) * torch.tensor([width * 0.4, height * 0.4])
    boxes = torch.cat([xy, xy + wh], 1)
    image = torch.arange(num_boxes) % 2
    return feats, boxes, image


def test_weldon_pool_on_a_hand_made_grid():
    # A 3 x 3 grid of cell scores 1..9 (row-major) and its mirror image.
    s = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8, 9], [9.0, 8, 7, 6, 5, 4, 3, 2, 1]], requires_grad=True)
    f = weldon_pool(s, kmax=2, kmin=3, alpha=0.5)
    torch.testing.assert_close(f, torch.tensor([8.5 + 0.5 * 2.0, 8.5 + 0.5 * 2.0]))  # (9+8)/2 + 0.5 (1+2+3)/3
    f[0].backward()
    torch.testing.assert_close(s.grad[0], torch.tensor([0.5 / 3] * 3 + [0.0] * 4 + [0.5, 0.5]))
    assert weldon_pool(s, kmax=1, kmin=0, alpha=3.0).tolist() == [9.0, 9.0]  # kmin 0: max pooling only
    assert weldon_pool(s, kmax=9, kmin=9, alpha=1.0).tolist() == [10.0, 10.0]  # mean + mean
    torch.testing.assert_close(weldon_pool(s, kmax=4, kmin=2, alpha=0.0), torch.tensor([7.5, 7.5]))


def test_head_region_scores_are_the_cells_and_pick_the_class():
    # No hidden layer, one channel, per-class weights (1, -2) and biases (0, 1): cell scores are known.
    head = WeldonEnergyHead(input_shape=ShapeSpec(channels=1, height=3, width=3), hidden_dim=0, kmax=2, kmin=1,
                            alpha=1.0, num_classes=2, cls_agnostic=False)
    with torch.no_grad():
        head.score.weight.copy_(torch.tensor([[1.0], [-2.0]]))
        head.score.bias.copy_(torch.tensor([0.0, 1.0]))
    pooled = torch.arange(1.0, 10.0).view(1, 1, 3, 3).repeat(2, 1, 1, 1)
    classes = torch.tensor([0, 1])
    scores = head.region_scores(pooled, classes)
    assert scores.shape == (2, 9)
    torch.testing.assert_close(scores[0], torch.arange(1.0, 10.0))
    torch.testing.assert_close(scores[1], 1.0 - 2.0 * torch.arange(1.0, 10.0))
    # class 0: (9+8)/2 + 1 = 9.5; class 1: cells -1..-17, top (-1-3)/2 = -2, bottom -17: -19.
    torch.testing.assert_close(head(pooled, classes), torch.tensor([9.5, -19.0]))
    with pytest.raises(ValueError, match="needs the classes"):
        head(pooled)
    with pytest.raises(ValueError, match="9 cells"):
        head(torch.zeros(2, 1, 4, 4), classes)


@pytest.mark.parametrize("agnostic,hidden", [(False, 8), (True, 0)])
def test_shapes_and_parameter_count(agnostic, hidden):
    head = _head(channels=4, hidden=hidden, agnostic=agnostic)
    pooled = torch.randn(5, 4, 7, 7, dtype=torch.float64)
    classes = torch.tensor([0, 1, 2, 1, 0])
    assert head.region_scores(pooled, classes).shape == (5, 49)
    assert head(pooled, classes).shape == (5,)
    k = 1 if agnostic else 3
    expected = (4 * 8 + 8 + 8 * k + k) if hidden else (4 * k + k)
    assert sum(p.numel() for p in head.parameters()) == expected
    if agnostic:  # one score for every class: classes change nothing
        torch.testing.assert_close(head(pooled, classes), head(pooled))


def test_bad_k_and_alpha_are_clear_errors(synthetic_names, tmp_path):
    for key, value, rule in [("WELDON_KMAX", "0", r"an integer in \[1, 49\]"),
                             ("WELDON_KMAX", "50", r"an integer in \[1, 49\]"),
                             ("WELDON_KMIN", "-1", r"an integer in \[0, 49\]"),
                             ("WELDON_ALPHA", "-0.5", "a finite number >= 0"),
                             ("WELDON_HIDDEN", "-3", "an integer >= 0")]:
        with pytest.raises(ConfigValueError, match=f"MODEL.EBM.HEAD.{key} must be {rule}"):
            build_model(small_cfg(tmp_path, extra=[*WELDON, f"MODEL.EBM.HEAD.{key}", value]))
    with pytest.raises(ValueError, match=re.escape("1 <= kmax <= 49")):
        _head(kmax=60)


def _batch(cfg, n=2):
    mapper = DatasetMapper(cfg, is_train=True)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])[:n]]


def test_registered_and_trains_jointly_with_gradients(synthetic_names, tmp_path):
    assert ENERGY_HEAD_REGISTRY.get("WeldonEnergyHead") is WeldonEnergyHead
    torch.manual_seed(0)
    cfg = small_cfg(tmp_path, extra=[*WELDON, "MODEL.EBM.FREEZE_DETECTOR", "False"])
    model = build_model(cfg)
    head = model.roi_heads.energy_head
    assert isinstance(head, WeldonEnergyHead) and (head.kmax, head.kmin, head.alpha) == (5, 5, 1.0)
    assert head.score.out_features == cfg.MODEL.ROI_HEADS.NUM_CLASSES and head.hidden.out_features == 16
    model.train()
    with EventStorage():
        losses = model(_batch(cfg))
    assert {"loss_cls", "loss_box_reg", "loss_ebm"} <= set(losses)
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    assert head.score.weight.grad.abs().sum() > 0 and head.hidden.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("loss", ["ml_is", "nce_plus"])
def test_frozen_detector_trains_only_the_weldon_head(synthetic_names, tmp_path, loss):
    cfg = small_cfg(tmp_path, extra=[*WELDON, "MODEL.EBM.LOSS", loss, "MODEL.EBM.HEAD.CLS_AGNOSTIC", "True"])
    model = build_model(cfg)
    freeze_detector(model)
    assert model.roi_heads.energy_head.score.out_features == 1
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("roi_heads.energy_head.") for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    before = model.roi_heads.energy_head.score.weight.detach().clone()
    model.train()
    data = _batch(cfg)
    with EventStorage():
        for _ in range(2):
            loss_ebm = model(data)["loss_ebm"]
            assert math.isfinite(loss_ebm.item())
            opt.zero_grad()
            loss_ebm.backward()
            opt.step()
    assert not torch.equal(model.roi_heads.energy_head.score.weight, before)


@pytest.mark.parametrize("agnostic,hidden,kmin", [(False, 8, 2), (True, 0, 0), (False, 8, 49)])
def test_fused_path_equals_autograd(agnostic, hidden, kmin):
    head = _head(hidden=hidden, kmin=kmin, agnostic=agnostic)
    feats, boxes, image = _scene(1)
    classes = torch.tensor([0, 1, 2, 2, 1, 0])
    pooler = MultiLevelBoxPooler(7, SCALES)
    rois = torch.cat([image.double()[:, None], boxes], 1)
    groups = pooler.level_groups(rois)

    def autograd_energy(b):
        return head(pooler(feats, torch.cat([image.double()[:, None], b], 1), groups), classes)

    fused = head.box_energy(pooler.prepare(feats, rois, groups), classes)
    b = boxes.clone().requires_grad_(True)
    f_ref = autograd_energy(b)
    (g_ref,) = torch.autograd.grad(f_ref.sum(), b)
    f, g = fused(boxes)
    torch.testing.assert_close(f, f_ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)
    assert g.abs().sum() > 0
    torch.testing.assert_close(fused.value(boxes), f)
    # Refinement along both paths takes the same steps to the same boxes.
    step = dict(num_steps=8, step_size_center=0.02, step_size_size=0.02)
    ref = refine_boxes(autograd_energy, boxes, **step)
    res = refine_boxes(fused, boxes, returns_grad=True, **step)
    assert (ref.boxes - boxes).abs().max() > 0.1  # boxes move
    assert torch.equal(res.num_accepted, ref.num_accepted)
    assert (res.boxes - ref.boxes).abs().max() < 1e-6


def test_a_subclass_with_its_own_forward_falls_back_to_autograd():
    class Doubled(WeldonEnergyHead):
        def forward(self, pooled, classes=None):
            return 2 * super().forward(pooled, classes)

    head = Doubled(input_shape=ShapeSpec(channels=4, height=7, width=7), hidden_dim=0, kmax=1, kmin=0, alpha=0.0,
                   num_classes=1, cls_agnostic=True)
    feats, boxes, _ = _scene(2)
    assert head.box_energy(MultiLevelBoxPooler(7, SCALES).prepare(feats, [boxes[:3], boxes[3:]])) is None


def test_model_refines_with_the_fused_and_the_autograd_path_alike(synthetic_names, tmp_path):
    outs = []
    for fused in ("True", "False"):
        torch.manual_seed(0)
        cfg = small_cfg(tmp_path, extra=[*WELDON, "MODEL.EBM.REFINE.FUSED", fused,
                                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
        model = build_model(cfg).eval()
        with torch.no_grad():
            model.roi_heads.energy_head.score.weight.normal_(std=0.5)
            mapper = DatasetMapper(cfg, is_train=False)
            outs.append(model([mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:2]]))
    for a, b in zip(*outs):
        inst_a, inst_b = a["instances"], b["instances"]
        assert len(inst_a) > 0 and inst_a.has("pred_boxes_unrefined")
        assert (inst_a.pred_boxes.tensor - inst_a.pred_boxes_unrefined.tensor).abs().max() > 0  # refined
        torch.testing.assert_close(inst_a.pred_boxes.tensor, inst_b.pred_boxes.tensor, rtol=0, atol=1e-3)
