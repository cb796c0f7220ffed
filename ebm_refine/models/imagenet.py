"""torchvision ImageNet trunks with weights from torchvision's API or a local file.

Weights: ``None`` (random init, for tests), ``"imagenet"`` (torchvision's weights enum; downloads on first
use, so it needs network access once), or a path to a local state dict with torchvision's key names (extra
keys such as a classifier are ignored; missing tensors of the layers a caller uses are an error). A relative
path that does not exist is looked up in ``$EBM_WEIGHTS_DIR`` (in a source checkout the default is
``<repo>/../shared/weights``), so the project's MobileNetV2 file can be named by its file name alone.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torchvision
from torch import nn

from ..utils.errors import UserError
from ..utils.resources import find_weights
from ..utils.safe_load import read_torch_file

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TRUNKS", "imagenet_trunk", "resolve_weights", "fold_batchnorm",
           "WeightsError"]

# torchvision's ImageNet normalisation of RGB images in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (torchvision constructor, weights enum name)
TRUNKS = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "mobilenet_v2": ("mobilenet_v2", "MobileNet_V2_Weights"),
}


class WeightsError(UserError):
    """Backbone weights that are missing or do not fit the network."""


def resolve_weights(weights: Optional[str]) -> Optional[str]:
    """``weights`` with a relative, non-existent path looked up in ``$EBM_WEIGHTS_DIR`` (see module docstring)."""
    if weights is None or str(weights).lower() == "imagenet":
        return weights
    return find_weights(str(weights))


def imagenet_trunk(name: str, weights: Optional[str], required: Sequence[str]) -> nn.Module:
    """The torchvision classification model ``name`` with ImageNet (or no) weights.

    Args:
        name: a key of :data:`TRUNKS`.
        weights: None, ``"imagenet"`` or a local state-dict path (resolved with :func:`resolve_weights`).
        required: state-dict key prefixes the caller uses; a local file missing any tensor under them is a
            :class:`WeightsError`.
    """
    if name not in TRUNKS:
        raise UserError(f"unknown backbone {name!r}; expected one of {sorted(TRUNKS)}")
    ctor, enum = TRUNKS[name]
    use_api = weights is not None and str(weights).lower() == "imagenet"
    model = getattr(torchvision.models, ctor)(weights=getattr(torchvision.models, enum).IMAGENET1K_V1 if use_api else None)
    if weights is not None and not use_api:
        path = resolve_weights(str(weights))
        if not os.path.isfile(path):
            raise WeightsError(f"backbone weights {path} not found; pass a local state dict, or 'imagenet' "
                               "to download torchvision's")
        sd = read_torch_file(path, f"a {name} state dict", "pass a local state dict, or 'imagenet' to download "
                             "torchvision's")
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        result = model.load_state_dict(sd, strict=False)
        missing = [k for k in result.missing_keys if k.startswith(tuple(required))]
        if missing:
            raise WeightsError(f"{path}: weights for {name} lack {len(missing)} tensors the model uses, e.g. {missing[:3]}")
    return model


def fold_batchnorm(module: nn.Module) -> None:
    """Fuse every Conv2d -> BatchNorm2d pair (consecutive in a Sequential, or ``convN``/``bnN``
    attributes of a ResNet block) into one convolution, in place; the BatchNorm becomes Identity.

    Only for frozen trunks in eval mode: frozen BatchNorm is an affine map (about 15 % of a trunk's CPU time).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        fold_batchnorm(child)
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
