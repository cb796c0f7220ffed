"""How refinement changed each detection's overlap with its ground truth (a ``DatasetEvaluator``).

AP summarises ranking and localisation together; this evaluator looks at localisation alone. A detection is
*matched* when its unrefined box has IoU >= ``iou_threshold`` (0.5) with a ground-truth box of its class
(crowd boxes excluded; the best such ground truth; several detections may match one ground truth, since
each box's change is what is measured). For the matched detections it reports the mean IoU before and
after refinement, the shares improved / worsened, the median IoU change with its 95 % confidence interval
and the Wilcoxon signed-rank p-value of the per-box change (:mod:`ebm_refine.evaluation.significance`).
"""
from __future__ import annotations

import logging
from typing import Dict, List

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from ..core import box_iou_aligned
from ..evaluation.significance import paired_test

__all__ = ["BoxChangeEvaluator", "box_change_summary", "format_box_change"]

logger = logging.getLogger(__name__)


def box_change_summary(iou_before: np.ndarray, iou_after: np.ndarray, confidence: float = 0.95) -> Dict[str, float]:
    """Statistics of paired per-box IoUs (n,) before and after refinement (see module docstring).

    All values are numbers (Detectron2 prints every metric as a float).
    """
    before, after = np.asarray(iou_before, np.float64), np.asarray(iou_after, np.float64)
    n = before.size
    if n == 0:
        return {"matched": 0}
    change = after - before
    # paired_test compares errors (lower is better): error = 1 - IoU, refined vs unrefined.
    test = paired_test(1.0 - after, 1.0 - before, names=("refined", "unrefined"), confidence=confidence)
    return {
        "matched": int(n),
        "mean_iou_unrefined": float(before.mean()),
        "mean_iou_refined": float(after.mean()),
        "improved": float((change > 0).mean()),
        "worsened": float((change < 0).mean()),
        "median_iou_change": float(np.median(change)),
        "median_ci_low": -test.ci_high,  # the error difference's interval, negated
        "median_ci_high": -test.ci_low,
        "ci_level": test.ci_level,
        "wilcoxon_p": test.p_value,
    }


def format_box_change(s: Dict[str, float]) -> str:
    """One paragraph for logs and the CLI."""
    if not s.get("matched"):
        return "no detection matched a ground truth (IoU >= 0.5)"
    return (f"{s['matched']} matched detections: mean IoU {s['mean_iou_unrefined']:.4f} -> {s['mean_iou_refined']:.4f}; "
            f"improved {100 * s['improved']:.1f} %, worsened {100 * s['worsened']:.1f} %; median IoU change "
            f"{s['median_iou_change']:+.4f} [{s['median_ci_low']:+.4f}, {s['median_ci_high']:+.4f}] "
            f"({100 * s['ci_level']:.1f} % CI); Wilcoxon p = {s['wilcoxon_p']:.3g}")


class BoxChangeEvaluator(DatasetEvaluator):
    """Per-box IoU change of refined vs unrefined boxes on a COCO-format dataset (``json_file`` metadata).

    ``evaluate()`` returns ``{"box_change": box_change_summary(...)}`` on the main process.
    """

    def __init__(self, dataset_name: str, iou_threshold: float = 0.5, distributed: bool = True):
        from pycocotools.coco import COCO

        meta = MetadataCatalog.get(dataset_name)
        self._coco = COCO(meta.json_file)
        self._to_contiguous = meta.thing_dataset_id_to_contiguous_id
        self.dataset_name = dataset_name
        self.iou_threshold = iou_threshold
        self.distributed = distributed
        self._pairs: List[np.ndarray] = []

    def reset(self) -> None:
        self._pairs = []

    def _ground_truth(self, image_id):
        anns = [a for a in self._coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns],
                             dtype=torch.float64).reshape(-1, 4)
        classes = torch.tensor([self._to_contiguous[a["category_id"]] for a in anns], dtype=torch.int64)
        return boxes, classes

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            if not len(inst) or not inst.has("pred_boxes_unrefined"):
                continue
            gt_boxes, gt_classes = self._ground_truth(inp["image_id"])
            if not len(gt_boxes):
                continue
            before = Boxes(inst.pred_boxes_unrefined.tensor.double())
            after = Boxes(inst.pred_boxes.tensor.double())
            iou_b = pairwise_iou(before, Boxes(gt_boxes))
            iou_b[inst.pred_classes[:, None] != gt_classes[None, :]] = -1.0
            best, which = iou_b.max(dim=1)
            hit = best >= self.iou_threshold
            if hit.any():
                iou_a = box_iou_aligned(after.tensor[hit], gt_boxes[which[hit]])
                self._pairs.append(torch.stack([best[hit], iou_a], dim=1).numpy())

    def evaluate(self):
        pairs = self._pairs
        if self.distributed:
            comm.synchronize()
            pairs = [p for part in comm.gather(pairs, dst=0) for p in part]
            if not comm.is_main_process():
                return {}
        both = np.concatenate(pairs) if pairs else np.zeros((0, 2))
        summary = box_change_summary(both[:, 0], both[:, 1])
        logger.info("Per-box IoU change on %s: %s", self.dataset_name, format_box_change(summary))
        return {"box_change": summary}
