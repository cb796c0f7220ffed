"""UAV123 / UAV20L / UAV123@10fps, TrackingNet, LaSOT, GOT-10k and folder layouts on fixture trees."""
import json
import os

import numpy as np
import pytest

from ebm_refine.tracking.datasets import (LASOT_TEST_SEQUENCES, UAV123_10FPS_FRAMES, UAV123_FRAMES,
                                          UAV20L_FRAMES, AnnotationError, dataset_names, load_dataset,
                                          register_dataset)
from tracking_helpers import touch_frames, write_boxes_txt, write_jpeg


def _gt(n, seed=0, nan_rows=()):
    rng = np.random.default_rng(seed)
    boxes = np.round(np.column_stack([rng.uniform(0, 500, (n, 2)), rng.uniform(5, 80, (n, 2))]), 1)
    boxes[list(nan_rows)] = np.nan
    return boxes


# ------------------------------------------------------------------------------------------------ UAV
def test_uav123_table_matches_got10k_json():
    got10k = pytest.importorskip("got10k")
    with open(os.path.join(os.path.dirname(got10k.__file__), "datasets", "uav123.json")) as fh:
        ref = json.load(fh)
    assert len(UAV123_FRAMES) == 123 and len(UAV20L_FRAMES) == 20
    for version, table in (("UAV123", UAV123_FRAMES), ("UAV20L", UAV20L_FRAMES)):
        assert set(ref[version]) == set(table)
        for name, meta in ref[version].items():
            assert table[name] == (meta["folder_name"], meta["start_frame"], meta["end_frame"]), name


def test_uav_table_facts():
    assert UAV123_FRAMES["bird1_2"] == ("bird1", 775, 1477)
    assert UAV123_FRAMES["uav1_3"] == ("uav1", 2473, 3469)          # a gap after uav1_2 (ends at 2377)
    # 10 fps: every third frame; published ranges for a few sequences
    assert UAV123_10FPS_FRAMES["bird1_2"] == ("bird1", 259, 493)
    assert UAV123_10FPS_FRAMES["wakeboard7"] == ("wakeboard7", 1, 67)
    assert UAV123_10FPS_FRAMES["car2_s"] == ("car2_s", 1, 107)
    assert UAV123_10FPS_FRAMES["uav1_3"] == ("uav1", 825, 1157)
    assert sum(b - a + 1 for _, a, b in UAV123_FRAMES.values()) == 112578  # frames of the benchmark


@pytest.fixture()
def uav_root(tmp_path):
    root = tmp_path / "UAV123"
    touch_frames(root / "data_seq" / "UAV123" / "bird1", range(1, 2438))
    touch_frames(root / "data_seq" / "UAV123" / "uav6", range(1, 110))
    touch_frames(root / "data_seq" / "UAV123_10fps" / "bird1", range(1, 814))
    write_boxes_txt(root / "anno" / "UAV123" / "bird1_2.txt", _gt(703, 1, nan_rows=range(100, 130)))
    write_boxes_txt(root / "anno" / "UAV123" / "uav6.txt", _gt(109, 2))
    write_boxes_txt(root / "anno" / "UAV20L" / "bird1.txt", _gt(2437, 3, nan_rows=[5, 2436]))
    write_boxes_txt(root / "anno" / "UAV123_10fps" / "bird1_2.txt", _gt(235, 4, nan_rows=[0 + 7]))
    return root


def test_uav123_sub_sequence_frames_and_nan_rows(uav_root):
    seqs = load_dataset("uav123", str(uav_root))
    assert [s.name for s in seqs] == ["bird1_2", "uav6"]           # only sequences with annotation files
    bird = seqs[0]
    assert len(bird) == 703 and bird.dataset == "uav123"
    assert bird.frames[0].endswith("data_seq/UAV123/bird1/000775.jpg")
    assert bird.frames[-1].endswith("data_seq/UAV123/bird1/001477.jpg")
    assert np.isnan(bird.ground_truth[100:130]).all() and np.isfinite(bird.ground_truth[:100]).all()
    np.testing.assert_allclose(bird.ground_truth[0], _gt(703, 1)[0])
    assert bird.meta == {"folder": "bird1", "first_frame": 775, "last_frame": 1477,
                         "anno_path": str(uav_root / "anno" / "UAV123" / "bird1_2.txt")}


