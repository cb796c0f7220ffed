#!/usr/bin/env python
"""``ebm-refine demo``: draw refined detections or the tracker on a video, frames or a webcam (ebm_refine/cli/demo.py; ``--help`` for the options)."""
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.cli.demo import command  # noqa: E402

if __name__ == "__main__":
    sys.exit(command())
