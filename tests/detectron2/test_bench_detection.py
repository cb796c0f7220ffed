"""tools/bench_detection.py runs and reports both ratios (tiny sizes; the numbers themselves are not asserted)."""
import importlib.util
import json

from d2_helpers import REPO


def test_bench_detection_small(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_detection", REPO / "tools" / "bench_detection.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    res = bench.main(["--device", "cpu", "--size", "128", "--detections", "20", "--steps", "2", "--repeats", "1",
                      "--train-images", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["boxes_refined_per_call"] == 20  # the stabilised random detector returns exactly 20 boxes
    assert saved["inference_ratio"] > 0 and saved["train_ratio"] > 0
    assert res["inference_s"]["detector"] > 0
