"""Energy networks f(x, y) for the EBM ROI head, and their registry.

An energy head maps RoI features pooled at box y (pooling is differentiable w.r.t. y) and the
class of the object to a scalar score. Register new designs with ``@ENERGY_HEAD_REGISTRY.register()``
and select them with ``MODEL.EBM.HEAD.NAME``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..core.pyramid_pool import PyramidRoIAlign

__all__ = ["ENERGY_HEAD_REGISTRY", "FCEnergyHead", "FCBoxEnergy", "build_energy_head"]

ENERGY_HEAD_REGISTRY = Registry("ENERGY_HEAD")
ENERGY_HEAD_REGISTRY.__doc__ = """
Registry for energy heads: modules called as ``head(pooled, classes)`` with pooled RoI features
(R, C, P, P) and long classes (R,), returning (R,) scores f (higher = better box).
The registered object is called as ``obj(cfg, input_shape)`` with the ShapeSpec of the pooled features.
"""


@ENERGY_HEAD_REGISTRY.register()
class FCEnergyHead(nn.Module):
    """The reference design: flatten -> ``num_fc`` x (fc + ReLU) -> one score per class.

    Args:
        input_shape: pooled feature shape (channels, height = width = pooler resolution).
        num_fc: number of hidden fully connected layers.
        fc_dim: their width.
        num_classes: foreground classes; ignored when ``cls_agnostic``.
        cls_agnostic: one score for all classes.
    """

    @configurable
    def __init__(self, *, input_shape: ShapeSpec, num_fc: int, fc_dim: int, num_classes: int, cls_agnostic: bool):
        super().__init__()
        self.input_shape = input_shape
        d = input_shape.channels * (input_shape.height or 1) * (input_shape.width or 1)
        layers = []
        for _ in range(num_fc):
            layers += [nn.Linear(d, fc_dim), nn.ReLU(inplace=True)]
            d = fc_dim
        self.fcs = nn.Sequential(*layers)
        self.cls_agnostic = cls_agnostic
        self.score = nn.Linear(d, 1 if cls_agnostic else num_classes)
        for m in self.fcs:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=1)  # c2_xavier_fill, as Detectron2's box head
                nn.init.zeros_(m.bias)
        # Small initial scores: all boxes start almost equally likely (flat energy).
        nn.init.normal_(self.score.weight, std=0.001)
        nn.init.zeros_(self.score.bias)
        self._prepared = _DerivedCache()  # the fast path's copies of the hidden layers, see _prepared_layers

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        return {
            "input_shape": input_shape,
            "num_fc": cfg.MODEL.EBM.HEAD.NUM_FC,
            "fc_dim": cfg.MODEL.EBM.HEAD.FC_DIM,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic": cfg.MODEL.EBM.HEAD.CLS_AGNOSTIC,
        }

    def forward(self, pooled: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        """(R, C, P, P) features, (R,) classes -> (R,) scores."""
        out = self.score(self.fcs(pooled.flatten(1)))
        if self.cls_agnostic or classes is None:
            if not self.cls_agnostic and out.shape[1] != 1:
                raise ValueError("a class-specific energy head needs the classes")
            return out[:, 0]
        return out.gather(1, classes.long()[:, None])[:, 0]

    def box_energy(self, pool, classes: Optional[Tensor] = None) -> Optional["FCBoxEnergy"]:
        """The refinement fast path: a callable (R, 4) boxes -> f (R,), df/dbox (R, 4), no autograd.

        Args:
            pool: the prepared pooling of these R boxes, from ``MultiLevelBoxPooler.prepare``.
            classes: (R,) long class of each box (ignored when class-agnostic).
        Returns:
            :class:`FCBoxEnergy`, or None for a subclass whose ``forward`` differs from this one (it
            has no fast path unless it defines its own ``box_energy``; refinement then uses autograd).
        """
        if type(self).forward is not FCEnergyHead.forward:
            return None
        return FCBoxEnergy(self, pool, classes)

    def refinement_multiply_adds(self, num_boxes: int, num_steps: int, sampling_ratio: int) -> int:
        """Multiply-adds of refining ``num_boxes`` boxes by ``num_steps`` steps on the fast path.

        T + 1 evaluations of f (pooling, every linear layer, the score layer for the box's class only)
        and T gradients back to the boxes (the last candidate needs none): each layer's input gradient
        costs what its forward does, and the pooling's box gradient what the pooling does.
        """
        linears = [m for m in self.fcs if isinstance(m, nn.Linear)]
        hidden = sum(m.in_features * m.out_features for m in linears)
        res = (self.input_shape.height or 1, self.input_shape.width or 1)
        pool = PyramidRoIAlign.multiply_adds_per_box(self.input_shape.channels, res, sampling_ratio, box_grad=False)
        forward = pool + hidden + self.score.in_features
        backward = pool + hidden
        return num_boxes * ((num_steps + 1) * forward + num_steps * backward)

    def _prepared_layers(self, pool) -> List["_PreparedLinear"]:
        """The hidden layers as :class:`_PreparedLinear`, the first one's weight reordered to the prepared
        pooling's channels-last layout; rebuilt when a weight changes (its storage or version), else
        kept (copies of the weights: ~100 MB for the reference head on a CPU, ~51 MB elsewhere)."""
        layers = []
        for i, layer in enumerate(m for m in self.fcs if isinstance(m, nn.Linear)):
            w = layer.weight
            key = (w.data_ptr(), w._version, layer.bias.data_ptr(), layer.bias._version, w.dtype, w.device)
            if self._prepared.get(i, (None,))[0] != key:
                with torch.no_grad():
                    weight = pool.linear_weight(w) if i == 0 else w.detach()
                    self._prepared[i] = (key, _PreparedLinear(weight, layer.bias.detach()))
            layers.append(self._prepared[i][1])
        return layers


class _DerivedCache(dict):
    """Copies derived from a module's weights (rebuilt on demand): never deep-copied or saved with the module
    (oneDNN tensors cannot be, and a copy would only hold stale weights)."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return type(self), ()


class _PreparedLinear:
    """``x W^T + b`` and the input gradient ``g W`` of a linear layer, for the fast path.

    On a CPU in float32 both products run on oneDNN (weights kept in its layout, W and W^T), which
    is ~2x faster than the default BLAS here (AMD EPYC, 1 thread: 14 + 19 ms instead of 29 + 31 ms for
    100 boxes through 12544 -> 1024; docs/detection_speed.md). ``torch.backends.mkldnn.flags(enabled=False)``
    when the layer is prepared keeps the plain matrix products.
    """

    def __init__(self, weight: Tensor, bias: Tensor):
        self.onednn = (weight.device.type == "cpu" and weight.dtype == torch.float32
                       and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)
        if self.onednn:
            self.weight, self.weight_t = weight.to_mkldnn(), weight.t().contiguous().to_mkldnn()
            self.bias = bias.to_mkldnn()
        else:
            self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        """(R, in) -> (R, out)."""
        if self.onednn:
            return torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias).to_dense()
        return torch.addmm(self.bias, x, self.weight.t())

    def input_grad(self, g: Tensor) -> Tensor:
        """(R, out) gradient of the output -> (R, in) gradient of the input."""
        if self.onednn:
            return torch.ops.aten.mkldnn_linear(g.contiguous().to_mkldnn(), self.weight_t, None).to_dense()
        return g @ self.weight


