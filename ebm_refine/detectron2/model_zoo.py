"""Locate the shipped Detectron2 configs and trained models, from a source checkout or an installed package.

A shipped model is a config under ``configs/`` plus a trained checkpoint under ``checkpoints/<name>/``
(``model_final.pth`` and the ``config.yaml`` it was trained with). :data:`SHIPPED_MODELS` names them:

* ``detection/ebm_yolox_nano``: YOLOX-nano (``COCO-Detection/ebm_yolox_nano.yaml``; its weights are not shipped,
  ``MODEL.WEIGHTS: yolox_nano.onnx`` is looked up in the weights folder) with the shipped energy head as
  ``MODEL.EBM.HEAD.WEIGHTS``.
"""
from __future__ import annotations

import os
from typing import List, Optional

from ..utils.resources import MissingResourceError, list_resources, resource_path

__all__ = ["ebm_config_path", "get_ebm_cfg", "list_ebm_configs", "SHIPPED_MODELS", "shipped_checkpoint",
           "get_shipped_model_cfg"]

# shipped model -> (config under configs/, the key its checkpoint fills)
SHIPPED_MODELS = {
    "detection/ebm_yolox_nano": ("COCO-Detection/ebm_yolox_nano.yaml", "MODEL.EBM.HEAD.WEIGHTS"),
}


def ebm_config_path(relative: str) -> str:
    """Absolute path of a shipped config, e.g. ``"COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x.yaml"``."""
    path = resource_path("configs", must_exist=True) / relative
    if not path.is_file():
        raise MissingResourceError(f"no shipped config {relative!r}; available: {', '.join(list_ebm_configs())}")
    return str(path)


def list_ebm_configs() -> List[str]:
    """The shipped Detectron2 configs, relative to ``configs/`` (tracker parameter files excluded)."""
    return [p for p in list_resources("configs", "*.yaml") if not p.startswith("tracking/")]


def get_ebm_cfg(relative: Optional[str] = None, opts: Optional[list] = None):
    """A Detectron2 CfgNode with the EBM keys, optionally merged with a shipped config and ``opts``."""
    from .engine import load_config

    return load_config(ebm_config_path(relative) if relative is not None else None, opts)


def _check_name(name: str) -> None:
    if name not in SHIPPED_MODELS:
        raise MissingResourceError(f"no shipped model {name!r}; available: {', '.join(SHIPPED_MODELS)}")


def shipped_checkpoint(name: str, must_exist: bool = True) -> str:
    """Absolute path of the shipped model ``name``'s ``model_final.pth`` (e.g. ``"detection/ebm_yolox_nano"``).

    Raises:
        MissingResourceError: ``name`` is not in :data:`SHIPPED_MODELS`, or ``must_exist`` and this copy lacks
            the file.
    """
    _check_name(name)
    return str(resource_path(f"checkpoints/{name}/model_final.pth", must_exist=must_exist))


def get_shipped_model_cfg(name: str, opts: Optional[list] = None):
    """The shipped model ``name``'s config with its checkpoint filled in when this copy has it, then ``opts``
    (so ``opts`` may name another checkpoint). Without the checkpoint the key keeps the config's value."""
    path = shipped_checkpoint(name, must_exist=False)
    config, key = SHIPPED_MODELS[name]
    default = [key, path] if os.path.isfile(path) else []
    return get_ebm_cfg(config, default + list(opts or []))
