"""``EBMBoxRefiner``: refine another detector's boxes with an energy head on an ImageNet backbone.

The paper's use of an EBM is the refinement of an existing detector's boxes. This meta-architecture has
no detector of its own: a backbone (e.g. MobileNetV2-FPN) and ``EnergyROIHeads`` (the energy head only).

* Training (any registered COCO-format dataset): the EBM loss on noisy boxes drawn around each ground
  truth, as in ``EBMROIHeads`` (ML-IS, NCE, ..., or the IoU-Net-style ``iou_confidence`` baseline).
* Inference: each input carries ``"detections"`` (Instances in the network's input resolution with
  ``pred_boxes`` xyxy, ``pred_classes``, ``scores``; :class:`~.detections.DetectionsMapper` makes them),
  in the way Detectron2 inputs carry precomputed ``"proposals"``. All detections of a batch are refined in
  one batched call; outputs are rescaled to the original image like ``EBMRCNN``'s (refined
  ``pred_boxes``, ``pred_boxes_unrefined``, ``pred_energies``, scores and classes unchanged).

On YOLOX-nano's frozen trunk (``build_yolox_backbone``, ``configs/COCO-Refine/*_yolox_nano.yaml``) the energy
reads the COCO-trained p3..p5 (strides 8 / 16 / 32): images are letterboxed as YOLOX's
(``INPUT.LETTERBOX_SIZE``; batches padded with its grey) and boxes go back by the letterbox factor. The trunk's
weights come from ``MODEL.WEIGHTS``; training refuses a trunk they did not reach (an untrained frozen trunk),
unless ``MODEL.EBM.ALLOW_UNTRAINED_DETECTOR``.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, build_roi_heads
from detectron2.structures import ImageList, Instances
from torch import Tensor, nn

from ..utils.errors import UserError
from .config import ConfigValueError, validate_ebm_config
from .data import letterbox_scale
from .energy import EnergyMixin, energy_from_config
from .meta_arch import UntrainedDetectorError
from .postprocessing import ebm_detector_postprocess

__all__ = ["EBMBoxRefiner", "EnergyROIHeads"]


@ROI_HEADS_REGISTRY.register()
class EnergyROIHeads(EnergyMixin, nn.Module):
    """ROI heads with only the energy head: the EBM loss in training, refinement of given boxes at test.

    Keyword arguments: those of :meth:`EnergyMixin.init_energy` (:func:`energy_from_config` builds them
    from ``MODEL.EBM`` on ``MODEL.ROI_HEADS.IN_FEATURES``).
    """

    @configurable
    def __init__(self, **energy):
        super().__init__()
        self.init_energy(**energy)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        if cfg.MODEL.EBM.ROBUST.ENABLED and cfg.MODEL.EBM.ROBUST.RESIDUAL == "detector":
            raise ConfigValueError("MODEL.EBM.ROBUST.RESIDUAL 'detector' takes residuals from Faster R-CNN's box "
                                   f"regression; {cfg.MODEL.ROI_HEADS.NAME} (the box refiner's energy-only head) has "
                                   "none: set MODEL.EBM.ROBUST.RESIDUAL 'energy'")
        validate_ebm_config(cfg)
        if cfg.MODEL.EBM.ROBUST.BOX_REG:
            raise ConfigValueError("MODEL.EBM.ROBUST.BOX_REG weights Faster R-CNN's box-regression loss; "
                                   f"{cfg.MODEL.ROI_HEADS.NAME} (the box refiner's energy-only head) has none: set "
                                   "MODEL.EBM.ROBUST.BOX_REG False (ROBUST.ENABLED still weights the EBM loss)")
        return energy_from_config(cfg, input_shape, cfg.MODEL.ROI_HEADS.IN_FEATURES)

    def forward(self, features: Dict[str, Tensor], detections: List[Instances]) -> List[Instances]:
        """Refine ``detections`` (per image, in the features' input resolution) in place; returns them."""
        if not sum(len(d) for d in detections):
            return self.nothing_to_refine(detections)
        return self.refine_instances(self.energy_features(features), detections)

    @staticmethod
    def nothing_to_refine(detections: List[Instances]) -> List[Instances]:
        """Give detection-free images the output fields of refined ones (empty); returns them."""
        for d in detections:
            d.pred_boxes_unrefined = d.pred_boxes
            d.pred_energies = d.pred_energies_unrefined = d.scores.new_zeros(0)
        return detections


@META_ARCH_REGISTRY.register()
class EBMBoxRefiner(nn.Module):
    """Backbone + :class:`EnergyROIHeads` (see module docstring).

    Args:
        backbone: a Detectron2 backbone (trunk + FPN).
        roi_heads: an :class:`EnergyROIHeads` on the backbone's outputs.
        pixel_mean, pixel_std: per-channel normalisation of the input images (0..255 scale).
        input_format: channel order the backbone expects ("RGB" / "BGR").
        letterbox_size: YOLOX's letterbox input side (``INPUT.LETTERBOX_SIZE``), 0 = Detectron2's resize.
        allow_untrained_backbone: train even if a backbone whose weights come from ``MODEL.WEIGHTS`` (one with
            ``weights_from_checkpoint``, YOLOX's) did not get them.
    """

    @configurable
    def __init__(self, *, backbone: nn.Module, roi_heads: EnergyROIHeads, pixel_mean, pixel_std,
                 input_format: str = "RGB", letterbox_size: int = 0, allow_untrained_backbone: bool = False):
        super().__init__()
        if not isinstance(roi_heads, EnergyROIHeads):
            raise UserError(f"MODEL.META_ARCHITECTURE EBMBoxRefiner needs MODEL.ROI_HEADS.NAME 'EnergyROIHeads', "
                            f"got {type(roi_heads).__name__}")
        self.backbone = backbone
        self.roi_heads = roi_heads
        self.input_format = input_format
        self.letterbox_size = letterbox_size
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.allow_untrained_backbone = allow_untrained_backbone
        self.backbone_weights_loaded = not getattr(backbone, "weights_from_checkpoint", False)
        self.register_load_state_dict_post_hook(EBMBoxRefiner._after_load_state_dict)

    @staticmethod
    def _after_load_state_dict(module: "EBMBoxRefiner", incompatible) -> None:
        if getattr(module.backbone, "weights_from_checkpoint", False):
            module.backbone_weights_loaded = not any(k.startswith("backbone.") for k in incompatible.missing_keys)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "roi_heads": build_roi_heads(cfg, backbone.output_shape()),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "letterbox_size": cfg.INPUT.LETTERBOX_SIZE,
            "allow_untrained_backbone": cfg.MODEL.EBM.ALLOW_UNTRAINED_DETECTOR,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility,
                                      pad_value=getattr(self.backbone, "pad_value", 0.0),
                                      padding_constraints=self.backbone.padding_constraints)

    def forward(self, batched_inputs: List[dict]):
        """Training: ``{"loss_ebm"}`` from inputs with ``instances``. Inference: see :meth:`inference`."""
        if not self.training:
            return self.inference(batched_inputs)
        if not self.backbone_weights_loaded and not self.allow_untrained_backbone:
            raise UntrainedDetectorError(
                f"{type(self.backbone).__name__}: the frozen trunk's weights come from MODEL.WEIGHTS and did not load "
                "(empty MODEL.WEIGHTS?); the energy head would learn random features. Set MODEL.WEIGHTS (e.g. the "
                "converted yolox_nano.pth), or MODEL.EBM.ALLOW_UNTRAINED_DETECTOR True")
        images = self.preprocess_image(batched_inputs)
        targets = [x["instances"].to(self.device) for x in batched_inputs]
        return self.roi_heads.ebm_loss_dict(self.backbone(images.tensor), targets)

    def inference(self, batched_inputs: List[dict], do_postprocess: bool = True):
        """Refine each input's ``"detections"``; returns ``[{"instances": Instances}]`` in the original size."""
        missing = [i for i, x in enumerate(batched_inputs) if "detections" not in x]
        if missing:
            raise UserError("EBMBoxRefiner refines given detections: the inputs need a 'detections' field "
                            "(use DetectionsMapper, or DATASETS.DETECTION_FILES_TEST with tools/train_net.py)")
        detections = [x["detections"].to(self.device) for x in batched_inputs]
        if sum(len(d) for d in detections):
            images = self.preprocess_image(batched_inputs)
            self.roi_heads(self.backbone(images.tensor), detections)
        else:  # nothing to refine: skip the backbone, keep the output fields
            EnergyROIHeads.nothing_to_refine(detections)
        if not do_postprocess:
            return detections
        out = []
        for results, inputs in zip(detections, batched_inputs):
            height, width = inputs.get("height", results.image_size[0]), inputs.get("width", results.image_size[1])
            scale = letterbox_scale(height, width, self.letterbox_size) if self.letterbox_size > 0 else None
            out.append({"instances": ebm_detector_postprocess(results, height, width, input_scale=scale)})
        return out
