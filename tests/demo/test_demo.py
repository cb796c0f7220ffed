"""demo/demo.py: both modes on a few frames with tiny random-init models, and the bad-input exits.

The happy paths call ``main(argv)`` in-process (Detectron2 and torch are imported once); the exit-code
cases run the script as a subprocess, which is cheap because it validates input and output before it
imports any model code.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "demo" / "demo.py"
sys.path.insert(0, str(REPO / "tests" / "detectron2"))
sys.path.insert(0, str(REPO / "tests" / "tracking"))

from d2_helpers import small_cfg  # noqa: E402
from tracker_helpers import TINY_NET, TINY_TRACKER, one_torch_thread  # noqa: E402

# The tiny detector of tests/detectron2 (128 px, narrow heads) as --opts for the demo's config file.
TINY_DET_OPTS = [
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.COMPACT_RESNET.WIDTHS", "[16, 16, 32, 32]", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.EBM.HEAD.FC_DIM", "64", "MODEL.EBM.NUM_SAMPLES", "16",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]
CONFIG = "configs/Synthetic/ebm_compact_fpn_synthetic.yaml"


from ebm_refine import visualization as predictor  # noqa: E402  (what the demo draws; Detectron2's predictor.py)
from ebm_refine.cli import demo  # noqa: E402  (demo/demo.py runs its command)


def _flatten(d: dict, prefix: str = "") -> List[str]:
    """Nested tracker overrides as the demo's ``--set key=value`` items (values in YAML flow style)."""
    import yaml

    items = []
    for k, v in d.items():
        if isinstance(v, dict) and k != "augmentation":
            items += _flatten(v, f"{prefix}{k}.")
        else:
            items.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True).strip()}")
    return items


def video_info(path: Path) -> Tuple[int, int, int]:
    """(frame count, width, height) as OpenCV reads them back."""
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    info = (int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    return info


def no_partials(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".partial" in p.name or ".probe" in p.name]


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=120)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _frame(i: int, w: int = 160, h: int = 120) -> np.ndarray:
    img = np.full((h, w, 3), 40, np.uint8)
    cv2.rectangle(img, (20 + 6 * i, 30), (80 + 6 * i, 90), (0, 200, 255), -1)
    cv2.circle(img, (120, 40 + 5 * i), 15, (255, 80, 0), -1)
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A 4-frame mp4, 3 images (the last one larger) and tiny random-init detector weights."""
    root = tmp_path_factory.mktemp("demo_data")
    video = root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (160, 120))
    for i in range(4):
        writer.write(_frame(i))
    writer.release()
    images = []
    for i in range(3):
        p = root / f"img{i}.png"
        cv2.imwrite(str(p), _frame(i, *((200, 150) if i == 2 else (160, 120))))
        images.append(str(p))
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    model = build_model(small_cfg(root / "unused"))
    weights = root / "tiny_det.pth"
    torch.save({"model": model.state_dict()}, weights)
    return {"root": root, "video": video, "images": images, "weights": weights}


def det_args(data: dict, *extra: str) -> List[str]:
    return ["--config-file", str(REPO / CONFIG), "--confidence-threshold", "0.0", *extra,
            "--opts", *TINY_DET_OPTS, "MODEL.WEIGHTS", str(data["weights"])]


# ----------------------------------------------------------------------------------------- detection
def test_detect_video_to_mp4(data, tmp_path):
    out = tmp_path / "out" / "det.mp4"
    assert demo.main(["detect", "--video-input", str(data["video"]), "--output", str(out), *det_args(data)]) == 0
    assert video_info(out) == (4, 160, 120)
    assert no_partials(tmp_path)


def test_detect_images_to_mp4_and_folder(data, tmp_path):
    out = tmp_path / "imgs.mp4"
    assert demo.main(["--mode", "detect", "--input", *data["images"], "--output", str(out), *det_args(data)]) == 0
    # Later frames are resized to the first frame's size.
    assert video_info(out) == (3, 160, 120)
    folder = tmp_path / "frames"
    assert demo.main(["detect", "--input", *data["images"][:2], "--output", str(folder), *det_args(data)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["img0.png", "img1.png"]
    assert cv2.imread(str(folder / "img1.png")).shape == (120, 160, 3)
    assert no_partials(tmp_path)


def test_detect_predictor_outputs(data):
    """The predictor returns refined and unrefined boxes, scores, classes and energies."""
    cfg = demo.load_detection_cfg(str(REPO / CONFIG), [*TINY_DET_OPTS, "MODEL.WEIGHTS", str(data["weights"])], 0.0)
    from ebm_refine.detectron2 import EBMPredictor

    inst = EBMPredictor(cfg)(_frame(0))
    assert len(inst) > 0
    for field in ("pred_boxes", "pred_boxes_unrefined", "scores", "pred_classes", "pred_energies"):
        assert inst.has(field), field
    drawn = predictor.draw_detections(_frame(0), inst, predictor.class_names(cfg), 0.0)
    assert drawn.shape == (120, 160, 3) and not np.array_equal(drawn, _frame(0))


def test_failure_mid_run_leaves_no_output(data, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "o" / "x.mp4"
    rc = demo.main(["detect", "--input", data["images"][0], str(bad), "--output", str(out), *det_args(data)])
    assert rc == 2
    assert not out.exists() and no_partials(tmp_path)


# ----------------------------------------------------------------------------------------- tracking
@pytest.fixture(scope="module")
def tiny_tracker(tmp_path_factory) -> List[str]:
    """--checkpoint/--set arguments for the tests' tiny random-init TrackerNet and small tracker settings."""
    from ebm_refine.tracking.models import TrackerNet
    from ebm_refine.tracking.models.network import save_net

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tracker") / "net.pth"
    save_net(str(path), TrackerNet(TINY_NET).eval())
    return ["--checkpoint", str(path), "--threads", "1", "--set", *_flatten(TINY_TRACKER)]