def test_uav20l_and_10fps(uav_root):
    (long_bird,) = load_dataset("uav20l", str(uav_root))
    assert len(long_bird) == 2437 and np.isnan(long_bird.ground_truth[[5, 2436]]).all()
    (bird10,) = load_dataset("uav123_10fps", str(uav_root), sequences=["bird1_2"])
    assert len(bird10) == 235 and bird10.frames[0].endswith("UAV123_10fps/bird1/000259.jpg")
    assert bird10.frames[-1].endswith("000493.jpg") and np.isnan(bird10.ground_truth[7]).all()


def test_uav_errors_name_files(uav_root):
    anno = uav_root / "anno" / "UAV123" / "uav6.txt"
    write_boxes_txt(anno, _gt(108, 2))
    with pytest.raises(AnnotationError, match=r"uav6\.txt:109: 108 ground-truth rows but 109 frames"):
        load_dataset("uav123", str(uav_root), sequences=["uav6"])
    write_boxes_txt(anno, _gt(109, 2))
    os.unlink(uav_root / "data_seq" / "UAV123" / "bird1" / "001000.jpg")
    with pytest.raises(FileNotFoundError, match=r"bird1/001000\.jpg: missing frame"):
        load_dataset("uav123", str(uav_root), sequences=["bird1_2"])
    with pytest.raises(KeyError, match="bird9"):
        load_dataset("uav123", str(uav_root), sequences=["bird9"])


# ---------------------------------------------------------------------------------------- TrackingNet
@pytest.fixture()
def trackingnet_root(tmp_path):
    root = tmp_path / "TrackingNet"
    touch_frames(root / "TEST" / "frames" / "seqA", range(0, 12), "{}.jpg")
    write_boxes_txt(root / "TEST" / "anno" / "seqA.txt", _gt(1, 5))
    touch_frames(root / "TEST" / "frames" / "seqB", range(0, 3), "{}.jpg")
    write_boxes_txt(root / "TEST" / "anno" / "seqB.txt", _gt(1, 6))
    touch_frames(root / "TRAIN_0" / "frames" / "trainX", range(0, 15), "{}.jpg")
    write_boxes_txt(root / "TRAIN_0" / "anno" / "trainX.txt", _gt(15, 7))
    touch_frames(root / "TRAIN_11" / "frames" / "trainY", range(0, 4), "{}.jpg")
    write_boxes_txt(root / "TRAIN_11" / "anno" / "trainY.txt", _gt(4, 8))
    return root


def test_trackingnet_test_and_train_chunks(trackingnet_root):
    test = load_dataset("trackingnet", str(trackingnet_root))
    assert [(s.name, len(s), s.ground_truth.shape[0]) for s in test] == [("seqA", 12, 1), ("seqB", 3, 1)]
    assert not test[0].has_full_ground_truth
    assert [os.path.basename(f) for f in test[0].frames[9:12]] == ["9.jpg", "10.jpg", "11.jpg"]
    train = load_dataset("trackingnet", str(trackingnet_root), chunks="TRAIN")
    assert [(s.name, s.meta["chunk"], s.has_full_ground_truth) for s in train] == [
        ("trainX", "TRAIN_0", True), ("trainY", "TRAIN_11", True)]
    (y,) = load_dataset("trackingnet", str(trackingnet_root), chunks=[11], sequences=["trainY"])
    np.testing.assert_allclose(y.ground_truth, _gt(4, 8))


def test_trackingnet_train_needs_every_row(trackingnet_root):
    write_boxes_txt(trackingnet_root / "TRAIN_0" / "anno" / "trainX.txt", _gt(1, 7))
    with pytest.raises(AnnotationError, match=r"trainX\.txt:2: 1 ground-truth rows but 15 frames"):
        load_dataset("trackingnet", str(trackingnet_root), chunks="TRAIN_0")


