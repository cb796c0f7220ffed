#!/usr/bin/env python
"""Where one frame of the EBM tracker spends its time, end to end on one thread.

Times each stage of ``EBMAtomTracker.track`` by wrapping the functions it calls (the wrapped code is the
tracker's own; only timers are added), plus decoding the JPEG (``read_frame``), which the evaluation runner
does before ``track``. Times are CPU time of the process (one thread: on a shared machine this leaves out
the waits for a core that wall time counts). Stages (ms per frame, mean over the timed frames):

* ``decode``: ``read_frame`` (cv2.imread + BGR -> RGB);
* ``crop``: ``sample_patch`` (search region, cv2 warpAffine);
* ``backbone``: the frozen MobileNetV2 trunk on the 288 x 288 crop (with the crop's uint8 -> float tensor);
* ``classifier_scores``, ``classifier_localize``, ``classifier_update``: the online classifier;
* ``test_features``: the box estimator's modulated test maps (window around the candidates);
* ``refinement_steps``: candidate boxes, gradient ascent and top-k averaging (``estimate_box`` minus
  ``test_features``);
* ``other``: everything else in ``track`` (Python glue, clamps, read-backs).

    python references/tracking/profile_tracker.py --params ebm ebm_fast ebm_fast+fast_kernels=false --repeats 3
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from ebm_refine.tracking.datasets import load_dataset, read_frame
from ebm_refine.tracking.tracker import EBMAtomTracker, ebm_atom, load_tracker_params
from ebm_refine.utils.config import apply_dotted_overrides
from ebm_refine.tracking.tracker.classifier import OnlineClassifier
from ebm_refine.tracking.models.box_estimator import EnergyBoxEstimator
from ebm_refine.utils import shared_data_dir

STAGES = ("decode", "crop", "backbone", "classifier_scores", "classifier_localize", "classifier_update",
          "test_features", "refinement_steps", "other")


class Timers:
    def __init__(self):
        self.total = defaultdict(float)

    def wrap(self, owner, attr, stage):
        fn = getattr(owner, attr)
        timers = self

        def timed(*a, **k):
            t0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                timers.total[stage] += time.process_time() - t0
        setattr(owner, attr, timed)
        return fn


@contextlib.contextmanager
def instrumented(timers: Timers):
    """Wrap the tracker's stages with timers; restore them on exit."""
    plan = [(ebm_atom, "sample_patch", "crop"),
            (OnlineClassifier, "scores", "classifier_scores"), (OnlineClassifier, "localize", "classifier_localize"),
            (OnlineClassifier, "update", "classifier_update"), (ebm_atom, "estimate_box", "estimate_box"),
            (EnergyBoxEstimator, "test_features", "test_features")]
    saved = [(owner, attr, timers.wrap(owner, attr, stage)) for owner, attr, stage in plan]
    try:
        yield
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)


def profile(params: str, paths, init_box, repeats: int) -> dict:
    rows = []
    for _ in range(repeats):
        timers = Timers()
        base, _, own = params.partition("+")  # "<params>+key=value,...", as tools/bench_tracker.py
        tr = EBMAtomTracker(load_tracker_params(base, apply_dotted_overrides({}, [i for i in own.split(",") if i])))
        tr.initialize(read_frame(paths[0]), {"init_bbox": [float(v) for v in init_box]})
        timers.wrap(tr, "_features", "backbone")  # on the instance: this tracker's backbone, whatever runs it
        total = 0.0
        with instrumented(timers):
            for p in paths[1:]:
                t0 = time.process_time()
                frame = read_frame(p)
                t1 = time.process_time()
                tr.track(frame)
                t2 = time.process_time()
                timers.total["decode"] += t1 - t0
                total += t2 - t0
        n = len(paths) - 1
        t = dict(timers.total)
        t["refinement_steps"] = t.pop("estimate_box", 0.0) - t.get("test_features", 0.0)
        t["other"] = total - sum(t.get(s, 0.0) for s in STAGES if s != "other")
        t["total"] = total
        rows.append({k: 1000 * v / n for k, v in t.items()})
    return {k: (float(np.mean([r.get(k, 0.0) for r in rows])), float(np.std([r.get(k, 0.0) for r in rows])))
            for k in (*STAGES, "total")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", nargs="+", default=["ebm", "ebm_fast"])
    ap.add_argument("--sequence", default="DragonBaby", help="an OTB sequence of ../shared/data/tracking/otb")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    root = shared_data_dir()
    if root is None or not os.path.isdir(os.path.join(str(root), "tracking", "otb", args.sequence)):
        sys.exit(f"OTB {args.sequence} not found under $EBM_SHARED_DATA / ../shared/data/tracking/otb")
    seq = load_dataset("otb", os.path.join(str(root), "tracking", "otb"), sequences=[args.sequence])[0]
    paths = seq.frames[:args.frames + 1]
    res = {p: profile(p, paths, seq.init_box, args.repeats) for p in args.params}
    print(f"CPU ms per frame, mean ± std over {args.repeats} repeats of {len(paths) - 1} frames ({args.sequence}, "
          "one thread)")
    print("| stage | " + " | ".join(args.params) + " |")
    print("|---|" + "---|" * len(args.params))
    for s in (*STAGES, "total"):
        cells = [f"{res[p][s][0]:.1f} ± {res[p][s][1]:.1f} ({100 * res[p][s][0] / res[p]['total'][0]:.0f} %)"
                 for p in args.params]
        print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
