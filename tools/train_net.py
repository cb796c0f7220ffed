#!/usr/bin/env python
"""``ebm-refine train-net``: train / evaluate Faster R-CNN with the EBM head (ebm_refine/cli/train_net.py; ``--help`` for the options)."""
import sys

from ebm_refine.cli.train_net import command

if __name__ == "__main__":
    sys.exit(command())
