"""Smoke tests: the benchmark scripts run end to end at tiny sizes and write sane JSON."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / script), "--threads", "1", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bench_sampler_writes_positive_times(tmp_path: Path) -> None:
    out = tmp_path / "sampler.json"
    _run("bench_sampler.py", "--num-boxes", "8", "--num-samples", "4", "--repeats", "2",
         "--loop-repeats", "1", "--warmup", "1", "--json", str(out))
    res = json.loads(out.read_text())
    assert res["num_boxes"] == 8 and res["num_samples"] == 4
    for key in ("vectorised_ms", "loop_ms", "speedup", "vectorised_samples_per_s"):
        assert res[key] > 0, key
    # The loop is an independent implementation; its log q must match the core's density.
    assert res["log_q_max_abs_diff_loop_vs_core"] < 1e-3


def test_bench_refiner_writes_positive_throughput(tmp_path: Path) -> None:
    out = tmp_path / "refiner.json"
    _run("bench_refiner.py", "--sizes", "3", "7", "--steps", "2", "--channels", "4", "--image-size", "128",
         "--repeats", "1", "--warmup", "0", "--json", str(out))
    res = json.loads(out.read_text())
    assert [r["num_boxes"] for r in res["results"]] == [3, 7]
    for row in res["results"]:
        assert row["seconds"] > 0 and row["boxes_per_s"] > 0
        # The refiner never returns a box with a lower energy than its start.
        assert row["min_score_gain"] >= 0


@pytest.mark.slow
def test_bench_tracker_reports_the_refinement_share(tmp_path: Path) -> None:
    out = tmp_path / "tracker.json"
    fast_name = "ebm_fast+box_refinement.adaptation.steps=0"  # own overrides; no adaptation keeps it short
    _run("bench_tracker.py", "--params", fast_name, "norefine", "--peers", "csrt",
         "--frames", "4", "--repeats", "2", "--plain", "--json", str(out))
    res = json.loads(out.read_text())
    fast, none = res["variants"][fast_name], res["variants"]["norefine"]
    assert sorted(res["variants"]) == sorted(["csrt", fast_name, fast_name + "/plain", "norefine", "norefine/plain"])
    assert res["frames_timed"] == 3 and fast["fps"] > 0 and fast["num_steps"] == 3 and fast["ms_adaptation"] == 0
    assert len(fast["fps_runs"]) == 2 and fast["cpu_fps"] > 0 and fast["fps_ratio_to_csrt"] > 0
    assert 0 < fast["refine_share"] < 1 and none["refine_share"] == 0
    assert "refine_share" not in res["variants"]["csrt"]  # a peer has no refinement to report
    # Bad input: one line on stderr, exit 2 (the run_cli convention).
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_tracker.py"), "--params", "no_such_params"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no_such_params" in proc.stderr
