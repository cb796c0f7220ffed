"""tools/bench_detection.py runs in a smoke configuration and reports every ratio (the timings themselves
are not asserted), and bad arguments end with one line (the command-line error convention)."""
import importlib.util
import json

import pytest
import torch

from d2_helpers import REPO
from ebm_refine.utils.cli import EXIT_USER_ERROR, run_cli


def _bench():
    spec = importlib.util.spec_from_file_location("bench_detection", REPO / "tools" / "bench_detection.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_bench_detection_small(tmp_path):
    out = tmp_path / "b.json"
    res = _bench().main(["--device", "cpu", "--size", "128", "--detections", "20", "--steps", "2", "1",
                         "--repeats", "1", "--train-images", "1", "--compare-paths", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["boxes_refined_per_call"] == 20  # the stabilised random detector returns exactly 20 boxes
    assert saved["inference_s"]["detector"]["wall"] > 0 and res["inference_s"]["T=2"]["cpu"] > 0
    assert saved["detector_multiply_adds"] > 1e9  # R50-FPN + box head on 1000 proposals at 128 x 170 px
    head = saved["refinement"]
    # Refinement multiply-adds: 20 boxes x ((T + 1) evaluations + T gradients) of the reference head.
    per_eval = 7 * 7 * 16 * 256 + 12544 * 1024 + 1024 * 1024
    assert head["T=2"]["multiply_adds"] == 20 * (3 * (per_eval + 1024) + 2 * per_eval)
    assert head["T=2"]["floor_ratio"] == pytest.approx(1 + head["T=2"]["multiply_adds"] / saved["detector_multiply_adds"])
    assert head["T=2"]["floor_ratio"] > head["T=1"]["floor_ratio"] > 1
    for entry in head.values():
        assert entry["ratio_wall"] > 0 and entry["ratio_cpu"] > 0
        if entry["ratio_cpu"] > 1:
            assert entry["efficiency_cpu"] == pytest.approx((entry["floor_ratio"] - 1) / (entry["ratio_cpu"] - 1))
    assert saved["train_ratio"] > 0 and saved["train_ratio_cpu"] > 0
    agreement = saved["path_agreement"]
    assert agreement["boxes"] == 20 and agreement["max_box_diff_px"] < 0.1


@pytest.mark.parametrize("argv,message", [
    (["--size", "32"], "argument --size: must be an integer >= 64, got '32'"),
    (["--steps", "-1"], "argument --steps: must be an integer >= 0, got '-1'"),
    (["--device", "tpu"], "--device: cpu, cuda or cuda:N"),
])
def test_bad_arguments_end_with_one_line(argv, message, capsys):
    assert run_cli(_bench().main, argv, prog="bench_detection.py") == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bench_detection.py: error: {message}") and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    assert run_cli(_bench().main, ["--device", "cuda"], prog="bench_detection.py") == EXIT_USER_ERROR
    assert "CUDA is not available here; use --device cpu" in capsys.readouterr().err
