"""Runner: output layout, a real baseline on synthetic footage, parallel runs, resume after a crash without
rewriting finished sequences, atomic writes, tracker registry."""
import os
import pickle

import numpy as np
import pytest

from ebm_refine.tracking.datasets import Sequence
from ebm_refine.tracking.evaluation import (RunError, TrackerFactory, evaluate_results, get_tracker_factory,
                                            read_result, read_times, register_tracker, run_dataset,
                                            tracker_names, tracker_results_dir)
from ebm_refine.tracking.evaluation import results as R
from tracking_helpers import write_jpeg


def _moving_square_sequence(folder, name, n=16, step=(3, 2), size=(20, 14), seed=0):
    """A textured patch moving over a textured background: NCC should follow it closely."""
    rng = np.random.default_rng(seed)
    bg = (rng.uniform(0, 255, (120, 160, 3)) * 0.3).astype(np.uint8)
    patch = rng.uniform(0, 255, (size[1], size[0], 3)).astype(np.uint8)
    frames, gt = [], []
    for i in range(n):
        x, y = 30 + step[0] * i, 40 + step[1] * i
        img = bg.copy()
        img[y:y + size[1], x:x + size[0]] = patch
        path = os.path.join(folder, name, f"{i + 1:04d}.jpg")
        write_jpeg(path, img)
        frames.append(path)
        gt.append([x, y, size[0], size[1]])
    return Sequence(name=name, frames=frames, ground_truth=np.array(gt, float), dataset="folder")


