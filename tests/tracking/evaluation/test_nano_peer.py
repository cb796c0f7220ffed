"""The ``nano`` peer: OpenCV's NanoTrack v2 through the registry and the evaluation runner, on real footage."""
import os

import cv2
import numpy as np
import pytest

from ebm_refine.tracking.evaluation import evaluate_results, get_tracker_factory, run_dataset, tracker_results_dir
from ebm_refine.tracking.evaluation.baselines import NANOTRACK_FILES, nanotrack_files
from ebm_refine.utils import UserError


@pytest.fixture(scope="module")
def nano_files():
    if not hasattr(cv2, "TrackerNano"):
        pytest.skip(f"cv2.TrackerNano is absent from this OpenCV ({cv2.__version__}); it needs OpenCV >= 4.7")
    try:
        return nanotrack_files()
    except UserError as exc:
        pytest.skip(f"NanoTrack ONNX files absent (set EBM_WEIGHTS_DIR): {exc}")


@pytest.fixture(scope="module")
def crossing(tracking_data):
    from ebm_refine.tracking.datasets import load_dataset

    return load_dataset("otb", str(tracking_data / "otb"), sequences=["Crossing"])[0]


def test_nano_tracks_crossing_through_the_runner(nano_files, crossing, tmp_path):
    out = tracker_results_dir(str(tmp_path), "nano", "default")
    runs = run_dataset([crossing], get_tracker_factory("nano"), out, progress=False)
    assert [(r.status, r.n_frames) for r in runs] == [("done", 120)]
    res = evaluate_results([crossing], out, "otb")
    # Measured 75.99 AUC (otb protocol, all 120 frames; CSRT 76.98 on the same run): a working tracker.
    assert res["auc"] > 65.0 and res["precision"] > 90.0, res


def test_nano_hands_opencv_bgr_frames(nano_files, crossing):
    """The runner gives RGB frames; the wrapper must give OpenCV what it would read itself (BGR)."""
    from ebm_refine.tracking.datasets import read_frame

    frames = crossing.frames[:8]
    params = cv2.TrackerNano_Params()
    params.backbone, params.neckhead = nano_files["backbone"], nano_files["neckhead"]
    direct = cv2.TrackerNano.create(params)
    rect = tuple(int(round(v)) for v in crossing.init_box)
    direct.init(cv2.imread(frames[0]), rect)
    expected = [[float(v) for v in direct.update(cv2.imread(f))[1]] for f in frames[1:]]
    tr = get_tracker_factory("nano")()
    assert tr.initialize(read_frame(frames[0]), crossing.init_info())["target_bbox"] == [float(v) for v in rect]
    got = [tr.track(read_frame(f))["target_bbox"] for f in frames[1:]]
    assert got == expected
    # Swapped channels are a different input to the network (so the test above can tell the two apart).
    swapped = cv2.TrackerNano.create(params)
    swapped.init(read_frame(frames[0]), rect)
    assert [[float(v) for v in swapped.update(read_frame(f))[1]] for f in frames[1:]] != expected


def test_nano_files_by_set_and_missing_files_name_them(nano_files, tmp_path, eval_tracking_tool):
    from ebm_refine.tracking.evaluation.registry import with_overrides

    # The user's own files through --set (here: copies of the shared ones under other names).
    for key, path in nano_files.items():
        os.symlink(path, tmp_path / f"my_{key}.onnx")
    items = [f"backbone={tmp_path / 'my_backbone.onnx'}", f"neckhead={tmp_path / 'my_neckhead.onnx'}"]
    factory = with_overrides(get_tracker_factory("nano"), items)
    assert factory().files == {k: str(tmp_path / f"my_{k}.onnx") for k in NANOTRACK_FILES}
    with pytest.raises(UserError, match=r"neckhead=.*nope\.onnx.*nanotrack_head_sim\.onnx.*SiamTrackers") as err:
        with_overrides(get_tracker_factory("nano"), [f"neckhead={tmp_path / 'nope.onnx'}"])
    assert "\n" not in str(err.value) and "backbone=/" not in str(err.value)  # only the missing one named
    # The command: one line on stderr, exit 2.
    rc = eval_tracking_tool.run_cli(eval_tracking_tool.main, [
        "--dataset", "folder", "--root", str(tmp_path), "--tracker", "nano", "--set", "backbone=missing.onnx"])
    assert rc == 2


def test_nano_without_trackernano_says_what_to_install(monkeypatch):
    monkeypatch.delattr(cv2, "TrackerNano", raising=False)
    with pytest.raises(UserError, match=r"cv2\.TrackerNano.*opencv-contrib-python-headless"):
        get_tracker_factory("nano")
