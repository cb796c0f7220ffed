"""COCO evaluation of refined and unrefined boxes from the same forward pass.

``RefinementCOCOEvaluator`` wraps two Detectron2 ``COCOEvaluator``s: one sees the instances as they
are (``pred_boxes`` = refined), the other sees ``pred_boxes_unrefined`` in their place. AP comes
from pycocotools' ``COCOeval`` in both; nothing here computes AP by hand.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional

from detectron2.evaluation import COCOEvaluator, DatasetEvaluator
from detectron2.utils import comm

from ..utils.fileio import atomic_write_text

__all__ = ["ImagesCOCOEvaluator", "RefinementCOCOEvaluator", "format_refinement_table", "METRICS"]

logger = logging.getLogger(__name__)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _with_unrefined_boxes(outputs: List[dict]) -> List[dict]:
    out = []
    for o in outputs:
        inst = o["instances"]
        if inst.has("pred_boxes_unrefined"):
            inst = copy.copy(inst)  # shallow: only the field mapping is replaced
            inst._fields = dict(inst._fields)
            inst.pred_boxes = inst.pred_boxes_unrefined
        out.append({**o, "instances": inst})
    return out


def format_refinement_table(results: Dict[str, Dict[str, float]]) -> str:
    """Markdown table of unrefined vs refined (and any other entries) box AP."""
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + (" | Δ (refined − unrefined) |" if "refined" in results and "unrefined" in results else " |")]
    lines.append("|---" * (len(names) + 1 + ("refined" in results and "unrefined" in results)) + "|")
    for m in METRICS:
        row = [f"{results[n].get(m, float('nan')):.2f}" for n in names]
        if "refined" in results and "unrefined" in results:
            row.append(f"{results['refined'].get(m, float('nan')) - results['unrefined'].get(m, float('nan')):+.2f}")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _processed_image_ids(image_ids: set, distributed: bool) -> List[int]:
    """The image ids every rank processed (a collective: all ranks must call it)."""
    gathered = comm.all_gather(image_ids) if distributed and comm.get_world_size() > 1 else [image_ids]
    return sorted(set().union(*gathered))


class ImagesCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` scored on the images it processed, not on every image of the json.

    Detectron2 scores all images of the dataset's ``json_file``. A registered subset of a json file (such as
    ``coco128_train2017_holdout``, 24 of its 128 images) would then count the other images' ground truth as
    missed; here its AP is the subset's own. For a whole dataset both are the same.
    """

    def reset(self):
        super().reset()
        self._image_ids = set()

    def process(self, inputs, outputs):
        self._image_ids.update(x["image_id"] for x in inputs)
        super().process(inputs, outputs)

    def evaluate(self, img_ids=None):
        ids = _processed_image_ids(self._image_ids, self._distributed)
        return super().evaluate(img_ids=img_ids if img_ids is not None else ids)


class RefinementCOCOEvaluator(DatasetEvaluator):
    """Box AP of EBM-refined and unrefined detections, side by side.

    ``evaluate()`` returns ``{"bbox": refined, "bbox_unrefined": unrefined}`` (Detectron2's usual
    task → metrics layout, so ``print_csv_format`` and the trainer's logging work), prints a
    side-by-side table and writes ``ebm_refinement_results.json`` to ``output_dir``.

    Args:
        dataset_name: a registered dataset with COCO-format ground truth.
        output_dir: where COCOEvaluator dumps predictions (unrefined ones under ``unrefined/``).
        distributed: gather results from all ranks.
        use_fast_impl: Detectron2's C++ COCOeval; off by default because it needs the compiled ``_C``.
    """

    def __init__(
        self, dataset_name: str, output_dir: Optional[str] = None, *, distributed: bool = True,
        use_fast_impl: bool = False,
    ):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        kw = dict(tasks=("bbox",), distributed=distributed, use_fast_impl=use_fast_impl)
        self.refined = COCOEvaluator(dataset_name, output_dir=output_dir, **kw)
        self.unrefined = COCOEvaluator(
            dataset_name, output_dir=os.path.join(output_dir, "unrefined") if output_dir else None, **kw
        )
        self.distributed = distributed
        self._saw_unrefined = False
        self._image_ids: set = set()

    def reset(self) -> None:
        self.refined.reset()
        self.unrefined.reset()
        self._saw_unrefined = False
        self._image_ids = set()

    def process(self, inputs, outputs) -> None:
        self._image_ids.update(x["image_id"] for x in inputs)
        self.refined.process(inputs, outputs)
        if any(o["instances"].has("pred_boxes_unrefined") for o in outputs if "instances" in o):
            self._saw_unrefined = True
        self.unrefined.process(inputs, _with_unrefined_boxes(outputs))

    def evaluate(self):
        # Collectives first: every rank must take part before non-main ranks return. Evaluate on the images
        # that were processed (a whole dataset as usual; a registered subset of a json file correctly).
        saw = comm.all_gather(self._saw_unrefined) if self.distributed and comm.get_world_size() > 1 \
            else [self._saw_unrefined]
        img_ids = _processed_image_ids(self._image_ids, self.distributed)
        refined = self.refined.evaluate(img_ids=img_ids)
        unrefined = self.unrefined.evaluate(img_ids=img_ids)
        # Non-main ranks get nothing back from COCOEvaluator.
        if not comm.is_main_process() or not refined:
            return {}
        results = OrderedDict(bbox=refined["bbox"])
        if any(saw):
            results["bbox_unrefined"] = unrefined["bbox"]
            table = {"unrefined": unrefined["bbox"], "refined": refined["bbox"]}
            logger.info("EBM refinement on %s:\n%s", self.dataset_name, format_refinement_table(table))
            if self.output_dir:
                atomic_write_text(os.path.join(self.output_dir, "ebm_refinement_results.json"),
                                  json.dumps({"dataset": self.dataset_name, **table}, indent=2))
        return results
