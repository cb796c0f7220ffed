"""Bilinear RoI pooling that is differentiable w.r.t. the box coordinates.

``torchvision.ops.roi_align`` returns no gradient for the boxes, but refinement by gradient ascent
needs d f / d box. Here every sampling point is an explicit, differentiable function of the box and
the features are read with ``F.grid_sample``, whose backward gives gradients w.r.t. both the features
and the sampling positions.

Sampling pattern (identical to ``roi_align(aligned=True, sampling_ratio=s)``): the box, scaled to the
feature map and shifted by -0.5 px so that pixel centres sit on integers, is split into Ph x Pw bins,
each bin is sampled on an s x s regular grid, and the s*s bilinear samples are averaged.

Border behaviour: positions are clamped to [0, W-1] x [0, H-1] (feature pixel centres) before
bilinear interpolation. For positions in [-1, W] this is exactly what ``roi_align`` does, so boxes
inside the feature map (including those touching its border) match it to float precision. Further
out, ``roi_align`` returns zeros while we replicate the border feature; the gradient w.r.t. such a
position is then zero in the clamped direction instead of jumping. Boxes far outside the image should
be clipped or masked by the caller.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["box_roi_align", "assign_boxes_to_levels", "MultiLevelBoxPooler", "boxes_to_rois", "sample_positions"]


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, int):
        return v, v
    h, w = v
    return int(h), int(w)


def boxes_to_rois(boxes: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    """Per-image box lists -> (R, 5) rois (batch_index, x1, y1, x2, y2); (R, 5) passes through."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"rois must be (R, 5), got {tuple(boxes.shape)}")
        return boxes
    parts = [
        torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)
    ]
    return torch.cat(parts, dim=0)


def sample_positions(lo: Tensor, hi: Tensor, spatial_scale: Union[float, Tensor], count: int) -> Tensor:
    """RoI Align's sample positions along one axis: (R,) box edges (image pixels) -> (R, count) positions
    in feature pixels where pixel centres are integers (``count`` = bins x samples per bin).

    ``spatial_scale`` is a float or an (R,) tensor (each box on its own level). The one formula of the
    sampling pattern: the prepared pooling computes its positions with it too, so both read the same
    pixels with the same weights (a sample on a pixel centre gets the same side of the bilinear kink).
    """
    start = lo * spatial_scale - 0.5
    step = (hi - lo) * spatial_scale / count
    k = torch.arange(count, device=lo.device, dtype=lo.dtype) + 0.5
    return start[:, None] + step[:, None] * k[None, :]


def _sampling_grid(rois_xyxy: Tensor, height: int, width: int, output_size: Tuple[int, int],
                   spatial_scale: float, sampling_ratio: int) -> Tensor:
    """(R, 4) image-pixel boxes -> (R, Ph*s, Pw*s, 2) grid in grid_sample's normalised coordinates."""
    ph, pw = output_size
    s = sampling_ratio
    xs = sample_positions(rois_xyxy[:, 0], rois_xyxy[:, 2], spatial_scale, pw * s)  # (R, Pw*s)
    ys = sample_positions(rois_xyxy[:, 1], rois_xyxy[:, 3], spatial_scale, ph * s)
    # Clamp to pixel centres (roi_align's rule for [-1, W]); then map to align_corners=False coords.
    xs = xs.clamp(0, width - 1)
    ys = ys.clamp(0, height - 1)
    gx = (2.0 * xs + 1.0) / width - 1.0
    gy = (2.0 * ys + 1.0) / height - 1.0
    r = rois_xyxy.shape[0]
    return torch.stack(
        [gx[:, None, :].expand(r, ph * s, pw * s), gy[:, :, None].expand(r, ph * s, pw * s)], dim=-1
    )


