"""Energy heads compared on the synthetic detection benchmark (``tools/energy_head_benchmark.py``).

For every head (``FC``: :class:`~.energy_head.FCEnergyHead`; ``WELDON``: :class:`~.energy_head.WeldonEnergyHead`)
and every training seed (config ``SEED``), the benchmark's first stage (:func:`~.benchmark.run_synthetic_benchmark`:
compact-ResNet-FPN Faster R-CNN trained jointly with the head, ML-IS; the IoU-Net stage skipped) is run, then

* COCO AP and AP75 (pycocotools) of the refined and of the unrefined boxes on ``ebm_synthetic_val``;
* the energy head's parameter count;
* refinement time per image: the wall and process-CPU time spent in ``EBMROIHeads.refine_instances`` (the
  refinement alone, on the detector's final detections, with the config's refinement path, fused by default)
  over the first ``timing_images`` validation images, after one warm-up image;

and every number is reported as mean ± sample std (ddof 1) over the seeds. What varies between seeds is the
training (initialisation, data order, proposal samples); the dataset is the same.

With two or more heads, their refined boxes are also compared box by box (:mod:`.multi_run`): each run's
per-ground-truth-box errors 1 - IoU (``per_box_errors.json``), the heads of one seed paired on the ground-truth
boxes both matched, pooled over the seeds on the boxes every run matched (each head trains its own detector, so
the detections differ; the ground-truth boxes do not).
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Dict, List, Mapping, Sequence

import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model

from ..evaluation import PerSampleErrors, load_per_sample_errors
from ..utils.fileio import atomic_write_text
from .benchmark import run_synthetic_benchmark, stage_cfg
from .box_change import PER_BOX_FILE
from .checkpoint import EBMCheckpointer
from .multi_run import collect_runs, significance_tables

__all__ = ["HEADS", "run_head_benchmark", "refinement_time", "format_head_table"]

logger = logging.getLogger(__name__)
HEADS: Dict[str, List[str]] = {
    "FC": ["MODEL.EBM.HEAD.NAME", "FCEnergyHead"],
    "WELDON": ["MODEL.EBM.HEAD.NAME", "WeldonEnergyHead"],
}
RUN_FILE = "head_benchmark_run.json"


@torch.no_grad()
def refinement_time(cfg, weights: str, num_images: int = 50) -> Dict[str, float]:
    """Seconds spent refining, per image, by the model of ``cfg`` with ``weights`` on its first test dataset.

    Returns ``refine_ms_per_image`` (wall), ``refine_cpu_ms_per_image`` (process CPU time, less disturbed by
    other jobs on a shared machine), ``detections_per_image`` and ``images``.
    """
    model = build_model(cfg)
    EBMCheckpointer(model).load(weights)
    model.eval()
    heads = model.roi_heads
    original = heads.refine_instances
    wall, cpu, boxes = [], [], []

    def timed(feats, instances):
        t0, c0 = time.perf_counter(), time.process_time()
        out = original(feats, instances)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        boxes.append(sum(len(x) for x in instances))
        return out

    heads.refine_instances = timed  # an instance attribute: this model only, removed below
    try:
        mapper = DatasetMapper(cfg, is_train=False)
        records = DatasetCatalog.get(cfg.DATASETS.TEST[0])[: num_images + 1]
        for record in records:
            model([mapper(record)])
    finally:
        del heads.refine_instances
    wall, cpu, boxes = wall[1:], cpu[1:], boxes[1:]  # the first image warms up caches and allocators
    n = max(1, len(wall))
    return {"refine_ms_per_image": 1000 * sum(wall) / n, "refine_cpu_ms_per_image": 1000 * sum(cpu) / n,
            "detections_per_image": sum(boxes) / n, "images": len(wall)}


def _one_run(run_dir: Path, iters, quick: bool, opts: List[str], timing_images: int) -> dict:
    bench = run_synthetic_benchmark(run_dir, iters, 0, quick, opts)
    # The first stage's config again (the iteration counts do not matter for inference).
    cfg = stage_cfg(run_dir / "ebm", (["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"] if quick else []) + opts)
    model = build_model(cfg)
    params = sum(p.numel() for p in model.roi_heads.energy_head.parameters())
    del model
    refined, unrefined = bench["box_ap"]["EBM (ML-IS) refined"], bench["box_ap"]["unrefined"]
    row = {"AP": refined["AP"], "AP75": refined["AP75"], "AP_unrefined": unrefined["AP"],
           "AP75_unrefined": unrefined["AP75"], "head_parameters": params,
           "train_seconds": bench["seconds"]["ebm_stage"]}
    row.update(refinement_time(cfg, str(run_dir / "ebm" / "model_final.pth"), timing_images))
    atomic_write_text(run_dir / RUN_FILE, json.dumps(row, indent=2))
    return row


def _mean_std(values: Sequence[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
            "values": list(values)}


def run_head_benchmark(output, seeds: Sequence[int] = (0, 1, 2), heads: Mapping[str, Sequence[str]] = HEADS,
                       *, quick: bool = False, iters=None, timing_images: int = 50, opts: Sequence[str] = (),
                       overwrite: bool = False) -> dict:
    """Train and measure every head on every seed (``<output>/<head>/seed<s>``; finished runs are kept unless
    ``overwrite``); write ``<output>/energy_head_benchmark.json`` and return it (see the module docstring)."""
    out = Path(output)
    runs: Dict[str, Dict[str, dict]] = {}
    for name, head_opts in heads.items():
        runs[name] = {}
        for s in seeds:
            run_dir = out / name / f"seed{s}"
            if not overwrite and (run_dir / RUN_FILE).is_file():
                runs[name][f"seed{s}"] = json.loads((run_dir / RUN_FILE).read_text())
                logger.info("%s, SEED %d: kept the finished run in %s", name, s, run_dir)
                continue
            logger.info("%s, SEED %d -> %s", name, s, run_dir)
            runs[name][f"seed{s}"] = _one_run(run_dir, iters, quick, [*opts, *head_opts, "SEED", str(s)],
                                              timing_images)
    keys = ("AP", "AP75", "AP_unrefined", "AP75_unrefined", "head_parameters", "refine_ms_per_image",
            "refine_cpu_ms_per_image", "detections_per_image", "train_seconds")
    summary = {name: {k: _mean_std([r[k] for r in by_seed.values()]) for k in keys} for name, by_seed in runs.items()}
    result = {"seeds": list(seeds), "quick": quick, "iterations": iters or (30 if quick else 500),
              "heads": {n: list(o) for n, o in heads.items()}, "extra_opts": list(opts),
              "summary": summary, "runs": runs}
    result["table"] = format_head_table(result)
    if len(heads) > 1:
        text, report = _paired_heads(out, list(heads), list(seeds))
        result["significance"], result["table"] = report, result["table"] + "\n\n" + text
    atomic_write_text(out / "energy_head_benchmark.json", json.dumps(result, indent=2))
    return result


def _paired_heads(out: Path, heads: List[str], seeds: List[int]):
    """Per-box significance tables of the heads' refined boxes (see the module docstring)."""
    missing = [str(out / h / f"seed{s}" / PER_BOX_FILE) for h in heads for s in seeds
               if not (out / h / f"seed{s}" / PER_BOX_FILE).is_file()]
    if missing:
        note = (f"Per-box comparison of the heads skipped: {missing[0]} is missing (its detector matched no "
                "ground-truth box; train longer)")
        return note, {"skipped": note}
    files = []
    for s in seeds:
        data = PerSampleErrors("1 - IoU", "box")
        runs = {h: load_per_sample_errors(str(out / h / f"seed{s}" / PER_BOX_FILE)).runs[0] for h in heads}
        common = sorted(set.intersection(*(set(r.ids) for r in runs.values())))
        pos = {h: {i: k for k, i in enumerate(r.ids)} for h, r in runs.items()}
        data.add_run(f"seed{s}", {h: [runs[h].errors["EBM"][pos[h][i]] for i in common] for h in heads}, common)
        files.append(str(out / f"paired_seed{s}.json"))
        data.save(files[-1])
    full, common, _ = collect_runs(files)
    return significance_tables(full, common, methods=heads)


def format_head_table(result: dict) -> str:
    """Markdown table: one row per head, mean ± std over the seeds."""
    def ms(entry, digits=2):
        return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"

    lines = [f"Energy heads on the synthetic benchmark, mean ± std over {len(result['seeds'])} training seeds "
             f"(SEED {', '.join(map(str, result['seeds']))})", "",
             "| head | parameters | AP refined | AP75 refined | AP unrefined | AP75 unrefined | "
             "refinement ms / image (wall) | (CPU) | detections / image |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {int(s['head_parameters']['mean']):,} | {ms(s['AP'])} | {ms(s['AP75'])} | "
                     f"{ms(s['AP_unrefined'])} | {ms(s['AP75_unrefined'])} | {ms(s['refine_ms_per_image'], 1)} | "
                     f"{ms(s['refine_cpu_ms_per_image'], 1)} | {s['detections_per_image']['mean']:.1f} |")
    return "\n".join(lines)
