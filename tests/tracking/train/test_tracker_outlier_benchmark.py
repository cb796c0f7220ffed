"""The tracker outlier experiment's loop (ebm_refine.tracking.train.outlier_benchmark): every run trained with its
noise and method, tracked on clean sequences, scored, summarised, written."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ebm_refine.data.synthetic_tracking import SyntheticConfig, SyntheticSequence
from ebm_refine.tracking.datasets import Sequence
from ebm_refine.tracking.train.outlier_benchmark import (format_summary, run_config, run_name,
                                                         run_tracker_outlier_benchmark, summarize,
                                                         training_outlier_scores)

from tracker_helpers import TINY_NET, TINY_TRACKER, one_torch_thread
from tracking_helpers import write_jpeg

SYN = {"height": 96, "width": 128, "num_frames": 8, "distractor_prob": 0.0}


def _base():
    return {"net": TINY_NET,
            "data": {"processing": {"output_size": 64, "max_gap": 5},
                     "sources": [{"type": "synthetic", "num_sequences": 10, "config": SYN}]},
            "train": {"batch_size": 3, "num_iterations": 3, "num_workers": 0, "log_interval": 1,
                      "checkpoint_interval": 3, "lr": 1e-3, "num_threads": 1}}


def _sequence(folder):
    syn = SyntheticSequence(5, SyntheticConfig(height=96, width=128, num_frames=6, distractor_prob=0.0))
    frames = []
    for i in range(len(syn)):
        path = os.path.join(folder, "s", f"{i + 1:04d}.jpg")
        write_jpeg(path, syn.frame(i))
        frames.append(path)
    return Sequence(name="s", frames=frames, ground_truth=np.asarray(syn.boxes, float), dataset="otb")


def test_run_config_sets_seed_noise_and_method():
    cfg = run_config(_base(), "random", 0.2, "deepgum", 4, {"warmup": 1})
    assert cfg["train"]["seed"] == 4
    assert cfg["data"]["annotation_noise"] == {"fraction": 0.2, "kind": "random", "seed": 4}
    assert cfg["robust"] == {"warmup": 1, "enabled": True}
    assert run_config(_base(), "random", 0.2, "plain", 4)["robust"] == {"enabled": False}
    assert "annotation_noise" not in _base()["data"]  # the base is not modified
    assert run_name("shift_scale", 0.4, "deepgum", 1) == "shift_scale_40_deepgum_s1"
    assert run_name("shift_scale", 0.0, "plain", 0) == "clean_0_plain_s0"
    with pytest.raises(ValueError, match="method"):
        run_config(_base(), "random", 0.2, "huber", 0)


def test_benchmark_trains_tracks_and_reports_every_run(tmp_path):
    seq = _sequence(str(tmp_path / "frames"))
    robust = {"warmup": 1, "period": 1, "step_size_center": 2e-2, "step_size_size": 1e-1}
    with one_torch_thread():
        result = run_tracker_outlier_benchmark(
            str(tmp_path / "out"), _base(), [seq], fractions=[0.0, 0.4], kinds=["shift_scale"], seeds=[0],
            robust=robust, tracker_overrides=TINY_TRACKER, diagnostic_pairs=12, log=lambda s: None)
    names = [r["name"] for r in result["runs"]]
    assert names == ["clean_0_plain_s0", "clean_0_deepgum_s0", "shift_scale_40_plain_s0", "shift_scale_40_deepgum_s0"]
    for r in result["runs"]:
        assert 0.0 <= r["auc"] <= 100.0 and set(r["per_sequence_auc"]) == {"s"}
        assert os.path.isfile(tmp_path / "out" / r["name"] / "net.pth")
        assert os.path.isfile(tmp_path / "out" / r["name"] / "tracking" / "ebm_paper" / "s.txt")
    noisy = next(r for r in result["runs"] if r["name"] == "shift_scale_40_deepgum_s0")
    assert noisy["rho"] is not None and 0.0 < noisy["rho"] <= 1.0
    plain = next(r for r in result["runs"] if r["name"] == "shift_scale_40_plain_s0")
    assert plain["outlier_recall"] is None and plain["rho"] is None  # plain runs have no mixture
    # ... but every noisy run gets EM on its final network's residuals, from both starts.
    for r in result["runs"]:
        assert ("final_model" in r) == (r["fraction"] > 0)
    for start in ("annotation", "best_sample"):
        fm = plain["final_model"][start]
        assert 0.0 < fm["rho"] <= 1.0
        assert fm["outlier_recall"] is None or 0.0 <= fm["outlier_recall"] <= 1.0
    written = json.load(open(tmp_path / "out" / "outlier_tracker_benchmark.json"))
    assert written["runs"] == json.loads(json.dumps(result["runs"]))
    assert [(s["kind"], s["fraction"], s["method"]) for s in written["summary"]] == [
        ("none", 0.0, "deepgum"), ("none", 0.0, "plain"), ("shift_scale", 0.4, "deepgum"), ("shift_scale", 0.4, "plain")]
    assert os.path.isfile(tmp_path / "out" / "outlier_tracker_benchmark.png")
    assert "| shift_scale | 40 % | plain |" in format_summary(written["summary"])
    # A second call reuses the finished trainings and tracking results: the same scores.
    with one_torch_thread():
        again = run_tracker_outlier_benchmark(
            str(tmp_path / "out"), _base(), [seq], fractions=[0.4], kinds=["shift_scale"], methods=["plain"],
            seeds=[0], robust=robust, tracker_overrides=TINY_TRACKER, diagnostic_pairs=0, log=lambda s: None)
    assert again["runs"][0]["auc"] == plain["auc"]


def test_summary_is_mean_and_population_std_over_seeds(tmp_path):
    runs = [{"kind": "random", "fraction": 0.2, "method": "plain", "seed": s, "auc": a, "precision": 50.0,
             "op50": 40.0, "op75": 10.0, "per_sequence_auc": {"x": a}} for s, a in [(0, 50.0), (1, 54.0)]]
    (row,) = summarize(runs)
    assert row["auc"] == {"mean": 52.0, "std": 2.0, "n": 2}
    assert row["per_sequence_auc"] == {"x": 52.0}
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"iteration": 10, "rho": 1.0}, {"iteration": 90, "rho": 0.7, "outlier_recall": 0.5},
        {"iteration": 100, "rho": 0.6, "outlier_recall": 0.7, "outlier_precision": None}]))
    scores = training_outlier_scores(str(log))
    assert scores["rho"] == pytest.approx(0.65) and scores["outlier_recall"] == pytest.approx(0.6)
    assert scores["outlier_precision"] is None
