#!/usr/bin/env python
"""Is refinement significantly better? The synthetic detection benchmark over R training seeds, per box.

Runs tools/synthetic_benchmark.py's benchmark once per seed (config ``SEED`` = 0..R-1, into
``<output>/seed<s>``; finished runs are kept), gathers each run's per-ground-truth-box errors (1 - IoU of the
unrefined, EBM-refined and IoU-Net-refined boxes; see ebm_refine/detectron2/box_change.py for the matching)
and prints, for every pair of methods, per run and pooled over the runs: the median error difference with
its 95 % confidence interval, the share of boxes where the first method is better, the Wilcoxon signed-rank
p-value, the winner, and Holm-adjusted pooled p-values (ebm_refine/evaluation/significance.py).

    python tools/synthetic_significance.py --runs 5 --output output/significance/synthetic    # ~35 min, 2 cores
    python tools/synthetic_significance.py --runs 2 --quick --iters 100 --output /tmp/sig_quick  # smoke run
    python tools/synthetic_significance.py --collect-only --output output/significance/synthetic

Writes ``<output>/per_box_errors.json`` (all runs, per-sample error format: tools/compare_runs.py reads it)
and ``<output>/significance.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from ebm_refine.detectron2.box_change import PER_BOX_FILE  # noqa: E402
from ebm_refine.detectron2.multi_run import collect_runs, run_seeds, significance_tables  # noqa: E402
from ebm_refine.utils import UserError, atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import non_negative_int, output_folder, positive_int  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/significance/synthetic", type=output_folder, help="output folder (one seed<s>/ per run)")
    p.add_argument("--runs", type=positive_int, default=5, help="number of training seeds R (SEED = 0..R-1)")
    p.add_argument("--first-seed", type=non_negative_int, default=0, help="SEED of the first run")
    p.add_argument("--quick", action="store_true", help="the benchmark's small smoke configuration")
    p.add_argument("--iters", type=positive_int, default=None, help="joint detector + EBM iterations per run")
    p.add_argument("--baseline-iters", type=non_negative_int, default=None, help="IoU-Net head iterations per run (0 = skip)")
    p.add_argument("--overwrite", action="store_true", help="re-run seeds that already finished")
    p.add_argument("--collect-only", action="store_true", help="do not train: gather the finished runs in --output")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: all cores)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config options (KEY VALUE ...) for every run")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logger(args.output, name="ebm_refine")
    t0 = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.runs))
    if args.collect_only:
        files = sorted(os.path.join(args.output, d, PER_BOX_FILE) for d in os.listdir(args.output)
                       if d.startswith("seed") and os.path.isfile(os.path.join(args.output, d, PER_BOX_FILE))) \
            if os.path.isdir(args.output) else []
        if not files:
            raise UserError(f"{args.output}: no seed*/{PER_BOX_FILE}; run without --collect-only first")
    else:
        setup_logger(args.output, name="detectron2", abbrev_name="d2")
        files = run_seeds(args.output, seeds, quick=args.quick, iters=args.iters,
                          baseline_iters=args.baseline_iters, opts=args.opts, overwrite=args.overwrite)
    full, common, counts = collect_runs(files)
    text, report = significance_tables(full, common)
    full.save(os.path.join(args.output, PER_BOX_FILE))
    atomic_write_text(os.path.join(args.output, "significance.json"),
                      json.dumps({"runs": counts, "comparisons": report}, indent=2))
    print(f"\nSynthetic detection benchmark: per-box 1 - IoU over {counts['runs']} run(s) (training seed varies); "
          f"{counts['common']} ground-truth boxes matched in every run ({counts['dropped']} run-box pairs "
          "outside the pooled test)\n")
    print(text)
    print(f"\n{time.perf_counter() - t0:.0f} s; per-box errors in {args.output}/{PER_BOX_FILE}, "
          f"tables in {args.output}/significance.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
