#!/usr/bin/env python
"""Benchmark: boxes per second of the batched gradient-ascent refiner (``refine_boxes``).

The energy network is deliberately small and detector-like: box-differentiable RoI Align
(``box_roi_align``, 7x7 bins) on a random stride-8 feature map of a 512x512 image, then two fully
connected layers. Each of the T steps is one batched forward + backward pass for all N boxes, so
throughput should grow with N until the CPU is saturated.

    python tools/bench_refiner.py                             # N in {10, 100, 1000}, T = 10, CPU
    python tools/bench_refiner.py --device cuda --json out/bench_refiner.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Sequence

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ebm_refine.core import box_roi_align, refine_boxes  # noqa: E402
from ebm_refine.utils import atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, device_arg, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import int_in_range, non_negative_int, output_file, positive_int  # noqa: E402


class SmallBoxEnergy(nn.Module):
    """f(box) = FC(ReLU(FC(RoIAlign(features, box)))): (N, 4) xyxy image pixels -> (N,) scores."""

    def __init__(self, features: Tensor, stride: int = 8, pool: int = 7, hidden: int = 256):
        super().__init__()
        self.features = features  # (1, C, H, W)
        self.scale = 1.0 / stride
        self.pool = pool
        c = features.shape[1]
        self.fc1 = nn.Linear(c * pool * pool, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, boxes: Tensor) -> Tensor:
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        pooled = box_roi_align(self.features, rois, self.pool, self.scale, sampling_ratio=2)
        return self.fc2(torch.relu(self.fc1(pooled.flatten(1)))).squeeze(1)


def random_boxes(n: int, image_size: float, device: torch.device, seed: int) -> Tensor:
    """(n, 4) xyxy boxes of 24..256 px inside the image."""
    g = torch.Generator().manual_seed(seed)
    wh = 24.0 + 232.0 * torch.rand(n, 2, generator=g)
    xy = (image_size - wh) * torch.rand(n, 2, generator=g)
    return torch.cat([xy, xy + wh], dim=1).to(device)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--sizes", type=non_negative_int, nargs="+", default=[10, 100, 1000], help="numbers of boxes N")
    ap.add_argument("--steps", type=non_negative_int, default=10, help="T gradient-ascent steps")
    ap.add_argument("--channels", type=positive_int, default=64, help="feature channels C")
    ap.add_argument("--image-size", type=int_in_range(16), default=512, help="square image side in pixels")
    ap.add_argument("--repeats", type=positive_int, default=5)
    ap.add_argument("--warmup", type=non_negative_int, default=1)
    ap.add_argument("--threads", type=non_negative_int, default=1,
                    help="torch intra-op CPU threads; 0 keeps torch's default. Default 1 because on a shared "
                         "2-core machine two threads made these calls >10x slower whenever other processes "
                         "competed for the cores, which swamps what is being measured")
    ap.add_argument("--json", type=output_file, help="write the numbers here")
    add_debug_argument(ap)
    args = ap.parse_args(argv)

    device = device_arg(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stride = 8
    side = args.image_size // stride
    features = torch.randn(1, args.channels, side, side, device=device)
    energy = SmallBoxEnergy(features, stride=stride).to(device).eval()
    for p in energy.parameters():
        p.requires_grad_(False)  # inference: gradients are needed w.r.t. the boxes only

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows = []
    print(f"refiner, T={args.steps} steps, energy: RoIAlign 7x7 on {args.channels}x{side}x{side} + 2 FC, "
          f"{device}, {torch.get_num_threads()} thread(s)")
    for n in args.sizes:
        boxes = random_boxes(n, float(args.image_size), device, seed=n)
        with torch.no_grad():  # as a detector would call it at test time
            for _ in range(args.warmup):
                res = refine_boxes(energy, boxes, num_steps=args.steps)
            sync()
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                res = refine_boxes(energy, boxes, num_steps=args.steps)
                sync()
                times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        gain = (res.scores - res.initial_scores)
        row = {
            "num_boxes": n,
            "seconds": sec,
            "boxes_per_s": n / sec if sec > 0 else float("inf"),
            "ms_per_step": 1e3 * sec / max(args.steps, 1),
            "mean_accepted_steps": res.num_accepted.float().mean().item() if n else 0.0,
            "min_score_gain": gain.min().item() if n else 0.0,
        }
        rows.append(row)
        print(f"  N={n:>5}: {row['seconds'] * 1e3:9.2f} ms  {row['boxes_per_s']:10.1f} boxes/s  "
              f"(accepted steps/box {row['mean_accepted_steps']:.1f}, min f gain {row['min_score_gain']:.2e})")
    result = {
        "benchmark": "refine_boxes throughput",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "num_steps": args.steps,
        "energy": {"roi_align_bins": 7, "channels": args.channels, "feature_hw": [side, side], "stride": stride,
                   "fc_hidden": 256},
        "repeats": args.repeats,
        "results": rows,
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
