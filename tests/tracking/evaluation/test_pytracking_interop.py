"""pytracking interoperability: result folders laid out and written exactly as pytracking's runner writes them
(``<param>_<run id>`` folders, tab-separated integer boxes, ``%f`` times) are scored as they are, and
``--format pytracking`` writes that format."""
import numpy as np
import pytest

from ebm_refine.data.synthetic_tracking import SyntheticConfig, SyntheticSequence, write_sequence
from ebm_refine.tracking.datasets import load_dataset
from ebm_refine.tracking.evaluation import evaluate_results, read_result, tracker_results_dir, write_boxes
from ebm_refine.utils.cli import run_cli


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Two generated 8-frame sequences in the folder layout (<seq>/img/*.jpg, groundtruth.txt)."""
    root = tmp_path_factory.mktemp("videos")
    cfg = SyntheticConfig(num_frames=8, height=120, width=160)
    for seed in (5, 6):
        write_sequence(SyntheticSequence(seed, cfg), str(root))
    return root


def _save_like_pytracking(folder, name, boxes, times):
    """What pytracking's ``_save_tracker_output`` writes for a single-object sequence: ``np.savetxt`` of the boxes
    ``astype(int)`` with tabs and ``%d``, of the times with tabs and ``%f``."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / f"{name}.txt", np.array(boxes).astype(int), delimiter="\t", fmt="%d")
    np.savetxt(folder / f"{name}_time.txt", np.array(times).astype(float), delimiter="\t", fmt="%f")


def test_scores_a_pytracking_results_folder(eval_tracking_tool, videos, tmp_path, capsys):
    seqs = load_dataset("folder", str(videos))
    rng = np.random.default_rng(0)
    folder = tmp_path / "pytracking_results" / "dimp" / "dimp50_003"
    floats = tmp_path / "floats"
    times = {}
    for seq in seqs:
        pred = seq.ground_truth + rng.normal(0, 3, seq.ground_truth.shape)  # sub-pixel boxes, truncated on save
        times[seq.name] = rng.uniform(0.02, 0.05, len(seq))
        _save_like_pytracking(folder, seq.name, pred, times[seq.name])
        write_boxes(str(floats / f"{seq.name}.txt"), pred.astype(int))
    first = (folder / f"{seqs[0].name}.txt").read_text().splitlines()[0]
    assert "\t" in first and "." not in first, first  # integers and tabs, as pytracking writes
    assert tracker_results_dir(str(tmp_path / "pytracking_results"), "dimp", "dimp50", 3) == str(folder)

    argv = ["--dataset", "folder", "--root", str(videos), "--mode", "score", "--tracker", "dimp/dimp50",
            "--run-id", "3", "--results", str(tmp_path / "pytracking_results"), "--protocol", "pytracking",
            "--report-dir", str(tmp_path / "report")]
    assert run_cli(eval_tracking_tool.main, argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("dimp/dimp50_003 "))
    expected = evaluate_results(seqs, str(floats), "pytracking")
    all_times = np.concatenate(list(times.values()))
    assert [float(v) for v in row.split()[1:]] == pytest.approx(
        [round(expected[k], 2) for k in ("auc", "precision", "norm_precision", "op50", "op75")]
        + [round(len(all_times) / np.round(all_times, 6).sum(), 1)], abs=0.006)
    assert 0 < expected["auc"] < 100


def test_format_pytracking_writes_what_pytracking_writes(eval_tracking_tool, videos, tmp_path, capsys):
    """The same run in both formats: the pytracking file is the float file truncated to integers, with tabs."""
    for fmt in ("float", "pytracking"):
        argv = ["--dataset", "folder", "--root", str(videos), "--tracker", "ncc", "--run-id", "0",
                "--format", fmt, "--results", str(tmp_path / fmt), "--protocol", "otb", "--no-progress"]
        assert run_cli(eval_tracking_tool.main, argv) == 0
    capsys.readouterr()
    for seq in load_dataset("folder", str(videos)):
        path = f"ncc/default_000/{seq.name}.txt"
        precise = read_result(str(tmp_path / "float" / path))
        lines = (tmp_path / "pytracking" / path).read_text().splitlines()
        assert lines == ["\t".join(str(v) for v in row) for row in precise.astype(int)]
        assert (tmp_path / "pytracking" / f"ncc/default_000/{seq.name}_time.txt").is_file()
