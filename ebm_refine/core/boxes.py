"""Box parametrisations, the relative (reference-box) encoding, and IoU.

Every function works on tensors of any leading shape ``(..., 4)`` and is differentiable.

Conventions
-----------
* ``xyxy``: (x1, y1, x2, y2) in pixels, x2 > x1 for a non-empty box. Continuous coordinates: a box
  covering pixels 0..9 is (0, 0, 10, 10), as in Detectron2 and torchvision.
* ``xywh``: (x, y, w, h), top-left corner plus size in pixels (COCO, OTB, pytracking).
* ``cxcywh``: (cx, cy, w, h), centre plus size in pixels.
* relative encoding of a box y w.r.t. a reference box r (both xyxy)::

      u = ((cx_y - cx_r) / w_r, (cy_y - cy_r) / h_r, log(w_y / w_r), log(h_y / h_r))

  Centre offsets are in units of the reference size (unitless); sizes are in log-space. This is the
  space in which the proposal distribution is defined and in which refinement takes its steps, so that
  both behave the same for a 10-pixel and a 500-pixel box.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "xyxy_to_xywh",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "cxcywh_to_xyxy",
    "encode_relative",
    "decode_relative",
    "box_area",
    "box_iou_aligned",
    "box_iou_matrix",
    "valid_box_mask",
    "clip_boxes",
]

# Widths/heights below this (pixels) are treated as degenerate in the log-space encoding.
_MIN_SIZE = 1e-6


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) xywh."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) xywh -> (..., 4) xyxy."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1], dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def encode_relative(boxes: Tensor, reference: Tensor) -> Tensor:
    """Encode boxes relative to reference boxes.

    Args:
        boxes: (..., 4) xyxy pixels.
        reference: (..., 4) xyxy pixels, broadcastable against ``boxes`` (e.g. (N, 1, 4) vs (N, M, 4)).
    Returns:
        (..., 4) relative coordinates (dcx / w_ref, dcy / h_ref, log(w / w_ref), log(h / h_ref)).
        Sizes are clamped to ``1e-6`` px so degenerate boxes give large negative logs, not NaN.
    """
    b = xyxy_to_cxcywh(boxes)
    r = xyxy_to_cxcywh(reference)
    rw = r[..., 2].clamp(min=_MIN_SIZE)
    rh = r[..., 3].clamp(min=_MIN_SIZE)
    return torch.stack(
        [
            (b[..., 0] - r[..., 0]) / rw,
            (b[..., 1] - r[..., 1]) / rh,
            torch.log(b[..., 2].clamp(min=_MIN_SIZE) / rw),
            torch.log(b[..., 3].clamp(min=_MIN_SIZE) / rh),
        ],
        dim=-1,
    )


def decode_relative(rel: Tensor, reference: Tensor) -> Tensor:
    """Inverse of :func:`encode_relative`.

    Args:
        rel: (..., 4) relative coordinates.
        reference: (..., 4) xyxy pixels, broadcastable against ``rel``.
    Returns:
        (..., 4) xyxy pixels.
    """
    # Slices and one cat rather than per-coordinate ops: refinement calls this every step.
    size = reference[..., 2:] - reference[..., :2]
    center = (reference[..., :2] + reference[..., 2:]) * 0.5 + rel[..., :2] * size
    half = size * torch.exp(rel[..., 2:]) * 0.5
    return torch.cat([center - half, center + half], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) area in px^2; inverted boxes have area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def box_iou_aligned(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """Element-wise IoU of broadcastable (..., 4) xyxy boxes -> (...). Empty boxes give IoU 0."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=eps)


def box_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs IoU: (N, 4), (M, 4) xyxy -> (N, M)."""
    return box_iou_aligned(a[:, None, :], b[None, :, :])


def valid_box_mask(boxes: Tensor, min_size: float = 1e-3) -> Tensor:
    """(..., 4) xyxy -> (...) bool: finite coordinates and width, height > ``min_size`` px."""
    finite = torch.isfinite(boxes).all(dim=-1)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return finite & (w > min_size) & (h > min_size)


def clip_boxes(boxes: Tensor, height: float, width: float) -> Tensor:
    """Clip (..., 4) xyxy boxes to an image of ``height`` x ``width`` pixels."""
    x1 = boxes[..., 0].clamp(0, width)
    y1 = boxes[..., 1].clamp(0, height)
    x2 = boxes[..., 2].clamp(0, width)
    y2 = boxes[..., 3].clamp(0, height)
    return torch.stack([x1, y1, x2, y2], dim=-1)
