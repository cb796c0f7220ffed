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

import os
from typing import Dict, Optional

import torch
import torchvision
from torch import Tensor, nn

from ...utils.resources import source_checkout

__all__ = ["Backbone", "BACKBONES", "build_backbone"]

# name -> (layer2 channels, layer3 channels)
BACKBONES: Dict[str, tuple] = {
    "resnet18": (128, 256),
    "resnet50": (512, 1024),
    "mobilenet_v2": (32, 96),
}
STRIDES = {"layer2": 8, "layer3": 16}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _torchvision_model(name: str, imagenet: bool) -> nn.Module:
    if name == "resnet18":
        return torchvision.models.resnet18(
            weights=torchvision.models.ResNet18_Weights.IMAGENET1K_V1 if imagenet else None)
    if name == "resnet50":
        return torchvision.models.resnet50(
            weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1 if imagenet else None)
    if name == "mobilenet_v2":
        return torchvision.models.mobilenet_v2(
            weights=torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1 if imagenet else None)
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")


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
        use_api = weights is not None and str(weights).lower() == "imagenet"
        model = _torchvision_model(name, imagenet=use_api)
        if weights is not None and not use_api:
            _load_local_weights(model, str(weights), name)
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
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        if frozen:
            self.eval()
            # Frozen BatchNorm is an affine map: fold it into the preceding convolution (about 15% of
            # the backbone's CPU time). The state dict then holds the fused weights.
            _fold_batchnorm(self)
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


def _fold_batchnorm(module: nn.Module) -> None:
    """Fuse every Conv2d -> BatchNorm2d pair (consecutive in a Sequential, or ``convN``/``bnN``
    attributes of a ResNet block) into one convolution, in place; the BatchNorm becomes Identity."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        _fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        keys = list(module._modules.keys())
        for a, b in zip(keys[:-1], keys[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
    for i in range(1, 4):
        conv, bn = getattr(module, f"conv{i}", None), getattr(module, f"bn{i}", None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(module, f"conv{i}", fuse_conv_bn_eval(conv, bn))
            setattr(module, f"bn{i}", nn.Identity())


def _load_local_weights(model: nn.Module, path: str, name: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights not found: {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    result = model.load_state_dict(sd, strict=False)
    # Only the parts of the trunk we use must be present; the classifier / layer4 may be missing.
    used = ("features.",) if name == "mobilenet_v2" else ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")
    missing = [k for k in result.missing_keys if k.startswith(used)]
    if name == "mobilenet_v2":
        missing = [k for k in missing if int(k.split(".")[1]) < 14]
    if missing:
        raise ValueError(f"{path}: weights for {name} lack {len(missing)} trunk tensors, e.g. {missing[:3]}")


def build_backbone(cfg: Dict) -> Backbone:
    """Backbone from a config dict ``{'name': ..., 'weights': ..., 'frozen': ...}``.

    A relative ``weights`` path is resolved against the current directory, then against
    ``$EBM_WEIGHTS_DIR`` (in a source checkout the default is ``<repo>/../shared/weights``) so the shared
    MobileNetV2 file can be named by its file name alone.
    """
    weights = cfg.get("weights")
    if weights is not None and str(weights).lower() != "imagenet" and not os.path.isabs(str(weights)):
        if not os.path.isfile(str(weights)):
            repo = source_checkout()
            default = os.path.join(os.path.dirname(repo), "shared", "weights") if repo is not None else ""
            base = os.environ.get("EBM_WEIGHTS_DIR", default)
            if base:
                weights = os.path.join(base, str(weights))
    return Backbone(cfg.get("name", "resnet18"), weights, bool(cfg.get("frozen", True)))
