#!/usr/bin/env python
"""Tracker speed on 640x360 video: frames per second and the share of time spent in box refinement.

Video: OTB DragonBaby (640x360, from ``$EBM_SHARED_DATA`` / ``<repo>/../shared/data``) when present,
otherwise a synthetic 640x360 sequence. Frames are decoded before timing; the time of ``track()`` is
measured per frame (first frame's ``initialize`` excluded, and reported on its own with the share of it
spent in first-frame adaptation), and ``time_refine`` is what the tracker
reports for everything box estimation adds to a frame: the estimator's test maps (on a window around the
initial boxes), candidate generation, gradient-ascent refinement and top-k averaging.

    python tools/bench_tracker.py --params ebm ebm_fast iounet norefine --frames 100 --json bench.json

``--params`` takes parameter-set names or YAML paths (e.g. a file with ``_base_: ebm.yaml`` and another
``checkpoint``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ebm_refine.tracking.tracker import EBMAtomTracker, load_tracker_params  # noqa: E402
from ebm_refine.utils.config import apply_dotted_overrides, merge_params  # noqa: E402
from ebm_refine.utils import atomic_write_text, shared_data_dir  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import int_in_range, non_negative_int, output_file, positive_int  # noqa: E402


def _video(frames: int):
    root = shared_data_dir()
    otb = os.path.join(str(root), "tracking", "otb") if root is not None else ""
    if otb and os.path.isdir(os.path.join(otb, "DragonBaby")):
        from ebm_refine.tracking.datasets import load_dataset, read_frame

        seq = load_dataset("otb", otb, sequences=["DragonBaby"])[0]
        n = min(frames, len(seq))
        return "otb/DragonBaby", [read_frame(f) for f in seq.frames[:n]], seq.init_box
    from ebm_refine.data.synthetic_tracking import SyntheticConfig, SyntheticSequence

    seq = SyntheticSequence(1_000_000, SyntheticConfig(height=360, width=640, num_frames=frames))
    return "synthetic_640x360", [seq.frame(i) for i in range(frames)], seq.boxes[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", nargs="+", default=["ebm", "ebm_fast", "iounet", "norefine"])
    ap.add_argument("--frames", type=int_in_range(2), default=60,
                    help="frames to decode (the first initialises the tracker)")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--num-steps", type=non_negative_int, help="override box_refinement.num_steps")
    ap.add_argument("--num-init-boxes", type=positive_int, help="override box_refinement.num_init_boxes")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="tracker parameter overrides for every --params entry (e.g. checkpoint=out/net.pth)")
    ap.add_argument("--json", type=output_file, help="write results here")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = apply_dotted_overrides({}, args.set)
    variants = {p: load_tracker_params(p, merge_params({"box_refinement": {k: v for k, v in (
        ("num_steps", args.num_steps), ("num_init_boxes", args.num_init_boxes)) if v is not None}}, overrides,
        strict=False)) for p in args.params}  # every parameter set checked before the video is decoded
    name, frames, init = _video(args.frames)
    h, w = frames[0].shape[:2]
    out = {"video": name, "resolution": [w, h], "frames_timed": len(frames) - 1, "threads": args.threads,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "variants": {}}
    for p, params in variants.items():
        tr = EBMAtomTracker(params)
        t0 = time.perf_counter()
        init_out = tr.initialize(frames[0], {"init_bbox": [float(v) for v in init]})
        t_init = time.perf_counter() - t0
        times, refine = [], []
        for f in frames[1:]:
            t0 = time.perf_counter()
            res = tr.track(f)
            times.append(time.perf_counter() - t0)
            refine.append(res["time_refine"])
        total = float(np.sum(times))
        out["variants"][p] = {"fps": len(times) / total, "ms_per_frame": 1000 * total / len(times),
                              "ms_refine_per_frame": 1000 * float(np.mean(refine)),
                              "refine_share": float(np.sum(refine)) / total,
                              # once per sequence, not in the per-frame numbers
                              "ms_initialize": 1000 * t_init, "ms_adaptation": 1000 * init_out["time_adapt"],
                              "num_init_boxes": params["box_refinement"]["num_init_boxes"],
                              "num_steps": params["box_refinement"]["num_steps"],
                              "image_sample_size": params["image_sample_size"]}
        v = out["variants"][p]
        print(f"{p:10s} {v['fps']:6.2f} FPS  {v['ms_per_frame']:7.1f} ms/frame  refinement "
              f"{v['ms_refine_per_frame']:6.1f} ms ({100 * v['refine_share']:.1f}%)  initialize {v['ms_initialize']:.0f} ms "
              f"(adaptation {v['ms_adaptation']:.0f} ms)")
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
