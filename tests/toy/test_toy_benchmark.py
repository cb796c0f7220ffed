"""The 1-D benchmark: exact densities, the KL estimator, and a reduced training run."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebm_refine.toy import (
    PROBLEMS,
    BenchmarkConfig,
    evaluation_grid,
    get_problem,
    kl_divergence_on_grid,
    quick_config,
    run_single,
    with_overrides,
)

ROOT = Path(__file__).resolve().parents[2]
GRID = BenchmarkConfig()


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_true_density_integrates_to_one_on_grid(name: str) -> None:
    prob = get_problem(name)
    x, y, dy = evaluation_grid(GRID)
    # Include the hardest columns: x -> -3 (problem 2's std is 0.007) and both sides of 0 (problem 1).
    x = torch.cat([x, torch.tensor([-2.999, -1e-9, 0.0, 2.999], dtype=torch.float64)])
    mass = torch.exp(prob.log_density(x[:, None], y[None, :])).sum(dim=1) * dy
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-3), mass.min()


def test_problem1_density_is_exactly_zero_below_minus_one_for_nonnegative_x() -> None:
    prob = get_problem("problem1")
    y = torch.tensor([-2.0, -1.0, -0.999], dtype=torch.float64)
    logp = prob.log_density(torch.tensor(0.5, dtype=torch.float64), y)
    assert logp[0] == -math.inf and logp[1] == -math.inf and torch.isfinite(logp[2])
    assert not torch.isnan(logp).any()


@pytest.mark.parametrize("name,x0", [("problem1", -1.2), ("problem1", 0.0), ("problem1", 2.0),
                                     ("problem2", -2.5), ("problem2", 1.5)])
def test_samples_match_density(name: str, x0: float) -> None:
    """Sample moments and a histogram agree with the analytic density at a fixed x."""
    prob = get_problem(name)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    ys = prob.sample_y(torch.full((n,), x0, dtype=torch.float64), g)
    _, y, dy = evaluation_grid(with_overrides(GRID, grid_y=8192))
    p = torch.exp(prob.log_density(torch.tensor(x0, dtype=torch.float64), y))
    mean = (p * y).sum() * dy
    var = (p * (y - mean) ** 2).sum() * dy
    assert abs(ys.mean() - mean) < 5 * math.sqrt(var / n) + 1e-4
    assert abs(ys.var() / var - 1) < 0.02
    # Histogram on 60 bins vs the density integrated over each bin: total variation distance.
    edges = torch.linspace(-3, 3, 61, dtype=torch.float64)
    hist = torch.histogram(ys, bins=edges).hist / n
    bin_idx = ((y + 3) / 0.1).long().clamp(max=59)
    expected = torch.zeros(60, dtype=torch.float64).index_add_(0, bin_idx, p * dy)
    assert 0.5 * (hist - expected).abs().sum() < 0.01


def test_sample_draws_x_uniformly_and_is_deterministic() -> None:
    prob = get_problem("problem1")
    x1, y1 = prob.sample(2000, torch.Generator().manual_seed(3))
    x2, y2 = prob.sample(2000, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.min() >= -3 and x1.max() < 3 and abs(x1.mean()) < 0.15
    assert (y1[x1 >= 0] > -1).all()


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_kl_of_true_density_against_itself_is_zero(name: str) -> None:
    prob = get_problem(name)
    x, y, dy = evaluation_grid(GRID)
    log_p = prob.log_density(x[:, None], y[None, :])
    # As a "model", the truth normalised over the grid the way model densities are.
    log_model = log_p - torch.logsumexp(log_p, dim=1, keepdim=True) - math.log(dy)
    kl = kl_divergence_on_grid(log_p, log_model, dy)
    assert torch.isfinite(kl).all()
    assert kl.abs().max() < 1e-5


def test_kl_matches_closed_form_for_gaussians() -> None:
    _, y, dy = evaluation_grid(GRID)
    p = torch.distributions.Normal(0.0, 0.3).log_prob(y)[None]
    q = torch.distributions.Normal(0.2, 0.5).log_prob(y)[None]
    closed = math.log(0.5 / 0.3) + (0.3**2 + 0.2**2) / (2 * 0.5**2) - 0.5
    assert kl_divergence_on_grid(p, q, dy).item() == pytest.approx(closed, abs=1e-4)


def test_kl_floor_keeps_collapsed_models_finite() -> None:
    _, y, dy = evaluation_grid(GRID)
    p = torch.distributions.Normal(0.0, 0.3).log_prob(y)[None]
    q = torch.full_like(p, -math.inf)  # a model with no mass anywhere near the truth
    kl = kl_divergence_on_grid(p, q, dy, density_floor=1e-8).item()
    assert math.isfinite(kl) and kl > 10


def test_runs_are_deterministic() -> None:
    cfg = with_overrides(quick_config(), iters=100)
    a = run_single("problem2", "gaussian", 7, cfg)
    b = run_single("problem2", "gaussian", 7, cfg)
    assert a.kl == b.kl


def test_ebm_beats_gaussian_on_problem1() -> None:
    """Reduced benchmark: problem 1 is multimodal and skewed, which a Gaussian cannot represent."""
    cfg = quick_config()
    gauss = run_single("problem1", "gaussian", 0, cfg)
    ebm = run_single("problem1", "ml_is", 0, cfg)
    assert math.isfinite(ebm.kl) and ebm.kl >= 0
    assert gauss.kl > 0.5  # the best Gaussian fit is far from the truth here
    assert ebm.kl < 0.2 * gauss.kl, (ebm.kl, gauss.kl)


@pytest.mark.slow
def test_toy_benchmark_script_writes_json_and_png(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "toy.json", tmp_path / "toy.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "toy_benchmark.py"), "--quick", "--iters", "30", "--seeds", "2",
         "--problems", "problem1", "--methods", "nce_plus", "gaussian", "--workers", "1",
         "--json", str(out_json), "--png", str(out_png)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Gaussian" in proc.stdout and "±" in proc.stdout
    table = json.loads(out_json.read_text())
    cell = table["results"]["problem1"]["nce_plus"]
    assert len(cell["kl"]) == 2 and all(math.isfinite(v) and v >= 0 for v in cell["kl"])
    assert cell["mean"] == pytest.approx(sum(cell["kl"]) / 2)
    assert table["config"]["iters"] == 30
    assert out_png.stat().st_size > 10_000
