"""The two 1-D regression problems of the paper's toy benchmark, with samplers and exact densities.

Both problems draw x ~ U(-3, 3); they differ in p(y | x):

* ``problem1`` (multimodal and skewed):
  for x < 0, y ~ 0.8 N(sin x, 0.075^2) + 0.2 N(-sin x, 0.075^2);
  for x >= 0, y = exp(z) - 1 with z ~ N(0, 0.25^2), i.e. y + 1 is LogNormal(0, 0.25). Its density is
  the log-normal density of y + 1 and is exactly zero for y <= -1.
* ``problem2`` (heteroscedastic): y ~ N(sin x, (0.15 sigmoid(x))^2).

Densities are returned as log-densities (per unit y) in float64, with ``-inf`` where the density is
exactly zero, so callers can apply the convention 0 log 0 = 0 without guessing.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor

__all__ = ["ToyProblem", "BimodalLogNormalProblem", "HeteroscedasticSineProblem", "PROBLEMS", "get_problem"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _normal_log_pdf(y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    z = (y - mean) / std
    return -0.5 * z * z - torch.log(std) - _LOG_SQRT_2PI


class ToyProblem:
    """A conditional density p(y | x) on x in [x_low, x_high) with a sampler and its exact log-density."""

    name: str = "toy"
    x_low: float = -3.0
    x_high: float = 3.0

    def sample_y(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Draw one y per x: (N,) -> (N,)."""
        raise NotImplementedError

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        """log p(y | x) per unit y for broadcastable x and y (float64); ``-inf`` where p = 0."""
        raise NotImplementedError

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """Draw n training pairs: x ~ U(x_low, x_high), y ~ p(y | x). Returns (x, y), each (n,) float32."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        x = self.x_low + (self.x_high - self.x_low) * u
        y = self.sample_y(x, generator)
        return x.float(), y.float()


class BimodalLogNormalProblem(ToyProblem):
    """Problem 1: a 0.8/0.2 two-mode mixture for x < 0, a shifted log-normal for x >= 0."""

    name = "problem1"
    mode_weight = 0.8
    mode_std = 0.075
    lognormal_std = 0.25

    def sample_y(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        x = x.double()
        # Draw every random number for every x so the stream (hence the data) does not depend on how
        # many x fall on each side of 0.
        pick_main = torch.rand(x.shape, generator=generator, dtype=torch.float64) < self.mode_weight
        eps = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        s = torch.sin(x)
        mixture = torch.where(pick_main, s, -s) + self.mode_std * eps
        lognormal = torch.exp(self.lognormal_std * eps) - 1.0
        return torch.where(x < 0, mixture, lognormal)

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = torch.broadcast_tensors(x.double(), y.double())
        s = torch.sin(x)
        std = torch.full_like(x, self.mode_std)
        mixture = torch.logaddexp(
            math.log(self.mode_weight) + _normal_log_pdf(y, s, std),
            math.log(1.0 - self.mode_weight) + _normal_log_pdf(y, -s, std),
        )
        # Log-normal density of t = y + 1: N(log t; 0, s^2) / t for t > 0, and 0 otherwise.
        t = y + 1.0
        t_safe = torch.where(t > 0, t, torch.ones_like(t))
        log_t = torch.log(t_safe)
        ln = _normal_log_pdf(log_t, torch.zeros_like(t), torch.full_like(t, self.lognormal_std)) - log_t
        lognormal = torch.where(t > 0, ln, torch.full_like(t, float("-inf")))
        return torch.where(x < 0, mixture, lognormal)


class HeteroscedasticSineProblem(ToyProblem):
    """Problem 2: y ~ N(sin x, (0.15 sigmoid(x))^2); the noise grows from 0.007 at x = -3 to 0.143 at 3."""

    name = "problem2"
    max_std = 0.15

    def std(self, x: Tensor) -> Tensor:
        return self.max_std * torch.sigmoid(x)

    def sample_y(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        x = x.double()
        return torch.sin(x) + self.std(x) * torch.randn(x.shape, generator=generator, dtype=torch.float64)

    def log_density(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = torch.broadcast_tensors(x.double(), y.double())
        return _normal_log_pdf(y, torch.sin(x), self.std(x))


PROBLEMS: Dict[str, ToyProblem] = {p.name: p for p in (BimodalLogNormalProblem(), HeteroscedasticSineProblem())}


def get_problem(name: str) -> ToyProblem:
    """Look up a problem by name ("problem1", "problem2"; "1" and "2" also work)."""
    key = name if name.startswith("problem") else f"problem{name}"
    if key not in PROBLEMS:
        raise KeyError(f"unknown toy problem {name!r}; expected one of {sorted(PROBLEMS)}")
    return PROBLEMS[key]
