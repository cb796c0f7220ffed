"""``EBMROIHeads``: Faster R-CNN's standard ROI heads plus an energy head that refines the detections.

Training adds ``loss_ebm``: noisy boxes are drawn around every ground-truth box with the core
proposal sampler, pooled with box-differentiable RoI Align, scored by the energy head and fed to
the configured loss. Inference runs the detector as usual, then refines the final detections by
gradient ascent on f (core refiner), keeping the unrefined boxes in ``pred_boxes_unrefined``.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from ..core import (
    BoxProposal,
    MultiLevelBoxPooler,
    box_iou_aligned,
    ebm_loss,
    iou_confidence_loss,
    refine_boxes,
    sampling_options,
    valid_box_mask,
)
from .energy_head import build_energy_head
from .inference import energy_ranked_inference

__all__ = ["EBMROIHeads"]

logger = logging.getLogger(__name__)
_LOSSES = ("ml_is", "kld_is", "nce", "nce_plus", "iou_confidence")
_NMS_MODES = ("standard", "energy")


@ROI_HEADS_REGISTRY.register()
class EBMROIHeads(StandardROIHeads):
    """Standard ROI heads with an energy-based box refinement head (see module docstring).

    Extra keyword arguments (on top of :class:`StandardROIHeads`):
        energy_pooler: box-differentiable multi-level RoI pooler.
        energy_head: module (R, C, P, P) features, (R,) classes -> (R,) scores.
        loss: one of ml_is, kld_is, nce, nce_plus, iou_confidence.
        loss_weight: multiplier of ``loss_ebm``.
        proposal: the proposal distribution q(y | y_i).
        num_samples: M boxes per ground truth.
        nce_beta: NCE+ beta.
        label_sigma: KLD-IS label density std.
        max_gt_per_image: ground truths per image used by the EBM loss (0 = all).
        freeze_detector: train the energy head only (detector losses are not computed).
        detach_features: in joint training, keep the EBM loss's gradients out of the backbone.
        refine: refine detections at inference.
        refine_steps, step_size_center, step_size_size, step_decay: refiner settings.
        refine_fused: use the energy head's ``box_energy`` fast path when it has one.
        nms_mode: "standard" or "energy" (NMS ranked by f).
        keep_unrefined: store the unrefined boxes and their f in the output instances.
    """

    @configurable
    def __init__(
        self,
        *,
        energy_pooler: MultiLevelBoxPooler,
        energy_head: nn.Module,
        loss: str = "ml_is",
        loss_weight: float = 1.0,
        proposal: BoxProposal,
        num_samples: int = 128,
        nce_beta: float = 0.1,
        label_sigma: float = 0.0375,
        max_gt_per_image: int = 64,
        freeze_detector: bool = True,
        detach_features: bool = True,
        refine: bool = True,
        refine_steps: int = 10,
        step_size_center: float = 4e-4,
        step_size_size: float = 1.6e-3,
        step_decay: float = 0.5,
        refine_fused: bool = True,
        nms_mode: str = "standard",
        keep_unrefined: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss not in _LOSSES:
            raise ValueError(f"MODEL.EBM.LOSS must be one of {_LOSSES}, got {loss!r}")
        if nms_mode not in _NMS_MODES:
            raise ValueError(f"MODEL.EBM.REFINE.NMS must be one of {_NMS_MODES}, got {nms_mode!r}")
        if self.mask_on or self.keypoint_on:
            logger.info("EBMROIHeads: mask/keypoint heads run on the refined boxes")
        self.energy_pooler = energy_pooler
        self.energy_head = energy_head
        self.loss_name = loss
        self.loss_weight = loss_weight
        self.proposal = proposal
        self.num_samples = num_samples
        self.nce_beta = nce_beta
        self.label_sigma = label_sigma
        self.max_gt_per_image = max_gt_per_image
        self.freeze_detector = freeze_detector
        self.detach_features = detach_features
        self.refine = refine
        self.refine_steps = refine_steps
        self.step_size_center = step_size_center
        self.step_size_size = step_size_size
        self.step_decay = step_decay
        self.refine_fused = refine_fused
        self.nms_mode = nms_mode
        self.keep_unrefined = keep_unrefined
        if freeze_detector:
            # The ROI heads' own detector parts; backbone and RPN are frozen by `freeze_detector()`.
            for module in (self.box_head, self.box_predictor):
                for p in module.parameters():
                    p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        e = cfg.MODEL.EBM
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(f"EBM head needs equal channels on {in_features}, got {channels}")
        res = e.HEAD.POOLER_RESOLUTION
        ret["energy_pooler"] = MultiLevelBoxPooler(
            res,
            [1.0 / input_shape[f].stride for f in in_features],
            sampling_ratio=e.HEAD.POOLER_SAMPLING_RATIO,
        )
        ret["energy_head"] = build_energy_head(cfg, ShapeSpec(channels=channels.pop(), height=res, width=res))
        sigmas_size = list(e.PROPOSAL_SIGMAS_SIZE) or None
        ret.update(
            loss=e.LOSS,
            loss_weight=e.LOSS_WEIGHT,
            proposal=BoxProposal(list(e.PROPOSAL_SIGMAS), sigmas_size),
            num_samples=e.NUM_SAMPLES,
            nce_beta=e.NCE_BETA,
            label_sigma=e.LABEL_SIGMA,
            max_gt_per_image=e.MAX_GT_PER_IMAGE,
            freeze_detector=e.FREEZE_DETECTOR,
            detach_features=e.DETACH_FEATURES,
            refine=e.REFINE.ENABLED,
            refine_steps=e.REFINE.NUM_STEPS,
            step_size_center=e.REFINE.STEP_SIZE_CENTER,
            step_size_size=e.REFINE.STEP_SIZE_SIZE,
            step_decay=e.REFINE.DECAY,
            refine_fused=e.REFINE.FUSED,
            nms_mode=e.REFINE.NMS,
            keep_unrefined=e.REFINE.KEEP_UNREFINED,
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
        losses: Dict[str, Tensor] = {}
        if not self.freeze_detector:
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses.update(self._forward_box(features, proposals))
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
        feats = [features[f] for f in self.box_in_features]
        if self.freeze_detector or self.detach_features:
            feats = [f.detach() for f in feats]
        losses["loss_ebm"] = self.ebm_losses(feats, targets) * self.loss_weight
        return proposals, losses

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances]):
        if self.training:
            return super()._forward_box(features, proposals)
        feats = [features[f] for f in self.box_in_features]
        box_features = self.box_head(self.box_pooler(feats, [p.proposal_boxes for p in proposals]))
        predictions = self.box_predictor(box_features)
        del box_features
        if self.nms_mode == "energy":
            pred_instances = energy_ranked_inference(
                self.box_predictor, predictions, proposals, lambda b, c, i: self.energy(feats, b, c, i)
            )
        else:
            pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        if self.refine:
            self.refine_instances(feats, pred_instances)
        return pred_instances

    # ------------------------------------------------------------------ energy
    def energy(
        self, feats: List[Tensor], boxes: Tensor, classes: Tensor, image_index: Tensor,
        level_groups: Optional[List[Tensor]] = None,
    ) -> Tensor:
        """f for boxes (R, 4) xyxy pixels of classes (R,) in images ``image_index`` (R,) -> (R,).

        ``level_groups`` fixes the FPN level of each box (see ``MultiLevelBoxPooler.level_groups``).
        """
        rois = torch.cat([image_index.to(boxes.dtype)[:, None], boxes], dim=1)
        return self.energy_head(self.energy_pooler(feats, rois, level_groups), classes)

    def ebm_losses(self, feats: List[Tensor], targets: List[Instances]) -> Tensor:
        """The EBM loss over all ground truths of the batch (scalar)."""
        refs, classes, index = [], [], []
        for i, t in enumerate(targets):
            boxes = t.gt_boxes.tensor
            keep = valid_box_mask(boxes)
            if self.max_gt_per_image > 0 and boxes.shape[0] > self.max_gt_per_image:
                chosen = torch.randperm(boxes.shape[0], device=boxes.device)[: self.max_gt_per_image]
                keep = keep & torch.zeros_like(keep).index_fill_(0, chosen, True)
            refs.append(boxes[keep])
            classes.append(t.gt_classes[keep])
            index.append(torch.full_like(t.gt_classes[keep], i))
        ref = torch.cat(refs)
        if ref.shape[0] == 0:
            # No usable ground truth: an exact zero that still reaches the head's parameters (DDP-safe).
            return sum(p.sum() * 0.0 for p in self.energy_head.parameters())
        cls, idx = torch.cat(classes), torch.cat(index)
        if self.loss_name == "iou_confidence":
            s = self.proposal.sample(ref, self.num_samples)
        else:
            opts = sampling_options(self.loss_name, self.nce_beta if self.loss_name == "nce_plus" else None)
            s = self.proposal.sample(ref, self.num_samples, include_reference=opts.include_center, beta=opts.beta)
        n, m = s.boxes.shape[:2]
        scores = self.energy(feats, s.boxes.reshape(-1, 4), cls.repeat_interleave(m), idx.repeat_interleave(m))
        scores = scores.view(n, m)
        if self.loss_name == "iou_confidence":
            return iou_confidence_loss(scores, box_iou_aligned(s.boxes, ref[:, None]))
        return ebm_loss(self.loss_name, scores, s.log_q, offsets=s.rel, label_sigma=self.label_sigma)

    @torch.no_grad()
    def refine_instances(self, feats: List[Tensor], instances: List[Instances]) -> List[Instances]:
        """Refine ``pred_boxes`` of every image in one batched call; modifies ``instances`` in place.

        Adds ``pred_energies`` (and with ``keep_unrefined``, ``pred_boxes_unrefined`` and
        ``pred_energies_unrefined``). Scores and classes are unchanged.
        """
        if not instances:
            return instances
        boxes = torch.cat([x.pred_boxes.tensor for x in instances])
        classes = torch.cat([x.pred_classes for x in instances])
        index = torch.cat([torch.full_like(x.pred_classes, i) for i, x in enumerate(instances)])
        # Each box keeps the pyramid level of its initial size while it moves.
        groups = self.energy_pooler.level_groups(boxes)
        # The head's fused energy-and-gradient when it has one (same boxes, no autograd), else autograd.
        box_energy = getattr(self.energy_head, "box_energy", None) if self.refine_fused else None
        energy_fn = None
        if box_energy is not None:
            rois = torch.cat([index.to(boxes.dtype)[:, None], boxes], dim=1)
            energy_fn = box_energy(self.energy_pooler.prepare(feats, rois, groups), classes)
        res = refine_boxes(
            energy_fn if energy_fn is not None else (lambda b: self.energy(feats, b, classes, index, groups)),
            boxes,
            num_steps=self.refine_steps,
            step_size_center=self.step_size_center,
            step_size_size=self.step_size_size,
            decay=self.step_decay,
            returns_grad=energy_fn is not None,
        )
        start = 0
        for x in instances:
            n = len(x)
            refined = Boxes(res.boxes[start : start + n])
            refined.clip(x.image_size)
            if self.keep_unrefined:
                x.pred_boxes_unrefined = x.pred_boxes
                x.pred_energies_unrefined = res.initial_scores[start : start + n]
            x.pred_boxes = refined
            x.pred_energies = res.scores[start : start + n]
            start += n
        return instances


def freeze_detector(model: nn.Module, trainable_prefixes: Sequence[str] = ("roi_heads.energy_head.",)) -> int:
    """Freeze every parameter of ``model`` except those under ``trainable_prefixes``.

    Returns the number of trainable parameters left. Call it after building the model when
    ``MODEL.EBM.FREEZE_DETECTOR`` is set (our ``tools/train_net.py`` does).
    """
    trainable = 0
    target = model.module if hasattr(model, "module") else model
    for name, p in target.named_parameters():
        keep = any(name.startswith(prefix) for prefix in trainable_prefixes)
        p.requires_grad_(keep)
        trainable += p.numel() if keep else 0
    return trainable