@pytest.fixture(scope="module")
def seqs(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    return [_moving_square_sequence(str(root), n, seed=k) for k, n in enumerate(["a", "b", "c"])]


def test_run_writes_pytracking_layout_and_ncc_tracks(seqs, tmp_path):
    out = tracker_results_dir(str(tmp_path), "ncc", "default")
    runs = run_dataset(seqs[:1], get_tracker_factory("ncc"), out, progress=False)
    assert [(r.name, r.status, r.n_frames) for r in runs] == [("a", "done", 16)]
    boxes = read_result(os.path.join(out, "a.txt"))
    times = read_times(os.path.join(out, "a_time.txt"))
    assert boxes.shape == (16, 4) and times.shape == (16,) and (times > 0).all()
    np.testing.assert_allclose(boxes[0], seqs[0].ground_truth[0])
    with open(os.path.join(out, "a.txt")) as fh:
        assert fh.readline().strip() == "30.0000,40.0000,20.0000,14.0000"
    res = evaluate_results(seqs[:1], out, "otb")
    assert res["op75"] == 100.0 and res["precision"] == 100.0       # a real tracker, following the patch
    ident = tracker_results_dir(str(tmp_path), "identity", "default")
    run_dataset(seqs[:1], get_tracker_factory("identity"), ident, progress=False)
    assert evaluate_results(seqs[:1], ident, "otb")["auc"] < 40.0      # not moving loses the target


def test_parallel_run_matches_serial(seqs, tmp_path):
    factory = get_tracker_factory("ncc", "fixed_scale")
    serial = str(tmp_path / "serial")
    parallel = str(tmp_path / "parallel")
    run_dataset(seqs, factory, serial, num_workers=1, progress=False)
    runs = run_dataset(seqs, factory, parallel, num_workers=2, progress=False)
    assert [r.status for r in runs] == ["done"] * 3
    for s in seqs:
        np.testing.assert_array_equal(read_result(os.path.join(serial, f"{s.name}.txt")),
                                      read_result(os.path.join(parallel, f"{s.name}.txt")))


def _stat(path):
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def test_interrupted_run_resumes_without_rewriting_finished(seqs, tmp_path):
    out = str(tmp_path / "trk" / "default")
    crashing = TrackerFactory("trk", "default", "tracking_helpers:FailingOnTracker", {"fail_on": "b"})
    failed = r"1 of 3 sequence\(s\) failed \(finished sequences are kept\): b\n--- b\nTraceback"
    with pytest.raises(RunError, match=failed) as err:
        run_dataset(seqs, crashing, out, num_workers=2, progress=False)
    assert [r.status for r in err.value.runs] == ["done", "failed", "done"]
    assert "simulated crash in b" in err.value.runs[1].error
    assert sorted(os.listdir(out)) == ["a.txt", "a_time.txt", "c.txt", "c_time.txt"]   # no partial/tmp file
    before = {n: _stat(os.path.join(out, n)) for n in os.listdir(out)}

    # a box file cut short (e.g. by a copy that was interrupted) is not a finished sequence
    with open(os.path.join(out, "c.txt")) as fh:
        lines = fh.readlines()
    with open(os.path.join(out, "c.txt"), "w") as fh:
        fh.writelines(lines[:5])
    before.pop("c.txt"), before.pop("c_time.txt")

    runs = run_dataset(seqs, get_tracker_factory("identity"), out, num_workers=2, progress=False)
    assert [(r.name, r.status) for r in runs] == [("a", "skipped"), ("b", "done"), ("c", "done")]
    for name, stat in before.items():
        assert _stat(os.path.join(out, name)) == stat, f"{name} was rewritten"
    assert R.count_rows(os.path.join(out, "b.txt")) == 16 and R.count_rows(os.path.join(out, "c.txt")) == 16
    again = run_dataset(seqs, get_tracker_factory("identity"), out, progress=False)
    assert [r.status for r in again] == ["skipped"] * 3
    forced = run_dataset(seqs[:1], get_tracker_factory("identity"), out, overwrite=True, progress=False)
    assert forced[0].status == "done" and _stat(os.path.join(out, "a.txt"))[1] != before["a.txt"][1]


def test_invalid_tracker_output_is_reported(seqs, tmp_path):
    bad = TrackerFactory("bad", "default", "tracking_helpers:BadOutputTracker")
    runs = run_dataset(seqs[:1], bad, str(tmp_path), progress=False, raise_on_error=False)
    assert runs[0].status == "failed"
    assert "sequence 'a', frame 2" in runs[0].error and "4 finite numbers" in runs[0].error
    assert not os.path.exists(tmp_path / "a.txt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = str(tmp_path / "x.txt")
    R.write_boxes(path, np.ones((2, 4)))
    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        R.write_boxes(path, np.zeros((3, 4)))
    assert os.listdir(tmp_path) == ["x.txt"] and R.count_rows(path) == 2


def test_tracker_registry():
    assert {"ncc", "identity"} <= set(tracker_names())
    f = get_tracker_factory("ncc", "fixed_scale")
    assert f.kwargs == {"scales": (1.0,)} and pickle.loads(pickle.dumps(f)) == f
    assert type(f()).__name__ == "NCCTracker"
    with pytest.raises(KeyError, match="no parameter set 'fast'"):
        get_tracker_factory("ncc", "fast")
    with pytest.raises(KeyError, match="unknown tracker 'nope'"):
        get_tracker_factory("nope")
    g = get_tracker_factory("tracking_helpers:FailingOnTracker", "p1", fail_on="z")
    assert (g.name, g.params, g.kwargs) == ("FailingOnTracker", "p1", {"fail_on": "z"})
    register_tracker("test_identity_copy", "ebm_refine.tracking.evaluation.baselines:IdentityTracker",
                     {"x": {}}, overwrite=True)
    assert get_tracker_factory("test_identity_copy", "x").params == "x"


def test_stale_temp_files_of_a_killed_writer_are_removed(seqs, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    stale = out / ".a.txt.k3j2x9_q.tmp"  # mkstemp: 8 random characters
    stale.write_text("1,2,3,4\n")
    other = out / ".notes.txt.tmp"
    other.write_text("keep")
    run_dataset(seqs[:1], get_tracker_factory("identity"), str(out), progress=False)
    assert not stale.exists() and other.exists() and (out / "a.txt").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_counts_frames_and_prints_a_line_per_sequence(seqs, tmp_path, capfd, workers):
    """The bar counts every frame to track (48 = 3 x 16, from worker processes too) and each finished sequence
    gets a line with its frames and its tracker FPS, the report's figure."""
    out = str(tmp_path / "res")
    runs = run_dataset(seqs, get_tracker_factory("identity"), out, num_workers=workers, progress=True)
    err = capfd.readouterr().err
    assert "48/48" in err, err[-500:]
    for run in runs:
        fps = len(read_times(os.path.join(out, f"{run.name}_time.txt"))) / run.seconds
        assert f"  {run.name}: 16 frames, {fps:.1f} FPS" in err, err[-500:]
    seconds = sum(read_times(os.path.join(out, f"{r.name}_time.txt")).sum() for r in runs)
    assert evaluate_results(seqs, out, "otb")["fps"] == pytest.approx(48 / seconds)
