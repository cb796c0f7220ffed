"""DeepGUM in Detectron2 training (MODEL.EBM.ROBUST): equivalences, outlier weighting, checkpoints, config errors."""
import copy
import random

import pytest
import numpy as np
import torch
from d2_helpers import refiner_cfg, small_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from ebm_refine.core import weighted_mean
from ebm_refine.detectron2.checkpoint import EBMCheckpointer
from ebm_refine.detectron2.config import ConfigValueError
from ebm_refine.detectron2.data import CheckedDatasetMapper
from detectron2.structures import Instances

from ebm_refine.core import encode_relative
from ebm_refine.detectron2.roi_heads import detector_residuals, weighted_box_reg_loss

ROBUST = ["MODEL.EBM.ROBUST.ENABLED", "True"]


def _batch(cfg, n, name="test_synth_train"):
    # The training mapper's augmentations draw from the global RNGs: seed them so that the batch does not depend
    # on which tests ran before (seen: the outlier test's residual moved 0.19 vs 0.25 between suite orders).
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    mapper = CheckedDatasetMapper(cfg, True)
    return [mapper(d) for d in DatasetCatalog.get(name)[:n]]


def _losses(cfg, data, state=None, seed=5):
    """Training losses of a model built with ``cfg`` (weights ``state``) on ``data``, RNG seeded."""
    torch.manual_seed(0)
    model = build_model(cfg)
    if state is not None:
        model.load_state_dict(state)
    model.train()
    torch.manual_seed(seed)
    with EventStorage(0) as storage:
        losses = model(data)
    return model, {k: float(v) for k, v in losses.items()}, storage


def test_enabled_before_warmup_gives_the_plain_losses(synthetic_names, tmp_path):
    plain_cfg = small_cfg(tmp_path)
    data = _batch(plain_cfg, 2)
    plain_model, plain, _ = _losses(plain_cfg, data)
    assert plain_model.roi_heads.robust is None
    state = plain_model.state_dict()
    # ROBUST on with BOX_REG: r = 1 before the first EM fit, so every loss is the plain one.
    cfg = small_cfg(tmp_path, extra=[*ROBUST, "MODEL.EBM.ROBUST.WARMUP", "50", "MODEL.EBM.ROBUST.BOX_REG", "True"])
    model, robust, storage = _losses(cfg, data, state)
    assert set(robust) == set(plain) == {"loss_cls", "loss_box_reg", "loss_ebm", "loss_rpn_cls", "loss_rpn_loc"}
    for k in plain:
        assert robust[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-7), k
    assert model.roi_heads.robust.state is None and model.roi_heads.robust.iteration == 1
    # rho and the batch's mean r are logged (1 before the first fit).
    assert storage.latest()["robust/rho"][0] == 1.0 and storage.latest()["robust/mean_r"][0] == 1.0


@pytest.mark.parametrize("meta", ["frozen", "refiner"])
def test_em_runs_in_frozen_detector_and_refiner_training(synthetic_names, tmp_path, meta):
    robust = [*ROBUST, "MODEL.EBM.ROBUST.WARMUP", "0", "MODEL.EBM.ROBUST.PERIOD", "1"]
    if meta == "frozen":  # EBMRCNN keeps the frozen ROI heads in eval mode; only the energy head trains
        cfg = small_cfg(tmp_path, extra=["MODEL.EBM.FREEZE_DETECTOR", "True",
                                         "MODEL.EBM.ALLOW_UNTRAINED_DETECTOR", "True", *robust])
    else:
        cfg = refiner_cfg(tmp_path, extra=robust)
    data = _batch(cfg, 4)
    model, losses, storage = _losses(cfg, data)
    assert set(losses) == {"loss_ebm"}
    gum = model.roi_heads.robust
    assert gum.iteration == 1 and gum.state is not None  # fitted on this batch's residuals
    assert 0.0 < storage.latest()["robust/rho"][0] <= 1.0


