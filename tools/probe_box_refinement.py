#!/usr/bin/env python
"""Measure how much box refinement improves IoU on held-out (reference, test) crop pairs.

Pairs come from held-out synthetic sequences (seeds far from the training range) cropped exactly as in
training. Each test box is perturbed the way the tracker's initial boxes are (centre offset and
log-size error), refined with the core refiner on the network's output, and scored by IoU with the
ground truth. Several step sizes can be compared, which is how the ``step_size`` entries of
``configs/tracking/*.yaml`` are chosen for a trained network (the energy's scale depends on training).

    python tools/probe_box_refinement.py --net checkpoints/tracking/ebm_mobilenet_w64/net.pth \\
        --steps 2e-4,1e-3 1e-4,5e-4 --pairs 64 --json probe.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ebm_refine.core.boxes import box_iou_aligned, decode_relative  # noqa: E402
from ebm_refine.core.refine import refine_boxes  # noqa: E402
from ebm_refine.tracking.models import load_net  # noqa: E402
from ebm_refine.tracking.synthetic import SyntheticDataset  # noqa: E402
from ebm_refine.tracking.train.data import PairDataset  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", required=True)
    ap.add_argument("--steps", nargs="+", default=["2e-4,1e-3"], help="centre,size step-size pairs")
    ap.add_argument("--num-steps", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--first-seed", type=int, default=2_000_000, help="validation seeds (not train, not test)")
    ap.add_argument("--center-error", type=float, default=0.1, help="std of the initial centre error (relative)")
    ap.add_argument("--size-error", type=float, default=0.1, help="std of the initial log-size error")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)

    net = load_net(args.net)
    ds = PairDataset([(SyntheticDataset(200, args.first_seed), 1.0)], {"center_jitter": 1.0}, seed=12345)
    gen = torch.Generator().manual_seed(0)
    results = {s: {"before": [], "after": []} for s in args.steps}
    grads = []
    t0 = time.time()
    for i in range(args.pairs):
        item = ds[i]
        with torch.no_grad():
            rf = net.extract(item["ref_image"][None].float())
            tf_raw = net.extract(item["test_image"][None].float())
            tf = net.estimator.test_features(tf_raw, net.estimator.reference(rf, item["ref_box"][None]))
        gt = item["test_box"][None]
        rel = torch.randn(1, 4, generator=gen) * torch.tensor([args.center_error] * 2 + [args.size_error] * 2)
        init = decode_relative(rel, gt)

        def energy(b):
            return net.estimator.score(tf, b[None])[0]

        u = torch.zeros_like(init, requires_grad=True)
        (g,) = torch.autograd.grad(energy(decode_relative(u, init)).sum(), u)
        grads.append(g.abs()[0])
        for s in args.steps:
            c, z = (float(v) for v in s.split(","))
            res = refine_boxes(energy, init, num_steps=args.num_steps, step_size_center=c, step_size_size=z)
            results[s]["before"].append(float(box_iou_aligned(init, gt)[0]))
            results[s]["after"].append(float(box_iou_aligned(res.boxes, gt)[0]))
    g = torch.stack(grads)
    summary = {"net": args.net, "method": net.method, "pairs": args.pairs,
               "median_abs_grad_relative": [float(v) for v in g.median(0).values],
               "steps": {s: {"iou_before": sum(r["before"]) / len(r["before"]),
                             "iou_after": sum(r["after"]) / len(r["after"])} for s, r in results.items()},
               "seconds": time.time() - t0}
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
