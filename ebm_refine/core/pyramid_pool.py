"""RoI Align of many boxes on a feature pyramid, with the box gradient written out (detection refinement).

The same factorisation as :mod:`~ebm_refine.core.separable_pool`: a bin's value is
``sum_{q, p} Ay[i, q] F[c, q, p] Ax[j, p]`` with axis weights that average the s bilinear samples of the
bin. :class:`~ebm_refine.core.separable_pool.SeparableRoIAlign` stores the axis weights densely over the
whole map (cheap for a few boxes on a tracker's window); here they are stored sparsely: along each axis
a bin reads only the two pixels next to each of its s samples, so a box reads a lattice of
(Ph * 2s) x (Pw * 2s) pixels whatever its size. Detection refinement pools ~100 boxes on maps of up to
200 x 267 cells (P2 at 800 px), where the dense form would cost a matrix product over the whole map per
box; the lattice costs a gather of (Ph * Pw * 4s^2) C-vectors per box.

* Every level of every image goes once into one channels-last table ``(sum_l B H_l W_l + 1, C)`` (the
  last row is zero); a box reads its lattice from its own level and image, all boxes and levels in one
  op: ``embedding_bag`` forward (each bin a bag of its 4 s^2 rows with their bilinear weights, so the
  lattice is never written out), ``index_select`` and one small batched product backward.
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

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .roi_pool import _pair, sample_positions
from .separable_pool import _axis_constants, bin_major_weight

__all__ = ["PyramidRoIAlign", "PyramidPoolingState", "ScratchMemory"]

# The backward gathers the lattice again in chunks of about this size on a CPU, so that the product reads
# it back from a core's L2 cache (one box of the R50-FPN head: 0.8 MB). 100 boxes at 800 px, 1 thread:
# 9 ms, against 15 ms with 4 MB chunks and 50 ms for one 80 MB lattice (page faults included).
_CPU_CHUNK_BYTES = 1 << 20


class ScratchMemory:
    """Large tensors kept from one prepared pooling to the next (the table of the maps).

    On a CPU a fresh tensor of ~100 MB costs more in page faults than filling it (measured here: 40 ms to
    allocate and touch the 73 MB table of an 800 px pyramid, 20 ms to copy the maps into a kept one), and
    refinement prepares a pooling per batch of images. A :class:`PyramidRoIAlign` built with a scratch
    memory is valid until the next one is built with it (checked). The tensors are neither copied with a
    module nor saved.
    """

    def __init__(self):
        self._tensors = {}
        self.generation = 0

    def take(self, name: str, rows: int, like: Tensor) -> Tensor:
        """An uninitialised (rows, C) tensor with ``like``'s columns, dtype and device, reusing memory."""
        numel = rows * like.shape[-1]
        kept = self._tensors.get(name)
        if kept is None or kept.numel() < numel or kept.dtype != like.dtype or kept.device != like.device:
            kept = like.new_empty(numel)
            self._tensors[name] = kept
        return kept[:numel].view(rows, like.shape[-1])

    def __deepcopy__(self, memo):  # a copy of a module gets its own, empty scratch memory
        return type(self)()

    def __reduce__(self):  # and so does a saved one
        return type(self), ()


class PyramidPoolingState(NamedTuple):
    """What :meth:`PyramidRoIAlign.box_grad` needs from one :meth:`PyramidRoIAlign.forward` call.

    ``index``: (R, Ph, Pw, 2s, 2s) table rows of the pixels each bin reads; ``wx`` (R, Pw, 2s) / ``wy``
    (R, Ph, 2s): bilinear weights of the lower and upper neighbour of every sample; ``inside_x``
    (R, Pw * s) / ``inside_y`` (R, Ph * s): samples strictly inside the outermost pixel centres (the
    others get no gradient).
    """

    index: Tensor
    wx: Tensor
    wy: Tensor
    inside_x: Tensor
    inside_y: Tensor


