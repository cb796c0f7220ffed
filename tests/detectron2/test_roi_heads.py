"""EBMROIHeads: losses in training, refinement at inference, bad input."""
import logging
import math
import re

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ebm_refine.detectron2 import (
    ConfigValueError,
    EBMCheckpointer,
    EBMROIHeads,
    ebm_config_path,
    freeze_detector,
    load_config,
)
from ebm_refine.detectron2.engine import ConfigError

from d2_helpers import small_cfg


def batch(cfg, name, n=2, is_train=True):
    mapper = DatasetMapper(cfg, is_train=is_train)
    return [mapper(d) for d in DatasetCatalog.get(name)[:n]]


@pytest.fixture
def joint_model(synthetic_names, tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.FREEZE_DETECTOR", "False"])
    return cfg, build_model(cfg)


def test_joint_training_step_has_all_losses_and_gradients(joint_model):
    cfg, model = joint_model
    assert isinstance(model.roi_heads, EBMROIHeads)
    model.train()
    with EventStorage():
        losses = model(batch(cfg, cfg.DATASETS.TRAIN[0]))
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "loss_ebm"} <= set(losses)
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.energy_head.score.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem[0].weight.grad.abs().sum() > 0  # from the detector losses


def test_frozen_detector_trains_only_the_energy_head(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.FREEZE_DETECTOR", "True", "MODEL.EBM.ALLOW_UNTRAINED_DETECTOR", "True"])
    model = build_model(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("roi_heads.energy_head.") for n in trainable)
    model.train()
    assert model.training and model.roi_heads.energy_head.training
    assert not model.backbone.training and not model.proposal_generator.training and not model.roi_heads.box_head.training
    with EventStorage():
        losses = model(batch(cfg, cfg.DATASETS.TRAIN[0]))
    assert set(losses) == {"loss_ebm"}  # no RPN or box losses are computed
    losses["loss_ebm"].backward()
    assert model.roi_heads.energy_head.score.weight.grad is not None
    assert all(p.grad is None for n_, p in model.named_parameters() if "energy_head" not in n_)


def test_images_without_usable_ground_truth_give_zero_ebm_loss(joint_model):
    cfg, model = joint_model
    model.train()
    inputs = batch(cfg, cfg.DATASETS.TRAIN[0])
    empty = Instances(inputs[0]["instances"].image_size)
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    degenerate = Instances(inputs[1]["instances"].image_size)
    degenerate.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 10.0, 30.0], [float("nan"), 0.0, 5.0, 5.0]]))
    degenerate.gt_classes = torch.tensor([0, 1])
    inputs[0]["instances"], inputs[1]["instances"] = empty, degenerate
    feats = model.backbone(model.preprocess_image(inputs).tensor)
    loss = model.roi_heads.ebm_losses([feats[f] for f in model.roi_heads.box_in_features], [empty, degenerate])
    assert loss.item() == 0.0
    loss.backward()  # still carries a graph


def test_nan_and_degenerate_ground_truth_are_masked_not_propagated(joint_model):
    cfg, model = joint_model
    inputs = batch(cfg, cfg.DATASETS.TRAIN[0], n=1)
    orig = inputs[0]["instances"]
    t = Instances(orig.image_size)
    t.gt_boxes = Boxes(torch.cat([orig.gt_boxes.tensor, torch.tensor([[float("nan")] * 4, [5.0, 5.0, 4.0, 9.0]])]))
    t.gt_classes = torch.cat([orig.gt_classes, torch.tensor([0, 0])])
    feats = model.backbone(model.preprocess_image(inputs).tensor)
    loss = model.roi_heads.ebm_losses([feats[f] for f in model.roi_heads.box_in_features], [t])
    assert math.isfinite(loss.item()) and loss.item() != 0.0


@pytest.mark.parametrize("nms", ["standard", "energy"])
def test_inference_refines_and_keeps_unrefined_boxes(synthetic_names, tmp_path, nms):
    torch.manual_seed(0)
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.REFINE.NMS", nms, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
                                     "MODEL.EBM.REFINE.STEP_SIZE_CENTER", "0.05", "MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.05"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        outputs = model(batch(cfg, cfg.DATASETS.TEST[0], is_train=False))
    total_moved = 0
    for o in outputs:
        inst = o["instances"]
        assert len(inst) > 0
        for field in ("pred_boxes_unrefined", "pred_energies", "pred_energies_unrefined", "scores", "pred_classes"):
            assert inst.has(field)
        assert (inst.pred_energies >= inst.pred_energies_unrefined - 1e-6).all()
        b = inst.pred_boxes.tensor
        h, w = inst.image_size
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        total_moved += (b - inst.pred_boxes_unrefined.tensor).abs().sum().item()
    assert total_moved > 0  # an untrained but non-constant energy moves boxes


