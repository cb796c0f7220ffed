#!/usr/bin/env python
"""Fit the detector-aware proposal (MODEL.EBM.DETECTOR_PROPOSAL.FILE) to a detector's output on TRAINING images.

Every detection that covers a ground-truth box (IoU >= --iou, same class) gives a residual: the detection in
the relative encoding of its ground truth (centre offset in units of the box size, log-size ratios). A
diagonal Gaussian mixture is fitted to the residuals by EM and written as JSON; training with it draws a share
of the proposal samples where this detector's boxes lie.

    python tools/fit_detector_proposal.py --dataset coco128_train2017_fit coco_tiny_train2017 \\
        --detections yolox_nano_coco128_fit.json yolox_nano_coco_tiny.json --output yolox_nano_residuals.json
"""
from __future__ import annotations

import argparse
import json
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.detectron2.detector_proposal import fit_detector_proposal  # noqa: E402
from ebm_refine.detectron2.refine_detections import dataset_from_files  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import (detectron2_dataset, existing_file, existing_folder, finite_float,  # noqa: E402
                                       non_negative_int, output_file, positive_int)
from ebm_refine.utils.errors import UserError  # noqa: E402
from ebm_refine.utils.fileio import atomic_write_text  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detections", required=True, nargs="+", type=existing_file,
                   help="COCO results json of the detector on the training images, one per dataset")
    p.add_argument("--dataset", nargs="+", type=detectron2_dataset, help="registered dataset names (instead of --dataset-json/--image-root)")
    p.add_argument("--dataset-json", type=existing_file, help="COCO-format json of the images, with annotations")
    p.add_argument("--image-root", type=existing_folder, help="folder of the images named in --dataset-json")
    p.add_argument("--output", required=True, type=output_file, help="the residual-mixture JSON to write")
    p.add_argument("--components", type=positive_int, default=4, help="mixture components (default 4)")
    p.add_argument("--iou", type=finite_float(0.0, 1.0, True, True), default=0.5, help="least IoU of a detection with its ground truth")
    p.add_argument("--min-score", type=finite_float(0.0, 1.0), default=0.0, help="use detections scoring at least this")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the EM start")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if bool(args.dataset) == bool(args.dataset_json):
        raise UserError("pass either --dataset or --dataset-json with --image-root")
    if args.dataset_json and not args.image_root:
        raise UserError("--dataset-json needs --image-root")
    datasets = args.dataset or [dataset_from_files(args.dataset_json, args.image_root)]
    if len(datasets) != len(args.detections):
        raise UserError(f"give one --detections file per dataset: {len(datasets)} datasets, "
                        f"{len(args.detections)} detections files")
    mixture, res = fit_detector_proposal(datasets, args.detections, num_components=args.components,
                                         iou_threshold=args.iou, min_score=args.min_score, seed=args.seed)
    atomic_write_text(args.output, json.dumps(mixture.to_dict(), indent=2))
    med = ", ".join(f"{v:+.4f}" for v in res.median(dim=0).values.tolist())
    print(f"{res.shape[0]} residuals (median dcx, dcy, dlog w, dlog h: {med}) -> {args.components} components "
          f"written to {args.output}")
    for w, m, s in zip(mixture.weights.tolist(), mixture.means.tolist(), mixture.sigmas.tolist()):
        print(f"  weight {w:.3f}  mean [{', '.join(f'{v:+.3f}' for v in m)}]  sigma [{', '.join(f'{v:.3f}' for v in s)}]")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
