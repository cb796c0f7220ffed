"""Energy-ranked post-processing of Faster R-CNN predictions.

Detectron2's ``fast_rcnn_inference`` ranks candidate boxes by class score for NMS. The reference EBM
implementation instead ranks them by the energy f of each (box, class) pair, so that among
overlapping candidates the best-localised one survives; the kept detections keep their class
scores for evaluation. Score thresholding and the per-image top-k are as in Detectron2.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances
from torch import Tensor

__all__ = ["energy_ranked_inference"]

# (boxes (R, 4), classes (R,), image_index (R,)) -> energies (R,)
EnergyOfBoxes = Callable[[Tensor, Tensor, Tensor], Tensor]


def energy_ranked_inference(
    box_predictor, predictions: Tuple[Tensor, Tensor], proposals: List[Instances], energy: EnergyOfBoxes
) -> List[Instances]:
    """Like ``FastRCNNOutputLayers.inference`` but with NMS ranked by ``energy``.

    Args:
        box_predictor: a ``FastRCNNOutputLayers`` (uses its score threshold, NMS threshold, top-k).
        predictions: its (scores, deltas) output.
        proposals: per-image proposals.
        energy: scores boxes of given classes in given images.
    Returns:
        per-image Instances with pred_boxes, scores, pred_classes (and pred_energies_nms).
    """
    boxes_all = box_predictor.predict_boxes(predictions, proposals)
    scores_all = box_predictor.predict_probs(predictions, proposals)
    results = []
    for i, (boxes, scores, props) in enumerate(zip(boxes_all, scores_all, proposals)):
        image_shape = props.image_size
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
        boxes, scores = boxes[valid], scores[valid][:, :-1]
        num_reg = boxes.shape[1] // 4
        b = Boxes(boxes.reshape(-1, 4))
        b.clip(image_shape)
        boxes = b.tensor.view(-1, num_reg, 4)
        mask = scores > box_predictor.test_score_thresh
        inds = mask.nonzero()
        boxes = boxes[inds[:, 0], 0] if num_reg == 1 else boxes[mask]
        scores = scores[mask]
        classes = inds[:, 1]
        f = energy(boxes, classes, torch.full_like(classes, i))
        # Non-finite energies rank last instead of poisoning NMS.
        f = torch.where(torch.isfinite(f), f, torch.full_like(f, -1e30))
        keep = batched_nms(boxes, f, classes, box_predictor.test_nms_thresh)
        # Among the survivors, keep the top-k by class score, as the standard path does.
        keep = keep[scores[keep].argsort(descending=True)]
        if box_predictor.test_topk_per_image >= 0:
            keep = keep[: box_predictor.test_topk_per_image]
        out = Instances(image_shape)
        out.pred_boxes = Boxes(boxes[keep])
        out.scores = scores[keep]
        out.pred_classes = classes[keep]
        results.append(out)
    return results