def box_roi_align(
    features: Tensor,
    rois: Union[Tensor, Sequence[Tensor]],
    output_size: Union[int, Sequence[int]],
    spatial_scale: float,
    sampling_ratio: int = 2,
) -> Tensor:
    """RoI Align (aligned=True) with gradients w.r.t. ``features`` and the box coordinates.

    Args:
        features: (B, C, H, W) feature map.
        rois: (R, 5) (batch_index, x1, y1, x2, y2) in image pixels, or a list of B (n_i, 4) tensors.
        output_size: Ph, Pw bins.
        spatial_scale: feature pixels per image pixel (1 / stride).
        sampling_ratio: s > 0 sampling points per bin side (roi_align's adaptive 0 is not supported
            because it would make the sampling pattern, and hence the gradient, jump with box size).
    Returns:
        (R, C, Ph, Pw) pooled features.
    """
    if sampling_ratio <= 0:
        raise ValueError("sampling_ratio must be a positive integer")
    rois = boxes_to_rois(rois)
    ph, pw = _pair(output_size)
    b, c, h, w = features.shape
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros(0, c, ph, pw)
    grid = _sampling_grid(rois[:, 1:].to(features.dtype), h, w, (ph, pw), spatial_scale, sampling_ratio)
    if b == 1:
        return _pool_single(features, grid, sampling_ratio)
    # One grid_sample call per image (B is small); rois are scattered back in their order.
    batch_idx = rois[:, 0].long()
    out = features.new_zeros(r, c, ph, pw)
    for i in range(b):
        idx = torch.nonzero(batch_idx == i).squeeze(1)
        if idx.numel():
            out = out.index_copy(0, idx, _pool_single(features[i : i + 1], grid[idx], sampling_ratio))
    return out


