"""The small tools (benchmarks, dataset generators) under the error convention: bad options and paths end
with one line and exit status 2 before any slow work, and leave no partial output."""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ebm_refine.utils.cli import run_cli

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tools():
    return {n: _tool(n) for n in ("bench_sampler", "bench_refiner", "toy_benchmark", "make_synthetic_detection",
                                  "make_synthetic_tracking_set")}


@pytest.fixture()
def tool_error(one_line_error):
    return lambda capsys, prog, *fragments: one_line_error(capsys.readouterr().err, prog, *fragments)


@pytest.fixture()
def blocker(tmp_path) -> Path:
    """A file where an output folder should go: nothing can be written below it."""
    path = tmp_path / "file"
    path.write_text("a file, not a folder")
    return path


def test_benchmarks(tools, blocker, capsys, tool_error):
    sampler, refiner = tools["bench_sampler"].main, tools["bench_refiner"].main
    if not torch.cuda.is_available():
        assert run_cli(sampler, ["--device", "cuda"], prog="bench_sampler.py") == 2
        tool_error(capsys, "bench_sampler.py", "--device cuda: CUDA is not available on this machine; use --device cpu")
    assert run_cli(refiner, ["--device", "tpu9"], prog="bench_refiner.py") == 2
    tool_error(capsys, "bench_refiner.py", "--device 'tpu9': not a device name")
    out = blocker / "sub" / "bench.json"
    assert run_cli(sampler, ["--json", str(out), "--num-boxes", "4"], prog="bench_sampler.py") == 2
    tool_error(capsys, "bench_sampler.py", f"argument --json: {out}: cannot write this output file ({blocker} is a file, "
                                           "not a folder)")
    assert run_cli(sampler, ["--num-boxes", "0"], prog="bench_sampler.py") == 2
    tool_error(capsys, "bench_sampler.py", "argument --num-boxes: must be an integer >= 1, got '0'")


def test_toy_benchmark_checks_its_outputs_before_training(tools, blocker, capsys):
    main = tools["toy_benchmark"].main
    assert run_cli(main, ["--quick", "--png", str(blocker / "x" / "toy.png")], prog="toy_benchmark.py") == 2
    cap = capsys.readouterr()
    assert "toy benchmark:" not in cap.out                                  # failed before any training
    assert cap.err == f"toy_benchmark.py: error: argument --png: {blocker / 'x' / 'toy.png'}: cannot write this " \
                      f"output file ({blocker} is a file, not a folder); choose another path (see --help)\n"
    assert run_cli(main, ["--seeds", "0"], prog="toy_benchmark.py") == 2
    assert capsys.readouterr().err.startswith("toy_benchmark.py: error: argument --seeds: must be an integer >= 1")


def test_synthetic_detection_generator(tools, tmp_path, blocker, capsys, tool_error):
    main = tools["make_synthetic_detection"].main
    assert run_cli(main, ["--out", str(tmp_path / "d"), "--image-size", "8"], prog="make_synthetic_detection.py") == 2
    tool_error(capsys, "make_synthetic_detection.py", "image_size must be (height, width) >= 16 px")
    assert run_cli(main, ["--out", str(blocker / "d")], prog="make_synthetic_detection.py") == 2
    tool_error(capsys, "make_synthetic_detection.py", f"argument --out: {blocker / 'd'}: cannot write to this output folder")
    assert run_cli(main, ["--out", str(tmp_path / "d"), "--train", "1", "--val", "0", "--image-size", "64",
                          "--size-range", "10", "30", "--coco-dir", str(tmp_path / "coco")],
                   prog="make_synthetic_detection.py") == 2
    tool_error(capsys, "make_synthetic_detection.py", f"{tmp_path / 'coco'}: COCO folder not found")
    assert not (tmp_path / "d" / "annotations").exists()


def test_synthetic_tracking_set_generator(tools, tmp_path, blocker, capsys, tool_error):
    main = tools["make_synthetic_tracking_set"].main
    prog = "make_synthetic_tracking_set.py"
    assert run_cli(main, ["--out", str(tmp_path / "s"), "--background-dir", str(tmp_path / "bg")], prog=prog) == 2
    tool_error(capsys, prog, f"{tmp_path / 'bg'}: background folder not found")
    (tmp_path / "bg").mkdir()
    assert run_cli(main, ["--out", str(tmp_path / "s"), "--background-dir", str(tmp_path / "bg")], prog=prog) == 2
    tool_error(capsys, prog, "no .jpg or .png images")
    assert run_cli(main, ["--out", str(blocker / "s")], prog=prog) == 2
    tool_error(capsys, prog, "cannot write to this output folder")
    assert run_cli(main, ["--out", str(tmp_path / "s"), "--frames", "1"], prog=prog) == 2
    tool_error(capsys, prog, "argument --frames: must be an integer >= 2, got '1'")
    # a broken background photo is named (it is read when a sequence picks it)
    (tmp_path / "bg" / "photo.jpg").write_bytes(b"not a photo")
    args = ["--out", str(tmp_path / "s"), "--num", "5", "--frames", "3", "--width", "64", "--height", "64",
            "--background-dir", str(tmp_path / "bg")]
    assert run_cli(main, args, prog=prog) == 2                     # the 5th sequence draws the photo
    tool_error(capsys, prog, f"{tmp_path / 'bg' / 'photo.jpg'}: not a readable image")
    # without it: every frame is written whole (atomically); a re-run after a lost frame writes just that one
    args = ["--out", str(tmp_path / "s3"), "--num", "3", "--frames", "3", "--width", "64", "--height", "64"]
    assert run_cli(main, args, prog=prog) == 0
    folders = sorted(p for p in (tmp_path / "s3").iterdir())
    assert len(folders) == 3 and not [p for p in (tmp_path / "s3").rglob(".*")]
    frame = folders[0] / "img" / "000002.jpg"
    before = {p: p.stat().st_mtime_ns for p in folders[0].rglob("*.jpg")}
    os.unlink(frame)
    assert run_cli(main, args, prog=prog) == 0
    after = {p: p.stat().st_mtime_ns for p in folders[0].rglob("*.jpg")}
    assert [p for p in after if after[p] != before.get(p)] == [frame]
    gt = np.loadtxt(folders[0] / "groundtruth.txt", delimiter=",")
    assert gt.shape == (3, 4) and (gt[:, 2:] > 0).all()


def test_outlier_tracker_benchmark_checks_its_parameter_set_before_training(tmp_path, capsys, tool_error):
    main = _tool("outlier_tracker_benchmark").main
    assert run_cli(main, ["--params", "nope", "--root", str(tmp_path), "--output", str(tmp_path / "out")],
                   prog="outlier_tracker_benchmark.py") == 2
    tool_error(capsys, "outlier_tracker_benchmark.py", "tracker parameters 'nope' not found")
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
