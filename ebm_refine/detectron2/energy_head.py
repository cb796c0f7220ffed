"""Energy networks f(x, y) for the EBM ROI head, and their registry.

An energy head maps RoI features pooled at box y (pooling is differentiable w.r.t. y) and the
class of the object to a scalar score. Register new designs with ``@ENERGY_HEAD_REGISTRY.register()``
and select them with ``MODEL.EBM.HEAD.NAME``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..core.pyramid_pool import PyramidRoIAlign
from .config import ConfigValueError

__all__ = [
    "ENERGY_HEAD_REGISTRY", "FCEnergyHead", "FCBoxEnergy", "WeldonEnergyHead", "WeldonBoxEnergy", "weldon_pool",
    "build_energy_head",
]

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


def weldon_pool(scores: Tensor, kmax: int, kmin: int, alpha: float) -> Tensor:
    """WELDON pooling with negative evidence (Durand et al., TPAMI 2019) of region scores.

    Args:
        scores: (R, N) region scores (N cells of each box's grid).
        kmax: the k+ highest scores are averaged (1 <= kmax <= N).
        kmin: the k- lowest scores are averaged (0 <= kmin <= N; 0 = max pooling only).
        alpha: weight of the low-score term.
    Returns:
        (R,) ``mean(top-kmax) + alpha * mean(bottom-kmin)``. Its gradient w.r.t. ``scores`` is
        ``1/kmax`` on the selected high cells plus ``alpha/kmin`` on the selected low ones (a cell in
        both sets gets both; a tie is broken by ``torch.topk``).
    """
    f = scores.topk(kmax, dim=1).values.mean(1)
    if kmin > 0 and alpha != 0:
        f = f + alpha * scores.topk(kmin, dim=1, largest=False).values.mean(1)
    return f


@ENERGY_HEAD_REGISTRY.register()
class WeldonEnergyHead(nn.Module):
    """Region scores on the pooled P x P grid, aggregated by WELDON's top-k+ and bottom-k- means.

    Every cell of the pooled RoI grid is scored on its own by a small MLP shared over cells (a 1x1
    conv + ReLU of width ``hidden_dim``, then a 1x1 conv to one score per class, or a single 1x1 conv
    when ``hidden_dim == 0``); the box's score is the mean of its ``kmax`` highest cell scores plus
    ``alpha`` times the mean of its ``kmin`` lowest (negative evidence: a box that takes in background
    or cuts through the object has cells that speak against it). Cells have no position code: where a
    piece of evidence lies inside the box only reaches f through the features themselves.

    Args:
        input_shape: pooled feature shape (channels C, height = width = pooler resolution P).
        hidden_dim: width of the per-cell hidden layer (0 = linear region scores).
        kmax: high cells averaged, in [1, P*P]; ``kmin``: low cells averaged, in [0, P*P];
        alpha: weight of the low-cell mean, >= 0 (ignored when ``kmin == 0``).
        num_classes: foreground classes; ignored when ``cls_agnostic``.
        cls_agnostic: one score per cell for all classes.
    """

    @configurable
    def __init__(self, *, input_shape: ShapeSpec, hidden_dim: int, kmax: int, kmin: int, alpha: float,
                 num_classes: int, cls_agnostic: bool):
        super().__init__()
        cells = (input_shape.height or 1) * (input_shape.width or 1)
        if not 1 <= kmax <= cells or not 0 <= kmin <= cells:
            raise ValueError(f"WELDON needs 1 <= kmax <= {cells} and 0 <= kmin <= {cells} (cells of the pooled "
                             f"grid), got kmax={kmax}, kmin={kmin}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"WELDON alpha must be a finite number >= 0, got {alpha}")
        self.input_shape = input_shape
        self.num_cells, self.kmax, self.kmin, self.alpha = cells, int(kmax), int(kmin), float(alpha)
        self.cls_agnostic = cls_agnostic
        # A Linear over channels of channels-last cells is exactly a 1x1 conv; it is also what the fused
        # path multiplies, so both paths share one set of weights without reordering.
        self.hidden = nn.Linear(input_shape.channels, hidden_dim) if hidden_dim > 0 else None
        if self.hidden is not None:
            nn.init.kaiming_uniform_(self.hidden.weight, a=1)
            nn.init.zeros_(self.hidden.bias)
        self.score = nn.Linear(hidden_dim or input_shape.channels, 1 if cls_agnostic else num_classes)
        nn.init.normal_(self.score.weight, std=0.001)  # flat initial energy, as FCEnergyHead
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        h = cfg.MODEL.EBM.HEAD
        cells = (input_shape.height or 1) * (input_shape.width or 1)
        where = f"({cells} cells at MODEL.EBM.HEAD.POOLER_RESOLUTION {input_shape.height})"
        if not (isinstance(h.WELDON_KMAX, int) and 1 <= h.WELDON_KMAX <= cells):
            raise ConfigValueError(f"MODEL.EBM.HEAD.WELDON_KMAX must be an integer in [1, {cells}] {where}, "
                                   f"got {h.WELDON_KMAX!r}")
        if not (isinstance(h.WELDON_KMIN, int) and 0 <= h.WELDON_KMIN <= cells):
            raise ConfigValueError(f"MODEL.EBM.HEAD.WELDON_KMIN must be an integer in [0, {cells}] {where} "
                                   f"(0 = no negative evidence), got {h.WELDON_KMIN!r}")
        if not (isinstance(h.WELDON_ALPHA, (int, float)) and math.isfinite(h.WELDON_ALPHA) and h.WELDON_ALPHA >= 0):
            raise ConfigValueError(f"MODEL.EBM.HEAD.WELDON_ALPHA must be a finite number >= 0, got {h.WELDON_ALPHA!r}")
        if not (isinstance(h.WELDON_HIDDEN, int) and h.WELDON_HIDDEN >= 0):
            raise ConfigValueError(f"MODEL.EBM.HEAD.WELDON_HIDDEN must be an integer >= 0 (0 = linear region "
                                   f"scores), got {h.WELDON_HIDDEN!r}")
        return {
            "input_shape": input_shape, "hidden_dim": h.WELDON_HIDDEN, "kmax": h.WELDON_KMAX,
            "kmin": h.WELDON_KMIN, "alpha": float(h.WELDON_ALPHA),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES, "cls_agnostic": h.CLS_AGNOSTIC,
        }

    def _score_row(self, classes: Optional[Tensor], num_boxes: int, device) -> Tuple[Tensor, Tensor]:
        """(R, d) score weight and (R,) bias of each box's class."""
        rows = _score_rows(self, num_boxes, classes, device)
        return self.score.weight[rows], self.score.bias[rows]

    def region_scores(self, pooled: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        """(R, C, P, P) features, (R,) classes -> (R, P*P) cell scores of each box's class (row-major cells)."""
        if pooled.dim() != 4 or pooled.shape[2] * pooled.shape[3] != self.num_cells:
            raise ValueError(f"expected (R, C, P, P) features with {self.num_cells} cells, got {tuple(pooled.shape)}")
        h = pooled.flatten(2).transpose(1, 2)  # (R, P*P, C) channels-last cells
        if self.hidden is not None:
            h = torch.relu(self.hidden(h))
        w, b = self._score_row(classes, pooled.shape[0], pooled.device)
        return torch.einsum("rnd,rd->rn", h, w) + b[:, None]

    def forward(self, pooled: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        """(R, C, P, P) features, (R,) classes -> (R,) scores."""
        return weldon_pool(self.region_scores(pooled, classes), self.kmax, self.kmin, self.alpha)

    def box_energy(self, pool, classes: Optional[Tensor] = None) -> Optional["WeldonBoxEnergy"]:
        """The refinement fast path (see :meth:`FCEnergyHead.box_energy`); None for a subclass that
        overrides ``forward`` or ``region_scores`` (refinement then uses autograd)."""
        if (type(self).forward is not WeldonEnergyHead.forward
                or type(self).region_scores is not WeldonEnergyHead.region_scores):
            return None
        return WeldonBoxEnergy(self, pool, classes)


class WeldonBoxEnergy:
    """f(x, y) of a :class:`WeldonEnergyHead` and df/dbox without autograd (the fused refinement path).

    The prepared pooling gives channels-last (R, P*P*C) cells, i.e. (R, P*P, C): the per-cell MLP is two
    matrix products on them, WELDON's gradient is ``1/kmax`` on the selected high cells and
    ``alpha/kmin`` on the low ones, and the chain back through the MLP and the pooling is written out.
    Same values as autograd through ``head(pooler(...), classes)`` (tested). Weights are read when this
    object is built.
    """

    def __init__(self, head: WeldonEnergyHead, pool, classes: Optional[Tensor] = None):
        with torch.no_grad():
            w, b = head._score_row(classes, pool.num_boxes, head.score.weight.device)
            self.score_weight, self.score_bias = w.detach().contiguous(), b.detach()
            self.hidden = (head.hidden.weight.detach(), head.hidden.bias.detach()) if head.hidden is not None else None
        self.kmax, self.kmin, self.alpha = head.kmax, head.kmin, head.alpha
        self.num_cells = head.num_cells
        self.pool = pool

    def _forward(self, boxes: Tensor):
        pooled, state = self.pool.forward(boxes)
        x = pooled.view(boxes.shape[0], self.num_cells, -1)  # (R, P*P, C)
        z = torch.addmm(self.hidden[1], x.flatten(0, 1), self.hidden[0].t()).view(*x.shape[:2], -1) \
            if self.hidden is not None else None
        h = torch.relu(z) if z is not None else x
        s = torch.einsum("rnd,rd->rn", h, self.score_weight) + self.score_bias[:, None]  # (R, P*P)
        return s, z, state

    @torch.no_grad()
    def __call__(self, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """(R, 4) xyxy image-pixel boxes -> (R,) energies, (R, 4) their gradients w.r.t. the coordinates."""
        s, z, state = self._forward(boxes)
        top = s.topk(self.kmax, dim=1)
        f = top.values.mean(1)
        g_s = torch.zeros_like(s).scatter_add_(1, top.indices, s.new_full(top.indices.shape, 1.0 / self.kmax))
        if self.kmin > 0 and self.alpha != 0:
            low = s.topk(self.kmin, dim=1, largest=False)
            f = f + self.alpha * low.values.mean(1)
            g_s.scatter_add_(1, low.indices, s.new_full(low.indices.shape, self.alpha / self.kmin))
        g = g_s[:, :, None] * self.score_weight[:, None, :]  # (R, P*P, d)
        if z is not None:
            g = ((g * (z > 0)).flatten(0, 1) @ self.hidden[0]).view(s.shape[0], self.num_cells, -1)
        return f, self.pool.box_grad(state, g.reshape(s.shape[0], -1))

    @torch.no_grad()
    def value(self, boxes: Tensor) -> Tensor:
        """(R, 4) boxes -> (R,) energies alone."""
        return weldon_pool(self._forward(boxes)[0], self.kmax, self.kmin, self.alpha)


def build_energy_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the energy head named by ``cfg.MODEL.EBM.HEAD.NAME``."""
    return ENERGY_HEAD_REGISTRY.get(cfg.MODEL.EBM.HEAD.NAME)(cfg, input_shape)
