"""An ImageNet MobileNetV2 trunk with an FPN, in Detectron2's ``BACKBONE_REGISTRY``.

The trunk is torchvision's MobileNetV2 ``features`` cut into four stages (outputs ``res2``..``res5`` at
strides 4, 8, 16, 32 with 24, 32, 96, 320 channels; the final 1280-channel conv is not used). With
``MODEL.MOBILENET_V2.FROZEN`` (default) the ImageNet layers do not train: their BatchNorm is folded into
the convolutions and they stay in eval mode, so only the FPN (and heads) learn. Weights
(``MODEL.MOBILENET_V2.WEIGHTS``): ``"imagenet"`` (torchvision's weights enum, downloaded once), a local
state dict with torchvision's key names (the project's ``mobilenet_v2_imagenet_features.pth`` can be named
by file name, see :mod:`ebm_refine.models.imagenet`), or ``""`` (random, for tests).

Images go in as Detectron2 normalises them: set ``INPUT.FORMAT: RGB`` and ImageNet's mean / std in 0..255
(``MODEL.PIXEL_MEAN: [123.675, 116.28, 103.53]``, ``MODEL.PIXEL_STD: [58.395, 57.12, 57.375]``), as the
shipped ``COCO-Refine`` configs do.
"""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import Tensor, nn

from ..models.imagenet import fold_batchnorm, imagenet_trunk

__all__ = ["MobileNetV2Trunk", "build_mobilenet_v2_fpn_backbone"]

# res_i -> (first, last + 1) index into torchvision's mobilenet_v2().features, and output channels.
_STAGES = {"res2": (0, 4, 24), "res3": (4, 7, 32), "res4": (7, 14, 96), "res5": (14, 18, 320)}
_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class MobileNetV2Trunk(Backbone):
    """MobileNetV2 ``features[0:18]`` as four stages returning ``res2``..``res5`` (see module docstring).

    Args:
        weights: ``"imagenet"``, a local state-dict path, or None / ``""`` (random initialisation).
        frozen: keep the ImageNet layers fixed (BatchNorm folded, eval mode, no gradients).
        out_features: the stages to return.
    """

    def __init__(self, weights=None, frozen: bool = True, out_features=("res2", "res3", "res4", "res5")):
        super().__init__()
        required = [f"features.{i}." for i in range(18)]
        features = imagenet_trunk("mobilenet_v2", weights or None, required).features
        last = max(_STAGES[f][1] for f in out_features)
        self.stages = nn.ModuleDict()
        for name, (first, end, _) in _STAGES.items():
            if first < last:
                self.stages[name] = features[first:end]
        self._out_features = list(out_features)
        self._out_feature_channels = {f: _STAGES[f][2] for f in out_features}
        self._out_feature_strides = {f: _STRIDES[f] for f in out_features}
        self.frozen = frozen
        if frozen:
            self.eval()
            fold_batchnorm(self)
            for p in self.parameters():
                p.requires_grad_(False)
        # Channels-last: PyTorch's CPU convolutions take the oneDNN path for MobileNet's 1x1 and depthwise
        # layers (about 1.7x faster than the default layout here); outputs go on in that layout.
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "MobileNetV2Trunk":
        # Frozen ImageNet layers keep their statistics: never in training mode.
        return super().train(False if self.frozen else mode)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """(B, 3, H, W) normalised RGB -> {res_i: (B, C_i, H / s_i, W / s_i)} for the requested stages."""
        out = {}
        x = x.contiguous(memory_format=torch.channels_last)
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self._out_features:
                out[name] = x
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
                for f in self._out_features}


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """MobileNetV2 trunk + FPN (p2..p6). Uses MODEL.MOBILENET_V2.* and MODEL.FPN.*."""
    c = cfg.MODEL.MOBILENET_V2
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3-channel images, got {input_shape.channels}")
    trunk = MobileNetV2Trunk(c.WEIGHTS, c.FROZEN, cfg.MODEL.FPN.IN_FEATURES)
    return FPN(
        bottom_up=trunk,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