def test_weighted_box_reg_loss_with_unit_weights_is_detectron2s(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path)
    data = _batch(cfg, 2)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    heads = model.roi_heads
    images = model.preprocess_image(data)
    targets = [d["instances"] for d in data]
    torch.manual_seed(1)
    with EventStorage(0), torch.no_grad():
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        proposals = heads.label_and_sample_proposals(proposals, targets)
        feats = [features[f] for f in heads.box_in_features]
        _, deltas = heads.box_predictor(heads.box_head(heads.box_pooler(feats, [p.proposal_boxes for p in proposals])))
        gt_classes = torch.cat([p.gt_classes for p in proposals])
        boxes = torch.cat([p.proposal_boxes.tensor for p in proposals])
        gt_boxes = torch.cat([p.gt_boxes.tensor for p in proposals])
        reference = heads.box_predictor.box_reg_loss(boxes, gt_boxes, deltas, gt_classes)
        assert float(reference) > 0
        assert float(weighted_box_reg_loss(heads.box_predictor, deltas, proposals)) == pytest.approx(float(reference), rel=1e-6)
        # Weights scale each proposal's term: weight 0 on every proposal of image 0 leaves image 1's part.
        for p, w in zip(proposals, (0.0, 1.0)):
            p.gt_robust_weight = torch.full((len(p),), w)
        fg1 = (proposals[1].gt_classes < heads.box_predictor.num_classes).nonzero()[:, 0] + len(proposals[0])
        only1 = heads.box_predictor.box_reg_loss(boxes[fg1], gt_boxes[fg1], deltas[fg1], gt_classes[fg1])
        expected = float(only1) * len(fg1) / len(gt_classes)
        assert float(weighted_box_reg_loss(heads.box_predictor, deltas, proposals)) == pytest.approx(expected, rel=1e-5)


def test_after_a_fit_an_injected_outlier_box_gets_a_small_weight(synthetic_names, tmp_path):
    # A real energy head: trained for 100 Adam steps on 8 clean images (frozen random detector; ~5 s).
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.FREEZE_DETECTOR", "True", "MODEL.EBM.ALLOW_UNTRAINED_DETECTOR", "True",
                                     "MODEL.EBM.NUM_SAMPLES", "32", *ROBUST, "MODEL.EBM.ROBUST.WARMUP", "100000"])
    data = _batch(cfg, 8)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with EventStorage(0):
        for _ in range(100):
            loss = model(data)["loss_ebm"]
            opt.zero_grad()
            loss.backward()
            opt.step()
    heads = model.roi_heads
    with torch.no_grad():
        feats = heads.energy_features(model.backbone(model.preprocess_image(data).tensor))
    # One annotation moved by 30 % of its size down-right: the outlier.
    targets = [copy.deepcopy(d["instances"]) for d in data]
    box = targets[0].gt_boxes.tensor[0]
    shift = (box[2:] - box[:2]) * 0.3
    targets[0].gt_boxes.tensor[0] = box + torch.cat([shift, shift])
    n = sum(len(t) for t in targets)
    assert n >= 15
    residuals = torch.cat(heads.robust_residuals(feats, targets))
    norms = residuals.norm(dim=1)
    # The energy pulls the shifted box back (0.19-0.25 depending on the thread count) and leaves clean boxes.
    assert float(norms[0]) > 0.15 and float(norms[1:].max()) < 0.1
    assert float(norms[0]) > 2 * float(norms[1:].max())
    # EM every iteration from the first: iteration 1 returns ones and fits, iteration 2 uses the fit.
    heads.robust.period, heads.robust.warmup = 1, 0
    with EventStorage(0) as storage:
        first = torch.cat(heads.robust_update(feats, targets))
        assert torch.equal(first, torch.ones(n)) and heads.robust.state is not None
        r = torch.cat(heads.robust_update(feats, targets))
    # The outlier is rejected; nearly all clean boxes stay inliers (a 4-D Gaussian fitted to ~16 small
    # residuals is narrow, so an occasional clean box with an unusual residual is doubted too).
    assert float(r[0]) < 0.05 and int(r.argmin()) == 0
    assert float((r[1:] > 0.5).float().mean()) >= 0.9
    assert 0.8 < heads.robust.state.rho < 1.0
    assert storage.latest()["robust/mean_r"][0] == pytest.approx(float(r.mean()), rel=1e-5)
    # The EBM loss is the r-weighted mean of the per-box losses.
    torch.manual_seed(3)
    per = _per_box_losses(heads, feats, targets)
    torch.manual_seed(3)
    weighted = heads.ebm_losses(feats, targets, list(r.split([len(t) for t in targets])))
    assert float(weighted) == pytest.approx(float(weighted_mean(per, r)), rel=1e-5)
    assert float(weighted) != pytest.approx(float(per.mean()), rel=1e-3)
    # RESIDUAL_START best_sample: the refinement starts at the highest-f proposal box around each annotation.
    heads.robust_start = "best_sample"
    torch.manual_seed(7)
    best_res = torch.cat(heads.robust_residuals(feats, targets))
    ref = torch.cat([t.gt_boxes.tensor for t in targets])
    cls = torch.cat([t.gt_classes for t in targets])
    idx = torch.cat([torch.full_like(t.gt_classes, i) for i, t in enumerate(targets)])
    torch.manual_seed(7)
    s = heads.proposal.sample(ref, heads.num_samples)
    with torch.no_grad():
        f = heads.energy(feats, s.boxes.reshape(-1, 4), cls.repeat_interleave(s.boxes.shape[1]),
                         idx.repeat_interleave(s.boxes.shape[1])).view(len(ref), -1)
    start = s.boxes[torch.arange(len(ref)), f.argmax(dim=1)]
    expected = encode_relative(heads.refine_box_tensor(feats, start, cls, idx, heads.robust_steps).boxes, ref)
    torch.testing.assert_close(best_res, expected, atol=1e-5, rtol=1e-5)
    # The shifted annotation's residual stands out from the clean ones here too.
    norms = best_res.norm(dim=1)
    assert float(norms[0]) > float(norms[1:].median())


