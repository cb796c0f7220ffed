"""One place that ties proposal sampling to the loss it feeds.

Each training method needs its samples laid out differently (ML-IS and NCE want the ground truth as
sample 0, NCE+ a beta-perturbed ground truth, KLD-IS only noise). Adapters (Detectron2 head, tracker,
generic regressor) call :func:`sampling_options` to draw, score all samples with their network, and
call :func:`ebm_loss` with the scores. The IoU-Net baseline is handled by the adapters because its
target (IoU) is box-specific; its loss is :func:`ebm_refine.core.losses.iou_confidence_loss`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from .losses import gaussian_label_log_density, kld_is_loss, ml_is_loss, nce_loss

__all__ = ["EBM_METHODS", "SamplingOptions", "sampling_options", "ebm_loss"]

EBM_METHODS = ("ml_is", "kld_is", "nce", "nce_plus")


@dataclass(frozen=True)
class SamplingOptions:
    """Keyword arguments for ``proposal.sample`` (``include_reference`` for boxes)."""

    include_center: bool
    beta: Optional[float]


def sampling_options(method: str, beta: Optional[float] = None) -> SamplingOptions:
    """How to draw samples for ``method``. ``beta`` is required for ``nce_plus``."""
    if method in ("ml_is", "nce"):
        return SamplingOptions(include_center=True, beta=None)
    if method == "kld_is":
        return SamplingOptions(include_center=False, beta=None)
    if method == "nce_plus":
        if beta is None or not beta > 0:
            raise ValueError("nce_plus needs beta > 0")
        return SamplingOptions(include_center=False, beta=float(beta))
    raise ValueError(f"unknown EBM method {method!r}; expected one of {EBM_METHODS}")


def ebm_loss(
    method: str,
    scores: Tensor,
    log_q: Tensor,
    *,
    offsets: Optional[Tensor] = None,
    label_sigma: Optional[float] = None,
    valid: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Loss of ``method`` from the scores of samples drawn with :func:`sampling_options`.

    Args:
        method: one of :data:`EBM_METHODS`.
        scores: (N, M') f of every sample; sample 0 is the positive for ml_is / nce / nce_plus.
        log_q: (N, M') proposal log-densities of the samples.
        offsets: (N, M', D) sample minus ground truth in the proposal's space (relative box
            coordinates for boxes); needed by kld_is only.
        label_sigma: std of the Gaussian label density of kld_is (same space as ``offsets``).
        valid: optional (N,) mask of ground truths, or (N, M') mask of samples (column 0 ignored
            for methods with a positive).
        reduction: "mean", "sum" or "none".
    """
    if method == "kld_is":
        if offsets is None or label_sigma is None:
            raise ValueError("kld_is needs offsets and label_sigma")
        label = gaussian_label_log_density(offsets, label_sigma)
        return kld_is_loss(scores, log_q, label, valid, reduction)
    noise_valid = valid[:, 1:] if valid is not None and valid.dim() == 2 else valid
    if method == "ml_is":
        return ml_is_loss(scores[:, 0], scores[:, 1:], log_q[:, 1:], noise_valid, reduction)
    if method in ("nce", "nce_plus"):
        return nce_loss(scores[:, 0], log_q[:, 0], scores[:, 1:], log_q[:, 1:], noise_valid, reduction)
    raise ValueError(f"unknown EBM method {method!r}; expected one of {EBM_METHODS}")
