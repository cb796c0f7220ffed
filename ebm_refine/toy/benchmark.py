"""Training and KL evaluation for the 1-D toy benchmark (paper, Sec. 4 / Table 1).

Methods
-------
* ``ml_is``: :class:`~ebm_refine.core.EBMRegressor` trained with ML-IS, proposal sigmas {0.2, 1.6}.
* ``nce_plus``: the same model trained with NCE+, sigmas {0.1, 0.8}, beta = 0.025.
* ``gaussian``: direct regression, an MLP predicting mean and log-variance, Gaussian NLL.

Metric
------
KL(p_true || p_model) on a dense grid over x, y in [-3, 3], averaged over the x grid::

    KL(x) = sum_j p_true(y_j | x) * (log p_true(y_j | x) - log p_model(y_j | x)) * dy

``p_true`` is the analytic density; cells where it is exactly zero (problem 1, y <= -1 for x >= 0)
contribute 0 (0 log 0 = 0). ``p_model`` is normalised over the y grid (sum p dy = 1) for every method,
the Gaussian baseline included, and then floored at ``density_floor`` (default 1e-8 per unit y): a
model that puts (numerically) no mass where the truth has some is charged at most
``log(p_true / floor)`` per cell instead of infinity, so one collapsed seed cannot turn the mean into
inf. With a floor this low it never binds for a reasonably trained model.

Everything is deterministic given the seed: the seed fixes the 2000 training pairs, the initial
weights, the minibatch order and the proposal samples.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..core import EBMRegressor, GaussianMixtureProposal, mlp, weighted_mean
from .problems import ToyProblem, get_problem

__all__ = [
    "METHODS",
    "BenchmarkConfig",
    "GaussianRegressor",
    "make_ebm",
    "train_ebm",
    "train_gaussian",
    "evaluation_grid",
    "model_log_density",
    "kl_divergence_on_grid",
    "run_single",
    "torch_threads",
    "run_benchmark",
    "summarize",
    "RunResult",
    "quick_config",
    "with_overrides",
]

METHODS = ("ml_is", "nce_plus", "gaussian")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Hyper-parameters of one benchmark run (defaults: the full run of ``tools/toy_benchmark.py``).

    The paper trains for 75 epochs of 2000 pairs at batch 32 (~4700 steps) with M = 1024 samples.
    The defaults keep batch 32 and the proposals but use M = 256, fewer steps and a cosine-decayed
    learning rate so that the whole table trains in minutes on a laptop CPU.
    """

    num_train: int = 2000
    iters: int = 3000
    batch_size: int = 32
    lr: float = 2e-3  # Adam; with the cosine decay below, better than a constant 1e-3 at this budget
    lr_final_factor: float = 0.01  # cosine decay of the learning rate to lr * this by the last step
    hidden: int = 32  # width of every hidden layer (x-encoder, y-encoder, head, Gaussian MLP)
    num_samples: int = 256  # M proposal samples per training target
    ml_is_sigmas: Tuple[float, ...] = (0.2, 1.6)
    nce_sigmas: Tuple[float, ...] = (0.1, 0.8)
    nce_beta: float = 0.025
    grid_x: int = 256  # x grid points for the KL average
    grid_y: int = 2048  # y grid points for the per-x KL sum
    grid_low: float = -3.0
    grid_high: float = 3.0
    density_floor: float = 1e-8  # per unit y; see module docstring

    def to_dict(self) -> dict:
        return asdict(self)


def quick_config() -> BenchmarkConfig:
    """The reduced configuration used by ``--quick`` and the tests (well under a minute)."""
    return BenchmarkConfig(iters=800, num_samples=128, grid_x=128, grid_y=1024)


# ----------------------------------------------------------------------------------------------
# Models


