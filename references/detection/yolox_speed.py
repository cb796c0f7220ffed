#!/usr/bin/env python
"""YOLOX-nano's CPU time per image with one thread: the plugin's PyTorch port against onnxruntime, same run.

    OMP_NUM_THREADS=1 python references/detection/yolox_speed.py \\
        --onnx ../shared/weights/yolox_nano.onnx --images ../shared/data/coco/val2017_first128

Every image is letterboxed once (the plugin's mapper); then, per image and alternating, the network forward of
torch (trunk + head, the raw 3549 x 85 output) and of onnxruntime on the same 1 x 3 x 416 x 416 tensor, and the
torch model's whole inference (forward + decode + NMS + rescaling). Prints mean and median ms per image and the
largest raw-output difference.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from detectron2.modeling import build_model

from ebm_refine.detectron2 import CheckedDatasetMapper, EBMCheckpointer, ebm_config_path, load_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, help="yolox_nano.onnx")
    p.add_argument("--images", required=True, help="a COCO folder with images/ and one instances json")
    p.add_argument("--warmup", type=int, default=5, help="untimed images first")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
    cfg = load_config(ebm_config_path("COCO-Detection/yolox_nano.yaml"), ["MODEL.WEIGHTS", args.onnx])
    model = build_model(cfg).eval()
    EBMCheckpointer(model).load(args.onnx)
    mapper = CheckedDatasetMapper(cfg, False)
    root = Path(args.images)
    images = json.loads(next(root.glob("*.json")).read_text())["images"]
    inputs = [mapper({"file_name": str(root / "images" / im["file_name"]), "height": im["height"],
                      "width": im["width"], "image_id": im["id"]}) for im in images]
    times = {"torch_forward": [], "onnxruntime_forward": [], "torch_inference": []}
    max_diff = 0.0
    with torch.no_grad():
        for i, x in enumerate(inputs):
            batch = model.preprocess_image([x]).tensor
            t0 = time.perf_counter()
            raw = model.head(list(model.backbone(batch).values()))
            t1 = time.perf_counter()
            ref = session.run(None, {"images": batch.numpy()})[0]
            t2 = time.perf_counter()
            model([x])
            t3 = time.perf_counter()
            max_diff = max(max_diff, float(np.abs(raw.numpy() - ref).max()))
            if i >= args.warmup:
                for k, seconds in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
                    times[k].append(seconds * 1000)
    summary = {k: {"mean_ms": statistics.mean(v), "median_ms": statistics.median(v), "images": len(v)}
               for k, v in times.items()}
    summary["max_abs_raw_diff"] = max_diff
    summary["torch_threads"] = torch.get_num_threads()
    for k, v in summary.items():
        print(k, v)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
