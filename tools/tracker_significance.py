#!/usr/bin/env python
"""Is one tracker significantly better than another? Paired per-frame errors over several runs.

Scores each method's result folders (one per run: candidate-box seed, training seed; pytracking layout
``<folder>/<seq>.txt``) frame by frame with the pytracking protocol's rules, and prints for every pair of
methods, per run and pooled over the runs: the median difference of 1 - IoU with its 95 % confidence
interval, the share of frames where the first method is better, the Wilcoxon signed-rank p-value, the winner
and Holm-adjusted pooled p-values (ebm_refine/tracking/evaluation/per_frame.py,
ebm_refine/evaluation/significance.py). ``--unit sequence`` tests per-sequence mean errors instead (frames of
one sequence are not independent: per-frame p-values are optimistic).

    R=tracking_results/ebm_atom
    python tools/tracker_significance.py --dataset otb --root ../shared/data/tracking/otb \\
        --method EBM $R/ebm+seed=0 $R/ebm+seed=1 $R/ebm+seed=2 \\
        --method IoU-Net $R/iounet+seed=0 $R/iounet+seed=1 $R/iounet+seed=2 \\
        --method none $R/norefine $R/norefine $R/norefine --json tracker_significance.json

A deterministic method (no refinement) has one folder; give it once per run. ``--errors FILE`` also writes
the per-frame errors (per-sample error format; tools/compare_runs.py reads it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.evaluation import summary_rows  # noqa: E402
from ebm_refine.tracking.datasets import dataset_names, load_dataset  # noqa: E402
from ebm_refine.tracking.evaluation.per_frame import (  # noqa: E402
    UNITS,
    tracker_per_sample_errors,
    tracker_significance,
)
from ebm_refine.utils import UserError, atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, log_to_stderr, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import finite_float, output_file  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=dataset_names(), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", help="trackingnet: TRAIN_k chunks (comma list); lasot: train/test/all; got10k: train/val")
    p.add_argument("--sequences", help="comma-separated subset of sequences (default: all)")
    p.add_argument("--method", nargs="+", action="append", required=True, metavar=("NAME", "FOLDER"),
                   help="a method's name and its result folders, one per run (repeat for every method)")
    p.add_argument("--run-names", nargs="+", help="names of the runs (default: 0, 1, ...)")
    p.add_argument("--unit", choices=UNITS, default="frame", help="a sample is a frame (default) or a sequence")
    p.add_argument("--confidence", type=finite_float(0.0, 1.0, True, True), default=0.95, help="level of the median-difference interval")
    p.add_argument("--alpha", type=finite_float(0.0, 1.0, True, True), default=0.05, help="significance level for naming a winner")
    p.add_argument("--json", type=output_file, help="write the comparisons here")
    p.add_argument("--errors", type=output_file, help="write the per-sample errors here (ebm_refine.per_sample_errors/1)")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    log_to_stderr()
    if not 0.0 < args.confidence < 1.0 or not 0.0 < args.alpha < 1.0:
        raise UserError("--confidence and --alpha must lie strictly between 0 and 1")
    methods = {}
    for spec in args.method:
        if len(spec) < 2:
            raise UserError(f"--method {spec[0]}: give the method's name, then one result folder per run")
        if spec[0] in methods:
            raise UserError(f"--method {spec[0]!r} given twice; every method needs its own name")
        methods[spec[0]] = spec[1:]
    for name, folders in methods.items():
        for folder in folders:
            if not os.path.isdir(folder):
                raise UserError(f"{folder}: results folder of {name} not found; run the tracker first")
    subset = [s.strip() for s in args.sequences.split(",") if s.strip()] if args.sequences else None
    options = {}
    if args.split and args.dataset == "trackingnet":
        options["chunks"] = [c.strip() for c in args.split.split(",")]
    elif args.split and args.dataset in ("lasot", "got10k"):
        options["split"] = args.split
    sequences = load_dataset(args.dataset, args.root, sequences=subset, **options)
    data = tracker_per_sample_errors(sequences, methods, run_names=args.run_names, unit=args.unit)
    comparisons = tracker_significance(data, confidence=args.confidence, alpha=args.alpha)
    print(f"{args.dataset}: {len(sequences)} sequence(s), {len(data.runs)} run(s), "
          f"{len(data.runs[0].ids)} {args.unit}s per run (pytracking protocol rules; frame 0 and invalid frames "
          "left out)\n")
    print("\n\n".join(c.format_table() for c in comparisons))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary_rows(comparisons), indent=2))
        print(f"\nwrote {args.json}")
    if args.errors:
        data.save(args.errors)
        print(f"wrote {args.errors}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
