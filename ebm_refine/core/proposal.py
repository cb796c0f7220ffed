"""Gaussian-mixture proposal distributions q(y | y_ref) for importance sampling and NCE.

The proposal is a mixture of K axis-aligned Gaussians around the reference (the paper's: equal weights,
every component centred on the reference, mu_k = 0)::

    q(y | c) = sum_k pi_k N(y; c + mu_k, diag(sigma_k^2))

:class:`GaussianMixtureProposal` does this in any dimension D (the generic regressor uses it directly).
:class:`BoxProposal` puts the same mixture on the *relative* box encoding of
:mod:`ebm_refine.core.boxes`, so ``log_q`` is a density over relative coordinates (unitless centre
offsets and log-sizes). For one reference box this differs from the density over pixel coordinates
only by a constant (the Jacobian depends on the reference alone), which cancels in every loss.

Sampling is one vectorised call for N centres x M samples: no Python loop over centres or components
and no host synchronisation, so it runs at full speed on a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import Tensor

from .boxes import decode_relative, encode_relative

if TYPE_CHECKING:  # the proposal only reads a fitted mixture's tensors
    from .residual_proposal import ResidualMixture

__all__ = ["GaussianMixtureProposal", "BoxProposal", "BoxSamples", "PART_OFFSETS", "best_samples"]

# Relative offsets (dcx, dcy, log w, log h) of the parts of a box that a tracker's box can collapse onto:
# its upper, lower, left and right halves and its centred inner box of 0.6 x the width and height.
PART_OFFSETS = (
    (0.0, -0.25, 0.0, math.log(0.5)),
    (0.0, 0.25, 0.0, math.log(0.5)),
    (-0.25, 0.0, math.log(0.5), 0.0),
    (0.25, 0.0, math.log(0.5), 0.0),
    (0.0, 0.0, math.log(0.6), math.log(0.6)),
)


class GaussianMixtureProposal:
    """Gaussian mixture around given centres; by default equal weights and every component on the centre.

    Args:
        sigmas: (K, D) per-component standard deviations, or (K,) for isotropic components, or a
            sequence of K floats. D is fixed by the first call if ``sigmas`` is 1-D.
        means: optional (K, D) offsets mu_k of the components from the centre (default: zeros).
        weights: optional (K,) mixture weights pi_k, positive; normalised to sum to 1 (default: 1/K each).
    """

    def __init__(self, sigmas: Union[Tensor, Sequence[float], Sequence[Sequence[float]]],
                 means: Optional[Union[Tensor, Sequence[Sequence[float]]]] = None,
                 weights: Optional[Union[Tensor, Sequence[float]]] = None):
        s = torch.as_tensor(sigmas, dtype=torch.float32)
        if s.dim() not in (1, 2) or s.numel() == 0:
            raise ValueError(f"sigmas must be (K,) or (K, D), got shape {tuple(s.shape)}")
        if not torch.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"sigmas must be finite and positive, got {s.tolist()}")
        self.sigmas = s
        self.means = None
        if means is not None:
            m = torch.as_tensor(means, dtype=torch.float32)
            if m.dim() != 2 or m.shape[0] != s.shape[0] or (s.dim() == 2 and m.shape[1] != s.shape[1]):
                raise ValueError(f"means must be (K, D) matching sigmas {tuple(s.shape)}, got {tuple(m.shape)}")
            if not torch.isfinite(m).all():
                raise ValueError(f"means must be finite, got {m.tolist()}")
            self.means = m
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float32)
            if w.shape != (s.shape[0],) or not torch.isfinite(w).all() or (w <= 0).any():
                raise ValueError(f"weights must be K={s.shape[0]} positive numbers, got {w.tolist()}")
            self.weights = w / w.sum()

    @property
    def num_components(self) -> int:
        return self.sigmas.shape[0]

    def _sigmas(self, dim: int, like: Tensor) -> Tensor:
        """(K, D) sigmas on ``like``'s device and dtype."""
        s = self.sigmas.to(device=like.device, dtype=like.dtype)
        if s.dim() == 1:
            s = s[:, None].expand(-1, dim)
        elif s.shape[1] != dim:
            raise ValueError(f"proposal has D={s.shape[1]} but the centres have D={dim}")
        return s

    def _means(self, dim: int, like: Tensor) -> Optional[Tensor]:
        """(K, D) component offsets on ``like``'s device and dtype, or None when all are zero."""
        if self.means is None:
            return None
        if self.means.shape[1] != dim:
            raise ValueError(f"proposal means have D={self.means.shape[1]} but the centres have D={dim}")
        return self.means.to(device=like.device, dtype=like.dtype)

    def _components(self, n: int, m: int, device, generator: Optional[torch.Generator]) -> Tensor:
        """(n, m) component indices drawn by the weights. Equal weights keep ``randint``, so a proposal without
        weights draws exactly what it always drew for a given seed."""
        k = self.num_components
        if self.weights is None:
            return torch.randint(k, (n, m), device=device, generator=generator)
        if n == 0 or m == 0:
            return torch.zeros(n, m, dtype=torch.long, device=device)
        probs = self.weights.to(device).expand(n, k)
        return torch.multinomial(probs, m, replacement=True, generator=generator)

    def log_prob(self, y: Tensor, centers: Tensor) -> Tensor:
        """Exact mixture log-density.

        Args:
            y: (N, M, D) points.
            centers: (N, D) mixture centres.
        Returns:
            (N, M) log q(y | centre).
        """
        d = y.shape[-1]
        s = self._sigmas(d, y)  # (K, D)
        diff = y[:, :, None, :] - centers[:, None, None, :]  # (N, M, K, D)
        mu = self._means(d, y)
        if mu is not None:
            diff = diff - mu
        z = diff / s
        log_comp = -0.5 * (z * z).sum(-1) - torch.log(s).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        if self.weights is None:
            return torch.logsumexp(log_comp, dim=-1) - math.log(self.num_components)
        return torch.logsumexp(log_comp + torch.log(self.weights.to(device=y.device, dtype=y.dtype)), dim=-1)

    def sample(
        self,
        centers: Tensor,
        num_samples: int,
        *,
        include_center: bool = False,
        beta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw ``num_samples`` points per centre.

        Args:
            centers: (N, D).
            num_samples: M, samples from q per centre.
            include_center: prepend the centre itself as sample 0 (ML-IS / NCE positives).
            beta: if given, prepend an NCE+ "true" sample as sample 0: the centre perturbed by the
                same mixture with every sigma scaled by ``beta``. Its log q is evaluated under the
                unscaled q, as the NCE+ loss requires. Mutually exclusive with ``include_center``;
                only for a mixture whose components all sit on the centre (a true sample around a
                part of the target would not be one).
            generator: optional RNG on ``centers.device``.
        Returns:
            samples (N, M', D) and log_q (N, M'), with M' = M + 1 if a positive is prepended.
        """
        if include_center and beta is not None:
            raise ValueError("include_center and beta are mutually exclusive (both define sample 0)")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if beta is not None and self.means is not None and bool((self.means != 0).any()):
            raise ValueError("beta (NCE+) needs a mixture whose components all sit on the centre (means zero)")
        n, d = centers.shape
        s = self._sigmas(d, centers)
        mu = self._means(d, centers)
        # One draw for every (centre, sample): a component index and a standard-normal offset.
        comp = self._components(n, num_samples, centers.device, generator)
        eps = torch.randn(n, num_samples, d, device=centers.device, dtype=centers.dtype, generator=generator)
        samples = centers[:, None, :] + eps * s[comp]
        if mu is not None:
            samples = samples + mu[comp]
        if include_center:
            samples = torch.cat([centers[:, None, :], samples], dim=1)
        elif beta is not None:
            comp0 = self._components(n, 1, centers.device, generator)[:, 0]
            eps0 = torch.randn(n, d, device=centers.device, dtype=centers.dtype, generator=generator)
            true_sample = centers + beta * eps0 * s[comp0]
            samples = torch.cat([true_sample[:, None, :], samples], dim=1)
        return samples, self.log_prob(samples, centers)


@dataclass
class BoxSamples:
    """Boxes drawn around N reference boxes.

    Attributes:
        boxes: (N, M', 4) xyxy pixels.
        rel: (N, M', 4) relative coordinates w.r.t. the reference (see :mod:`ebm_refine.core.boxes`).
        log_q: (N, M') log-density of ``rel`` under the proposal (density over relative coordinates).
        has_positive: whether sample 0 is a positive (the reference, or the NCE+ true sample).
    """

    boxes: Tensor
    rel: Tensor
    log_q: Tensor
    has_positive: bool

    @property
    def positive(self) -> "BoxSamples":
        """Sample 0 as (N, 1, ...) tensors; only meaningful when ``has_positive``."""
        if not self.has_positive:
            raise ValueError("these samples were drawn without a positive at index 0")
        return BoxSamples(self.boxes[:, :1], self.rel[:, :1], self.log_q[:, :1], True)

    @property
    def noise(self) -> "BoxSamples":
        """The samples drawn from q, (N, M, ...)."""
        start = 1 if self.has_positive else 0
        return BoxSamples(self.boxes[:, start:], self.rel[:, start:], self.log_q[:, start:], False)


class BoxProposal:
    """Gaussian-mixture proposal over boxes, defined in the relative encoding of the reference box.

    Args:
        sigma_center: K standard deviations of the centre offsets (units of the reference width/height).
        sigma_size: K standard deviations of the log-sizes; defaults to ``sigma_center``. The paper's
            detection and tracking settings use the same value for both.
        part_weight: share of the samples drawn around the parts of the reference (:data:`PART_OFFSETS`:
            its halves and its inner 0.6 x box), in [0, 1); 0 (default) is the paper's proposal. The part
            components are ordinary mixture components, so ``log_q`` stays exact and ML-IS stays consistent;
            what changes is where the estimate of log Z looks. With the paper's broad sigma 0.5 a half box
            is drawn about once in a few thousand samples, so an energy that prefers a part of the target
            (the collapse of a tracker's box onto it) is almost never corrected; part components put
            ``part_weight`` of the samples there.
        part_sigma: standard deviation of every coordinate of each part component (relative units).
        residual_mixture: a :class:`~ebm_refine.core.residual_proposal.ResidualMixture` fitted to a detector's
            errors (its boxes relative to the truth); its components join the mixture with ``residual_weight``
            of the samples, so the training samples also go where a detector's boxes lie, the places refinement
            starts from at test time. ``log_q`` stays exact.
        residual_weight: share of the samples drawn from ``residual_mixture``; ``part_weight + residual_weight``
            must stay below 1.

    Example (the paper's ML-IS detection proposal)::

        proposal = BoxProposal([0.0375, 0.075, 0.15])
        s = proposal.sample(gt_boxes, 128, include_reference=True)   # s.boxes: (N, 129, 4)
    """

    def __init__(self, sigma_center: Sequence[float], sigma_size: Optional[Sequence[float]] = None, *,
                 part_weight: float = 0.0, part_sigma: float = 0.1,
                 residual_mixture: Optional["ResidualMixture"] = None, residual_weight: float = 0.0):
        sc = [float(v) for v in sigma_center]
        ss = [float(v) for v in (sigma_size if sigma_size is not None else sigma_center)]
        if len(sc) != len(ss):
            raise ValueError(f"sigma_center has {len(sc)} components but sigma_size has {len(ss)}")
        if not 0.0 <= part_weight < 1.0:
            raise ValueError(f"part_weight must be in [0, 1), got {part_weight}")
        if not part_sigma > 0:
            raise ValueError(f"part_sigma must be > 0, got {part_sigma}")
        if residual_weight != 0.0 and residual_mixture is None:
            raise ValueError("residual_weight needs a residual_mixture")
        if residual_mixture is not None and not 0.0 < residual_weight < 1.0:
            raise ValueError(f"residual_weight must be in (0, 1) with a residual_mixture, got {residual_weight}")
        if part_weight + residual_weight >= 1.0:
            raise ValueError(f"part_weight + residual_weight must stay below 1, got {part_weight} + {residual_weight}")
        self.sigma_center = sc
        self.sigma_size = ss
        self.part_weight = float(part_weight)
        self.part_sigma = float(part_sigma)
        self.residual_mixture = residual_mixture
        self.residual_weight = float(residual_weight)
        sigmas = [[c, c, z, z] for c, z in zip(sc, ss)]
        if part_weight == 0.0 and residual_mixture is None:
            self.mixture = GaussianMixtureProposal(sigmas)  # the paper's: equal weights, all on the reference
            return
        k, p = len(sigmas), len(PART_OFFSETS)
        base = (1.0 - part_weight - residual_weight) / k
        means, weights = [[0.0] * 4] * k, [base] * k
        if part_weight > 0.0:
            sigmas = sigmas + [[part_sigma] * 4] * p
            means = means + [list(o) for o in PART_OFFSETS]
            weights = weights + [part_weight / p] * p
        if residual_mixture is not None:
            sigmas = sigmas + residual_mixture.sigmas.tolist()
            means = means + residual_mixture.means.tolist()
            weights = weights + [residual_weight * float(w) for w in residual_mixture.weights]
        self.mixture = GaussianMixtureProposal(sigmas, means=means, weights=weights)

    def __repr__(self) -> str:
        parts = f", part_weight={self.part_weight}, part_sigma={self.part_sigma}" if self.part_weight else ""
        if self.residual_mixture is not None:
            parts += (f", residual_mixture=<{self.residual_mixture.num_components} components>, "
                      f"residual_weight={self.residual_weight}")
        return f"BoxProposal(sigma_center={self.sigma_center}, sigma_size={self.sigma_size}{parts})"

    def sample(
        self,
        reference: Tensor,
        num_samples: int,
        *,
        include_reference: bool = False,
        beta: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ) -> BoxSamples:
        """Sample boxes around references.

        Args:
            reference: (N, 4) xyxy pixels; must have positive width and height.
            num_samples: M boxes drawn from q per reference.
            include_reference: sample 0 is the reference itself.
            beta: sample 0 is the NCE+ true sample (see :meth:`GaussianMixtureProposal.sample`).
            generator: optional RNG on ``reference.device``.
        Returns:
            :class:`BoxSamples` with M' = M (+1 with a positive) samples per reference.
        """
        if reference.dim() != 2 or reference.shape[-1] != 4:
            raise ValueError(f"reference must be (N, 4), got {tuple(reference.shape)}")
        zeros = reference.new_zeros(reference.shape)
        rel, log_q = self.mixture.sample(
            zeros, num_samples, include_center=include_reference, beta=beta, generator=generator
        )
        boxes = decode_relative(rel, reference[:, None, :])
        return BoxSamples(boxes, rel, log_q, include_reference or beta is not None)

    def log_prob(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """(N, M, 4) xyxy boxes, (N, 4) references -> (N, M) log q over relative coordinates."""
        rel = encode_relative(boxes, reference[:, None, :])
        return self.mixture.log_prob(rel, torch.zeros_like(reference))


def best_samples(boxes: Tensor, scores: Tensor, valid: Tensor, fallback: Tensor) -> Tensor:
    """Each reference's highest-scoring valid sample (no gradient): the model's mode among its proposals.

    Args:
        boxes: (N, M, 4) sampled boxes; scores: (N, M) their f; valid: (N, M) bool, which samples count.
        fallback: (N, 4) the box returned for a reference without a valid sample.
    Returns:
        (N, 4) detached boxes.
    """
    masked = torch.where(valid, scores.detach(), torch.full_like(scores, float("-inf")))
    best = boxes.detach()[torch.arange(boxes.shape[0], device=boxes.device), masked.argmax(dim=1)]
    return torch.where(valid.any(dim=1)[:, None], best, fallback.detach())
