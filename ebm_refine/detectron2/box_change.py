"""How refinement changed each detection's overlap with its ground truth (a ``DatasetEvaluator``).

AP summarises ranking and localisation together; this evaluator looks at localisation alone. A detection is
*matched* when its unrefined box has IoU >= ``iou_threshold`` (0.5) with a ground-truth box of its class
(crowd boxes excluded; the best such ground truth; several detections may match one ground truth, since
each box's change is what is measured). For the matched detections it reports the mean IoU before and
after refinement, the shares improved / worsened, the median IoU change with its 95 % confidence interval
and the Wilcoxon signed-rank p-value of the per-box change (:mod:`ebm_refine.evaluation.significance`).

Per-box errors for the multi-run significance protocol (:func:`per_box_errors`, written by
``BoxChangeEvaluator(per_box_file=...)`` in the per-sample error format of
:mod:`ebm_refine.evaluation.per_sample`): one sample per *ground-truth box*, the highest-scoring detection
among those matched to it as above; its errors are ``1 - IoU`` of the unrefined and of the refined box with
that ground truth, and its id is ``"<image_id>/<annotation id>"``. Keying samples by ground truth makes
runs comparable: detectors trained with other seeds find other detections, but the same ground-truth boxes,
so runs over one dataset can be paired sample by sample (and stages that refine the same detections, e.g.
EBM and IoU-Net heads on one frozen detector, too).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from ..core import box_iou_aligned
from ..evaluation.per_sample import PerSampleErrors
from ..evaluation.significance import paired_test

__all__ = ["BoxChangeEvaluator", "box_change_summary", "format_box_change", "per_box_errors", "PER_BOX_FILE"]

PER_BOX_FILE = "per_box_errors.json"

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


def per_box_errors(rows: np.ndarray, ids: List[str], run_name: str = "0",
                   names: Tuple[str, str] = ("unrefined", "refined")) -> PerSampleErrors:
    """One run of per-ground-truth-box errors ``1 - IoU`` from (n, 2) IoUs (before, after) and n ids."""
    data = PerSampleErrors(metric="1 - IoU", unit="box")
    data.add_run(run_name, {names[0]: 1.0 - rows[:, 0], names[1]: 1.0 - rows[:, 1]}, ids)
    return data


class BoxChangeEvaluator(DatasetEvaluator):
    """Per-box IoU change of refined vs unrefined boxes on a COCO-format dataset (``json_file`` metadata).

    ``evaluate()`` returns ``{"box_change": box_change_summary(...)}`` on the main process. With
    ``per_box_file`` it also writes the per-ground-truth-box errors there (see the module docstring; methods
    ``unrefined`` and ``refined``, one run named ``run_name``); ``last_per_box`` then holds them too.
    """

    def __init__(self, dataset_name: str, iou_threshold: float = 0.5, distributed: bool = True,
                 per_box_file: Optional[str] = None, run_name: str = "0"):
        from pycocotools.coco import COCO

        meta = MetadataCatalog.get(dataset_name)
        self._coco = COCO(meta.json_file)
        self._to_contiguous = meta.thing_dataset_id_to_contiguous_id
        self.dataset_name = dataset_name
        self.iou_threshold = iou_threshold
        self.distributed = distributed
        self.per_box_file = per_box_file
        self.run_name = run_name
        self.last_per_box: Optional[PerSampleErrors] = None
        self._pairs: List[np.ndarray] = []
        self._per_gt: List[Tuple[str, float, float]] = []  # (id, IoU before, IoU after), one per matched gt

    def reset(self) -> None:
        self._pairs = []
        self._per_gt = []

    def _ground_truth(self, image_id):
        anns = [a for a in self._coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns],
                             dtype=torch.float64).reshape(-1, 4)
        classes = torch.tensor([self._to_contiguous[a["category_id"]] for a in anns], dtype=torch.int64)
        return boxes, classes, [a["id"] for a in anns]

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            if not len(inst) or not inst.has("pred_boxes_unrefined"):
                continue
            gt_boxes, gt_classes, gt_ids = self._ground_truth(inp["image_id"])
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
                pairs = torch.stack([best[hit], iou_a], dim=1).numpy()
                self._pairs.append(pairs)
                # Per ground truth: its highest-scoring matched detection (the first one on equal scores).
                scores, gts = inst.scores[hit].double().numpy(), which[hit].numpy()
                for g in np.unique(gts):
                    k = np.flatnonzero(gts == g)
                    k = k[np.argmax(scores[k])]
                    self._per_gt.append((f"{inp['image_id']}/{gt_ids[g]}", float(pairs[k, 0]), float(pairs[k, 1])))

    def evaluate(self):
        pairs, per_gt = self._pairs, self._per_gt
        if self.distributed:
            comm.synchronize()
            pairs = [p for part in comm.gather(pairs, dst=0) for p in part]
            per_gt = [r for part in comm.gather(per_gt, dst=0) for r in part]
            if not comm.is_main_process():
                return {}
        both = np.concatenate(pairs) if pairs else np.zeros((0, 2))
        summary = box_change_summary(both[:, 0], both[:, 1])
        logger.info("Per-box IoU change on %s: %s", self.dataset_name, format_box_change(summary))
        if per_gt:
            per_gt = sorted(per_gt)  # an order independent of the loader's and the ranks'
            rows = np.array([[b, a] for _, b, a in per_gt], dtype=np.float64)
            self.last_per_box = per_box_errors(rows, [i for i, _, _ in per_gt], self.run_name)
            if self.per_box_file:
                self.last_per_box.save(self.per_box_file)
                logger.info("Per-ground-truth-box errors (%d boxes) written to %s", len(per_gt), self.per_box_file)
        return {"box_change": summary}
