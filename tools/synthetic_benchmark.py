#!/usr/bin/env python
"""The embedded default benchmark: does EBM refinement improve Faster R-CNN boxes? (no downloads)

1. Generates the synthetic detection dataset (deterministic, once) and trains a compact-ResNet-FPN
   Faster R-CNN jointly with the EBM head (ML-IS) through tools/train_net.py's Trainer.
2. Trains the IoU-Net-style baseline head (same architecture, IoU regression) on the frozen detector.
3. Evaluates unrefined, EBM-refined and IoU-Net-refined boxes with pycocotools and prints the table.

    python tools/synthetic_benchmark.py --output output/quickstart/detection
    python tools/synthetic_benchmark.py --quick        # a 2-minute smoke run

Results: ``<output>/synthetic_benchmark.json`` (and Detectron2's usual files per stage).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ for train_net

from detectron2.utils.logger import setup_logger  # noqa: E402
from train_net import Trainer  # noqa: E402

from ebm_refine.detectron2 import EBMCheckpointer, get_ebm_cfg  # noqa: E402
from ebm_refine.detectron2.evaluation import METRICS  # noqa: E402

CONFIG = "Synthetic/ebm_compact_fpn_synthetic.yaml"
logger = logging.getLogger("ebm_refine.synthetic_benchmark")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/quickstart/detection", help="output folder")
    p.add_argument("--iters", type=int, default=None, help="joint detector + EBM training iterations")
    p.add_argument("--baseline-iters", type=int, default=None, help="IoU-Net head iterations (0 = skip)")
    p.add_argument("--quick", action="store_true", help="small smoke configuration")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config options (KEY VALUE ...)")
    return p.parse_args(argv)


def stage_cfg(output: Path, opts: list):
    cfg = get_ebm_cfg(CONFIG, opts)
    cfg.OUTPUT_DIR = str(output)
    cfg.freeze()
    return cfg


def train_and_test(cfg) -> dict:
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # DefaultTrainer's EvalHook already evaluated after the last iteration: reuse it, don't evaluate twice.
    results = getattr(trainer, "_last_eval_results", None)
    if results:
        return results
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    return Trainer.test(cfg, model)


def detector_only_checkpoint(weights: Path, out: Path) -> Path:
    """Strip the energy head so the baseline head starts from scratch on the same detector."""
    state = torch.load(weights, map_location="cpu", weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if ".energy_head." not in k}
    state.pop("iteration", None)
    torch.save({"model": state["model"]}, out)
    return out


def format_table(columns: dict) -> str:
    names = list(columns)
    lines = ["| box AP (%) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(f"{columns[n][m]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    setup_logger(str(out), name="ebm_refine")
    setup_logger(str(out), name="detectron2", abbrev_name="d2")  # training progress, AP tables
    iters = args.iters or (30 if args.quick else 500)
    base_iters = args.baseline_iters if args.baseline_iters is not None else (10 if args.quick else 150)
    common = list(args.opts)
    if args.quick:
        common = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *common]
    t0 = time.perf_counter()

    # Stage 1: detector and energy head trained jointly.
    steps = f"({int(iters * 0.75)}, {int(iters * 0.92)})"
    ebm_cfg = stage_cfg(out / "ebm", ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps,
                                      "SOLVER.WARMUP_ITERS", str(min(100, iters // 5)), *common])
    ebm = train_and_test(ebm_cfg)
    columns = {"unrefined": ebm["bbox_unrefined"], "EBM (ML-IS) refined": ebm["bbox"]}
    t1 = time.perf_counter()

    # Stage 2: IoU-Net-style baseline head on the same, now frozen, detector.
    if base_iters > 0:
        weights = detector_only_checkpoint(out / "ebm" / "model_final.pth", out / "detector_only.pth")
        base_cfg = stage_cfg(out / "iounet", [
            "MODEL.WEIGHTS", str(weights), "MODEL.EBM.LOSS", "iou_confidence", "MODEL.EBM.FREEZE_DETECTOR", "True",
            "MODEL.EBM.REFINE.STEP_SIZE_CENTER", "0.02", "MODEL.EBM.REFINE.STEP_SIZE_SIZE", "0.02",
            "SOLVER.MAX_ITER", str(base_iters), "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "10", *common])
        base = train_and_test(base_cfg)
        columns["IoU-Net refined"] = base["bbox"]
    t2 = time.perf_counter()

    table = format_table(columns)
    result = {
        "config": CONFIG, "iterations": iters, "baseline_iterations": base_iters,
        "seconds": {"ebm_stage": round(t1 - t0, 1), "baseline_stage": round(t2 - t1, 1)},
        "box_ap": columns,
    }
    tmp = out / "synthetic_benchmark.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "synthetic_benchmark.json")
    print("\nSynthetic detection benchmark (COCO box AP on ebm_synthetic_val, pycocotools):\n" + table)
    print(f"\n{iters} joint iterations + {base_iters} baseline iterations in {t2 - t0:.0f} s; "
          f"results in {out / 'synthetic_benchmark.json'}")
    return result


if __name__ == "__main__":
    main()
