"""Detectron2 plugin: the EBM ROI head and everything to train and evaluate it.

Importing this package registers ``EBMROIHeads`` (ROI_HEADS_REGISTRY), ``FCEnergyHead``
(ENERGY_HEAD_REGISTRY), ``build_compact_fpn_backbone`` (BACKBONE_REGISTRY) and the synthetic
datasets ``ebm_synthetic_{train,val}`` (DatasetCatalog). Typical use::

    from detectron2.config import get_cfg
    from ebm_refine.detectron2 import add_ebm_config
    cfg = get_cfg(); add_ebm_config(cfg); cfg.merge_from_file(ebm_config_path("COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x.yaml"))
"""
from . import datasets  # noqa: F401  (registers the synthetic benchmark)
from .backbone import CompactResNet, build_compact_fpn_backbone
from .checkpoint import EBMCheckpointer
from .config import add_ebm_config
from .configs import ebm_config_path, get_ebm_cfg
from .energy_head import ENERGY_HEAD_REGISTRY, FCEnergyHead, build_energy_head
from .evaluation import RefinementCOCOEvaluator, format_refinement_table
from .roi_heads import EBMROIHeads, freeze_detector

__all__ = [
    "add_ebm_config",
    "get_ebm_cfg",
    "ebm_config_path",
    "EBMROIHeads",
    "freeze_detector",
    "ENERGY_HEAD_REGISTRY",
    "FCEnergyHead",
    "build_energy_head",
    "RefinementCOCOEvaluator",
    "format_refinement_table",
    "EBMCheckpointer",
    "CompactResNet",
    "build_compact_fpn_backbone",
]