def shared_data_dir() -> Path:
    return Path(os.environ.get("EBM_SHARED_DATA", REPO.parent / "shared" / "data"))


def test_track_otb_sequence(tiny_tracker, tmp_path):
    seq = shared_data_dir() / "tracking" / "otb" / "Crossing"
    if not (seq / "img").is_dir():
        pytest.skip(f"OTB Crossing not found under {shared_data_dir()} (set EBM_SHARED_DATA)")
    h, w = cv2.imread(str(seq / "img" / "0001.jpg")).shape[:2]
    rc = demo.main(["track", "--input", str(seq / "img"), "--ground-truth", str(seq / "groundtruth_rect.txt"),
                    "--max-frames", "5", "--output", str(tmp_path), *tiny_tracker])
    assert rc == 0
    # A folder output is named after the sequence, not after its img/ subfolder.
    assert video_info(tmp_path / "Crossing.mp4") == (5, w, h)
    assert no_partials(tmp_path)


def test_track_generated_frames_numeric_order(tiny_tracker, tmp_path):
    """A frame folder without zero padding (1.png … 12.png) and --init-box; no shared data needed."""
    frames = tmp_path / "seq"
    frames.mkdir()
    for i in range(1, 13):
        cv2.imwrite(str(frames / f"{i}.png"), _frame(i % 6))
    assert [Path(p).name for p in demo.expand_inputs([str(frames)], sequence=True)][:3] == ["1.png", "2.png", "3.png"]
    out = tmp_path / "track.mp4"
    rc = demo.main(["track", "--input", str(frames), "--init-box", "20,30,60,60", "--max-frames", "4",
                    "--output", str(out), *tiny_tracker])
    assert rc == 0
    assert video_info(out) == (4, 160, 120)


def test_track_video_file(tiny_tracker, data, tmp_path, monkeypatch, capsys):
    """A video file; every frame's legend says the tracker's time for it and what the energy means, and the
    demo says what it loads before the first frame."""
    real_legend, texts = predictor.legend, []
    monkeypatch.setattr(predictor, "legend", lambda img, entries, extra=(): (texts.append(list(extra)),
                                                                             real_legend(img, entries, extra)))
    out = tmp_path / "t.mp4"
    assert demo.main(["--mode", "track", "--video-input", str(data["video"]), "--init-box", "20,30,60,60",
                      "--output", str(out), *tiny_tracker]) == 0
    assert video_info(out) == (4, 160, 120)
    assert len(texts) == 4 and all(t[1] == predictor.ENERGY_LEGEND for t in texts)
    assert texts[0][0].startswith("frame 1  initial box  ") and texts[3][0].startswith("frame 4  energy ")
    assert all(t[0].endswith(" ms") and int(t[0].split()[-2]) >= 0 for t in texts), texts
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "demo.py: loading the tracker (ebm)" and err[1].startswith("demo.py: network ")


