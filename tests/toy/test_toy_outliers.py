"""The toy outlier experiment (issue 15): outlier injection, plain vs DeepGUM training, the tool."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebm_refine.toy import get_problem
from ebm_refine.toy.benchmark import GaussianRegressor
from ebm_refine.toy.outliers import (
    OutlierConfig,
    inject_outliers,
    outlier_settings,
    quick_outlier_config,
    run_outlier_single,
)
from ebm_refine.utils import BadValueError

ROOT = Path(__file__).resolve().parents[2]


def clean_targets(n: int = 1000) -> torch.Tensor:
    return get_problem("problem2").sample(n, torch.Generator().manual_seed(0))[1]


@pytest.mark.parametrize("kind", ["random", "shift", "scale"])
def test_inject_outliers_corrupts_exactly_the_flagged_share(kind: str) -> None:
    y = clean_targets()
    lo, hi, mean = y.min(), y.max(), y.mean()
    noisy, flags = inject_outliers(y, 0.2, kind, torch.Generator().manual_seed(1))
    assert int(flags.sum()) == 200
    assert torch.equal(noisy[~flags], y[~flags])
    changed = noisy[flags]
    if kind == "random":
        assert (changed >= lo).all() and (changed <= hi).all()
        assert changed.std() > 0.5 * (hi - lo) / 12**0.5  # spread over the range, not a constant
    elif kind == "shift":
        moved = (changed - y[flags]).abs() / (hi - lo)
        assert (moved >= 0.25 - 1e-6).all() and (moved <= 0.5 + 1e-6).all()
        assert 0.3 < float((changed > y[flags]).float().mean()) < 0.7  # both directions
    else:
        k = (changed - mean) / (y[flags] - mean)
        assert (k >= 2.0 - 1e-4).all() and (k <= 3.0 + 1e-4).all()
    again, flags2 = inject_outliers(y, 0.2, kind, torch.Generator().manual_seed(1))
    assert torch.equal(again, noisy) and torch.equal(flags2, flags)


def test_inject_outliers_share_zero_and_bad_arguments() -> None:
    y = clean_targets(100)
    noisy, flags = inject_outliers(y, 0.0, "random", torch.Generator().manual_seed(0))
    assert torch.equal(noisy, y) and not flags.any()
    with pytest.raises(BadValueError, match="unknown outlier kind 'typo'"):
        inject_outliers(y, 0.2, "typo", torch.Generator())
    with pytest.raises(BadValueError, match=r"share must be in \[0, 1\)"):
        inject_outliers(y, 1.0, "random", torch.Generator())
    assert outlier_settings([0.0, 0.2], ["random", "shift"]) == [("none", 0.0), ("random", 0.2), ("shift", 0.2)]


def test_gaussian_nll_sample_weights() -> None:
    torch.manual_seed(0)
    model = GaussianRegressor(8)
    x, y = torch.randn(5, 1), torch.randn(5)
    torch.testing.assert_close(model.nll(x, y, torch.ones(5)), model.nll(x, y))
    w = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(model.nll(x, y, w), model.nll(x[[0, 2]], y[[0, 2]]))


def _pair(model: str, kind: str, share: float, config: OutlierConfig, seed: int = 0):
    plain = run_outlier_single("problem2", kind, share, model, False, seed, config)
    robust = run_outlier_single("problem2", kind, share, model, True, seed, config)
    return plain, robust


def test_gaussian_deepgum_beats_plain_at_40_percent_random_outliers_and_is_harmless_on_clean_data() -> None:
    cfg = quick_outlier_config()
    plain, robust = _pair("gaussian", "random", 0.4, cfg)
    # Measured (quick config, seed 0): plain 1.97, DeepGUM 0.24; precision 1.00, recall 0.69.
    assert plain.kl > 1.5 and robust.kl < 0.5 * plain.kl, (plain.kl, robust.kl)
    assert robust.precision > 0.9 and robust.recall > 0.6, (robust.precision, robust.recall)
    assert 0.55 < robust.rho < 0.8  # 60 % inliers, plus the random values that land on the true one
    clean_plain, clean_robust = _pair("gaussian", "random", 0.0, cfg)
    # Measured: 0.090 vs 0.087, 0.4 % of the clean samples flagged.
    assert clean_robust.kl < 1.2 * clean_plain.kl, (clean_plain.kl, clean_robust.kl)
    assert clean_robust.flagged < 0.02 and clean_robust.recall is None


@pytest.mark.slow
def test_ebm_deepgum_beats_plain_at_40_percent_random_outliers() -> None:
    plain, robust = _pair("ebm", "random", 0.4, quick_outlier_config())
    assert robust.kl < 0.6 * plain.kl, (plain.kl, robust.kl)
    assert robust.precision > 0.9 and robust.recall > 0.6, (robust.precision, robust.recall)
    assert plain.precision is None and plain.rho is None  # plain training fits no mixture


def test_tool_quick_run_writes_json_and_figure(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "t.json", tmp_path / "t.png"
    cmd = [sys.executable, str(ROOT / "tools" / "toy_outlier_benchmark.py"), "--quick", "--seeds", "2",
           "--models", "gaussian", "--kinds", "shift", "--shares", "0", "0.4", "--json", str(out_json),
           "--png", str(out_png)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert "Gaussian + DeepGUM" in proc.stdout
    table = json.loads(out_json.read_text())
    cells = table["results"]["problem2"]
    assert set(cells) == {"none@0", "shift@0.4"} and table["seeds"] == [0, 1]
    shifted = cells["shift@0.4"]
    assert len(shifted["gaussian/plain"]["kl"]["values"]) == 2
    assert shifted["gaussian/deepgum"]["kl"]["mean"] < 0.5 * shifted["gaussian/plain"]["kl"]["mean"]
    assert shifted["gaussian/deepgum"]["recall"]["mean"] > 0.8
    assert shifted["gaussian/plain"]["recall"] is None and cells["none@0"]["gaussian/deepgum"]["recall"] is None
    assert out_png.stat().st_size > 10_000 and out_png.read_bytes()[:4] == b"\x89PNG"


def test_tool_bad_arguments_fail_in_one_line(tmp_path: Path, one_line_error) -> None:
    tool = str(ROOT / "tools" / "toy_outlier_benchmark.py")
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""}
    proc = subprocess.run([sys.executable, tool, "--shares", "0", "1.5"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "argument --shares: must be a finite number >= 0 and < 1, got '1.5'" in proc.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "t.json"  # its folder cannot be created: fails before any training
    proc = subprocess.run([sys.executable, tool, "--quick", "--json", str(bad)], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "toy_outlier_benchmark.py", str(bad), f"{blocker} is a file, not a folder")
