"""Tests of the synthetic COCO-format detection dataset (ebm_refine.data)."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

pycocotools = pytest.importorskip("pycocotools")
from pycocotools import mask as mask_util  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from ebm_refine.data import CLASS_NAMES, SyntheticDetectionConfig, generate_synthetic_coco  # noqa: E402
from ebm_refine.data import synthetic_detection as sd  # noqa: E402
from ebm_refine.data.rle import decode_rle, encode_rle, mask_to_box  # noqa: E402
from ebm_refine.data.shapes import sample_shape  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
COCO_TINY = REPO.parent / "shared" / "data" / "coco" / "tiny"

# More occlusion and truncation than the default, so that 60 images exercise every annotation rule.
CFG = SyntheticDetectionConfig(occlusion=0.5, truncation=0.25, image_format="png")  # png: lossless
N_IMAGES = 60
SEED = 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    json_path = generate_synthetic_coco(root, "train", N_IMAGES, CFG, seed=SEED)
    return root, json_path, json.loads(json_path.read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _small(**kw) -> SyntheticDetectionConfig:
    return dataclasses.replace(SyntheticDetectionConfig(), **kw)


# ----------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_files(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", "train", 6, seed=3)
    b = generate_synthetic_coco(tmp_path / "b", "train", 6, seed=3)
    assert _sha(a) == _sha(b)
    for name in sorted(os.listdir(tmp_path / "a" / "train")):
        ia, ib = cv2.imread(str(tmp_path / "a" / "train" / name)), cv2.imread(str(tmp_path / "b" / "train" / name))
        assert ia is not None and np.array_equal(ia, ib)
        assert _sha(tmp_path / "a" / "train" / name) == _sha(tmp_path / "b" / "train" / name)
    # JPEG (the default) keeps object edges: no chroma subsampling, small errors everywhere.
    rendered = sd.render_image(SyntheticDetectionConfig(), sd.image_rng(3, "train", 0)).image
    err = np.abs(cv2.imread(str(tmp_path / "a" / "train" / "000001.jpg"))[..., ::-1].astype(int) - rendered)
    assert err.mean() < 4 and np.percentile(err, 99.9) < 30
    # Another seed gives other data; a shorter run gives the same first images (per-image streams).
    c = generate_synthetic_coco(tmp_path / "c", "train", 6, seed=4)
    assert _sha(c) != _sha(a)
    generate_synthetic_coco(tmp_path / "d", "train", 2, seed=3)
    assert _sha(tmp_path / "d" / "train" / "000002.jpg") == _sha(tmp_path / "a" / "train" / "000002.jpg")
    # Train and val of the same seed are different images.
    generate_synthetic_coco(tmp_path / "a", "val", 1, seed=3)
    assert _sha(tmp_path / "a" / "val" / "000001.jpg") != _sha(tmp_path / "a" / "train" / "000001.jpg")


# ------------------------------------------------------------------------------------- box tightness
def test_files_match_renderer_and_boxes_are_tight_around_visible_pixels(dataset):
    root, _, data = dataset
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for index in range(12):
        image_id = index + 1
        rendered = sd.render_image(CFG, sd.image_rng(SEED, "train", index), keep_layers=True)
        on_disk = cv2.cvtColor(cv2.imread(str(root / "train" / f"{image_id:06d}.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(on_disk, rendered.image)
        anns = by_image.get(image_id, [])
        assert [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in anns] == sd.annotate(CFG, rendered)

        # Pixels changed by painting the objects: all inside some object's silhouette.
        changed = np.abs(rendered.clean - rendered.background).max(axis=-1) > 0.5
        assert not (changed & (rendered.owner < 0)).any()
        for ann in anns:
            mask = decode_rle(ann["segmentation"])
            assert np.array_equal(mask, mask_util.decode(ann["segmentation"]).astype(bool))
            assert list(mask_to_box(mask)) == ann["bbox"]
            assert np.allclose(mask_util.toBbox(ann["segmentation"]), ann["bbox"])
            assert ann["area"] == int(mask.sum())
            # The box re-derived from the pixels that actually changed agrees within 1 px.
            x, y, w, h = mask_to_box(mask & changed)
            bx, by, bw, bh = ann["bbox"]
            assert max(abs(x - bx), abs(y - by), abs(x + w - bx - bw), abs(y + h - by - bh)) <= 1


def test_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((4, 3), bool), np.eye(6, dtype=bool)]
    for _ in range(60):
        h, w = rng.integers(1, 70, size=2)
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (int(rng.integers(w)), int(rng.integers(h))), int(rng.integers(1, 40)), 1, -1)
        masks += [m.astype(bool), rng.random((h, w)) < rng.random()]
    for m in masks:
        ours = encode_rle(m)
        ref = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        assert ours["counts"] == ref["counts"].decode() and ours["size"] == list(ref["size"])
        assert np.array_equal(decode_rle(ours), m)
        if m.any():
            assert np.allclose(mask_util.toBbox(ref), mask_to_box(m))


# ------------------------------------------------------------------------------------------ COCO API
def test_pycocotools_loads_and_gt_as_detections_scores_ap_1(dataset):
    _, json_path, data = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_path))
        assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == list(CLASS_NAMES)
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
                for a in data["annotations"] if not a["iscrowd"]]
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0) and ev.stats[2] == pytest.approx(1.0)
    assert len(gt.getImgIds()) == N_IMAGES and all(gt.imgs[i]["width"] == 256 for i in gt.getImgIds())


# ---------------------------------------------------------------------------------------- occlusion
def test_occlusion_rule_in_generated_data(dataset):
    _, _, data = dataset
    anns = data["annotations"]
    partly_hidden = 0
    for ann in anns:
        vf, (x, y, w, h) = ann["visible_fraction"], ann["bbox"]
        assert 0 < vf <= 1
        assert ann["iscrowd"] == int(vf < CFG.min_visible_fraction or min(w, h) < CFG.min_visible_side)
        ax, ay, aw, ah = ann["amodal_bbox"]
        assert ax <= x and ay <= y and x + w <= ax + aw and y + h <= ay + ah  # visible box inside amodal
        if vf < CFG.min_visible_fraction:
            # Placement never lets occlusion alone hide more than 70 %: such objects are truncated.
            assert ax < 0 or ay < 0 or ax + aw > 256 or ay + ah > 256
        if not ann["iscrowd"] and vf < 0.95:
            partly_hidden += 1
    assert partly_hidden >= 20
    # Visible masks of one image never overlap (each pixel shows one object).
    for image_id in {a["image_id"] for a in anns}:
        masks = [decode_rle(a["segmentation"]) for a in anns if a["image_id"] == image_id]
        assert np.sum(masks, axis=0).max() <= 1


def test_annotation_rule_visible_box_crowd_and_drop():
    cfg = SyntheticDetectionConfig()
    owner = np.full((40, 40), -1, np.int16)
    owner[0:10, 0:10] = 0  # object 0: 100 of 100 visible
    owner[20:30, 20:25] = 1  # object 1: 50 of 100 visible -> visible box
    owner[30:32, 0:10] = 2  # object 2: 20 of 100 visible -> ignore region
    objects = [{"class_index": i, "full_area": 100, "amodal_box": (0, 0, 10, 10)} for i in range(4)]  # 3: hidden
    anns = sd.annotate(cfg, sd.RenderedImage(np.zeros((40, 40, 3), np.uint8), owner, objects))
    assert [(a["category_id"], a["bbox"], a["iscrowd"]) for a in anns] == [
        (1, [0, 0, 10, 10], 0), (2, [20, 20, 5, 10], 0), (3, [0, 30, 10, 2], 1)]
    assert [a["visible_fraction"] for a in anns] == [1.0, 0.5, 0.2]


# ------------------------------------------------------------------------------------- distributions
def test_size_and_aspect_distribution_spans_config(dataset):
    lo, hi = CFG.size_range
    rng = np.random.default_rng(0)
    specs = [sample_shape(rng, c, CFG.size_range, CFG.aspect_range, CFG.max_rotation_deg)
             for c in CLASS_NAMES for _ in range(400)]
    scale = np.array([np.sqrt(s.width * s.height) for s in specs])
    aspect = np.array([s.width / s.height for s in specs])
    assert scale.min() >= lo - 1e-6 and scale.max() <= hi + 1e-6
    assert scale.min() < 1.05 * lo and scale.max() > 0.95 * hi
    assert aspect.min() >= 1 / 3 - 1e-6 and aspect.max() <= 3 + 1e-6 and aspect.min() < 0.36 and aspect.max() > 2.8

    # The annotated boxes of fully visible objects: rotation (<= 30 deg) can grow a box by ~1.6x.
    full = [a for a in dataset[2]["annotations"] if a["visible_fraction"] == 1.0]
    s = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in full])
    r = np.array([a["bbox"][2] / a["bbox"][3] for a in full])
    assert s.min() >= lo - 1 and s.max() <= 1.6 * hi + 2
    assert s.min() < 1.5 * lo and s.max() > 0.8 * hi
    assert 0.25 < r.min() < 0.5 and 2.0 < r.max() < 4.0
    counts = np.bincount([a["category_id"] for a in dataset[2]["annotations"]], minlength=len(CLASS_NAMES) + 1)
    assert (counts[1:] > 0.1 * counts.sum()).all()  # every class well represented


# ------------------------------------------------------------------------------- idempotency & atomicity
def test_idempotent_reuse_and_regeneration(tmp_path, monkeypatch):
    cfg = _small()
    path = generate_synthetic_coco(tmp_path, "train", 4, cfg)
    before = path.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("should not regenerate")

    with monkeypatch.context() as m:
        m.setattr(sd, "render_image", boom)
        assert generate_synthetic_coco(tmp_path, "train", 4, cfg) == path
        # The default split sizes are not part of the stamp: only what determines the files is.
        generate_synthetic_coco(tmp_path, "train", 4, dataclasses.replace(cfg, num_train_images=9))
    assert path.stat().st_mtime_ns == before

    stamp = json.loads(path.read_text())["info"]["stamp"]
    generate_synthetic_coco(tmp_path, "train", 4, dataclasses.replace(cfg, clutter=0.9))  # new config
    assert json.loads(path.read_text())["info"]["stamp"] != stamp
    (tmp_path / "train" / "000003.jpg").unlink()  # incomplete image folder -> regenerate
    generate_synthetic_coco(tmp_path, "train", 4, dataclasses.replace(cfg, clutter=0.9))
    assert (tmp_path / "train" / "000003.jpg").is_file()
    generate_synthetic_coco(tmp_path, "train", 3, dataclasses.replace(cfg, clutter=0.9))  # fewer images
    assert sorted(os.listdir(tmp_path / "train")) == ["000001.jpg", "000002.jpg", "000003.jpg"]


def _no_temp_dirs(root: Path) -> bool:
    return not list(root.glob(".tmp-*"))


def test_failure_mid_write_leaves_no_json(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = sd._write_image

    def failing_write(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full")
        real_write(*a, **k)

    json_path, image_dir = sd.dataset_paths(tmp_path, "train")
    with monkeypatch.context() as m:
        m.setattr(sd, "_write_image", failing_write)
        with pytest.raises(RuntimeError):
            generate_synthetic_coco(tmp_path, "train", 5)
    assert not json_path.exists() and not image_dir.exists() and _no_temp_dirs(tmp_path)

    # A failed regeneration leaves the previous complete split untouched.
    generate_synthetic_coco(tmp_path, "train", 3)
    old = _sha(json_path)
    calls["n"] = 0
    with monkeypatch.context() as m:
        m.setattr(sd, "_write_image", failing_write)
        with pytest.raises(RuntimeError):
            generate_synthetic_coco(tmp_path, "train", 5, _small(clutter=0.1))
    assert _sha(json_path) == old and len(os.listdir(image_dir)) == 3 and _no_temp_dirs(tmp_path)

    # Failing at the very last step (moving the json in): no json at the final path.
    def failing_replace(src, dst):
        raise OSError("interrupted")

    with monkeypatch.context() as m:
        m.setattr(sd.os, "replace", failing_replace)
        with pytest.raises(OSError):
            generate_synthetic_coco(tmp_path, "train", 2, _small(clutter=0.2))
    assert not json_path.exists() and _no_temp_dirs(tmp_path)

    # A temp folder left by a killed run is cleaned up, and the next run completes.
    (tmp_path / ".tmp-train-killed").mkdir()
    generate_synthetic_coco(tmp_path, "train", 2)
    assert json_path.exists() and _no_temp_dirs(tmp_path)


def _generate_worker(root: str) -> int:
    return len(json.loads(generate_synthetic_coco(root, "train", 8).read_text())["images"])


def test_concurrent_generation_of_same_split(tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(2) as pool:
        assert pool.map(_generate_worker, [str(tmp_path)] * 2) == [8, 8]
    assert len(os.listdir(tmp_path / "train")) == 8 and _no_temp_dirs(tmp_path)


# ------------------------------------------------------------------------------------- config & tools
def test_config_validation():
    assert SyntheticDetectionConfig(image_size=[128, 160], size_range=[10, 50]).image_size == (128, 160)
    bad = [dict(classes=("rectangle", "blob")), dict(classes=()), dict(size_range=(50, 10)),
           dict(size_range=(12, 250)), dict(objects_per_image=(3, 1)), dict(occlusion=1.5),
           dict(image_format="bmp"), dict(aspect_range=(0, 2)), dict(jpeg_quality=101)]
    for kw in bad:
        with pytest.raises(ValueError):
            SyntheticDetectionConfig(**kw)
    with pytest.raises(ValueError):
        generate_synthetic_coco("/nonexistent-never-created", "../train", 1)
    cfg = SyntheticDetectionConfig(classes=("ring", "cross"))
    assert sd.annotate(cfg, sd.render_image(cfg, sd.image_rng(0, "x", 0)))[0]["category_id"] in (1, 2)


def test_cli_prints_counts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_synth", REPO / "tools" / "make_synthetic_detection.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--out", str(tmp_path), "--train", "3", "--val", "2", "--image-size", "128",
                      "--size-range", "10", "60"]) == 0
    out = capsys.readouterr().out
    assert "[train]" in out and "3 images" in out and "[val]" in out and "2 images" in out
    assert cv2.imread(str(tmp_path / "val" / "000002.jpg")).shape == (128, 128, 3)


@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="shared COCO tiny subset not present")
def test_optional_real_coco_crops_are_deterministic(tmp_path):
    cfg = _small(coco_dir=str(COCO_TINY), clutter=1.0, photo_probability=1.0)
    a = generate_synthetic_coco(tmp_path / "a", "val", 3, cfg)
    b = generate_synthetic_coco(tmp_path / "b", "val", 3, cfg)
    plain = generate_synthetic_coco(tmp_path / "c", "val", 3)
    assert _sha(a) == _sha(b)
    assert _sha(tmp_path / "a" / "val" / "000001.jpg") == _sha(tmp_path / "b" / "val" / "000001.jpg")
    assert _sha(tmp_path / "a" / "val" / "000001.jpg") != _sha(tmp_path / "c" / "val" / "000001.jpg")
    assert json.loads(a.read_text())["info"]["stamp"] != json.loads(plain.read_text())["info"]["stamp"]
