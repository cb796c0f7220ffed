#!/usr/bin/env python
"""Train the tracker's box estimator (EBM with ML-IS, or the IoU-Net baseline).

Examples::

    # single process (CPU or one GPU); resumes automatically from OUT/checkpoint.pth
    python tools/train_tracker.py --config configs/tracking/train_ebm.yaml --out checkpoints/tracking/ebm_mobilenet_real

    # override any config entry (dotted key = YAML value)
    python tools/train_tracker.py --config configs/tracking/train_ebm.yaml --out /tmp/run \\
        --set train.num_iterations=20 train.batch_size=4

    # DDP on one machine: N processes (gloo on CPU, nccl with --device cuda)
    python tools/train_tracker.py --config configs/tracking/train_ebm.yaml --out /tmp/run --world-size 2

    # or launched by torchrun (RANK / WORLD_SIZE / MASTER_ADDR set by it)
    torchrun --nproc_per_node 4 tools/train_tracker.py --config ... --out ... --device cuda

The tracker loads ``OUT/net.pth`` (see ``checkpoint`` in configs/tracking/ebm.yaml).

Errors (a bad config key or value, missing data, an unusable checkpoint.pth in OUT, a diverging loss) end
with one line naming the file or key and what to do, exit status 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import uuid
from typing import Any, Dict, List, Optional

from ebm_refine.utils.config import apply_dotted_overrides
from ebm_refine.tracking.train import check_train_config, load_train_config, train
from ebm_refine.utils import UserError
from ebm_refine.utils.cli import add_debug_argument, device_arg, run_cli
from ebm_refine.utils.cli_args import existing_file, output_folder, positive_int


def apply_overrides(cfg: Dict[str, Any], items: List[str]) -> Dict[str, Any]:
    """``a.b.c=value`` (value parsed as YAML) into the training config, checked strictly.

    Raises:
        UserError naming the ``--set`` item for a malformed item, an unknown key or a bad value.
    """
    cfg = apply_dotted_overrides(cfg, items)
    try:
        return check_train_config(cfg)
    except UserError as exc:
        raise type(exc)(f"--set: {exc}") from None


def _spawned(rank: int, cfg: Dict[str, Any], out: str, world_size: int, init_method: str, device: str,
             resume: bool) -> None:
    train(cfg, out, resume=resume, rank=rank, world_size=world_size, init_method=init_method, device=device,
          local_rank=rank)


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, type=existing_file, help="training YAML (configs/tracking/train_*.yaml)")
    ap.add_argument("--out", required=True, type=output_folder, help="output folder (checkpoint.pth, net.pth, log.jsonl)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    ap.add_argument("--world-size", type=positive_int, default=1, help="DDP processes to spawn on this machine")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    device_arg(args.device)  # cuda on a machine without one: one line now, not in every spawned process

    cfg = apply_overrides(load_train_config(args.config), args.set)
    resume = not args.no_resume
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        # Launched by torchrun: one process per rank, rendezvous through the environment; the GPU is
        # this machine's LOCAL_RANK-th (RANK counts over all machines).
        rank = int(os.environ["RANK"])
        result = train(cfg, args.out, resume=resume, rank=rank, world_size=int(os.environ["WORLD_SIZE"]),
                       init_method="env://", device=args.device, local_rank=int(os.environ.get("LOCAL_RANK", rank)))
    elif args.world_size > 1:
        import torch.multiprocessing as mp

        os.makedirs(args.out, exist_ok=True)
        # File rendezvous: no port to pick, no clash with other jobs on the machine.
        init_file = os.path.join(tempfile.gettempdir(), f"ebm_ddp_{uuid.uuid4().hex}")
        mp.spawn(_spawned, args=(cfg, args.out, args.world_size, f"file://{init_file}", args.device, resume),
                 nprocs=args.world_size, join=True)
        if os.path.exists(init_file):
            os.remove(init_file)
        result = {"net_path": os.path.join(args.out, "net.pth"), "world_size": args.world_size}
    else:
        result = train(cfg, args.out, resume=resume, device=args.device)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}))
    return 0


def command(argv: Optional[List[str]] = None) -> int:
    """The command line (``ebm-refine train-tracker``): :func:`main` under the one-line-error convention
    (:func:`ebm_refine.utils.cli.run_cli`); returns the exit status."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(command())
