"""``EBMROIHeads``: Faster R-CNN's standard ROI heads plus an energy head that refines the detections.

Training adds ``loss_ebm``: noisy boxes are drawn around every ground-truth box with the core
proposal sampler, pooled with box-differentiable RoI Align, scored by the energy head and fed to
the configured loss. Inference runs the detector as usual, then refines the final detections by
gradient ascent on f (core refiner), keeping the unrefined boxes in ``pred_boxes_unrefined``.

The meta-architecture :class:`~ebm_refine.detectron2.meta_arch.EBMRCNN` owns what concerns the whole
model: frozen-detector training (it calls :meth:`EBMROIHeads.ebm_loss_dict` alone) and rescaling both box
sets to the original image. Under another meta-architecture the head refuses settings that need it.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import ImageList, Instances
from torch import Tensor

from .config import ConfigValueError, validate_ebm_config
from .energy import EnergyMixin, energy_from_config
from .inference import energy_ranked_inference
from .meta_arch import EBMRCNN

__all__ = ["EBMROIHeads"]

logger = logging.getLogger(__name__)
_NMS_MODES = ("standard", "energy")


@ROI_HEADS_REGISTRY.register()
class EBMROIHeads(EnergyMixin, StandardROIHeads):
    """Standard ROI heads with an energy-based box refinement head (see module docstring).

    Extra keyword arguments (on top of :class:`StandardROIHeads`):
        energy: the keyword arguments of :meth:`EnergyMixin.init_energy` (pooler, head, loss and
            refinement settings; :func:`energy_from_config` builds them).
        detach_features: in joint training, keep the EBM loss's gradients out of the backbone.
        refine: refine detections at inference.
        nms_mode: "standard" or "energy" (NMS ranked by f).
    """

    @configurable
    def __init__(self, *, energy: dict, detach_features: bool = True, refine: bool = True,
                 nms_mode: str = "standard", **kwargs):
        super().__init__(**kwargs)
        if nms_mode not in _NMS_MODES:
            raise ConfigValueError(f"MODEL.EBM.REFINE.NMS must be one of {_NMS_MODES}, got {nms_mode!r}")
        if self.mask_on or self.keypoint_on:
            logger.info("EBMROIHeads: mask/keypoint heads run on the refined boxes")
        self.init_energy(**energy)
        self.detach_features = detach_features
        self.refine = refine
        self.nms_mode = nms_mode

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        validate_ebm_config(cfg)
        _check_meta_architecture(cfg)
        ret = super().from_config(cfg, input_shape)
        e = cfg.MODEL.EBM
        ret.update(
            energy=energy_from_config(cfg, input_shape, cfg.MODEL.ROI_HEADS.IN_FEATURES),
            detach_features=e.DETACH_FEATURES,
            refine=e.REFINE.ENABLED,
            nms_mode=e.REFINE.NMS,
        )
        return ret

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        if not self.training:
            return super().forward(images, features, proposals, targets)
        assert targets is not None, "'targets' argument is required during training"
        # Joint training: the detector's losses plus the EBM loss.
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses: Dict[str, Tensor] = {}
        losses.update(self._forward_box(features, proposals))
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        if self.detach_features:
            features = {f: features[f].detach() for f in self.energy_in_features}
        losses.update(self.ebm_loss_dict(features, targets))
        return proposals, losses

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances]):
        if self.training:
            return super()._forward_box(features, proposals)
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_head(self.box_pooler(feats, [p.proposal_boxes for p in proposals]))
        predictions = self.box_predictor(box_features)
        del box_features
        energy_feats = self.energy_features(features)
        if self.nms_mode == "energy":
            pred_instances = energy_ranked_inference(
                self.box_predictor, predictions, proposals, lambda b, c, i: self.energy(energy_feats, b, c, i)
            )
        else:
            pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        if self.refine:
            self.refine_instances(energy_feats, pred_instances)
        return pred_instances


def _check_meta_architecture(cfg) -> None:
    """Settings that need :class:`EBMRCNN` are refused under a meta-architecture that lacks them."""
    name = cfg.MODEL.META_ARCHITECTURE
    if issubclass(META_ARCH_REGISTRY.get(name), EBMRCNN):
        return
    needs = [k for k, on in (("MODEL.EBM.FREEZE_DETECTOR", cfg.MODEL.EBM.FREEZE_DETECTOR),
                             ("MODEL.EBM.REFINE.KEEP_UNREFINED",
                              cfg.MODEL.EBM.REFINE.ENABLED and cfg.MODEL.EBM.REFINE.KEEP_UNREFINED)) if on]
    if needs:
        raise ConfigValueError(
            f"MODEL.META_ARCHITECTURE {name!r} with EBMROIHeads cannot honour {' and '.join(needs)} "
            "(frozen-detector training; unrefined boxes rescaled to the image): set MODEL.META_ARCHITECTURE "
            f"'EBMRCNN', or set {' and '.join(needs)} False"
        )
