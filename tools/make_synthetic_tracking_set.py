#!/usr/bin/env python
"""Write held-out synthetic tracking sequences to disk (``<out>/<name>/img/%06d.jpg`` + ``groundtruth.txt``).

The layout is read by the generic folder loader, so the evaluation tool scores trackers on them::

    python tools/make_synthetic_tracking_set.py --out /tmp/synthetic_test --num 12
    python tools/eval_tracking.py --dataset folder --root /tmp/synthetic_test --tracker ebm_atom/ebm

Training uses seeds 0..N (configs/tracking/train_*.yaml), the probe tool 2000000+, so the default
first seed 1000000 gives sequences no network has seen.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.data.synthetic_tracking import SyntheticConfig, SyntheticSequence, write_sequence  # noqa: E402
from ebm_refine.utils import BadValueError, MissingFileError, check_writable  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import int_in_range, non_negative_int, output_folder, positive_int  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=output_folder)
    ap.add_argument("--num", type=positive_int, default=12)
    ap.add_argument("--first-seed", type=non_negative_int, default=1_000_000)
    ap.add_argument("--frames", type=int_in_range(2), default=80)
    # the target is 12-40 % of the shorter side
    ap.add_argument("--width", type=int_in_range(64), default=320)
    ap.add_argument("--height", type=int_in_range(64), default=240)
    ap.add_argument("--background-dir", help="folder of real images used as backgrounds (half of the sequences)")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    bgs = []
    if args.background_dir:
        if not os.path.isdir(args.background_dir):
            raise MissingFileError(f"{args.background_dir}: background folder not found (--background-dir)")
        bgs = sorted(os.path.join(args.background_dir, f) for f in os.listdir(args.background_dir)
                     if f.lower().endswith((".jpg", ".png")))
        if not bgs:
            raise BadValueError(f"{args.background_dir}: no .jpg or .png images to use as backgrounds; point "
                                "--background-dir at a folder of photos")
    check_writable(args.out)
    cfg = SyntheticConfig(height=args.height, width=args.width, num_frames=args.frames, background_images=bgs)
    for k in range(args.num):
        print(write_sequence(SyntheticSequence(args.first_seed + k, cfg), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
