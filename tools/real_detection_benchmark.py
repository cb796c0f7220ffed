#!/usr/bin/env python
"""Refining real detectors' boxes on COCO val2017 images: unrefined vs EBM vs IoU-Net, over training seeds.

For every trained refiner run (a tools/train_net.py output folder: config.yaml + model_final.pth) and every
detections file, refines the detections with the settings chosen on held-out training images
(tools/tune_refinement.py JSON, one per head type) and prints, per detector, COCO AP / AP50 / AP75 / APs /
APm / APl of the unrefined boxes and the mean ± std (min-max) over runs of the refined ones, the per-box IoU
change, and the Wilcoxon p of every run. Then, per detector, the significance tables of the per-ground-truth-box
errors (1 - IoU; run r of EBM paired with run r of IoU-Net on the same boxes): every pair of unrefined / EBM /
IoU-Net, per run and pooled over the runs, Holm over the pairs (ebm_refine/detectron2/multi_run.py).

    python tools/real_detection_benchmark.py \\
        --ebm-runs out/ebm_s0 out/ebm_s1 out/ebm_s2 --ebm-settings tune_ebm.json \\
        --iounet-runs out/iounet_s0 out/iounet_s1 out/iounet_s2 --iounet-settings tune_iounet.json \\
        --detections yolox_nano=$EBM_SHARED_DATA/coco/detections/yolox_nano_val2017_first128.json \\
                     fastestdet=$EBM_SHARED_DATA/coco/detections/fastestdet_val2017_first128.json \\
        --json real_detection_benchmark.json --per-box-errors out/real_per_box
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from ebm_refine.detectron2 import load_config  # noqa: E402
from ebm_refine.detectron2.evaluation import METRICS  # noqa: E402
from ebm_refine.detectron2.multi_run import collect_runs, merge_stage_errors, significance_tables  # noqa: E402
from ebm_refine.detectron2.refine_detections import read_best_setting, refine_detection_file, refiner_kind  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import (check_existing_file, detectron2_dataset, existing_file, existing_folder,  # noqa: E402
                                       output_file, output_folder, positive_int)
from ebm_refine.utils.errors import UserError  # noqa: E402
from ebm_refine.utils.fileio import atomic_write_text, temporary_folder  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ebm-runs", nargs="+", required=True, type=existing_folder,
                   help="tools/train_net.py output folders of EBM refiners (config.yaml + model_final.pth)")
    p.add_argument("--ebm-settings", required=True, type=existing_file, help="tools/tune_refinement.py JSON of an EBM run")
    p.add_argument("--iounet-runs", nargs="*", default=[], type=existing_folder,
                   help="output folders of IoU-Net refiners (MODEL.EBM.LOSS iou_confidence)")
    p.add_argument("--iounet-settings", type=existing_file)
    p.add_argument("--detections", nargs="+", required=True, metavar="NAME=FILE")
    p.add_argument("--dataset", default="coco_val2017_first128", type=detectron2_dataset)
    p.add_argument("--json", type=output_file, help="write every figure as JSON")
    p.add_argument("--per-box-errors", metavar="DIR", type=output_folder,
                   help="keep the per-box errors here: <detector>.json per detector (all runs; the per-sample "
                        "error format of tools/compare_runs.py)")
    p.add_argument("--threads", type=positive_int)
    add_debug_argument(p)
    return p.parse_args(argv)


def best_setting(path: str) -> list:
    best = read_best_setting(path)
    return ["MODEL.EBM.REFINE.NUM_STEPS", str(best["num_steps"]), "MODEL.EBM.REFINE.STEP_SIZE_CENTER",
            str(best["step_size_center"]), "MODEL.EBM.REFINE.STEP_SIZE_SIZE", str(best["step_size_size"])]


def check_runs(head: str, runs, setting: list, option: str) -> None:
    """Every run folder holds a config and weights, of a refiner of the kind its option says (before any work)."""
    for run in runs:
        for name in ("config.yaml", "model_final.pth"):
            if not os.path.isfile(os.path.join(run, name)):
                raise UserError(f"{os.path.join(run, name)}: not found; {option} takes tools/train_net.py output "
                                "folders of finished refiner trainings")
        kind = refiner_kind(load_config(os.path.join(run, "config.yaml"), setting))
        if kind != head:
            raise UserError(f"{run}: a refiner trained as {kind} (MODEL.EBM.LOSS in its config.yaml), given as "
                            f"{option}; pass it under {'--iounet-runs' if kind == 'IoU-Net' else '--ebm-runs'}")


def spread(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} ({v.min():.2f}–{v.max():.2f})"


def _significance(tmp: str, det_name: str, heads: dict, keep_dir) -> tuple:
    """Per-box significance tables of one detector's refinements: run r of every head on the same boxes."""
    num_runs = min(len(runs) for runs, _ in heads.values())
    files = []
    for r in range(num_runs):
        merged = merge_stage_errors({h: os.path.join(tmp, f"{det_name}_{h}_{r}.json") for h in heads}, f"run{r}")
        files.append(os.path.join(tmp, f"{det_name}_merged_{r}.json"))
        merged.save(files[-1])
    full, common, _ = collect_runs(files)
    if keep_dir:
        full.save(os.path.join(keep_dir, f"{det_name}.json"))
    return significance_tables(full, common)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logger(name="ebm_refine")
    detections = dict(d.split("=", 1) for d in args.detections if "=" in d)
    if len(detections) != len(args.detections):
        raise UserError(f"--detections takes NAME=FILE items, got {args.detections}")
    for det_file in detections.values():
        check_existing_file(det_file, "--detections")
    heads = {"EBM": (args.ebm_runs, best_setting(args.ebm_settings))}
    if args.iounet_runs:
        if not args.iounet_settings:
            raise UserError("--iounet-runs needs --iounet-settings")
        heads["IoU-Net"] = (args.iounet_runs, best_setting(args.iounet_settings))
    for head, (runs, setting) in heads.items():
        check_runs(head, runs, setting, "--ebm-runs" if head == "EBM" else "--iounet-runs")
    results, significance = {}, {}
    with temporary_folder() as tmp:
        for det_name, det_file in detections.items():
            results[det_name] = {}
            for head, (runs, setting) in heads.items():
                per_run = []
                for r, run in enumerate(runs):
                    cfg = load_config(os.path.join(run, "config.yaml"), setting)
                    cfg.freeze()
                    s = refine_detection_file(cfg, os.path.join(run, "model_final.pth"), det_file, args.dataset,
                                              os.path.join(tmp, "refined.json"),
                                              per_box_file=os.path.join(tmp, f"{det_name}_{head}_{r}.json"))
                    per_run.append({"run": run, **s})
                results[det_name][head] = per_run
            significance[det_name] = _significance(tmp, det_name, heads, args.per_box_errors)
    lines = []
    for det_name, by_head in results.items():
        first = next(iter(by_head.values()))[0]
        lines += [f"\n{det_name} ({first['detections']['used']} detections on {first['images']} images):",
                  "| | unrefined | " + " | ".join(by_head) + " |", "|---" * (len(by_head) + 2) + "|"]
        for m in METRICS:
            row = [f"{first['ap']['unrefined'][m]:.2f}"] + [spread([r["ap"]["refined"][m] for r in runs])
                                                             for runs in by_head.values()]
            lines.append(f"| {m} | " + " | ".join(row) + " |")
        for key, label in (("mean_iou_change", "mean IoU change (matched)"), ("improved", "improved (%)"),
                           ("worsened", "worsened (%)"), ("median_iou_change", "median IoU change")):
            cells = []
            for runs in by_head.values():
                vals = [r["box_change"]["mean_iou_refined"] - r["box_change"]["mean_iou_unrefined"] if key == "mean_iou_change"
                        else 100 * r["box_change"][key] if key in ("improved", "worsened") else r["box_change"][key]
                        for r in runs]
                cells.append(spread(vals) if key in ("improved", "worsened") else
                             " / ".join(f"{v:+.4f}" for v in vals))
            lines.append(f"| {label} | | " + " | ".join(cells) + " |")
        lines.append("| Wilcoxon p per run | | " + " | ".join(
            " / ".join(f"{r['box_change']['wilcoxon_p']:.2g}" for r in runs) for runs in by_head.values()) + " |")
        lines.append("| s per image | | " + " | ".join(
            spread([r["seconds_per_image"] for r in runs]) for runs in by_head.values()) + " |")
    print("\n".join(lines))
    for det_name, (text, _) in significance.items():
        print(f"\n{det_name}: per-box significance (1 - IoU of each ground-truth box's best-scoring matched "
              f"detection)\n\n{text}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"dataset": args.dataset, "results": results, "significance": {
            d: report for d, (_, report) in significance.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
