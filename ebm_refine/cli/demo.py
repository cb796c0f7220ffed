#!/usr/bin/env python
"""Render EBM box refinement on videos, image lists, frame folders or a webcam.

Two modes (the first argument, or ``--mode``):

``detect``
    A Detectron2 model with the EBM head; by default the model-zoo entry ``detection/ebm_yolox_nano``
    (YOLOX-nano detects COCO's 80 classes, the shipped energy head refines its boxes; YOLOX's weights
    ``yolox_nano.onnx`` come from ``$EBM_WEIGHTS_DIR``). Every frame shows the detector's boxes before
    refinement (thin, dashed) and after the EBM gradient ascent (solid), with class name and score, and the
    model's time on the frame::

        python demo/demo.py detect --video-input street.mp4 --output output/demo/street.mp4
        python demo/demo.py detect --config-file configs/Synthetic/ebm_compact_fpn_synthetic.yaml \\
            --input "datasets/ebm_synthetic/val/*.jpg" --output output/demo/synthetic.mp4 \\
            --opts MODEL.WEIGHTS output/quickstart/detection/ebm/model_final.pth

``track``
    The ATOM-style EBM tracker on a video file or a folder of frames, started from ``--init-box`` or the
    first line of ``--ground-truth``; draws the tracked box, the ground truth when given, and the energy
    of the estimated box as its confidence::

        python demo/demo.py track --input ../shared/data/tracking/otb/Crossing/img \\
            --ground-truth ../shared/data/tracking/otb/Crossing/groundtruth_rect.txt \\
            --checkpoint checkpoints/tracking/ebm_mobilenet_real/net.pth --output output/demo/crossing.mp4

An output appears only when complete (written to a hidden file, then renamed): a failed run leaves none,
and Ctrl-C keeps an earlier output as it was (exit status 130), except that it ends a webcam recording
and keeps it. Bad input (a missing or unreadable file, frames under 16x16 px, an unwritable output, a bad
start box, a wrong checkpoint, ``detect`` without ``MODEL.WEIGHTS``) ends with one line on stderr, exit
status 2 (``--debug``: the traceback). Truncated JPEG frames and non-finite energies are drawn (as far as
the data goes, as "n/a") with one warning each and a count at the end. Details: docs/bad_input.md.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ebm_refine.tracking.datasets.io import check_box_sizes, list_frames, natural_key, read_box_file
from ebm_refine.utils import IMAGE_EXTENSIONS, BadValueError, MissingFileError
from ebm_refine.utils.cli import add_debug_argument, run_cli
from ebm_refine.utils.cli_args import finite_float, non_negative_int, output_path, positive_int
from ebm_refine.utils.video import (VIDEO_EXTENSIONS, FrameSource, ImageFolderOutput, VideoOutput,
                                    open_images, open_video, open_webcam, output_target, write_frames)

PROG = "demo.py"
MODES = ("detect", "track")
# Smaller frames cannot hold a box, a label and the legend (and OpenCV's mp4 writer refuses 1x1).
MIN_FRAME_SIDE = 16
# Frame sub-folders of a sequence: the video is named after the sequence (.../Crossing/img -> Crossing).
FRAME_SUBFOLDERS = ("img", "imgs", "color")
# detect without --config-file: YOLOX-nano + the shipped energy head (ebm_refine.detectron2.model_zoo).
DEFAULT_MODEL = "detection/ebm_yolox_nano"
YOLOX_ARCHS = ("YOLOX", "EBMYOLOX")


class Warnings:
    """``warn(kind, message)`` for problems that may repeat on every frame: prints the first of each kind,
    counts the rest (:meth:`summary`). ``prog`` starts each line."""

    def __init__(self, prog: str = PROG) -> None:
        self.counts = collections.Counter()
        self.prog = prog

    def __call__(self, kind: str, message: str) -> None:
        if not self.counts[kind]:
            from tqdm import tqdm

            tqdm.write(f"{self.prog}: warning: {message}", file=sys.stderr)  # above the progress bar
        self.counts[kind] += 1

    def summary(self) -> None:
        for kind, n in self.counts.items():
            if n > 1:
                print(f"{self.prog}: warning: {n} frames with {kind} in all", file=sys.stderr)

    def truncated(self, path: str) -> None:
        self("a truncated image file", f"{path}: truncated JPEG, drawn as far as its data goes (the rest is grey); "
             "copy the file again for a clean video")


def expand_inputs(items: Sequence[str], sequence: bool = False, contiguous: bool = False) -> List[str]:
    """``--input`` items (files, folders, quoted glob patterns) as an ordered list of image files.

    Folders are listed by :func:`list_frames`: as the frames of a sequence when ``sequence`` (a number in
    every name, no gap when ``contiguous``), else every image in natural order (``2.jpg`` before ``10.jpg``).
    """
    paths: List[str] = []
    for item in items:
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item), key=natural_key)
            if not matches:
                raise BadValueError(f"no files match the pattern {item!r}; check the pattern (quote it for the shell)")
            paths.extend(matches)
        elif os.path.isdir(item):
            paths.extend(list_frames(item, IMAGE_EXTENSIONS, contiguous=contiguous, numbered=sequence))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise MissingFileError(f"input {item!r} does not exist; check the path")
    return paths


def open_source(args: argparse.Namespace, warn: Warnings) -> FrameSource:
    """The frames ``--video-input``, ``--input`` or ``--webcam`` name, checked to be large enough to draw on."""
    if args.webcam:
        source = open_webcam(args.webcam_index)
    elif args.video_input or (len(args.input) == 1 and args.input[0].lower().endswith(VIDEO_EXTENSIONS)):
        source = open_video(args.video_input or args.input[0])
    else:
        folder = Path(os.path.abspath(args.input[0]))
        name = (folder.parent.name if folder.name in FRAME_SUBFOLDERS else folder.name) if folder.is_dir() else None
        # Tracking reads the frames of one sequence; with a ground truth (a row per frame) they must not skip.
        paths = expand_inputs(args.input, sequence=args.mode == "track", contiguous=bool(args.ground_truth))
        source = open_images(paths, args.fps, warn.truncated, name)
    h, w = source.first.shape[:2]
    if min(h, w) < MIN_FRAME_SIDE:
        what = args.video_input or (args.input[0] if args.input else "webcam")
        raise BadValueError(f"{what}: frames are {w}x{h} px; the demo needs at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} "
                            "px, use the full-size video or images")
    return source


def say(args: argparse.Namespace, message: str) -> None:
    """A progress line on stderr, before the progress bar starts."""
    print(f"{args.prog}: {message}", file=sys.stderr)


def render(source: FrameSource, out, frame_fn, args: argparse.Namespace, warn: Warnings) -> int:
    try:
        n = write_frames(source, out, frame_fn, args.max_frames, args.mode)
    finally:
        warn.summary()
    print(f"wrote {n} frames to {out.path}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- detect
def load_detection_cfg(config_file: Optional[str], opts: Sequence[str], threshold: float):
    """Detectron2 config with the EBM keys: a path, or a name under ``configs/`` (``Synthetic/…yaml``); None is
    the model-zoo entry :data:`DEFAULT_MODEL` (its shipped energy head unless ``opts`` name another)."""
    import torch

    from ebm_refine.detectron2 import ebm_config_path, get_shipped_model_cfg, load_config, shipped_checkpoint
    from ebm_refine.detectron2.yolox_onnx import missing_weights_message
    from ebm_refine.utils.resources import find_weights

    if config_file is None:
        cfg = get_shipped_model_cfg(DEFAULT_MODEL, list(opts))
        if not cfg.MODEL.EBM.HEAD.WEIGHTS:
            raise MissingFileError(
                f"the shipped energy head {shipped_checkpoint(DEFAULT_MODEL, must_exist=False)} is not in this copy "
                "of ebm_refine; pass a trained one: --opts MODEL.EBM.HEAD.WEIGHTS output/ebm_refiner_yolox_nano/"
                "model_final.pth (tools/train_net.py --config-file configs/COCO-Refine/ebm_refiner_yolox_nano.yaml)")
    else:
        path = config_file
        if not os.path.isfile(path):
            try:
                path = ebm_config_path(config_file)
            except FileNotFoundError:
                raise MissingFileError(f"config file {config_file!r} not found; pass a path or a name under configs/ "
                                       "(e.g. Synthetic/ebm_compact_fpn_synthetic.yaml)") from None
        cfg = load_config(path, list(opts))
    # Let the model keep everything the user asked to see; thresholding again when drawing is then a no-op.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = min(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, threshold)
    if cfg.MODEL.META_ARCHITECTURE in YOLOX_ARCHS:
        # YOLOX keeps scores > its threshold: exactly the drawn ones (>= threshold), so only those are refined.
        cfg.MODEL.YOLOX.SCORE_THRESH_TEST = max(float(np.nextafter(threshold, -np.inf)), 0.0)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    if not cfg.MODEL.WEIGHTS:
        raise BadValueError("MODEL.WEIGHTS is not set, so the detector would be random; pass trained weights last "
                            "on the command line: --opts MODEL.WEIGHTS output/.../model_final.pth")
    weights = find_weights(cfg.MODEL.WEIGHTS)  # a file name is looked up in the weights folder, as the model does
    if "://" not in weights and not os.path.isfile(weights):
        if cfg.MODEL.META_ARCHITECTURE in YOLOX_ARCHS:
            raise MissingFileError(missing_weights_message(cfg.MODEL.WEIGHTS))
        raise MissingFileError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} does not exist; pass the model_final.pth of a "
                               "training run (tools/train_net.py)")
    cfg.freeze()
    return cfg


def run_detect(args: argparse.Namespace) -> int:
    """Open input and output first (cheap checks), then build the model and render."""
    warn = Warnings(args.prog)
    source = open_source(args, warn)
    # Image inputs go to a folder of images (keeping their names) unless --output names an .mp4.
    path, is_video = output_target(args.output, source.name, images=bool(source.names))
    out = VideoOutput(path, source.fps, source.size, args.prog) if is_video else ImageFolderOutput(path, args.prog)
    with out.abort_on_error():  # the output's lock is taken before the slow model loading
        from ebm_refine.visualization import DetectionDemo

        cfg = load_detection_cfg(args.config_file, args.opts, args.confidence_threshold)
        from ebm_refine.utils.resources import find_weights

        what = args.config_file or f"model zoo {DEFAULT_MODEL}"
        head = f", energy head {cfg.MODEL.EBM.HEAD.WEIGHTS}" if cfg.MODEL.EBM.HEAD.WEIGHTS else ""
        say(args, f"loading the detector {cfg.MODEL.META_ARCHITECTURE} ({what}) with weights "
                  f"{find_weights(cfg.MODEL.WEIGHTS)}{head} on {cfg.MODEL.DEVICE}")
        frame_fn = DetectionDemo(cfg, args.confidence_threshold, warn)
    return render(source, out, frame_fn, args, warn)


# --------------------------------------------------------------------------------------------- track
def parse_box(text: str) -> List[float]:
    """``x,y,w,h`` (commas, tabs or spaces; pixels) into four floats."""
    try:
        box = [float(p) for p in re.split(r"[,\s]+", text.strip()) if p]
    except ValueError:
        box = []
    if len(box) != 4:
        raise BadValueError(f"box must be 4 numbers x,y,w,h (pixels), got {text!r}")
    return box


def select_box(frame: np.ndarray) -> List[float]:
    """The start box the user drags on ``frame`` (BGR) in an OpenCV window (``cv2.selectROI``), x, y, w, h.

    Raises:
        BadValueError (one line saying to pass ``--init-box``) when no window can open -- no display, or an
        OpenCV build without GUI support such as opencv-*-headless -- or when no box was drawn.
    """
    import cv2

    no_window = ("no window can open to draw the start box ({}); pass the box as --init-box x,y,w,h (pixels "
                 "in the first frame)")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise BadValueError(no_window.format("no display: DISPLAY is not set"))
    title = "draw the target's box, then press Enter or Space (c: cancel)"
    try:
        x, y, w, h = cv2.selectROI(title, frame, showCrosshair=True, fromCenter=False)
        cv2.destroyWindow(title)
    except cv2.error:
        raise BadValueError(no_window.format("this OpenCV has no GUI support")) from None
    if w <= 0 or h <= 0:
        raise BadValueError("no start box was drawn (selection cancelled); drag a box around the target and press "
                            "Enter, or pass --init-box x,y,w,h")
    return [float(x), float(y), float(w), float(h)]


def read_ground_truth(path: str) -> np.ndarray:
    """(N, 4) x, y, w, h per frame (NaN rows: no box); the first row must be a box, it starts the tracker."""
    boxes = check_box_sizes(path, read_box_file(path, ncols=(4,), allow_nan=True))
    if not np.isfinite(boxes[0]).all():
        raise BadValueError(f"{path}:1: not a box x,y,w,h; the first line starts the tracker (or use --init-box)")
    return boxes


def run_track(args: argparse.Namespace) -> int:
    """Validate input, output and start box, then load the tracker and render."""
    warn = Warnings(args.prog)
    source = open_source(args, warn)
    gt = read_ground_truth(args.ground_truth) if args.ground_truth else None
    init = parse_box(args.init_box) if args.init_box else (gt[0].tolist() if gt is not None else None)
    path, _ = output_target(args.output, source.name, images=False)
    if init is None:  # after the output check: drawing a box for a run that cannot write would be wasted
        init = select_box(source.first)
    # Imported here: torch loads for seconds, and the checks above should fail fast.
    from ebm_refine.tracking.tracker.ebm_atom import validate_init_box
    from ebm_refine.utils.config import apply_dotted_overrides

    try:
        validate_init_box(init, source.first.shape[:2])
    except ValueError as e:
        where = "--init-box" if args.init_box else f"{args.ground_truth}:1" if gt is not None else "the drawn box"
        raise BadValueError(f"{where}: {e}; give a box x,y,w,h that overlaps the first frame") from None
    overrides = apply_dotted_overrides({}, args.set)
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise MissingFileError(f"tracker checkpoint {args.checkpoint!r} does not exist; pass the net.pth written "
                                   "by tools/train_tracker.py")
        overrides["checkpoint"] = os.path.abspath(args.checkpoint)
    out = VideoOutput(path, source.fps, source.size, args.prog)
    with out.abort_on_error():  # the output's lock is taken before the network loads
        from ebm_refine.visualization import TrackingDemo, build_tracker

        say(args, f"loading the tracker ({args.tracker_params})")
        tracker, network = build_tracker(args.tracker_params, overrides)
    say(args, f"network {network}; tracking {source.name} from x,y,w,h = {','.join(f'{v:g}' for v in init)} "
              "(the first frame is slower: it trains the tracker's classifier on the target)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return render(source, out, TrackingDemo(tracker, init, gt, network, warn), args, warn)


# --------------------------------------------------------------------------------------------- CLI
def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default=None, help="detect (default) or track; or give it first")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--video-input", metavar="FILE", help="a video file")
    src.add_argument("--input", nargs="+", metavar="PATH",
                     help="images, quoted glob patterns or a folder of frames (sorted numerically)")
    src.add_argument("--webcam", action="store_true",
                     help="read the camera (Ctrl-C ends the recording and keeps what was rendered)")
    ap.add_argument("--webcam-index", type=non_negative_int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--output", required=True, metavar="FILE_OR_DIR", type=output_path,
                    help="an .mp4 file, or a folder (images for image inputs in detect mode, else <name>.mp4); "
                         "replaced only by a complete render: Ctrl-C on a file or folder input discards the "
                         "partial render and leaves an existing output as it was")
    ap.add_argument("--fps", type=finite_float(0.0, 1000.0, open_low=True), default=10.0,
                    help="frame rate of videos made from images (> 0)")
    ap.add_argument("--max-frames", type=positive_int, default=None, help="stop after this many frames")
    det = ap.add_argument_group("detect")
    det.add_argument("--config-file", default=None,
                     help=f"Detectron2 config (a path, or relative to configs/); default: the model-zoo entry "
                          f"{DEFAULT_MODEL} (YOLOX-nano + the shipped EBM head; needs yolox_nano.onnx in "
                          "$EBM_WEIGHTS_DIR)")
    det.add_argument("--confidence-threshold", type=finite_float(0.0, 1.0), default=0.5,
                     help="minimum score drawn (0..1)")
    trk = ap.add_argument_group("track")
    trk.add_argument("--tracker-params", default="ebm", help="name in configs/tracking/ or a YAML path")
    trk.add_argument("--checkpoint", help="tracker network (net.pth from tools/train_tracker.py)")
    trk.add_argument("--init-box", metavar="X,Y,W,H",
                     help="start box in the first frame (pixels; negative x, y are fine: --init-box -30,-40,50,60); "
                          "without it and --ground-truth, a window opens to draw it on the first frame")
    trk.add_argument("--ground-truth", metavar="FILE", help="x,y,w,h per frame; first line starts the tracker")
    trk.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                     help="tracker parameter overrides, e.g. image_sample_size=128")
    trk.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    # Last, because it swallows the rest of the command line (Detectron2 convention).
    det.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                     help="Detectron2 config overrides, e.g. MODEL.WEIGHTS model_final.pth (the trained weights, "
                          "required with --config-file) or MODEL.EBM.HEAD.WEIGHTS head.pth")
    add_debug_argument(ap)
    return ap


def _join_box_values(argv: List[str]) -> List[str]:
    """``--init-box -30,-40,50,60`` -> ``--init-box=-30,-40,50,60``: argparse would take the value for an
    option because it starts with "-" and is not a single number."""
    out: List[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--opts":  # everything after it belongs to Detectron2
            return out + argv[i:]
        if argv[i] == "--init-box" and i + 1 < len(argv) and re.match(r"^-[\d.]", argv[i + 1]):
            out.append(f"--init-box={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def parse_args(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> argparse.Namespace:
    """Accept the mode as a leading word (``demo.py track …``) or as ``--mode``; ``args.prog`` is ``prog``."""
    argv = _join_box_values(list(sys.argv[1:] if argv is None else argv))
    ap = build_parser(prog)
    mode = argv.pop(0) if argv and argv[0] in MODES else None
    args = ap.parse_args(argv)
    args.prog = prog
    if mode and args.mode and mode != args.mode:
        ap.error(f"mode given twice: {mode!r} and --mode {args.mode!r}")
    args.mode = mode or args.mode or "detect"
    if not (args.video_input or args.input or args.webcam):
        ap.error(f"{args.mode} needs one of --video-input, --input or --webcam")
    return args


def main(argv: Optional[Sequence[str]] = None, prog: str = PROG) -> int:
    """Run the demo under the project's error convention (:func:`ebm_refine.utils.cli.run_cli`); ``prog``
    names the program in its usage, warning and error lines.

    Returns the exit status: 0, 2 with one line on stderr for bad input (usage errors too), 130 after Ctrl-C.
    """
    def run(argv: Optional[Sequence[str]]) -> int:
        args = parse_args(argv, prog)
        return run_detect(args) if args.mode == "detect" else run_track(args)

    return run_cli(run, argv, prog=prog)


def command(argv: Optional[Sequence[str]] = None) -> int:
    """The command line: :func:`main` named as it was started (``demo.py``, ``ebm-refine demo``)."""
    return main(argv, prog=os.path.basename(sys.argv[0]) or PROG)


if __name__ == "__main__":
    sys.exit(command())
