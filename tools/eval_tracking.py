#!/usr/bin/env python
"""``ebm-refine eval-tracking``: run trackers over a tracking dataset and score them (ebm_refine/cli/eval_tracking.py; ``--help`` for the options)."""
import sys

from ebm_refine.cli.eval_tracking import command

if __name__ == "__main__":
    sys.exit(command())
