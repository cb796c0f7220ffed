#!/usr/bin/env python
"""``ebm-refine refine-detections``: refine another detector's COCO results file (ebm_refine/cli/refine_detections.py; ``--help`` for the options)."""
import sys

from ebm_refine.cli.refine_detections import command

if __name__ == "__main__":
    sys.exit(command())