def _pool_single(feature: Tensor, grid: Tensor, s: int) -> Tensor:
    """(1, C, H, W) map, (R, Ph*s, Pw*s, 2) grid -> (R, C, Ph, Pw) bin averages of bilinear samples."""
    r, hs, ws, _ = grid.shape
    sampled = F.grid_sample(
        feature, grid.reshape(1, r * hs, ws, 2), mode="bilinear", padding_mode="border", align_corners=False
    )  # (1, C, R*Ph*s, Pw*s): rois stacked along height
    if s > 1:
        # s x s windows never straddle two rois because each roi spans Ph*s rows.
        sampled = F.avg_pool2d(sampled, kernel_size=s, stride=s)
    c = feature.shape[1]
    return sampled.reshape(c, r, hs // s, ws // s).transpose(0, 1)


def assign_boxes_to_levels(
    boxes: Tensor, min_level: int, max_level: int, canonical_box_size: float = 224.0, canonical_level: int = 4
) -> Tensor:
    """FPN level assignment (Lin et al. 2017, eq. 1), as Detectron2's ROIPooler does it.

    Args:
        boxes: (R, 4) xyxy image pixels.
    Returns:
        (R,) long, index into the pooler's levels (0 = ``min_level``).
    """
    size = torch.sqrt(
        ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    ).detach()
    level = torch.floor(canonical_level + torch.log2(size / canonical_box_size + 1e-8))
    return (level.clamp(min_level, max_level) - min_level).long()


class MultiLevelBoxPooler(nn.Module):
    """Box-differentiable RoI Align over a feature pyramid.

    Args:
        output_size: Ph, Pw bins (7 for the Detectron2 head).
        scales: 1 / stride of each level, finest first (e.g. (1/4, 1/8, 1/16, 1/32) for P2-P5).
        sampling_ratio: bilinear samples per bin side.
        canonical_box_size, canonical_level: FPN level-assignment constants.
    """

    def __init__(
        self,
        output_size: Union[int, Sequence[int]],
        scales: Sequence[float],
        sampling_ratio: int = 2,
        canonical_box_size: float = 224.0,
        canonical_level: int = 4,
    ):
        super().__init__()
        self.output_size = _pair(output_size)
        self.scales = [float(s) for s in scales]
        self.sampling_ratio = int(sampling_ratio)
        levels = [-math.log2(s) for s in self.scales]
        if any(abs(l - round(l)) > 1e-6 for l in levels):
            raise ValueError(f"scales must be powers of 1/2, got {scales}")
        self.min_level = int(round(levels[0]))
        self.max_level = int(round(levels[-1]))
        if self.max_level - self.min_level + 1 != len(self.scales):
            raise ValueError(f"scales must be consecutive pyramid levels, got {scales}")
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level
        self._scratch = None  # ScratchMemory of prepare(), created on first use

    def level_groups(self, boxes: Union[Tensor, Sequence[Tensor]]) -> List[Tensor]:
        """Indices of the rois pooled from each level: a list of (R_l,) long tensors.

        ``boxes``: (R, 4) xyxy, (R, 5) rois, or a list of per-image (n_i, 4) boxes.

        Refinement computes this once at the initial boxes and passes it to every ``forward``: a box
        then keeps its level while it moves (no jump in the energy landscape) and each step avoids
        one host synchronisation per level.
        """
        xyxy = boxes if isinstance(boxes, Tensor) and boxes.shape[-1] == 4 else boxes_to_rois(boxes)[:, 1:]
        level = assign_boxes_to_levels(
            xyxy, self.min_level, self.max_level, self.canonical_box_size, self.canonical_level
        )
        return [torch.nonzero(level == l).squeeze(1) for l in range(len(self.scales))]

    def forward(
        self,
        features: List[Tensor],
        boxes: Union[Tensor, Sequence[Tensor]],
        level_groups: Optional[List[Tensor]] = None,
    ) -> Tensor:
        """
        Args:
            features: one (B, C, H_l, W_l) map per level, in the order of ``scales``.
            boxes: (R, 5) rois or a list of B (n_i, 4) xyxy image-pixel boxes.
            level_groups: optional fixed level assignment from :meth:`level_groups`; by default each
                box is assigned by its current size.
        Returns:
            (R, C, Ph, Pw).
        """
        if len(features) != len(self.scales):
            raise ValueError(f"expected {len(self.scales)} feature levels, got {len(features)}")
        rois = boxes_to_rois(boxes)
        if len(features) == 1:
            return box_roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
        groups = level_groups if level_groups is not None else self.level_groups(rois)
        c = features[0].shape[1]
        out = features[0].new_zeros(rois.shape[0], c, *self.output_size)
        for feat, scale, idx in zip(features, self.scales, groups):
            if idx.numel():
                pooled = box_roi_align(feat, rois[idx], self.output_size, scale, self.sampling_ratio)
                out = out.index_copy(0, idx, pooled)
        return out

    def prepare(
        self,
        features: List[Tensor],
        boxes: Union[Tensor, Sequence[Tensor]],
        level_groups: Optional[List[Tensor]] = None,
    ) -> "PyramidRoIAlign":
        """The fast path of :meth:`forward` for a fixed set of boxes that move (refinement).

        Args:
            features: as in :meth:`forward`.
            boxes: (R, 5) rois or a list of B (n_i, 4) boxes: fixes each box's image and, without
                ``level_groups``, its level (by its size here).
            level_groups: optional fixed level assignment from :meth:`level_groups`.
        Returns:
            a :class:`~ebm_refine.core.pyramid_pool.PyramidRoIAlign` whose ``forward(boxes)`` pools
            (R, 4) xyxy boxes (row r on the image and level fixed here) as :meth:`forward` does, channels
            last, and whose ``box_grad`` chains a gradient back to the boxes without autograd. Its large
            tensors live in this pooler's :class:`~ebm_refine.core.pyramid_pool.ScratchMemory`, kept for
            the next call (~150 MB for 100 boxes on an 800 px pyramid): it is valid until the next
            ``prepare``.
        """
        from .pyramid_pool import PyramidRoIAlign, ScratchMemory  # they build on this module's sample_positions

        if len(features) != len(self.scales):
            raise ValueError(f"expected {len(self.scales)} feature levels, got {len(features)}")
        rois = boxes_to_rois(boxes)
        groups = level_groups if level_groups is not None else self.level_groups(rois)
        levels = torch.zeros(rois.shape[0], dtype=torch.long, device=rois.device)
        for level, idx in enumerate(groups):
            levels[idx] = level
        if self._scratch is None:
            self._scratch = ScratchMemory()
        return PyramidRoIAlign(features, self.scales, rois[:, 0].long(), levels, self.output_size,
                               self.sampling_ratio, scratch=self._scratch)
