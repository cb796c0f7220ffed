"""Refine a detector's COCO results file with a trained box refiner and measure what changed.

:func:`refine_detection_file` is what ``tools/refine_detections.py`` runs: it attaches the detections to
the images of a COCO-format dataset, refines every image's detections in one batched call, writes the
refined detections as a COCO results file (refined ``bbox``, the detector's ``score``, the ``energy`` f of
the refined box), and — when the dataset has ground truth — reports COCO AP before and after refinement
(pycocotools, the same ground truth and the same detections) and the per-box IoU change
(:mod:`.box_change`), with the wall time per image.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.structures import BoxMode

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model

from ..core import clip_boxes, decode_relative
from ..utils.errors import UserError
from ..utils.fileio import temporary_folder
from .box_change import BoxChangeEvaluator, format_box_change
from .checkpoint import EBMCheckpointer
from .datasets import register_coco
from .detections import DetectionsMapper, RefinedDetectionsWriter, load_detections_into_dataset
from .engine import is_refiner
from .evaluation import RefinementCOCOEvaluator, format_refinement_table
from .postprocessing import ebm_detector_postprocess

__all__ = ["refine_detection_file", "dataset_from_files", "jittered_ground_truth", "format_summary",
           "compare_refinement_settings", "load_refiner", "read_best_setting", "refiner_kind"]

logger = logging.getLogger(__name__)


def dataset_from_files(json_file: str, image_root: str) -> str:
    """Register a COCO-format dataset from its files (once per file pair) and return its name."""
    name = f"refine:{os.path.abspath(json_file)}"
    register_coco(name, os.path.abspath(json_file), os.path.abspath(image_root))
    return name


def jittered_ground_truth(records: List[dict], dataset_name: str, sigma: float, seed: int = 0) -> List[dict]:
    """Stand-in detections for images without a detector's output: every non-crowd ground-truth box once,
    moved in the relative encoding by N(0, sigma) (centre offsets in units of the box size, log-sizes) and
    clipped to the image, with score 1. Used to choose refinement settings on held-out training images.

    Returns:
        COCO results entries (``image_id``, ``category_id`` as in the dataset's json, ``bbox`` xywh, ``score``).
    """
    to_dataset_id = {v: k for k, v in MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id.items()}
    gen = torch.Generator().manual_seed(seed)
    out = []
    for r in records:
        anns = [a for a in r.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        ref = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns],
                           dtype=torch.float64)
        boxes = decode_relative(torch.randn(ref.shape, generator=gen, dtype=torch.float64) * sigma, ref)
        boxes = clip_boxes(boxes, r["height"], r["width"])
        for a, (x0, y0, x1, y1) in zip(anns, boxes.tolist()):
            out.append({"image_id": r["image_id"], "category_id": to_dataset_id[a["category_id"]],
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 1.0})
    return out


def load_refiner(cfg, weights: str):
    """An ``EBMBoxRefiner`` from ``cfg`` with its trained weights, in eval mode (one-line errors otherwise)."""
    if not is_refiner(cfg):
        raise UserError(f"the config builds {cfg.MODEL.META_ARCHITECTURE}, not EBMBoxRefiner: pass a "
                        "COCO-Refine config (e.g. configs/COCO-Refine/ebm_refiner_mobilenet_v2_fpn.yaml)")
    if not weights:
        raise UserError("no weights: pass the trained refiner's checkpoint (--weights model_final.pth)")
    model = build_model(cfg).eval()
    checkpointer = EBMCheckpointer(model)
    checkpointer.load(weights)
    if not checkpointer.energy_head_loaded:
        raise UserError(f"{weights}: the checkpoint has no trained energy head for this config "
                        "(train one with tools/train_net.py and a COCO-Refine config)")
    return model


def refiner_kind(cfg) -> str:
    """``"IoU-Net"`` for a refiner trained with IoU-Net's loss (MODEL.EBM.LOSS iou_confidence), else ``"EBM"``."""
    return "IoU-Net" if cfg.MODEL.EBM.LOSS == "iou_confidence" else "EBM"


def read_best_setting(path: str) -> Dict[str, float]:
    """The ``best`` refinement setting of a ``tools/tune_refinement.py`` JSON: ``num_steps`` (int >= 0),
    ``step_size_center`` and ``step_size_size`` (finite, > 0).

    Raises:
        UserError naming the file and the field.
    """
    hint = "pass the --json written by tools/tune_refinement.py"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; {hint}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not a JSON file ({' '.join(str(e).split())[:100]}); {hint}") from None
    best = data.get("best") if isinstance(data, dict) else None
    if not isinstance(best, dict):
        raise UserError(f"{path}: no 'best' setting object (the file holds a {type(data).__name__}); {hint}")
    steps = best.get("num_steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise UserError(f"{path}: best.num_steps is {steps!r}, not a whole number >= 0; {hint}")
    setting = {"num_steps": steps}
    for key in ("step_size_center", "step_size_size"):
        value = best.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise UserError(f"{path}: best.{key} is {value!r}, not a finite number > 0; {hint}")
        setting[key] = float(value)
    return setting


@contextlib.contextmanager
def refinement_settings(heads, num_steps: int, step_size_center: float, step_size_size: float) -> Iterator[None]:
    """Temporarily refine with other steps / step sizes (the energy heads' attributes)."""
    keys = ("num_steps", "step_size_center", "step_size_size")
    old = [getattr(heads, k) for k in keys]
    for k, v in zip(keys, (num_steps, step_size_center, step_size_size)):
        setattr(heads, k, v)
    try:
        yield
    finally:
        for k, v in zip(keys, old):
            setattr(heads, k, v)


@torch.no_grad()
def compare_refinement_settings(cfg, model, records: List[dict], dataset: str,
                                settings: Sequence[Dict[str, float]]) -> List[Dict]:
    """Refine the detections attached to ``records`` with every setting; one backbone pass per image.

    Args:
        settings: dicts with ``num_steps``, ``step_size_center``, ``step_size_size``.
    Returns:
        per setting: ``{"ap": {"unrefined", "refined"}, "box_change": {...}}`` (COCO AP and per-box change).
    """
    mapper = DetectionsMapper(cfg, False)
    evaluators = [(RefinementCOCOEvaluator(dataset, None, distributed=False), BoxChangeEvaluator(dataset, distributed=False))
                  for _ in settings]
    for pair in evaluators:
        for e in pair:
            e.reset()
    heads = model.roi_heads
    for record in records:
        inputs = [mapper(record)]
        feats = model.backbone(model.preprocess_image(inputs).tensor)
        for setting, pair in zip(settings, evaluators):
            detections = [copy.deepcopy(inputs[0]["detections"])]
            with refinement_settings(heads, int(setting["num_steps"]), setting["step_size_center"],
                                     setting["step_size_size"]):
                heads(feats, detections)
            outputs = [{"instances": ebm_detector_postprocess(detections[0], record["height"], record["width"])}]
            for e in pair:
                e.process(inputs, outputs)
    results = []
    for coco, change in evaluators:
        ap = coco.evaluate()
        results.append({"ap": {"unrefined": ap["bbox_unrefined"], "refined": ap["bbox"]},
                        "box_change": change.evaluate()["box_change"]})
    return results


def refine_detection_file(cfg, weights: str, detections: str, dataset: str, output: str, *,
                          min_score: float = 0.0, max_per_image: int = 100, evaluate: Optional[bool] = None,
                          eval_dir: Optional[str] = None, per_box_file: Optional[str] = None,
                          run_name: str = "0") -> Dict:
    """Refine the detections in ``detections`` on the registered COCO-format ``dataset``; write ``output``.

    Args:
        cfg: a frozen config of an ``EBMBoxRefiner`` (``MODEL.EBM.REFINE.*`` = the refinement settings).
        weights: the trained refiner's checkpoint.
        detections: COCO results file (see :mod:`.detections` for the rules on bad entries).
        dataset: registered dataset the detections belong to.
        output: the refined COCO results file (written atomically).
        min_score, max_per_image: which detections are refined (and evaluated).
        evaluate: compute AP / per-box changes (default: when the dataset has box annotations).
        eval_dir: where COCOEvaluator keeps its files (default: a temporary folder).
        per_box_file: with evaluation, also write the per-ground-truth-box errors (1 - IoU, unrefined and
            refined; :mod:`.box_change`) there as one run named ``run_name`` (for ``tools/compare_runs.py``).
    Returns:
        ``{"ap": {"unrefined": {...}, "refined": {...}}, "box_change": {...}, "seconds_per_image": float,
        "images": int, "detections": DetectionStats as dict}`` (no ``ap`` / ``box_change`` without evaluation).
    """
    model = load_refiner(cfg, weights)
    records = [dict(r) for r in DatasetCatalog.get(dataset)]
    stats = load_detections_into_dataset(records, detections, dataset, min_score=min_score,
                                         max_per_image=max_per_image)
    if evaluate is None:
        evaluate = any(r.get("annotations") for r in records)
    loader = build_detection_test_loader(dataset=records, mapper=DetectionsMapper(cfg, False), num_workers=0)
    with temporary_folder() as tmp:
        evaluators = [RefinedDetectionsWriter(dataset, output, distributed=False)]
        if evaluate:
            evaluators += [RefinementCOCOEvaluator(dataset, eval_dir or tmp, distributed=False),
                           BoxChangeEvaluator(dataset, distributed=False, per_box_file=per_box_file,
                                              run_name=run_name)]
        t0 = time.perf_counter()
        results = inference_on_dataset(model, loader, DatasetEvaluators(evaluators))
        seconds = time.perf_counter() - t0
    summary = {"images": len(records), "seconds_per_image": seconds / max(1, len(records)),
               "detections": vars(stats)}
    if evaluate:
        summary["ap"] = {"unrefined": results["bbox_unrefined"], "refined": results["bbox"]}
        summary["box_change"] = results["box_change"]
    return summary


def format_summary(summary: Dict, names: Sequence[str] = ("unrefined", "refined")) -> str:
    """The CLI's printout of :func:`refine_detection_file`'s summary."""
    lines = []
    if "ap" in summary:
        lines += ["COCO box AP (pycocotools; same ground truth, same detections):",
                  format_refinement_table({n: summary["ap"][n] for n in names}), "",
                  "Per-box IoU change (detections with IoU >= 0.5 before refinement): "
                  + format_box_change(summary["box_change"])]
    lines.append(f"{summary['detections']['used']} detections on {summary['images']} images refined; wall time "
                 f"{summary['seconds_per_image']:.3f} s per image")
    return "\n".join(lines)
