"""Locate the shipped Detectron2 configs, from a source checkout or an installed package."""
from __future__ import annotations

from typing import List, Optional

from ..utils.resources import MissingResourceError, list_resources, resource_path

__all__ = ["ebm_config_path", "get_ebm_cfg", "list_ebm_configs"]


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
