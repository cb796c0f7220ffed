#!/usr/bin/env python
"""Train and evaluate Faster R-CNN with the EBM ROI head, in Detectron2's own ``train_net`` flow.

    python tools/train_net.py --config-file configs/COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/.../model_final.pth
    python tools/train_net.py --config-file ... --resume

Evaluation reports COCO box AP of the unrefined and the EBM-refined detections side by side and
writes them to ``<OUTPUT_DIR>/inference/<dataset>/ebm_refinement_results.json``.
"""
import logging
import os
import weakref

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.evaluation import COCOEvaluator, verify_results
from detectron2.utils.logger import setup_logger

from ebm_refine.detectron2 import EBMCheckpointer, RefinementCOCOEvaluator, add_ebm_config, freeze_detector

logger = logging.getLogger("ebm_refine")


class Trainer(DefaultTrainer):
    """DefaultTrainer + the EBM plugin: detector freezing, energy-head checkpoint log, refined/unrefined AP."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, with two changes: DDP gets device_ids=None for CPU models
        # (Detectron2 passes [local_rank], which DDP rejects for CPU modules under gloo), and the
        # checkpointer says whether the energy head came from the checkpoint.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # setup_logger not called yet
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs = {"broadcast_buffers": False}
        if cfg.MODEL.DEVICE == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = EBMCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        if cfg.MODEL.EBM.FREEZE_DETECTOR:
            n = freeze_detector(model)
            logger.info("MODEL.EBM.FREEZE_DETECTOR: training the energy head only (%d parameters)", n)
        return model

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        json_file = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
        if json_file and not os.path.exists(json_file):
            DatasetCatalog.get(dataset_name)  # datasets generated on first use (the synthetic benchmark)
        if cfg.MODEL.ROI_HEADS.NAME == "EBMROIHeads":
            return RefinementCOCOEvaluator(dataset_name, output_folder)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)


def setup(args):
    cfg = get_cfg()
    add_ebm_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    # Detectron2 sets up its own loggers only; ours go to the same console and log file.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ebm_refine")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        EBMCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
