"""The fused refinement fast path (prepared pyramid pooling + FCBoxEnergy) against autograd, and its count."""
import copy
import io
import pickle

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from fvcore.nn import FlopCountAnalysis

from ebm_refine.core import MultiLevelBoxPooler, refine_boxes
from ebm_refine.detectron2 import FCEnergyHead

from d2_helpers import small_cfg

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def _scene(g, height, width, channels, num_boxes, images=1, dtype=torch.float64):
    """Random P2-P5 maps and boxes of every size inside a height x width image."""
    feats = [torch.randn(images, channels, -(-height // s), -(-width // s), generator=g, dtype=dtype)
             for s in (4, 8, 16, 32)]
    xy = torch.rand(num_boxes, 2, generator=g, dtype=dtype) * torch.tensor([width * 0.7, height * 0.7], dtype=dtype)
    wh = 8 + torch.rand(num_boxes, 2, generator=g, dtype=dtype) ** 2 * torch.tensor([width, height], dtype=dtype) * 0.6
    boxes = torch.cat([xy, xy + wh], 1)
    image = torch.randint(0, images, (num_boxes,), generator=g)
    return feats, boxes, image


def _head(channels, num_fc, fc_dim, num_classes, agnostic, dtype=torch.float64, score_std=0.05, seed=0):
    torch.manual_seed(seed)
    head = FCEnergyHead(input_shape=ShapeSpec(channels=channels, height=7, width=7), num_fc=num_fc, fc_dim=fc_dim,
                        num_classes=num_classes, cls_agnostic=agnostic).to(dtype).eval()
    with torch.no_grad():  # scores large enough that boxes move by pixels
        head.score.weight.normal_(std=score_std)
    return head


def _energies(head, pooler, feats, boxes, image, classes):
    """(autograd energy, fused energy) of the same boxes, as EBMROIHeads.refine_instances builds them."""
    rois = torch.cat([image.to(boxes.dtype)[:, None], boxes], 1)
    groups = pooler.level_groups(rois)

    def autograd_energy(b):
        return head(pooler(feats, torch.cat([image.to(b.dtype)[:, None], b], 1), groups), classes)

    return autograd_energy, head.box_energy(pooler.prepare(feats, rois, groups), classes)


def _evaluate_both(head, pooler, feats, boxes, image, classes):
    """f and df/dbox by autograd and by the fast path: (f_ref, g_ref, f, g, the fused energy)."""
    autograd_energy, fused = _energies(head, pooler, feats, boxes, image, classes)
    b = boxes.clone().requires_grad_(True)
    f_ref = autograd_energy(b)
    (g_ref,) = torch.autograd.grad(f_ref.sum(), b)
    f, grad = fused(boxes)
    return f_ref.detach(), g_ref, f, grad, fused


@pytest.mark.parametrize("num_fc,agnostic", [(2, False), (1, True), (0, False)])
def test_fused_energy_and_box_gradient_equal_autograd(num_fc, agnostic):
    g = torch.Generator().manual_seed(0)
    feats, boxes, image = _scene(g, 96, 128, 8, 30, images=2)
    pooler = MultiLevelBoxPooler(7, SCALES, canonical_box_size=48)  # small boxes spread over all levels
    head = _head(8, num_fc, 32, 5, agnostic)
    classes = torch.randint(0, 5, (30,), generator=g)
    f_ref, g_ref, f, grad, fused = _evaluate_both(head, pooler, feats, boxes, image, classes)
    torch.testing.assert_close(f, f_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused.value(boxes), f)
    assert g_ref.abs().max() > 1e-3


@pytest.mark.slow
def test_real_size_refinement_gives_the_same_boxes_and_accepted_steps():
    # R50-FPN sizes: 800 x 1066 image, 256-channel P2-P5, fc 12544 -> 1024 -> 1024 -> 80 classes, 100 boxes,
    # T = 10. float64, so that the comparison is of the two computations, not of float32 rounding at
    # bilinear kinks (in float32 a sample within ~1e-5 px of a pixel centre can land on either side in
    # the two paths; docs/detection_speed.md gives the float32 numbers).
    g = torch.Generator().manual_seed(1)
    feats, boxes, image = _scene(g, 800, 1066, 256, 100)
    pooler = MultiLevelBoxPooler(7, SCALES)
    head = _head(256, 2, 1024, 80, False)
    classes = torch.randint(0, 80, (100,), generator=g)
    autograd_energy, fused = _energies(head, pooler, feats, boxes, image, classes)
    ref = refine_boxes(autograd_energy, boxes, num_steps=10)
    res = refine_boxes(fused, boxes, num_steps=10, returns_grad=True)
    assert (ref.boxes - boxes).abs().max() > 2.0 and ref.num_accepted.sum() > 500  # boxes really move
    assert (res.boxes - ref.boxes).abs().max() < 1e-3
    assert torch.equal(res.num_accepted, ref.num_accepted)
    torch.testing.assert_close(res.scores, ref.scores, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.initial_scores, ref.initial_scores, rtol=1e-9, atol=1e-9)


def test_float32_evaluation_matches_autograd_to_rounding():
    g = torch.Generator().manual_seed(2)
    feats, boxes, image = _scene(g, 200, 264, 32, 40, dtype=torch.float32)
    pooler = MultiLevelBoxPooler(7, SCALES)
    head = _head(32, 2, 128, 4, False, dtype=torch.float32)
    classes = torch.randint(0, 4, (40,), generator=g)
    f_ref, g_ref, f, grad, _ = _evaluate_both(head, pooler, feats, boxes, image, classes)
    torch.testing.assert_close(f, f_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, g_ref, rtol=1e-3, atol=1e-4 * g_ref.abs().max().item())


def _trained_small_model(tmp_path, iterations=30):
    """The embedded synthetic config at test size, trained jointly for a few iterations (energy head included)."""
    torch.manual_seed(0)
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.FREEZE_DETECTOR", "False", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                     "MODEL.EBM.REFINE.STEP_SIZE_CENTER", "0.02", "MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.02"])
    model = build_model(cfg).train()
    mapper = DatasetMapper(cfg, is_train=True)
    data = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        for it in range(iterations):
            losses = model(data[(2 * it) % len(data):(2 * it) % len(data) + 2])
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    return cfg, model.eval()


@pytest.mark.slow
def test_trained_synthetic_model_refines_the_same_with_both_paths(synthetic_names, tmp_path, monkeypatch):
    cfg, model = _trained_small_model(tmp_path)
    mapper = DatasetMapper(cfg, is_train=False)
    inputs = [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:4]]
    heads = model.roi_heads
    # The selection in refine_instances (MODEL.EBM.REFINE.FUSED), end to end in float32.
    calls = []
    box_energy = heads.energy_head.box_energy
    monkeypatch.setattr(heads.energy_head, "box_energy", lambda *a: calls.append(1) or box_energy(*a))
    outputs = {}
    for fused in (False, True):
        heads.refine_fused = fused
        with torch.no_grad():
            outputs[fused] = [o["instances"] for o in model(inputs)]
        assert len(calls) == int(fused)  # one fused energy per batch, none on the autograd path
    diffs = []
    for ref, res in zip(outputs[False], outputs[True]):
        assert len(ref) > 10 and torch.equal(ref.pred_boxes_unrefined.tensor, res.pred_boxes_unrefined.tensor)
        torch.testing.assert_close(res.pred_energies_unrefined, ref.pred_energies_unrefined, rtol=1e-4, atol=1e-5)
        diffs.append((res.pred_boxes.tensor - ref.pred_boxes.tensor).abs().amax(1))
    diffs = torch.cat(diffs)
    # float32: the same boxes up to rounding, but for a rare sample that rounds to the other side of a
    # pixel centre in the two paths (see the real-size test).
    assert (diffs < 1e-3).float().mean() >= 0.95 and diffs.median() < 1e-4

    # The same refinement in float64 on the trained model's features and detections: same boxes and
    # accepted steps.
    with torch.no_grad():
        heads.refine = False
        detections = model.inference(inputs, do_postprocess=False)
        model.double()
        features = model.backbone(model.preprocess_image(inputs).tensor)
    feats = [features[f] for f in heads.box_in_features]
    boxes = torch.cat([d.pred_boxes.tensor for d in detections]).double()
    classes = torch.cat([d.pred_classes for d in detections])
    image = torch.cat([torch.full_like(d.pred_classes, i) for i, d in enumerate(detections)])
    autograd_energy, fused = _energies(heads.energy_head, heads.energy_pooler, feats, boxes, image, classes)
    step = dict(num_steps=10, step_size_center=0.02, step_size_size=0.02)
    ref = refine_boxes(autograd_energy, boxes, **step)
    res = refine_boxes(fused, boxes, returns_grad=True, **step)
    assert ref.num_accepted.sum() > len(boxes) and (ref.boxes - boxes).abs().max() > 0.5  # boxes move
    assert torch.equal(res.num_accepted, ref.num_accepted)
    assert (res.boxes - ref.boxes).abs().max() < 1e-3
    torch.testing.assert_close(res.scores, ref.scores, rtol=1e-9, atol=1e-9)


def test_a_subclass_with_its_own_forward_falls_back_to_autograd():
    class Scaled(FCEnergyHead):
        def forward(self, pooled, classes=None):
            return 2 * super().forward(pooled, classes)

    head = Scaled(input_shape=ShapeSpec(channels=4, height=7, width=7), num_fc=1, fc_dim=8, num_classes=2,
                  cls_agnostic=True)
    feats, boxes, image = _scene(torch.Generator().manual_seed(3), 64, 64, 4, 3)
    assert head.box_energy(MultiLevelBoxPooler(7, SCALES).prepare(feats, [boxes])) is None


def test_reordered_first_weight_follows_in_place_updates():
    g = torch.Generator().manual_seed(4)
    feats, boxes, image = _scene(g, 64, 96, 4, 6)
    pooler = MultiLevelBoxPooler(7, SCALES)
    head = _head(4, 1, 16, 1, True)
    pool = pooler.prepare(feats, [boxes])
    before = head.box_energy(pool)(boxes)[0]
    with torch.no_grad():
        head.fcs[0].weight.mul_(-1.5)  # an optimizer step or load_state_dict: same storage, new version
    after = head.box_energy(pool)(boxes)[0]
    torch.testing.assert_close(after, head(pooler(feats, [boxes])).detach())
    assert not torch.allclose(after, before)


def test_refinement_multiply_adds_match_fvcore_and_the_reference_head():
    # fvcore counts one multiply-add per weight and box for a linear layer; a class-agnostic head has one
    # score, so its forward is exactly what one fused evaluation computes after the pooling.
    head = FCEnergyHead(input_shape=ShapeSpec(channels=16, height=7, width=7), num_fc=2, fc_dim=64, num_classes=3,
                        cls_agnostic=True)
    pooled = torch.randn(5, 16, 7, 7)
    fc_forward = FlopCountAnalysis(head, (pooled,)).unsupported_ops_warnings(False).total()
    pool = 7 * 7 * 16 * 16  # 2 x 2 samples of 4 pixels per bin, 16 channels
    hidden = 16 * 49 * 64 + 64 * 64
    assert fc_forward == 5 * (hidden + 64)
    assert head.refinement_multiply_adds(5, 0, 2) == fc_forward + 5 * pool
    assert head.refinement_multiply_adds(5, 10, 2) == 11 * (fc_forward + 5 * pool) + 10 * 5 * (pool + hidden)
    # The reference head (R50-FPN, 256 channels, 2 x 1024): ~28.2 M per box and step with its gradient.
    ref = FCEnergyHead(input_shape=ShapeSpec(channels=256, height=7, width=7), num_fc=2, fc_dim=1024, num_classes=80,
                       cls_agnostic=False)
    per_step = ref.refinement_multiply_adds(1, 1, 2) - ref.refinement_multiply_adds(1, 0, 2)
    assert per_step == 2 * (7 * 7 * 16 * 256 + 12544 * 1024 + 1024 * 1024) + 1024


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this PyTorch build")
def test_onednn_layers_equal_the_plain_matrix_products():
    g = torch.Generator().manual_seed(5)
    feats, boxes, image = _scene(g, 128, 160, 16, 12, dtype=torch.float32)
    pooler = MultiLevelBoxPooler(7, SCALES)
    pool = pooler.prepare(feats, [boxes])
    classes = torch.randint(0, 3, (12,), generator=g)
    results = []
    for enabled in (True, False):
        head = _head(16, 2, 64, 3, False, dtype=torch.float32)  # fresh: layers are prepared on first use
        with torch.backends.mkldnn.flags(enabled=enabled):
            energy = head.box_energy(pool, classes)
        assert all(layer.onednn == enabled for layer in energy.layers)
        results.append(energy(boxes))
    for ours, plain in zip(*results):
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def test_head_and_pooler_copy_and_save_without_their_fast_path_caches():
    g = torch.Generator().manual_seed(6)
    feats, boxes, _ = _scene(g, 64, 96, 4, 5, dtype=torch.float32)
    pooler = MultiLevelBoxPooler(7, SCALES)
    head = _head(4, 2, 16, 1, True, dtype=torch.float32)
    f = head.box_energy(pooler.prepare(feats, [boxes]))(boxes)[0]  # fills both caches (oneDNN copies on a CPU)
    for copied_head, copied_pooler in ((copy.deepcopy(head), copy.deepcopy(pooler)),
                                       (pickle.loads(pickle.dumps(head)), pickle.loads(pickle.dumps(pooler)))):
        assert not copied_head._prepared and not copied_pooler._scratch._tensors
        torch.testing.assert_close(copied_head.box_energy(copied_pooler.prepare(feats, [boxes]))(boxes)[0], f)
    torch.save({"head": head, "pooler": pooler}, io.BytesIO())
