#!/usr/bin/env python
"""Tracker speed on 640x360 video: frames per second and the share of time spent in box refinement, with
peer trackers (OpenCV's NanoTrack ``nano`` and CSRT ``csrt`` by default) timed in the same run.

Video: OTB DragonBaby (640x360, from ``$EBM_SHARED_DATA`` / ``<repo>/../shared/data``) when present,
otherwise a synthetic 640x360 sequence. Frames are decoded before timing; the time of ``track()`` is
measured per frame (first frame's ``initialize`` excluded, and reported on its own with the share of it
spent in first-frame adaptation), and ``time_refine`` is what the tracker
reports for everything box estimation adds to a frame: the estimator's test maps (on a window around the
initial boxes), candidate generation, gradient-ascent refinement and top-k averaging.

    python tools/bench_tracker.py --params ebm ebm_fast iounet norefine --frames 100 --repeats 3 --json bench.json

Each repeat times every tracker once on the same frames (trackers interleaved, a fresh tracker per repeat);
FPS is reported as mean ± std over the repeats and as a ratio to the first peer.

``--params`` takes parameter-set names or YAML paths (e.g. a file with ``_base_: ebm.yaml`` and another
``checkpoint``), each optionally with its own overrides: ``ebm_fast+backbone_runtime=onnxruntime``.
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

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ebm_refine.tracking.evaluation import get_tracker_factory  # noqa: E402
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


def _time_tracker(tracker, frames, init) -> dict:
    """Initialise on the first frame, then time ``track()`` per frame (seconds)."""
    t0 = time.perf_counter()
    init_out = tracker.initialize(frames[0], {"init_bbox": [float(v) for v in init]}) or {}
    t_init = time.perf_counter() - t0
    times, refine = [], []
    c0 = time.process_time()
    for f in frames[1:]:
        t0 = time.perf_counter()
        res = tracker.track(f)
        times.append(time.perf_counter() - t0)
        refine.append(res.get("time_refine"))
    cpu = time.process_time() - c0
    return {"times": times, "refine": refine, "init": t_init, "adapt": init_out.get("time_adapt"), "cpu": cpu}


def _summary(runs: list) -> dict:
    """Mean and population std over repeats of FPS, ms per frame and the refinement share."""
    fps = [len(r["times"]) / float(np.sum(r["times"])) for r in runs]
    ms = [1000 * float(np.mean(r["times"])) for r in runs]
    # CPU time of the process per frame: on a shared machine it leaves out the time this process waited
    # for a core, which wall time does not (with one thread it is the wall time of an idle core).
    cpu_fps = [len(r["times"]) / r["cpu"] for r in runs]
    out = {"fps": float(np.mean(fps)), "fps_std": float(np.std(fps)), "fps_runs": fps,
           "cpu_fps": float(np.mean(cpu_fps)), "cpu_fps_std": float(np.std(cpu_fps)),
           "ms_per_frame": float(np.mean(ms)), "ms_per_frame_std": float(np.std(ms)),
           "ms_initialize": 1000 * float(np.mean([r["init"] for r in runs]))}
    if runs[0]["refine"][0] is not None:
        share = [float(np.sum(r["refine"])) / float(np.sum(r["times"])) for r in runs]
        out.update(ms_refine_per_frame=1000 * float(np.mean([np.mean(r["refine"]) for r in runs])),
                   refine_share=float(np.mean(share)), refine_share_std=float(np.std(share)),
                   ms_adaptation=1000 * float(np.mean([r["adapt"] for r in runs])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", nargs="+", default=["ebm", "ebm_fast", "iounet", "norefine"])
    ap.add_argument("--peers", nargs="*", default=["nano", "csrt"], metavar="NAME",
                    help="registered peer trackers timed in the same run (default: nano csrt; none: --peers)")
    ap.add_argument("--frames", type=int_in_range(2), default=60,
                    help="frames to decode (the first initialises the tracker)")
    ap.add_argument("--repeats", type=positive_int, default=1,
                    help="time every tracker this many times, the trackers interleaved (mean and std reported)")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--num-steps", type=non_negative_int, help="override box_refinement.num_steps")
    ap.add_argument("--num-init-boxes", type=positive_int, help="override box_refinement.num_init_boxes")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="tracker parameter overrides for every --params entry (e.g. checkpoint=out/net.pth)")
    ap.add_argument("--plain", action="store_true",
                    help="also time every --params entry with fast_kernels=false (as '<params>/plain'), same run")
    ap.add_argument("--json", type=output_file, help="write results here")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    builders = {}  # every parameter set is loaded (and range-checked) before the video is decoded
    for p in args.params:
        over = {k: v for k, v in (("num_steps", args.num_steps), ("num_init_boxes", args.num_init_boxes))
                if v is not None}
        # "<params>+key=value,key=value": that parameter set with its own overrides (eval_tracking's naming)
        base, _, own = p.partition("+")
        items = list(args.set) + [i for i in own.split(",") if i]
        params = load_tracker_params(base, merge_params({"box_refinement": over}, apply_dotted_overrides({}, items),
                                                        strict=False))
        net = EBMAtomTracker(params).net  # loaded once; every repeat builds a fresh tracker on it
        builders[p] = (lambda params=params, net=net: EBMAtomTracker(params, net=net)), params
        if args.plain:
            plain = dict(params, fast_kernels=False)
            builders[f"{p}/plain"] = (lambda params=plain, net=net: EBMAtomTracker(params, net=net)), plain
    for peer in args.peers:
        builders[peer] = get_tracker_factory(peer), None
    name, frames, init = _video(args.frames)
    h, w = frames[0].shape[:2]
    out = {"video": name, "resolution": [w, h], "frames_timed": len(frames) - 1, "threads": args.threads,
           "repeats": args.repeats, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
           "opencv": cv2.__version__, "variants": {}}
    runs = {k: [] for k in builders}
    # Interleaved repeats: a slow spell of a shared machine hits every tracker, not one of them.
    for _ in range(args.repeats):
        for k, (build, _) in builders.items():
            runs[k].append(_time_tracker(build(), frames, init))
    for k, (_, params) in builders.items():
        v = _summary(runs[k])
        if params is not None:
            v.update(num_init_boxes=params["box_refinement"]["num_init_boxes"],
                     num_steps=params["box_refinement"]["num_steps"], image_sample_size=params["image_sample_size"])
        out["variants"][k] = v
    ref = next((p for p in args.peers if p in out["variants"]), None)
    for k, v in out["variants"].items():
        line = (f"{k:16s} {v['fps']:6.2f} ± {v['fps_std']:4.2f} FPS (CPU time {v['cpu_fps']:6.2f} ± "
                f"{v['cpu_fps_std']:4.2f})  {v['ms_per_frame']:6.1f} ms/frame")
        if ref is not None:
            v[f"fps_ratio_to_{ref}"] = v["fps"] / out["variants"][ref]["fps"]
            v[f"cpu_fps_ratio_to_{ref}"] = v["cpu_fps"] / out["variants"][ref]["cpu_fps"]
            line += f"  ×{v[f'cpu_fps_ratio_to_{ref}']:.2f} of {ref} (CPU time)"
        if "refine_share" in v:
            line += (f"  refinement {v['ms_refine_per_frame']:5.1f} ms ({100 * v['refine_share']:.1f} ± "
                     f"{100 * v['refine_share_std']:.1f}%)  initialize {v['ms_initialize']:.0f} ms "
                     f"(adaptation {v['ms_adaptation']:.0f} ms)")
        print(line)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
