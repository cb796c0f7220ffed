"""The box estimator's training loss, next to the rest of training (ltr keeps it with its actors).

box_estimation_loss   proposals around each test ground truth, scored by the estimator, fed to the configured
                      loss (an EBM method or IoU-Net's ``iou_confidence``)
pair_losses           the same loss per training pair, for DeepGUM's weighting (:mod:`.robust`)
refinement_residuals  DeepGUM's residual of each pair: its annotated box refined by the estimator - the annotation
pair_residuals        the same with the ``robust`` settings, NaN for pairs without signal
BoxEstimationActor    the network and the loss as one module: a batch of crop pairs -> the scalar loss (what
                      the trainer wraps in DistributedDataParallel, so gradients are averaged across ranks)
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ebm_refine.core.boxes import box_iou_aligned, encode_relative, valid_box_mask
from ebm_refine.core.losses import iou_confidence_loss
from ebm_refine.core.objectives import ebm_loss, sampling_options
from ebm_refine.core.proposal import BoxProposal, best_samples
from ebm_refine.core.refine import refine_boxes

from ..models.box_estimator import EnergyBoxEstimator, TestFeatures
from ..models.network import TrackerNet

__all__ = ["BoxEstimationActor", "box_estimation_loss", "pair_losses", "refinement_residuals", "pair_residuals",
           "STAND_IN_BOX"]

# xyxy crop pixels scored in place of a degenerate ground truth (and its samples): any box with a few
# feature cells of area keeps RoI pooling and the estimator finite; its rows are then masked out of the loss,
# so its value never matters.
STAND_IN_BOX = (0.0, 0.0, 16.0, 16.0)


class BoxEstimationActor(nn.Module):
    """:class:`TrackerNet` + :func:`box_estimation_loss` with the network's ``loss`` config.

    Args:
        net: the network to train (its frozen backbone runs without a graph).
    """

    def __init__(self, net: TrackerNet):
        super().__init__()
        self.net = net

    def forward(self, ref_images: Tensor, ref_boxes: Tensor, test_images: Tensor, test_boxes: Tensor,
                generator: Optional[torch.Generator] = None, residuals: Optional[Dict[str, Any]] = None):
        """Training loss of a batch of (reference, test) crop pairs.

        Args:
            ref_images, test_images: (B, 3, S, S) RGB crops in [0, 255].
            ref_boxes, test_boxes: (B, 4) target boxes, xyxy crop pixels.
            residuals: DeepGUM's refinement settings (``num_steps``, ``step_size_center``,
                ``step_size_size``, ``decay``, ``residual_start``: the ``robust`` config section); when given,
                the per-pair losses are returned for weighting.
        Returns:
            scalar loss (see :func:`box_estimation_loss`); with ``residuals``, ``(loss (B,), weight (B,),
            residual (B, 4))``: per-pair losses, their base weights and DeepGUM residuals (NaN rows for pairs
            without signal; see :func:`pair_losses`, :func:`refinement_residuals`).
        """
        net = self.net
        ref_feats, test_feats = net.extract(ref_images), net.extract(test_images)
        if residuals is None:
            return box_estimation_loss(net.estimator, ref_feats, ref_boxes, test_feats, test_boxes,
                                       net.config["loss"], generator)
        from_best = residuals.get("residual_start", "annotation") == "best_sample"
        loss, weight, features, *best = pair_losses(net.estimator, ref_feats, ref_boxes, test_feats, test_boxes,
                                                    net.config["loss"], generator, return_best=from_best)
        return loss, weight, pair_residuals(net.estimator, features, test_boxes, weight, residuals,
                                            start=best[0] if from_best else None)


def _sample_and_score(estimator: EnergyBoxEstimator, ref_feats: Dict[str, Tensor], ref_boxes: Tensor,
                      test_feats: Dict[str, Tensor], test_boxes: Tensor, loss_cfg: Dict[str, Any],
                      generator: Optional[torch.Generator]):
    """Draw the proposals of ``loss_cfg`` around each test box and score them: (samples, (B, M) scores,
    (B, M) sample-valid mask, the modulated test features)."""
    method = loss_cfg["method"]
    proposal = BoxProposal(loss_cfg["sigmas"], part_weight=float(loss_cfg.get("part_weight") or 0.0),
                           part_sigma=float(loss_cfg.get("part_sigma") or 0.1))
    if method == "iou_confidence":
        samples = proposal.sample(test_boxes, int(loss_cfg["num_samples"]), include_reference=True,
                                  generator=generator)
    else:
        opts = sampling_options(method, loss_cfg.get("nce_beta"))
        samples = proposal.sample(test_boxes, int(loss_cfg["num_samples"]), include_reference=opts.include_center,
                                  beta=opts.beta, generator=generator)
    # Ground truths that are degenerate (a target cropped to nothing) carry no signal.
    row_valid = valid_box_mask(test_boxes, min_size=1.0) & valid_box_mask(ref_boxes, min_size=1.0)
    safe = torch.where(row_valid[:, None, None], samples.boxes,
                       samples.boxes.new_tensor(STAND_IN_BOX).expand_as(samples.boxes))
    safe_ref = torch.where(row_valid[:, None], ref_boxes, ref_boxes.new_tensor(STAND_IN_BOX))
    # estimator(...) written out, to keep the modulated test maps for DeepGUM's residuals.
    features = estimator.test_features(test_feats, estimator.reference(ref_feats, safe_ref))
    scores = estimator.score(features, safe)
    sample_valid = valid_box_mask(samples.boxes) & row_valid[:, None]
    return samples, scores, sample_valid, features


def box_estimation_loss(estimator: EnergyBoxEstimator, ref_feats: Dict[str, Tensor], ref_boxes: Tensor,
                        test_feats: Dict[str, Tensor], test_boxes: Tensor, loss_cfg: Dict[str, Any],
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """Proposals around each test ground truth, scored by the estimator, fed to the configured loss.

    EBM methods draw M samples from the K-component mixture in relative box coordinates (the paper's
    tracking setting: sigmas 0.05 and 0.5, M = 128, plus the ground truth as sample 0 for ML-IS) and use
    :func:`ebm_refine.core.objectives.ebm_loss`. ``"iou_confidence"`` regresses 2 IoU - 1 of the same samples
    (IoU-Net baseline, :func:`ebm_refine.core.losses.iou_confidence_loss`).
    """
    samples, scores, sample_valid, _ = _sample_and_score(estimator, ref_feats, ref_boxes, test_feats, test_boxes,
                                                         loss_cfg, generator)
    if loss_cfg["method"] == "iou_confidence":
        iou = box_iou_aligned(samples.boxes, test_boxes[:, None, :])
        return iou_confidence_loss(scores, iou, valid=sample_valid)
    return ebm_loss(loss_cfg["method"], scores, samples.log_q, offsets=samples.rel,
                    label_sigma=loss_cfg.get("label_sigma"), valid=sample_valid)


def pair_losses(estimator: EnergyBoxEstimator, ref_feats: Dict[str, Tensor], ref_boxes: Tensor,
                test_feats: Dict[str, Tensor], test_boxes: Tensor, loss_cfg: Dict[str, Any],
                generator: Optional[torch.Generator] = None, return_best: bool = False):
    """:func:`box_estimation_loss` per training pair, for DeepGUM's weighting.

    Returns:
        ``(loss, weight, features)``: (B,) loss of each pair (0 where it has no signal), (B,) base weights
        such that ``core.robust.weighted_mean(loss, weight)`` is :func:`box_estimation_loss` (1 per pair
        with signal, 0 without; for ``"iou_confidence"``, whose loss is a mean over samples, the pair's number
        of valid samples), and the modulated test features (with their graph). With ``return_best``, also
        (B, 4) the highest-scoring valid proposal sample of each pair, xyxy crop pixels, detached (the
        annotation where a pair has no valid sample).
    """
    samples, scores, sample_valid, features = _sample_and_score(estimator, ref_feats, ref_boxes, test_feats,
                                                                test_boxes, loss_cfg, generator)
    method = loss_cfg["method"]
    if method == "iou_confidence":
        iou = box_iou_aligned(samples.boxes, test_boxes[:, None, :])
        loss = iou_confidence_loss(scores, iou, valid=sample_valid, reduction="none")
        out = (loss, sample_valid.sum(dim=1).to(loss.dtype), features)
    else:
        loss = ebm_loss(method, scores, samples.log_q, offsets=samples.rel,
                        label_sigma=loss_cfg.get("label_sigma"), valid=sample_valid, reduction="none")
        # ebm_loss's rows with signal: ML-IS / NCE ignore column 0 (the positive) of the mask.
        rows = (sample_valid[:, 1:] if method != "kld_is" else sample_valid).any(dim=1)
        out = (loss, rows.to(loss.dtype), features)
    if not return_best:
        return out
    return out + (best_samples(samples.boxes, scores, sample_valid, test_boxes),)


def refinement_residuals(estimator: EnergyBoxEstimator, features: TestFeatures, boxes: Tensor, num_steps: int,
                         step_size_center: float, step_size_size: float, decay: float = 0.5,
                         start: Optional[Tensor] = None) -> Tensor:
    """DeepGUM's residual of each training pair: (B, 4) in relative box coordinates.

    The annotated test box of pair i is refined by ``num_steps`` gradient-ascent steps of the estimator's
    f on that pair's test features (the tracker's refiner; step sizes for the centre and the log-size in the
    box's relative space), and the refined box is encoded relative to the annotation. The annotation, rather
    than a jittered proposal, is the starting point because the residual should measure the annotation:
    at a correct box f peaks and the box stays; at a shifted, rescaled or wrong box the f learnt from the
    other pairs moves it. Nothing reaches the network's parameters (the features are detached).

    An energy trained on the same noisy annotations (and on the same frames, many times) can learn a peak at
    a wrong box, so that refinement from the annotation barely moves (what the detection experiment found):
    ``start`` lets the refinement start elsewhere, e.g. at the highest-f proposal sample (the model's mode
    near the annotation), so the residual is a prediction that was not handed the annotation.

    Args:
        features: the pairs' modulated test maps (``EnergyBoxEstimator.test_features``).
        boxes: (B, 4) annotated test boxes, xyxy crop pixels.
        start: optional (B, 4) start boxes of the refinement (default: ``boxes``).
    """
    f = TestFeatures(features.level3.detach(), features.level4.detach(), features.offset)
    init = boxes.detach() if start is None else start.detach()
    res = refine_boxes(lambda b: estimator.score(f, b[:, None, :])[:, 0], init, num_steps=num_steps,
                       step_size_center=step_size_center, step_size_size=step_size_size, decay=decay)
    return encode_relative(res.boxes, boxes.detach())


def pair_residuals(estimator: EnergyBoxEstimator, features: TestFeatures, boxes: Tensor, weight: Tensor,
                   rcfg: Dict[str, Any], start: Optional[Tensor] = None) -> Tensor:
    """:func:`refinement_residuals` with the ``robust`` section's settings, NaN rows for pairs without
    signal (``weight`` 0; DeepGUM gives them r = 0 and leaves them out of EM): (B, 4)."""
    e = refinement_residuals(estimator, features, boxes, int(rcfg["num_steps"]), float(rcfg["step_size_center"]),
                             float(rcfg["step_size_size"]), float(rcfg["decay"]), start=start)
    return torch.where((weight > 0)[:, None], e, torch.full_like(e, float("nan")))
