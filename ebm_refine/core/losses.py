"""Training losses for energy-based regression, and the IoU-Net confidence baseline.

Notation: for one ground truth y_i, ``f_*`` are energies-as-scores f(x_i, y) (higher = more likely,
p(y|x) = exp f / Z), ``log_q`` the proposal log-densities of the M noise samples y^(m) ~ q(y | y_i).
Every loss is computed per ground truth with ``logsumexp`` (stable for any score scale) and then
reduced over the valid ones.

Masks: ``valid`` may be (N,) -- drop whole ground truths (e.g. degenerate or ignored boxes) -- or
(N, M) -- drop individual noise samples (e.g. boxes that left the image). A ground truth with no valid
noise sample contributes nothing. With nothing valid at all the loss is an exact zero that still
carries a graph (so ``loss.backward()`` in a training loop never fails on an empty batch).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ml_is_loss",
    "kld_is_loss",
    "nce_loss",
    "iou_confidence_loss",
    "gaussian_label_log_density",
    "LOSS_NAMES",
]

LOSS_NAMES = ("ml_is", "kld_is", "nce", "nce_plus", "iou_confidence")


def _masks(valid: Optional[Tensor], n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Return (row_valid (N,), sample_valid (N, M)) bool masks."""
    if valid is None:
        sample = torch.ones(n, m, dtype=torch.bool, device=device)
    elif valid.dim() == 1:
        sample = valid.bool()[:, None].expand(n, m)
    elif valid.dim() == 2:
        sample = valid.bool().expand(n, m)
    else:
        raise ValueError(f"valid must be (N,) or (N, M), got {tuple(valid.shape)}")
    return sample.any(dim=1), sample


