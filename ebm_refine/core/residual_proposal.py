"""A detector's own errors as proposal components: a Gaussian mixture fitted to its residuals.

The paper's proposal q(y | y_gt) is a few Gaussians centred on the ground truth. At test time, though, the
refinement starts from a *detector's* box, and a detector's errors are not that jitter: they are biased (a
detector that draws its boxes a little too large), correlated across coordinates and heavy-tailed. Where the
training samples never go, the energy is never corrected, and gradient ascent from a real detection can walk
into such a region.

This module measures where a detector's boxes lie relative to the truth and turns that into extra mixture
components of the proposal, keeping ``log q`` exact (ML-IS needs the density of every sample):

* :func:`detection_residuals` matches detections to ground-truth boxes and returns their residuals in the
  relative encoding of :mod:`ebm_refine.core.boxes` (the ground truth is the reference), shape (R, 4).
* :func:`fit_residual_mixture` fits a K-component diagonal Gaussian mixture to them by EM.
* :class:`ResidualMixture` holds the fit (means, sigmas, weights: all in relative units) and reads / writes it
  as JSON, so a fit made once on a detector's training-image detections travels with a config.
  :class:`~ebm_refine.core.proposal.BoxProposal` takes it as ``residual_mixture`` with a share of the samples.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .boxes import box_iou_matrix, encode_relative

__all__ = ["ResidualMixture", "detection_residuals", "fit_residual_mixture"]


@dataclass
class ResidualMixture:
    """A diagonal Gaussian mixture over residuals u in the relative box encoding (dcx, dcy, dlog w, dlog h).

    Attributes:
        means: (K, 4) component means (a detector's bias shows here).
        sigmas: (K, 4) component standard deviations, > 0.
        weights: (K,) mixture weights, positive, summing to 1.
        num_residuals: how many residuals the fit saw (0 when unknown).
        source: free text naming what was fitted (detector, images), kept in the JSON.
    """

    means: Tensor
    sigmas: Tensor
    weights: Tensor
    num_residuals: int = 0
    source: str = ""

    def __post_init__(self):
        self.means = torch.as_tensor(self.means, dtype=torch.float32)
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float32)
        self.weights = torch.as_tensor(self.weights, dtype=torch.float32)
        k = self.weights.shape[0] if self.weights.dim() == 1 else -1
        if (k < 1 or self.means.shape != (k, 4) or self.sigmas.shape != (k, 4)):
            raise ValueError(f"a residual mixture needs means (K, 4), sigmas (K, 4) and weights (K,); got "
                             f"{tuple(self.means.shape)}, {tuple(self.sigmas.shape)}, {tuple(self.weights.shape)}")
        if not (torch.isfinite(self.means).all() and torch.isfinite(self.sigmas).all()
                and torch.isfinite(self.weights).all()):
            raise ValueError("a residual mixture's means, sigmas and weights must be finite")
        if (self.sigmas <= 0).any() or (self.weights <= 0).any():
            raise ValueError("a residual mixture's sigmas and weights must be positive")
        self.weights = self.weights / self.weights.sum()

    @property
    def num_components(self) -> int:
        return int(self.weights.shape[0])

    def log_prob(self, u: Tensor) -> Tensor:
        """(..., 4) residuals -> (...) exact log-density of the mixture."""
        z = (u[..., None, :] - self.means.to(u)) / self.sigmas.to(u)  # (..., K, 4)
        log_comp = (-0.5 * (z * z).sum(-1) - torch.log(self.sigmas.to(u)).sum(-1) - 2.0 * math.log(2 * math.pi))
        return torch.logsumexp(log_comp + torch.log(self.weights.to(u)), dim=-1)

    def to_dict(self) -> dict:
        return {"format": "ebm_refine.residual_mixture", "version": 1, "encoding": "relative (dcx/w, dcy/h, log w, log h)",
                "means": self.means.tolist(), "sigmas": self.sigmas.tolist(), "weights": self.weights.tolist(),
                "num_residuals": int(self.num_residuals), "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "ResidualMixture":
        """Inverse of :meth:`to_dict`; ``ValueError`` naming what is wrong for anything else."""
        if not isinstance(d, dict) or d.get("format") != "ebm_refine.residual_mixture":
            raise ValueError("not a residual-mixture file (its 'format' must be 'ebm_refine.residual_mixture'; "
                             "write one with tools/fit_detector_proposal.py)")
        try:
            return cls(d["means"], d["sigmas"], d["weights"], int(d.get("num_residuals", 0)), str(d.get("source", "")))
        except (KeyError, TypeError) as e:
            raise ValueError(f"a residual-mixture file needs lists 'means', 'sigmas', 'weights' ({e})") from None

    @classmethod
    def load(cls, path: str) -> "ResidualMixture":
        """Read a JSON file written by :meth:`to_dict`; ``ValueError`` naming the file on bad content."""
        try:
            with open(path) as f:
                d = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a JSON residual-mixture file ({e})") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def detection_residuals(det_boxes: Tensor, det_classes: Optional[Tensor], gt_boxes: Tensor,
                        gt_classes: Optional[Tensor], iou_threshold: float = 0.5) -> Tensor:
    """Residuals of one image's detections w.r.t. the ground truth each one covers best.

    A detection counts when its best IoU with a ground-truth box (of its class, when classes are given) is at
    least ``iou_threshold``; several detections may match one ground truth (every one of them is a box that
    refinement will start from).

    Args:
        det_boxes: (D, 4) xyxy pixels; det_classes: (D,) or None (class-agnostic).
        gt_boxes: (G, 4) xyxy pixels, positive sizes; gt_classes: (G,) or None.
        iou_threshold: the least IoU of a matched detection.
    Returns:
        (R, 4) residuals encode_relative(detection, its ground truth), R <= D.
    """
    if det_boxes.numel() == 0 or gt_boxes.numel() == 0:
        return det_boxes.new_zeros(0, 4)
    iou = box_iou_matrix(det_boxes, gt_boxes)  # (D, G)
    if det_classes is not None and gt_classes is not None:
        iou = torch.where(det_classes[:, None] == gt_classes[None, :], iou, torch.zeros_like(iou))
    best, idx = iou.max(dim=1)
    keep = best >= iou_threshold
    return encode_relative(det_boxes[keep], gt_boxes[idx[keep]])


def fit_residual_mixture(residuals: Tensor, num_components: int = 4, *, iterations: int = 200,
                         min_sigma: float = 0.005, seed: int = 0, source: str = "") -> ResidualMixture:
    """Fit a diagonal Gaussian mixture to residuals by EM (k-means++-style start, variance floor).

    Args:
        residuals: (R, 4) relative-encoding residuals (:func:`detection_residuals`), R >= num_components.
        num_components: K.
        iterations: EM iterations (stops early when the log-likelihood gains < 1e-6 per point).
        min_sigma: floor on every standard deviation, so a component cannot shrink onto a few identical
            residuals (a density spike the EBM loss would chase).
        seed: RNG seed of the start.
    Returns:
        The fitted :class:`ResidualMixture`.
    """
    x = torch.as_tensor(residuals, dtype=torch.float64)
    if x.dim() != 2 or x.shape[1] != 4:
        raise ValueError(f"residuals must be (R, 4), got {tuple(x.shape)}")
    x = x[torch.isfinite(x).all(dim=1)]
    n, k = x.shape[0], int(num_components)
    if k < 1 or n < max(k, 2):
        raise ValueError(f"fitting {k} components needs at least {max(k, 2)} finite residuals, got {n}")
    g = torch.Generator().manual_seed(seed)
    # k-means++ start: spread the initial means over the data.
    centres = [x[torch.randint(n, (1,), generator=g)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.stack([((x - c) ** 2).sum(1) for c in centres]).min(0).values
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n, dtype=x.dtype)
        centres.append(x[torch.multinomial(probs, 1, generator=g)].squeeze(0))
    mu = torch.stack(centres)  # (K, 4)
    var = x.var(dim=0, unbiased=False).clamp(min=min_sigma ** 2).expand(k, 4).clone()
    w = torch.full((k,), 1.0 / k, dtype=x.dtype)
    prev = -math.inf
    for _ in range(iterations):
        z = (x[:, None, :] - mu[None]) ** 2 / var[None]  # (R, K, 4)
        log_comp = -0.5 * z.sum(-1) - 0.5 * torch.log(var).sum(-1)[None] - 2.0 * math.log(2 * math.pi) + torch.log(w)[None]
        ll = torch.logsumexp(log_comp, dim=1)  # (R,)
        resp = torch.exp(log_comp - ll[:, None])  # (R, K)
        nk = resp.sum(0).clamp(min=1e-12)
        w = (nk / n).clamp(min=1e-8)
        w = w / w.sum()
        mu = (resp.T @ x) / nk[:, None]
        var = ((resp.T @ (x * x)) / nk[:, None] - mu * mu).clamp(min=min_sigma ** 2)
        mean_ll = float(ll.mean())
        if mean_ll - prev < 1e-6:
            break
        prev = mean_ll
    return ResidualMixture(mu.float(), var.sqrt().float(), w.float(), num_residuals=n, source=source)
