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

from typing import Dict, Sequence, Tuple

import torch
from torch import Tensor, nn

from ebm_refine.core.roi_pool import box_roi_align

__all__ = ["EnergyBoxEstimator", "Modulation", "TestFeatures"]

Modulation = Tuple[Tensor, Tensor]  # (B, C3), (B, C4)
TestFeatures = Tuple[Tensor, Tensor]  # (B, C3, H/8, W/8), (B, C4, H/16, W/16)


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

    def test_features(self, feats: Dict[str, Tensor], modulation: Modulation) -> TestFeatures:
        """Modulated test maps, computed once per frame and reused for every candidate and step.

        Args:
            feats: backbone maps of the test crops (B images).
            modulation: from :meth:`reference`, (B, P3), (B, P4) (B may be 1 and broadcast).
        Returns:
            (B, P3, H/8, W/8), (B, P4, H/16, W/16).
        """
        t3 = self.test_conv3(feats["layer2"]) * modulation[0][:, :, None, None]
        t4 = self.test_conv4(feats["layer3"]) * modulation[1][:, :, None, None]
        return t3, t4

    def score(self, test_feats: TestFeatures, boxes: Tensor) -> Tensor:
        """f for candidate boxes.

        Args:
            test_feats: from :meth:`test_features` for B images.
            boxes: (B, M, 4) candidates, xyxy crop pixels (gradients flow to them).
        Returns:
            (B, M) scalar outputs (energy-as-score, or IoU prediction for the IoU-Net variant).
        """
        b, m, _ = boxes.shape
        # One pooling call per image: every image has the same M boxes, and the single-image path of
        # box_roi_align avoids scattering results back into a shared buffer. (b = 1 while tracking.)
        parts3, parts4 = [], []
        for i in range(b):
            parts3.append(box_roi_align(test_feats[0][i:i + 1], [boxes[i]], self.test_pool[0], self.scales[0]))
            parts4.append(box_roi_align(test_feats[1][i:i + 1], [boxes[i]], self.test_pool[1], self.scales[1]))
        x3 = (parts3[0] if b == 1 else torch.cat(parts3)).flatten(1)
        x4 = (parts4[0] if b == 1 else torch.cat(parts4)).flatten(1)
        h = torch.cat([self.box_fc3(x3), self.box_fc4(x4)], dim=1)
        return self.head(h).reshape(b, m)

    def forward(self, ref_feats: Dict[str, Tensor], ref_boxes: Tensor, test_feats: Dict[str, Tensor],
                test_boxes: Tensor) -> Tensor:
        """Full pass: (B, 4) reference boxes, (B, M, 4) test candidates -> (B, M) scores."""
        return self.score(self.test_features(test_feats, self.reference(ref_feats, ref_boxes)), test_boxes)
