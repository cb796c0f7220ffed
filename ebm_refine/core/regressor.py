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
from .robust import weighted_mean

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
        sample_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """Loss of ``method`` (ml_is, kld_is, nce, nce_plus) for a batch.

        Args:
            x: (B, ...) inputs.
            y_true: (B, D) targets; rows with non-finite values are ignored (masked).
            proposal: mixture around each target (D must match).
            num_samples: M noise samples per target.
            sample_weights: optional (B,) weights of the targets' losses, e.g. DeepGUM's inlier
                responsibilities r_n (:mod:`.robust`); the loss is then sum r_n L_n / sum r_n over the
                valid targets. None (or all ones) gives the plain mean. Treated as constants.
        Returns:
            scalar loss.
        """
        if sample_weights is not None and sample_weights.shape != y_true.shape[:1]:
            raise ValueError(f"sample_weights must be ({y_true.shape[0]},), got {tuple(sample_weights.shape)}")
        valid = torch.isfinite(y_true).all(dim=1)
        centers = torch.where(valid[:, None], y_true, torch.zeros_like(y_true))
        opts = sampling_options(method, beta)
        samples, log_q = proposal.sample(
            centers, num_samples, include_center=opts.include_center, beta=opts.beta, generator=generator
        )
        scores = self.score(self.x_encoder(x), samples)
        offsets = samples - centers[:, None, :]
        if sample_weights is None:
            return ebm_loss(method, scores, log_q, offsets=offsets, label_sigma=label_sigma, valid=valid)
        per_target = ebm_loss(
            method, scores, log_q, offsets=offsets, label_sigma=label_sigma, valid=valid, reduction="none"
        )
        return weighted_mean(per_target, sample_weights, valid)

    @torch.no_grad()
    def mode_on_grid(self, x: Tensor, y_grid: Tensor, chunk: int = 256) -> Tensor:
        """The best grid point per input, argmax_g f(x, y_g): a direct guess to refine.

        Args:
            x: (B, ...) inputs.
            y_grid: (G, D) candidate targets (e.g. a grid over the targets' range).
            chunk: inputs per forward pass (bounds memory at chunk * G evaluations).
        Returns:
            (B, D) the highest-scoring grid point of each input.
        """
        out = []
        for xc in torch.split(x, chunk):
            f = self.score(self.x_encoder(xc), y_grid[None].expand(xc.shape[0], -1, -1))
            out.append(y_grid[f.argmax(dim=1)])
        return torch.cat(out) if out else y_grid.new_zeros(0, y_grid.shape[1])

    @torch.no_grad()
    def residuals(
        self,
        x: Tensor,
        y_true: Tensor,
        y_init: Tensor,
        *,
        step_size: Union[float, Sequence[float]] = 0.01,
        num_steps: int = 10,
        decay: float = 0.5,
    ) -> Tensor:
        """DeepGUM residuals e = prediction after refinement - annotation, (B, D).

        The prediction is what the model outputs at test time: ``y_init`` (a direct regressor's
        output, the previous estimate, or :meth:`mode_on_grid`) refined by :meth:`predict`. It is not
        refined from the annotation itself: in a region without data f is flat, so ascent started at a
        wrong annotation would barely move and call it an inlier.
        """
        return self.predict(x, y_init, step_size=step_size, num_steps=num_steps, decay=decay).values - y_true

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
