#!/usr/bin/env python
"""Cost of EBM refinement and of EBM training inside Faster R-CNN R50-FPN, against the compute floor.

Inference: time(detector + refinement) / time(detector) at ``--size`` px with ``--detections`` boxes per
image, for every T in ``--steps``, all measured in this run on the same images, interleaved (detector,
then detector + refinement for each T, repeated; medians), so that a change in machine load hits every
variant alike. Refinement is switched off for the detector-only timing; everything else is identical.

Multiply-adds: the detector's with fvcore's ``FlopCountAnalysis`` (as Detectron2's
``tools/analyze_model.py``; convolutions, linear layers and the other ops fvcore counts, refinement
off), the refinement's counted analytically for the energy head's fast path
(``FCEnergyHead.refinement_multiply_adds``: T + 1 evaluations, T box gradients). From them:

* floor ratio = 1 + refinement multiply-adds / detector multiply-adds: the ratio if refinement ran at
  the detector's achieved multiply-adds per second;
* efficiency = (floor ratio - 1) / (measured ratio - 1): refinement's floor time over its measured time.

On a CPU the ratios are also given in process CPU time, which other jobs on a shared machine disturb far
less than wall time. Training: iteration time of joint training with the energy head vs plain Faster
R-CNN (StandardROIHeads), same batch, interleaved too.

Weights are random (timing does not depend on them; see ``stable_random_detector``) and the score
threshold is 0, so the detector always returns ``--detections`` boxes per image.

    python tools/bench_detection.py --device cuda --json bench_detection.json
    python tools/bench_detection.py --size 800 --steps 10 3 --repeats 3 --skip-train    # CPU
    python tools/bench_detection.py --refine-path autograd ...                          # the reference path
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import torch  # noqa: E402

from ebm_refine.utils import UserError, atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import int_in_range, non_negative_int, output_file, positive_int  # noqa: E402

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


def interleaved_times(fns: Dict[str, Callable[[], object]], repeats: int, device: str) -> Dict[str, dict]:
    """Median wall and process-CPU seconds of each function, run in turn ``repeats`` times after one
    warm-up round."""
    cuda = device.startswith("cuda")
    for fn in fns.values():
        fn()
    wall: Dict[str, List[float]] = {k: [] for k in fns}
    cpu: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                torch.cuda.synchronize()
            w, c = time.perf_counter(), time.process_time()
            fn()
            if cuda:
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])} for k in fns}


def detector_multiply_adds(model, inputs) -> int:
    """Multiply-adds of one inference call with refinement off (fvcore, Detectron2's model wrapper)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    refine = model.roi_heads.refine
    model.roi_heads.refine = False
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, inputs)
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return int(analysis.total())
    finally:
        model.roi_heads.refine = refine


