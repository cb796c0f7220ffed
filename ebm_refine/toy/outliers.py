"""The 1-D toy problems with annotation outliers: plain vs DeepGUM training (issue 15, part 2).

A share of the *training* targets is corrupted (:func:`inject_outliers`); the test metric is still the
KL to the true density on the clean grid (:func:`~ebm_refine.toy.benchmark.kl_divergence_on_grid`).
Each model is trained twice from the same seed, with the plain loss and with DeepGUM:

* the first ``warmup_epochs`` epochs use the plain loss (an untrained model's residuals say nothing);
* then, at the start of every epoch, the residuals of the whole training set are computed with the
  current model and the Gaussian-uniform mixture is refitted by EM (warm-started from the previous
  epoch's fit, :func:`~ebm_refine.core.fit_gum`); the epoch's SGD steps minimise the loss weighted by
  the inlier responsibilities r_n (:func:`~ebm_refine.core.weighted_mean`). This is the paper's
  alternation; no outlier share is given to the method.

Residuals (e = prediction - annotation):

* EBM: the model's test-time prediction, the best point of a grid over the targets' range
  (:meth:`~ebm_refine.core.EBMRegressor.mode_on_grid`, a direct guess) refined by gradient ascent
  (:meth:`~ebm_refine.core.EBMRegressor.residuals`). A global mode, so on a multimodal p(y | x)
  (problem 1: a 0.8/0.2 two-mode mixture for x < 0) the annotations of the minor mode have large
  residuals too: DeepGUM's single Gaussian for the inliers cannot tell them from outliers.
* Gaussian direct regression: the predicted mean.

Outlier detection is scored on the final model: r < 0.5 (after one more E-step on the final
residuals) against the true corruption flags.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..core import GaussianMixtureProposal, GUMState, fit_gum
from ..utils.errors import BadValueError
from .benchmark import (
    BenchmarkConfig,
    GaussianRegressor,
    _minibatches,
    _optimizer,
    evaluation_grid,
    kl_divergence_on_grid,
    make_ebm,
    model_log_density,
    summarize,
    torch_threads,
)
from .problems import get_problem

__all__ = ["OUTLIER_KINDS", "MODELS", "OutlierConfig", "inject_outliers", "train_model", "OutlierRun",
           "run_outlier_single", "outlier_settings", "run_outlier_benchmark", "quick_outlier_config",
           "with_train_overrides"]

OUTLIER_KINDS = ("random", "shift", "scale")
MODELS = ("ebm", "gaussian")


@dataclass(frozen=True)
class OutlierConfig:
    """Training, DeepGUM and evaluation settings of the outlier experiment.

    ``train``: the toy benchmark's settings (ML-IS proposals, optimiser, grids), shortened so that the
    whole experiment runs in ~10 min on one core. ``shift_range`` / ``scale_range`` are in units of
    the clean targets' range (shift) and as factors about their mean (scale).
    """

    train: BenchmarkConfig = field(default_factory=lambda: BenchmarkConfig(
        iters=1500, num_samples=128, grid_x=128, grid_y=1024))
    warmup_epochs: int = 4  # plain epochs before the first EM
    mode_grid: int = 128  # grid points over the targets' range for the EBM's direct guess
    num_steps: int = 10  # gradient ascent steps from the guess
    refine_step_size: float = 1e-3
    shift_range: Tuple[float, float] = (0.25, 0.5)
    scale_range: Tuple[float, float] = (2.0, 3.0)
    standardize: bool = True  # divide residuals by the model's own spread at x (see the module docstring)

    def to_dict(self) -> dict:
        return asdict(self)


def quick_outlier_config() -> OutlierConfig:
    """Reduced settings for ``--quick`` and the tests (seconds per model)."""
    return OutlierConfig(train=BenchmarkConfig(num_train=1000, iters=600, num_samples=64, grid_x=64, grid_y=512),
                         warmup_epochs=3, mode_grid=64)


def inject_outliers(
    y: Tensor, share: float, kind: str, generator: torch.Generator, config: OutlierConfig = OutlierConfig()
) -> Tuple[Tensor, Tensor]:
    """Corrupt ``round(share * N)`` randomly chosen targets.

    Kinds (lo, hi: the clean targets' range; mean: their mean):

    * ``random``: replaced by a value drawn uniformly from [lo, hi] (a wrong annotation of the
      right type; one that lands next to the true value is harmless and hardly detectable);
    * ``shift``: y + s * u * (hi - lo), s = +-1, u ~ U(shift_range);
    * ``scale``: mean + k * (y - mean), k ~ U(scale_range) (targets near the mean barely move).

    Args:
        y: (N,) clean targets.
        share: fraction in [0, 1).
    Returns:
        ((N,) corrupted targets, (N,) bool flags of the corrupted ones).
    """
    if kind not in OUTLIER_KINDS:
        raise BadValueError(f"unknown outlier kind {kind!r}; expected one of {OUTLIER_KINDS}")
    if not 0.0 <= share < 1.0:
        raise BadValueError(f"outlier share must be in [0, 1), got {share}")
    n = y.shape[0]
    idx = torch.randperm(n, generator=generator)[: int(round(share * n))]
    flags = torch.zeros(n, dtype=torch.bool)
    flags[idx] = True
    lo, hi, mean = y.min(), y.max(), y.mean()
    u = torch.rand(n, generator=generator, dtype=y.dtype)  # drawn for every row: the stream is share-free
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(y.dtype)
    if kind == "random":
        bad = lo + (hi - lo) * u
    elif kind == "shift":
        a, b = config.shift_range
        bad = y + sign * (a + (b - a) * u) * (hi - lo)
    else:
        a, b = config.scale_range
        bad = mean + (a + (b - a) * u) * (y - mean)
    return torch.where(flags, bad, y), flags


# ----------------------------------------------------------------------------------------------
# Training with and without DeepGUM


def _ebm_residual_fn(config: OutlierConfig, x: Tensor, y: Tensor) -> Callable[[nn.Module], Tensor]:
    lo, hi = float(y.min()), float(y.max())
    grid = torch.linspace(lo, hi, config.mode_grid)[:, None]
    dy = (hi - lo) / max(config.mode_grid - 1, 1)

    def residuals(model: nn.Module) -> Tensor:
        log_p = torch.cat([model.log_density_on_grid(xc, grid, dy) for xc in torch.split(x[:, None], 256)])
        guess = grid[log_p.argmax(dim=1)]  # the model's mode on the grid: the direct guess
        e = model.residuals(x[:, None], y[:, None], guess, step_size=config.refine_step_size,
                            num_steps=config.num_steps)[:, 0]
        if not config.standardize:
            return e
        # Robust spread of p_model(y | x): the interquartile range of its grid CDF / 1.349 (a Gaussian's
        # std). Quartiles, not the std, so that the outlier mass a model has partly learnt (a broad
        # floor under the peak) does not widen the scale with which its own outliers are judged.
        cdf = torch.cumsum(log_p.exp() * dy, dim=1)
        cdf = cdf / cdf[:, -1:]
        q = torch.searchsorted(cdf, torch.tensor([[0.25, 0.75]]).expand(len(cdf), 2).contiguous())
        q = q.clamp(max=len(grid) - 1)
        scale = ((grid[q[:, 1], 0] - grid[q[:, 0], 0]) / 1.349).clamp(min=dy)
        return e / scale
    return residuals


def _gaussian_residuals(config: OutlierConfig, x: Tensor, y: Tensor) -> Callable[[nn.Module], Tensor]:
    def residuals(model: nn.Module) -> Tensor:
        with torch.no_grad():
            mean, log_var = model(x[:, None])
        e = mean - y
        return e * torch.exp(-0.5 * log_var) if config.standardize else e
    return residuals


def train_model(
    model_name: str, x: Tensor, y: Tensor, config: OutlierConfig, seed: int, robust: bool
) -> Tuple[nn.Module, Optional[Tensor], List[float]]:
    """Train the toy EBM (ML-IS) or the Gaussian baseline on pairs (x, y), each (N,).

    Returns:
        (model in eval mode, (N,) final inlier responsibilities or None without ``robust``,
        the rho estimated at each EM fit).
    """
    cfg = config.train
    torch.manual_seed(seed)  # weight initialisation: the same for plain and DeepGUM
    if model_name == "ebm":
        model: nn.Module = make_ebm(cfg.hidden)
        proposal = GaussianMixtureProposal(list(cfg.ml_is_sigmas))
        residual_fn = _ebm_residual_fn(config, x, y)

        def loss_fn(idx: Tensor, w: Optional[Tensor], gen: torch.Generator) -> Tensor:
            return model.training_loss(x[idx, None], y[idx, None], proposal, method="ml_is",
                                       num_samples=cfg.num_samples, generator=gen, sample_weights=w)
    elif model_name == "gaussian":
        model = GaussianRegressor(cfg.hidden)
        residual_fn = _gaussian_residuals(config, x, y)

        def loss_fn(idx: Tensor, w: Optional[Tensor], gen: torch.Generator) -> Tensor:
            return model.nll(x[idx, None], y[idx], sample_weights=w)
    else:
        raise BadValueError(f"unknown model {model_name!r}; expected one of {MODELS}")
    opt, sched = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    epoch = max(len(x) // cfg.batch_size, 1)
    state: Optional[GUMState] = None
    r: Optional[Tensor] = None
    rhos: List[float] = []
    for it, idx in enumerate(_minibatches(len(x), cfg.batch_size, cfg.iters, gen)):
        if robust and it >= config.warmup_epochs * epoch and it % epoch == 0:
            state, r = fit_gum(residual_fn(model), state)  # EM on the whole training set, once per epoch
            rhos.append(state.rho)
        loss = loss_fn(idx, None if r is None else r[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    if robust:
        state, r = fit_gum(residual_fn(model), state)
        rhos.append(state.rho)
    return model, r, rhos


# ----------------------------------------------------------------------------------------------
# One run and the table


@dataclass
class OutlierRun:
    """One (problem, kind, share, model, robust, seed) cell."""

    problem: str
    kind: str
    share: float
    model: str
    robust: bool
    seed: int
    kl: float
    train_seconds: float
    rho: Optional[float] = None  # final DeepGUM inlier prior
    precision: Optional[float] = None  # of the outlier flags r < 0.5 (None: nothing flagged)
    recall: Optional[float] = None  # None at share 0
    flagged: Optional[float] = None  # share of training samples flagged
    detail: Optional[dict] = field(default=None, repr=False)  # x, y, flags, r for plotting


def _detection(r: Tensor, flags: Tensor) -> Tuple[Optional[float], Optional[float], float]:
    pred = r < 0.5
    tp = int((pred & flags).sum())
    precision = tp / int(pred.sum()) if int(pred.sum()) > 0 else None
    recall = tp / int(flags.sum()) if int(flags.sum()) > 0 else None
    return precision, recall, float(pred.float().mean())


def run_outlier_single(problem: str, kind: str, share: float, model_name: str, robust: bool, seed: int,
                       config: OutlierConfig, keep_detail: bool = False,
                       num_threads: Optional[int] = 1) -> OutlierRun:
    """Sample the data with ``seed``, corrupt it, train one model, evaluate KL and detection.

    The seed fixes the clean sample (as in the toy benchmark), which targets are corrupted and how, the
    initial weights, the minibatch order and the proposal samples; plain and DeepGUM runs of one seed
    see the same corrupted data and start from the same weights.
    """
    with torch_threads(num_threads):
        prob = get_problem(problem)
        x, y_clean = prob.sample(config.train.num_train, torch.Generator().manual_seed(10_000 + seed))
        y, flags = inject_outliers(y_clean, share, kind, torch.Generator().manual_seed(20_000 + seed), config)
        t0 = time.perf_counter()
        model, r, rhos = train_model(model_name, x, y, config, seed, robust)
        seconds = time.perf_counter() - t0
        gx, gy, dy = evaluation_grid(config.train)
        log_q = model_log_density(model, gx, gy, dy)
        log_p = prob.log_density(gx[:, None], gy[None, :])
        kl = kl_divergence_on_grid(log_p, log_q, dy, config.train.density_floor).mean().item()
    run = OutlierRun(prob.name, kind, share, model_name, robust, seed, kl, seconds)
    if r is not None:
        run.precision, run.recall, run.flagged = _detection(r, flags)
        run.rho = rhos[-1]
    if keep_detail:
        run.detail = {"x": x.numpy(), "y": y.numpy(), "flags": flags.numpy(),
                      "r": None if r is None else r.numpy()}
    return run


def outlier_settings(shares: Sequence[float], kinds: Sequence[str]) -> List[Tuple[str, float]]:
    """(kind, share) pairs; share 0 appears once, as kind "none"."""
    out: List[Tuple[str, float]] = [("none", 0.0)] if 0.0 in shares else []
    return out + [(k, s) for k in kinds for s in shares if s > 0]


def _job(args: tuple) -> OutlierRun:
    return run_outlier_single(*args)


def run_outlier_benchmark(
    config: OutlierConfig,
    seeds: Sequence[int] = (0, 1, 2),
    problems: Sequence[str] = ("problem2",),
    kinds: Sequence[str] = ("random", "shift"),
    shares: Sequence[float] = (0.0, 0.2, 0.4),
    models: Sequence[str] = MODELS,
    detail: Optional[Tuple[str, str, float, int]] = None,
    progress: Optional[Callable[[OutlierRun], None]] = None,
    map_fn: Optional[Callable] = None,
) -> Tuple[dict, List[OutlierRun]]:
    """Every (problem, setting, model, plain/DeepGUM, seed); returns (JSON-able table, runs).

    Args:
        detail: (problem, kind, share, seed) whose DeepGUM runs keep x, y, flags and r for plotting.
    Table layout: results[problem][f"{kind}@{share}"][f"{model}/{plain|deepgum}"] =
    {"kl": {mean, std, min, max, values}, "precision", "recall", "flagged", "rho": {...} or None}.
    """
    for k in kinds:
        if k not in OUTLIER_KINDS:
            raise BadValueError(f"unknown outlier kind {k!r}; expected one of {OUTLIER_KINDS}")
    for m in models:
        if m not in MODELS:
            raise BadValueError(f"unknown model {m!r}; expected one of {MODELS}")
    t0 = time.perf_counter()
    settings = outlier_settings(shares, kinds)
    jobs = []
    for p in problems:
        for kind, share in settings:
            for m in models:
                for robust in (False, True):
                    for s in seeds:
                        keep = detail is not None and robust and detail == (get_problem(p).name, kind, share, s)
                        jobs.append((p, kind if share > 0 else "random", share, m, robust, s, config, keep))
    mapper = map_fn if map_fn is not None else (lambda f, it: map(f, it))
    runs: List[OutlierRun] = []
    for run in mapper(_job, jobs):
        if run.share == 0:
            run.kind = "none"
        runs.append(run)
        if progress is not None:
            progress(run)
    results: Dict[str, dict] = {}
    for p in problems:
        name = get_problem(p).name
        results[name] = {}
        for kind, share in settings:
            cell: Dict[str, dict] = {}
            for m in models:
                for robust in (False, True):
                    rs = sorted((r for r in runs if (r.problem, r.kind, r.share, r.model, r.robust)
                                 == (name, kind, share, m, robust)), key=lambda r: r.seed)
                    entry = {"kl": {**summarize([r.kl for r in rs]), "values": [r.kl for r in rs]},
                             "train_seconds": float(sum(r.train_seconds for r in rs))}
                    for key in ("precision", "recall", "flagged", "rho"):
                        vals = [getattr(r, key) for r in rs if getattr(r, key) is not None]
                        entry[key] = {**summarize(vals), "values": vals} if vals else None
                    cell[f"{m}/{'deepgum' if robust else 'plain'}"] = entry
            results[name][f"{kind}@{share:g}"] = cell
    table = {
        "metric": "KL(p_true || p_model) on the clean test grid, nats (lower is better); outlier detection: "
                  "r < 0.5 vs the true corruption flags",
        "seed_varies": "everything: clean sample, corrupted targets, initial weights, batch order, proposal samples",
        "config": config.to_dict(), "seeds": list(seeds), "results": results,
        "wall_seconds": time.perf_counter() - t0,
    }
    return table, runs


def with_train_overrides(config: OutlierConfig, **kwargs) -> OutlierConfig:
    """Copy of ``config`` with non-None training settings (``iters``, ``num_samples``...) replaced."""
    return replace(config, train=replace(config.train, **{k: v for k, v in kwargs.items() if v is not None}))