def _per_box_losses(heads, feats, targets):
    """The per-ground-truth EBM losses (unit weights give them back one by one)."""
    losses = []
    n = sum(len(t) for t in targets)
    for j in range(n):
        w = torch.zeros(n)
        w[j] = 1.0
        torch.manual_seed(3)
        losses.append(heads.ebm_losses(feats, targets, list(w.split([len(t) for t in targets]))))
    return torch.stack(losses)


def test_checkpoints_carry_the_em_state_for_resume(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path, extra=[*ROBUST])
    model = build_model(cfg)
    gum = model.roi_heads.robust
    torch.manual_seed(0)
    gum.observe(torch.randn(50, 4) * 0.05)
    gum.iteration = gum.warmup + gum.period - 1
    assert gum.step() and gum.state is not None
    EBMCheckpointer(model, str(tmp_path)).save("model_0000009")
    saved = torch.load(tmp_path / "model_0000009.pth", weights_only=True)["ebm_robust"]
    assert saved["iteration"] == gum.iteration

    resumed = build_model(cfg)
    EBMCheckpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    r = resumed.roi_heads.robust
    assert r.iteration == gum.iteration and r.state.rho == gum.state.rho
    assert torch.equal(r.state.cov, gum.state.cov)
    # Loading the file as MODEL.WEIGHTS of a new run starts EM afresh.
    fresh = build_model(cfg)
    EBMCheckpointer(fresh, str(tmp_path)).resume_or_load(str(tmp_path / "model_0000009.pth"), resume=False)
    assert fresh.roi_heads.robust.state is None and fresh.roi_heads.robust.iteration == 0


@pytest.mark.parametrize("extra, message", [
    (["MODEL.EBM.ROBUST.BOX_REG", "True"], "MODEL.EBM.ROBUST.ENABLED True"),
    ([*ROBUST, "MODEL.EBM.ROBUST.PERIOD", "0"], "MODEL.EBM.ROBUST.PERIOD must be a whole number >= 1, got 0"),
    ([*ROBUST, "MODEL.EBM.ROBUST.WARMUP", "-1"], "MODEL.EBM.ROBUST.WARMUP must be a whole number >= 0"),
    ([*ROBUST, "MODEL.EBM.ROBUST.NUM_STEPS", "0"], "MODEL.EBM.ROBUST.NUM_STEPS must be a whole number >= 1"),
    ([*ROBUST, "MODEL.EBM.ROBUST.BOX_REG", "True", "MODEL.EBM.FREEZE_DETECTOR", "True"], "FREEZE_DETECTOR False"),
    ([*ROBUST, "MODEL.EBM.ROBUST.BOX_REG", "True", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou"],
     "'smooth_l1' only, got 'giou'"),
    ([*ROBUST, "MODEL.EBM.ROBUST.RESIDUAL", "prediction"],
     "MODEL.EBM.ROBUST.RESIDUAL must be one of ('energy', 'detector'), got 'prediction'"),
    ([*ROBUST, "MODEL.EBM.ROBUST.RESIDUAL_START", "detector"],
     "MODEL.EBM.ROBUST.RESIDUAL_START must be one of ('annotation', 'best_sample'), got 'detector'"),
    ([*ROBUST, "MODEL.EBM.ROBUST.RESIDUAL", "detector", "MODEL.EBM.FREEZE_DETECTOR", "True"],
     "RESIDUAL 'detector' .* FREEZE_DETECTOR False or RESIDUAL 'energy'"),
])
def test_config_errors_name_the_key(tmp_path, extra, message):
    with pytest.raises(ConfigValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".*)", ".*")):
        build_model(small_cfg(tmp_path, extra=extra))


