#!/usr/bin/env python
"""Refine another detector's boxes with a trained EBM box refiner, and measure the change.

    python tools/refine_detections.py \\
        --config-file configs/COCO-Refine/ebm_refiner_mobilenet_v2_fpn.yaml --weights model_final.pth \\
        --detections yolox_nano_val2017.json \\
        --dataset-json instances_val2017.json --image-root val2017/ \\
        --output yolox_nano_val2017_refined.json

Input: a COCO results file (image_id, category_id, bbox [x, y, w, h], score) and the images (a COCO-format
dataset json + image folder, or a registered dataset name). Output: the same format with refined boxes,
the original scores and the energy of each refined box. With ground truth in the dataset json it prints COCO
AP, AP50, AP75, APs, APm, APl before and after refinement, the per-box IoU change of matched detections
(mean before/after, improved / worsened, median change with a 95 % interval, Wilcoxon p) and the wall time
per image. Bad input (unknown image ids or categories, unreadable files) is a one-line error; unusable boxes
are skipped and counted (ebm_refine/detectron2/detections.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

import torch
from detectron2.utils.logger import setup_logger

from ebm_refine.detectron2 import load_config
from ebm_refine.detectron2.refine_detections import dataset_from_files, format_summary, refine_detection_file
from ebm_refine.utils.cli import add_debug_argument, run_cli
from ebm_refine.utils.cli_args import (detectron2_dataset, existing_file, existing_folder, finite_float, non_negative_int,
                                       output_file, positive_int)
from ebm_refine.utils.errors import UserError
from ebm_refine.utils.fileio import atomic_write_text


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, type=existing_file,
                   help="an EBMBoxRefiner config (configs/COCO-Refine/...)")
    p.add_argument("--weights", required=True, type=existing_file, help="the trained refiner (model_final.pth)")
    p.add_argument("--detections", required=True, type=existing_file, help="COCO results json of the detector to refine")
    p.add_argument("--dataset", type=detectron2_dataset, help="a registered dataset name (instead of --dataset-json/--image-root)")
    p.add_argument("--dataset-json", type=existing_file,
                   help="COCO-format json of the images (with annotations for evaluation)")
    p.add_argument("--image-root", type=existing_folder, help="folder of the images named in --dataset-json")
    p.add_argument("--output", required=True, type=output_file, help="refined COCO results json to write")
    p.add_argument("--report", type=output_file, help="also write the printed figures as JSON here")
    p.add_argument("--min-score", type=finite_float(0.0, 1.0), default=0.0,
                   help="refine detections scoring at least this (0..1)")
    p.add_argument("--max-per-image", type=positive_int, default=100, help="highest-scoring detections refined per image")
    p.add_argument("--steps", type=non_negative_int,
                   help="refinement steps (default: the config's MODEL.EBM.REFINE.NUM_STEPS)")
    p.add_argument("--step-size-center", type=finite_float(0.0, open_low=True),
                   help="step size for the centre (relative encoding), > 0")
    p.add_argument("--step-size-size", type=finite_float(0.0, open_low=True), help="step size for the log-size, > 0")
    p.add_argument("--no-eval", action="store_true", help="only refine and write, even with ground truth")
    p.add_argument("--per-box-errors", metavar="FILE", type=output_file,
                   help="with evaluation: write per-ground-truth-box 1 - IoU (unrefined, refined) here, the "
                        "per-sample error format of tools/compare_runs.py")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config options (KEY VALUE ...)")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if bool(args.dataset) == bool(args.dataset_json):
        raise UserError("pass either --dataset NAME or --dataset-json FILE with --image-root DIR")
    if args.dataset_json and not args.image_root:
        raise UserError("--dataset-json needs --image-root (the folder of its images)")
    setup_logger(name="ebm_refine")
    opts = list(args.opts)
    for key, value in (("NUM_STEPS", args.steps), ("STEP_SIZE_CENTER", args.step_size_center),
                       ("STEP_SIZE_SIZE", args.step_size_size)):
        if value is not None:
            opts += [f"MODEL.EBM.REFINE.{key}", str(value)]
    cfg = load_config(args.config_file, opts)
    cfg.freeze()
    dataset = args.dataset or dataset_from_files(args.dataset_json, args.image_root)
    summary = refine_detection_file(cfg, args.weights, args.detections, dataset, args.output,
                                    min_score=args.min_score, max_per_image=args.max_per_image,
                                    evaluate=False if args.no_eval else None, per_box_file=args.per_box_errors)
    print(format_summary(summary))
    print(f"Refined detections: {args.output}")
    if args.report:
        atomic_write_text(args.report, json.dumps(summary, indent=2))
    return 0


def command(argv: Optional[List[str]] = None) -> int:
    """The command line (``ebm-refine refine-detections``): :func:`main` under the one-line-error convention
    (:func:`ebm_refine.utils.cli.run_cli`); returns the exit status."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(command())
