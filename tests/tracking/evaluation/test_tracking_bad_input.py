"""Bad input to the tracking evaluation (issue 14): every case ends with one line naming the file or name and
what to do (exit status 2, no traceback) and leaves nothing half-written; truncated frames are tracked with
one warning and counted; result-file rules are the same in every protocol; the pytracking protocol follows
current pytracking and never exceeds 100 %; two runners on one results folder share the work."""
import logging
import multiprocessing as mp
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ebm_refine.tracking.datasets import AnnotationError, Sequence, load_dataset
from ebm_refine.tracking.evaluation import (PROTOCOLS, RunInputError, TrackerFactory, evaluate_results,
                                            pack_trackingnet, run_dataset, score_sequence, write_boxes,
                                            write_report)
from ebm_refine.tracking.evaluation.runner import lock_path
from ebm_refine.utils import UserError, file_lock
from ebm_refine.utils.cli import run_cli
from tracking_helpers import run_otb_folder, write_boxes_txt, write_jpeg

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "eval_tracking.py"


@pytest.fixture(scope="module")
def cli(eval_tracking_tool):
    return lambda argv: run_cli(eval_tracking_tool.main, argv, prog="eval_tracking.py")


@pytest.fixture()
def eval_error(one_line_error):
    return lambda stderr, *fragments: one_line_error(stderr, "eval_tracking.py", *fragments)


def _folder_dataset(root: Path, names=("s1", "s2"), n: int = 6) -> Path:
    """OTB layout: <root>/<name>/img/0001.jpg... plus groundtruth_rect.txt (a box moving right)."""
    rng = np.random.default_rng(0)
    for name in names:
        for i in range(n):
            write_jpeg(root / name / "img" / f"{i + 1:04d}.jpg", rng.integers(0, 255, (48, 64, 3), np.uint8))
        write_boxes_txt(root / name / "groundtruth_rect.txt", [[10 + i, 12, 20, 16] for i in range(n)])
    return root


@pytest.fixture()
def otb(tmp_path) -> Path:
    return _folder_dataset(tmp_path / "otb")


# ------------------------------------------------------------------------------------- names and paths
@pytest.mark.parametrize("args, fragments", [
    (["--root", "{tmp}/nope"], ["{tmp}/nope: dataset root folder not found; check --root"]),
    (["--sequences", "s1,Nope"], ["no OTB sequence(s) Nope", "available: s1, s2"]),
    (["--sequences", "@{tmp}/list.txt"], ["{tmp}/list.txt: sequence list not found"]),
    (["--tracker", "nope"], ["unknown tracker 'nope'; registered:", "package.module:Class"]),
    (["--tracker", "ncc/nope"], ["tracker 'ncc' has no parameter set 'nope'; available: default"]),
    (["--tracker", "no_such_pkg.mod:Tracker"], ["cannot import 'no_such_pkg.mod'", "PYTHONPATH"]),
    (["--mode", "score", "--tracker", "ncc"], ["{tmp}/res/ncc/default: results folder not found", "--mode run"]),
], ids=["root", "sequence", "sequence_list", "tracker", "params", "import", "results_dir"])
def test_bad_names_and_paths(cli, otb, tmp_path, capsys, args, fragments, eval_error):
    tmp = str(tmp_path)
    argv = ["--dataset", "otb", "--root", str(otb), "--results", f"{tmp}/res", "--no-progress"]
    argv += [a.format(tmp=tmp) for a in args]
    assert cli(argv) == 2
    eval_error(capsys.readouterr().err, *[f.format(tmp=tmp) for f in fragments])
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").rglob("*.txt"))


