"""The tracker's box estimation: candidates around the classifier's box, refined on the estimator's output.

ATOM's procedure with the EBM as the objective: the classifier's box (new centre, previous size) and
``num_init_boxes - 1`` random perturbations of it are refined by gradient ascent
(:func:`ebm_refine.core.refine.refine_boxes`) on f(x, y); boxes with an extreme aspect ratio are dropped
and the ``top_k`` by f are averaged (centres linearly, sizes in log-space). With
``scale_prior_sigma`` the ranking adds a Gaussian log-prior on the size change from the previous frame
(:func:`scale_log_prior`): the top-k by the log-posterior, not by f alone. Everything stays on the
estimator's device; the caller reads back the 4 numbers of the result.

All boxes here are in pixels of the search crop the features were computed on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor

from ebm_refine.core.boxes import cxcywh_to_xyxy, decode_relative, xyxy_to_cxcywh
from ebm_refine.core.refine import refine_boxes

from ..models.box_estimator import EnergyBoxEstimator, Modulation

__all__ = ["BoxEstimate", "initial_boxes", "estimate_box", "scale_log_prior"]


@dataclass
class BoxEstimate:
    """Result of :func:`estimate_box`; tensors on the estimator's device.

    Attributes:
        box: (4,) cx, cy, w, h in crop pixels.
        energy: () mean f of the averaged top-k refined boxes.
        initial_energy: () f at the classifier's box (the first candidate, before refinement).
        boxes: (N, 4) every refined candidate, cx, cy, w, h crop pixels.
        scores: (N,) their f.
    """

    box: Tensor
    energy: Tensor
    initial_energy: Tensor
    boxes: Tensor
    scores: Tensor


def initial_boxes(center: Tensor, size: Tensor, num: int, jitter_pos: float, jitter_size: float,
                  generator: Optional[torch.Generator] = None) -> Tensor:
    """The classifier's box and ``num - 1`` perturbations, (num, 4) xyxy crop pixels.

    Perturbations are uniform in the relative box space of the classifier's box: centre offsets in
    +-jitter_pos / 2 of its width / height, log-sizes in +-jitter_size / 2 (ATOM's jitter ranges).

    Args:
        center: (2,) cx, cy; size: (2,) w, h (crop pixels, same device).
        generator: RNG on that device (the tracker's candidate-box seed).
    """
    init = cxcywh_to_xyxy(torch.cat([center, size])[None])
    ranges = torch.tensor([jitter_pos, jitter_pos, jitter_size, jitter_size], dtype=init.dtype, device=init.device)
    rel = (torch.rand(num - 1, 4, generator=generator, dtype=init.dtype, device=init.device) - 0.5) * ranges
    return torch.cat([init, decode_relative(rel, init)], dim=0)


def scale_log_prior(sizes: Tensor, previous: Tensor, sigma: Optional[float]) -> Tensor:
    """Log of a Gaussian prior on the frame-to-frame size change, up to a constant: (N,).

    ``-(log(w / w_prev)^2 + log(h / h_prev)^2) / (2 sigma^2)`` -- the same log-size space as the refiner
    and the proposal, so added to f (a log-density over that space up to a constant) it gives the
    log-posterior of a box given the frame and the previous size. Trackers damp scale for the same reason
    (SiamRPN's scale-change penalty, DSST's scale learning rate). ``sigma`` None: no prior (zeros).

    Args:
        sizes: (N, 2) w, h; previous: (2,) w, h of the previous box (same units, e.g. crop pixels).
        sigma: std of the per-frame log-size change.
    """
    if sigma is None:
        return sizes.new_zeros(sizes.shape[0])
    return -(sizes / previous).log().pow(2).sum(1) / (2.0 * float(sigma) ** 2)


def estimate_box(estimator: EnergyBoxEstimator, feats: Dict[str, Tensor], modulation: Modulation, center: Tensor,
                 size: Tensor, cfg: Dict[str, Any], generator: Optional[torch.Generator] = None,
                 boxes: Optional[Tensor] = None) -> Optional[BoxEstimate]:
    """Refine candidates around (``center``, ``size``) and average the best; None if none is usable.

    Args:
        estimator: the box estimator.
        feats: backbone maps of one search crop (``layer2``, ``layer3``; batch 1).
        modulation: the reference branch's vectors from the first frame.
        center, size: (2,) the classifier's box, crop pixels.
        cfg: the tracker's ``box_refinement`` parameters (see ``DEFAULT_TRACKER_PARAMS``).
        generator: RNG for the perturbations.
        boxes: optional (N, 4) xyxy candidates to refine instead of the random ones.
    """
    if boxes is None:
        boxes = initial_boxes(center, size, int(cfg["num_init_boxes"]), float(cfg["box_jitter_pos"]),
                              float(cfg["box_jitter_size"]), generator)
    region: Optional[Sequence[float]] = None
    if cfg["feature_window"] is not None:
        # Refinement moves boxes by a fraction of their size; the test maps are computed only around
        # the initial boxes (their hull grown by feature_window x the largest box size).
        grow = float(cfg["feature_window"]) * (boxes[:, 2:] - boxes[:, :2]).max(0).values
        region = torch.cat([boxes[:, :2].min(0).values - grow, boxes[:, 2:].max(0).values + grow]).tolist()
    with torch.no_grad():
        test_feats = estimator.test_features(feats, modulation, region)
    res = refine_boxes(estimator.box_energy(test_feats), boxes, num_steps=int(cfg["num_steps"]),
                       step_size_center=float(cfg["step_size_center"]), step_size_size=float(cfg["step_size_size"]),
                       decay=float(cfg["decay"]),
                       returns_grad=True, backtracking=bool(cfg["backtracking"]))
    out = xyxy_to_cxcywh(res.boxes)
    scores = res.scores
    aspect = out[:, 2] / out[:, 3].clamp(min=1e-6)
    amax = float(cfg["max_aspect_ratio"])
    keep = torch.isfinite(scores) & torch.isfinite(out).all(1) & (out[:, 2:] > 0).all(1) \
        & (aspect < amax) & (aspect > 1.0 / amax)
    num_kept = int(keep.sum())
    if num_kept == 0:
        return None
    sigma = cfg["scale_prior_sigma"]
    ranked = scores if sigma is None else scores + scale_log_prior(out[:, 2:], size, sigma)
    ranked = ranked.masked_fill(~keep, float("-inf"))
    top = torch.topk(ranked, min(int(cfg["top_k"]), num_kept)).indices
    sel = out[top]
    # Centres averaged linearly, sizes in log-space (the space the refiner works in).
    mean = torch.cat([sel[:, :2].mean(0), sel[:, 2:].log().mean(0).exp()])
    return BoxEstimate(mean, scores[top].mean(), res.initial_scores[0], out, scores)
