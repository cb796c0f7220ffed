#!/usr/bin/env python
"""``ebm-refine train-tracker``: train the tracker's box estimator (ebm_refine/cli/train_tracker.py; ``--help`` for the options)."""
import sys

from ebm_refine.cli.train_tracker import command

if __name__ == "__main__":
    sys.exit(command())