def _reduce(per_row: Tensor, row_valid: Tensor, reduction: str) -> Tensor:
    per_row = torch.where(row_valid, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        # Clamp avoids 0/0; an all-invalid batch gives sum()*0 = 0 with a graph.
        return per_row.sum() / row_valid.sum().clamp(min=1).to(per_row.dtype)
    raise ValueError(f"unknown reduction {reduction!r}")


def _masked_log_mean_exp(x: Tensor, mask: Tensor) -> Tensor:
    """log(1/|mask| sum_{mask} exp x) over the last dim, (N, M) -> (N,); -inf-safe for empty rows."""
    x = x.masked_fill(~mask, float("-inf"))
    count = mask.sum(dim=1).clamp(min=1).to(x.dtype)
    out = torch.logsumexp(x, dim=1) - torch.log(count)
    return torch.where(mask.any(dim=1), out, torch.zeros_like(out))


def ml_is_loss(
    f_ref: Tensor,
    f_noise: Tensor,
    log_q_noise: Tensor,
    valid: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Importance-sampled negative log-likelihood (ML-IS)::

        L_i = log( 1/M sum_m exp(f(y_m) - log q(y_m)) ) - f(y_i)

    The first term is a Monte-Carlo estimate of log Z(x_i).

    Args:
        f_ref: (N,) scores of the ground truths y_i.
        f_noise: (N, M) scores of samples y_m ~ q(. | y_i).
        log_q_noise: (N, M) their proposal log-densities.
        valid: optional (N,) or (N, M) bool mask (see module docstring).
        reduction: "mean" over valid ground truths, "sum", or "none" -> (N,).
    """
    n, m = f_noise.shape
    row_valid, sample_valid = _masks(valid, n, m, f_noise.device)
    log_z = _masked_log_mean_exp(f_noise - log_q_noise, sample_valid)
    return _reduce(log_z - f_ref.reshape(n), row_valid, reduction)


def gaussian_label_log_density(rel: Tensor, sigma: float | Tensor) -> Tensor:
    """log N(u; 0, sigma^2 I) of relative coordinates u, (N, M, D) -> (N, M).

    This is the label density p(y | y_i) of KLD-IS, placed on the same (relative) space as the
    proposal so that the ratio p / q is dimensionally consistent.
    """
    s = torch.as_tensor(sigma, dtype=rel.dtype, device=rel.device).expand(rel.shape[-1])
    z = rel / s
    return -0.5 * (z * z).sum(-1) - torch.log(s).sum() - 0.5 * rel.shape[-1] * math.log(2 * math.pi)


def kld_is_loss(
    f_noise: Tensor,
    log_q_noise: Tensor,
    label_log_p: Tensor,
    valid: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Importance-sampled KL divergence to a label density p(y | y_i) (KLD-IS)::

        L_i = log( 1/M sum_m exp(f(y_m) - log q(y_m)) ) - 1/M sum_m p(y_m | y_i) / q(y_m) * f(y_m)

    Args:
        f_noise: (N, M) scores of samples y_m ~ q.
        log_q_noise: (N, M) proposal log-densities.
        label_log_p: (N, M) label log-densities log p(y_m | y_i), e.g. from
            :func:`gaussian_label_log_density`.
        valid, reduction: as in :func:`ml_is_loss`.
    """
    n, m = f_noise.shape
    row_valid, sample_valid = _masks(valid, n, m, f_noise.device)
    log_z = _masked_log_mean_exp(f_noise - log_q_noise, sample_valid)
    # The ratio is bounded in practice because q is wider than p; masked samples weigh 0.
    weight = torch.exp(label_log_p - log_q_noise).masked_fill(~sample_valid, 0.0)
    count = sample_valid.sum(dim=1).clamp(min=1).to(f_noise.dtype)
    expected_f = (weight * f_noise.masked_fill(~sample_valid, 0.0)).sum(dim=1) / count
    return _reduce(log_z - expected_f, row_valid, reduction)


def nce_loss(
    f_true: Tensor,
    log_q_true: Tensor,
    f_noise: Tensor,
    log_q_noise: Tensor,
    valid: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Noise-contrastive estimation as classification of the true sample among noise (NCE / NCE+)::

        l_m = f(y_m) - log q(y_m),   m = 0..M   (y_0 the true sample)
        L_i = -l_0 + log sum_{m=0..M} exp(l_m)

    NCE uses y_0 = y_i; NCE+ uses y_0 = y_i perturbed by the beta-scaled proposal (sample it with
    ``BoxProposal.sample(..., beta=...)``), with log q(y_0) under the unscaled q.

    Args:
        f_true: (N,) scores of the true samples.
        log_q_true: (N,) their proposal log-densities.
        f_noise, log_q_noise: (N, M).
        valid: (N,) or (N, M) mask over ground truths / noise samples; the true sample always counts.
        reduction: as in :func:`ml_is_loss`.
    """
    n, m = f_noise.shape
    row_valid, sample_valid = _masks(valid, n, m, f_noise.device)
    l_true = (f_true - log_q_true).reshape(n, 1)
    l_noise = (f_noise - log_q_noise).masked_fill(~sample_valid, float("-inf"))
    logits = torch.cat([l_true, l_noise], dim=1)
    return _reduce(torch.logsumexp(logits, dim=1) - l_true[:, 0], row_valid, reduction)


def iou_confidence_loss(
    pred: Tensor,
    iou: Tensor,
    valid: Optional[Tensor] = None,
    beta: float = 1.0 / 9.0,
    reduction: str = "mean",
) -> Tensor:
    """IoU-Net style confidence regression: smooth-L1 between ``pred`` and ``2 * IoU - 1``.

    The target lives in [-1, 1] as in the reference implementation. ``pred`` is then also usable as an
    energy for refinement (higher = better box).

    Args:
        pred: (N, M) predicted confidences.
        iou: (N, M) IoU of each sample with its ground truth.
        valid: (N,) or (N, M) mask.
        beta: smooth-L1 transition point.
        reduction: "mean" over valid samples, "sum", or "none" -> (N,) per-ground-truth means.
    """
    n, m = pred.shape
    row_valid, sample_valid = _masks(valid, n, m, pred.device)
    per = F.smooth_l1_loss(pred, 2.0 * iou - 1.0, beta=beta, reduction="none").masked_fill(~sample_valid, 0.0)
    if reduction == "mean":
        return per.sum() / sample_valid.sum().clamp(min=1).to(per.dtype)
    per_row = per.sum(dim=1) / sample_valid.sum(dim=1).clamp(min=1).to(per.dtype)
    return _reduce(per_row, row_valid, reduction)
