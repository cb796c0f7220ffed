"""RoI Align of many boxes on a feature pyramid, with the box gradient written out (detection refinement).

The same factorisation as :mod:`~ebm_refine.core.separable_pool`: a bin's value is
``sum_{q, p} Ay[i, q] F[c, q, p] Ax[j, p]`` with axis weights that average the s bilinear samples of the
bin. :class:`~ebm_refine.core.separable_pool.SeparableRoIAlign` stores the axis weights densely over the
whole map (cheap for a few boxes on a tracker's window); here they are stored sparsely: along each axis
a bin reads only the two pixels next to each of its s samples, so a box reads a lattice of
(Ph * 2s) x (Pw * 2s) pixels whatever its size. Detection refinement pools ~100 boxes on maps of up to
200 x 267 cells (P2 at 800 px), where the dense form would cost a matrix product over the whole map per
box; the lattice costs one gather of (Ph * Pw * 4s^2) C-vectors per box and two small batched products.

* Every level of every image goes once into one channels-last table ``(sum_l B H_l W_l + 1, C)`` (the
  last row is zero); a box reads its lattice from its own level and image with one ``index_select``
  for all boxes and levels.
* Each box keeps the level it is given (as :meth:`MultiLevelBoxPooler.level_groups` fixes it during
  refinement), so the pooled value is a smooth function of the box while it moves.
* Border rule and sampling pattern are those of :func:`~ebm_refine.core.roi_pool.box_roi_align`:
  positions clamped to the outermost pixel centres, no gradient on or past them (``grid_sample``'s
  backward with border padding); the neighbour past the last pixel reads the zero row. The
  box gradient is the finite difference of the weight gradients at ``floor(position)``, as in
  :class:`SeparableRoIAlign`.

Pooled features come out channels-last, ``(R, Ph * Pw * C)`` in (Ph, Pw, C) order; a linear layer on them
takes its weight reordered once with :meth:`PyramidRoIAlign.linear_weight`.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence, Tuple, Union

import torch
from torch import Tensor

from .roi_pool import sample_positions
from .separable_pool import _axis_constants, _pair, bin_major_weight

__all__ = ["PyramidRoIAlign", "PyramidPoolingState"]


class PyramidPoolingState(NamedTuple):
    """What :meth:`PyramidRoIAlign.box_grad` needs from one :meth:`PyramidRoIAlign.forward` call.

    ``lattice``: (R * Ph * Pw, 4 s^2, C) the pixels each bin reads (a view of the pool's workspace, valid
    until the next ``forward``); ``wx`` (R, Pw, 2s) / ``wy`` (R, Ph, 2s): bilinear weights of the lower and
    upper neighbour of every sample; ``inside_x`` (R, Pw * s) / ``inside_y`` (R, Ph * s): samples that were
    strictly inside the outermost pixel centres (the others get no gradient); ``call``: the forward call it belongs to.
    """

    lattice: Tensor
    wx: Tensor
    wy: Tensor
    inside_x: Tensor
    inside_y: Tensor
    call: int


class PyramidRoIAlign:
    """RoI Align of a fixed set of boxes, each on its own pyramid level and image, prepared for many calls.

    Args:
        features: one (B, C, H_l, W_l) map per level (finest first), the same B and C on every level.
        scales: feature pixels per image pixel of each level (1 / stride).
        image_index: (R,) long, the image of each box.
        levels: (R,) long, the level of each box (index into ``features``).
        output_size: Ph, Pw bins.
        sampling_ratio: s > 0 samples per bin side.

    Then :meth:`forward` pools (R, 4) xyxy image-pixel boxes (row r on level ``levels[r]`` of image
    ``image_index[r]``) and :meth:`box_grad` chains a gradient of the pooled features back to the boxes.
    Equal to :func:`~ebm_refine.core.roi_pool.box_roi_align` on each box's level and autograd through it
    (tested). Building costs one channels-last copy of the maps; each call gathers R * Ph * Pw * 4 s^2
    C-vectors into a workspace that is reused from call to call (a fresh tensor of that size would cost
    more in page faults on a CPU than the gather itself).
    """

    def __init__(self, features: Sequence[Tensor], scales: Sequence[float], image_index: Tensor, levels: Tensor,
                 output_size: Union[int, Sequence[int]], sampling_ratio: int = 2):
        if sampling_ratio <= 0:
            raise ValueError("sampling_ratio must be a positive integer")
        if len(features) != len(scales) or not features:
            raise ValueError(f"expected one scale per feature level, got {len(scales)} scales for "
                             f"{len(features)} levels")
        if image_index.shape != levels.shape or image_index.dim() != 1:
            raise ValueError(f"image_index and levels must both be (R,), got {tuple(image_index.shape)} "
                             f"and {tuple(levels.shape)}")
        self.ph, self.pw = _pair(output_size)
        self.s = int(sampling_ratio)
        b, c = features[0].shape[:2]
        if any(f.dim() != 4 or f.shape[:2] != (b, c) for f in features):
            raise ValueError("features must be (B, C, H_l, W_l) maps with the same B and C on every level")
        self.channels = c
        ref = features[0]
        dt, dev = ref.dtype, ref.device
        # The table: every level's B maps flattened channels-last (one copy each), then one zero row.
        sizes = [f.shape[2] * f.shape[3] for f in features]
        self.table = ref.new_empty(b * sum(sizes) + 1, c)
        row = 0
        for f, size in zip(features, sizes):
            self.table[row:row + b * size].view(b, f.shape[2], f.shape[3], c).copy_(f.permute(0, 2, 3, 1))
            row += b * size
        self.table[row].zero_()
        self.zero_row = row
        starts = torch.tensor([0] + sizes[:-1], device=dev).cumsum(0) * b  # first row of each level
        levels = levels.to(dev).long()
        image_index = image_index.to(dev).long()
        self.num_boxes = levels.shape[0]
        width = torch.tensor([f.shape[3] for f in features], device=dev)[levels]
        height = torch.tensor([f.shape[2] for f in features], device=dev)[levels]
        self.width = width[:, None, None]  # (R, 1, 1) long: row stride of each box's map
        self.base = (starts[levels] + image_index * height * width)[:, None, None]  # first row of its map
        self.box_scale = torch.tensor([float(v) for v in scales], dtype=dt, device=dev)[levels][:, None]  # (R, 1)
        # Outermost pixel centres of each box's map, (R, 1) in feature pixels (float) and as cells (long).
        self.limit_x, self.limit_y = (width - 1).to(dt)[:, None], (height - 1).to(dt)[:, None]
        self.last_x, self.last_y = (width - 1)[:, None, None], (height - 1)[:, None, None]
        # d sample position / d box edges per unit scale, per axis: (4, bins * s).
        self.lerp_x = _axis_constants((0,), self.pw, self.s, 1.0, dt, dev)[0][0]
        self.lerp_y = _axis_constants((1,), self.ph, self.s, 1.0, dt, dev)[0][0]
        self._corner = torch.arange(2, device=dev)  # lower, upper neighbour
        self._workspace = self.table.new_empty(self.num_boxes * self.ph * self.pw * 4 * self.s ** 2, c)
        self._calls = 0

    # ------------------------------------------------------------------------------------------
    def _axis(self, boxes: Tensor, axis: int, limit: Tensor, last: Tensor, bins: int):
        """Bilinear weights (R, bins, 2s), neighbour cells (R, bins, 2s), in-map flags of the cells and
        the mask of samples that get a gradient (R, bins * s) along one axis (0 = x, 1 = y)."""
        r = boxes.shape[0]
        pos = sample_positions(boxes[:, axis], boxes[:, axis + 2], self.box_scale[:, 0], bins * self.s)
        clamped = torch.minimum(pos.clamp(min=0), limit)
        inside = (pos > 0) & (pos < limit)  # grid_sample's rule: no gradient on or past the border
        low = clamped.floor()
        frac = clamped - low
        weights = torch.stack([1 - frac, frac], dim=2).view(r, bins, 2 * self.s)
        cells = (low.long()[:, :, None] + self._corner).view(r, bins, 2 * self.s)
        return weights, cells, cells <= last, inside

    def forward(self, boxes: Tensor) -> Tuple[Tensor, PyramidPoolingState]:
        """Pool (R, 4) xyxy image-pixel boxes -> channels-last (R, Ph * Pw * C) features and the state
        for :meth:`box_grad`. ``pooled.view(R, Ph, Pw, C)[r, i, j, c]`` is RoI Align's ``out[r, c, i, j]``."""
        r = boxes.shape[0]
        if r != self.num_boxes:
            raise ValueError(f"prepared for {self.num_boxes} boxes, got {r}")
        boxes = boxes.to(self.table.dtype)
        wx, cx, okx, inside_x = self._axis(boxes, 0, self.limit_x, self.last_x, self.pw)
        wy, cy, oky, inside_y = self._axis(boxes, 1, self.limit_y, self.last_y, self.ph)
        # Lattice rows: (R, Ph, Pw, 2s, 2s) table indices, the zero row past the map's last pixel.
        index = (self.base + cy * self.width)[:, :, None, :, None] + cx[:, None, :, None, :]
        index = torch.where(oky[:, :, None, :, None] & okx[:, None, :, None, :], index, self.zero_row)
        bins, k = self.ph * self.pw, 4 * self.s ** 2
        lattice = torch.index_select(self.table, 0, index.view(-1), out=self._workspace)
        lattice = lattice.view(r * bins, k, self.channels)
        weights = (wy[:, :, None, :, None] * wx[:, None, :, None, :]).view(r * bins, 1, k) / self.s ** 2
        pooled = torch.bmm(weights, lattice).view(r, bins * self.channels)
        self._calls += 1
        return pooled, PyramidPoolingState(lattice, wx, wy, inside_x, inside_y, self._calls)

    def box_grad(self, state: PyramidPoolingState, grad: Tensor) -> Tensor:
        """(R, Ph * Pw * C) gradient of the pooled features (channels-last) -> (R, 4) gradient of the boxes.

        ``state`` must come from the latest :meth:`forward` (the lattice lives in a reused workspace)."""
        if state.call != self._calls:
            raise RuntimeError("box_grad needs the state of the latest forward call (the workspace was reused)")
        r, s2 = self.num_boxes, self.s ** 2
        # d loss / d (bin weight of each lattice pixel): one (1, C) x (C, 4 s^2) product per bin.
        g = torch.bmm(grad.reshape(r * self.ph * self.pw, 1, self.channels), state.lattice.transpose(1, 2))
        g = g.view(r, self.ph, self.pw, 2 * self.s, 2 * self.s)
        g_wy = torch.einsum("rijab,rjb->ria", g, state.wx) / s2  # (R, Ph, 2s)
        g_wx = torch.einsum("rijab,ria->rjb", g, state.wy) / s2  # (R, Pw, 2s)
        # d weight / d position is -1 for the lower and +1 for the upper neighbour.
        g_x = g_wx.view(r, self.pw * self.s, 2).diff(dim=2)[..., 0] * state.inside_x  # (R, Pw * s)
        g_y = g_wy.view(r, self.ph * self.s, 2).diff(dim=2)[..., 0] * state.inside_y
        # d position / d (low, high edge) = scale * (1 - t, t) at t = (k + 0.5) / (bins * s): scale * lerp^T.
        return (g_x @ self.lerp_x.t() + g_y @ self.lerp_y.t()) * self.box_scale

    def linear_weight(self, weight: Tensor) -> Tensor:
        """A linear layer's (K, C * Ph * Pw) weight for RoI Align's (C, Ph, Pw) flattening, reordered to
        the channels-last output of :meth:`forward`: (K, Ph * Pw * C), contiguous."""
        return bin_major_weight(weight, self.channels, (self.ph, self.pw), layout="hwc")

    @staticmethod
    def multiply_adds_per_box(channels: int, output_size: Union[int, Sequence[int]], sampling_ratio: int,
                              box_grad: bool = True) -> int:
        """Multiply-adds of pooling one box (and, with ``box_grad``, of chaining its gradient back): the
        weighted sum of the 4 s^2 lattice pixels of every bin, and the same contraction backwards."""
        ph, pw = _pair(output_size)
        one_way = ph * pw * 4 * sampling_ratio ** 2 * channels
        return one_way * (2 if box_grad else 1)

