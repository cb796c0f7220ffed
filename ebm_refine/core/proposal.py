"""Gaussian-mixture proposal distributions q(y | y_ref) for importance sampling and NCE.

The proposal is an equal-weight mixture of K axis-aligned Gaussians centred on the reference::

    q(y | c) = 1/K * sum_k N(y; c, diag(sigma_k^2))

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
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .boxes import decode_relative, encode_relative

__all__ = ["GaussianMixtureProposal", "BoxProposal", "BoxSamples"]


class GaussianMixtureProposal:
    """Equal-weight, zero-mean-offset Gaussian mixture around given centres.

    Args:
        sigmas: (K, D) per-component standard deviations, or (K,) for isotropic components, or a
            sequence of K floats. D is fixed by the first call if ``sigmas`` is 1-D.
    """

    def __init__(self, sigmas: Union[Tensor, Sequence[float], Sequence[Sequence[float]]]):
        s = torch.as_tensor(sigmas, dtype=torch.float32)
        if s.dim() not in (1, 2) or s.numel() == 0:
            raise ValueError(f"sigmas must be (K,) or (K, D), got shape {tuple(s.shape)}")
        if not torch.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"sigmas must be finite and positive, got {s.tolist()}")
        self.sigmas = s

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
        z = (y[:, :, None, :] - centers[:, None, None, :]) / s  # (N, M, K, D)
        log_comp = -0.5 * (z * z).sum(-1) - torch.log(s).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(log_comp, dim=-1) - math.log(self.num_components)

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
                unscaled q, as the NCE+ loss requires. Mutually exclusive with ``include_center``.
            generator: optional RNG on ``centers.device``.
        Returns:
            samples (N, M', D) and log_q (N, M'), with M' = M + 1 if a positive is prepended.
        """
        if include_center and beta is not None:
            raise ValueError("include_center and beta are mutually exclusive (both define sample 0)")
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        n, d = centers.shape
        s = self._sigmas(d, centers)
        k = self.num_components
        # One draw for every (centre, sample): a component index and a standard-normal offset.
        comp = torch.randint(k, (n, num_samples), device=centers.device, generator=generator)
        eps = torch.randn(n, num_samples, d, device=centers.device, dtype=centers.dtype, generator=generator)
        samples = centers[:, None, :] + eps * s[comp]
        if include_center:
            samples = torch.cat([centers[:, None, :], samples], dim=1)
        elif beta is not None:
            comp0 = torch.randint(k, (n,), device=centers.device, generator=generator)
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

    Example (the paper's ML-IS detection proposal)::

        proposal = BoxProposal([0.0375, 0.075, 0.15])
        s = proposal.sample(gt_boxes, 128, include_reference=True)   # s.boxes: (N, 129, 4)
    """

    def __init__(self, sigma_center: Sequence[float], sigma_size: Optional[Sequence[float]] = None):
        sc = [float(v) for v in sigma_center]
        ss = [float(v) for v in (sigma_size if sigma_size is not None else sigma_center)]
        if len(sc) != len(ss):
            raise ValueError(f"sigma_center has {len(sc)} components but sigma_size has {len(ss)}")
        self.sigma_center = sc
        self.sigma_size = ss
        self.mixture = GaussianMixtureProposal([[c, c, z, z] for c, z in zip(sc, ss)])

    def __repr__(self) -> str:
        return f"BoxProposal(sigma_center={self.sigma_center}, sigma_size={self.sigma_size})"

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
