"""Bad input at the plugin's boundary: checkpoints, annotations, images, interrupted saves."""
import json
import logging
import os

import pytest
import torch
from d2_helpers import small_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from ebm_refine.detectron2 import CheckedDatasetMapper, CheckpointError, EBMCheckpointer, check_annotations, load_dataset_dicts
from ebm_refine.detectron2.data import DatasetError, ImageReadError
from ebm_refine.detectron2.datasets import register_coco


def test_energy_head_of_another_shape_is_named_with_both_shapes(synthetic_names, tmp_path, caplog):
    wide = build_model(small_cfg(tmp_path, extra=["MODEL.EBM.HEAD.FC_DIM", "96"]))
    torch.save({"model": wide.state_dict()}, tmp_path / "wide.pth")
    model = build_model(small_cfg(tmp_path))
    ckpt = EBMCheckpointer(model)
    with caplog.at_level(logging.WARNING):
        ckpt.load(str(tmp_path / "wide.pth"))
    assert not ckpt.energy_head_loaded
    msg = [r.getMessage() for r in caplog.records if "Energy-head weights" in r.getMessage()]
    assert len(msg) == 1 and "other shapes" in msg[0]
    assert "roi_heads.energy_head.fcs.0.weight: (96, 1568) in the checkpoint, (64, 1568) in the model" in msg[0]
    # The detector part loaded all the same.
    torch.testing.assert_close(model.backbone.bottom_up.stem[0].weight, wide.backbone.bottom_up.stem[0].weight)


def test_unusable_checkpoint_files_are_one_line_errors(synthetic_names, tmp_path):
    model = build_model(small_cfg(tmp_path))
    ckpt = EBMCheckpointer(model)
    with pytest.raises(CheckpointError, match="checkpoint '.*nope.pth' not found"):
        ckpt.load(str(tmp_path / "nope.pth"))
    (tmp_path / "text.pth").write_text("hello\n")
    with pytest.raises(CheckpointError, match="text.pth: not a readable checkpoint"):
        ckpt.load(str(tmp_path / "text.pth"))
    full = tmp_path / "full.pth"
    torch.save({"model": model.state_dict()}, full)
    (tmp_path / "truncated.pth").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable checkpoint"):
        ckpt.load(str(tmp_path / "truncated.pth"))
    # A tracker network file: a dict that shares no tensor name with the detector.
    torch.save({"config": {"backbone": "mobilenet_v2"}, "state_dict": {"x": torch.zeros(2)}}, tmp_path / "tracker.pth")
    with pytest.raises(CheckpointError, match="shares no tensor with this model"):
        ckpt.load(str(tmp_path / "tracker.pth"))


def test_a_save_killed_midway_leaves_the_previous_checkpoint(synthetic_names, tmp_path, monkeypatch):
    model = build_model(small_cfg(tmp_path))
    ckpt = EBMCheckpointer(model, save_dir=str(tmp_path))
    ckpt.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def killed(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert EBMCheckpointer(build_model(small_cfg(tmp_path)), save_dir=str(tmp_path)).resume_or_load("", resume=True) == {}
    # A last_checkpoint naming a damaged file (e.g. from an older version) is an error saying what to do.
    (tmp_path / "model_0000001.pth").write_bytes(good[:100])
    with pytest.raises(CheckpointError, match="cannot resume from .*model_0000001.pth.* or run without --resume"):
        EBMCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)


def _record(boxes, height=100, width=100):
    return {"file_name": "x.jpg", "height": height, "width": width, "image_id": 1,
            "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0} for b in boxes]}


def test_degenerate_boxes_are_dropped_and_counted(caplog):
    records = [_record([[10, 10, 20, 20], [10, 10, -5, 20], [0, 0, 0, 10]]),
               _record([[float("nan"), 1, 2, 3], [150, 10, 20, 20], [90, 90, 30, 30]])]
    with caplog.at_level(logging.WARNING):
        out = check_annotations(records, "toy")
    assert [len(r["annotations"]) for r in out] == [1, 1]  # the box half inside the image stays
    lines = [r.getMessage() for r in caplog.records if "toy" in r.getMessage()]
    assert lines == ["Dataset 'toy': dropped 4 of 6 boxes (1 non-finite, 2 non-positive size, 1 outside the image)."]
    with pytest.raises(DatasetError, match="dataset 'bad': none of its 2 boxes is valid"):
        check_annotations([_record([[1, 1, 0, 5], [1, 1, 5, -5]])], "bad")


def test_datasets_without_usable_boxes_or_images_are_errors(tmp_path, synthetic_names):
    with pytest.raises(DatasetError, match="'not_registered' is not registered"):
        load_dataset_dicts(["not_registered"])
    DatasetCatalog.get(synthetic_names[0])  # generated on first use
    ann = json.loads(open(MetadataCatalog.get(synthetic_names[0]).json_file).read())
    ann["annotations"] = []
    (tmp_path / "empty.json").write_text(json.dumps(ann))
    register_coco("test_no_boxes", tmp_path / "empty.json", tmp_path)
    with pytest.raises(DatasetError, match="'test_no_boxes' has no box annotations"):
        load_dataset_dicts(["test_no_boxes"])
    register_coco("test_missing_files", tmp_path / "absent.json", tmp_path)
    with pytest.raises(DatasetError, match="annotation file .*absent.json not found"):
        load_dataset_dicts(["test_missing_files"])


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_unreadable_images_are_named(synthetic_names, tmp_path, damage):
    cfg = small_cfg(tmp_path)
    record = dict(DatasetCatalog.get(synthetic_names[0])[0])
    src = record["file_name"]
    bad = tmp_path / f"{damage}.png"
    if damage == "truncated":
        data = open(src, "rb").read()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    record["file_name"] = str(bad)
    with pytest.raises(ImageReadError, match=f"{bad}: cannot read image"):
        CheckedDatasetMapper(cfg, True)(record)
