"""Prediction by gradient ascent on the energy (the paper's Algorithm S1), batched over all inputs.

Starting from an initial estimate y_0 (a detector's box, a tracker's box, a direct regressor's output),
take T steps ``y <- y + lambda * grad_y f(x, y)``. Each element has its own step size: a step that
does not strictly increase f is rejected and that element's step size is multiplied by ``decay``.
Hence the returned f is never below the initial one. (``backtracking=False`` takes every step instead,
as pytracking's box refinement does.)

Every step is one batched forward and backward pass of the energy network for all elements at once;
there is no per-element Python work and no host synchronisation inside the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .boxes import valid_box_mask

__all__ = ["RefinementResult", "gradient_ascent", "BoxRefinementResult", "refine_boxes"]

EnergyFn = Callable[[Tensor], Tensor]
# An energy that also returns its gradient, (N, D) -> ((N,), (N, D)): analytic or fused fast paths.
EnergyAndGradFn = Callable[[Tensor], Tuple[Tensor, Tensor]]


@dataclass
class RefinementResult:
    """Output of :func:`gradient_ascent`; all tensors detached.

    Attributes:
        values: (N, D) refined points.
        scores: (N,) f at ``values`` (non-finite only where the initial f was non-finite).
        initial_scores: (N,) f at the initial points.
        num_accepted: (N,) number of accepted steps.
    """

    values: Tensor
    scores: Tensor
    initial_scores: Tensor
    num_accepted: Tensor


def _value_and_grad(energy_fn: EnergyFn, y: Tensor) -> tuple[Tensor, Tensor]:
    y = y.detach().requires_grad_(True)
    f = energy_fn(y)
    if f.shape != y.shape[:1]:
        raise ValueError(f"energy_fn must return shape ({y.shape[0]},), got {tuple(f.shape)}")
    (g,) = torch.autograd.grad(f.sum(), y, allow_unused=True)
    if g is None:  # f does not depend on y
        g = torch.zeros_like(y)
    return f.detach(), g.detach()


def _given_value_and_grad(energy_fn: EnergyAndGradFn, y: Tensor) -> tuple[Tensor, Tensor]:
    f, g = energy_fn(y)
    if f.shape != y.shape[:1] or g.shape != y.shape:
        raise ValueError(f"energy_fn must return shapes ({y.shape[0]},) and {tuple(y.shape)}, "
                         f"got {tuple(f.shape)} and {tuple(g.shape)}")
    return f.detach(), g.detach()


def _value(energy_fn: Union[EnergyFn, EnergyAndGradFn], value_fn: Optional[EnergyFn], returns_grad: bool,
           y: Tensor) -> Tensor:
    with torch.no_grad():
        if value_fn is not None:
            f = value_fn(y)
        else:
            f = energy_fn(y)[0] if returns_grad else energy_fn(y)
    if f.shape != y.shape[:1]:
        raise ValueError(f"the energy must return shape ({y.shape[0]},), got {tuple(f.shape)}")
    return f.detach()


def gradient_ascent(
    energy_fn: Union[EnergyFn, EnergyAndGradFn],
    init: Tensor,
    *,
    step_size: Union[float, Sequence[float], Tensor],
    num_steps: int = 10,
    decay: float = 0.5,
    active: Optional[Tensor] = None,
    returns_grad: bool = False,
    backtracking: bool = True,
    value_fn: Optional[EnergyFn] = None,
) -> RefinementResult:
    """Maximise ``energy_fn`` from ``init`` by gradient ascent with per-element backtracking.

    Works under ``torch.no_grad()`` (gradients are enabled locally). Elements whose initial f or
    gradient is not finite, or that are excluded by ``active``, are returned unchanged; an element
    whose gradient becomes non-finite after an accepted step stops there.

    Args:
        energy_fn: maps (N, D) points to (N,) scores f; must treat rows independently. With
            ``returns_grad`` it returns ``(f, df/dy)`` itself ((N,), (N, D)) and autograd is not used.
        init: (N, D) initial points.
        step_size: lambda, a scalar, D values (one per coordinate) or an (N, D) tensor.
        num_steps: T, number of proposed steps (T + 1 energy evaluations).
        decay: eta in (0, 1], step-size factor after a rejected step.
        active: optional (N,) bool mask of elements to refine.
        returns_grad: see ``energy_fn``.
        backtracking: True (default): a step that does not strictly increase f is rejected and that
            element's step size multiplied by ``decay``. False: pytracking's refinement, which the
            paper's tracker uses: every step with a finite f is taken and every step size is multiplied
            by ``decay`` after each step (``decay = 1``: constant steps); f may then end below its start.
        value_fn: f alone, (N, D) -> (N,), for the last candidate, whose gradient is never used. By
            default the last candidate is scored by ``energy_fn`` without autograd (or, with
            ``returns_grad``, by ``energy_fn`` and its gradient dropped).
    Returns:
        :class:`RefinementResult`.
    """
    if init.dim() != 2:
        raise ValueError(f"init must be (N, D), got {tuple(init.shape)}")
    n, d = init.shape
    y = init.detach().clone()
    if n == 0:
        empty = init.new_zeros(0)
        return RefinementResult(y, empty, empty, torch.zeros(0, dtype=torch.long, device=init.device))
    lam = torch.as_tensor(step_size, dtype=init.dtype, device=init.device)
    lam = lam.expand(n, d).clone() if lam.dim() < 2 else lam.clone()
    value_and_grad = _given_value_and_grad if returns_grad else _value_and_grad
    with torch.enable_grad() if not returns_grad else torch.no_grad():
        f, g = value_and_grad(energy_fn, y)
        f0 = f.clone()
        ok = torch.isfinite(f) & torch.isfinite(g).all(dim=1)
        if active is not None:
            ok = ok & active.to(device=init.device, dtype=torch.bool)
        # An element that must not move gets a zero gradient: its candidate is its current point, whose
        # f is not strictly greater than itself, so it is never accepted. This keeps the loop free of
        # per-element bookkeeping beyond the acceptance test (refinement cost is the operation count).
        g = torch.where(ok[:, None], g, 0.0)
        accepted = torch.zeros(n, dtype=torch.long, device=init.device)
        for step in range(num_steps):
            candidate = torch.addcmul(y, lam, g)
            if step == num_steps - 1:  # no further step: the gradient is not needed
                f_c, g_c = _value(energy_fn, value_fn, returns_grad, candidate), g
            else:
                f_c, g_c = value_and_grad(energy_fn, candidate)
            accept = ((f_c > f) if backtracking else ok) & torch.isfinite(f_c)
            keep = accept[:, None]
            y = torch.where(keep, candidate, y)
            f = torch.where(accept, f_c, f)
            # A non-finite gradient after an accepted step stops the element there (zero gradient).
            g = torch.where(keep, torch.where(torch.isfinite(g_c).all(dim=1, keepdim=True), g_c, 0.0), g)
            lam = torch.where(keep, lam, lam * decay) if backtracking else lam * decay
            accepted += accept
    return RefinementResult(y, f, f0, accepted)


@dataclass
class BoxRefinementResult:
    """Output of :func:`refine_boxes`; all tensors detached.

    Attributes:
        boxes: (N, 4) refined boxes, xyxy pixels.
        scores: (N,) f at the refined boxes.
        initial_scores: (N,) f at the initial boxes.
        num_accepted: (N,) accepted steps per box.
    """

    boxes: Tensor
    scores: Tensor
    initial_scores: Tensor
    num_accepted: Tensor


def refine_boxes(
    energy_fn: Union[EnergyFn, EnergyAndGradFn],
    boxes: Tensor,
    *,
    num_steps: int = 10,
    step_size_center: float = 4e-4,
    step_size_size: float = 1.6e-3,
    decay: float = 0.5,
    returns_grad: bool = False,
    backtracking: bool = True,
) -> BoxRefinementResult:
    """Refine boxes by gradient ascent in the relative space of each initial box.

    The optimisation variable is u = encode_relative(y, y_init), starting at 0, so a step of
    ``step_size_center`` moves the centre by that fraction of the initial width/height per unit
    gradient, and ``step_size_size`` changes log-width/log-height. Boxes that are not finite or have
    no positive area are returned unchanged with scores -inf; boxes whose energy or gradient is not
    finite are returned unchanged with their (non-finite) energy.

    Args:
        energy_fn: maps (N, 4) xyxy pixel boxes to (N,) scores; rows independent. With
            ``returns_grad`` it returns ``(f, df/dboxes)`` ((N,), (N, 4)), which is chained to the
            relative space here without autograd; if it also has a ``value(boxes)`` method (f alone),
            that scores the last candidate, whose gradient is never used.
        boxes: (N, 4) initial boxes, xyxy pixels.
        num_steps, decay, backtracking: see :func:`gradient_ascent`.
        step_size_center: lambda for the two centre offsets.
        step_size_size: lambda for the two log-sizes.
    Returns:
        :class:`BoxRefinementResult`.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, 4), got {tuple(boxes.shape)}")
    ref = boxes.detach()
    valid = valid_box_mask(ref)
    # Invalid boxes are evaluated on a harmless stand-in so the batch stays finite; they are inactive.
    safe_ref = torch.where(valid[:, None], ref, ref.new_tensor([0.0, 0.0, 1.0, 1.0]))
    step = ref.new_tensor([step_size_center, step_size_center, step_size_size, step_size_size])

    ref_size = safe_ref[:, 2:] - safe_ref[:, :2]
    ref_center = (safe_ref[:, :2] + safe_ref[:, 2:]) * 0.5
    ref_half = ref_size * 0.5

    def decode(u: Tensor) -> Tuple[Tensor, Tensor]:
        # decode_relative(u, safe_ref) with the reference's parts computed once (called every step),
        # plus the half sizes the chain rule needs.
        center = torch.addcmul(ref_center, u[:, :2], ref_size)
        half = ref_half * torch.exp(u[:, 2:])
        return torch.cat([center - half, center + half], dim=1), half

    def energy_in_relative_space(u: Tensor) -> Tensor:
        return energy_fn(decode(u)[0])

    def energy_and_grad_in_relative_space(u: Tensor) -> Tuple[Tensor, Tensor]:
        boxes, half = decode(u)
        f, g = energy_fn(boxes)
        if g.shape != u.shape:
            raise ValueError(f"energy_fn must return shapes ({u.shape[0]},) and {tuple(u.shape)}, "
                             f"got {tuple(f.shape)} and {tuple(g.shape)}")
        # x1 = cx - w / 2, x2 = cx + w / 2 with cx = cx_ref + u0 w_ref and w = w_ref exp(u2) (same for y).
        lo, hi = g[:, :2], g[:, 2:]
        return f, torch.cat([ref_size * (lo + hi), half * (hi - lo)], dim=1)

    value = getattr(energy_fn, "value", None) if returns_grad else None
    res = gradient_ascent(
        energy_and_grad_in_relative_space if returns_grad else energy_in_relative_space,
        torch.zeros_like(ref), step_size=step, num_steps=num_steps, decay=decay, active=valid,
        returns_grad=returns_grad, backtracking=backtracking,
        value_fn=(lambda u: value(decode(u)[0])) if value is not None else None,
    )
    refined = torch.where(valid[:, None], decode(res.values)[0], ref)
    # Scores of the stand-in mean nothing: invalid boxes report -inf (sorts last, never kept by NMS).
    neg_inf = torch.full_like(res.scores, float("-inf"))
    scores = torch.where(valid, res.scores, neg_inf)
    initial = torch.where(valid, res.initial_scores, neg_inf)
    return BoxRefinementResult(refined.detach(), scores, initial, res.num_accepted)
