#!/usr/bin/env python
"""How a tracker network's box estimation behaves on annotated real frames (choose settings with it).

Two measurements (``ebm_refine.tracking.tracker.diagnostics``), on sequences in OTB layout (by default the
validation part of ``../shared/data/tracking_train``; never the evaluation sequences):

* ``pairs``: (first frame, later frame) pairs cropped as the tracker crops them, with a search region of
  the right size and one ``--size-errors`` times it. For each: how often f ranks shrunk, grown, part and
  shifted versions of the true box above the true box, and where box estimation (the tracker's own
  procedure and parameters) ends when started from the true box scaled by ``--init-scales``.
* ``track``: the whole tracker on the sequences: tracked/true area ratio, IoU, collapse share, and in
  collapsed frames whether f prefers the collapsed box to the true one.

    python tools/probe_box_refinement.py --params ebm --pairs 200 --json probe.json
    python tools/probe_box_refinement.py --params iounet --set box_refinement.step_size_center=1e-2 box_refinement.step_size_size=5e-2 --probe pairs
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

from ebm_refine.tracking.datasets import load_dataset  # noqa: E402
from ebm_refine.tracking.tracker import EBMAtomTracker  # noqa: E402
from ebm_refine.tracking.tracker.diagnostics import probe_pairs, probe_tracking, summarize_pairs  # noqa: E402
from ebm_refine.tracking.tracker.params import load_tracker_params  # noqa: E402
from ebm_refine.utils.config import apply_dotted_overrides  # noqa: E402
from ebm_refine.utils import UserError, atomic_write_text, shared_data_dir  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import non_negative_int, number_list, output_file, positive_int  # noqa: E402

VALIDATION = "Biker,Woman,S1301,wakeboard4,MotorRolling,group2_2"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="ebm", help="tracker parameter set (name in configs/tracking or a YAML path)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="tracker parameter overrides, e.g. checkpoint=out/net.pth box_refinement.num_steps=5")
    ap.add_argument("--root", help="sequences in OTB layout (default: <shared data>/tracking_train)")
    ap.add_argument("--sequences", default=VALIDATION, help=f"comma-separated names (default: {VALIDATION})")
    ap.add_argument("--probe", choices=("pairs", "track", "both"), default="both")
    ap.add_argument("--pairs", type=positive_int, default=200)
    ap.add_argument("--seed", type=non_negative_int, default=0, help="pair sampling and candidate boxes")
    ap.add_argument("--size-errors", type=number_list(low=0.0, open_low=True), default="1,0.7,1.4",
                    help="search-region size factors (> 0)")
    ap.add_argument("--init-scales", type=number_list(low=0.0, open_low=True), default="0.7,1,1.4",
                    help="box estimation starts from the truth scaled by these (> 0)")
    ap.add_argument("--json", type=output_file, help="write the summary here")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    root = args.root or (str(shared_data_dir() / "tracking_train") if shared_data_dir() else None)
    if root is None or not os.path.isdir(root):
        raise UserError(f"{root}: no sequence folder; pass --root with sequences in OTB layout")
    names = [s.strip() for s in args.sequences.split(",") if s.strip()]
    sequences = load_dataset("otb", root, sequences=names)
    params = load_tracker_params(args.params, apply_dotted_overrides({}, args.set))
    tracker = EBMAtomTracker(params)
    summary = {"params": args.params, "overrides": args.set, "checkpoint": params["checkpoint"],
               "sequences": names, "seed": args.seed}
    t0 = time.time()
    if args.probe in ("pairs", "both"):
        records = probe_pairs(tracker.net, sequences, params, num_pairs=args.pairs, seed=args.seed,
                              size_errors=args.size_errors, init_scales=args.init_scales)
        summary["pairs"] = summarize_pairs(records)
    if args.probe in ("track", "both"):
        summary["track"] = probe_tracking(tracker, sequences)
    summary["seconds"] = round(time.time() - t0, 1)
    _print(summary)
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n")
    return 0


def _print(summary) -> None:
    print(f"{summary['params']} {' '.join(summary['overrides'])} ({summary['checkpoint']})")
    for err, s in summary.get("pairs", {}).items():
        worst = sorted(s["boxes"].items(), key=lambda kv: -kv[1]["p_beats_gt"])[:4]
        print(f"  search region x{err}: {s['pairs']} pairs, truth best of the set {100 * s['p_gt_best']:.0f} %; "
              "most often above the truth: " + ", ".join(f"{n} {100 * v['p_beats_gt']:.0f} %" for n, v in worst))
        for init, r in s["refined"].items():
            print(f"    from truth x{init}: median area ratio {r['median_area_ratio']:.2f}, collapse "
                  f"{100 * r['collapse']:.0f} %, blow-up {100 * r['blow_up']:.0f} %, mean IoU {r['mean_iou']:.3f}")
    if "track" in summary:
        for name, t in list(summary["track"]["sequences"].items()) + [("all", summary["track"]["all"])]:
            pref = "-" if t["energy_prefers_collapsed"] is None else f"{100 * t['energy_prefers_collapsed']:.0f} %"
            print(f"  track {name:14s} median area ratio {t['median_area_ratio']:.2f}, mean IoU {t['mean_iou']:.3f}, "
                  f"collapsed {100 * t['collapsed']:.0f} %, blown up {100 * t['blown_up']:.0f} %, "
                  f"f prefers the collapsed box {pref}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
