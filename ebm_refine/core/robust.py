"""DeepGUM: outlier-robust regression with a Gaussian-uniform mixture on the residuals.

Lathuilière et al., "DeepGUM: Learning Deep Robust Regression with a Gaussian-Uniform Mixture Model",
ECCV 2018. The residual e = prediction - annotation of a training sample (D-dimensional) is modelled as

    p(e) = rho * N(e; 0, Sigma) + (1 - rho) * U(e; gamma)

where inliers follow a zero-mean Gaussian and outliers (wrong annotations) a uniform density 1 / gamma
over the residuals' range. EM gives, per sample, the inlier responsibility

    r_n = rho N(e_n) / (rho N(e_n) + (1 - rho) / gamma)            (E-step)

and, in closed form, rho = mean r, Sigma = sum r e e^T / sum r, gamma = volume of the residuals'
bounding box (M-step). The network is then trained on the r-weighted loss (:func:`weighted_mean`),
alternating with EM on the current residuals of the training set, as the paper does. No outlier
fraction is set by hand: rho is estimated.

Everything here is pure PyTorch on residual tensors; the adapters (generic regressor, Detectron2 heads,
tracker training) decide what the residual of a sample is and when EM runs (:class:`DeepGUM`).
Residuals should be in a scale-free space (relative box coordinates, standardised targets).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["GUMState", "gum_log_densities", "gum_responsibilities", "fit_gum", "weighted_mean", "DeepGUM"]

# Covariance floor relative to the residuals' scale: EM on a set where nearly every residual is ~0
# (a perfectly fitted training set) must not drive Sigma to a singular matrix.
_COV_RIDGE = 1e-6


@dataclass(frozen=True)
class GUMState:
    """Parameters of the Gaussian-uniform mixture.

    Attributes:
        rho: inlier prior in (0, 1].
        cov: (D, D) inlier covariance (zero mean), in the residuals' units squared.
        log_uniform: log of the outlier density, -log gamma (gamma: volume of the residuals' range).
    """

    rho: float
    cov: Tensor
    log_uniform: float

    @property
    def dim(self) -> int:
        return int(self.cov.shape[0])


def _as_2d(residuals: Tensor) -> Tensor:
    if residuals.dim() == 1:
        return residuals[:, None]
    if residuals.dim() != 2:
        raise ValueError(f"residuals must be (N,) or (N, D), got {tuple(residuals.shape)}")
    return residuals


def gum_log_densities(residuals: Tensor, state: GUMState) -> tuple[Tensor, Tensor]:
    """Log-densities of each residual under the two weighted components.

    Args:
        residuals: (N, D) or (N,) residuals e_n.
        state: mixture parameters (D must match).
    Returns:
        ((N,) log rho N(e_n; 0, Sigma), (N,) log (1 - rho) U(e_n)).
    """
    e = _as_2d(residuals).to(torch.float64)
    d = e.shape[1]
    if state.dim != d:
        raise ValueError(f"residuals have dimension {d} but the mixture was fitted in dimension {state.dim}")
    cov = state.cov.to(e)
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, e.T, upper=False)  # (D, N)
    log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
    log_gauss = -0.5 * (z * z).sum(0) - 0.5 * log_det - 0.5 * d * math.log(2.0 * math.pi)
    log_in = math.log(max(state.rho, 1e-12)) + log_gauss
    log_out = torch.full_like(log_in, math.log(max(1.0 - state.rho, 1e-12)) + state.log_uniform)
    return log_in, log_out


def gum_responsibilities(residuals: Tensor, state: GUMState) -> Tensor:
    """E-step: inlier responsibilities r_n in [0, 1], (N, D) or (N,) -> (N,) (dtype of the residuals).

    Non-finite residuals get r = 0 (they cannot be inliers of a Gaussian).
    """
    e = _as_2d(residuals)
    finite = torch.isfinite(e).all(dim=1)
    safe = torch.where(finite[:, None], e, torch.zeros_like(e))
    log_in, log_out = gum_log_densities(safe, state)
    r = torch.sigmoid(log_in - log_out)
    return torch.where(finite, r, torch.zeros_like(r)).to(e.dtype if e.is_floating_point() else torch.float32)


def _uniform_log_density(e: Tensor) -> float:
    """-log gamma, gamma = volume of the axis-aligned range of the residuals (floored per axis)."""
    span = (e.max(dim=0).values - e.min(dim=0).values).clamp(min=1e-6)
    return -float(torch.log(span).sum())


def fit_gum(
    residuals: Tensor,
    init: Optional[GUMState] = None,
    *,
    max_iters: int = 100,
    tol: float = 1e-6,
) -> tuple[GUMState, Tensor]:
    """Fit the mixture to residuals by EM; returns the parameters and the responsibilities.

    gamma is fixed to the residuals' range (the paper's choice: the uniform covers every residual);
    rho and Sigma alternate with the E-step until rho changes by less than ``tol``.

    Args:
        residuals: (N, D) or (N,) residuals; non-finite rows are ignored.
        init: previous parameters (warm start, e.g. the last epoch's); default rho = 0.5 and Sigma the
            residuals' second moment, so the first E-step splits the set around its own scale. A warm start
            under which fewer than D + 1 residuals are inliers is replaced by the default start.
        max_iters: EM iterations at most.
        tol: convergence threshold on rho.
    Returns:
        (state, (N,) responsibilities r_n under ``state``; 0 for non-finite rows).
    """
    e_all = _as_2d(residuals).detach().to(torch.float64)
    finite = torch.isfinite(e_all).all(dim=1)
    e = e_all[finite]
    n, d = e.shape
    if n < d + 1:
        raise ValueError(f"DeepGUM needs at least {d + 1} finite residuals of dimension {d}, got {n}")
    log_uniform = _uniform_log_density(e)
    scale = float((e * e).mean()) + 1e-12
    ridge = _COV_RIDGE * scale * torch.eye(d, dtype=e.dtype)
    cold = (0.5, (e.T @ e) / n + ridge)
    rho, cov = cold
    if init is not None and init.dim == d:
        rho, cov = float(init.rho), init.cov.detach().to(e) + ridge
        # A warm start whose Gaussian explains (almost) none of the new residuals -- their scale grew since
        # the last fit, as it does while a network learns -- drives EM to rho -> 0, every sample an outlier
        # and a zero loss, from which it never returns. Start cold instead.
        if float(gum_responsibilities(e, GUMState(rho, cov, log_uniform)).sum()) < d + 1:
            rho, cov = cold
    state = GUMState(rho=rho, cov=cov, log_uniform=log_uniform)
    for _ in range(max_iters):
        r = gum_responsibilities(e, state)
        weight = r.sum().clamp(min=1e-12)
        new_rho = float(min(max(float(r.mean()), 1e-6), 1.0))
        cov = (e * r[:, None]).T @ e / weight + ridge
        converged = abs(new_rho - state.rho) < tol
        state = GUMState(rho=new_rho, cov=cov, log_uniform=log_uniform)
        if converged:
            break
    r_all = torch.zeros(e_all.shape[0], dtype=torch.float64)
    r_all[finite] = gum_responsibilities(e, state)
    dtype = residuals.dtype if residuals.is_floating_point() else torch.float32
    return GUMState(rho=state.rho, cov=state.cov.to(torch.float32), log_uniform=log_uniform), r_all.to(dtype)


def weighted_mean(per_sample: Tensor, weights: Optional[Tensor], valid: Optional[Tensor] = None) -> Tensor:
    """The r-weighted loss: sum w_n l_n / sum w_n over valid samples, (N,) -> scalar.

    With ``weights`` None (or all ones) this is the plain mean over valid samples, so a robust training
    loop reduces exactly to the unweighted one when every sample is an inlier. Weights are constants
    (detached): EM, not SGD, sets them. Zero total weight gives an exact zero with a graph.
    """
    if per_sample.dim() != 1:
        raise ValueError(f"per_sample losses must be (N,), got {tuple(per_sample.shape)}")
    for name, t in (("weights", weights), ("valid", valid)):
        if t is not None and t.shape != per_sample.shape:
            raise ValueError(f"{name} must have the per-sample losses' shape {tuple(per_sample.shape)}, "
                             f"got {tuple(t.shape)}")
    if valid is None:
        valid = torch.ones_like(per_sample, dtype=torch.bool)
    w = torch.ones_like(per_sample) if weights is None else weights.detach().to(per_sample)
    valid = valid.bool()
    w = torch.where(valid, w, torch.zeros_like(w))
    masked = torch.where(valid, per_sample, torch.zeros_like(per_sample))
    return (w * masked).sum() / w.sum().clamp(min=1e-12)


class DeepGUM:
    """EM state of a training run: collects residuals, refits the mixture every ``period`` iterations.

    Usage inside a training loop (per batch)::

        r = gum.weights(residuals)          # E-step with the current parameters (ones before the first fit)
        loss = weighted_mean(per_sample_loss, r)
        gum.observe(residuals)              # remember them for the next M-step
        gum.step()                          # every `period` calls: EM on the collected residuals

    ``period`` plays the role of the paper's epoch: choose it so that the collected residuals cover
    the training set once (iterations per epoch); ``warmup`` iterations pass before the first fit so
    that the residuals mean something (an untrained network's residuals are all "outliers").

    Args:
        period: iterations between EM fits.
        warmup: iterations before the first fit.
        max_samples: residuals kept at most (the most recent ones).
    """

    def __init__(self, period: int, warmup: int = 0, max_samples: int = 100_000):
        if period < 1:
            raise ValueError(f"DeepGUM period must be >= 1, got {period}")
        self.period = int(period)
        self.warmup = int(warmup)
        self.max_samples = int(max_samples)
        self.state: Optional[GUMState] = None
        self.iteration = 0
        self._buffer: list[Tensor] = []

    def weights(self, residuals: Tensor) -> Tensor:
        """(N,) inlier responsibilities of a batch's residuals ((N, D) or (N,)); ones before the first fit."""
        e = _as_2d(residuals).detach()
        if self.state is None:
            return torch.ones(e.shape[0], dtype=torch.float32, device=e.device)
        return gum_responsibilities(e.cpu(), self.state).to(device=e.device, dtype=torch.float32)

    def observe(self, residuals: Tensor) -> None:
        """Store a batch's residuals for the next fit."""
        self._buffer.append(_as_2d(residuals).detach().float().cpu())
        total = sum(b.shape[0] for b in self._buffer)
        while self._buffer and total - self._buffer[0].shape[0] >= self.max_samples:
            total -= self._buffer.pop(0).shape[0]

    def step(self) -> bool:
        """Advance one iteration; run EM when due. Returns True when the mixture was refitted."""
        self.iteration += 1
        if self.iteration < self.warmup or (self.iteration - self.warmup) % self.period != 0:
            return False
        if not self._buffer:
            return False
        e = torch.cat(self._buffer)
        if int(torch.isfinite(e).all(dim=1).sum()) < e.shape[1] + 1:
            return False
        self.state, _ = fit_gum(e, self.state)
        self._buffer = []
        return True

    def state_dict(self) -> dict:
        s = self.state
        return {"iteration": self.iteration,
                "state": None if s is None else {"rho": s.rho, "cov": s.cov.clone(), "log_uniform": s.log_uniform}}

    def load_state_dict(self, d: dict) -> None:
        self.iteration = int(d["iteration"])
        s = d.get("state")
        self.state = None if s is None else GUMState(float(s["rho"]), s["cov"].float(), float(s["log_uniform"]))
