"""The box estimator f(x, y): ATOM's IoU-Net layout with a scalar energy output.

Two branches, two feature levels (stride 8 "level 3" and stride 16 "level 4", named after ResNet's
conv3/conv4 blocks as in the ATOM paper):

* reference branch: the first frame's target box is pooled on both levels; small convolutions turn the
  pooled features into one vector per level, the *modulation* vectors (target appearance).
* test branch: test-frame features are multiplied channel-wise by the modulation vectors, then every
  candidate box is pooled on both levels (box-differentiable RoI Align from :mod:`ebm_refine.core`),
  passed through fully connected layers, and a final linear layer gives one scalar per box.

Trained with ML-IS the scalar is the energy-as-score f(x, y) of p(y | x) ~ exp f (higher = more
likely); trained with the IoU-Net confidence loss it predicts 2 IoU - 1. Both are maximised over y by
the same refiner, which is why the architecture is shared.

All boxes are xyxy in pixels of the search crop the features were computed on.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ebm_refine.core.roi_pool import box_roi_align
from ebm_refine.core.separable_pool import SeparableRoIAlign, bin_major_weight, separable_box_roi_align

__all__ = ["BoxEnergy", "EnergyBoxEstimator", "Modulation", "TestFeatures"]

Modulation = Tuple[Tensor, Tensor]  # (B, C3), (B, C4)

# Candidate sets up to this size use the matrix-product RoI Align (few boxes: refinement while
# tracking); larger ones (training: 129 boxes per image) the sampling-grid one. Same numbers either way.
_SEPARABLE_MAX_BOXES = 64


class TestFeatures(NamedTuple):
    """Modulated test maps of B images, possibly a window of the search region.

    ``level3``: (B, P3, h3, w3) stride-8 map; ``level4``: (B, P4, h4, w4) stride-16 map;
    ``offset``: (x, y) crop pixels of the window's top-left cell corner ((0, 0) for the whole crop,
    always a multiple of 16 so that both levels share it).
    """

    level3: Tensor
    level4: Tensor
    offset: Tuple[float, float] = (0.0, 0.0)


def _conv(cin: int, cout: int, k: int = 3, pad: int = 1, norm: bool = True) -> nn.Sequential:
    if not norm:
        return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class EnergyBoxEstimator(nn.Module):
    """f(x, y) on two backbone levels.

    Args:
        in_dims: channels of the stride-8 and stride-16 backbone maps (e.g. (128, 256) for ResNet-18).
        pred_dims: channels of the modulated test maps per level (ATOM: 256, 256).
        inter_dims: width of the per-level fully connected layer on each pooled box (ATOM: 256, 256).
        ref_pool: RoI bins of the reference box per level (ATOM: 3, 1).
        test_pool: RoI bins of the candidate boxes per level (ATOM: 5, 3).
        strides: feature strides in crop pixels.
    """

    def __init__(
        self,
        in_dims: Sequence[int] = (128, 256),
        pred_dims: Sequence[int] = (256, 256),
        inter_dims: Sequence[int] = (256, 256),
        ref_pool: Sequence[int] = (3, 1),
        test_pool: Sequence[int] = (5, 3),
        strides: Sequence[int] = (8, 16),
    ):
        super().__init__()
        c3, c4 = int(in_dims[0]), int(in_dims[1])
        p3, p4 = int(pred_dims[0]), int(pred_dims[1])
        i3, i4 = int(inter_dims[0]), int(inter_dims[1])
        self.ref_pool = (int(ref_pool[0]), int(ref_pool[1]))
        self.test_pool = (int(test_pool[0]), int(test_pool[1]))
        self.scales = (1.0 / strides[0], 1.0 / strides[1])

        # Reference branch: per-level conv, pooling, a "valid" conv over the bins -> vectors.
        self.ref_conv3 = _conv(c3, c3)
        self.ref_conv4 = _conv(c4, c4)
        # No BatchNorm on pooled vectors: with one reference per batch its statistics would be undefined.
        self.ref_fc3 = _conv(c3, p3, k=self.ref_pool[0], pad=0, norm=False)
        self.ref_fc4 = _conv(c4, p4, k=self.ref_pool[1], pad=0, norm=False)
        # Both modulation vectors see both levels (the target's fine and coarse appearance).
        self.mod3 = nn.Sequential(nn.Linear(p3 + p4, p3), nn.ReLU(inplace=True))
        self.mod4 = nn.Sequential(nn.Linear(p3 + p4, p4), nn.ReLU(inplace=True))

        # Test branch.
        self.test_conv3 = nn.Sequential(_conv(c3, p3), _conv(p3, p3))
        self.test_conv4 = nn.Sequential(_conv(c4, p4), _conv(p4, p4))
        n3 = p3 * self.test_pool[0] ** 2
        n4 = p4 * self.test_pool[1] ** 2
        # Per-box layers without normalisation: a box's score must not depend on the other boxes, which
        # the refiner relies on (rows are refined independently).
        self.box_fc3 = nn.Sequential(nn.Linear(n3, i3), nn.ReLU(inplace=True))
        self.box_fc4 = nn.Sequential(nn.Linear(n4, i4), nn.ReLU(inplace=True))
        self.head = nn.Linear(i3 + i4, 1)

    # ------------------------------------------------------------------------------------------
    def reference(self, feats: Dict[str, Tensor], boxes: Tensor) -> Modulation:
        """Modulation vectors from reference frames.

        Args:
            feats: ``layer2`` (B, C3, H/8, W/8) and ``layer3`` (B, C4, H/16, W/16) of the reference crops.
            boxes: (B, 4) target boxes, xyxy crop pixels.
        Returns:
            (B, P3), (B, P4) modulation vectors.
        """
        b = boxes.shape[0]
        rois = torch.cat([torch.arange(b, dtype=boxes.dtype, device=boxes.device)[:, None], boxes], dim=1)
        r3 = box_roi_align(self.ref_conv3(feats["layer2"]), rois, self.ref_pool[0], self.scales[0])
        r4 = box_roi_align(self.ref_conv4(feats["layer3"]), rois, self.ref_pool[1], self.scales[1])
        v = torch.cat([self.ref_fc3(r3).flatten(1), self.ref_fc4(r4).flatten(1)], dim=1)
        return self.mod3(v), self.mod4(v)

    def test_features(self, feats: Dict[str, Tensor], modulation: Modulation,
                      region: Optional[Sequence[float]] = None) -> TestFeatures:
        """Modulated test maps, computed once per frame and reused for every candidate and step.

        Args:
            feats: backbone maps of the test crops (B images).
            modulation: from :meth:`reference`, (B, P3), (B, P4) (B may be 1 and broadcast).
            region: optional (x1, y1, x2, y2) crop pixels that every box later passed to :meth:`score`
                stays inside. Only the cells this region reads are computed (exactly the values of the
                whole map there): refinement touches a small part of the search region, and the test
                convolutions are the largest cost of box estimation. Boxes that leave the region see
                its border cells repeated, not the rest of the map.
        Returns:
            :class:`TestFeatures` with (B, P3, h3, w3) and (B, P4, h4, w4) maps.
        """
        l2, l3 = feats["layer2"], feats["layer3"]
        if region is None:
            t3, t4, offset = self.test_conv3(l2), self.test_conv4(l3), (0.0, 0.0)
        else:
            (r0, r1), (c0, c1), unit = self._window(region, l3.shape[-2:])
            # A window reaching the stride-16 map's last cell also takes the stride-8 map's last one
            # (odd crop sizes), so that its border is the map's border.
            e2r = 2 * r1 if r1 < l3.shape[-2] else l2.shape[-2]
            e2c = 2 * c1 if c1 < l3.shape[-1] else l2.shape[-1]
            t3 = _conv_on_window(self.test_conv3, l2, 2 * r0, e2r, 2 * c0, e2c)
            t4 = _conv_on_window(self.test_conv4, l3, r0, r1, c0, c1)
            offset = (c0 * unit, r0 * unit)
        return TestFeatures(t3 * modulation[0][:, :, None, None], t4 * modulation[1][:, :, None, None], offset)

    def _window(self, region: Sequence[float], shape4: Sequence[int]):
        """Rows r0:r1, cols c0:c1 of the stride-16 map whose cells (and their stride-8 children) hold
        every cell centre that bilinear sampling inside ``region`` reads, plus the cell size in pixels."""
        unit = 1.0 / self.scales[1]
        x1, y1, x2, y2 = (float(v) for v in region)
        h4, w4 = int(shape4[0]), int(shape4[1])
        c0 = min(max(0, math.floor(x1 / unit) - 1), w4 - 1)
        r0 = min(max(0, math.floor(y1 / unit) - 1), h4 - 1)
        c1 = max(min(w4, math.ceil(x2 / unit) + 1), c0 + 1)
        r1 = max(min(h4, math.ceil(y2 / unit) + 1), r0 + 1)
        return (r0, r1), (c0, c1), unit

    def score(self, test_feats: TestFeatures, boxes: Tensor) -> Tensor:
        """f for candidate boxes.

        Args:
            test_feats: from :meth:`test_features` for B images.
            boxes: (B, M, 4) candidates, xyxy crop pixels (gradients flow to them).
        Returns:
            (B, M) scalar outputs (energy-as-score, or IoU prediction for the IoU-Net variant).
        """
        b, m, _ = boxes.shape
        return self.score_pooled(*self.pool(test_feats, boxes)).reshape(b, m)

    def pool(self, test_feats: TestFeatures, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """The boxes' pooled test features, the first half of :meth:`score`.

        Args:
            test_feats: (B images) maps from :meth:`test_features`, or the same structure unmodulated.
            boxes: (B, M, 4) xyxy crop pixels.
        Returns:
            (B M, P3, p3, p3), (B M, P4, p4, p4) with p3, p4 the ``test_pool`` sizes. Pooling is linear
            in the maps, so pooling unmodulated maps and multiplying by the modulation per channel after
            gives the same values (what first-frame adaptation relies on).
        """
        b = boxes.shape[0]
        if not isinstance(test_feats, TestFeatures):
            test_feats = TestFeatures(*test_feats)
        if test_feats.offset != (0.0, 0.0):
            ox, oy = test_feats.offset
            boxes = boxes - boxes.new_tensor([ox, oy, ox, oy])
        # One pooling call per image: every image has the same M boxes. (b = 1 while tracking.)
        pool = separable_box_roi_align if boxes.shape[1] <= _SEPARABLE_MAX_BOXES else _grid_roi_align
        parts3, parts4 = [], []
        for i in range(b):
            parts3.append(pool(test_feats.level3[i], boxes[i], self.test_pool[0], self.scales[0]))
            parts4.append(pool(test_feats.level4[i], boxes[i], self.test_pool[1], self.scales[1]))
        return (parts3[0] if b == 1 else torch.cat(parts3)), (parts4[0] if b == 1 else torch.cat(parts4))

    def score_pooled(self, x3: Tensor, x4: Tensor) -> Tensor:
        """The box layers on pooled features from :meth:`pool`: (K, P3, p3, p3), (K, P4, p4, p4) -> (K,)."""
        h = torch.cat([self.box_fc3(x3.flatten(1)), self.box_fc4(x4.flatten(1))], dim=1)
        return self.head(h).reshape(-1)

    def box_energy(self, test_feats: TestFeatures) -> "BoxEnergy":
        """The refinement fast path for one image: a callable (M, 4) boxes -> f (M,), df/dbox (M, 4).

        Prepares the pooling of both levels and the reordered box layers once; every call is then a
        few dozen tensor operations without autograd (see :class:`BoxEnergy`).
        """
        return BoxEnergy(self, test_feats)

    def forward(self, ref_feats: Dict[str, Tensor], ref_boxes: Tensor, test_feats: Dict[str, Tensor],
                test_boxes: Tensor) -> Tensor:
        """Full pass: (B, 4) reference boxes, (B, M, 4) test candidates -> (B, M) scores."""
        return self.score(self.test_features(test_feats, self.reference(ref_feats, ref_boxes)), test_boxes)


class BoxEnergy:
    """f(x, y) and its box gradient for one image's candidates, with the backward written out.

    Same values as :meth:`EnergyBoxEstimator.score` and autograd through it (tested). The two
    per-level box layers take their weights reordered to the pooling's bin-major layout
    (:func:`~ebm_refine.core.separable_pool.bin_major_weight`), so nothing is copied per call.
    Weights are read when this object is built: build a new one after changing the network.
    """

    def __init__(self, estimator: EnergyBoxEstimator, test_feats: TestFeatures):
        if not isinstance(test_feats, TestFeatures):
            test_feats = TestFeatures(*test_feats)
        if test_feats.level3.shape[0] != 1:
            raise ValueError("BoxEnergy takes the test features of one image")
        est = estimator
        with torch.no_grad():
            self.levels = []
            for feat, bins, scale, fc in ((test_feats.level3, est.test_pool[0], est.scales[0], est.box_fc3[0]),
                                          (test_feats.level4, est.test_pool[1], est.scales[1], est.box_fc4[0])):
                pool = SeparableRoIAlign(feat[0], bins, scale, offset=test_feats.offset)
                weight = bin_major_weight(fc.weight, feat.shape[1], bins)  # (K, Pw * C * Ph)
                self.levels.append((pool, weight, fc.bias))
            self.split = est.box_fc3[0].out_features
            self.head_weight = est.head.weight[0].detach()
            self.head_bias = est.head.bias.detach()

    def _forward(self, boxes: Tensor):
        m = boxes.shape[0]
        pre, states = [], []
        for pool, weight, bias in self.levels:
            pooled, state = pool.forward(boxes)
            pre.append(torch.addmm(bias, pooled.view(m, -1), weight.t()))
            states.append(state)
        hidden = torch.cat(pre, dim=1)  # (M, i3 + i4) before the ReLU
        return torch.addmv(self.head_bias, torch.relu(hidden), self.head_weight), hidden, states

    @torch.no_grad()
    def value(self, boxes: Tensor) -> Tensor:
        """(M, 4) boxes -> (M,) scores alone (the same numbers as :meth:`__call__`'s, no backward pass);
        the refiner scores its last candidates with it."""
        return self._forward(boxes)[0]

    @torch.no_grad()
    def __call__(self, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        """(M, 4) xyxy crop-pixel boxes -> (M,) scores, (M, 4) gradients w.r.t. the coordinates."""
        m = boxes.shape[0]
        scores, hidden, states = self._forward(boxes)
        grad_hidden = self.head_weight * (hidden > 0)
        grads = []
        for (pool, weight, _), state, g in zip(self.levels, states,
                                                  (grad_hidden[:, :self.split], grad_hidden[:, self.split:])):
            grad_pooled = (g @ weight).view(m, pool.pw, pool.channels, pool.ph)
            grads.append(pool.box_grad(state, grad_pooled))
        return scores, grads[0] + grads[1]


def _conv_on_window(conv: nn.Module, x: Tensor, r0: int, r1: int, c0: int, c1: int) -> Tensor:
    """``conv(x)[..., r0:r1, c0:c1]`` computed from the input cells it depends on only.

    The input is cut with a margin of the convolutions' receptive-field radius (clipped at the map's
    border, where the zero padding is the same as for the whole map), so the kept cells are exact.
    """
    h, w = x.shape[-2:]
    r1, c1 = min(r1, h), min(c1, w)
    pad = _receptive_radius(conv)
    a0, a1, b0, b1 = max(0, r0 - pad), min(h, r1 + pad), max(0, c0 - pad), min(w, c1 + pad)
    y = conv(x[..., a0:a1, b0:b1])
    return y[..., r0 - a0:r1 - a0, c0 - b0:c1 - b0]


def _receptive_radius(module: nn.Module) -> int:
    """Receptive-field radius, in cells, of a stack of stride-1 convolutions (2 for two 3x3 ones): the sum of
    each one's dilation * (kernel - 1) / 2, read from the layers so a changed test branch stays exact."""
    radius = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            k = conv.kernel_size
            if conv.stride != (1, 1) or k[0] != k[1] or k[0] % 2 == 0:
                raise ValueError(f"windowed test maps need square, odd, stride-1 convolutions, got {conv}")
            radius += conv.dilation[0] * (conv.kernel_size[0] - 1) // 2
    return radius


def _grid_roi_align(feature: Tensor, boxes: Tensor, output_size: int, spatial_scale: float) -> Tensor:
    """(C, H, W) map, (R, 4) boxes -> (R, C, P, P) with the sampling-grid RoI Align."""
    return box_roi_align(feature[None], [boxes], output_size, spatial_scale)
