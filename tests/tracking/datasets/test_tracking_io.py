"""Annotation parsing, frame listing and rotated-box conversion."""
import numpy as np
import pytest

from ebm_refine.tracking.datasets.io import (AnnotationError, DatasetError, list_frames, natural_key,
                                             polygon_to_xywh, read_box_file, read_flag_file)
from tracking_helpers import touch_frames


def _write(tmp_path, text, name="gt.txt"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text", ["1,2,3,4\n5,6,7,8\n", "1\t2\t3\t4\n5\t6\t7\t8\n", "1 2 3 4\n5  6 7 8\n",
                                  "1, 2,\t3 ,4\r\n5,6,7,8\n\n\n"])
def test_read_box_file_accepts_commas_tabs_spaces(tmp_path, text):
    boxes = read_box_file(_write(tmp_path, text))
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_read_box_file_keeps_nan_rows(tmp_path):
    boxes = read_box_file(_write(tmp_path, "1,2,3,4\nNaN,NaN,NaN,NaN\nnan,nan,nan,nan\n7.5,8,9,10\n"))
    assert boxes.shape == (4, 4)
    assert np.isnan(boxes[1]).all() and np.isnan(boxes[2]).all()
    assert boxes[3, 0] == 7.5
    with pytest.raises(AnnotationError, match=r"gt\.txt:2: NaN value not allowed"):
        read_box_file(_write(tmp_path, "1,2,3,4\nNaN,NaN,NaN,NaN\n"), allow_nan=False)


@pytest.mark.parametrize("text, line, what", [
    ("1,2,3,4\n5,6,x7,8\n", 2, "non-numeric value 'x7'"),
    ("1,2,3,4\n5,6,7\n", 2, "expected 4 values, got 3"),
    ("1,2,3,4\n\n5,6,7,8\n", 2, "blank line"),
    ("1,2,3,4\n1,2,3,4\n1,2,inf,4\n", 3, "infinite"),
])
def test_read_box_file_errors_name_file_and_line(tmp_path, text, line, what):
    path = _write(tmp_path, text)
    with pytest.raises(AnnotationError) as err:
        read_box_file(path)
    assert str(err.value).startswith(f"{path}:{line}:")
    assert what in str(err.value)


def test_read_box_file_mixed_widths_and_missing(tmp_path):
    path = _write(tmp_path, "1,2,3,4,5,6,7,8\n1,2,3,4\n")
    with pytest.raises(AnnotationError, match=r":2: 4 values but earlier lines have 8"):
        read_box_file(path, ncols=(4, 8))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_box_file(str(tmp_path / "nope.txt"))
    with pytest.raises(AnnotationError, match="empty"):
        read_box_file(_write(tmp_path, "\n\n", "empty.txt"))


def test_read_flag_file_both_layouts(tmp_path):
    np.testing.assert_array_equal(read_flag_file(_write(tmp_path, "0,1,1,0\n")), [0, 1, 1, 0])
    np.testing.assert_array_equal(read_flag_file(_write(tmp_path, "0\n1\n0\n", "b.label")), [0, 1, 0])
    with pytest.raises(AnnotationError, match=r"c.label:2: non-numeric flag 'y'"):
        read_flag_file(_write(tmp_path, "0\ny\n", "c.label"))


def test_list_frames_numeric_order_and_gaps(tmp_path):
    touch_frames(tmp_path / "f", range(0, 12), "{}.jpg")
    frames = list_frames(str(tmp_path / "f"))
    assert [p.rsplit("/", 1)[1] for p in frames[:3]] == ["0.jpg", "1.jpg", "2.jpg"]
    assert frames[10].endswith("/10.jpg") and len(frames) == 12
    (tmp_path / "f" / "5.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"/f/5\.jpg: missing frame"):
        list_frames(str(tmp_path / "f"))
    touch_frames(tmp_path / "g", range(1, 21), "{:04d}.jpg")
    sub = list_frames(str(tmp_path / "g"), frame_range=(5, 9))
    assert [p[-8:] for p in sub] == ["0005.jpg", "0006.jpg", "0007.jpg", "0008.jpg", "0009.jpg"]
    with pytest.raises(FileNotFoundError, match=r"/g/0021\.jpg: missing frame"):
        list_frames(str(tmp_path / "g"), frame_range=(15, 21))


def test_polygon_conversions_on_a_rotated_square():
    # a square of side 10 centred at (50, 40), rotated by 45 degrees
    r = 10 / np.sqrt(2)
    poly = np.array([[50 - r, 40, 50, 40 - r, 50 + r, 40, 50, 40 + r]])
    mm = polygon_to_xywh(poly, "minmax")[0]
    np.testing.assert_allclose(mm, [50 - r, 40 - r, 2 * r, 2 * r])
    pa = polygon_to_xywh(poly, "preserve_area")[0]
    np.testing.assert_allclose(pa, [45, 35, 10, 10])          # same area (100) and centre
    np.testing.assert_array_equal(polygon_to_xywh(np.array([[1, 2, 3, 4.0]])), [[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="unknown rotated-box mode"):
        polygon_to_xywh(poly, "whatever")


def test_preserve_area_matches_got10k_corner2rect_up_to_its_one_pixel(tracking_data):
    got10k_vot = pytest.importorskip("got10k.datasets.vot")
    poly = read_box_file(str(tracking_data / "vot" / "bag" / "groundtruth.txt"), ncols=(8,))
    ref = got10k_vot.VOT._corner2rect(object.__new__(got10k_vot.VOT), poly)
    ours = polygon_to_xywh(poly, "preserve_area")
    # got10k adds one pixel to w and h around the same centre
    np.testing.assert_allclose(ours[:, 2:] + 1, ref[:, 2:], atol=1e-9)
    np.testing.assert_allclose(ours[:, :2] + ours[:, 2:] / 2, ref[:, :2] + ref[:, 2:] / 2, atol=1e-9)


def test_list_frames_of_any_names_in_natural_order(tmp_path):
    """numbered=False (a folder of photos): any image name, digit runs compared as numbers, no gap checks."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["img10.jpg", "img2.jpg", "cat.png", "IMG1.tif", "notes.txt", ".hidden.jpg"]:
        (folder / name).write_bytes(b"")
    names = [p.rsplit("/", 1)[-1] for p in list_frames(str(folder), numbered=False)]
    assert names == ["cat.png", "IMG1.tif", "img2.jpg", "img10.jpg"]
    with pytest.raises(DatasetError, match="cat.png: not a frame of the sequence"):
        list_frames(str(folder))
    assert natural_key("a/b/Frame12_x3.jpg") == ["frame", 12, "_x", 3, ".jpg"]
    with pytest.raises(ValueError, match="frame_range"):
        list_frames(str(folder), numbered=False, frame_range=(1, 2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no images"):
        list_frames(str(tmp_path / "empty"), numbered=False)
