#!/usr/bin/env python
"""Choose the refinement steps and step sizes of a trained box refiner on held-out TRAINING images.

The inputs to refine are either the detector's own output on the held-out images (``--detections``, a COCO
results file: the settings are then chosen for the errors that detector really makes), or, without one,
stand-ins: the held-out images' ground-truth boxes moved by Gaussian noise in the relative encoding
(``jittered_ground_truth``; several noise levels, several draws). Every setting refines the same inputs; the
table reports COCO AP of the refined boxes (the inputs' own AP in the first row) and the per-box mean IoU gain,
averaged over the inputs, and names the best setting by AP. Never tune on the evaluation images.

    python tools/tune_refinement.py --config-file configs/COCO-Refine/ebm_refiner_mobilenet_v2_fpn.yaml \\
        --weights output/ebm_refiner/model_final.pth --dataset coco128_train2017_holdout \\
        --steps 3 10 --step-sizes 1e-4,4e-4 4e-4,1.6e-3 1.6e-3,6.4e-3 --json tune.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import numpy as np  # noqa: E402
import torch  # noqa: E402
# First: it imports Detectron2's modeling without the torch.jit deprecation warnings (ebm_refine.detectron2).
from ebm_refine.detectron2 import load_config  # noqa: E402  # isort: skip
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from ebm_refine.detectron2 import load_detections_into_dataset  # noqa: E402
from ebm_refine.detectron2.refine_detections import compare_refinement_settings, jittered_ground_truth, load_refiner  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import (detectron2_dataset, existing_file, finite_float, non_negative_int,  # noqa: E402
                                       number_list, output_file, positive_int)
from ebm_refine.utils.errors import UserError  # noqa: E402
from ebm_refine.utils.fileio import atomic_write_json, atomic_write_text, temporary_folder  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, type=existing_file)
    p.add_argument("--weights", required=True, type=existing_file)
    p.add_argument("--dataset", default="coco128_train2017_holdout", type=detectron2_dataset, help="held-out training images (registered)")
    p.add_argument("--detections", type=existing_file, help="the detector's COCO results file on --dataset's images (instead of "
                   "stand-ins: --sigmas / --draws are then unused)")
    p.add_argument("--sigmas", type=finite_float(0.0, open_low=True), nargs="+", default=[0.05, 0.1],
                   help="stand-in noise levels (> 0)")
    p.add_argument("--draws", type=positive_int, default=2, help="noise draws per level")
    p.add_argument("--steps", type=non_negative_int, nargs="+", default=[3, 10])
    p.add_argument("--step-sizes", nargs="+", required=True, metavar="CENTER,SIZE",
                   type=number_list(2, low=0.0, open_low=True), help="step-size pairs, each > 0")
    p.add_argument("--json", type=output_file, help="write the table as JSON")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("opts", nargs=argparse.REMAINDER)
    add_debug_argument(p)
    return p.parse_args(argv)


def _inputs(args, cfg):
    """The held-out records with detections attached: the detector's own (``--detections``), or one set of
    stand-ins per noise level and draw."""
    if args.detections:
        records = [dict(r) for r in DatasetCatalog.get(args.dataset)]
        load_detections_into_dataset(records, args.detections, args.dataset, min_score=cfg.MODEL.EBM.REFINER.MIN_SCORE,
                                     max_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)
        yield records
        return
    with temporary_folder() as tmp:
        for sigma in args.sigmas:
            for draw in range(args.draws):
                records = [dict(r) for r in DatasetCatalog.get(args.dataset)]
                path = os.path.join(tmp, f"standins_{sigma}_{draw}.json")
                atomic_write_text(path, json.dumps(jittered_ground_truth(records, args.dataset, sigma, seed=draw)))
                load_detections_into_dataset(records, path, args.dataset)
                yield records


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logger(name="ebm_refine")
    sizes = args.step_sizes
    cfg = load_config(args.config_file, list(args.opts))
    cfg.freeze()
    model = load_refiner(cfg, args.weights)
    settings = [{"num_steps": n, "step_size_center": c, "step_size_size": z} for n in args.steps for c, z in sizes]
    per_input = [compare_refinement_settings(cfg, model, records, args.dataset, settings)
                 for records in _inputs(args, cfg)]  # per input: one result per setting
    rows = []
    for k, setting in enumerate(settings):
        runs = [results[k] for results in per_input]
        row = {**setting,
               "ap_inputs": float(np.mean([r["ap"]["unrefined"]["AP"] for r in runs])),
               "ap_refined": float(np.mean([r["ap"]["refined"]["AP"] for r in runs])),
               "ap_refined_per_input": [r["ap"]["refined"]["AP"] for r in runs],
               "mean_iou_gain": float(np.mean([r["box_change"]["mean_iou_refined"] - r["box_change"]["mean_iou_unrefined"]
                                               for r in runs]))}
        rows.append(row)
    finite = [r for r in rows if math.isfinite(r["ap_refined"])]
    if not finite:  # e.g. inputs without a single matched box: no setting can be chosen
        raise UserError(f"{args.dataset}: COCO AP of the refined boxes is not a number for any setting (no "
                        "ground-truth box to score against?); choose held-out images with annotations")
    best = max(finite, key=lambda r: r["ap_refined"])
    inputs = (f"detections {args.detections}" if args.detections else
              f"stand-ins: ground truth jittered by sigma {args.sigmas}, {args.draws} draws each")
    print(f"\nRefinement settings on {args.dataset} ({inputs}):")
    for row in rows:
        mark = "  <- best" if row is best else ""
        print(f"  steps {row['num_steps']:3d}  step sizes ({row['step_size_center']:g}, {row['step_size_size']:g}):  "
              f"AP {row['ap_inputs']:.2f} -> {row['ap_refined']:.2f}  mean IoU gain {row['mean_iou_gain']:+.4f}{mark}")
    if args.json:
        atomic_write_json(args.json, {"dataset": args.dataset, "detections": args.detections,
                                      "sigmas": None if args.detections else args.sigmas,
                                      "draws": None if args.detections else args.draws,
                                      "weights": args.weights, "rows": rows, "best": best})
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
