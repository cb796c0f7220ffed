#!/usr/bin/env python
"""Generate the synthetic detection dataset (COCO format) into a folder and print what it holds.

    python tools/make_synthetic_detection.py --out datasets/synthetic --train 800 --val 200

Writes ``<out>/{train,val}/NNNNNN.png`` and ``<out>/annotations/instances_{train,val}.json``.
Re-running with the same settings reuses the existing files (stamp check) unless ``--force``.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.data import SyntheticDetectionConfig, generate_synthetic_coco  # noqa: E402
from ebm_refine.utils import check_writable  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import finite_float, non_negative_int, output_folder, positive_int  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    d = SyntheticDetectionConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="datasets/synthetic", type=output_folder, help="dataset folder")
    p.add_argument("--train", type=non_negative_int, default=d.num_train_images, help="training images")
    p.add_argument("--val", type=non_negative_int, default=d.num_val_images, help="validation images")
    p.add_argument("--seed", type=non_negative_int, default=d.seed)
    p.add_argument("--image-size", type=positive_int, nargs="+", default=list(d.image_size), metavar="PX",
                   help="height [width] in px")
    p.add_argument("--objects", type=non_negative_int, nargs=2, default=list(d.objects_per_image), metavar=("MIN", "MAX"))
    p.add_argument("--size-range", type=finite_float(0.0, open_low=True), nargs=2, default=list(d.size_range), metavar=("MIN", "MAX"),
                   help="object scale sqrt(w*h) in px")
    p.add_argument("--clutter", type=finite_float(0.0, 1.0), default=d.clutter, help="0..1")
    p.add_argument("--occlusion", type=finite_float(0.0, 1.0), default=d.occlusion, help="0..1")
    p.add_argument("--format", choices=("png", "jpg"), default=d.image_format)
    p.add_argument("--coco-dir", default=None, help="COCO folder for photo backgrounds and real distractors")
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    add_debug_argument(p)
    args = p.parse_args(argv)
    if len(args.image_size) > 2:
        p.error("--image-size takes HEIGHT [WIDTH]")
    return args


def summarize(json_path: Path) -> str:
    """One line of counts for a generated split."""
    data = json.loads(json_path.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    anns = data["annotations"]
    objects = [a for a in anns if not a["iscrowd"]]
    per_class = collections.Counter(names[a["category_id"]] for a in objects)
    occluded = sum(a["visible_fraction"] < 1.0 for a in objects)
    classes = ", ".join(f"{n} {per_class[n]}" for n in names.values())
    return (f"{len(data['images'])} images, {len(objects)} objects ({classes}), "
            f"{occluded} partly hidden, {len(anns) - len(objects)} ignore regions")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
    # invalid values raise BadValueError naming the config field (image_size, size_range, ...)
    cfg = SyntheticDetectionConfig(
        image_size=tuple(size[:2]), num_train_images=args.train, num_val_images=args.val,
        objects_per_image=tuple(args.objects), size_range=tuple(args.size_range), clutter=args.clutter,
        occlusion=args.occlusion, image_format=args.format, coco_dir=args.coco_dir, seed=args.seed,
    )
    check_writable(args.out)
    for split in ("train", "val"):
        start = time.perf_counter()
        json_path = generate_synthetic_coco(args.out, split, config=cfg, force=args.force)
        print(f"[{split}] {json_path} ({time.perf_counter() - start:.1f} s): {summarize(json_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
