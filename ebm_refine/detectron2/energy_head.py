"""Energy networks f(x, y) for the EBM ROI head, and their registry.

An energy head maps RoI features pooled at box y (pooling is differentiable w.r.t. y) and the
class of the object to a scalar score. Register new designs with ``@ENERGY_HEAD_REGISTRY.register()``
and select them with ``MODEL.EBM.HEAD.NAME``.
"""
from __future__ import annotations

from typing import Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry
from torch import Tensor, nn

__all__ = ["ENERGY_HEAD_REGISTRY", "FCEnergyHead", "build_energy_head"]

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


def build_energy_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the energy head named by ``cfg.MODEL.EBM.HEAD.NAME``."""
    return ENERGY_HEAD_REGISTRY.get(cfg.MODEL.EBM.HEAD.NAME)(cfg, input_shape)
