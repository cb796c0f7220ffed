#!/usr/bin/env python
"""Each of the tracker's speed changes on its own, before and after in the same process (one thread).

Interleaved repeats on the same inputs (real crops of OTB DragonBaby through the shipped network), CPU time
of the process per call (on a shared machine wall time also counts the waits for a core):

* backbone: the frozen MobileNetV2 trunk on a 288 x 288 crop -- PyTorch in the default layout, in
  channels-last memory (``fast_kernels``), and in ONNX Runtime (``backbone_runtime: onnxruntime``);
* Gram update: the classifier's ``U^T U`` of one 64 x 18 x 18 map with 5 x 5 filters -- the im2col product
  vs the structured product (``fast_kernels``);
* refinement: ``estimate_box`` of ``ebm`` (10 boxes x 10 steps) with the last candidates scored with
  and without their (unused) gradient (``BoxEnergy.value``).

    python references/tracking/bench_fast_kernels.py --repeats 30
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch

from ebm_refine.tracking.datasets import load_dataset, read_frame
from ebm_refine.tracking.models.onnx_backbone import OnnxBackbone
from ebm_refine.tracking.processing import image_to_tensor
from ebm_refine.tracking.tracker import EBMAtomTracker, box_estimation
from ebm_refine.tracking.tracker.classifier import accumulate_im2col_gram
from ebm_refine.utils import shared_data_dir


def _cpu_ms(fn) -> float:
    t0 = time.process_time()
    fn()
    return 1000 * (time.process_time() - t0)


class _NoValue:
    """The box energy without its ``value`` method: the refiner then scores the last step with the gradient."""

    def __init__(self, energy):
        self.energy = energy

    def __call__(self, boxes):
        return self.energy(boxes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = shared_data_dir()
    seq = load_dataset("otb", os.path.join(str(root), "tracking", "otb"), sequences=["DragonBaby"])[0]
    tr = EBMAtomTracker("ebm")
    frames = [read_frame(f) for f in seq.frames[:2]]
    tr.initialize(frames[0], seq.init_info())
    crop, tf = tr._crop(frames[1], tr.pos, tr.size)
    x = image_to_tensor(crop)
    plain_bb = tr.net.backbone
    cl_bb = copy.deepcopy(plain_bb).to(memory_format=torch.channels_last)
    ort_bb = OnnxBackbone(plain_bb)
    xcl = x.contiguous(memory_format=torch.channels_last)
    feats = tr._features(crop)
    z = tr.classifier.project(feats["layer3"])[0]
    n = z.shape[0] * 25
    gram = torch.zeros(n, n)
    center = tr._tensor(np.array([crop.shape[1] / 2, crop.shape[0] / 2]))
    size = tr._tensor(tr.size * tf.scale)
    cfg = tr.params["box_refinement"]
    orig_box_energy = type(tr.net.estimator).box_energy

    def refine(with_value: bool):
        est = tr.net.estimator
        if not with_value:
            est.box_energy = lambda tf_: _NoValue(orig_box_energy(est, tf_))
        try:
            box_estimation.estimate_box(est, feats, tr.modulation, center, size, cfg,
                                        torch.Generator().manual_seed(0))
        finally:
            est.__dict__.pop("box_energy", None)

    cases = {
        "backbone, default layout": lambda: plain_bb(x),
        "backbone, channels-last": lambda: cl_bb(xcl),
        "backbone, ONNX Runtime": lambda: ort_bb(x),
        "Gram update, im2col product": lambda: accumulate_im2col_gram(gram, z, 5, 0.01, structured=False),
        "Gram update, structured": lambda: accumulate_im2col_gram(gram, z, 5, 0.01, structured=True),
        "ebm refinement, last step with gradient": lambda: refine(False),
        "ebm refinement, last step value only": lambda: refine(True),
    }
    times = {k: [] for k in cases}
    with torch.no_grad():
        for fn in cases.values():
            fn()
        for _ in range(args.repeats):
            for k, fn in cases.items():
                times[k].append(_cpu_ms(fn))
    print(f"CPU ms per call, mean ± std over {args.repeats} interleaved repeats (one thread)")
    print("| computation | ms |")
    print("|---|---|")
    for k, v in times.items():
        print(f"| {k} | {np.mean(v):.2f} ± {np.std(v):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
