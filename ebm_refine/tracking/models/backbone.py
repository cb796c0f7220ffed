"""Frozen ImageNet backbones that expose a stride-8 and a stride-16 feature map.

ATOM reads two levels of a ResNet-18: ``layer2`` (stride 8) and ``layer3`` (stride 16). The box
estimator uses both, the online classifier uses ``layer3``. We keep those names for every backbone so
that the rest of the tracker does not care which trunk it runs on:

==============  =================  ==================
backbone        ``layer2`` (s=8)   ``layer3`` (s=16)
==============  =================  ==================
resnet18        128 channels       256 channels
resnet50        512 channels       1024 channels
mobilenet_v2    32 (features[:7])  96 (features[:14])
==============  =================  ==================

Weights: ``None`` (random init, for tests), ``"imagenet"`` (torchvision's weights API, needs network
access the first time), or a path to a local state dict (torchvision key names; extra keys such as a
classifier are ignored, missing trunk keys are an error).

Inputs are RGB images as float tensors in [0, 255] (the crops the tracker samples); ImageNet
normalisation happens inside :meth:`Backbone.forward`.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ...models.imagenet import IMAGENET_MEAN, IMAGENET_STD, fold_batchnorm, imagenet_trunk, resolve_weights

__all__ = ["Backbone", "BACKBONES", "build_backbone"]

# name -> (layer2 channels, layer3 channels)
BACKBONES: Dict[str, tuple] = {
    "resnet18": (128, 256),
    "resnet50": (512, 1024),
    "mobilenet_v2": (32, 96),
}
STRIDES = {"layer2": 8, "layer3": 16}

class Backbone(nn.Module):
    """Truncated torchvision trunk returning ``{'layer2': (B, C2, H/8, W/8), 'layer3': (B, C3, H/16, W/16)}``.

    Args:
        name: ``resnet18``, ``resnet50`` or ``mobilenet_v2``.
        weights: None, ``"imagenet"`` or a local ``.pth`` state-dict path (see module docstring).
        frozen: no gradients and BatchNorm kept in eval mode (ATOM trains only the box estimator).
    """

    def __init__(self, name: str = "resnet18", weights: Optional[str] = None, frozen: bool = True):
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
        self.name = name
        self.frozen = frozen
        # Only the parts of the trunk we use must be in a weights file; the classifier / layer4 may be missing.
        used = [f"features.{i}." for i in range(14)] if name == "mobilenet_v2" else \
            ["conv1.", "bn1.", "layer1.", "layer2.", "layer3."]
        model = imagenet_trunk(name, weights, used)
        if name.startswith("resnet"):
            self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1)
            self.block2 = model.layer2
            self.block3 = model.layer3
        else:
            self.stem = nn.Identity()
            self.block2 = model.features[:7]
            self.block3 = model.features[7:14]
        self.out_channels = {"layer2": BACKBONES[name][0], "layer3": BACKBONES[name][1]}
        self.strides = dict(STRIDES)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        if frozen:
            self.eval()
            # Frozen BatchNorm is an affine map: fold it into the preceding convolution (about 15% of
            # the backbone's CPU time). The state dict then holds the fused weights.
            fold_batchnorm(self)
            for p in self.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        # A frozen backbone keeps its BatchNorm statistics: never switch it to training mode.
        return super().train(False if self.frozen else mode)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        """(B, 3, H, W) RGB in [0, 255] -> dict of stride-8 ``layer2`` and stride-16 ``layer3`` maps."""
        x = (images - self.mean) / self.std
        x = self.stem(x)
        l2 = self.block2(x)
        l3 = self.block3(l2)
        return {"layer2": l2, "layer3": l3}


def build_backbone(cfg: Dict) -> Backbone:
    """Backbone from a config dict ``{'name': ..., 'weights': ..., 'frozen': ...}``.

    A relative ``weights`` path is resolved against the current directory, then against
    ``$EBM_WEIGHTS_DIR`` (in a source checkout the default is ``<repo>/../shared/weights``) so the shared
    MobileNetV2 file can be named by its file name alone.
    """
    weights = resolve_weights(cfg.get("weights"))
    return Backbone(cfg.get("name", "resnet18"), weights, bool(cfg.get("frozen", True)))
