"""The user commands, installed as one console script ``ebm-refine <command> [options]``.

=====================  ======================================  =====================================
``ebm-refine …``       module (``python -m …``)                in a checkout, also
=====================  ======================================  =====================================
``demo``               ``ebm_refine.cli.demo``                 ``python demo/demo.py``
``eval-tracking``      ``ebm_refine.cli.eval_tracking``        ``python tools/eval_tracking.py``
``train-tracker``      ``ebm_refine.cli.train_tracker``        ``python tools/train_tracker.py``
``train-net``          ``ebm_refine.cli.train_net``            ``python tools/train_net.py``
``refine-detections``  ``ebm_refine.cli.refine_detections``    ``python tools/refine_detections.py``
=====================  ======================================  =====================================

``python -m ebm_refine <command>`` is the same as ``ebm-refine <command>``. Names with underscores
(``eval_tracking``, the script names) and ``track-eval`` are accepted too. Each module is a thin command
line: it parses the arguments and calls the library; its ``command(argv)`` runs it under the one-line-error
convention (:func:`ebm_refine.utils.cli.run_cli`) and returns the exit status.
"""
from __future__ import annotations

import importlib
import sys
from typing import Dict, List, Optional, Sequence

__all__ = ["COMMANDS", "main"]

PROG = "ebm-refine"
# command -> (module, one-line summary). The modules are imported only when their command runs: the
# Detectron2 ones import Detectron2, and `ebm-refine --help` should stay instant.
COMMANDS: Dict[str, tuple] = {
    "demo": ("ebm_refine.cli.demo", "draw refined detections or the tracker on a video, frames or a webcam"),
    "eval-tracking": ("ebm_refine.cli.eval_tracking", "run trackers over a tracking dataset and score them"),
    "train-tracker": ("ebm_refine.cli.train_tracker", "train the tracker's box estimator (EBM or IoU-Net)"),
    "train-net": ("ebm_refine.cli.train_net", "train / evaluate Faster R-CNN with the EBM head (Detectron2)"),
    "refine-detections": ("ebm_refine.cli.refine_detections", "refine another detector's COCO results file"),
}
ALIASES = {"track-eval": "eval-tracking"}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [options]   ({PROG} <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:{width}s}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def resolve(name: str) -> Optional[str]:
    """The command a user typed (``eval_tracking``, ``eval-tracking``, ``track-eval``), or None if unknown."""
    name = name.replace("_", "-")
    name = ALIASES.get(name, name)
    return name if name in COMMANDS else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``ebm-refine <command> [options]``: runs the command's ``command(options)``; returns the exit status."""
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from ebm_refine import __version__

        print(f"{PROG} {__version__}")
        return 0
    name = resolve(argv[0])
    if name is None:
        print(f"{PROG}: error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # argparse and run_cli name the program after sys.argv[0]: usage lines and one-line errors then read
    # "ebm-refine eval-tracking: ...", the command the user typed.
    sys.argv[0] = f"{PROG} {name}"
    from ..utils.cli import exit_on_interrupt_while_starting

    exit_on_interrupt_while_starting()  # Ctrl-C while the command's modules load: one line, exit 130
    module = importlib.import_module(COMMANDS[name][0])
    return module.command(argv[1:])
