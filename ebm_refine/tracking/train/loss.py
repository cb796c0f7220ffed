"""The box estimator's training loss, next to the rest of training (ltr keeps it with its actors).

box_estimation_loss   proposals around each test ground truth, scored by the estimator, fed to the configured
                      loss (an EBM method or IoU-Net's ``iou_confidence``)
BoxEstimationActor    the network and the loss as one module: a batch of crop pairs -> the scalar loss (what
                      the trainer wraps in DistributedDataParallel, so gradients are averaged across ranks)
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ebm_refine.core.boxes import box_iou_aligned, valid_box_mask
from ebm_refine.core.losses import iou_confidence_loss
from ebm_refine.core.objectives import ebm_loss, sampling_options
from ebm_refine.core.proposal import BoxProposal

from ..models.box_estimator import EnergyBoxEstimator
from ..models.network import TrackerNet

__all__ = ["BoxEstimationActor", "box_estimation_loss", "STAND_IN_BOX"]

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
                generator: Optional[torch.Generator] = None) -> Tensor:
        """Training loss of a batch of (reference, test) crop pairs.

        Args:
            ref_images, test_images: (B, 3, S, S) RGB crops in [0, 255].
            ref_boxes, test_boxes: (B, 4) target boxes, xyxy crop pixels.
        Returns:
            scalar loss (see :func:`box_estimation_loss`).
        """
        net = self.net
        return box_estimation_loss(net.estimator, net.extract(ref_images), ref_boxes,
                                   net.extract(test_images), test_boxes, net.config["loss"], generator)


def box_estimation_loss(estimator: EnergyBoxEstimator, ref_feats: Dict[str, Tensor], ref_boxes: Tensor,
                        test_feats: Dict[str, Tensor], test_boxes: Tensor, loss_cfg: Dict[str, Any],
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """Proposals around each test ground truth, scored by the estimator, fed to the configured loss.

    EBM methods draw M samples from the K-component mixture in relative box coordinates (the paper's
    tracking setting: sigmas 0.05 and 0.5, M = 128, plus the ground truth as sample 0 for ML-IS) and use
    :func:`ebm_refine.core.objectives.ebm_loss`. ``"iou_confidence"`` regresses 2 IoU - 1 of the same samples
    (IoU-Net baseline, :func:`ebm_refine.core.losses.iou_confidence_loss`).
    """
    method = loss_cfg["method"]
    proposal = BoxProposal(loss_cfg["sigmas"])
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
    scores = estimator(ref_feats, torch.where(row_valid[:, None], ref_boxes, ref_boxes.new_tensor(STAND_IN_BOX)),
                       test_feats, safe)
    sample_valid = valid_box_mask(samples.boxes) & row_valid[:, None]
    if method == "iou_confidence":
        iou = box_iou_aligned(samples.boxes, test_boxes[:, None, :])
        return iou_confidence_loss(scores, iou, valid=sample_valid)
    return ebm_loss(method, scores, samples.log_q, offsets=samples.rel, label_sigma=loss_cfg.get("label_sigma"),
                    valid=sample_valid)