class PyramidRoIAlign:
    """RoI Align of a fixed set of boxes, each on its own pyramid level and image, prepared for many calls.

    Args:
        features: one (B, C, H_l, W_l) map per level (finest first), the same B and C on every level.
        scales: feature pixels per image pixel of each level (1 / stride).
        image_index: (R,) long, the image of each box.
        levels: (R,) long, the level of each box (index into ``features``).
        output_size: Ph, Pw bins.
        sampling_ratio: s > 0 samples per bin side.
        scratch: optional :class:`ScratchMemory` for the table (this pooling is then valid until the
            next one is built with the same scratch memory).

    Then :meth:`forward` pools (R, 4) xyxy image-pixel boxes (row r on level ``levels[r]`` of image
    ``image_index[r]``) and :meth:`box_grad` chains a gradient of the pooled features back to the boxes.
    Equal to :func:`~ebm_refine.core.roi_pool.box_roi_align` on each box's level and autograd through it
    (tested). Building costs one channels-last copy of the maps.
    """

    def __init__(self, features: Sequence[Tensor], scales: Sequence[float], image_index: Tensor, levels: Tensor,
                 output_size: Union[int, Sequence[int]], sampling_ratio: int = 2,
                 scratch: Optional[ScratchMemory] = None):
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
        rows = b * sum(sizes) + 1
        self._scratch = scratch
        if scratch is not None:
            scratch.generation += 1
            self._generation = scratch.generation
        if scratch is not None:
            self.table = scratch.take("table", rows, ref[0, :, 0, 0])
        else:
            self.table = ref.new_empty(rows, c)
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
        self._check_scratch()
        boxes = boxes.to(self.table.dtype)
        wx, cx, okx, inside_x = self._axis(boxes, 0, self.limit_x, self.last_x, self.pw)
        wy, cy, oky, inside_y = self._axis(boxes, 1, self.limit_y, self.last_y, self.ph)
        # Lattice rows: (R, Ph, Pw, 2s, 2s) table indices, the zero row past the map's last pixel.
        index = (self.base + cy * self.width)[:, :, None, :, None] + cx[:, None, :, None, :]
        index = torch.where(oky[:, :, None, :, None] & okx[:, None, :, None, :], index, self.zero_row)
        bins, k = self.ph * self.pw, 4 * self.s ** 2
        weights = (wy[:, :, None, :, None] * wx[:, None, :, None, :]).view(r * bins, k) / self.s ** 2
        # Gather and weighted sum in one op: each bin is a "bag" of its 4 s^2 lattice rows.
        pooled = F.embedding_bag(index.view(r * bins, k), self.table, per_sample_weights=weights, mode="sum")
        return pooled.view(r, bins * self.channels), PyramidPoolingState(index, wx, wy, inside_x, inside_y)

    def box_grad(self, state: PyramidPoolingState, grad: Tensor) -> Tensor:
        """(R, Ph * Pw * C) gradient of the pooled features (channels-last) -> (R, 4) gradient of the boxes."""
        self._check_scratch()
        r, s2, bins, k, c = self.num_boxes, self.s ** 2, self.ph * self.pw, 4 * self.s ** 2, self.channels
        # d loss / d (bin weight of each lattice pixel): one (1, C) x (C, 4 s^2) product per bin, on the
        # lattice gathered again (the forward never wrote it out), in cache-sized chunks on a CPU.
        grad = grad.reshape(r * bins, 1, c)
        g = grad.new_empty(r * bins, 1, k)
        step = r if self.table.device.type != "cpu" else max(1, _CPU_CHUNK_BYTES // (bins * k * c * grad.element_size()))
        for r0 in range(0, r, step):
            a, b = r0 * bins, min(r, r0 + step) * bins
            lattice = torch.index_select(self.table, 0, state.index[r0:r0 + step].reshape(-1)).view(b - a, k, c)
            torch.bmm(grad[a:b], lattice.transpose(1, 2), out=g[a:b])
        g = g.view(r, self.ph, self.pw, 2 * self.s, 2 * self.s)
        g_wy = torch.einsum("rijab,rjb->ria", g, state.wx) / s2  # (R, Ph, 2s)
        g_wx = torch.einsum("rijab,ria->rjb", g, state.wy) / s2  # (R, Pw, 2s)
        # d weight / d position is -1 for the lower and +1 for the upper neighbour.
        g_x = g_wx.view(r, self.pw * self.s, 2).diff(dim=2)[..., 0] * state.inside_x  # (R, Pw * s)
        g_y = g_wy.view(r, self.ph * self.s, 2).diff(dim=2)[..., 0] * state.inside_y
        # d position / d (low, high edge) = scale * (1 - t, t) at t = (k + 0.5) / (bins * s): scale * lerp^T.
        return (g_x @ self.lerp_x.t() + g_y @ self.lerp_y.t()) * self.box_scale

    def _check_scratch(self) -> None:
        if self._scratch is not None and self._scratch.generation != self._generation:
            raise RuntimeError("a later pooling was prepared with the same scratch memory; prepare this one again")

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

