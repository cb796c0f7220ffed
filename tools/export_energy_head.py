#!/usr/bin/env python
"""Write a trained refiner's energy head alone (with its backbone's fingerprint) for MODEL.EBM.HEAD.WEIGHTS.

    python tools/export_energy_head.py output/ebm_refiner_yolox_nano/model_final.pth --output head.pth

A refiner trained on a frozen detector (e.g. configs/COCO-Refine/ebm_refiner_yolox_nano.yaml) saves the
detector's trunk beside the head. The exported file keeps the head's tensors and a SHA-256 fingerprint of the
trunk it was trained on, so it can be shared without the detector's weights; loading it onto another trunk is
a one-line error (ebm_refine/detectron2/checkpoint.py).
"""
from __future__ import annotations

import argparse
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.detectron2.checkpoint import export_energy_head  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import existing_file, output_file  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=existing_file, help="a trained refiner's model_final.pth")
    p.add_argument("--output", required=True, type=output_file, help="the head-only .pth to write")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    n = export_energy_head(args.checkpoint, args.output)
    print(f"wrote the energy head ({n} tensors) and its backbone's fingerprint to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