# ------------------------------------------------------------------------------------ LaSOT, GOT-10k
def test_lasot_split_and_visibility(tmp_path):
    root = tmp_path / "LaSOT"
    for name in ("airplane-1", "airplane-2", "airplane-10"):
        d = root / "airplane" / name
        touch_frames(d / "img", range(1, 7), "{:08d}.jpg")
        write_boxes_txt(d / "groundtruth.txt", _gt(6, 9))
        (d / "full_occlusion.txt").write_text("0,0,1,0,0,0")
        (d / "out_of_view.txt").write_text("0,0,0,0,1,0")
    assert len(LASOT_TEST_SEQUENCES) == 280 and "airplane-1" in LASOT_TEST_SEQUENCES
    train = load_dataset("lasot", str(root), split="train")
    assert [s.name for s in train] == ["airplane-2", "airplane-10"]      # numeric order, test video excluded
    (test,) = load_dataset("lasot", str(root), split="test")
    assert test.name == "airplane-1" and test.object_class == "airplane" and test.dataset == "lasot"
    np.testing.assert_array_equal(test.target_visible, [1, 1, 0, 1, 0, 1])
    (root / "airplane" / "airplane-2" / "out_of_view.txt").write_text("0,0,0")
    with pytest.raises(AnnotationError, match=r"out_of_view\.txt:1: 3 flags but 6 frames"):
        load_dataset("lasot", str(root), sequences=["airplane-2"])


def test_got10k_train_and_test(tmp_path):
    root = tmp_path / "GOT-10k"
    d = root / "train" / "GOT-10k_Train_000001"
    touch_frames(d, range(1, 6), "{:08d}.jpg")
    write_boxes_txt(d / "groundtruth.txt", _gt(5, 10))
    (d / "absence.label").write_text("0\n0\n1\n0\n0\n")
    (d / "cover.label").write_text("8\n0\n0\n3\n8\n")
    (d / "meta_info.ini").write_text("[METAINFO]\nobject_class: zebra\nmotion_class: walking\n")
    (root / "train" / "list.txt").write_text("GOT-10k_Train_000001\n")
    t = root / "test" / "GOT-10k_Test_000001"
    touch_frames(t, range(1, 4), "{:08d}.jpg")
    write_boxes_txt(t / "groundtruth.txt", _gt(1, 11))
    (seq,) = load_dataset("got10k", str(root), split="train")
    assert len(seq) == 5 and seq.object_class == "zebra"
    np.testing.assert_array_equal(seq.target_visible, [1, 0, 0, 1, 1])
    (test,) = load_dataset("got10k", str(root), split="test")
    assert not test.has_full_ground_truth and len(test) == 3


# ------------------------------------------------------------------------------- folder and registry
def test_folder_loader_generated_frames(tmp_path):
    seq_dir = tmp_path / "myclip"
    for k in range(1, 5):
        write_jpeg(seq_dir / "frames" / f"frame_{k:03d}.png".replace(".png", ".jpg"),
                   np.full((16, 24, 3), 40 * k, np.uint8))
    write_boxes_txt(seq_dir / "myclip.txt", [[1, 2, 3, 4]], sep="\t")
    (seq,) = load_dataset("folder", str(seq_dir))
    assert seq.name == "myclip" and len(seq) == 4 and not seq.has_full_ground_truth
    np.testing.assert_array_equal(seq.init_box, [1, 2, 3, 4])
    write_boxes_txt(seq_dir / "myclip.txt", _gt(3, 1))
    with pytest.raises(AnnotationError, match=r"myclip\.txt:4: 3 ground-truth rows but 4 frames"):
        load_dataset("folder", str(seq_dir))


def test_dataset_registry():
    assert {"uav123", "uav20l", "uav123_10fps", "trackingnet", "otb", "vot", "folder", "lasot",
            "got10k"} <= set(dataset_names())
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        load_dataset("nope", "/tmp")
    with pytest.raises(KeyError, match="already registered"):
        register_dataset("otb", lambda root, sequences=None: [])


def test_otb_frame_ranges_apply_to_the_release_not_to_a_cut_copy(tmp_path):
    """OTB's David is annotated on frames 300..770 of its folder; a copy cut to its annotated frames and renumbered
    from 1 (one image per row, as in the project's training sequences) is read as it is."""
    write_boxes_txt(tmp_path / "cut" / "David" / "groundtruth_rect.txt", _gt(4))
    touch_frames(tmp_path / "cut" / "David" / "img", range(1, 5), "{:04d}.jpg")
    (seq,) = load_dataset("otb", str(tmp_path / "cut"))
    assert [os.path.basename(f) for f in seq.frames] == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"]
    # the release layout: more images than rows, the range names the annotated ones (here: 300 missing)
    write_boxes_txt(tmp_path / "release" / "David" / "groundtruth_rect.txt", _gt(4))
    touch_frames(tmp_path / "release" / "David" / "img", range(1, 10), "{:04d}.jpg")
    with pytest.raises(Exception, match="0300.jpg"):
        load_dataset("otb", str(tmp_path / "release"))
