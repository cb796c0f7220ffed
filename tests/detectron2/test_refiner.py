"""EBMBoxRefiner: the MobileNetV2-FPN backbone, training on ground truth, refining another detector's
detections (loading rules, mapper, evaluators, train_net --eval-only)."""
import json
import logging
import math

import numpy as np
import pytest
import torch
from d2_helpers import refiner_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ebm_refine.detectron2 import EBMBoxRefiner, EBMTrainer, MobileNetV2Trunk, load_detections_into_dataset
from ebm_refine.detectron2.detections import DetectionsError, DetectionsMapper
from ebm_refine.detectron2.refine_detections import jittered_ground_truth


def test_mobilenet_trunk_matches_torchvision_and_stays_frozen(mobilenet_weights):
    import torchvision

    trunk = MobileNetV2Trunk(str(mobilenet_weights))
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(mobilenet_weights), strict=False)
    reference.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        out, ref = trunk(x), reference.features[:18](x)
        ref4 = reference.features[:14](x)
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "res2": (24, 24, 32), "res3": (32, 12, 16), "res4": (96, 6, 8), "res5": (320, 3, 4)}
    # BatchNorm folded into the convolutions: the same function as torchvision's eval-mode trunk.
    torch.testing.assert_close(out["res4"], ref4, rtol=1e-4, atol=1e-4 * float(ref4.abs().max()))
    torch.testing.assert_close(out["res5"], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    trunk.train()
    assert not trunk.training and not any(p.requires_grad for p in trunk.parameters())


def test_refiner_trains_the_fpn_and_energy_head_only(synthetic_names, tmp_path):
    cfg = refiner_cfg(tmp_path)
    model = build_model(cfg)
    assert isinstance(model, EBMBoxRefiner)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    mapper = DatasetMapper(cfg, True)
    data = [mapper(d) for d in DatasetCatalog.get("test_synth_train")[:2]]
    with EventStorage():
        for _ in range(2):
            losses = model(data)
            assert set(losses) == {"loss_ebm"} and math.isfinite(losses["loss_ebm"].item())
            opt.zero_grad()
            losses["loss_ebm"].backward()
            opt.step()
    changed = {k.split(".")[0] + "." + k.split(".")[1] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert any(k.startswith("roi_heads.energy_head") for k in changed)
    assert any(k.startswith("backbone.fpn_") for k in changed)
    assert not any(k.startswith("backbone.bottom_up") for k in changed)


def _detections_file(tmp_path, entries):
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(entries))
    return str(path)


def test_detection_file_rules(synthetic_names, tmp_path, caplog):
    name = "test_synth_val"
    records = [dict(r) for r in DatasetCatalog.get(name)]
    img, w, h = records[0]["image_id"], records[0]["width"], records[0]["height"]
    cat = next(iter(MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id))
    ok = {"image_id": img, "category_id": cat, "bbox": [10, 10, 30, 20], "score": 0.9}
    entries = [ok, {**ok, "score": 0.95, "bbox": [w - 10, 5, 30, 30]},  # partly outside: clipped
               {**ok, "bbox": [float("nan"), 1, 2, 3]}, {**ok, "bbox": [5, 5, 0, 10]}, {**ok, "bbox": [5, 5, -4, 10]},
               {**ok, "bbox": [w + 5, 5, 10, 10]}, {**ok, "score": 0.001}]
    with caplog.at_level(logging.INFO):
        stats = load_detections_into_dataset(records, _detections_file(tmp_path, entries), name, min_score=0.01)
    assert stats.used == 2 and stats.clipped == 1 and stats.below_min_score == 1
    assert stats.skipped == {"non-finite": 1, "zero or negative size": 2, "outside the image": 1}
    dets = records[0]["detections"]
    np.testing.assert_allclose(dets["boxes"], [[w - 10, 5, w, 35], [10, 10, 40, 30]])  # by score, clipped
    assert all(len(r["detections"]["boxes"]) == 0 for r in records[1:])  # every image gets the field
    assert any("2 of 7 detections used" in r.getMessage() for r in caplog.records)
    # Per-image limit, highest scores first.
    records = [dict(r) for r in DatasetCatalog.get(name)]
    many = [{**ok, "score": s} for s in (0.1, 0.5, 0.3)]
    stats = load_detections_into_dataset(records, _detections_file(tmp_path, many), name, max_per_image=2)
    assert records[0]["detections"]["scores"].tolist() == [0.5, 0.3] and stats.over_max_per_image == 1
    # Errors: one line naming the file.
    for bad, message in (([{**ok, "image_id": -7}], "name images that are not in dataset"),
                         ([{**ok, "category_id": 999}], "category ids \\[999\\] are not categories"),
                         ({"annotations": []}, "expected a COCO results list"),
                         ([{"image_id": img, "bbox": [1, 2, 3, 4]}], "entry 0 lacks one of")):
        with pytest.raises(DetectionsError, match=message):
            load_detections_into_dataset([dict(r) for r in records], _detections_file(tmp_path, bad), name)
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DetectionsError, match="empty.json: not a JSON file"):
        load_detections_into_dataset(records, str(tmp_path / "empty.json"), name)


def test_mapper_scales_detections_with_the_image(synthetic_names, tmp_path):
    name = "test_synth_val"
    cfg = refiner_cfg(tmp_path, extra=["INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "320"])
    records = [dict(r) for r in DatasetCatalog.get(name)]
    load_detections_into_dataset(records, _detections_file(tmp_path, jittered_ground_truth(records, name, 0.05)), name)
    out = DetectionsMapper(cfg)(records[0])
    assert out["image"].shape[-2:] == (256, 256)
    torch.testing.assert_close(out["detections"].pred_boxes.tensor,
                               torch.tensor(records[0]["detections"]["boxes"], dtype=torch.float32) * 2.0)


def test_refiner_eval_only_with_detection_files(synthetic_names, tmp_path):
    # train_net's --eval-only path: DATASETS.TEST + DATASETS.DETECTION_FILES_TEST, refined and unrefined AP,
    # per-box change, and the refined results file.
    name = "test_synth_val"
    dets = _detections_file(tmp_path, jittered_ground_truth(DatasetCatalog.get(name), name, 0.1))
    cfg = refiner_cfg(tmp_path, extra=["DATASETS.TEST", f"('{name}',)", "DATASETS.DETECTION_FILES_TEST", f"('{dets}',)",
                                       "MODEL.EBM.REFINE.STEP_SIZE_CENTER", "0.02", "MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.02"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    res = EBMTrainer.test(cfg, model)
    assert {"bbox", "bbox_unrefined", "box_change"} <= set(res)
    assert res["box_change"]["matched"] > 10 and 0 <= res["box_change"]["wilcoxon_p"] <= 1
    written = json.loads((tmp_path / "inference" / name / "refined_detections.json").read_text())
    original = json.loads(open(dets).read())
    assert len(written) == len(original) and all("energy" in d and np.isfinite(d["bbox"]).all() for d in written)
    moved = sum(abs(a - b) for w, o in zip(sorted(written, key=lambda d: (d["image_id"], d["score"])),
                                              sorted(original, key=lambda d: (d["image_id"], d["score"])))
                for a, b in zip(w["bbox"], o["bbox"]))
    assert moved > 0
    # Without detections the refiner says what to set.
    cfg2 = refiner_cfg(tmp_path, extra=["DATASETS.TEST", f"('{name}',)"])
    with pytest.raises(Exception, match="DETECTION_FILES_TEST"):
        EBMTrainer.test(cfg2, model)
