#!/usr/bin/env python
"""Is one method significantly better than another? Paired per-sample errors over several runs.

Prints, per run and pooled over the runs: the median difference of the errors (A - B, lower is better)
with its 95 % confidence interval, the share of samples where A is better, the Wilcoxon signed-rank
p-value and the winner (see ebm_refine/evaluation/significance.py for the protocol).

    # a per-sample error file written by a benchmark (JSON, ebm_refine.per_sample_errors/1)
    python tools/compare_runs.py errors.json --a refined --b unrefined
    python tools/compare_runs.py errors.json                       # every pair of its methods (+ Holm)
    # or plain files, one error per line, one file per run and method
    python tools/compare_runs.py --a-files ebm_s0.txt ebm_s1.txt --b-files none_s0.txt none_s1.txt --names ebm none
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.evaluation import (  # noqa: E402
    CI_METHODS,
    check_distinct_runs,
    PerSampleErrors,
    compare_methods,
    compare_runs,
    load_per_sample_errors,
    read_error_column,
    summary_rows,
)
from ebm_refine.utils import UserError, atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import existing_file, finite_float, output_file  # noqa: E402


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("errors", nargs="?", type=existing_file, help="per-sample error file (JSON) with one or more runs")
    ap.add_argument("--a", help="method A (a name in the file); with --b: compare only this pair")
    ap.add_argument("--b", help="method B")
    ap.add_argument("--a-files", nargs="+", metavar="FILE", type=existing_file, help="method A: one error file per run (text or .npy)")
    ap.add_argument("--b-files", nargs="+", metavar="FILE", type=existing_file, help="method B: the same runs, in the same order")
    ap.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"), help="names for --a-files/--b-files")
    ap.add_argument("--metric", default=None, help="what the errors are, for the table (default: from the file)")
    ap.add_argument("--confidence", type=finite_float(0.0, 1.0, True, True), default=0.95, help="level of the median-difference interval")
    ap.add_argument("--alpha", type=finite_float(0.0, 1.0, True, True), default=0.05, help="significance level for naming a winner")
    ap.add_argument("--ci", choices=CI_METHODS, default="order", help="median interval: order statistics or bootstrap")
    ap.add_argument("--json", type=output_file, help="also write the comparison(s) here")
    add_debug_argument(ap)
    return ap.parse_args(argv)


def _load(args: argparse.Namespace) -> PerSampleErrors:
    if args.errors and (args.a_files or args.b_files):
        raise UserError("give either a per-sample error file or --a-files/--b-files, not both")
    if args.errors:
        return load_per_sample_errors(args.errors)
    if not (args.a_files and args.b_files):
        raise UserError("nothing to compare: give a per-sample error file, or --a-files and --b-files")
    if len(args.a_files) != len(args.b_files):
        raise UserError(f"--a-files has {len(args.a_files)} runs, --b-files {len(args.b_files)}; "
                        "give one file per run for both methods")
    name_a, name_b = args.names
    if name_a == name_b:
        raise UserError(f"--names: the two methods need different names, got {name_a!r} twice")
    data = PerSampleErrors()
    for r, (fa, fb) in enumerate(zip(args.a_files, args.b_files)):
        a, b = read_error_column(fa), read_error_column(fb)
        if a.size != b.size:
            raise UserError(f"{fb}: {b.size} errors but {fa} has {a.size}; paired runs need the same samples")
        data.add_run(str(r), {name_a: a, name_b: b})
    check_distinct_runs(data, "--a-files/--b-files")
    return data


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    data = _load(args)
    source = args.errors or "--a-files/--b-files"
    kw = dict(ids=data.ids(), run_names=[r.name for r in data.runs], metric=args.metric or data.metric,
              confidence=args.confidence, alpha=args.alpha, ci_method=args.ci)
    if args.a or args.b:
        if not (args.a and args.b):
            raise UserError("--a and --b go together; give both method names (or neither for every pair)")
        for m in (args.a, args.b):
            if m not in data.methods:
                raise UserError(f"{source}: no method {m!r} in every run; methods: {', '.join(data.methods)}")
        comparisons = [compare_runs(data.method_runs(args.a), data.method_runs(args.b), names=(args.a, args.b), **kw)]
    else:
        methods = data.methods
        if len(methods) < 2:
            raise UserError(f"{source}: needs at least two methods in every run, found {methods}")
        comparisons = compare_methods({m: data.method_runs(m) for m in methods}, **kw)
    print(f"{len(data.runs)} run(s) of per-{data.unit} errors from {source}\n")
    print("\n\n".join(c.format_table() for c in comparisons))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary_rows(comparisons), indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
