#!/usr/bin/env python
"""``ebm-refine demo``: draw refined detections or the tracker on a video, frames or a webcam (ebm_refine/cli/demo.py; ``--help`` for the options)."""
import sys

from ebm_refine.cli.demo import command

if __name__ == "__main__":
    sys.exit(command())
