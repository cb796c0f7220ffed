"""The embedded synthetic detection benchmark (``tools/synthetic_benchmark.py``, the README's main job).

1. The synthetic dataset is generated (deterministic, once) and a compact-ResNet-FPN Faster R-CNN is
   trained jointly with the EBM head (ML-IS) by :class:`~.engine.EBMTrainer`.
2. The IoU-Net-style baseline head (same architecture, IoU regression) is trained on the frozen detector.
3. Unrefined, EBM-refined and IoU-Net-refined boxes are evaluated with pycocotools, and their per-ground-truth-box
   errors (1 - IoU, :mod:`.box_change`) are written to ``per_box_errors.json`` for the significance protocol
   (``tools/compare_runs.py``; several seeds: ``tools/synthetic_significance.py``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Dict, Optional, Sequence


from ..utils.fileio import atomic_save_torch, atomic_write_text
from ..utils.safe_load import read_torch_file
from .box_change import PER_BOX_FILE
from .model_zoo import get_ebm_cfg
from .engine import EBMTrainer
from .evaluation import format_refinement_table
from .meta_arch import ENERGY_HEAD_PREFIX
from .multi_run import merge_stage_errors, stage_per_box_file

__all__ = ["run_synthetic_benchmark", "train_and_test", "detector_only_checkpoint", "SYNTHETIC_CONFIG",
           "BASELINE_CONFIG"]

SYNTHETIC_CONFIG = "Synthetic/ebm_compact_fpn_synthetic.yaml"
# Stage 2: the IoU-Net-style head (its loss, frozen detector and step sizes live in the YAML file).
BASELINE_CONFIG = "Synthetic/iounet_compact_fpn_synthetic.yaml"
logger = logging.getLogger(__name__)


def stage_cfg(output: Path, opts: Sequence[str], config: str = SYNTHETIC_CONFIG):
    cfg = get_ebm_cfg(config, list(opts))
    cfg.OUTPUT_DIR = str(output)
    cfg.freeze()
    return cfg


def train_and_test(cfg) -> Dict[str, Dict[str, float]]:
    """Train with :class:`EBMTrainer` and return the final evaluation (task -> metrics)."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    trainer = EBMTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # DefaultTrainer's EvalHook already evaluated after the last iteration: reuse it, don't evaluate twice.
    results = getattr(trainer, "_last_eval_results", None)
    if results:
        return results
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    return EBMTrainer.test(cfg, model)


def detector_only_checkpoint(weights: Path, out: Path) -> Path:
    """Strip the energy head so the baseline head starts from scratch on the same detector."""
    state = read_torch_file(str(weights), "a Detectron2 checkpoint", "pass the model_final.pth of the EBM stage")
    detector = {k: v for k, v in state["model"].items() if not k.startswith(ENERGY_HEAD_PREFIX)}
    atomic_save_torch({"model": detector}, out)
    return out


def run_synthetic_benchmark(output: os.PathLike, iters: Optional[int] = None, baseline_iters: Optional[int] = None,
                            quick: bool = False, opts: Sequence[str] = ()) -> dict:
    """Run both stages, write ``<output>/synthetic_benchmark.json`` and return its content.

    Args:
        output: output folder (Detectron2's files per stage under ``ebm/`` and ``iounet/``).
        iters: joint detector + EBM iterations (default 500; 30 with ``quick``).
        baseline_iters: IoU-Net head iterations (default 150; 10 with ``quick``; 0 skips the stage).
        opts: extra ``KEY VALUE`` config options for both stages.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    iters = iters or (30 if quick else 500)
    base_iters = baseline_iters if baseline_iters is not None else (10 if quick else 150)
    common = list(opts)
    if quick:
        common = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *common]
    t0 = time.perf_counter()

    # Stage 1: detector and energy head trained jointly.
    # Learning-rate drops at 75 % and 92 % of training; for very short runs only those that fall inside it,
    # once each (Detectron2 wants strictly increasing milestones after iteration 0).
    steps = "(" + "".join(f"{s}," for s in sorted({int(iters * 0.75), int(iters * 0.92)} - {0})) + ")"
    ebm_cfg = stage_cfg(out / "ebm", ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps,
                                      "SOLVER.WARMUP_ITERS", str(min(100, iters // 5)), *common])
    ebm = train_and_test(ebm_cfg)
    columns = {"unrefined": ebm["bbox_unrefined"], "EBM (ML-IS) refined": ebm["bbox"]}
    t1 = time.perf_counter()

    # Stage 2: IoU-Net-style baseline head on the same, now frozen, detector.
    if base_iters > 0:
        weights = detector_only_checkpoint(out / "ebm" / "model_final.pth", out / "detector_only.pth")
        base_cfg = stage_cfg(out / "iounet", [
            "MODEL.WEIGHTS", str(weights), "SOLVER.MAX_ITER", str(base_iters), "SOLVER.STEPS", "()",
            "SOLVER.WARMUP_ITERS", "10", *common], BASELINE_CONFIG)
        columns["IoU-Net refined"] = train_and_test(base_cfg)["bbox"]
    t2 = time.perf_counter()

    result = {
        "config": SYNTHETIC_CONFIG, "baseline_config": BASELINE_CONFIG, "iterations": iters,
        "baseline_iterations": base_iters, "seed": ebm_cfg.SEED,
        "seconds": {"ebm_stage": round(t1 - t0, 1), "baseline_stage": round(t2 - t1, 1)},
        "box_ap": columns, "table": format_refinement_table(columns),
    }
    # Per-ground-truth-box errors of every method on this run (the stages' BoxChangeEvaluator files).
    stages = {"EBM": stage_per_box_file(ebm_cfg)}
    if base_iters > 0:
        stages["IoU-Net"] = stage_per_box_file(base_cfg)
    if all(os.path.isfile(f) for f in stages.values()):
        errors = merge_stage_errors(stages, run_name=f"seed{ebm_cfg.SEED}")
        errors.save(str(out / PER_BOX_FILE))
        result["per_box_errors"] = {"file": PER_BOX_FILE, "boxes": int(len(errors.runs[0].ids))}
    else:
        logger.warning("no per-box errors for %s: a stage's detector matched no ground-truth box (IoU >= 0.5)", out)
    atomic_write_text(out / "synthetic_benchmark.json", json.dumps(result, indent=2))
    return result
