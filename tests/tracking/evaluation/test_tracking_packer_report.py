"""TrackingNet submission packer; text/JSON tables and plots."""
import json
import os
import zipfile

import numpy as np
import pytest

from ebm_refine.tracking.datasets import Sequence
from ebm_refine.tracking.evaluation import (SubmissionError, evaluate_results, format_table, pack_trackingnet,
                                            plot_curves, results_to_json, write_boxes, write_report)


def _test_seq(name, n):
    return Sequence(name=name, frames=[f"/x/{name}/{i}.jpg" for i in range(n)],
                    ground_truth=np.array([[1.0, 2.0, 30.0, 40.0]]), dataset="trackingnet")


def test_pack_trackingnet(tmp_path):
    seqs = [_test_seq("seqA", 3), _test_seq("seqB", 2)]
    res = tmp_path / "res"
    write_boxes(str(res / "seqA.txt"), [[1, 2, 30, 40], [1.234, 2.345, 30.5, 40.25], [3, 4, 5, 6]])
    (res / "seqB.txt").write_text("1\t2\t30\t40\n2\t3\t31\t41\n")          # pytracking's tab layout is fine
    zip_path = str(tmp_path / "out" / "sub.zip")
    assert pack_trackingnet(seqs, str(res), zip_path) == ["seqA.txt", "seqB.txt"]
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.namelist() == ["seqA.txt", "seqB.txt"]                   # at the archive root
        assert zf.read("seqA.txt").decode().splitlines() == ["1.00,2.00,30.00,40.00", "1.23,2.35,30.50,40.25",
                                                              "3.00,4.00,5.00,6.00"]
        assert zf.read("seqB.txt").decode() == "1.00,2.00,30.00,40.00\n2.00,3.00,31.00,41.00\n"


def test_pack_trackingnet_refuses_incomplete(tmp_path):
    seqs = [_test_seq("seqA", 3), _test_seq("seqB", 2), _test_seq("seqC", 2)]
    res = tmp_path / "res"
    write_boxes(str(res / "seqA.txt"), np.ones((2, 4)))                  # one row short
    write_boxes(str(res / "seqB.txt"), np.ones((2, 4)))
    zip_path = tmp_path / "sub.zip"
    with pytest.raises(SubmissionError) as err:
        pack_trackingnet(seqs, str(res), str(zip_path))
    msg = str(err.value)
    assert "2 problem(s)" in msg and "seqA.txt: 2 rows but sequence seqA has 3 frames" in msg
    assert "seqC.txt: missing" in msg
    assert not zip_path.exists() and not os.path.exists(str(zip_path) + ".tmp")
    (res / "seqC.txt").write_text("1,2,3,4\n1,2,x,4\n")
    write_boxes(str(res / "seqA.txt"), np.ones((3, 4)))
    with pytest.raises(SubmissionError, match=r"seqC\.txt:2: non-numeric value 'x'"):
        pack_trackingnet(seqs, str(res), str(zip_path))


@pytest.fixture()
def two_results(tmp_path):
    gt = np.column_stack([np.arange(10) * 3.0, np.arange(10) * 2.0, np.full(10, 20.0), np.full(10, 10.0)])
    seq = Sequence(name="s", frames=[f"/x/{i}.jpg" for i in range(10)], ground_truth=gt, dataset="otb")
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_boxes(str(good / "s.txt"), gt + [1, 0, 0, 0])
    write_boxes(str(bad / "s.txt"), np.tile(gt[0], (10, 1)))
    (good / "s_time.txt").write_text("0.01\n" * 10)
    return [seq], str(good), str(bad)


def test_table_json_and_plots(two_results, tmp_path):
    seqs, good, bad = two_results
    results = [evaluate_results(seqs, good, "trackingnet", name="good"),
               evaluate_results(seqs, bad, "trackingnet", name="bad")]
    table = format_table(results, title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo" and "protocol: trackingnet" in lines[1]
    assert lines[2].split() == ["Tracker", "AUC", "Prec", "NormPrec", "OP50", "OP75", "Coverage", "FPS"]
    good_row = lines[4].split()
    assert good_row[0] == "good" and float(good_row[6]) == 100.0 and float(good_row[7]) == pytest.approx(100.0)
    assert lines[5].split()[-1] == "-"                                     # no time file -> no FPS
    data = json.loads(results_to_json(results))
    assert data["protocol"] == "trackingnet" and len(data["trackers"][0]["curves"]["success"]) == 21
    assert data["trackers"][0]["auc"] == pytest.approx(results[0]["auc"])
    paths = write_report(results, str(tmp_path / "rep"))
    for key in ("success_plot", "precision_plot", "norm_precision_plot"):
        assert os.path.getsize(paths[key]) > 5000
        with open(paths[key], "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(paths["table"]).read() == format_table(results)
    with pytest.raises(ValueError, match="one protocol at a time"):
        plot_curves([results[0], evaluate_results(seqs, good, "otb")], str(tmp_path / "x.png"))
