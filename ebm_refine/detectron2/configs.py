"""Locate the shipped YAML configs, from a source checkout or an installed package."""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import List, Optional

__all__ = ["ebm_config_path", "get_ebm_cfg", "list_ebm_configs"]


def _config_root() -> Path:
    # Source checkout (also editable installs): <repo>/configs next to the package.
    repo = Path(__file__).resolve().parents[2] / "configs"
    if (repo / "Base-EBM-RCNN-FPN.yaml").is_file():
        return repo
    # Installed wheel: setup.py ships configs/ as the data package ebm_refine.configs.
    return Path(str(importlib.resources.files("ebm_refine.configs")))


def ebm_config_path(relative: str) -> str:
    """Absolute path of a shipped config, e.g. ``"COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x.yaml"``."""
    path = _config_root() / relative
    if not path.is_file():
        raise FileNotFoundError(f"no shipped config {relative!r}; available: {list_ebm_configs()}")
    return str(path)


def list_ebm_configs() -> List[str]:
    root = _config_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.yaml"))


def get_ebm_cfg(relative: Optional[str] = None, opts: Optional[list] = None):
    """A Detectron2 CfgNode with the EBM keys, optionally merged with a shipped config and ``opts``."""
    from detectron2.config import get_cfg

    from .config import add_ebm_config

    cfg = get_cfg()
    add_ebm_config(cfg)
    if relative is not None:
        cfg.merge_from_file(ebm_config_path(relative))
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg
