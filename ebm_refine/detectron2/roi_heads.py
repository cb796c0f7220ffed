"""``EBMROIHeads``: Faster R-CNN's standard ROI heads plus an energy head that refines the detections.

Training adds ``loss_ebm``: noisy boxes are drawn around every ground-truth box with the core
proposal sampler, pooled with box-differentiable RoI Align, scored by the energy head and fed to
the configured loss. Inference runs the detector as usual, then refines the final detections by
gradient ascent on f (core refiner), keeping the unrefined boxes in ``pred_boxes_unrefined``.

The meta-architecture :class:`~ebm_refine.detectron2.meta_arch.EBMRCNN` owns what concerns the whole
model: frozen-detector training (it calls :meth:`EBMROIHeads.ebm_loss_dict` alone) and rescaling both box
sets to the original image. Under another meta-architecture the head refuses settings that need it.

DeepGUM (``MODEL.EBM.ROBUST``): in joint training the responsibilities of the ground truths weight the EBM
loss per ground truth and, with ``BOX_REG``, the box-regression loss of every foreground proposal by the
responsibility of the ground truth it is matched to (the ``gt_robust_weight`` field of the proposals).
With ``RESIDUAL "energy"`` they are computed first (:meth:`EnergyMixin.robust_update` refines the
annotations) and ``label_and_sample_proposals`` copies them to the proposals; with ``RESIDUAL "detector"``
they come after the box head ran, from the box regression of the sampled proposals
(:func:`detector_residuals`), and are looked up per proposal through its ``gt_robust_index``.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.layers import cat, nonzero_tuple
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.structures import ImageList, Instances, pairwise_iou
from fvcore.nn import smooth_l1_loss
from torch import Tensor

from ..core import encode_relative, valid_box_mask
from .config import ConfigValueError, validate_ebm_config
from .energy import EnergyMixin, energy_from_config
from .inference import energy_ranked_inference
from .meta_arch import EBMRCNN

__all__ = ["EBMROIHeads", "weighted_box_reg_loss", "detector_residuals"]

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
        robust_box_reg: weight the box-regression loss per proposal by DeepGUM's responsibility of its
            matched ground truth (needs ``energy["robust"]``).
        robust_residual: "energy" (the annotation refined by the energy) or "detector" (Faster R-CNN's
            regressed boxes of the proposals matched to it; :func:`detector_residuals`).
    """

    @configurable
    def __init__(self, *, energy: dict, detach_features: bool = True, refine: bool = True,
                 nms_mode: str = "standard", robust_box_reg: bool = False, robust_residual: str = "energy",
                 **kwargs):
        super().__init__(**kwargs)
        if nms_mode not in _NMS_MODES:
            raise ConfigValueError(f"MODEL.EBM.REFINE.NMS must be one of {_NMS_MODES}, got {nms_mode!r}")
        if self.mask_on or self.keypoint_on:
            logger.info("EBMROIHeads: mask/keypoint heads run on the refined boxes")
        self.init_energy(**energy)
        self.detach_features = detach_features
        self.refine = refine
        self.nms_mode = nms_mode
        if robust_box_reg and self.robust is None:
            raise ConfigValueError("MODEL.EBM.ROBUST.BOX_REG needs MODEL.EBM.ROBUST.ENABLED True")
        self.robust_box_reg = robust_box_reg
        if robust_residual not in ("energy", "detector"):
            raise ConfigValueError(f"MODEL.EBM.ROBUST.RESIDUAL must be 'energy' or 'detector', got {robust_residual!r}")
        self.robust_residual = robust_residual

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        validate_ebm_config(cfg)
        _check_meta_architecture(cfg)
        ret = super().from_config(cfg, input_shape)
        e = cfg.MODEL.EBM
        if e.ROBUST.BOX_REG:
            _check_robust_box_reg(cfg)
        ret.update(
            energy=energy_from_config(cfg, input_shape, cfg.MODEL.ROI_HEADS.IN_FEATURES),
            detach_features=e.DETACH_FEATURES,
            refine=e.REFINE.ENABLED,
            nms_mode=e.REFINE.NMS,
            robust_box_reg=e.ROBUST.BOX_REG,
            robust_residual=e.ROBUST.RESIDUAL,
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
        gt_weights = None
        from_detector = self.robust is not None and self.robust_residual == "detector"
        if self.robust is not None and not from_detector:
            gt_weights = self.robust_update(self.energy_features(features), targets)
            if self.robust_box_reg:
                # label_and_sample_proposals copies every gt_* field to the proposals matched to it.
                for t, w in zip(targets, gt_weights):
                    t.gt_robust_weight = w
        if from_detector:
            for t in targets:
                t.gt_robust_index = torch.arange(len(t), device=t.gt_classes.device)
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses: Dict[str, Tensor] = {}
        if from_detector:
            box_losses, gt_weights = self._forward_box_detector_residuals(features, proposals, targets)
            losses.update(box_losses)
        else:
            losses.update(self._forward_box(features, proposals))
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        if self.detach_features:
            features = {f: features[f].detach() for f in self.energy_in_features}
        losses.update(self.ebm_loss_dict(features, targets, gt_weights))
        return proposals, losses

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances]):
        if self.training and not self.robust_box_reg:
            return super()._forward_box(features, proposals)
        if self.training:
            return self._box_losses(self._box_predictions(features, proposals), proposals)
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


    def _box_predictions(self, features: Dict[str, Tensor], proposals: List[Instances]):
        feats = [features[f] for f in self.box_in_features]
        return self.box_predictor(self.box_head(self.box_pooler(feats, [p.proposal_boxes for p in proposals])))

    def _box_losses(self, predictions, proposals: List[Instances]) -> Dict[str, Tensor]:
        """StandardROIHeads._forward_box's training part, the box-regression loss weighted per proposal
        (``gt_robust_weight``) when ``robust_box_reg``."""
        losses = self.box_predictor.losses(predictions, proposals)
        if self.robust_box_reg:
            losses["loss_box_reg"] = weighted_box_reg_loss(self.box_predictor, predictions[1], proposals) \
                * self.box_predictor.loss_weight.get("loss_box_reg", 1.0)
        if self.train_on_pred_boxes:
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
            for p, boxes in zip(proposals, pred_boxes):
                p.proposal_boxes = type(p.proposal_boxes)(boxes)
        return losses

    def _forward_box_detector_residuals(self, features: Dict[str, Tensor], proposals: List[Instances],
                                        targets: List[Instances]) -> Tuple[Dict[str, Tensor], List[Tensor]]:
        """Box losses and per image the (G_i,) DeepGUM responsibilities, with residuals from this
        iteration's box regression (``RESIDUAL "detector"``)."""
        predictions = self._box_predictions(features, proposals)
        residuals, seen = detector_residuals(self.box_predictor, predictions, proposals, [len(t) for t in targets])
        gt_weights = self.robust_update(self.energy_features(features), targets, residuals)
        # A ground truth none of whose proposals was sampled this iteration has no residual: no evidence
        # either way, so it keeps full weight (rather than the r = 0 of a degenerate box).
        gt_weights = [torch.where(s_, w, torch.ones_like(w)) for w, s_ in zip(gt_weights, seen)]
        if self.robust_box_reg:
            for p, w in zip(proposals, gt_weights):
                if p.has("gt_robust_index"):
                    p.gt_robust_weight = w[p.gt_robust_index]
        return self._box_losses(predictions, proposals), gt_weights


    @torch.no_grad()
    def detector_residuals_of(self, features: Dict[str, Tensor], proposals: List[Instances],
                              targets: List[Instances]) -> Tuple[List[Tensor], List[Tensor]]:
        """:func:`detector_residuals` of ``targets`` from every proposal the matcher makes foreground
        (the annotations appended, no sampling): the deterministic version of the training-time
        residual, to score annotations with a trained model."""
        labelled = []
        for p, t in zip(add_ground_truth_to_proposals(targets, proposals), targets):
            matched, labels = self.proposal_matcher(pairwise_iou(t.gt_boxes, p.proposal_boxes))
            fg = (labels == 1) if len(t) else torch.zeros(len(p), dtype=torch.bool, device=labels.device)
            q = p[fg]
            q.gt_classes = t.gt_classes[matched[fg]]
            q.gt_boxes = t.gt_boxes[matched[fg]]
            q.gt_robust_index = matched[fg]
            labelled.append(q)
        predictions = self._box_predictions(features, labelled)
        return detector_residuals(self.box_predictor, predictions, labelled, [len(t) for t in targets])


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


def weighted_box_reg_loss(box_predictor, pred_deltas: Tensor, proposals: List[Instances]) -> Tensor:
    """Fast R-CNN's smooth-L1 box-regression loss with each foreground proposal weighted (scalar).

    ``sum_fg w_p * smooth_l1(delta_p - target_p) / R`` where R counts all sampled proposals (Detectron2's
    normalisation, so w = 1 gives ``FastRCNNOutputLayers.box_reg_loss`` exactly) and w_p is the proposal's
    ``gt_robust_weight`` (the responsibility of its matched ground truth; 1 where absent).

    Args:
        box_predictor: the ``FastRCNNOutputLayers`` (its transform, beta and class count are used).
        pred_deltas: (R, 4) or (R, K * 4) predicted deltas.
        proposals: per image, sampled proposals with ``proposal_boxes``, ``gt_classes`` and (foreground
            images) ``gt_boxes``.
    """
    gt_classes = cat([p.gt_classes for p in proposals], dim=0)
    proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
    gt_boxes = cat([(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0)
    weights = cat([p.gt_robust_weight if p.has("gt_robust_weight") else
                   torch.ones(len(p), device=gt_classes.device) for p in proposals], dim=0)
    num_classes = box_predictor.num_classes
    fg = nonzero_tuple((gt_classes >= 0) & (gt_classes < num_classes))[0]
    if pred_deltas.shape[1] == 4:  # class-agnostic regression
        fg_deltas = pred_deltas[fg]
    else:
        fg_deltas = pred_deltas.view(-1, num_classes, 4)[fg, gt_classes[fg]]
    target = box_predictor.box2box_transform.get_deltas(proposal_boxes[fg], gt_boxes[fg])
    per = smooth_l1_loss(fg_deltas, target, box_predictor.smooth_l1_beta, reduction="none").sum(dim=1)
    return (per * weights[fg].to(per.dtype)).sum() / max(gt_classes.numel(), 1.0)


@torch.no_grad()
def detector_residuals(box_predictor, predictions, proposals: List[Instances],
                       num_gt: List[int]) -> Tuple[List[Tensor], List[Tensor]]:
    """DeepGUM's residual of every ground truth from Faster R-CNN's own box regression.

    For a ground truth, each sampled foreground proposal matched to it regresses a box for its class
    (``predict_boxes_for_gt_classes``); the residual is the per-coordinate median over those proposals of
    that box encoded relative to the ground truth ``(dcx / w, dcy / h, log w'/w, log h'/h)``. This is
    DeepGUM's residual, prediction minus annotation: a detector that learnt from the mostly clean rest of
    the data regresses the proposals around a shifted or rescaled annotation towards the object, not
    towards the annotation. The median keeps one stray proposal from deciding.

    Args:
        box_predictor: the ``FastRCNNOutputLayers``.
        predictions: its ``(scores, proposal_deltas)`` on ``proposals``.
        proposals: per image, the sampled proposals with ``gt_classes`` and (images with ground truth)
            ``gt_boxes`` and ``gt_robust_index`` (the index of the matched ground truth).
        num_gt: ground truths per image (G_i).

    Returns:
        residuals: per image (G_i, 4); NaN rows for a ground truth without a sampled foreground proposal
            or with a degenerate box.
        seen: per image (G_i,) bool, whether the ground truth had a sampled foreground proposal.
    """
    pred_boxes = box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
    residuals, seen = [], []
    for p, boxes, g in zip(proposals, pred_boxes, num_gt):
        e = boxes.new_full((g, 4), math.nan)
        has = torch.zeros(g, dtype=torch.bool, device=boxes.device)
        if g and len(p) and p.has("gt_robust_index"):
            fg = (p.gt_classes >= 0) & (p.gt_classes < box_predictor.num_classes)
            index = p.gt_robust_index[fg]
            gt = p.gt_boxes.tensor[fg]
            rel = encode_relative(boxes[fg], gt)
            rel = torch.where(valid_box_mask(gt)[:, None] & torch.isfinite(rel), rel, torch.full_like(rel, math.nan))
            for j in index.unique().tolist():
                e[j] = rel[index == j].nanmedian(dim=0).values
                has[j] = True
        residuals.append(e)
        seen.append(has)
    return residuals, seen


def _check_robust_box_reg(cfg) -> None:
    """``MODEL.EBM.ROBUST.BOX_REG`` needs a box-regression loss that it can weight."""
    if cfg.MODEL.EBM.FREEZE_DETECTOR:
        raise ConfigValueError("MODEL.EBM.ROBUST.BOX_REG weights Faster R-CNN's box-regression loss, which "
                               "frozen-detector training (MODEL.EBM.FREEZE_DETECTOR True) does not compute: set "
                               "FREEZE_DETECTOR False (joint training) or ROBUST.BOX_REG False")
    if cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE != "smooth_l1":
        raise ConfigValueError(f"MODEL.EBM.ROBUST.BOX_REG supports MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE "
                               f"'smooth_l1' only, got {cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE!r}")