class FCBoxEnergy:
    """f(x, y) of an :class:`FCEnergyHead` and its gradient w.r.t. the boxes, with the backward written out.

    Only what refinement needs is computed: the layers forward, then the gradient back to the pooled
    features (no weight gradients) and through the prepared pooling to the box coordinates. The first
    layer's weight is reordered to the pooling's channels-last layout and the hidden layers prepared
    (:class:`_PreparedLinear`, once per weight version, kept by the head), and each box's score row is
    picked once, so a call is a few matrix products. Same values
    as ``head(pooler(...), classes)`` and autograd through it (tested). Weights are read when this
    object is built.

    Args:
        head: the energy head.
        pool: ``MultiLevelBoxPooler.prepare(...)`` for the R boxes (their images and levels).
        classes: (R,) long classes (None or ignored when the head is class-agnostic).
    """

    def __init__(self, head: FCEnergyHead, pool, classes: Optional[Tensor] = None):
        self.layers = head._prepared_layers(pool)
        with torch.no_grad():
            # The score layer: one row per box, (R, d) and (R,) (on the pooled features without hidden layers).
            score = head.score.weight if self.layers else pool.linear_weight(head.score.weight)
            rows = _score_rows(head, pool.num_boxes, classes, score.device)
            self.score_weight, self.score_bias = score[rows].contiguous(), head.score.bias.detach()[rows]
        self.pool = pool

    def _forward(self, boxes: Tensor):
        pooled, state = self.pool.forward(boxes)
        h, pre = pooled, []
        for layer in self.layers:
            z = layer.forward(h)
            pre.append(z)
            h = torch.relu(z)
        return torch.linalg.vecdot(h, self.score_weight) + self.score_bias, pre, state

    @torch.no_grad()
    def __call__(self, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """(R, 4) xyxy image-pixel boxes -> (R,) energies, (R, 4) their gradients w.r.t. the coordinates."""
        f, pre, state = self._forward(boxes)
        g = self.score_weight
        for layer, z in zip(reversed(self.layers), reversed(pre)):
            g = layer.input_grad(g * (z > 0))  # ReLU's derivative, 0 at 0 as autograd's
        return f, self.pool.box_grad(state, g)

    @torch.no_grad()
    def value(self, boxes: Tensor) -> Tensor:
        """(R, 4) boxes -> (R,) energies alone (where refinement needs no gradient)."""
        return self._forward(boxes)[0]


def _score_rows(head: FCEnergyHead, num_boxes: int, classes: Optional[Tensor], device) -> Tensor:
    """(R,) long: the score layer's output used for each box (its class, or 0 when class-agnostic)."""
    if head.cls_agnostic or head.score.out_features == 1:
        return torch.zeros(num_boxes, dtype=torch.long, device=device)
    if classes is None:
        raise ValueError("a class-specific energy head needs the classes")
    if classes.shape != (num_boxes,):
        raise ValueError(f"classes must be ({num_boxes},), got {tuple(classes.shape)}")
    return classes.to(device).long()


def build_energy_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the energy head named by ``cfg.MODEL.EBM.HEAD.NAME``."""
    return ENERGY_HEAD_REGISTRY.get(cfg.MODEL.EBM.HEAD.NAME)(cfg, input_shape)
