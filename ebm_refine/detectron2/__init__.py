"""Detectron2 plugin: the EBM ROI head and everything to train and evaluate it.

Importing this package registers ``EBMRCNN``, ``EBMBoxRefiner``, ``YOLOX`` and ``EBMYOLOX`` (META_ARCH_REGISTRY),
``EBMROIHeads`` and ``EnergyROIHeads`` (ROI_HEADS_REGISTRY), ``FCEnergyHead`` and ``WeldonEnergyHead``
(ENERGY_HEAD_REGISTRY), ``build_compact_fpn_backbone``, ``build_mobilenet_v2_fpn_backbone`` and
``build_yolox_backbone`` (BACKBONE_REGISTRY) and datasets
(DatasetCatalog, see :mod:`.datasets`). DeepGUM outlier-robust training is ``MODEL.EBM.ROBUST`` (see
:mod:`.energy`); the outlier experiment is :mod:`.outlier_benchmark` (annotation noise: :mod:`.annotation_noise`).
Typical use::

    from ebm_refine.detectron2 import EBMTrainer, ebm_config_path, load_config
    cfg = load_config(ebm_config_path("COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x.yaml"))
    trainer = EBMTrainer(cfg); trainer.resume_or_load(); trainer.train()
"""
import warnings

with warnings.catch_warnings():
    # Detectron2 (modeling/box_regression.py) and fvcore (nn/focal_loss.py) compile functions with
    # torch.jit.script when imported, which torch deprecates: two FutureWarnings on every command, that nobody
    # here can act on. Silenced for this first import only; later torch.jit.script calls still warn.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import detectron2.modeling  # noqa: F401

from . import datasets  # noqa: F401  (registers the synthetic benchmark)
from .backbone import CompactResNet, build_compact_fpn_backbone
from .box_change import BoxChangeEvaluator
from .checkpoint import CheckpointError, EBMCheckpointer
from .config import ConfigValueError, add_ebm_config, validate_ebm_config
from .model_zoo import ebm_config_path, get_ebm_cfg, get_shipped_model_cfg, shipped_checkpoint
from .data import CheckedDatasetMapper, check_annotations, load_dataset_dicts
from .detections import DetectionsMapper, RefinedDetectionsWriter, load_detections_into_dataset
from .energy_head import ENERGY_HEAD_REGISTRY, FCEnergyHead, WeldonEnergyHead, build_energy_head
from .engine import EBMTrainer, load_config
from .evaluation import RefinementCOCOEvaluator, format_refinement_table
from .meta_arch import EBMRCNN, freeze_detector
from .mobilenet import MobileNetV2Trunk, build_mobilenet_v2_fpn_backbone
from .postprocessing import ebm_detector_postprocess
from .predictor import EBMPredictor
from .refiner import EBMBoxRefiner, EnergyROIHeads
from .roi_heads import EBMROIHeads
from .yolox import YOLOXHead, YOLOXTrunk, build_yolox_backbone
from .yolox_detector import EBMYOLOX, YOLOX

__all__ = [
    "add_ebm_config",
    "validate_ebm_config",
    "ConfigValueError",
    "load_config",
    "get_ebm_cfg",
    "ebm_config_path",
    "get_shipped_model_cfg",
    "shipped_checkpoint",
    "EBMRCNN",
    "EBMROIHeads",
    "EBMBoxRefiner",
    "EnergyROIHeads",
    "DetectionsMapper",
    "RefinedDetectionsWriter",
    "load_detections_into_dataset",
    "BoxChangeEvaluator",
    "MobileNetV2Trunk",
    "build_mobilenet_v2_fpn_backbone",
    "freeze_detector",
    "ebm_detector_postprocess",
    "ENERGY_HEAD_REGISTRY",
    "FCEnergyHead",
    "WeldonEnergyHead",
    "build_energy_head",
    "EBMTrainer",
    "RefinementCOCOEvaluator",
    "format_refinement_table",
    "EBMCheckpointer",
    "EBMPredictor",
    "CheckpointError",
    "CheckedDatasetMapper",
    "check_annotations",
    "load_dataset_dicts",
    "CompactResNet",
    "build_compact_fpn_backbone",
    "YOLOX",
    "EBMYOLOX",
    "YOLOXTrunk",
    "YOLOXHead",
    "build_yolox_backbone",
]
