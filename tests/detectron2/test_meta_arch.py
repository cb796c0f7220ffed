"""EBMRCNN: refined and unrefined boxes in the original image at any input scale, and frozen-detector
training that lives in the model (Detectron2's stock DefaultTrainer, no plugin trainer)."""
import copy
import json
import math

import pytest
import torch
from d2_helpers import small_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_test_loader
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, inference_on_dataset
from detectron2.modeling import build_model

from ebm_refine.detectron2 import ConfigValueError, EBMTrainer, RefinementCOCOEvaluator
from ebm_refine.detectron2.meta_arch import UntrainedDetectorError

# Test images are 128 px; these sizes make the network see them at 2.5x, so any box left in network
# coordinates would be 2.5x too large.
UPSCALED = ["INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "320", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def same_metrics(a: dict, b: dict) -> bool:
    """Equal COCO metric dicts (NaN equals NaN: pycocotools reports -1 -> NaN for empty area ranges)."""
    return a.keys() == b.keys() and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def plain_detector(cfg, ebm_model):
    """GeneralizedRCNN + StandardROIHeads with the EBM model's detector weights."""
    plain_cfg = cfg.clone()
    plain_cfg.defrost()
    plain_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    plain_cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    plain = build_model(plain_cfg).eval()
    missing, unexpected = plain.load_state_dict(ebm_model.state_dict(), strict=False)
    assert not missing and all(k.startswith("roi_heads.energy_head.") for k in unexpected)
    return plain_cfg, plain


def test_unrefined_boxes_equal_the_plain_detector_at_another_input_scale(synthetic_names, tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg(tmp_path, extra=[*UPSCALED, "MODEL.EBM.REFINE.NUM_STEPS", "0"])
    model = build_model(cfg).eval()
    plain_cfg, plain = plain_detector(cfg, model)
    inputs = [DatasetMapper(cfg, False)(d) for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:3]]
    assert inputs[0]["image"].shape[-1] == 320 and inputs[0]["width"] == 128
    with torch.no_grad():
        ours, stock = model(copy.deepcopy(inputs)), plain(copy.deepcopy(inputs))
    for o, s in zip(ours, stock):
        o, s = o["instances"], s["instances"]
        assert len(o) == len(s) > 0
        assert (o.pred_boxes_unrefined.tensor - s.pred_boxes.tensor).abs().max() < 1e-3
        assert torch.equal(o.pred_classes, s.pred_classes) and torch.equal(o.scores, s.scores)
        assert o.pred_boxes_unrefined.tensor[:, 2:].max() <= 128  # in the original image
        torch.testing.assert_close(o.pred_boxes.tensor, o.pred_boxes_unrefined.tensor)  # 0 steps


def test_refined_and_unrefined_boxes_share_the_image_frame(synthetic_names, tmp_path):
    torch.manual_seed(0)
    cfg = small_cfg(tmp_path, extra=[*UPSCALED, "MODEL.EBM.REFINE.STEP_SIZE_CENTER", "0.01",
                                     "MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.01"])
    model = build_model(cfg).eval()
    inputs = [DatasetMapper(cfg, False)(d) for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[:2]]
    with torch.no_grad():
        out = model(inputs)
    ratios = torch.cat([o["instances"].pred_boxes.area() / o["instances"].pred_boxes_unrefined.area() for o in out])
    moved = torch.cat([(o["instances"].pred_boxes.tensor - o["instances"].pred_boxes_unrefined.tensor).abs().sum(1)
                       for o in out])
    assert moved.max() > 0  # refinement did something ...
    assert 0.8 < ratios.median() < 1.25  # ... in the same coordinates (before the fix: 2.5^2)


def test_zero_step_refinement_gives_the_stock_detectors_ap_exactly(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path / "ebm", extra=[*UPSCALED, "MODEL.EBM.REFINE.NUM_STEPS", "0"])
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    name = cfg.DATASETS.TEST[0]
    res = inference_on_dataset(model, build_detection_test_loader(cfg, name),
                               RefinementCOCOEvaluator(name, str(tmp_path / "ebm"), distributed=False))
    plain_cfg, plain = plain_detector(cfg, model)
    stock = inference_on_dataset(plain, build_detection_test_loader(plain_cfg, name),
                                 COCOEvaluator(name, output_dir=str(tmp_path / "stock"), use_fast_impl=False))
    assert same_metrics(res["bbox"], res["bbox_unrefined"]) and same_metrics(res["bbox_unrefined"], stock["bbox"])
    unrefined = json.loads((tmp_path / "ebm" / "unrefined" / "coco_instances_results.json").read_text())
    plain_preds = json.loads((tmp_path / "stock" / "coco_instances_results.json").read_text())
    assert len(unrefined) == len(plain_preds) > 0
    for a, b in zip(unrefined, plain_preds):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) < 1e-3


