#!/usr/bin/env python
"""Outlier experiment on the synthetic detection benchmark: plain loss vs DeepGUM under annotation noise.

Injects annotation noise into ``ebm_synthetic_train`` (0 / 20 / 40 % of the boxes replaced by random boxes, or
shifted and rescaled by large factors), trains the joint detector + EBM head with and without DeepGUM
(``MODEL.EBM.ROBUST``) on each noisy set, and reports AP / AP75 of refined and unrefined boxes on the clean
validation split and DeepGUM's outlier precision / recall (:mod:`ebm_refine.detectron2.outlier_benchmark`).

    python tools/outlier_detection_benchmark.py --output output/outlier_detection        # the full grid
    python tools/outlier_detection_benchmark.py --quick --output output/outlier_quick    # smoke run
    # DeepGUM with the detector's own residuals (MODEL.EBM.ROBUST.RESIDUAL), DeepGUM runs only
    python tools/outlier_detection_benchmark.py --methods deepgum MODEL.EBM.ROBUST.RESIDUAL detector
    # one process per seed (or per setting), then one table and figure
    python tools/outlier_detection_benchmark.py --seeds 0 --output out/s0   # ... s1, s2
    python tools/outlier_detection_benchmark.py --merge out/s*/outlier_benchmark.json --output out/all

Full grid: 3 seeds x (1 clean + 2 kinds x 2 shares) x 2 methods = 30 trainings of 500 iterations (~7 min each
on 2 idle cores). Results: ``<output>/outlier_benchmark.json`` (per run and mean ± std over seeds),
``<output>/outlier_benchmark.png``; partial results are written after every run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from ebm_refine.detectron2.annotation_noise import NOISE_KINDS  # noqa: E402
from ebm_refine.detectron2.outlier_benchmark import (METHODS, format_summary, merge_results, plot_outlier_benchmark,  # noqa: E402
                                                     run_outlier_benchmark)
from ebm_refine.utils import UserError  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import (detectron2_dataset, existing_file, finite_float, non_negative_int,  # noqa: E402
                                       output_folder, positive_int)
from ebm_refine.utils.fileio import atomic_write_text  # noqa: E402

QUICK = {"fractions": [0.0, 0.4], "kinds": ["shift_scale"], "seeds": [0]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/outlier_detection", type=output_folder, help="output folder")
    p.add_argument("--fractions", type=finite_float(0.0, 1.0, open_high=True), nargs="+", default=None, help="outlier shares (default 0 0.2 0.4)")
    p.add_argument("--kinds", nargs="+", choices=NOISE_KINDS, default=None,
                   help="noise kinds (default random shift_scale)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", default=None, help="seeds (default 0 1 2)")
    p.add_argument("--iters", type=positive_int, default=None, help="training iterations per run (default 500; quick 30)")
    p.add_argument("--dataset", default="ebm_synthetic_train", type=detectron2_dataset, help="clean training set to corrupt")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 0 and 40 %% shift_scale noise, seed 0, 30 iterations")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                   help="train with the plain loss, DeepGUM, or both (default both)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--merge", nargs="+", metavar="JSON", type=existing_file,
                   help="train nothing: combine these outlier_benchmark.json files (e.g. one per seed or setting) "
                        "into <output>/outlier_benchmark.json and .png")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config options for every run (KEY VALUE ...)")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.merge:
        return _merge(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logger(args.output, name="ebm_refine")
    setup_logger(args.output, name="detectron2", abbrev_name="d2")
    grid = dict(QUICK) if args.quick else {"fractions": [0.0, 0.2, 0.4], "kinds": ["random", "shift_scale"],
                                           "seeds": [0, 1, 2]}
    for key in ("fractions", "kinds", "seeds"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    t0 = time.perf_counter()
    result = run_outlier_benchmark(args.output, iters=args.iters, quick=args.quick, base_dataset=args.dataset,
                                   opts=args.opts, methods=args.methods, **grid)
    print("\nOutlier experiment (COCO box AP on the clean validation split; mean ± std over seeds "
          f"{grid['seeds']}, seed varies noise and SEED):\n" + format_summary(result))
    print(f"\n{len(result['runs'])} trainings of {result['iterations']} iterations in {time.perf_counter() - t0:.0f} s; "
          f"results in {args.output}/outlier_benchmark.json and .png")
    return 0


def _merge(args) -> int:
    results = []
    for path in args.merge:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file; pass the outlier_benchmark.json of earlier runs") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno}); pass an outlier_benchmark.json") from None
        if not isinstance(results[-1], dict) or "runs" not in results[-1] or "iterations" not in results[-1]:
            raise UserError(f"{path}: not an outlier_benchmark.json (no 'runs' / 'iterations')")
    try:
        result = merge_results(results, args.merge)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "outlier_benchmark.json", json.dumps(result, indent=2))
    plot_outlier_benchmark(result, out / "outlier_benchmark.png")
    print(format_summary(result))
    print(f"\n{len(result['runs'])} runs from {len(results)} files; results in {out}/outlier_benchmark.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
