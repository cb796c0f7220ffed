#!/usr/bin/env python
"""Convert YOLOX-nano's ONNX export (``yolox_nano.onnx``) to a Detectron2 checkpoint for ``MODEL.WEIGHTS``.

    python tools/convert_yolox_onnx.py ../shared/weights/yolox_nano.onnx --output checkpoints/detectron2/yolox_nano.pth

Reads the initializers with the ``onnx`` package (no onnxruntime, nothing executed) and writes the state dict
of the plugin's ``YOLOX`` model atomically (ebm_refine/detectron2/yolox_onnx.py). A file that is not the 416 px
YOLOX-nano export is a one-line error (exit 2).
"""
from __future__ import annotations

import argparse
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.detectron2.yolox_onnx import convert_yolox_onnx  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import output_file  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", help="YOLOX-nano's ONNX export (input 1x3x416x416, raw per-anchor output)")
    p.add_argument("--output", required=True, type=output_file, help="the .pth to write (MODEL.WEIGHTS of the YOLOX configs)")
    add_debug_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    n = convert_yolox_onnx(args.onnx, args.output)
    print(f"wrote {n} tensors of YOLOX-nano to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