class GaussianRegressor(nn.Module):
    """Direct regression baseline: x (B, 1) -> mean (B,), log-variance (B,)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = mlp(1, [hidden, hidden], 2)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        out = self.net(x)
        return out[:, 0], out[:, 1]

    def nll(self, x: Tensor, y: Tensor, sample_weights: Optional[Tensor] = None) -> Tensor:
        """Gaussian negative log-likelihood (nats, constant dropped) of targets y (B,), averaged.

        ``sample_weights`` (B,), e.g. DeepGUM's inlier responsibilities, turn the mean into the
        weighted mean sum w_n l_n / sum w_n (constants; None: the plain mean).
        """
        mean, log_var = self(x)
        per_sample = 0.5 * (log_var + (y - mean) ** 2 * torch.exp(-log_var))
        if sample_weights is None:
            return per_sample.mean()
        return weighted_mean(per_sample, sample_weights)

    @torch.no_grad()
    def log_density_on_grid(self, x: Tensor, y_grid: Tensor) -> Tensor:
        """Unnormalised-on-grid log N(y_g; mean(x), var(x)): (B, 1), (G,) -> (B, G)."""
        mean, log_var = self(x)
        z2 = (y_grid[None, :] - mean[:, None]) ** 2 * torch.exp(-log_var)[:, None]
        return -0.5 * (z2 + log_var[:, None] + math.log(2 * math.pi))


def make_ebm(hidden: int = 32) -> EBMRegressor:
    """The toy EBM: an MLP x-encoder (1 -> hidden -> hidden) inside the generic regressor."""
    return EBMRegressor(mlp(1, [hidden], hidden), x_features=hidden, y_dim=1, hidden=hidden)


# ----------------------------------------------------------------------------------------------
# Training


def _minibatches(n: int, batch_size: int, iters: int, generator: torch.Generator) -> Iterable[Tensor]:
    """Index batches from successive random permutations (epochs) until ``iters`` batches are out."""
    done = 0
    while done < iters:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]
            done += 1
            if done == iters:
                return


def _optimizer(model: nn.Module, config: BenchmarkConfig):
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(config.iters, 1), eta_min=config.lr * config.lr_final_factor
    )
    return opt, sched


def train_ebm(
    x: Tensor, y: Tensor, method: str, config: BenchmarkConfig, seed: int
) -> EBMRegressor:
    """Train the toy EBM with ``method`` ("ml_is" or "nce_plus") on pairs x, y (each (N,))."""
    if method == "ml_is":
        proposal, beta = GaussianMixtureProposal(list(config.ml_is_sigmas)), None
    elif method == "nce_plus":
        proposal, beta = GaussianMixtureProposal(list(config.nce_sigmas)), config.nce_beta
    else:
        raise ValueError(f"train_ebm supports ml_is and nce_plus, got {method!r}")
    torch.manual_seed(seed)  # weight initialisation
    model = make_ebm(config.hidden)
    opt, sched = _optimizer(model, config)
    gen = torch.Generator().manual_seed(seed + 1)
    xs, ys = x[:, None], y[:, None]
    for idx in _minibatches(len(x), config.batch_size, config.iters, gen):
        loss = model.training_loss(
            xs[idx], ys[idx], proposal, method=method, num_samples=config.num_samples, beta=beta,
            generator=gen,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def train_gaussian(x: Tensor, y: Tensor, config: BenchmarkConfig, seed: int) -> GaussianRegressor:
    """Train the Gaussian direct-regression baseline with the same optimiser, batch and steps."""
    torch.manual_seed(seed)
    model = GaussianRegressor(config.hidden)
    opt, sched = _optimizer(model, config)
    gen = torch.Generator().manual_seed(seed + 1)
    xs = x[:, None]
    for idx in _minibatches(len(x), config.batch_size, config.iters, gen):
        loss = model.nll(xs[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluation_grid(config: BenchmarkConfig) -> Tuple[Tensor, Tensor, float]:
    """Cell-centred grids: x (grid_x,), y (grid_y,) on [grid_low, grid_high], and the y spacing dy.

    Cell centres (not end points) so that every y cell has the same width dy and the Riemann sum
    sum p dy is the midpoint rule.
    """
    lo, hi = config.grid_low, config.grid_high
    dx = (hi - lo) / config.grid_x
    dy = (hi - lo) / config.grid_y
    x = lo + dx * (torch.arange(config.grid_x, dtype=torch.float64) + 0.5)
    y = lo + dy * (torch.arange(config.grid_y, dtype=torch.float64) + 0.5)
    return x, y, dy


@torch.no_grad()
def model_log_density(model: nn.Module, x: Tensor, y: Tensor, dy: float, chunk: int = 64) -> Tensor:
    """log p_model(y_j | x_i) normalised over the y grid (sum_j exp(.) dy = 1).

    Args:
        model: an :class:`EBMRegressor` or a :class:`GaussianRegressor`.
        x: (X,) grid, y: (Y,) grid, dy: y spacing.
        chunk: x values per forward pass (bounds memory at chunk * Y network evaluations).
    Returns:
        (X, Y) float64 log-densities per unit y.
    """
    out = []
    for xc in torch.split(x.float()[:, None], chunk):
        if isinstance(model, EBMRegressor):
            logits = model.log_density_on_grid(xc, y.float()[:, None], dy)
        elif isinstance(model, GaussianRegressor):
            logits = model.log_density_on_grid(xc, y.float())
        else:
            raise TypeError(f"unsupported model {type(model).__name__}")
        # Renormalise in float64: the float32 logsumexp leaves errors of ~1e-7 in the total mass.
        logits = logits.double()
        out.append(logits - torch.logsumexp(logits, dim=1, keepdim=True) - math.log(dy))
    return torch.cat(out)


def kl_divergence_on_grid(
    log_p_true: Tensor, log_p_model: Tensor, dy: float, density_floor: float = 1e-8
) -> Tensor:
    """Per-x KL(p_true || p_model) by the midpoint rule over y.

    Args:
        log_p_true: (X, Y) true log-densities per unit y; ``-inf`` marks exact zeros.
        log_p_model: (X, Y) model log-densities per unit y (normalised over the grid).
        dy: y spacing.
        density_floor: lower bound applied to the model density (per unit y).
    Returns:
        (X,) float64 KL values in nats.
    """
    log_p_true = log_p_true.double()
    log_q = torch.clamp(log_p_model.double(), min=math.log(density_floor))
    p = torch.exp(log_p_true)
    positive = p > 0
    # 0 * log 0 = 0: zero-density cells are masked out before the product, so no -inf * 0 = NaN.
    integrand = torch.where(positive, p * (log_p_true - log_q), torch.zeros_like(p))
    return integrand.sum(dim=1) * dy


# ----------------------------------------------------------------------------------------------
# Running the table


@dataclass
class RunResult:
    """One (problem, method, seed) cell: the mean KL, the training time and, optionally, the density."""

    problem: str
    method: str
    seed: int
    kl: float
    train_seconds: float
    log_density: Optional[np.ndarray] = field(default=None, repr=False)  # (grid_x, grid_y) float32


@contextlib.contextmanager
def torch_threads(num_threads: Optional[int]):
    """Temporarily set torch's intra-op CPU thread count (None: leave it alone)."""
    if num_threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_single(
    problem: str | ToyProblem,
    method: str,
    seed: int,
    config: BenchmarkConfig,
    keep_density: bool = False,
    num_threads: Optional[int] = 1,
) -> RunResult:
    """Sample data, train one model and evaluate its KL on the grid.

    ``num_threads`` defaults to 1: these networks are tiny (32-wide layers on ~8k rows), so extra
    intra-op threads only add synchronisation, and on a loaded machine they make training up to 50x
    slower (measured: 5.7 s with one thread vs 270 s with two for the quick ML-IS run).
    """
    with torch_threads(num_threads):
        return _run_single(problem, method, seed, config, keep_density)


