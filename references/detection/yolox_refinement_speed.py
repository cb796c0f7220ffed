#!/usr/bin/env python
"""What refinement adds to YOLOX-nano's own time per image: EBMYOLOX on one CPU thread, both parts in one run.

    OMP_NUM_THREADS=1 python references/detection/yolox_refinement_speed.py \\
        --yolox output/yolox_study/yolox_nano.pth --head output/yolox_study/runs/ebm_s0/model_final.pth

Every image of the dataset (default ``coco_val2017_first128``) goes through ``EBMYOLOX`` (detect, then refine
every detection in the same forward pass, as the config's MODEL.EBM.REFINE says). The time inside the
refinement (:meth:`EBMYOLOX.refine`: RoI pooling, the energy head, its gradient, the steps) is measured apart
from the rest (letterboxed image in, YOLOX trunk and head, decode, NMS, rescaling); mapping the image
(decode, letterbox) is outside both. Prints mean and median ms per image of each, their ratio, and the number
of detections refined per image.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from ebm_refine.detectron2 import CheckedDatasetMapper, EBMCheckpointer, ebm_config_path, load_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--yolox", required=True, help="YOLOX-nano weights (the converted .pth or yolox_nano.onnx)")
    p.add_argument("--head", required=True, help="a trained YOLOX-feature refiner (its model_final.pth)")
    p.add_argument("--config", default=ebm_config_path("COCO-Detection/ebm_yolox_nano.yaml"))
    p.add_argument("--dataset", default="coco_val2017_first128")
    p.add_argument("--warmup", type=int, default=5, help="untimed images first")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, ["MODEL.WEIGHTS", args.yolox, "MODEL.EBM.HEAD.WEIGHTS", args.head, *args.opts])
    cfg.freeze()
    model = build_model(cfg).eval()
    EBMCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    mapper = CheckedDatasetMapper(cfg, is_train=False)
    inputs = [mapper(r) for r in DatasetCatalog.get(args.dataset)]

    refine_s = [0.0]
    plain_refine = model.refine

    def timed_refine(features, detections):
        t = time.perf_counter()
        out = plain_refine(features, detections)
        refine_s[0] += time.perf_counter() - t
        return out

    model.refine = timed_refine
    total, refine, counts = [], [], []
    with torch.no_grad():
        for i, x in enumerate(inputs):
            refine_s[0] = 0.0
            t = time.perf_counter()
            (out,) = model([x])
            dt = time.perf_counter() - t
            if i >= args.warmup:
                total.append(dt)
                refine.append(refine_s[0])
                counts.append(len(out["instances"]))
    detect = [a - b for a, b in zip(total, refine)]
    ms = lambda v: 1000 * statistics.mean(v)  # noqa: E731
    res = {"images": len(total), "threads": 1, "detections_per_image": statistics.mean(counts),
           "yolox_ms_mean": ms(detect), "yolox_ms_median": 1000 * statistics.median(detect),
           "refine_ms_mean": ms(refine), "refine_ms_median": 1000 * statistics.median(refine),
           "refine_share_of_yolox": sum(refine) / sum(detect),
           "num_steps": cfg.MODEL.EBM.REFINE.NUM_STEPS}
    print(f"{res['images']} images, {res['detections_per_image']:.1f} detections refined per image "
          f"({res['num_steps']} steps), one thread:")
    print(f"  YOLOX-nano (trunk, head, decode, NMS): {res['yolox_ms_mean']:.1f} ms mean, "
          f"{res['yolox_ms_median']:.1f} ms median")
    print(f"  refinement of all its detections:      {res['refine_ms_mean']:.1f} ms mean, "
          f"{res['refine_ms_median']:.1f} ms median")
    print(f"  refinement / YOLOX-nano: {100 * res['refine_share_of_yolox']:.1f} %")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