def compare_paths(heads, infer, steps: int) -> dict:
    """Refine the same detections with the fused path and with autograd; how far apart the results are."""
    fused = heads.refine_fused
    outputs = {}
    try:
        for path in (True, False):
            heads.refine_fused = path
            outputs[path] = [o["instances"] for o in infer(steps)]
    finally:
        heads.refine_fused = fused
    box = torch.cat([(a.pred_boxes.tensor - b.pred_boxes.tensor).abs().amax(1)
                     for a, b in zip(outputs[True], outputs[False])])
    energy = torch.cat([(a.pred_energies - b.pred_energies).abs() for a, b in zip(outputs[True], outputs[False])])
    moved = torch.cat([(b.pred_boxes.tensor - b.pred_boxes_unrefined.tensor).abs().amax(1) for b in outputs[False]])
    return {"steps": steps, "boxes": len(box), "max_box_move_px": moved.max().item(),
            "median_box_move_px": moved.median().item(), "max_box_diff_px": box.max().item(),
            "median_box_diff_px": box.median().item(), "boxes_within_1e-3_px": int((box < 1e-3).sum()),
            "max_energy_diff": energy.max().item()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--size", type=int_in_range(64), default=800, help="shorter image side (px); longer = 4/3 of it")
    p.add_argument("--detections", type=positive_int, default=100)
    p.add_argument("--steps", type=non_negative_int, nargs="+", default=[10], help="refinement steps T (one or more)")
    p.add_argument("--refine-path", choices=("fused", "autograd"), default="fused",
                   help="the head's fused fast path (MODEL.EBM.REFINE.FUSED True) or autograd (the reference)")
    p.add_argument("--images", type=positive_int, default=1, help="images per inference call")
    p.add_argument("--train-images", type=positive_int, default=2, help="images per training iteration")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--compare-paths", action="store_true",
                   help="also refine once with the other path and report how far the two paths' boxes are apart")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", default=None, type=output_file, help="write the results here")
    add_debug_argument(p)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        raise UserError(f"--device: cpu, cuda or cuda:N, got {args.device!r}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from ebm_refine.detectron2 import get_ebm_cfg

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    opts = ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
            "TEST.DETECTIONS_PER_IMAGE", str(args.detections), "INPUT.MIN_SIZE_TEST", str(args.size),
            "MODEL.EBM.REFINE.FUSED", str(args.refine_path == "fused"), "MODEL.EBM.FREEZE_DETECTOR", "False"]
    cfg = get_ebm_cfg(CONFIG, opts)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    stable_random_detector(model)
    heads = model.roi_heads
    inputs = make_inputs(args.images, args.size, args.device, gen, with_targets=False)

    def infer(steps):
        heads.refine = steps is not None
        heads.num_steps = steps or 0
        with torch.no_grad():
            return model(inputs)

    n_boxes = sum(len(o["instances"]) for o in infer(args.steps[0]))
    variants = {"detector": lambda: infer(None)}
    variants.update({f"T={t}": (lambda t=t: infer(t)) for t in args.steps})
    times = interleaved_times(variants, args.repeats, args.device)
    det_macs = detector_multiply_adds(model, inputs)
    clocks = ("wall", "cpu") if args.device == "cpu" else ("wall",)
    result = {
        "device": args.device, "torch_threads": torch.get_num_threads(), "image_size": [args.size, int(args.size * 4 / 3)],
        "images_per_call": args.images, "boxes_refined_per_call": n_boxes, "refine_path": args.refine_path,
        "repeats": args.repeats, "inference_s": times, "detector_multiply_adds": det_macs, "refinement": {},
    }
    t_det = times["detector"]
    print(f"detector: {t_det['wall']:.3f} s wall" + (f", {t_det['cpu']:.3f} s CPU" if "cpu" in clocks else "")
          + f", {det_macs / 1e9:.1f} G multiply-adds ({args.size}px, {args.images} image(s), {args.device}, "
          f"{torch.get_num_threads()} thread(s))")
    for t in args.steps:
        macs = heads.energy_head.refinement_multiply_adds(n_boxes, t, heads.energy_pooler.sampling_ratio)
        floor = 1.0 + macs / det_macs
        entry = {"multiply_adds": macs, "floor_ratio": floor}
        for clock in clocks:
            ratio = times[f"T={t}"][clock] / t_det[clock]
            entry[f"ratio_{clock}"] = ratio
            entry[f"efficiency_{clock}"] = (floor - 1.0) / (ratio - 1.0) if ratio > 1.0 else None
        result["refinement"][f"T={t}"] = entry
        measured = " | ".join(
            f"{clock}: ratio {entry[f'ratio_{clock}']:.3f}, efficiency "
            + (f"{entry[f'efficiency_{clock}']:.2f}" if entry[f"efficiency_{clock}"] is not None else "n/a")
            for clock in clocks)
        print(f"T={t:<3d} {n_boxes} boxes, {macs / 1e9:.1f} G multiply-adds, floor ratio {floor:.3f} | {measured}")
    if args.compare_paths:
        result["path_agreement"] = compare_paths(heads, infer, args.steps[0])
        a = result["path_agreement"]
        print(f"fused vs autograd (T={args.steps[0]}; boxes moved by up to {a['max_box_move_px']:.2f} px, median "
              f"{a['median_box_move_px']:.2f} px): boxes max |diff| {a['max_box_diff_px']:.2e} px, median "
              f"{a['median_box_diff_px']:.2e} px, {a['boxes_within_1e-3_px']}/{a['boxes']} within 1e-3 px; "
              f"energies max |diff| {a['max_energy_diff']:.2e}")
    if len(args.steps) == 1:  # the keys of the earlier single-T output
        result["steps"] = args.steps[0]
        result["inference_ratio"] = result["refinement"][f"T={args.steps[0]}"]["ratio_wall"]

    if not args.skip_train:
        train_inputs = make_inputs(args.train_images, args.size, args.device, gen, with_targets=True)
        steps = {}
        for name, head, arch in (("faster_rcnn", "StandardROIHeads", "GeneralizedRCNN"),
                                 ("with_energy_head", "EBMROIHeads", "EBMRCNN")):
            c = get_ebm_cfg(CONFIG, opts + ["MODEL.ROI_HEADS.NAME", head, "MODEL.META_ARCHITECTURE", arch,
                                            "INPUT.MIN_SIZE_TRAIN", f"({args.size},)"])
            torch.manual_seed(0)
            m = build_model(c).train()
            params = [q for q in m.parameters() if q.requires_grad]
            opt = torch.optim.SGD(params, lr=1e-5)

            def step(m=m, opt=opt):
                with EventStorage():
                    loss = sum(m(train_inputs).values())
                opt.zero_grad()
                loss.backward()
                opt.step()

            steps[name] = step
        train_times = interleaved_times(steps, max(2, args.repeats // 2), args.device)
        result["train_iteration_s"] = train_times
        result["train_ratio"] = train_times["with_energy_head"]["wall"] / train_times["faster_rcnn"]["wall"]
        line = (f"training: Faster R-CNN {train_times['faster_rcnn']['wall']:.3f} s/iter, with energy head "
                f"{train_times['with_energy_head']['wall']:.3f} s/iter: ratio {result['train_ratio']:.3f} wall")
        if "cpu" in clocks:
            result["train_ratio_cpu"] = train_times["with_energy_head"]["cpu"] / train_times["faster_rcnn"]["cpu"]
            line += f", {result['train_ratio_cpu']:.3f} CPU"
        print(line + f" ({args.train_images} images, {args.size}px)")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(run_cli(main))
