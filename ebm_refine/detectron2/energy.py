"""The energy part shared by every EBM model of the plugin: f(x, y) over FPN features, its training loss
and the refinement of detections.

:class:`EnergyMixin` gives a Detectron2 module (``EBMROIHeads``, the refiner's ``EnergyROIHeads``) three
operations on top of two submodules, ``energy_pooler`` (box-differentiable multi-level RoI Align) and
``energy_head`` (``ENERGY_HEAD_REGISTRY``), whose parameters are named ``roi_heads.energy_head.*`` in every
model; :func:`energy_from_config` builds them and the settings from ``MODEL.EBM``.

With ``MODEL.EBM.ROBUST.ENABLED`` the mixin also holds a :class:`~ebm_refine.core.robust.DeepGUM` (``robust``):
the EBM loss becomes a per-ground-truth loss weighted by each box's inlier responsibility (see
:meth:`EnergyMixin.robust_update` for the residual and why).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional

import torch
from detectron2.layers import ShapeSpec
from detectron2.structures import Boxes, Instances
from torch import Tensor

from ..core import (
    BoxProposal,
    BoxRefinementResult,
    DeepGUM,
    MultiLevelBoxPooler,
    ResidualMixture,
    best_samples,
    box_iou_aligned,
    ebm_loss,
    encode_relative,
    iou_confidence_loss,
    refine_boxes,
    sampling_options,
    valid_box_mask,
    weighted_mean,
)
from .config import ROBUST_RESIDUAL_STARTS, ConfigValueError
from .energy_head import build_energy_head

__all__ = ["EnergyMixin", "energy_from_config", "proposal_from_config", "LOSSES"]

logger = logging.getLogger(__name__)

LOSSES = ("ml_is", "kld_is", "nce", "nce_plus", "iou_confidence")


def energy_from_config(cfg, input_shape: Dict[str, ShapeSpec], in_features: List[str]) -> dict:
    """Keyword arguments of :meth:`EnergyMixin.init_energy` from ``MODEL.EBM`` and the FPN shapes."""
    e = cfg.MODEL.EBM
    if e.LOSS not in LOSSES:
        raise ConfigValueError(f"MODEL.EBM.LOSS must be one of {LOSSES}, got {e.LOSS!r}")
    channels = {input_shape[f].channels for f in in_features}
    if len(channels) != 1:
        raise ConfigValueError(f"the energy head needs equal channels on {in_features}, got {channels}")
    res = e.HEAD.POOLER_RESOLUTION
    return dict(
        in_features=list(in_features),
        energy_pooler=MultiLevelBoxPooler(res, [1.0 / input_shape[f].stride for f in in_features],
                                          sampling_ratio=e.HEAD.POOLER_SAMPLING_RATIO,
                                          canonical_box_size=e.HEAD.POOLER_CANONICAL_BOX_SIZE),
        energy_head=build_energy_head(cfg, ShapeSpec(channels=channels.pop(), height=res, width=res)),
        loss=e.LOSS,
        loss_weight=e.LOSS_WEIGHT,
        proposal=proposal_from_config(cfg),
        num_samples=e.NUM_SAMPLES,
        nce_beta=e.NCE_BETA,
        label_sigma=e.LABEL_SIGMA,
        max_gt_per_image=e.MAX_GT_PER_IMAGE,
        num_steps=e.REFINE.NUM_STEPS,
        step_size_center=e.REFINE.STEP_SIZE_CENTER,
        step_size_size=e.REFINE.STEP_SIZE_SIZE,
        decay=e.REFINE.DECAY,
        keep_unrefined=e.REFINE.KEEP_UNREFINED,
        refine_fused=e.REFINE.FUSED,
        robust=DeepGUM(e.ROBUST.PERIOD, e.ROBUST.WARMUP) if e.ROBUST.ENABLED else None,
        robust_steps=e.ROBUST.NUM_STEPS,
        robust_start=e.ROBUST.RESIDUAL_START,
    )


def proposal_from_config(cfg) -> BoxProposal:
    """q(y | y_gt) from ``MODEL.EBM``: the paper's mixture, plus a detector's fitted residual components when
    ``MODEL.EBM.DETECTOR_PROPOSAL.FILE`` names one (a one-line error naming the key for a bad file)."""
    e = cfg.MODEL.EBM
    residuals, weight = None, 0.0
    if e.DETECTOR_PROPOSAL.FILE:
        path = e.DETECTOR_PROPOSAL.FILE
        if not os.path.isfile(path):
            raise ConfigValueError(f"MODEL.EBM.DETECTOR_PROPOSAL.FILE {path!r} not found; write it with "
                                   "tools/fit_detector_proposal.py, or set the key to '' for the paper's proposal")
        try:
            residuals = ResidualMixture.load(path)
        except ValueError as err:
            raise ConfigValueError(f"MODEL.EBM.DETECTOR_PROPOSAL.FILE: {err}") from None
        weight = e.DETECTOR_PROPOSAL.WEIGHT
    return BoxProposal(list(e.PROPOSAL_SIGMAS), list(e.PROPOSAL_SIGMAS_SIZE) or None,
                       residual_mixture=residuals, residual_weight=weight)


class EnergyMixin:
    """f(x, y), its training loss and batched refinement; mixed into a ``torch.nn.Module``.

    Settings (set by :meth:`init_energy`):
        in_features: names of the FPN maps the energy reads, finest first (e.g. p2..p5).
        energy_pooler: box-differentiable multi-level RoI pooler over those maps.
        energy_head: module (R, C, P, P) features, (R,) classes -> (R,) scores.
        loss_name: one of :data:`LOSSES`; ``loss_weight`` multiplies ``loss_ebm``.
        proposal: the proposal distribution q(y | y_i); ``num_samples`` boxes per ground truth (M).
        nce_beta: NCE+ beta; ``label_sigma``: KLD-IS label density std.
        max_gt_per_image: ground truths per image used by the loss (0 = all).
        num_steps, step_size_center, step_size_size, decay: refiner settings (relative encoding).
        keep_unrefined: store the unrefined boxes and their f in refined instances.
        refine_fused: refine with the energy head's ``box_energy`` fast path when it has one
            (``FCEnergyHead``: prepared pyramid pooling, backward written out; same boxes as autograd).
        robust: the DeepGUM EM state of outlier-robust training, or None (plain mean loss).
        robust_steps: gradient-ascent steps that give each ground truth's residual.
        robust_start: where that refinement starts, ``"annotation"`` or ``"best_sample"`` (the highest-f of
            ``num_samples`` proposal boxes around the annotation; :meth:`robust_residuals`).
    """

    def init_energy(self, *, in_features: List[str], energy_pooler: MultiLevelBoxPooler, energy_head, loss: str, loss_weight: float,
                    proposal: BoxProposal, num_samples: int, nce_beta: float, label_sigma: float,
                    max_gt_per_image: int, num_steps: int, step_size_center: float, step_size_size: float,
                    decay: float, keep_unrefined: bool, refine_fused: bool = True,
                    robust: Optional[DeepGUM] = None, robust_steps: int = 10,
                    robust_start: str = "annotation") -> None:
        if loss not in LOSSES:
            raise ConfigValueError(f"MODEL.EBM.LOSS must be one of {LOSSES}, got {loss!r}")
        self.energy_in_features = list(in_features)
        self.energy_pooler = energy_pooler
        self.energy_head = energy_head
        self.loss_name = loss
        self.loss_weight = loss_weight
        self.proposal = proposal
        self.num_samples = num_samples
        self.nce_beta = nce_beta
        self.label_sigma = label_sigma
        self.max_gt_per_image = max_gt_per_image
        self.num_steps = num_steps
        self.step_size_center = step_size_center
        self.step_size_size = step_size_size
        self.decay = decay
        self.keep_unrefined = keep_unrefined
        self.refine_fused = refine_fused
        self.robust = robust
        self.robust_steps = robust_steps
        if robust_start not in ROBUST_RESIDUAL_STARTS:
            raise ConfigValueError(f"MODEL.EBM.ROBUST.RESIDUAL_START must be one of {ROBUST_RESIDUAL_STARTS}, "
                                   f"got {robust_start!r}")
        self.robust_start = robust_start

    def energy(
        self, feats: List[Tensor], boxes: Tensor, classes: Tensor, image_index: Tensor,
        level_groups: Optional[List[Tensor]] = None,
    ) -> Tensor:
        """f for boxes (R, 4) xyxy pixels of classes (R,) in images ``image_index`` (R,) -> (R,).

        ``feats``: the FPN maps the pooler was built for, finest first. ``level_groups`` fixes the FPN
        level of each box (see ``MultiLevelBoxPooler.level_groups``).
        """
        rois = torch.cat([image_index.to(boxes.dtype)[:, None], boxes], dim=1)
        return self.energy_head(self.energy_pooler(feats, rois, level_groups), classes)

    def ebm_losses(self, feats: List[Tensor], targets: List[Instances],
                   gt_weights: Optional[List[Tensor]] = None) -> Tensor:
        """The EBM loss over all ground truths (``gt_boxes`` xyxy pixels, ``gt_classes``) of the batch (scalar).

        ``gt_weights``: optional per image (G_i,) weights of its ground truths (DeepGUM's responsibilities);
        the loss is then sum w l / sum w over the used ground truths, which is the plain mean for w = 1.
        """
        refs, classes, index, weights = [], [], [], []
        for i, t in enumerate(targets):
            boxes = t.gt_boxes.tensor
            keep = valid_box_mask(boxes)
            if self.max_gt_per_image > 0 and boxes.shape[0] > self.max_gt_per_image:
                chosen = torch.randperm(boxes.shape[0], device=boxes.device)[: self.max_gt_per_image]
                keep = keep & torch.zeros_like(keep).index_fill_(0, chosen, True)
            refs.append(boxes[keep])
            classes.append(t.gt_classes[keep])
            index.append(torch.full_like(t.gt_classes[keep], i))
            if gt_weights is not None:
                weights.append(gt_weights[i].to(boxes.device)[keep])
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
        reduction = "mean" if gt_weights is None else "none"
        if self.loss_name == "iou_confidence":
            # Every ground truth has M samples, so the weighted mean of per-box means is the plain
            # per-sample mean when w = 1.
            loss = iou_confidence_loss(scores, box_iou_aligned(s.boxes, ref[:, None]), reduction=reduction)
        else:
            loss = ebm_loss(self.loss_name, scores, s.log_q, offsets=s.rel, label_sigma=self.label_sigma,
                            reduction=reduction)
        return loss if gt_weights is None else weighted_mean(loss, torch.cat(weights))

    def energy_features(self, features: Dict[str, Tensor]) -> List[Tensor]:
        """The maps of ``features`` (name -> (B, C, H, W)) the energy reads, finest first."""
        return [features[f] for f in self.energy_in_features]

    def ebm_loss_dict(self, features: Dict[str, Tensor], targets: List[Instances],
                      gt_weights: Optional[List[Tensor]] = None) -> Dict[str, Tensor]:
        """``{"loss_ebm": weighted EBM loss}`` from the FPN ``features`` and ground-truth ``targets``.

        With DeepGUM (``robust``) in training, each ground truth's loss is weighted by its responsibility:
        ``gt_weights`` when given (the caller already ran :meth:`robust_update` this iteration), else
        :meth:`robust_update` runs here.
        """
        feats = self.energy_features(features)
        # The energy head's mode, not this module's: frozen-detector training keeps the ROI heads in eval mode.
        if gt_weights is None and self.robust is not None and self.energy_head.training:
            gt_weights = self.robust_update(feats, targets)
        return {"loss_ebm": self.ebm_losses(feats, targets, gt_weights) * self.loss_weight}

    # ------------------------------------------------------------------ DeepGUM
    def robust_residuals(self, feats: List[Tensor], targets: List[Instances]) -> List[Tensor]:
        """DeepGUM's residual of every ground truth: per image (G_i, 4), relative box coordinates.

        The residual is the box the current energy prefers near the annotation minus the annotation:
        the annotated box is refined by ``robust_steps`` gradient-ascent steps of f (the test-time
        refiner and its step sizes; no gradient reaches the network), and the refined box is encoded
        relative to the annotation (centre offsets in annotation widths/heights, log-size ratios).

        Why this residual: the EBM has no point prediction of its own, and the issue asks for "the
        model's prediction after refinement". Started at the annotation, it is exactly what test-time
        refinement would do to that box. On a correct annotation the energy's mode sits on it (the loss
        puts it there, as it does for the many other boxes of the class), so the residual is small; on a
        shifted, rescaled or misplaced annotation the energy learnt from the rest of the data pulls the box
        towards the object's true extent and the residual is large. The relative encoding makes residuals
        of small and large objects comparable, as DeepGUM's single Gaussian needs. Degenerate boxes get
        NaN rows (DeepGUM ignores them and gives them r = 0).

        With ``robust_start "best_sample"`` the refinement starts instead at the highest-f of ``num_samples``
        boxes drawn from the training proposal around the annotation (no gradient): an energy trained on
        the same wrong boxes can hold a small peak at each of them, so a refinement started there barely
        moves (measured: docs/robust_regression_detection.md); its mode within the proposal's reach is a
        prediction that was not handed the annotation (the tracker's ``robust.residual_start``).
        """
        boxes = [t.gt_boxes.tensor for t in targets]
        if sum(b.shape[0] for b in boxes) == 0:
            return [b.new_zeros(0, 4) for b in boxes]
        ref = torch.cat(boxes)
        classes = torch.cat([t.gt_classes for t in targets])
        index = torch.cat([torch.full_like(t.gt_classes, i) for i, t in enumerate(targets)])
        fd = [f.detach() for f in feats]
        start = ref
        if self.robust_start == "best_sample":
            with torch.no_grad():
                s = self.proposal.sample(ref, self.num_samples)
                n, m = s.boxes.shape[:2]
                scores = self.energy(fd, s.boxes.reshape(-1, 4), classes.repeat_interleave(m),
                                     index.repeat_interleave(m)).view(n, m)
                start = best_samples(s.boxes, scores, valid_box_mask(s.boxes), ref)
        res = self.refine_box_tensor(fd, start, classes, index, self.robust_steps)
        e = encode_relative(res.boxes, ref)
        e = torch.where(valid_box_mask(ref)[:, None] & torch.isfinite(e), e, torch.full_like(e, float("nan")))
        return list(e.split([b.shape[0] for b in boxes]))

    def robust_update(self, feats: List[Tensor], targets: List[Instances],
                      residuals: Optional[List[Tensor]] = None) -> List[Tensor]:
        """One training iteration of DeepGUM: E-step on this batch, then remember, maybe refit.

        Returns per image the (G_i,) responsibilities of its ground truths under the current mixture
        (ones before the first fit). The residuals (``residuals`` when the caller has them, per image
        (G_i, 4) relative; else :meth:`robust_residuals`) are stored and, every ``robust.period``
        iterations after ``robust.warmup``, the mixture is refitted by EM on them; rho and the batch's
        mean r are logged to Detectron2's EventStorage (``robust/rho``, ``robust/mean_r``). A NaN
        residual row gets r = 0 and is not used by EM.
        """
        if residuals is None:
            residuals = self.robust_residuals(feats, targets)
        e = torch.cat(residuals) if residuals else feats[0].new_zeros(0, 4)
        r = self.robust.weights(e) if e.shape[0] else e.new_zeros(0)
        finite = torch.isfinite(e).all(dim=1)
        if bool(finite.any()):
            self.robust.observe(e[finite])
        if self.robust.step():
            logger.info("DeepGUM refit at iteration %d: rho %.3f", self.robust.iteration, self.robust.state.rho)
        _put_scalars(**{"robust/rho": self.robust.state.rho if self.robust.state is not None else 1.0,
                        "robust/mean_r": float(r[finite].mean()) if bool(finite.any()) else 1.0})
        return list(r.split([x.shape[0] for x in residuals]))

    @torch.no_grad()
    def refine_instances(self, feats: List[Tensor], instances: List[Instances]) -> List[Instances]:
        """Refine ``pred_boxes`` (xyxy pixels) of every image in one batched call; modifies ``instances`` in place.

        Adds ``pred_energies`` (and with ``keep_unrefined``, ``pred_boxes_unrefined`` and
        ``pred_energies_unrefined``). Scores and classes are unchanged. A box refined out of the image
        keeps its unrefined value.
        """
        if not instances:
            return instances
        boxes = torch.cat([x.pred_boxes.tensor for x in instances])
        classes = torch.cat([x.pred_classes for x in instances])
        index = torch.cat([torch.full_like(x.pred_classes, i) for i, x in enumerate(instances)])
        res = self.refine_box_tensor(feats, boxes, classes, index, self.num_steps)
        start = 0
        for x in instances:
            n = len(x)
            refined = Boxes(res.boxes[start : start + n].clone())
            refined.clip(x.image_size)
            # A box refined out of the image (empty after clipping) keeps its unrefined value, so
            # refinement never drops a detection that post-processing would keep.
            lost = ~refined.nonempty() & x.pred_boxes.nonempty()
            refined.tensor[lost] = x.pred_boxes.tensor[lost]
            if self.keep_unrefined:
                x.pred_boxes_unrefined = x.pred_boxes
                x.pred_energies_unrefined = res.initial_scores[start : start + n]
            x.pred_boxes = refined
            x.pred_energies = res.scores[start : start + n]
            start += n
        return instances

    @torch.no_grad()
    def refine_box_tensor(self, feats: List[Tensor], boxes: Tensor, classes: Tensor, index: Tensor,
                          num_steps: int) -> BoxRefinementResult:
        """Refine (R, 4) xyxy pixel boxes of classes (R,) in images ``index`` (R,) by ``num_steps`` steps of f.

        One batched call with the configured step sizes; the head's fused energy-and-gradient when it has
        one (same boxes, no autograd), else autograd on the boxes only (nothing reaches the parameters).
        """
        # Each box keeps the pyramid level of its initial size while it moves.
        groups = self.energy_pooler.level_groups(boxes)
        box_energy = getattr(self.energy_head, "box_energy", None) if self.refine_fused else None
        energy_fn = None
        if box_energy is not None:
            rois = torch.cat([index.to(boxes.dtype)[:, None], boxes], dim=1)
            energy_fn = box_energy(self.energy_pooler.prepare(feats, rois, groups), classes)
        return refine_boxes(
            energy_fn if energy_fn is not None else (lambda b: self.energy(feats, b, classes, index, groups)),
            boxes,
            num_steps=num_steps,
            step_size_center=self.step_size_center,
            step_size_size=self.step_size_size,
            decay=self.decay,
            returns_grad=energy_fn is not None,
        )


def _put_scalars(**values: float) -> None:
    """Log scalars to the current Detectron2 EventStorage, if a training loop has one open."""
    from detectron2.utils.events import _CURRENT_STORAGE_STACK

    if _CURRENT_STORAGE_STACK:
        _CURRENT_STORAGE_STACK[-1].put_scalars(**values, smoothing_hint=False)
