"""Fit the detector-aware proposal: a detector's boxes on training images against their ground truth.

``MODEL.EBM.DETECTOR_PROPOSAL.FILE`` names a JSON :class:`~ebm_refine.core.residual_proposal.ResidualMixture`;
:func:`fit_detector_proposal` makes it from a registered COCO-format dataset (with annotations) and a COCO
results file of the detector on the same images. Use training images only: the fit describes the detector's
errors, and the energy is then trained to be right where those errors put the boxes.
"""
from __future__ import annotations

import logging
from typing import Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from ..core import ResidualMixture, detection_residuals, fit_residual_mixture
from ..utils.errors import UserError
from .detections import load_detections_into_dataset

__all__ = ["collect_detection_residuals", "fit_detector_proposal"]

logger = logging.getLogger(__name__)


def collect_detection_residuals(dataset: str, detections: str, *, iou_threshold: float = 0.5,
                                min_score: float = 0.0, max_per_image: int = 100,
                                class_aware: bool = True) -> torch.Tensor:
    """(R, 4) residuals (relative encoding, the ground truth as reference) of every detection in the COCO
    results file ``detections`` that covers a non-crowd ground-truth box of ``dataset`` with IoU >=
    ``iou_threshold`` (of the same class when ``class_aware``)."""
    records = [dict(r) for r in DatasetCatalog.get(dataset)]
    load_detections_into_dataset(records, detections, dataset, min_score=min_score, max_per_image=max_per_image)
    out = []
    for r in records:
        anns = [a for a in r.get("annotations", []) if not a.get("iscrowd", 0)]
        dets = r["detections"]
        if not anns or len(dets["boxes"]) == 0:
            continue
        gt = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                          dtype=torch.float64)
        keep = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
        gt_cls = torch.tensor([a["category_id"] for a in anns])[keep]
        det_cls = torch.as_tensor(dets["classes"])
        out.append(detection_residuals(torch.as_tensor(dets["boxes"], dtype=torch.float64),
                                       det_cls if class_aware else None, gt[keep],
                                       gt_cls if class_aware else None, iou_threshold))
    return torch.cat(out) if out else torch.zeros(0, 4, dtype=torch.float64)


def fit_detector_proposal(datasets: Sequence[str], detections: Sequence[str], *, num_components: int = 4,
                          iou_threshold: float = 0.5, min_score: float = 0.0,
                          seed: int = 0) -> Tuple[ResidualMixture, torch.Tensor]:
    """The mixture fitted to the residuals of every ``detections[i]`` file on ``datasets[i]`` together, and those
    residuals (see :func:`collect_detection_residuals`)."""
    res = torch.cat([collect_detection_residuals(d, f, iou_threshold=iou_threshold, min_score=min_score)
                     for d, f in zip(datasets, detections)])
    if res.shape[0] < max(2 * num_components, 10):
        raise UserError(f"only {res.shape[0]} detections in {', '.join(detections)} cover a ground-truth box with "
                        f"IoU >= {iou_threshold}; too few to fit {num_components} components (pass the detector's "
                        "output on these images, a lower --iou, or fewer --components)")
    pairs = ", ".join(f"{f} on {d}" for d, f in zip(datasets, detections))
    mixture = fit_residual_mixture(res, num_components, seed=seed,
                                   source=f"{pairs} (IoU >= {iou_threshold}, score >= {min_score})")
    logger.info("fitted %d components to %d residuals; median residual %s", num_components, res.shape[0],
                [round(float(v), 4) for v in res.median(dim=0).values])
    return mixture, res