# ----------------------------------------------------------------------------------------- bad input
def test_missing_video_exits_nonzero(tmp_path):
    r = run_script("detect", "--video-input", str(tmp_path / "nope.mp4"), "--output", str(tmp_path / "o.mp4"))
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_unreadable_video_exits_nonzero(tmp_path):
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 1000)
    r = run_script("track", "--video-input", str(fake), "--init-box", "1,1,5,5", "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and ("cannot open" in r.stderr or "no frames" in r.stderr)
    assert not (tmp_path / "o" / "fake.mp4").exists()


def test_empty_folder_exits_nonzero_without_output(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    r = run_script("track", "--input", str(empty), "--init-box", "1,1,5,5", "--output", str(out))
    assert r.returncode == 2 and "no images" in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_exits_nonzero(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    r = run_script("detect", "--video-input", str(data["video"]), "--output", str(blocker / "sub" / "o.mp4"))
    assert r.returncode == 2 and "cannot write this output" in r.stderr


def test_usage_errors_exit_2(tmp_path):
    assert run_script("detect", "--output", str(tmp_path / "o.mp4")).returncode == 2  # no input
    assert demo.main(["track", "--output", str(tmp_path)]) == 2


def test_track_reads_the_webcam(tmp_path, capsys, one_line_error):
    """track accepts --webcam; without a camera (as here) it ends with the webcam's one-line error."""
    if cv2.VideoCapture(7).isOpened():
        pytest.skip("this machine has a camera at index 7")
    rc = demo.main(["track", "--webcam", "--webcam-index", "7", "--init-box", "1,1,5,5", "--output", str(tmp_path)])
    assert rc == 2
    one_line_error(capsys.readouterr().err, "demo.py", "cannot open webcam 7")


def _has_gui() -> bool:
    return "GUI:                           NONE" not in cv2.getBuildInformation()


@pytest.mark.parametrize("display", [None, ":99"])
def test_track_without_start_box_needs_a_window_or_init_box(tmp_path, data, display, one_line_error):
    """No --init-box or --ground-truth: the box is drawn in a window (cv2.selectROI); without a display, or
    with an OpenCV that has no GUI (the headless build), one line says to pass --init-box."""
    if display and _has_gui():
        pytest.skip("this OpenCV has a GUI: with a fake display it would try to open a window")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    if display:
        env["DISPLAY"] = display
    r = subprocess.run([sys.executable, str(SCRIPT), "track", "--video-input", str(data["video"]), "--output",
                        str(tmp_path / "o.mp4")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and not (tmp_path / "o.mp4").exists()
    line = one_line_error(r.stderr, "demo.py", "no window can open to draw the start box",
                          "pass the box as --init-box x,y,w,h")
    assert ("DISPLAY is not set" in line) == (display is None), line


# ------------------------------------------------------------------- bad input and interruptions (issue 14)
@pytest.fixture()
def demo_error(one_line_error):
    return lambda stderr, *fragments: one_line_error(stderr, "demo.py", *fragments)


def _frames_folder(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        cv2.imwrite(str(folder / f"{i}.jpg"), _frame(i % 6))
    return folder


def test_ctrl_c_keeps_a_complete_earlier_output(data, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of a frame-folder render: the earlier complete video stays, nothing partial."""
    frames = _frames_folder(tmp_path / "frames", 6)
    out = tmp_path / "o" / "det.mp4"
    assert demo.main(["detect", "--input", str(frames), "--output", str(out), *det_args(data)]) == 0
    before = out.read_bytes()
    assert video_info(out)[0] == 6
    real_draw, calls = predictor.draw_detections, []

    def interrupted_on_third_frame(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_draw(*args, **kwargs)

    monkeypatch.setattr(predictor, "draw_detections", interrupted_on_third_frame)
    capsys.readouterr()
    assert demo.main(["detect", "--input", str(frames), "--output", str(out), *det_args(data)]) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"demo.py: interrupted after 2 frame(s); the partial render was discarded and {out} was left "
                   "as it was")
    assert out.read_bytes() == before and no_partials(tmp_path)
    # a first run interrupted the same way writes nothing at all
    calls.clear()
    fresh = tmp_path / "fresh.mp4"
    assert demo.main(["detect", "--input", str(frames), "--output", str(fresh), *det_args(data)]) == 130
    assert not fresh.exists() and no_partials(tmp_path)


def test_stale_partial_files_are_cleaned_and_concurrent_runs_refused(data, tmp_path, demo_error):
    from ebm_refine.utils import file_lock

    out = tmp_path / "det.mp4"
    stale = tmp_path / ".det.k2j4h1x9.partial.mp4"                 # what a SIGKILLed run leaves behind
    stale.write_bytes(b"\x00" * 100)
    other = tmp_path / ".other.k2j4h1x9.partial.mp4"               # another output's: not ours to remove
    other.write_bytes(b"\x00")
    with file_lock(str(tmp_path / ".det.mp4.lock"), blocking=False) as held:  # a second demo run writing det.mp4
        assert held
        r = run_script("detect", "--video-input", str(data["video"]), "--output", str(out), *det_args(data))
    assert r.returncode == 2 and not out.exists() and stale.exists()
    demo_error(r.stderr, "another demo.py run is writing", str(out))
    assert demo.main(["detect", "--video-input", str(data["video"]), "--output", str(out), *det_args(data)]) == 0
    assert video_info(out) == (4, 160, 120)
    assert not stale.exists() and other.exists() and not (tmp_path / ".det.mp4.lock").exists()


def test_detect_without_weights_is_refused(data, tmp_path, capsys, demo_error):
    assert demo.main(["detect", "--video-input", str(data["video"]), "--output", str(tmp_path / "o.mp4"),
                      "--config-file", CONFIG, "--opts", *TINY_DET_OPTS]) == 2
    demo_error(capsys.readouterr().err, "MODEL.WEIGHTS is not set", "--opts MODEL.WEIGHTS")
    assert not (tmp_path / "o.mp4").exists() and no_partials(tmp_path)


def test_checkpoints_of_the_wrong_kind(data, tiny_tracker, tmp_path, capsys, demo_error):
    text = tmp_path / "notes.pth"
    text.write_text("git clone ...\n")
    # a Detectron2 checkpoint given to the tracker: KeyError 'config' before, one line now
    args = list(tiny_tracker)
    args[args.index("--checkpoint") + 1] = str(data["weights"])
    assert demo.main(["track", "--video-input", str(data["video"]), "--init-box", "20,30,60,60",
                      "--output", str(tmp_path / "t.mp4"), *args]) == 2
    demo_error(capsys.readouterr().err, str(data["weights"]), "not a tracker network file (it holds model)",
               "tools/train_tracker.py")
    # a text file as detector weights: one line naming it (EBMCheckpointer's message; the demo words the
    # load failures the checkpointer does not catch itself)
    det = [a if a != str(data["weights"]) else str(text) for a in det_args(data)]
    assert demo.main(["detect", "--video-input", str(data["video"]), "--output", str(tmp_path / "d.mp4"), *det]) == 2
    demo_error(capsys.readouterr().err, str(text), "checkpoint")
    assert not (tmp_path / "t.mp4").exists() and not (tmp_path / "d.mp4").exists() and no_partials(tmp_path)


def test_negative_init_box_values_and_too_small_frames(tiny_tracker, tmp_path, capsys, demo_error):
    frames = _frames_folder(tmp_path / "frames", 3)
    out = tmp_path / "t.mp4"
    # argparse would read "-30,-40,50,60" as an option; the box overlaps the frame, so it is valid
    assert demo.main(["track", "--input", str(frames), "--init-box", "-30,-40,80,100", "--output", str(out),
                      *tiny_tracker]) == 0
    assert video_info(out) == (3, 160, 120)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    cv2.imwrite(str(tiny / "1.png"), np.zeros((1, 1, 3), np.uint8))
    capsys.readouterr()
    assert demo.main(["track", "--input", str(tiny), "--init-box", "0,0,1,1", "--output", str(tmp_path / "x.mp4")]) == 2
    demo_error(capsys.readouterr().err, str(tiny), "frames are 1x1 px", "at least 16x16 px")
    assert not (tmp_path / "x.mp4").exists() and no_partials(tmp_path)
    assert demo.main(["track", "--input", str(frames), "--init-box", "-300,-40,80,100", "--output",
                      str(tmp_path / "y.mp4")]) == 2
    demo_error(capsys.readouterr().err, "--init-box", "outside the 160x120 image")


def test_truncated_frame_and_non_finite_energy_warn_once(tiny_tracker, tmp_path, capsys):
    """A truncated JPEG is drawn with one warning; a network whose energies overflow warns once and counts."""
    from ebm_refine.tracking.models import TrackerNet
    from ebm_refine.tracking.models.network import save_net

    frames = _frames_folder(tmp_path / "frames", 5)
    whole = (frames / "3.jpg").read_bytes()
    (frames / "3.jpg").write_bytes(whole[: len(whole) // 2])
    torch.manual_seed(0)
    net = TrackerNet(TINY_NET).eval()
    with torch.no_grad():  # finite weights whose energy overflows float32: +inf on every box
        net.estimator.head.bias.fill_(torch.finfo(torch.float32).max)
        net.estimator.head.weight.abs_()
    path = tmp_path / "overflow.pth"
    save_net(str(path), net)
    args = list(tiny_tracker)
    args[args.index("--checkpoint") + 1] = str(path)
    out = tmp_path / "t.mp4"
    assert demo.main(["track", "--input", str(frames), "--init-box", "20,30,60,60", "--output", str(out), *args]) == 0
    assert video_info(out) == (5, 160, 120)
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert [w for w in warnings if "truncated JPEG" in w] == [
        f"demo.py: warning: {frames / '3.jpg'}: truncated JPEG, drawn as far as its data goes (the rest is grey); "
        "copy the file again for a clean video"]
    energy = [w for w in warnings if "energy" in w]
    assert energy[0].startswith("demo.py: warning: frame 2: the box energy is inf") and str(path) in energy[0]
    assert energy[1] == "demo.py: warning: 4 frames with a non-finite energy in all" and len(energy) == 2


def test_ground_truth_and_frame_folders_follow_the_dataset_readers(tiny_tracker, tmp_path, capsys, demo_error):
    """--ground-truth is read by read_box_file and a track folder listed by list_frames: errors name file:line."""
    frames = _frames_folder(tmp_path / "seq", 4)
    gt = tmp_path / "gt.txt"

    def track(*extra: str) -> int:
        capsys.readouterr()
        return demo.main(["track", "--input", str(frames), "--output", str(tmp_path / "t.mp4"), *extra])

    gt.write_text("20,30,60,60\n21,x,60,60\n")
    assert track("--ground-truth", str(gt)) == 2
    demo_error(capsys.readouterr().err, f"{gt}:2: non-numeric value 'x'")
    gt.write_text("NaN,NaN,NaN,NaN\n20,30,60,60\n")
    assert track("--ground-truth", str(gt)) == 2
    demo_error(capsys.readouterr().err, f"{gt}:1: not a box x,y,w,h", "--init-box")
    gt.write_text("20,30,60,60\n21,30,-60,60\n")
    assert track("--ground-truth", str(gt)) == 2
    demo_error(capsys.readouterr().err, f"{gt}:2: box", "negative width or height")
    # a ground truth has one row per frame: a missing frame would shift it, so it is an error ...
    (frames / "3.jpg").unlink()                                     # frames 1, 2, 4
    gt.write_text("20,30,60,60\n21,30,60,60\nNaN,NaN,NaN,NaN\n22,30,60,60\n")
    assert track("--ground-truth", str(gt)) == 2
    demo_error(capsys.readouterr().err, str(frames / "3.jpg"), "missing frame")
    # ... while frames alone may skip numbers; a NaN row (frame 3) is a frame without a box
    assert track("--init-box", "20,30,60,60", *tiny_tracker) == 0
    assert video_info(tmp_path / "t.mp4") == (3, 160, 120)
    cv2.imwrite(str(frames / "3.jpg"), _frame(3))
    assert track("--ground-truth", str(gt), *tiny_tracker) == 0
    assert video_info(tmp_path / "t.mp4") == (4, 160, 120)
    cv2.imwrite(str(frames / "thumb.jpg"), _frame(0))               # a file that is not a frame
    assert track("--init-box", "20,30,60,60") == 2
    demo_error(capsys.readouterr().err, str(frames / "thumb.jpg"), "not a frame of the sequence")
    assert no_partials(tmp_path)
