"""DeepGUM in the box estimator's training: the ``robust`` section of a training config and one EM iteration.

See :mod:`ebm_refine.core.robust` for the model and :func:`~ebm_refine.tracking.train.loss.refinement_residuals`
for the residual of a training pair.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from ...core.robust import DeepGUM, weighted_mean
from ...utils.errors import UserError

__all__ = ["DEFAULT_ROBUST", "RESIDUAL_STARTS", "check_robust_config", "robust_loss", "outlier_summary"]

DEFAULT_ROBUST: Dict[str, Any] = {
    "enabled": False,
    # Iterations between EM fits (the paper refits every epoch; here the pair stream has no epochs).
    "period": 100,
    # Iterations before the first fit (r = 1 until then): an untrained estimator's residuals mean nothing.
    "warmup": 200,
    # Refinement that gives each pair's residual (the tracker's box_refinement defaults).
    "num_steps": 10,
    # Step sizes for the centre and the log-size, in the relative space of the annotated box.
    "step_size_center": 2.0e-4,
    "step_size_size": 1.0e-3,
    "decay": 0.5,
    # Where each pair's residual refinement starts: "annotation" (the annotated test box itself) or
    # "best_sample" (the highest-f box among the loss's proposal samples, the model's own mode within about a
    # box size of the annotation: a prediction that does not start at the annotation).
    "residual_start": "annotation",
}

RESIDUAL_STARTS = ("annotation", "best_sample")


def check_robust_config(rcfg: Dict[str, Any]) -> None:
    """Raise a UserError naming the first ``robust.*`` value out of range."""
    def whole(key: str, low: int) -> None:
        v = rcfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise UserError(f"robust.{key}: {v!r} must be a whole number >= {low}")

    if not isinstance(rcfg["enabled"], bool):
        raise UserError(f"robust.enabled: {rcfg['enabled']!r} must be true or false")
    whole("period", 1)
    whole("warmup", 0)
    whole("num_steps", 1)
    for key in ("step_size_center", "step_size_size"):
        v = rcfg[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise UserError(f"robust.{key}: {v!r} must be a number > 0")
    if rcfg["residual_start"] not in RESIDUAL_STARTS:
        raise UserError(f"robust.residual_start: {rcfg['residual_start']!r} unknown; use one of "
                        f"{', '.join(RESIDUAL_STARTS)}")
    decay = rcfg["decay"]
    if not isinstance(decay, (int, float)) or not 0 < decay <= 1:
        raise UserError(f"robust.decay: {decay!r} must be in (0, 1]")


def robust_loss(out, gum: DeepGUM, robust_window: List[float], outliers: Optional[torch.Tensor] = None,
                flag_window: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None) -> torch.Tensor:
    """One DeepGUM iteration: the r-weighted loss of the batch's pairs; stores the residuals, refits when due.

    Args:
        out: ``BoxEstimationActor(..., residuals=...)``'s (B,) per-pair losses, (B,) base weights, (B, 4) residuals
            (NaN rows for pairs without signal).
        gum: the run's EM state (E-step with its current mixture; ones before the first fit).
        robust_window: receives this batch's mean r (for the log).
        outliers, flag_window: with annotation noise, the (B,) flags of the altered test boxes; ``flag_window``
            receives (r, flag) of the pairs with a residual, for the log's outlier precision / recall.
    Returns:
        scalar ``sum r w l / sum r w`` (the plain batch loss when r = 1).
    """
    per_pair, base, residuals = out
    r = gum.weights(residuals)
    finite = torch.isfinite(residuals).all(dim=1)
    if bool(finite.any()):
        gum.observe(residuals[finite])
        robust_window.append(float(r[finite].mean()))
        if outliers is not None and flag_window is not None:
            flag_window.append((r[finite].detach().cpu(), outliers.to(r.device)[finite].cpu()))
    gum.step()
    return weighted_mean(per_pair, r * base)


def outlier_summary(flag_window: List[Tuple[torch.Tensor, torch.Tensor]]) -> Dict[str, float]:
    """What DeepGUM made of the altered boxes since the last log line: mean r of altered and of correct test
    boxes, and the precision / recall of "r < 0.5" as an outlier detector (None where undefined)."""
    if not flag_window:
        return {}
    r = torch.cat([a for a, _ in flag_window])
    flag = torch.cat([b for _, b in flag_window]).bool()
    called = r < 0.5
    nan = None  # undefined (JSON null in log.jsonl)
    return {"mean_r_outliers": float(r[flag].mean()) if flag.any() else nan,
            "mean_r_clean": float(r[~flag].mean()) if (~flag).any() else nan,
            "outlier_precision": float((called & flag).sum() / called.sum()) if called.any() else nan,
            "outlier_recall": float((called & flag).sum() / flag.sum()) if flag.any() else nan}
