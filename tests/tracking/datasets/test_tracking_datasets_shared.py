"""Every real sequence in shared data loads with the right frame count, frames and boxes; corrupted copies
of them fail with errors that name the file (and line)."""
import os
import shutil

import numpy as np
import pytest

from ebm_refine.tracking.datasets import AnnotationError, load_dataset, read_frame

# name -> (dataset, sub-root, frame count, image (h, w), first box, last box) from the shared README and
# the annotation files themselves.
EXPECTED = {
    "Crossing": ("otb", "otb", 120, (240, 360), [205, 151, 17, 50], None),
    "DragonBaby": ("otb", "otb", 113, (360, 640), [160, 83, 56, 65], None),
    "wakeboard7": ("uav123_10fps", "uav123_10fps", 67, (720, 1280), [623, 299, 11, 38], None),
    "bag": ("vot", "vot", 196, (360, 480), None, None),
}


def _raw_rows(path):
    rows = []
    with open(path) as fh:
        for line in fh:
            if line.strip():
                rows.append([float(v) for v in line.replace(",", " ").split()])
    return np.asarray(rows)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_sequence_loads(tracking_data, name):
    dataset, sub, n, hw, first, _ = EXPECTED[name]
    (seq,) = load_dataset(dataset, str(tracking_data / sub), sequences=[name])
    assert seq.name == name and seq.dataset == dataset
    assert len(seq) == n and seq.ground_truth.shape == (n, 4) and seq.has_full_ground_truth
    assert all(os.path.isfile(f) for f in seq.frames)
    assert [os.path.basename(f) for f in seq.frames] == sorted(os.path.basename(f) for f in seq.frames)
    img = read_frame(seq.frames[-1])
    assert img.shape == hw + (3,) and img.dtype == np.uint8
    if first is not None:
        np.testing.assert_array_equal(seq.ground_truth[0], first)
    assert np.isfinite(seq.ground_truth).all()  # none of the shared sequences has NaN rows


def test_shared_boxes_equal_the_files(tracking_data):
    for name, (dataset, sub, *_rest) in EXPECTED.items():
        (seq,) = load_dataset(dataset, str(tracking_data / sub), sequences=[name])
        if dataset == "otb":
            raw = _raw_rows(tracking_data / sub / name / "groundtruth_rect.txt")
        elif dataset == "uav123_10fps":
            raw = _raw_rows(tracking_data / sub / "anno" / "UAV123_10fps" / f"{name}.txt")
        else:
            poly = _raw_rows(tracking_data / sub / name / "groundtruth.txt")
            xs, ys = poly[:, 0::2], poly[:, 1::2]
            raw = np.stack([xs.min(1), ys.min(1), xs.max(1) - xs.min(1), ys.max(1) - ys.min(1)], 1)
        np.testing.assert_allclose(seq.ground_truth, raw)


def test_vot_bag_first_box_by_hand(tracking_data):
    (seq,) = load_dataset("vot", str(tracking_data / "vot"))
    # first polygon 291.827,203.603,396.382,264.289,442.173,185.397,337.618,124.711
    np.testing.assert_allclose(seq.ground_truth[0], [291.827, 124.711, 442.173 - 291.827, 264.289 - 124.711])
    assert seq.meta["polygons"].shape == (196, 8)
    (pa,) = load_dataset("vot", str(tracking_data / "vot"), rotated_box_mode="preserve_area")
    assert pa.ground_truth[0, 2] * pa.ground_truth[0, 3] < seq.ground_truth[0, 2] * seq.ground_truth[0, 3]


def test_folder_loader_reads_the_shared_sequences(tracking_data):
    seqs = load_dataset("folder", str(tracking_data / "otb"))
    assert [(s.name, len(s)) for s in seqs] == [("Crossing", 120), ("DragonBaby", 113)]
    (bag,) = load_dataset("folder", str(tracking_data / "vot" / "bag"))
    assert len(bag) == 196 and bag.frames[0].endswith("color/00000001.jpg")


@pytest.fixture()
def crossing_copy(tracking_data, tmp_path):
    """Crossing with symlinked frames and a writable copy of its annotation."""
    src = tracking_data / "otb" / "Crossing"
    dst = tmp_path / "otb" / "Crossing"
    (dst / "img").mkdir(parents=True)
    for f in os.listdir(src / "img"):
        os.symlink(src / "img" / f, dst / "img" / f)
    shutil.copy(src / "groundtruth_rect.txt", dst / "groundtruth_rect.txt")
    return dst


def test_missing_frame_is_named(crossing_copy):
    os.unlink(crossing_copy / "img" / "0057.jpg")
    with pytest.raises(FileNotFoundError, match=r"Crossing/img/0057\.jpg: missing frame"):
        load_dataset("otb", str(crossing_copy.parent))


def test_row_count_mismatch_is_named(crossing_copy):
    gt = crossing_copy / "groundtruth_rect.txt"
    gt.write_text(gt.read_text() + "1\t2\t3\t4\n")
    with pytest.raises(AnnotationError, match=r"groundtruth_rect\.txt:121: 121 ground-truth rows but 120 frames"):
        load_dataset("otb", str(crossing_copy.parent))


def test_non_numeric_line_is_named(crossing_copy):
    gt = crossing_copy / "groundtruth_rect.txt"
    lines = gt.read_text().splitlines()
    lines[41] = "205\t151\tseventeen\t50"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(AnnotationError, match=r"groundtruth_rect\.txt:42: non-numeric value 'seventeen'"):
        load_dataset("otb", str(crossing_copy.parent))
