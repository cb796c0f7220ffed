"""COCO AP of a registered subset of a json file is the subset's own (Detectron2 scores every image of the json)."""
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode, Boxes, Instances

from ebm_refine.detectron2.evaluation import ImagesCOCOEvaluator


def _ground_truth_as_detections(records):
    inputs, outputs = [], []
    for r in records:
        anns = [a for a in r["annotations"] if not a.get("iscrowd", 0)]
        inst = Instances((r["height"], r["width"]))
        inst.pred_boxes = Boxes(torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                                              for a in anns], dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.long)
        inputs.append({"image_id": r["image_id"]})
        outputs.append({"instances": inst})
    return inputs, outputs


def test_holdout_subset_is_scored_on_its_own_images(shared_data, tmp_path):
    os.environ.setdefault("EBM_SHARED_DATA", str(shared_data))
    records = DatasetCatalog.get("coco128_train2017_holdout")
    assert len(records) == 24
    ev = ImagesCOCOEvaluator("coco128_train2017_holdout", output_dir=str(tmp_path), distributed=False,
                             use_fast_impl=False)
    ev.reset()
    ev.process(*_ground_truth_as_detections(records))
    ap = ev.evaluate()["bbox"]
    # The ground truth itself scores 100 on its 24 images (Detectron2's own COCOEvaluator: about 15, the other
    # 104 images' boxes counted as missed).
    assert ap["AP"] == pytest.approx(100.0, abs=1e-6) and ap["AP50"] == pytest.approx(100.0, abs=1e-6)
