"""A generic energy-based regressor: any input encoder, any target dimension D.

f(x, y) = head([g(x), h(y)]) with an x-encoder g (any module: an MLP for vectors, a CNN for images)
and an MLP y-encoder h. Training and prediction use the same core pieces as the box models
(:mod:`proposal`, :mod:`objectives`, :mod:`refine`), so the method applies to age or head-pose
estimation as well as to boxes.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .objectives import ebm_loss, sampling_options
from .proposal import GaussianMixtureProposal
from .refine import RefinementResult, gradient_ascent

__all__ = ["mlp", "EBMRegressor"]


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """Fully connected network in_dim -> hidden... -> out_dim with ReLUs between layers."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class EBMRegressor(nn.Module):
    """Energy-based regression model p(y | x) proportional to exp f(x, y).

    Args:
        x_encoder: maps a batch of inputs to (B, x_features) vectors.
        x_features: output width of ``x_encoder``.
        y_dim: D, target dimension.
        hidden: width of the y-encoder and of the head.
    """

    def __init__(self, x_encoder: nn.Module, x_features: int, y_dim: int, hidden: int = 64):
        super().__init__()
        self.x_encoder = x_encoder
        self.y_dim = y_dim
        self.y_encoder = mlp(y_dim, [hidden], hidden)
        self.head = mlp(x_features + hidden, [hidden, hidden], 1)

    def score(self, x_feat: Tensor, y: Tensor) -> Tensor:
        """f from encoded inputs: (B, F) features, (B, M, D) targets -> (B, M)."""
        b, m, _ = y.shape
        hy = torch.relu(self.y_encoder(y))
        hx = x_feat[:, None, :].expand(b, m, x_feat.shape[-1])
        return self.head(torch.cat([hx, hy], dim=-1)).squeeze(-1)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """f(x, y): (B, ...) inputs, (B, M, D) targets -> (B, M) scores."""
        return self.score(self.x_encoder(x), y)

    def training_loss(
        self,
        x: Tensor,
        y_true: Tensor,
        proposal: GaussianMixtureProposal,
        *,
        method: str = "ml_is",
        num_samples: int = 1024,
        beta: Optional[float] = None,
        label_sigma: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Loss of ``method`` (ml_is, kld_is, nce, nce_plus) for a batch.

        Args:
            x: (B, ...) inputs.
            y_true: (B, D) targets; rows with non-finite values are ignored (masked).
            proposal: mixture around each target (D must match).
            num_samples: M noise samples per target.
        Returns:
            scalar loss.
        """
        valid = torch.isfinite(y_true).all(dim=1)
        centers = torch.where(valid[:, None], y_true, torch.zeros_like(y_true))
        opts = sampling_options(method, beta)
        samples, log_q = proposal.sample(
            centers, num_samples, include_center=opts.include_center, beta=opts.beta, generator=generator
        )
        scores = self.score(self.x_encoder(x), samples)
        return ebm_loss(
            method, scores, log_q, offsets=samples - centers[:, None, :], label_sigma=label_sigma, valid=valid
        )

    @torch.no_grad()
    def predict(
        self,
        x: Tensor,
        y_init: Tensor,
        *,
        step_size: Union[float, Sequence[float]] = 0.01,
        num_steps: int = 10,
        decay: float = 0.5,
    ) -> RefinementResult:
        """Refine initial estimates (B, D) by gradient ascent on f; see :func:`gradient_ascent`."""
        x_feat = self.x_encoder(x)

        def energy(y: Tensor) -> Tensor:
            return self.score(x_feat, y[:, None, :])[:, 0]

        return gradient_ascent(energy, y_init, step_size=step_size, num_steps=num_steps, decay=decay)

    @torch.no_grad()
    def log_density_on_grid(self, x: Tensor, y_grid: Tensor, cell_volume: float) -> Tensor:
        """Model log-density normalised over a grid.

        Args:
            x: (B, ...) inputs.
            y_grid: (G, D) grid points covering the support.
            cell_volume: volume of one grid cell (dy for D = 1), so that sum(exp(out)) * cell_volume = 1.
        Returns:
            (B, G) log p(y_g | x).
        """
        x_feat = self.x_encoder(x)
        f = self.score(x_feat, y_grid[None].expand(x.shape[0], -1, -1))
        return f - torch.logsumexp(f, dim=1, keepdim=True) - torch.log(torch.tensor(cell_volume))
