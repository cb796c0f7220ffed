#!/usr/bin/env python
"""The embedded default benchmark: does EBM refinement improve Faster R-CNN boxes? (no downloads)

Trains a compact-ResNet-FPN Faster R-CNN jointly with the EBM head (ML-IS) on the generated synthetic
dataset, then the IoU-Net-style baseline head on the frozen detector, and prints COCO box AP
(pycocotools) of the unrefined, EBM-refined and IoU-Net-refined boxes
(:mod:`ebm_refine.detectron2.benchmark`).

    python tools/synthetic_benchmark.py --output output/quickstart/detection
    python tools/synthetic_benchmark.py --quick        # a 2-minute smoke run

Results: ``<output>/synthetic_benchmark.json`` (and Detectron2's usual files per stage).
"""
from __future__ import annotations

import argparse
import sys
import time

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from ebm_refine.detectron2.benchmark import run_synthetic_benchmark  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import non_negative_int, output_folder, positive_int  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/quickstart/detection", type=output_folder, help="output folder")
    p.add_argument("--iters", type=positive_int, default=None, help="joint detector + EBM training iterations")
    p.add_argument("--baseline-iters", type=non_negative_int, default=None, help="IoU-Net head iterations (0 = skip)")
    p.add_argument("--quick", action="store_true", help="small smoke configuration")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config options (KEY VALUE ...)")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logger(args.output, name="ebm_refine")
    setup_logger(args.output, name="detectron2", abbrev_name="d2")  # training progress, AP tables
    t0 = time.perf_counter()
    result = run_synthetic_benchmark(args.output, args.iters, args.baseline_iters, args.quick, args.opts)
    print("\nSynthetic detection benchmark (COCO box AP on ebm_synthetic_val, pycocotools):\n" + result["table"])
    print(f"\n{result['iterations']} joint iterations + {result['baseline_iterations']} baseline iterations in "
          f"{time.perf_counter() - t0:.0f} s; results in {args.output}/synthetic_benchmark.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
