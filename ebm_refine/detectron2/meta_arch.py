"""``EBMRCNN``: Detectron2's ``GeneralizedRCNN`` for a detector with the EBM ROI head.

Two things the stock meta-architecture cannot do, and that must hold whatever trainer or loop a user runs:

* **Frozen-detector training** (``MODEL.EBM.FREEZE_DETECTOR``, the paper's setting). The model built by
  ``build_model`` trains only the energy head: every other parameter has ``requires_grad=False``, the
  frozen parts stay in eval mode under ``model.train()`` (BatchNorm statistics do not move), and a training
  forward computes the backbone features without a graph and returns ``{"loss_ebm"}`` only (no RPN or
  box losses). Training refuses a detector whose weights never loaded (``MODEL.EBM.ALLOW_UNTRAINED_DETECTOR``).
* **Post-processing of both box sets** (:func:`ebm_detector_postprocess`): ``pred_boxes`` (refined) and
  ``pred_boxes_unrefined`` are rescaled to the original image size and clipped together.

Joint training (``FREEZE_DETECTOR: False``) is GeneralizedRCNN's forward with ``EBMROIHeads`` adding
``loss_ebm``. Parameter names are GeneralizedRCNN's, so its checkpoints load unchanged.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Instances
from torch import nn

from ..utils.errors import UserError
from .postprocessing import ebm_detector_postprocess

__all__ = ["EBMRCNN", "ENERGY_HEAD_PREFIX", "UntrainedDetectorError", "freeze_detector"]

logger = logging.getLogger(__name__)
ENERGY_HEAD_PREFIX = "roi_heads.energy_head."


class UntrainedDetectorError(UserError):
    """Frozen-detector training on detector weights that did not load."""


def freeze_detector(model: nn.Module, trainable: tuple = (ENERGY_HEAD_PREFIX,)) -> int:
    """Freeze every parameter of ``model`` (or its ``.module``) except those under ``trainable`` prefixes.

    Returns the number of trainable parameters left. ``EBMRCNN`` does this itself with
    ``FREEZE_DETECTOR``; the function stays for models built around ``EBMROIHeads`` by hand.
    """
    count = 0
    target = model.module if hasattr(model, "module") else model
    for name, p in target.named_parameters():
        keep = any(name.startswith(prefix) for prefix in trainable)
        p.requires_grad_(keep)
        count += p.numel() if keep else 0
    return count


# EBMRCNN.__init__'s keyword argument ``freeze_detector`` shadows the function there.
_freeze_detector = freeze_detector


@META_ARCH_REGISTRY.register()
class EBMRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with frozen-detector training and post-processing of refined + unrefined boxes.

    Extra keyword arguments (on top of :class:`GeneralizedRCNN`):
        freeze_detector: train only the energy head (see module docstring).
        allow_untrained_detector: with ``freeze_detector``, train even if detector weights did not load.
    """

    @configurable
    def __init__(self, *, freeze_detector: bool = True, allow_untrained_detector: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(self.roi_heads, "ebm_loss_dict"):
            raise UserError(
                f"MODEL.META_ARCHITECTURE EBMRCNN needs MODEL.ROI_HEADS.NAME 'EBMROIHeads' (or a subclass), "
                f"got {type(self.roi_heads).__name__}"
            )
        self.frozen_detector = bool(freeze_detector)
        self.allow_untrained_detector = bool(allow_untrained_detector)
        # Set by every load_state_dict on the whole model (any checkpointer or user code).
        self.detector_weights_loaded = False
        if self.frozen_detector:
            n = _freeze_detector(self)
            logger.info("MODEL.EBM.FREEZE_DETECTOR: only the energy head trains (%d parameters)", n)
        self.register_load_state_dict_post_hook(EBMRCNN._after_load_state_dict)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(freeze_detector=cfg.MODEL.EBM.FREEZE_DETECTOR,
                   allow_untrained_detector=cfg.MODEL.EBM.ALLOW_UNTRAINED_DETECTOR)
        return ret

    # ----------------------------------------------------------------- frozen detector
    def detector_state_keys(self) -> List[str]:
        """State-dict keys of the detector (everything but the energy head)."""
        return [k for k in self.state_dict() if not k.startswith(ENERGY_HEAD_PREFIX)]

    @staticmethod
    def _after_load_state_dict(module: "EBMRCNN", incompatible) -> None:
        missing = [k for k in incompatible.missing_keys if not k.startswith(ENERGY_HEAD_PREFIX)]
        module.detector_weights_loaded = not missing
        if missing and module.frozen_detector and not module.allow_untrained_detector:
            total = len(module.detector_state_keys())
            raise UntrainedDetectorError(
                f"MODEL.EBM.FREEZE_DETECTOR: {len(missing)} of {total} detector tensors did not load from the "
                f"checkpoint (missing, or of another shape: another architecture or NUM_CLASSES?), e.g. "
                f"{', '.join(missing[:3])}; the frozen detector would stay partly random. Point MODEL.WEIGHTS at "
                "a checkpoint of this detector, or set MODEL.EBM.ALLOW_UNTRAINED_DETECTOR True"
            )

    def train(self, mode: bool = True) -> "EBMRCNN":
        super().train(mode)
        if mode and self.frozen_detector:
            # The frozen detector computes features as at test time; only the energy head is in train mode.
            for child in self.children():
                child.train(False)
            self.roi_heads.energy_head.train(True)
        return self

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        if not (self.training and self.frozen_detector):
            return super().forward(batched_inputs)
        if not self.detector_weights_loaded and not self.allow_untrained_detector:
            raise UntrainedDetectorError(
                "MODEL.EBM.FREEZE_DETECTOR: training the energy head on a detector whose weights were never "
                "loaded (empty MODEL.WEIGHTS?); set MODEL.WEIGHTS to a trained detector, or "
                "MODEL.EBM.ALLOW_UNTRAINED_DETECTOR True"
            )
        images = self.preprocess_image(batched_inputs)
        targets = [x["instances"].to(self.device) for x in batched_inputs]
        with torch.no_grad():
            features = self.backbone(images.tensor)
        return self.roi_heads.ebm_loss_dict(features, targets)

    # ----------------------------------------------------------------- inference
    def inference(self, batched_inputs: List[Dict[str, torch.Tensor]],
                  detected_instances: Optional[List[Instances]] = None, do_postprocess: bool = True):
        results = super().inference(batched_inputs, detected_instances, do_postprocess=False)
        if not do_postprocess:
            return results
        return self._postprocess(results, batched_inputs, [r.image_size for r in results])

    @staticmethod
    def _postprocess(instances: List[Instances], batched_inputs: List[Dict[str, torch.Tensor]], image_sizes):
        """Rescale refined and unrefined boxes to each input's ``height`` x ``width`` (default: as fed)."""
        out = []
        for results, inputs, size in zip(instances, batched_inputs, image_sizes):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            out.append({"instances": ebm_detector_postprocess(results, height, width)})
        return out
