#!/usr/bin/env python
"""Cost of EBM refinement and of EBM training inside Faster R-CNN R50-FPN (prints numbers, writes JSON).

Inference: time(detector + refinement) / time(detector) at ``--size`` px with ``--detections`` boxes
per image and T = ``--steps``, both measured in this run on the same images (refinement is switched
off for the detector-only timing; everything else is identical). Training: iteration time of joint
training with the energy head vs plain Faster R-CNN (StandardROIHeads), same batch.

Weights are random (timing does not depend on them; see ``stable_random_detector``) and the score
threshold is 0, so the detector always returns ``--detections`` boxes per image.

    python tools/bench_detection.py --device cuda --json bench_detection.json
    python tools/bench_detection.py --size 512 --repeats 2           # a CPU-sized run
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ebm_refine.detectron2 import get_ebm_cfg

CONFIG = "COCO-Detection/ebm_faster_rcnn_R_50_FPN_1x.yaml"


def make_inputs(n: int, size: int, device: str, gen: torch.Generator, with_targets: bool):
    from detectron2.structures import Boxes, Instances

    h, w = size, int(size * 4 / 3)
    out = []
    for _ in range(n):
        img = (torch.rand(3, h, w, generator=gen) * 255).to(device)
        d = {"image": img, "height": h, "width": w}
        if with_targets:
            inst = Instances((h, w))
            xy = torch.rand(10, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
            wh = 32 + torch.rand(10, 2, generator=gen) * torch.tensor([w * 0.25, h * 0.25])
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1).to(device))
            inst.gt_classes = torch.randint(0, 80, (10,), generator=gen).to(device)
            d["instances"] = inst
        out.append(d)
    return out


def stable_random_detector(model) -> None:
    """Zero the RPN and box-regression deltas of a randomly initialised model.

    Random deltas make proposals collapse onto the image border (NMS then leaves a handful), which
    would time a detector that does far less work than a trained one. With zero deltas, proposals are
    the anchors and detections the proposals, so the detector runs its full pipeline and returns
    ``--detections`` boxes per image.
    """
    with torch.no_grad():
        for layer in (model.proposal_generator.rpn_head.anchor_deltas, model.roi_heads.box_predictor.bbox_pred):
            layer.weight.zero_()
            layer.bias.zero_()


def timed(fn, repeats: int, device: str) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=800, help="shorter image side (px); longer = 4/3 of it")
    p.add_argument("--detections", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--images", type=int, default=1, help="images per inference call")
    p.add_argument("--train-images", type=int, default=2, help="images per training iteration")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    opts = ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "TEST.DETECTIONS_PER_IMAGE", str(args.detections), "MODEL.EBM.REFINE.NUM_STEPS", str(args.steps),
            "INPUT.MIN_SIZE_TEST", str(args.size), "MODEL.EBM.FREEZE_DETECTOR", "False"]
    cfg = get_ebm_cfg(CONFIG, opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    stable_random_detector(model)
    inputs = make_inputs(args.images, args.size, args.device, gen, with_targets=False)

    def infer(refine: bool):
        model.roi_heads.refine = refine
        with torch.no_grad():
            return model(inputs)

    n_boxes = sum(len(o["instances"]) for o in infer(True))
    t_det = timed(lambda: infer(False), args.repeats, args.device)
    t_ref = timed(lambda: infer(True), args.repeats, args.device)
    result = {
        "device": args.device, "torch_threads": torch.get_num_threads(), "image_size": [args.size, int(args.size * 4 / 3)],
        "images_per_call": args.images, "boxes_refined_per_call": n_boxes, "steps": args.steps,
        "inference_s": {"detector": t_det, "detector_plus_refinement": t_ref},
        "inference_ratio": t_ref / t_det,
    }
    print(f"inference  detector {t_det:.3f} s | + refinement {t_ref:.3f} s | ratio {t_ref / t_det:.3f} "
          f"({n_boxes} boxes, T={args.steps}, {args.size}px, {args.device})")

    if not args.skip_train:
        train_inputs = make_inputs(args.train_images, args.size, args.device, gen, with_targets=True)
        times = {}
        for name, head, arch in (("faster_rcnn", "StandardROIHeads", "GeneralizedRCNN"),
                                 ("with_energy_head", "EBMROIHeads", "EBMRCNN")):
            c = get_ebm_cfg(CONFIG, opts + ["MODEL.ROI_HEADS.NAME", head, "MODEL.META_ARCHITECTURE", arch,
                                            "INPUT.MIN_SIZE_TRAIN", f"({args.size},)"])
            torch.manual_seed(0)
            m = build_model(c).train()
            if head == "EBMROIHeads":
                assert not c.MODEL.EBM.FREEZE_DETECTOR
            params = [q for q in m.parameters() if q.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-5)

            def step():
                with EventStorage():
                    loss = sum(m(train_inputs).values())
                opt.zero_grad()
                loss.backward()
                opt.step()

            times[name] = timed(step, max(2, args.repeats // 2), args.device)
        result["train_iteration_s"] = times
        result["train_ratio"] = times["with_energy_head"] / times["faster_rcnn"]
        print(f"training   Faster R-CNN {times['faster_rcnn']:.3f} s/iter | with energy head "
              f"{times['with_energy_head']:.3f} s/iter | ratio {result['train_ratio']:.3f} "
              f"({args.train_images} images, {args.size}px)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
