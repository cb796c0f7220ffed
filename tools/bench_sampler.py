#!/usr/bin/env python
"""Benchmark: the vectorised ``BoxProposal.sample`` vs a straightforward per-box Python loop.

Both produce, for N reference boxes, M boxes each drawn from the K-component Gaussian mixture in the
relative encoding, the boxes in xyxy pixels and their log q. The loop version samples one reference
at a time with ordinary torch ops (what one would write without batching); the vectorised version is
one call. Times are medians over repeats after warm-up, with CUDA synchronisation on GPU.

    python tools/bench_sampler.py                         # N = 512, M = 128 on CPU
    python tools/bench_sampler.py --device cuda --json out/bench_sampler.json
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from typing import Callable, Sequence

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from ebm_refine.core import BoxProposal  # noqa: E402
from ebm_refine.utils import atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, device_arg, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import non_negative_int, output_file, positive_int  # noqa: E402

# The paper's ML-IS proposal for detection (sigma of centre offsets and log-sizes, per component).
DEFAULT_SIGMAS = (0.0375, 0.075, 0.15)


def random_reference_boxes(n: int, device: torch.device, seed: int = 0, image_size: float = 800.0) -> Tensor:
    """(n, 4) xyxy boxes with sizes 16..400 px inside an ``image_size`` square."""
    g = torch.Generator().manual_seed(seed)
    wh = 16.0 + 384.0 * torch.rand(n, 2, generator=g)
    xy = (image_size - wh) * torch.rand(n, 2, generator=g)
    return torch.cat([xy, xy + wh], dim=1).to(device)


def loop_sample(reference: Tensor, num_samples: int, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """Per-box reference implementation: one iteration per reference box.

    Args:
        reference: (N, 4) xyxy.
        num_samples: M.
        sigmas: (K, 4) per-component standard deviations in the relative space.
    Returns:
        boxes (N, M, 4) xyxy and log_q (N, M) (density over relative coordinates).
    """
    k = sigmas.shape[0]
    log_norm = -torch.log(sigmas).sum(dim=1) - 2.0 * math.log(2.0 * math.pi)  # (K,) for D = 4
    all_boxes, all_log_q = [], []
    for i in range(reference.shape[0]):
        x1, y1, x2, y2 = reference[i]
        w, h = x2 - x1, y2 - y1
        cx, cy = x1 + 0.5 * w, y1 + 0.5 * h
        comp = torch.randint(k, (num_samples,), device=reference.device)
        rel = torch.randn(num_samples, 4, device=reference.device) * sigmas[comp]
        ncx = cx + rel[:, 0] * w
        ncy = cy + rel[:, 1] * h
        nw = w * torch.exp(rel[:, 2])
        nh = h * torch.exp(rel[:, 3])
        all_boxes.append(torch.stack([ncx - 0.5 * nw, ncy - 0.5 * nh, ncx + 0.5 * nw, ncy + 0.5 * nh], dim=1))
        z = rel[:, None, :] / sigmas[None, :, :]  # (M, K, 4)
        log_comp = -0.5 * (z * z).sum(dim=2) + log_norm[None, :]
        all_log_q.append(torch.logsumexp(log_comp, dim=1) - math.log(k))
    return torch.stack(all_boxes), torch.stack(all_log_q)


def time_fn(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``fn`` per repeat (after ``warmup`` untimed calls)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--num-boxes", type=positive_int, default=512, help="N reference boxes")
    ap.add_argument("--num-samples", type=positive_int, default=128, help="M samples per reference")
    ap.add_argument("--repeats", type=positive_int, default=20, help="timed repeats of the vectorised sampler")
    ap.add_argument("--loop-repeats", type=positive_int, default=5, help="timed repeats of the (slow) loop")
    ap.add_argument("--warmup", type=non_negative_int, default=2)
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
    proposal = BoxProposal(DEFAULT_SIGMAS)
    sigmas = proposal.mixture.sigmas.to(device)
    ref = random_reference_boxes(args.num_boxes, device)
    n, m = args.num_boxes, args.num_samples

    # Sanity: both implementations agree on the density of the loop's samples.
    boxes_loop, log_q_loop = loop_sample(ref, m, sigmas)
    log_q_check = proposal.log_prob(boxes_loop, ref)
    max_diff = (log_q_check - log_q_loop).abs().max().item() if n * m else 0.0
    vec = proposal.sample(ref, m)
    assert vec.boxes.shape == boxes_loop.shape == (n, m, 4)

    t_vec = time_fn(lambda: proposal.sample(ref, m), device, args.repeats, args.warmup)
    t_loop = time_fn(lambda: loop_sample(ref, m, sigmas), device, args.loop_repeats, min(args.warmup, 1))
    vec_s, loop_s = statistics.median(t_vec), statistics.median(t_loop)
    result = {
        "benchmark": "box proposal sampling (boxes + log q)",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "num_boxes": n,
        "num_samples": m,
        "num_components": proposal.mixture.num_components,
        "vectorised_ms": 1e3 * vec_s,
        "loop_ms": 1e3 * loop_s,
        "speedup": loop_s / vec_s if vec_s > 0 else float("inf"),
        "vectorised_samples_per_s": n * m / vec_s if vec_s > 0 else float("inf"),
        "repeats": {"vectorised": args.repeats, "loop": args.loop_repeats, "warmup": args.warmup},
        "log_q_max_abs_diff_loop_vs_core": max_diff,
    }
    print(f"sampler, N={n} boxes x M={m} samples, K={result['num_components']}, {device}, "
          f"{result['threads']} thread(s)")
    print(f"  vectorised BoxProposal.sample: {result['vectorised_ms']:9.3f} ms (median of {args.repeats})")
    print(f"  per-box Python loop:           {result['loop_ms']:9.3f} ms (median of {args.loop_repeats})")
    print(f"  speed-up: {result['speedup']:.1f}x   (log q agreement: max |diff| {max_diff:.2e})")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
