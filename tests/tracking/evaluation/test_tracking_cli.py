"""tools/eval_tracking.py end to end: run + score on a real sequence, score-only on existing folders,
resume, TrackingNet packing, listing."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tracking_helpers import write_boxes_txt, write_jpeg

REPO = Path(__file__).resolve().parents[3]
TOOL = REPO / "tools" / "eval_tracking.py"


@pytest.fixture(scope="module")
def cli(eval_tracking_tool):
    return eval_tracking_tool.main


@pytest.mark.slow
def test_cli_subprocess_run_and_score(tracking_data, tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, str(TOOL), "--dataset", "otb", "--root", str(tracking_data / "otb"),
           "--sequences", "Crossing", "--tracker", "ncc", "--results", str(results), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "otb: 1 sequence(s), 120 frames" in proc.stdout and "1 run, 0 already finished" in proc.stdout
    for protocol in ("pytracking", "otb", "trackingnet"):
        assert f"protocol: {protocol}" in proc.stdout
        data = json.loads((results / "reports" / "otb" / f"{protocol}_results.json").read_text())
        assert data["trackers"][0]["name"] == "ncc/default" and data["trackers"][0]["auc"] > 30.0
        assert (results / "reports" / "otb" / f"{protocol}_success.png").is_file()
    assert (results / "ncc" / "default" / "Crossing.txt").is_file()
    assert (results / "ncc" / "default" / "Crossing_time.txt").is_file()


def test_cli_score_existing_folders_and_resume(cli, tracking_data, tmp_path, capsys):
    root = str(tracking_data / "otb")
    res = str(tmp_path / "r")
    assert cli(["--dataset", "otb", "--root", root, "--tracker", "identity", "--results", res,
                "--mode", "run", "--no-progress", "--workers", "2"]) == 0
    assert "2 run, 0 already finished" in capsys.readouterr().out
    # a second run resumes: nothing to do
    assert cli(["--dataset", "otb", "--root", root, "--tracker", "identity", "--results", res,
                "--mode", "run", "--no-progress"]) == 0
    assert "0 run, 2 already finished" in capsys.readouterr().out
    # score only: by tracker/params name (no registry needed) and by plain folder, same numbers
    folder = os.path.join(res, "identity", "default")
    assert cli(["--dataset", "otb", "--root", root, "--mode", "score", "--results", res, "--tracker",
                "identity/default", "--result-dir", folder, "--protocol", "otb",
                "--report-dir", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("identity/default", folder))]
    assert len(rows) == 2 and rows[0][1:6] == rows[1][1:6]
    data = json.loads((tmp_path / "rep" / "otb_results.json").read_text())
    assert [t["name"] for t in data["trackers"]] == ["identity/default", os.path.normpath(folder)]
    # a folder that lacks a sequence: error by default, skipped on request
    os.unlink(os.path.join(folder, "DragonBaby.txt"))
    with pytest.raises(FileNotFoundError, match="DragonBaby.txt"):
        cli(["--dataset", "otb", "--root", root, "--mode", "score", "--result-dir", folder])
    assert cli(["--dataset", "otb", "--root", root, "--mode", "score", "--result-dir", folder,
                "--on-missing", "skip", "--protocol", "pytracking", "--report-dir", str(tmp_path / "rep2")]) == 0
    capsys.readouterr()
    # several trackers with --on-missing skip: every row covers the same sequences
    other = tmp_path / "other"
    other.mkdir()
    (other / "Crossing.txt").write_text(open(os.path.join(folder, "Crossing.txt")).read())
    (other / "DragonBaby.txt").write_text(open(os.path.join(folder, "Crossing.txt")).read())
    # `folder` lacks DragonBaby (deleted above), `other` has both: only Crossing is common
    assert cli(["--dataset", "otb", "--root", root, "--mode", "score", "--result-dir", folder, "--result-dir",
                str(other), "--on-missing", "skip", "--protocol", "otb", "--report-dir", str(tmp_path / "rep3")]) == 0
    assert "scoring the 1 sequence(s) every tracker has results for (1 skipped)" in capsys.readouterr().out
    data = json.loads((tmp_path / "rep3" / "otb_results.json").read_text())
    assert [t["sequences"] for t in data["trackers"]] == [["Crossing"], ["Crossing"]]


def test_cli_trackingnet_test_run_and_pack(cli, tmp_path, capsys):
    root = tmp_path / "TrackingNet"
    rng = np.random.default_rng(0)
    for name, n in (("vid1", 6), ("vid2", 4)):
        for i in range(n):
            write_jpeg(root / "TEST" / "frames" / name / f"{i}.jpg", rng.integers(0, 255, (48, 64, 3), np.uint8))
        write_boxes_txt(root / "TEST" / "anno" / f"{name}.txt", [[10, 12, 20, 16]])
    zip_path = tmp_path / "sub.zip"
    assert cli(["--dataset", "trackingnet", "--root", str(root), "--split", "TEST", "--tracker", "ncc",
                "--results", str(tmp_path / "res"), "--no-progress", "--pack-trackingnet", str(zip_path)]) == 0
    out = capsys.readouterr().out
    assert "packed 2 sequences" in out and "not scored locally" in out
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["vid1.txt", "vid2.txt"]
        assert zf.read("vid1.txt").decode().splitlines()[0] == "10.00,12.00,20.00,16.00"
        assert len(zf.read("vid2.txt").decode().splitlines()) == 4


def test_cli_lists_and_bad_sequence(cli, tracking_data, capsys):
    assert cli(["--list-trackers"]) == 0
    assert "ncc" in capsys.readouterr().out
    assert cli(["--list-datasets"]) == 0
    assert "uav123_10fps" in capsys.readouterr().out.split()
    with pytest.raises(KeyError, match="Nope"):
        cli(["--dataset", "otb", "--root", str(tracking_data / "otb"), "--sequences", "Nope"])
