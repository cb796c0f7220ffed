#!/usr/bin/env python
"""Train and evaluate Faster R-CNN with the EBM ROI head, in Detectron2's own ``train_net`` flow.

    python tools/train_net.py --config-file configs/COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python tools/train_net.py --config-file ... --resume
    python tools/train_net.py --config-file ... --register-coco my_train /data/train.json /data/images \
        DATASETS.TRAIN "('my_train',)"

Evaluation reports COCO box AP of the unrefined and the EBM-refined detections side by side and
writes them to ``<OUTPUT_DIR>/inference/<dataset>/ebm_refinement_results.json``. Expected failures (bad
config keys, missing files, unusable checkpoints or datasets) print one line; ``--debug`` shows tracebacks.
"""
import os
import sys
from typing import List, Optional

# First: it imports Detectron2's modeling without the torch.jit deprecation warnings (ebm_refine.detectron2).
from ebm_refine.detectron2 import EBMCheckpointer, EBMTrainer, load_config  # isort: skip

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from ebm_refine.detectron2.datasets import register_coco
from ebm_refine.utils.cli import UsageError, add_debug_argument, run_cli
from ebm_refine.utils.cli_args import check_existing_file, non_negative_int, positive_int
from ebm_refine.utils.errors import MissingFileError


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # Detectron2 sets up its own loggers only; ours go to the same console and log file.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ebm_refine")
    return cfg


def main(args):
    for name, json_file, image_root in args.register_coco or ():
        register_coco(name, json_file, image_root)
    cfg = setup(args)
    if args.eval_only:
        model = EBMTrainer.build_model(cfg)
        EBMCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = EBMTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = EBMTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_before_launch(args) -> None:
    """What would otherwise fail only inside the launched processes (after minutes, with a traceback): the
    config, its options and --register-coco files, and a CUDA device the machine does not have."""
    import torch

    if args.config_file:
        check_existing_file(args.config_file, "--config-file")
    for name, json_file, image_root in args.register_coco or ():
        check_existing_file(json_file, f"--register-coco {name}")
        if not os.path.isdir(image_root):
            raise MissingFileError(f"--register-coco {name}: image folder {image_root} not found")
    cfg = load_config(args.config_file, args.opts)
    if str(cfg.MODEL.DEVICE).startswith("cuda"):
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus == 0:
            raise UsageError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no GPU is present on this machine; run on the "
                             "CPU: add MODEL.DEVICE cpu to the command line (with --num-gpus 1, or --num-gpus N for "
                             "N CPU processes)")
        if args.num_gpus > gpus:
            raise UsageError(f"--num-gpus {args.num_gpus}: this machine has {gpus} GPU(s); pass --num-gpus {gpus} "
                             "or fewer (or MODEL.DEVICE cpu for CPU processes)")


def cli(argv):
    parser = add_debug_argument(default_argument_parser())
    # Detectron2's parser takes any int; these must be counts (a negative one fails inside launch).
    checked = {"num_gpus": non_negative_int, "num_machines": positive_int, "machine_rank": non_negative_int}
    for action in parser._actions:
        action.type = checked.get(action.dest, action.type)
    parser.add_argument("--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format dataset under NAME for DATASETS.TRAIN / TEST (repeatable)")
    args = parser.parse_args(argv)
    check_before_launch(args)
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


def command(argv: Optional[List[str]] = None) -> int:
    """The command line (``ebm-refine train-net``): :func:`cli` under the one-line-error convention
    (:func:`ebm_refine.utils.cli.run_cli`); returns the exit status."""
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(command())