def test_dataset_layout_errors(cli, otb, capsys, eval_error):
    base = ["--dataset", "otb", "--root", str(otb), "--mode", "score", "--result-dir", str(otb)]
    gt = otb / "s1" / "groundtruth_rect.txt"
    gt.write_text("".join(gt.read_text().splitlines(True)[:4]))               # GT shorter than the frames
    assert cli(base) == 2
    eval_error(capsys.readouterr().err, f"{gt}:5: 4 ground-truth rows but 6 frames",
              "one x,y,w,h line per frame")
    write_boxes_txt(gt, [[10, 12, 20, 16]] * 5 + [[10, 12, -20, 16]])          # a negative width
    assert cli(base) == 2
    eval_error(capsys.readouterr().err, f"{gt}:6: box [10.0, 12.0, -20.0, 16.0] has a negative width")
    write_boxes_txt(gt, [[10, 12, 20, 16]] * 6)
    shutil.copy(otb / "s1" / "img" / "0001.jpg", otb / "s1" / "img" / "thumb.jpg")  # a non-frame image
    assert cli(base) == 2
    eval_error(capsys.readouterr().err, f"{otb / 's1' / 'img' / 'thumb.jpg'}: not a frame of the sequence",
              "move it out of the frame folder")
    os.unlink(otb / "s1" / "img" / "thumb.jpg")
    (otb / "s1" / "img" / "0003.jpg").rename(otb / "s1" / "img" / "0003.jpeg")    # two files, one number
    shutil.copy(otb / "s1" / "img" / "0003.jpeg", otb / "s1" / "img" / "003.jpg")
    assert cli(base) == 2
    eval_error(capsys.readouterr().err, "frame number 3 is also carried by", "one file per frame")