def _run_single(
    problem: str | ToyProblem, method: str, seed: int, config: BenchmarkConfig, keep_density: bool
) -> RunResult:
    prob = get_problem(problem) if isinstance(problem, str) else problem
    data_gen = torch.Generator().manual_seed(10_000 + seed)
    x, y = prob.sample(config.num_train, data_gen)
    t0 = time.perf_counter()
    if method == "gaussian":
        model: nn.Module = train_gaussian(x, y, config, seed)
    elif method in ("ml_is", "nce_plus"):
        model = train_ebm(x, y, method, config, seed)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    train_seconds = time.perf_counter() - t0
    gx, gy, dy = evaluation_grid(config)
    log_q = model_log_density(model, gx, gy, dy)
    log_p = prob.log_density(gx[:, None], gy[None, :])
    kl = kl_divergence_on_grid(log_p, log_q, dy, config.density_floor).mean().item()
    dens = log_q.float().numpy() if keep_density else None
    return RunResult(prob.name, method, seed, kl, train_seconds, dens)


def summarize(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return {"mean": float(a.mean()), "std": std, "min": float(a.min()), "max": float(a.max())}


def run_benchmark(
    config: BenchmarkConfig,
    seeds: Sequence[int] = (0, 1, 2),
    problems: Sequence[str] = ("problem1", "problem2"),
    methods: Sequence[str] = METHODS,
    keep_density_seed: Optional[int] = None,
    progress: Optional[Callable[[RunResult], None]] = None,
    map_fn: Optional[Callable] = None,
) -> Tuple[dict, List[RunResult]]:
    """Run every (problem, method, seed) and collect the table.

    Args:
        keep_density_seed: keep the model log-density grids of this seed (for plotting).
        progress: called with every finished :class:`RunResult`.
        map_fn: optional ``map``-like callable over argument tuples of :func:`run_single` (e.g. a
            process pool's ``imap``); defaults to the built-in sequential ``map``.
    Returns:
        (table, runs). ``table`` is JSON-serialisable: {"config", "seeds", "results":
        {problem: {method: {"kl": [...], "mean", "std", "min", "max", "train_seconds"}}}, "wall_seconds"}.
    """
    t0 = time.perf_counter()
    jobs = [
        (p, m, s, config, keep_density_seed is not None and s == keep_density_seed)
        for p in problems for m in methods for s in seeds
    ]
    mapper = map_fn if map_fn is not None else (lambda f, it: map(f, it))
    runs: List[RunResult] = []
    for res in mapper(_run_job, jobs):
        runs.append(res)
        if progress is not None:
            progress(res)
    results: Dict[str, Dict[str, dict]] = {}
    for p in problems:
        name = get_problem(p).name
        results[name] = {}
        for m in methods:
            cell = sorted((r for r in runs if r.problem == name and r.method == m), key=lambda r: r.seed)
            entry = summarize([r.kl for r in cell])
            entry["kl"] = [r.kl for r in cell]
            entry["train_seconds"] = float(sum(r.train_seconds for r in cell))
            results[name][m] = entry
    table = {
        "metric": "KL(p_true || p_model), nats, averaged over the x grid",
        "config": config.to_dict(),
        "seeds": list(seeds),
        "results": results,
        "wall_seconds": time.perf_counter() - t0,
    }
    return table, runs


def _run_job(args: tuple) -> RunResult:
    """Module-level wrapper so that process pools can pickle the job."""
    return run_single(*args)


def with_overrides(config: BenchmarkConfig, **kwargs) -> BenchmarkConfig:
    """Copy of ``config`` with the non-None keyword arguments replaced."""
    return replace(config, **{k: v for k, v in kwargs.items() if v is not None})
