"""RoI Align written as two small matrix products, with analytic gradients for boxes and features.

Bilinear interpolation factorises over the axes: a sample at (x, y) reads
``sum_{q, p} hat(y - q) F[q, p] hat(x - p)`` with ``hat(d) = max(0, 1 - |d|)``. Averaging the s x s
samples of a bin keeps the factorisation, so for one box::

    pooled[c, i, j] = sum_{q, p} Ay[i, q] F[c, q, p] Ax[j, p]         (Ay: (Ph, H), Ax: (Pw, W))

where ``Ay[i, q]`` is the mean of ``hat(y_k - q)`` over the s sampling rows of bin row i (same for x).
The sampling pattern and the border rule (positions clamped to the map's outermost pixel centres) are
those of :func:`~ebm_refine.core.roi_pool.box_roi_align`, so the two agree to float precision,
gradients included (the right derivative at pixel centres and none on the outermost ones or beyond, as
``grid_sample``'s backward with border padding).

Why a second formulation: refinement pools a few boxes 2 x (T + 1) times per frame, and there the
cost is the number of tensor operations, not arithmetic. :class:`SeparableRoIAlign` prepares a map
once (layouts, constants) and then pools boxes, and chains gradients back to them, in about ten
operations each way. Its arithmetic grows with H x W, so it is meant for a few boxes on small maps or
windows of a map (a tracker's search region), not for whole detection feature pyramids.

Two facts keep the operation count low:

* the box gradient only needs d hat / d position, which is -1 / +1 on the two pixels next to a
  sample; contracted with the gradient of the weights this is a finite difference along the axis,
  read with one ``gather`` at ``floor(position)``;
* pooled features come out bin-major, ``(R, Pw, C, Ph)``, the layout the two products produce without
  a copy; a linear layer on them takes its weight reordered once with :func:`bin_major_weight`.

Coordinates: boxes in image pixels; ``spatial_scale`` = 1 / stride. To pool from a window cut out of
a larger map, give the window's origin (image pixels) as ``offset``; positions are then clamped to the
window, so the window must contain every pixel the boxes read (see
:meth:`ebm_refine.tracking.models.EnergyBoxEstimator.test_features`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence, Tuple, Union

import torch
from torch import Tensor

from .roi_pool import _pair

__all__ = ["SeparableRoIAlign", "PoolingState", "bin_major_weight",
           "separable_box_roi_align"]


@functools.lru_cache(maxsize=256)
def _axis_constants(axes: Tuple[int, ...], bins: int, s: int, scale: float, dtype: torch.dtype,
                    device: torch.device) -> Tuple[Tensor, Tensor]:
    """Constants of a group of axes pooled together (0 = x, 1 = y), cached per shape (never modified).

    Returns ``lerp`` (A, 4, bins * s), which maps xyxy box edges (image pixels) to the sample positions
    of each axis (feature pixels, before the shift), and ``edge`` (bins * s, 2): d position / d (low,
    high edge) in feature pixels per image pixel, over s (each bin averages s samples).
    """
    t = (torch.arange(bins * s, dtype=dtype, device=device) + 0.5) / (bins * s)
    lerp = torch.zeros(len(axes), 4, bins * s, dtype=dtype, device=device)
    for k, axis in enumerate(axes):
        lerp[k, axis] = (1 - t) * scale
        lerp[k, axis + 2] = t * scale
    return lerp, torch.stack([1 - t, t], dim=1) * (scale / s)


@functools.lru_cache(maxsize=64)
def _pixel_centres(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.arange(length, dtype=dtype, device=device)


class PoolingState(NamedTuple):
    """What :meth:`SeparableRoIAlign.box_grad` needs from the forward pass of one call.

    ``ax`` (R, Pw, L) and ``ay`` (R, Ph, L) are the axis weights, ``fx`` (R, Pw * C, L) the map
    contracted with ``ax``. Per group of axes pooled together (both axes when the output is square,
    else x and y apart): ``inside`` (A, R, bins * s) marks samples strictly inside the outermost pixel
    centres (the others get no gradient), ``cell``
    (A, R, bins, s) is the long index of the pixel at or left of each sample.
    """

    ax: Tensor
    ay: Tensor
    fx: Tensor
    inside: Tuple[Tensor, ...]
    cell: Tuple[Tensor, ...]


class SeparableRoIAlign:
    """RoI Align of one (C, H, W) map, prepared for pooling a few boxes many times.

    Args:
        feature: (C, H, W) or (1, C, H, W) map (a window of a larger map is fine, see ``offset``).
        output_size: Ph, Pw bins.
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: s > 0 samples per bin side.
        offset: (x, y) image pixels of the map's top-left cell corner (the window's origin).

    The map is zero-padded to a square of side ``L = max(H, W) + 1``: sample positions are clamped to
    the real map, so padded cells always get weight 0, and one padded cell past the last pixel lets
    the finite difference of the box gradient read ``floor(position) + 1`` without a bounds check.
    """

    def __init__(self, feature: Tensor, output_size: Union[int, Sequence[int]], spatial_scale: float,
                 sampling_ratio: int = 2, offset: Tuple[float, float] = (0.0, 0.0)):
        if sampling_ratio <= 0:
            raise ValueError("sampling_ratio must be a positive integer")
        if feature.dim() == 4:
            if feature.shape[0] != 1:
                raise ValueError(f"one image at a time, got a batch of {feature.shape[0]}")
            feature = feature[0]
        if feature.dim() != 3:
            raise ValueError(f"feature must be (C, H, W), got {tuple(feature.shape)}")
        self.ph, self.pw = _pair(output_size)
        self.s = int(sampling_ratio)
        self.scale = float(spatial_scale)
        c, h, w = feature.shape
        self.channels, self.height, self.width = c, h, w
        length = max(h, w) + 1
        self.length = length
        padded = feature.new_zeros(c, length, length)
        padded[:, :h, :w] = feature
        self.feature = padded  # (C, L, L), rows q, columns p
        self.feature_t = padded.permute(2, 0, 1).reshape(length, c * length)  # (L, C * L): [p, (c, q)]
        dt, dev = feature.dtype, feature.device
        self.pixels = _pixel_centres(length, dt, dev)
        # Per group of axes: positions = boxes @ lerp + shift (box edges -> sample positions in feature
        # pixels, with the window origin and the half-pixel shift folded into the shift), clamped to
        # [0, limit] (the real map's outermost pixel centres).
        ox, oy = float(offset[0]), float(offset[1])
        self.groups = [(0, 1)] if self.ph == self.pw else [(0,), (1,)]
        shift = {0: -ox * self.scale - 0.5, 1: -oy * self.scale - 0.5}
        limit = {0: w - 1.0, 1: h - 1.0}
        self._lerp, self._edge, self._shift, self._limit = [], [], [], []
        for axes in self.groups:
            lerp, edge = _axis_constants(axes, self.pw if axes[0] == 0 else self.ph, self.s, self.scale, dt, dev)
            self._lerp.append(lerp)
            self._edge.append(edge)
            both = torch.tensor([[shift[a], limit[a]] for a in axes], dtype=dt, device=dev)
            self._shift.append(both[:, 0, None, None])
            self._limit.append(both[:, 1, None, None])
        self._zero = _pixel_centres(1, dt, dev)[0]

    # ------------------------------------------------------------------------------------------
    def _weights(self, boxes: Tensor, g: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Axis weights (A, R, bins, L), inside mask (A, R, bins*s), cells (A, R, bins, s) of group g."""
        lerp = self._lerp[g]
        a, bins = lerp.shape[0], lerp.shape[2] // self.s
        r = boxes.shape[0]
        pos = torch.baddbmm(self._shift[g], boxes.expand(a, r, 4), lerp)  # (A, R, bins*s)
        clamped = torch.clamp(pos, self._zero, self._limit[g])
        inside = (pos > self._zero) & (pos < self._limit[g])  # grid_sample's rule: none on or past the border
        hat = (1 - (clamped[..., None] - self.pixels).abs()).clamp_(min=0)
        weights = hat.view(a, r, bins, self.s, self.length).mean(3)
        return weights, inside, clamped.long().view(a, r, bins, self.s)

    def forward(self, boxes: Tensor) -> Tuple[Tensor, PoolingState]:
        """Pool (R, 4) xyxy image-pixel boxes -> bin-major (R, Pw, C, Ph) features and the state for
        :meth:`box_grad`. ``pooled[r, j, c, i]`` is RoI Align's ``out[r, c, i, j]``."""
        r = boxes.shape[0]
        boxes = boxes.to(self.feature.dtype)
        parts = [self._weights(boxes, g) for g in range(len(self.groups))]
        ax, ay = parts[0][0][0], parts[-1][0][-1]  # x is the first axis of the first group, y the last
        c, n = self.channels, self.length
        fx = (ax.reshape(r * self.pw, n) @ self.feature_t).view(r, self.pw * c, n)  # [r, (j, c), q]
        pooled = torch.bmm(fx, ay.transpose(1, 2)).view(r, self.pw, c, self.ph)
        return pooled, PoolingState(ax, ay, fx, tuple(p[1] for p in parts), tuple(p[2] for p in parts))

    def backward(self, state: PoolingState, grad: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(R, Pw, C, Ph) gradient of the pooled features -> gradients of the weights Ax (R, Pw, L),
        Ay (R, Ph, L) and ``t[r, (j, c), q] = sum_i grad[r, j, c, i] Ay[r, i, q]`` (for the map's)."""
        r, c, n = grad.shape[0], self.channels, self.length
        g = grad.reshape(r, self.pw * c, self.ph)
        grad_ay = torch.bmm(g.transpose(1, 2), state.fx)  # (R, Ph, L)
        t = torch.bmm(g, state.ay)  # (R, Pw * C, L)
        grad_ax = (t.view(r * self.pw, c * n) @ self.feature.view(c * n, n)).view(r, self.pw, n)
        return grad_ax, grad_ay, t

    def box_grad(self, state: PoolingState, grad: Tensor) -> Tensor:
        """(R, Pw, C, Ph) gradient of the pooled features -> (R, 4) gradient of the xyxy boxes."""
        return self._edges_to_boxes(state, *self.backward(state, grad)[:2])

    def _edges_to_boxes(self, state: PoolingState, grad_ax: Tensor, grad_ay: Tensor) -> Tensor:
        r = grad_ax.shape[0]
        if len(self.groups) == 1:
            per_group = [torch.stack([grad_ax, grad_ay])]
        else:
            per_group = [grad_ax[None], grad_ay[None]]
        edges = []
        for g, gw in enumerate(per_group):
            # sum_p gw[p] * d hat(pos - p) / d pos = gw[floor(pos) + 1] - gw[floor(pos)]
            diff = gw[..., 1:] - gw[..., :-1]  # (A, R, bins, L - 1)
            g_pos = diff.gather(3, state.cell[g]).view(diff.shape[0], r, -1) * state.inside[g]
            edges.append(g_pos @ self._edge[g])  # (A, R, 2): (low, high) edge of each axis
        e = edges[0] if len(edges) == 1 else torch.cat(edges)
        # (axis, box, edge) -> (x1, y1, x2, y2)
        return e.permute(1, 2, 0).reshape(r, 4)

    def feature_grad(self, state: PoolingState, t: Tensor) -> Tensor:
        """(C, H, W) gradient of the (unpadded) map from ``t`` of :meth:`backward`."""
        r, c, n = state.ax.shape[0], self.channels, self.length
        # dF[c, q, p] = sum_{r, j} t[r, (j, c), q] Ax[r, j, p]
        full = t.view(r * self.pw, c * n).t() @ state.ax.reshape(r * self.pw, n)  # (C * L, L)
        return full.view(c, n, n)[:, :self.height, :self.width]


def bin_major_weight(weight: Tensor, channels: int, output_size: Union[int, Sequence[int]],
                     layout: str = "wch") -> Tensor:
    """Reorder a linear layer's (K, C * Ph * Pw) weight, written for RoI Align's (C, Ph, Pw) flattening,
    to a bin-major flattening: ``layout="wch"`` (Pw, C, Ph), the output of :meth:`SeparableRoIAlign.forward`,
    or ``"hwc"`` (Ph, Pw, C), channels-last, the output of
    :meth:`~ebm_refine.core.pyramid_pool.PyramidRoIAlign.forward`. Returns (K, C * Ph * Pw), contiguous."""
    ph, pw = _pair(output_size)
    order = {"wch": (0, 3, 1, 2), "hwc": (0, 2, 3, 1)}
    if layout not in order:
        raise ValueError(f"layout must be one of {sorted(order)}, got {layout!r}")
    k = weight.shape[0]
    return weight.reshape(k, channels, ph, pw).permute(*order[layout]).reshape(k, -1).contiguous()


class _SeparableRoIAlignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feature: Tensor, boxes: Tensor, output_size: Tuple[int, int], spatial_scale: float,
                sampling_ratio: int) -> Tensor:
        pool = SeparableRoIAlign(feature, output_size, spatial_scale, sampling_ratio)
        pooled, state = pool.forward(boxes)
        ctx.pool, ctx.state, ctx.feature_shape = pool, state, feature.shape
        return pooled.permute(0, 2, 3, 1)  # (R, C, Ph, Pw)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pool, state = ctx.pool, ctx.state
        grad_ax, grad_ay, t = pool.backward(state, grad.permute(0, 3, 1, 2))
        grad_feature = None
        if ctx.needs_input_grad[0]:
            grad_feature = pool.feature_grad(state, t).reshape(ctx.feature_shape)
        grad_boxes = pool._edges_to_boxes(state, grad_ax, grad_ay) if ctx.needs_input_grad[1] else None
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
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (R, 4), got {tuple(boxes.shape)}")
    ph, pw = _pair(output_size)
    if boxes.shape[0] == 0:
        c = feature.shape[-3]
        return feature.new_zeros(0, c, ph, pw)
    return _SeparableRoIAlignFn.apply(feature, boxes.to(feature.dtype), (ph, pw), float(spatial_scale),
                                      int(sampling_ratio))
