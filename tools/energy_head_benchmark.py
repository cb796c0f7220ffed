#!/usr/bin/env python
"""FCEnergyHead vs WeldonEnergyHead on the synthetic detection benchmark, over training seeds.

For each head and each seed (config ``SEED``), trains the compact Faster R-CNN jointly with the head
(the benchmark's first stage; no IoU-Net stage) and prints, mean ± std over the seeds: COCO AP and AP75 of the
refined and unrefined boxes, the head's parameter count and the refinement time per image
(ebm_refine/detectron2/head_benchmark.py).

    python tools/energy_head_benchmark.py --output output/energy_heads --threads 2     # 6 runs, ~40 min, 2 cores
    python tools/energy_head_benchmark.py --quick --seeds 0 --output /tmp/heads_quick  # smoke run
    python tools/energy_head_benchmark.py MODEL.EBM.HEAD.WELDON_KMIN 0                 # no negative evidence

Trailing ``KEY VALUE`` options apply to every head (e.g. ``MODEL.EBM.HEAD.WELDON_ALPHA 0.5``). Results:
``<output>/energy_head_benchmark.json``; each run's files under ``<output>/<head>/seed<s>/`` (finished runs
are kept and reused unless ``--overwrite``).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from ebm_refine.detectron2.head_benchmark import HEADS, run_head_benchmark  # noqa: E402
from ebm_refine.utils import UserError  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import non_negative_int, output_folder, positive_int  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/energy_heads", type=output_folder, help="output folder")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2], help="training seeds (config SEED)")
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS), help="heads to compare")
    p.add_argument("--iters", type=positive_int, default=None, help="joint training iterations (default 500; 30 quick)")
    p.add_argument("--quick", action="store_true", help="the benchmark's small smoke configuration")
    p.add_argument("--timing-images", type=positive_int, default=50, help="validation images for the refinement timing")
    p.add_argument("--overwrite", action="store_true", help="re-run finished runs")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config options (KEY VALUE ...) for every head")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if len(args.opts) % 2:
        raise UserError(f"config options must be KEY VALUE pairs, got an odd number: {' '.join(args.opts)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logger(args.output, name="ebm_refine")
    setup_logger(args.output, name="detectron2", abbrev_name="d2")
    t0 = time.perf_counter()
    result = run_head_benchmark(args.output, args.seeds, {h: HEADS[h] for h in args.heads}, quick=args.quick,
                                iters=args.iters, timing_images=args.timing_images, opts=args.opts,
                                overwrite=args.overwrite)
    print("\n" + result["table"])
    print(f"\n{time.perf_counter() - t0:.0f} s; results in {args.output}/energy_head_benchmark.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
