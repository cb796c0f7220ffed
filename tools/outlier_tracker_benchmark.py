#!/usr/bin/env python
"""Outlier experiment for the tracker's box estimator: plain loss vs DeepGUM under annotation noise.

Trains the box estimator of a tracker training config with a share of its training frames' boxes made wrong
(``data.annotation_noise``), with and without DeepGUM (``robust.enabled``), and tracks clean sequences with
each network (by default the 6 validation sequences of ``../shared/data/tracking_train``, never trained on);
OTB-protocol AUC per run and mean ± std over seeds, and DeepGUM's outlier precision / recall during training
(:mod:`ebm_refine.tracking.train.outlier_benchmark`).

    python tools/outlier_tracker_benchmark.py --fractions 0.4 --kinds shift_scale --seeds 0 1 2 \\
        --output output/outlier_tracker
    # two processes on two cores: one per method, same output folder
    python tools/outlier_tracker_benchmark.py --methods plain ... & python tools/outlier_tracker_benchmark.py --methods deepgum ...

Each run is a full training (600 iterations of configs/tracking/train_ebm.yaml: ~14 min plain, more with
DeepGUM's residuals, on one core) and a tracking run (~1-2 min). Results: ``<output>/outlier_tracker_benchmark.json``
and ``.png`` (per ``--methods`` set when processes share a folder: ``--tag`` names them apart).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.data.annotation_noise import NOISE_KINDS  # noqa: E402
from ebm_refine.tracking.datasets import load_dataset  # noqa: E402
from ebm_refine.tracking.train.config import load_train_config  # noqa: E402
from ebm_refine.tracking.train.outlier_benchmark import METHODS, format_summary, run_tracker_outlier_benchmark  # noqa: E402
from ebm_refine.utils import UserError, shared_data_dir  # noqa: E402
from ebm_refine.tracking.tracker.params import load_tracker_params  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import existing_file, finite_float, non_negative_int, output_folder  # noqa: E402
from ebm_refine.utils.config import apply_dotted_overrides  # noqa: E402

VALIDATION = "Biker,Woman,S1301,wakeboard4,MotorRolling,group2_2"
# DeepGUM's residual refinement: the step lengths that recover a wrong scale on the validation pairs
# (docs/tracker_results.md, Fix 2's sweep); the paper's 2e-4 / 1e-3 barely move a box in 10 steps.
ROBUST = {"step_size_center": 1e-3, "step_size_size": 1e-2}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tracking/train_ebm.yaml", type=existing_file, help="training config")
    ap.add_argument("--output", default="output/outlier_tracker", type=output_folder, help="output folder")
    ap.add_argument("--fractions", type=finite_float(0.0, 1.0, open_high=True), nargs="+", default=[0.0, 0.4],
                    help="outlier shares")
    ap.add_argument("--kinds", nargs="+", choices=NOISE_KINDS, default=["shift_scale"], help="noise kinds")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", default="ebm_paper",
                    help="tracker parameter set that evaluates each network (default: the paper's tracker, which the "
                         "documented numbers used)")
    ap.add_argument("--root", help="clean evaluation sequences in OTB layout (default: <shared data>/tracking_train)")
    ap.add_argument("--sequences", default=VALIDATION, help=f"comma-separated names (default: {VALIDATION})")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="training config overrides for every run (robust.* settings the DeepGUM runs)")
    ap.add_argument("--tag", default="", help="suffix of the results files (processes sharing --output)")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    root = args.root or (str(shared_data_dir() / "tracking_train") if shared_data_dir() else None)
    if root is None or not os.path.isdir(root):
        raise UserError(f"{root}: no sequence folder; pass --root with sequences in OTB layout")
    load_tracker_params(args.params)  # the evaluating parameter set must exist before hours of training
    base = apply_dotted_overrides(load_train_config(args.config), args.set)
    robust = dict(ROBUST, **(base.pop("robust", None) or {}))
    robust.pop("enabled", None)
    sequences = load_dataset("otb", root, sequences=[s for s in args.sequences.split(",") if s])
    result = run_tracker_outlier_benchmark(args.output, base, sequences, fractions=args.fractions, kinds=args.kinds,
                                           methods=args.methods, seeds=args.seeds, robust=robust,
                                           params=args.params, tag=args.tag)
    print(f"\nTracker outlier experiment ({args.params}, OTB-protocol AUC on {len(sequences)} clean sequences; "
          f"mean ± std over seeds {args.seeds}, the seed varies noise, training and candidate boxes):\n"
          + format_summary(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