def test_the_real_process_prints_one_line_or_the_traceback_with_debug(tmp_path):
    cmd = [sys.executable, str(TOOL), "--dataset", "otb", "--root", str(tmp_path / "missing")]
    env = {**os.environ, "EBM_DEBUG": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"eval_tracking.py: error: {tmp_path / 'missing'}: dataset root folder not found; " \
                                  "check --root"
    proc = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "MissingFileError" in proc.stderr


def test_invalid_ground_truth_rows_are_counted_in_one_line(otb, caplog):
    gt = otb / "s2" / "groundtruth_rect.txt"
    write_boxes_txt(gt, [[10, 12, 20, 16], [0, 0, 0, 0], [np.nan] * 4, [10, 12, 20, 16], [1, 1, 0, 5], [1, 1, 5, 5]])
    with caplog.at_level(logging.INFO, logger="ebm_refine"):
        load_dataset("otb", str(otb))
    lines = [r.getMessage() for r in caplog.records if "ground-truth row" in r.getMessage()]
    assert lines == ["otb: 3 ground-truth row(s) without a valid box (NaN or zero size) in 1 sequence(s) (s2 3); "
                     "the protocols score them as invalid frames (docs/tracking_evaluation.md)"]


# ------------------------------------------------------------------------------------- result files
def _seq(n=5, dataset="otb"):
    gt = np.array([[10.0 + i, 10.0, 20.0, 20.0] for i in range(n)])
    return Sequence("s", [f"/nonexistent/{i}.jpg" for i in range(n)], gt, dataset)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_result_file_rules_are_the_same_in_every_protocol(protocol):
    seq = _seq()
    with pytest.raises(AnnotationError, match=r"r\.txt:6: result has 7 rows but the sequence has 5 frames; it "
                                              r"belongs to another sequence or version"):
        score_sequence(protocol, np.vstack([seq.ground_truth, seq.ground_truth[:2]]), seq, source="r.txt")
    neg = seq.ground_truth.copy()
    neg[3, 3] = -2.0
    with pytest.raises(AnnotationError, match=r"r\.txt:4: invalid prediction .* \(negative width or height\)"):
        score_sequence(protocol, neg, seq, source="r.txt")
    assert score_sequence(protocol, seq.ground_truth, seq)["success"][10] == 1.0


def test_bad_result_files_on_the_command_line(cli, otb, tmp_path, capsys, eval_error):
    res = tmp_path / "res"
    for name in ("s1", "s2"):
        write_boxes(str(res / f"{name}.txt"), [[10 + i, 12, 20, 16] for i in range(6)])
    base = ["--dataset", "otb", "--root", str(otb), "--mode", "score", "--result-dir", str(res),
            "--report-dir", str(tmp_path / "rep")]
    write_boxes(str(res / "s1.txt"), [[10, 12, 20, 16]] * 7)
    for protocol in PROTOCOLS:
        assert cli(base + ["--protocol", protocol]) == 2
        eval_error(capsys.readouterr().err, f"{res / 's1.txt'}:7: result has 7 rows but the sequence has 6 frames")
    (res / "s1.txt").write_text("10,12,20,16\n" * 3 + "10,12,x,16\n" + "10,12,20,16\n" * 2)
    assert cli(base) == 2
    eval_error(capsys.readouterr().err, f"{res / 's1.txt'}:4: non-numeric value 'x'")
    os.unlink(res / "s1.txt")
    assert cli(base) == 2
    eval_error(capsys.readouterr().err, f"{res / 's1.txt'}: result file not found", "--on-missing skip")
    assert not (tmp_path / "rep").exists()                                # no report from a failed scoring


def test_files_get_normal_permissions(otb, tmp_path):
    old = os.umask(0o022)
    try:
        seqs = load_dataset("otb", str(otb))
        out = tmp_path / "res"
        run_dataset(seqs, TrackerFactory("identity", "default", "ebm_refine.tracking.evaluation.baselines:"
                                         "IdentityTracker"), str(out), progress=False)
        write_report([evaluate_results(seqs, str(out), "otb")], str(tmp_path / "rep"))
        pack_trackingnet(seqs, str(out), str(tmp_path / "sub.zip"))
    finally:
        os.umask(old)
    files = sorted(out.iterdir()) + sorted((tmp_path / "rep").iterdir()) + [tmp_path / "sub.zip"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []   # no lock or temp file left
    assert len(files) == 4 + 5 + 1
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        assert sorted(zf.namelist()) == ["s1.txt", "s2.txt"]


def test_pytracking_protocol_never_exceeds_100_percent(tracking_data, tmp_path):
    """The issue's case: Crossing with 12 zero-width boxes and a perfect prediction scored 111.11."""
    seq = load_dataset("otb", str(tracking_data / "otb"), sequences=["Crossing"])[0]
    gt = seq.ground_truth.copy()
    gt[np.arange(20, 116, 8), 2] = 0.0
    zero = Sequence(seq.name, seq.frames, gt, seq.dataset)
    write_boxes(str(tmp_path / "Crossing.txt"), gt)
    default = evaluate_results([zero], str(tmp_path), "pytracking")
    excluded = evaluate_results([zero], str(tmp_path), "pytracking", exclude_invalid_frames=True)
    # every frame counts: the 12 invalid frames fail IoU and (outside UAV) precision, pass norm. precision;
    # a perfect box passes 20 of the 21 IoU thresholds (IoU 1 > 1 fails)
    assert default["auc"] == pytest.approx(100 * 108 / 120 * 20 / 21) and default["precision"] == pytest.approx(90.0)
    assert default["norm_precision"] == pytest.approx(100.0) and default["exclude_invalid_frames"] is False
    # only the 108 valid frames count, numerator and denominator alike (pytracking's own code: 111.11)
    assert excluded["auc"] == pytest.approx(100 * 20 / 21)
    assert [excluded[k] for k in ("precision", "norm_precision", "op50", "op75")] == pytest.approx([100.0] * 4)
    for res in (default, excluded):
        assert max(np.max(c) for c in res["curves"].values()) <= 1.0


# ------------------------------------------------------------------------------------- frames
def test_truncated_frame_is_tracked_with_one_warning(otb, tmp_path, caplog, cli, capsys):
    frames = [otb / "s1" / "img" / "0003.jpg", otb / "s2" / "img" / "0005.jpg"]
    for f in frames:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) * 2 // 3])
    seqs = load_dataset("otb", str(otb))
    factory = TrackerFactory("identity", "default", "ebm_refine.tracking.evaluation.baselines:IdentityTracker")
    with caplog.at_level(logging.WARNING, logger="ebm_refine"):
        runs = run_dataset(seqs, factory, str(tmp_path / "res"), progress=False)
    assert [(r.status, r.truncated_frames) for r in runs] == [("done", [str(frames[0])]), ("done", [str(frames[1])])]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"2 truncated JPEG frame(s) in 2 sequence(s) were decoded only partially (the rest of the "
                        f"image is grey) and tracked anyway: {frames[0]}, {frames[1]}; copy them again for a clean "
                        "evaluation"]
    assert cli(["--dataset", "otb", "--root", str(otb), "--tracker", "identity", "--results", str(tmp_path / "r2"),
                "--mode", "run", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "2 run, 0 already finished" in captured.out and "2 truncated frame(s) decoded partially" in captured.out
    assert "2 truncated JPEG frame(s)" in captured.err


def test_undecodable_frame_fails_only_its_sequence(otb, tmp_path, cli, capsys, eval_error):
    bad = otb / "s2" / "img" / "0004.jpg"
    bad.write_bytes(b"this is not a JPEG")
    seqs = load_dataset("otb", str(otb))
    factory = TrackerFactory("identity", "default", "ebm_refine.tracking.evaluation.baselines:IdentityTracker")
    out = tmp_path / "res"
    with pytest.raises(RunInputError) as err:
        run_dataset(seqs, factory, str(out), progress=False)
    assert isinstance(err.value, UserError)
    assert str(err.value) == (f"1 of 2 sequence(s) failed (finished sequences are kept): s2: {bad}: not a readable "
                              "image (18 bytes that OpenCV cannot decode); replace the file or remove it from the "
                              "input")
    assert sorted(os.listdir(out)) == ["s1.txt", "s1_time.txt"]               # s1 kept, nothing of s2
    assert cli(["--dataset", "otb", "--root", str(otb), "--tracker", "identity", "--results", str(tmp_path / "r2"),
                "--no-progress"]) == 2
    eval_error(capsys.readouterr().err, "1 of 2 sequence(s) failed", f"s2: {bad}: not a readable image")


# ------------------------------------------------------------------------------------- two runners
def test_a_sequence_locked_by_another_runner_is_left_to_it(otb, tmp_path):
    seqs = load_dataset("otb", str(otb))
    factory = TrackerFactory("identity", "default", "ebm_refine.tracking.evaluation.baselines:IdentityTracker")
    out = str(tmp_path / "res")
    with file_lock(lock_path(out, "s1"), blocking=False) as held:      # another runner is on s1
        assert held
        runs = run_dataset(seqs, factory, out, progress=False)
        assert [(r.name, r.status) for r in runs] == [("s1", "busy"), ("s2", "done")]
        assert sorted(os.listdir(out)) == [".s1.lock", "s2.txt", "s2_time.txt"]
    runs = run_dataset(seqs, factory, out, progress=False)
    assert [(r.name, r.status) for r in runs] == [("s1", "done"), ("s2", "skipped")]
    assert sorted(os.listdir(out)) == ["s1.txt", "s1_time.txt", "s2.txt", "s2_time.txt"]


def test_two_runner_processes_share_one_results_folder(tmp_path):
    root = _folder_dataset(tmp_path / "otb", names=("a", "b", "c", "d"), n=8)
    out = str(tmp_path / "res")
    with mp.get_context("spawn").Pool(2) as pool:
        outcomes = pool.map(run_otb_folder, [(str(root), out)] * 2)
    done = sorted(name for runs in outcomes for name, status in runs if status == "done")
    assert done == ["a", "b", "c", "d"]                                  # every sequence run exactly once
    for runs in outcomes:
        assert {status for _, status in runs} <= {"done", "busy", "skipped"}
    assert sorted(os.listdir(out)) == sorted(f"{n}{s}" for n in "abcd" for s in (".txt", "_time.txt"))
