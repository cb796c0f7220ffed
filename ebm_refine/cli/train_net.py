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
import sys
from typing import List, Optional

# First: it imports Detectron2's modeling without the torch.jit deprecation warnings (ebm_refine.detectron2).
from ebm_refine.detectron2 import EBMCheckpointer, EBMTrainer, load_config  # isort: skip

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from ebm_refine.detectron2.datasets import register_coco
from ebm_refine.utils.cli import add_debug_argument, run_cli


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


def cli(argv):
    parser = add_debug_argument(default_argument_parser())
    parser.add_argument("--register-coco", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format dataset under NAME for DATASETS.TRAIN / TEST (repeatable)")
    args = parser.parse_args(argv)
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))


def command(argv: Optional[List[str]] = None) -> int:
    """The command line (``ebm-refine train-net``): :func:`cli` under the one-line-error convention
    (:func:`ebm_refine.utils.cli.run_cli`); returns the exit status."""
    return run_cli(cli, argv)


if __name__ == "__main__":
    sys.exit(command())
