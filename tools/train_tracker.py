#!/usr/bin/env python
"""``ebm-refine train-tracker``: train the tracker's box estimator (ebm_refine/cli/train_tracker.py; ``--help`` for the options)."""
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.cli.train_tracker import command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command())