def test_trained_head_unrefined_ap_equals_stock_cocoevaluator(synthetic_names, tmp_path):
    # A jointly trained model evaluated by our trainer on a resized test set: the unrefined column of
    # ebm_refinement_results.json is what Detectron2's stock COCOEvaluator reports for the same weights.
    out = tmp_path / "ebm"
    cfg = small_cfg(out, extra=[*UPSCALED, "SOLVER.MAX_ITER", "6", "SOLVER.BASE_LR", "0.005"])
    trainer = EBMTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.eval()
    name = cfg.DATASETS.TEST[0]
    EBMTrainer.test(cfg, model)
    table = json.loads((out / "inference" / name / "ebm_refinement_results.json").read_text())
    plain_cfg, plain = plain_detector(cfg, model)
    stock = inference_on_dataset(plain, build_detection_test_loader(plain_cfg, name),
                                 COCOEvaluator(name, output_dir=str(tmp_path / "stock"), use_fast_impl=False))
    assert same_metrics(table["unrefined"], stock["bbox"])
    assert table["unrefined"]["AP50"] > 0  # a detector that finds something, so the comparison means something


def test_stock_default_trainer_with_frozen_detector_changes_only_the_energy_head(synthetic_names, tmp_path):
    # A detector checkpoint (weights of a built model, no energy head), then Detectron2's own DefaultTrainer.
    base = small_cfg(tmp_path / "det")
    torch.manual_seed(0)
    detector = {k: v for k, v in build_model(base).state_dict().items() if ".energy_head." not in k}
    torch.save({"model": detector}, tmp_path / "detector.pth")
    cfg = small_cfg(tmp_path / "out", extra=["MODEL.EBM.FREEZE_DETECTOR", "True", "MODEL.WEIGHTS",
                                             str(tmp_path / "detector.pth"), "SOLVER.MAX_ITER", "2"])
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("roi_heads.energy_head.") for k in changed)
    assert all(torch.equal(before[k], detector[k]) for k in detector)  # the detector came from the file
    # Detectron2 logs only total_loss for a single loss; any RPN / box loss would be logged by name.
    logged = set(trainer.storage.histories())
    assert "total_loss" in logged and not {k for k in logged if k.startswith("loss")}
    trainer.model.train()
    assert set(trainer.model(next(iter(trainer.data_loader)))) == {"loss_ebm"}


def test_frozen_detector_refuses_weights_that_did_not_load(synthetic_names, tmp_path):
    from ebm_refine.detectron2 import EBMCheckpointer

    frozen = ["MODEL.EBM.FREEZE_DETECTOR", "True"]
    # No MODEL.WEIGHTS at all: the first training forward says so.
    model = build_model(small_cfg(tmp_path, extra=frozen)).train()
    mapper = DatasetMapper(small_cfg(tmp_path), True)
    data = [mapper(d) for d in DatasetCatalog.get("test_synth_train")[:2]]
    with pytest.raises(UntrainedDetectorError, match="weights were never loaded"):
        model(data)
    # A checkpoint of another architecture (wider FPN): most detector tensors have other shapes.
    other = build_model(small_cfg(tmp_path, extra=["MODEL.FPN.OUT_CHANNELS", "48"]))
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(UntrainedDetectorError, match=r"detector tensors did not load .*ALLOW_UNTRAINED_DETECTOR"):
        EBMCheckpointer(model).load(str(tmp_path / "other.pth"))
    # Opting in trains on the random detector.
    model = build_model(small_cfg(tmp_path, extra=[*frozen, "MODEL.EBM.ALLOW_UNTRAINED_DETECTOR", "True"])).train()
    EBMCheckpointer(model).load(str(tmp_path / "other.pth"))
    assert set(model(data)) == {"loss_ebm"}


def test_settings_that_need_ebmrcnn_are_refused_under_generalized_rcnn(synthetic_names, tmp_path):
    cfg = small_cfg(tmp_path, extra=["MODEL.META_ARCHITECTURE", "GeneralizedRCNN"])
    with pytest.raises(ConfigValueError, match="KEEP_UNREFINED"):
        build_model(cfg)
    # Joint training without unrefined boxes works with the stock meta-architecture.
    ok = small_cfg(tmp_path, extra=["MODEL.META_ARCHITECTURE", "GeneralizedRCNN", "MODEL.EBM.REFINE.KEEP_UNREFINED", "False"])
    assert type(build_model(ok)).__name__ == "GeneralizedRCNN"
