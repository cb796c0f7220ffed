"""RoI Align written as two small matrix products, with analytic gradients for boxes and features.

Bilinear interpolation factorises over the axes: a sample at (x, y) reads
``sum_{q, p} hat(y - q) F[q, p] hat(x - p)`` with ``hat(d) = max(0, 1 - |d|)``. Averaging the s x s
samples of a bin keeps the factorisation, so for one box::

    pooled[c, i, j] = sum_{q, p} Ay[i, q] F[c, q, p] Ax[j, p]         (Ay: (Ph, H), Ax: (Pw, W))

where ``Ay[i, q]`` is the mean of ``hat(y_k - q)`` over the s sampling rows of bin row i (same for x).
The sampling pattern and the border rule (positions clamped to the map's outermost pixel centres) are
those of :func:`~ebm_refine.core.roi_pool.box_roi_align`, so the two agree to float precision.

Why a second formulation: refinement pools a few boxes 2 x (T + 1) times per frame, and there the
cost is the number of tensor operations, not arithmetic. This one is a dozen operations and one
autograd node (its backward is written out) instead of the ~30 operations of the sampling-grid
version. Its arithmetic grows with H x W, so it is meant for a few boxes on small maps or windows of a
map (a tracker's search region), not for whole detection feature pyramids.

Coordinates: boxes in image pixels; ``spatial_scale`` = 1 / stride. To pool from a window cut out of
a larger map, shift the boxes by the window's origin (in image pixels); positions are then clamped to
the window, so the window must contain every pixel the boxes read (see
:meth:`ebm_refine.tracking.models.EnergyBoxEstimator.test_features`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["roi_align_axis_weights", "separable_box_roi_align", "separable_roi_align_forward",
           "separable_roi_align_box_grad", "PoolingState"]


@functools.lru_cache(maxsize=256)
def _constants(bins: int, s: int, length: int, dtype: torch.dtype, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """Sample fractions t (bins*s,), their edge weights [(1 - t), t] / s (bins*s, 2), pixel indices (length,).

    Cached: refinement asks for the same few shapes every step, and creating them costs more than the
    arithmetic that uses them. Never modified in place.
    """
    t = (torch.arange(bins * s, dtype=dtype, device=device) + 0.5) / (bins * s)
    return t, torch.stack([1 - t, t], dim=1) / s, torch.arange(length, dtype=dtype, device=device)


def _axis_samples(lo: Tensor, hi: Tensor, bins: int, s: int, limit: Tensor, length: int
                  ) -> Tuple[Tensor, Tensor, Tensor]:
    """Sample positions and their hat weights along one or more axes at once.

    ``lo``, ``hi``: (N, A) edges in pixel-centre coordinates for A axes; ``limit``: (A, 1) last pixel
    centre of each axis; ``length`` >= limit + 1. Returns the weights (N, A, bins, length), the
    offsets d = clamp(pos) - p (N, A, bins*s, length) and the "inside" mask (N, A, bins*s).
    """
    t, _, pixels = _constants(bins, s, length, lo.dtype, lo.device)
    pos = torch.lerp(lo[..., None], hi[..., None], t)  # (N, A, bins*s)
    # Clamping to the outermost pixel centres is roi_align's border rule; no gradient outside.
    inside = (pos > 0) & (pos < limit)
    d = torch.minimum(pos.clamp(min=0), limit)[..., None] - pixels
    w = (1 - d.abs()).clamp(min=0)
    n, a = lo.shape
    return w.view(n, a, bins, s, length).mean(3), d, inside


def _axis_edge_grads(grad_w: Tensor, d: Tensor, inside: Tensor, bins: int, s: int) -> Tensor:
    """Chain (N, A, bins, L) gradients of the weights to the box edges: (N, A, 2) as (low, high)."""
    n, a, _, length = grad_w.shape
    # d hat / d pos is -1 on [0, 1) and +1 on [-1, 0): the right derivative, as grid_sample's backward.
    band = ((d >= -1) & (d < 1)).to(d.dtype)
    slope = torch.where(d >= 0, -band, band)
    g_pos = (grad_w[:, :, :, None, :] * slope.view(n, a, bins, s, length)).sum(-1).view(n, a, bins * s)
    return (g_pos * inside) @ _constants(bins, s, length, d.dtype, d.device)[1]


def roi_align_axis_weights(lo: Tensor, hi: Tensor, bins: int, sampling_ratio: int, length: int) -> Tensor:
    """Interpolation weights of RoI Align along one axis.

    Args:
        lo, hi: (N,) box edges in feature-pixel coordinates where pixel centres are integers
            (image pixels x spatial_scale - 0.5).
        bins: number of output bins along the axis.
        sampling_ratio: samples per bin.
        length: map size along the axis (H or W).
    Returns:
        (N, bins, length) weights; each row sums to 1.
    """
    limit = lo.new_tensor([[length - 1.0]])
    return _axis_samples(lo[:, None], hi[:, None], bins, sampling_ratio, limit, length)[0][:, 0]


class PoolingState(NamedTuple):
    """What :func:`separable_roi_align_box_grad` needs from the forward pass (tensors of one call)."""

    feature: Tensor  # (C, H, W)
    ax: Tensor  # (R, Pw, W) column weights
    ay: Tensor  # (R, Ph, H) row weights
    fx: Tensor  # (R, Pw * C, H) feature contracted with ax
    axis: tuple  # offsets and inside masks of the sample positions (see _axis_samples)
    spatial_scale: float
    sampling_ratio: int


def separable_roi_align_forward(feature: Tensor, boxes: Tensor, output_size: Tuple[int, int],
                                spatial_scale: float, sampling_ratio: int = 2) -> Tuple[Tensor, PoolingState]:
    """Forward pass without autograd: (C, H, W) map, (R, 4) image-pixel boxes -> (R, C, Ph, Pw), state.

    For callers that chain gradients by hand (a fused energy-and-gradient function); everyone else uses
    :func:`separable_box_roi_align`.
    """
    c, h, w = feature.shape
    r = boxes.shape[0]
    ph, pw = output_size
    s = sampling_ratio
    edges = boxes * spatial_scale - 0.5
    if ph == pw:  # both axes in one pass (the usual square output)
        limit = edges.new_tensor([[w - 1.0], [h - 1.0]])
        wts, d, inside = _axis_samples(edges[:, :2], edges[:, 2:], pw, s, limit, max(h, w))
        ax, ay = wts[:, 0, :, :w].contiguous(), wts[:, 1, :, :h].contiguous()
        axis = (d, inside)
    else:
        ax, dx, ix = _axis_samples(edges[:, 0:1], edges[:, 2:3], pw, s, edges.new_tensor([[w - 1.0]]), w)
        ay, dy, iy = _axis_samples(edges[:, 1:2], edges[:, 3:4], ph, s, edges.new_tensor([[h - 1.0]]), h)
        ax, ay = ax[:, 0].contiguous(), ay[:, 0].contiguous()
        axis = (dx, ix, dy, iy)
    # fx[r, (j, c), q] = sum_p Ax[r, j, p] F[c, q, p]; pooled[r, (j, c), i] = fx[r] @ Ay[r]^T.
    fx = (ax.view(r * pw, w) @ feature.permute(2, 0, 1).reshape(w, c * h)).view(r, pw * c, h)
    out = torch.bmm(fx, ay.transpose(1, 2)).view(r, pw, c, ph).permute(0, 2, 3, 1)
    return out, PoolingState(feature, ax, ay, fx, axis, spatial_scale, s)


def separable_roi_align_box_grad(state: PoolingState, grad: Tensor) -> Tensor:
    """(R, C, Ph, Pw) gradient of the pooled features -> (R, 4) gradient of the xyxy boxes."""
    feature, ax, ay, fx, axis, spatial_scale, s = state
    c, h, w = feature.shape
    r, pw, ph = ax.shape[0], ax.shape[1], ay.shape[1]
    grad_ay = torch.bmm(grad.permute(0, 2, 3, 1).reshape(r, ph, pw * c), fx)  # (R, Ph, H)
    fy = (ay.view(r * ph, h) @ feature.transpose(0, 1).reshape(h, c * w)).view(r, ph * c, w)
    grad_ax = torch.bmm(grad.permute(0, 3, 2, 1).reshape(r, pw, ph * c), fy)  # (R, Pw, W)
    if len(axis) == 2:
        d, inside = axis
        g = grad_ax.new_zeros(r, 2, pw, d.shape[-1])
        g[:, 0, :, :w] = grad_ax
        g[:, 1, :, :h] = grad_ay
        g = _axis_edge_grads(g, d, inside, pw, s)  # (R, 2 axes, 2 edges)
    else:
        dx, ix, dy, iy = axis
        g = torch.cat([_axis_edge_grads(grad_ax[:, None], dx, ix, pw, s),
                       _axis_edge_grads(grad_ay[:, None], dy, iy, ph, s)], dim=1)
    # (axis, edge) -> (x1, y1, x2, y2)
    return g.transpose(1, 2).reshape(r, 4) * spatial_scale


class _SeparableRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feature: Tensor, boxes: Tensor, bins: Tuple[int, int], spatial_scale: float,
                sampling_ratio: int) -> Tensor:
        out, state = separable_roi_align_forward(feature, boxes, bins, spatial_scale, sampling_ratio)
        ctx.save_for_backward(state.feature, state.ax, state.ay, state.fx, *state.axis)
        ctx.config = (spatial_scale, sampling_ratio)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        feature, ax, ay, fx, *axis = ctx.saved_tensors
        spatial_scale, s = ctx.config
        c, h, w = feature.shape
        r, pw, ph = ax.shape[0], ax.shape[1], ay.shape[1]
        grad_feature = grad_boxes = None
        if ctx.needs_input_grad[1]:
            state = PoolingState(feature, ax, ay, fx, tuple(axis), spatial_scale, s)
            grad_boxes = separable_roi_align_box_grad(state, grad)
        if ctx.needs_input_grad[0]:
            # dF[c, q, p] = sum_{r, i, j} Ay[r, i, q] grad[r, c, i, j] Ax[r, j, p]
            gx = torch.bmm(grad.reshape(r, c * ph, pw), ax).view(r, c, ph, w)
            gx = gx.permute(0, 2, 1, 3).reshape(r * ph, c * w)
            grad_feature = (ay.reshape(r * ph, h).t() @ gx).view(h, c, w).transpose(0, 1).contiguous()
        return grad_feature, grad_boxes, None, None, None


def separable_box_roi_align(
    feature: Tensor,
    boxes: Tensor,
    output_size: Union[int, Sequence[int]],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """RoI Align (aligned=True) of one image's boxes, differentiable w.r.t. the boxes and the map.

    Args:
        feature: (C, H, W) or (1, C, H, W) map.
        boxes: (R, 4) xyxy boxes in image pixels.
        output_size: Ph, Pw bins.
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: s > 0 samples per bin side.
    Returns:
        (R, C, Ph, Pw), equal to ``box_roi_align(feature[None], [boxes], ...)``.
    """
    if sampling_ratio <= 0:
        raise ValueError("sampling_ratio must be a positive integer")
    if feature.dim() == 4:
        if feature.shape[0] != 1:
            raise ValueError(f"one image at a time, got a batch of {feature.shape[0]}")
        feature = feature[0]
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (R, 4), got {tuple(boxes.shape)}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else (int(output_size[0]), int(output_size[1]))
    if boxes.shape[0] == 0:
        return feature.new_zeros(0, feature.shape[0], ph, pw)
    return _SeparableRoIAlign.apply(feature, boxes.to(feature.dtype), (ph, pw), float(spatial_scale),
                                    int(sampling_ratio))
