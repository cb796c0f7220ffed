"""A compact ResNet-style FPN backbone for CPU-sized experiments (the embedded synthetic benchmark).

Detectron2's ResNet-50-FPN is the backbone for COCO; on 2 CPU cores it is too slow to train in
minutes. This backbone keeps the same interface (outputs p2..p6 at strides 4..64 through Detectron2's
``FPN``) with narrow basic-block stages and GroupNorm (batch-size independent, trains from scratch).
"""
from __future__ import annotations

from typing import Dict, Sequence

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import Tensor, nn

__all__ = ["CompactResNet", "build_compact_fpn_backbone"]


def _norm(norm: str, channels: int) -> nn.Module:
    """Detectron2's norms, except that GN uses at most 32 groups of >= 4 channels (narrow stages)."""
    if norm == "GN":
        groups = max(1, min(32, channels // 4))
        while channels % groups:
            groups -= 1
        return nn.GroupNorm(groups, channels)
    return get_norm(norm, channels) or nn.Identity()


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        return self.act(y + (x if self.short is None else self.short(x)))


class CompactResNet(Backbone):
    """Stem (stride 2) + four stages of basic blocks at strides 4, 8, 16, 32, outputs res2..res5.

    Args:
        widths: channels of the four stages.
        blocks: basic blocks per stage.
        norm: Detectron2 norm name ("GN", "BN", "FrozenBN", "").
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 96, 128), blocks: Sequence[int] = (1, 1, 1, 1), norm: str = "GN"):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), _norm(norm, widths[0]), nn.ReLU(inplace=True)
        )
        self.stages = nn.ModuleList()
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [_BasicBlock(cin if j == 0 else w, w, 2 if j == 0 else 1, norm) for j in range(n)]
            self.stages.append(nn.Sequential(*layers))
            cin = w
        self._names = [f"res{i + 2}" for i in range(4)]
        self._out_feature_channels = dict(zip(self._names, widths))
        self._out_feature_strides = {n: 2 ** (i + 2) for i, n in enumerate(self._names)}
        self._out_features = list(self._names)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        x = self.stem(x)
        out = {}
        for name, stage in zip(self._names, self.stages):
            x = stage(x)
            out[name] = x
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]) for n in self._names}


@BACKBONE_REGISTRY.register()
def build_compact_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Compact ResNet + FPN. Uses MODEL.FPN.* and MODEL.COMPACT_RESNET.{WIDTHS,BLOCKS,NORM}."""
    c = cfg.MODEL.COMPACT_RESNET
    bottom_up = CompactResNet(c.WIDTHS, c.BLOCKS, c.NORM)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