def test_refinement_disabled_and_empty_detections(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.REFINE.ENABLED", "False"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(batch(cfg, cfg.DATASETS.TEST[0], n=1, is_train=False))
    assert not out[0]["instances"].has("pred_boxes_unrefined")
    # No detections at all (threshold above any score): refinement handles zero boxes.
    cfg = small_cfg(tmp_path, extra=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.1"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(batch(cfg, cfg.DATASETS.TEST[0], n=2, is_train=False))
    assert all(len(o["instances"]) == 0 and o["instances"].has("pred_boxes_unrefined") for o in out)


def test_non_finite_energy_keeps_the_unrefined_box(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path, extra=["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.roi_heads.energy_head.score.bias.fill_(float("nan"))
        out = model(batch(cfg, cfg.DATASETS.TEST[0], n=1, is_train=False))
    inst = out[0]["instances"]
    assert len(inst) > 0
    torch.testing.assert_close(inst.pred_boxes.tensor, inst.pred_boxes_unrefined.tensor)


def test_unknown_ebm_key_is_a_config_error(tmp_path):
    # Detectron2's (yacs') KeyError / AssertionError become one ConfigError naming the key and the file.
    with pytest.raises(ConfigError, match="command-line option: Non-existent key: MODEL.EBM.NOT_A_KEY"):
        small_cfg(tmp_path, extra=["MODEL.EBM.NOT_A_KEY", "1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("_BASE_: " + ebm_config_path("Synthetic/ebm_compact_fpn_synthetic.yaml") + "\nMODEL:\n  EBM:\n    STEPS: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: Non-existent config key: MODEL.EBM.STEPS"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="missing.yaml' not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_renamed_config_key_names_its_new_name(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("_BASE_: " + ebm_config_path("Synthetic/ebm_compact_fpn_synthetic.yaml")
                   + "\nMODEL:\n  EBM_BACKBONE:\n    WIDTHS: [8, 8, 8, 8]\n")
    with pytest.raises(ConfigError, match=r"^.*old.yaml: MODEL.EBM_BACKBONE was renamed "
                                          r"MODEL.COMPACT_RESNET; use the new name$"):
        load_config(str(old))
    with pytest.raises(ConfigError, match="command-line option: MODEL.EBM_BACKBONE.NORM was renamed "
                                          "MODEL.COMPACT_RESNET.NORM"):
        load_config(None, ["MODEL.EBM_BACKBONE.NORM", "BN"])


@pytest.mark.parametrize("key,value,rule", [
    ("MODEL.EBM.NUM_SAMPLES", "0", "> 0"), ("MODEL.EBM.PROPOSAL_SIGMAS", "[0.05, -0.1]", "> 0"),
    ("MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.0", "> 0"), ("MODEL.EBM.REFINE.DECAY", "1.5", "in (0, 1]"),
    ("MODEL.EBM.PROPOSAL_SIGMAS_SIZE", "[0.1]", "empty or as long as PROPOSAL_SIGMAS (3)"),
])
def test_config_values_out_of_range_fail_at_build_time(synthetic_names, tmp_path, key, value, rule):
    with pytest.raises(ConfigValueError, match=re.escape(f"{key} must be {rule}")):
        build_model(small_cfg(tmp_path, extra=[key, value]))


def test_bad_loss_name_is_rejected(synthetic_names, tmp_path):
    with pytest.raises(ValueError, match="MODEL.EBM.LOSS"):
        build_model(small_cfg(tmp_path, extra=["MODEL.EBM.LOSS", "mle"]))


@pytest.mark.parametrize("loss", ["kld_is", "nce", "nce_plus", "iou_confidence"])
def test_every_loss_trains(synthetic_names, tmp_path, loss):
    cfg = small_cfg(tmp_path, extra=["MODEL.EBM.LOSS", loss])
    model = build_model(cfg)
    freeze_detector(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    data = batch(cfg, cfg.DATASETS.TRAIN[0])
    with EventStorage():
        for _ in range(2):
            loss_ebm = model(data)["loss_ebm"]
            assert math.isfinite(loss_ebm.item())
            opt.zero_grad()
            loss_ebm.backward()
            opt.step()


def test_checkpoint_without_energy_head_loads_with_a_clear_log_line(synthetic_names, tmp_path, caplog):
    cfg = small_cfg(tmp_path)
    model = build_model(cfg)
    detector_only = {k: v for k, v in model.state_dict().items() if "energy_head" not in k}
    torch.save({"model": detector_only}, tmp_path / "detector.pth")
    fresh = build_model(cfg)
    ckpt = EBMCheckpointer(fresh)
    with caplog.at_level(logging.WARNING):
        ckpt.load(str(tmp_path / "detector.pth"))
    assert not ckpt.energy_head_loaded
    assert any("no energy-head weights" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(fresh.backbone.bottom_up.stem[0].weight, model.backbone.bottom_up.stem[0].weight)
    torch.save({"model": model.state_dict()}, tmp_path / "full.pth")
    ckpt.load(str(tmp_path / "full.pth"))
    assert ckpt.energy_head_loaded