def test_box_refiner_takes_robust_but_refuses_box_reg(tmp_path):
    model = build_model(refiner_cfg(tmp_path, extra=ROBUST))
    assert model.roi_heads.robust is not None and model.roi_heads.robust.period == 100
    with pytest.raises(ConfigValueError, match="EnergyROIHeads .* has none: set MODEL.EBM.ROBUST.BOX_REG False"):
        build_model(refiner_cfg(tmp_path, extra=[*ROBUST, "MODEL.EBM.ROBUST.BOX_REG", "True"]))
    with pytest.raises(ConfigValueError, match="RESIDUAL 'detector' .* EnergyROIHeads .* set MODEL.EBM.ROBUST.RESIDUAL 'energy'"):
        build_model(refiner_cfg(tmp_path, extra=[*ROBUST, "MODEL.EBM.ROBUST.RESIDUAL", "detector"]))


def test_detector_residuals_are_the_median_regressed_box_minus_the_annotation(tmp_path):
    heads = build_model(small_cfg(tmp_path)).roi_heads
    predictor = heads.box_predictor
    k = predictor.num_classes
    # Image 0: ground truth 0 (100 x 50 px, class 1) has three foreground proposals shifted right by 0, 10 and
    # 30 px; ground truth 1 only a background proposal. Image 1 has no ground truth.
    gt = torch.tensor([[100.0, 100.0, 200.0, 150.0], [300.0, 300.0, 340.0, 380.0]])
    boxes = torch.tensor([[100.0, 100.0, 200.0, 150.0], [110.0, 100.0, 210.0, 150.0], [130.0, 100.0, 230.0, 150.0],
                          [0.0, 0.0, 20.0, 20.0]])
    p0 = Instances((480, 640), proposal_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 1, 1, k]),
                   gt_boxes=Boxes(gt[[0, 0, 0, 1]]), gt_robust_index=torch.tensor([0, 0, 0, 1]))
    p1 = Instances((480, 640), proposal_boxes=Boxes(torch.tensor([[5.0, 5.0, 50.0, 50.0]])),
                   gt_classes=torch.tensor([k]))
    # Zero deltas: every regressed box is its proposal; then a delta that doubles the width of class 1's box.
    scores = torch.zeros(5, k + 1)
    deltas = torch.zeros(5, 4 * k)
    residuals, seen = detector_residuals(predictor, (scores, deltas), [p0, p1], [2, 0])
    assert seen[0].tolist() == [True, False] and seen[1].numel() == 0 and residuals[1].shape == (0, 4)
    assert residuals[0][0].tolist() == pytest.approx([0.1, 0.0, 0.0, 0.0], abs=1e-6)  # median of 0, 0.1, 0.3
    assert torch.isnan(residuals[0][1]).all()
    wx, wy, ww, wh = predictor.box2box_transform.weights
    deltas[:3, 4 * 1 + 2] = ww * float(np.log(2.0))
    residuals, _ = detector_residuals(predictor, (scores, deltas), [p0, p1], [2, 0])
    expected = encode_relative(torch.tensor([[60.0, 100.0, 260.0, 150.0]]), gt[:1])[0]  # the median proposal, twice as wide
    assert residuals[0][0].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert residuals[0][0].tolist() == pytest.approx([0.1, 0.0, float(np.log(2.0)), 0.0], abs=1e-5)


def test_detector_residuals_in_joint_training(synthetic_names, tmp_path):
    plain_cfg = small_cfg(tmp_path)
    data = _batch(plain_cfg, 2)
    plain_model, plain, _ = _losses(plain_cfg, data)
    detector = [*ROBUST, "MODEL.EBM.ROBUST.RESIDUAL", "detector", "MODEL.EBM.ROBUST.BOX_REG", "True"]
    # Before the first fit (r = 1) every loss is the plain one: the residuals come from the same forward pass.
    model, losses, storage = _losses(small_cfg(tmp_path, extra=[*detector, "MODEL.EBM.ROBUST.WARMUP", "50"]), data,
                                     plain_model.state_dict())
    for k in plain:
        assert losses[k] == pytest.approx(plain[k], rel=1e-5, abs=1e-7), k
    assert model.roi_heads.robust.iteration == 1 and storage.latest()["robust/mean_r"][0] == 1.0
    # EM from the first iteration: the mixture is fitted on the detector's residuals of this batch (enough
    # ground truths with a sampled foreground proposal: 4 images, 128 proposals each).
    cfg = small_cfg(tmp_path, extra=[*detector, "MODEL.EBM.ROBUST.WARMUP", "0", "MODEL.EBM.ROBUST.PERIOD", "1",
                                     "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128"])
    model, losses, storage = _losses(cfg, _batch(cfg, 4))
    gum = model.roi_heads.robust
    assert gum.state is not None and 0.0 < gum.state.rho <= 1.0
    assert all(np.isfinite(v) for v in losses.values())
