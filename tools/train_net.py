#!/usr/bin/env python
"""``ebm-refine train-net``: train / evaluate Faster R-CNN with the EBM head (ebm_refine/cli/train_net.py; ``--help`` for the options)."""
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.cli.train_net import command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command())
