#!/usr/bin/env python
"""Run trackers over a tracking dataset and/or score their result files in one or more protocols.

Examples::

    # run the NCC baseline on two OTB sequences with 2 worker processes, then score in all protocols
    python tools/eval_tracking.py --dataset otb --root /data/OTB100 --sequences Crossing,DragonBaby \\
        --tracker ncc --workers 2

    # score existing pytracking-layout results (<results>/<tracker>/<params>/<seq>.txt) without running
    python tools/eval_tracking.py --dataset uav123 --root /data/UAV123 --mode score \\
        --tracker dimp/dimp50 --tracker ncc --protocol pytracking --protocol otb

    # score any folder of <seq>.txt files
    python tools/eval_tracking.py --dataset otb --root /data/OTB100 --mode score --result-dir some/folder

    # the EBM tracker with another network and candidate-box seed (tracker parameter overrides), or with
    # a parameter file of your own; results go to <results>/ebm_atom/ebm+checkpoint=...,seed=1/
    python tools/eval_tracking.py --dataset otb --root /data/OTB100 --tracker ebm_atom/ebm \
        --set checkpoint=out/net.pth seed=1
    python tools/eval_tracking.py --dataset otb --root /data/OTB100 --tracker ebm_atom/path/to/my.yaml

    # TrackingNet TEST: run, then pack the submission zip for the evaluation server
    python tools/eval_tracking.py --dataset trackingnet --root /data/TrackingNet --split TEST \\
        --tracker ncc --workers 8 --pack-trackingnet ncc_trackingnet.zip

See docs/tracking_evaluation.md for the protocols and the file layout. Bad input (a wrong root, sequence,
tracker, parameter set or result file) ends with one line naming the file or name and what to do, exit
status 2 (``--debug`` shows the traceback); docs/bad_input.md lists every case.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ebm_refine.tracking.datasets import dataset_names, load_dataset
from ebm_refine.tracking.evaluation import (PROTOCOLS, RunError, describe_trackers,
                                            evaluate_results, format_table, get_tracker_factory,
                                            pack_trackingnet, run_dataset, tracker_results_dir, write_report)
from ebm_refine.tracking.evaluation.registry import results_name, split_tracker_spec, with_overrides
from ebm_refine.tracking.evaluation.results import RESULT_FORMATS, result_path
from ebm_refine.utils import MissingFileError, UserError
from ebm_refine.utils.cli import add_debug_argument, log_to_stderr, run_cli
from ebm_refine.utils.cli_args import non_negative_int, output_file, output_folder, positive_int


def _sequence_list(arg: Optional[str]) -> Optional[List[str]]:
    if not arg:
        return None
    if arg.startswith("@"):
        if not os.path.isfile(arg[1:]):
            raise MissingFileError(f"{arg[1:]}: sequence list not found (--sequences @FILE); check the path")
        with open(arg[1:]) as fh:
            return [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")]
    return [s.strip() for s in arg.split(",") if s.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=dataset_names(), help="dataset layout")
    p.add_argument("--root", help="dataset root folder")
    p.add_argument("--split", help="trackingnet: TEST, TRAIN, TRAIN_k (comma list); lasot: train/test/all; "
                                   "got10k: train/val/test")
    p.add_argument("--anno", help="folder dataset: explicit annotation file")
    p.add_argument("--rotated-box-mode", choices=("minmax", "preserve_area"), default="minmax",
                   help="vot/folder: conversion of 8-value rotated boxes (default: minmax)")
    p.add_argument("--sequences", help="comma-separated subset, or @file with one name per line")
    p.add_argument("--tracker", action="append", default=[],
                   help="NAME[/PARAMS] (registry name or package.module:Class); repeatable. Default: ncc")
    p.add_argument("--params", default="default", help="parameter set for --tracker without /PARAMS")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="tracker parameter overrides for every --tracker, e.g. checkpoint=out/net.pth seed=1 "
                        "box_refinement.num_steps=5 (ebm_atom; YAML values); results go to <params>+<overrides>")
    p.add_argument("--result-dir", action="append", default=[],
                   help="score mode: a folder of <seq>.txt files to score as it is; repeatable")
    p.add_argument("--results", default="tracking_results", type=output_folder,
                   help="results root (default: ./tracking_results)")
    p.add_argument("--run-id", type=non_negative_int, metavar="N",
                   help="results go to (and are read from) <params>_<NNN>, pytracking's folder for run N")
    p.add_argument("--format", choices=RESULT_FORMATS, default="float", dest="result_format",
                   help="box files: float (x,y,w,h comma-separated, 4 decimals; default) or pytracking "
                        "(tab-separated integers, as pytracking writes them); both are read either way")
    p.add_argument("--mode", choices=("run", "score", "both"), default="both")
    p.add_argument("--protocol", action="append", choices=PROTOCOLS + ("all",), default=[],
                   help="scoring protocol, repeatable (default: all three)")
    p.add_argument("--workers", type=positive_int, default=1, help="parallel worker processes for running")
    p.add_argument("--overwrite", action="store_true", help="re-run sequences that already have results")
    p.add_argument("--on-missing", choices=("error", "skip", "zeros"), default="error",
                   help="scoring: a missing result file is an error (default), skipped, or all zeros")
    p.add_argument("--exclude-invalid-frames", action="store_true",
                   help="pytracking protocol: score only frames whose ground truth is a valid box "
                        "(pytracking's option of that name; default: every frame counts)")
    p.add_argument("--report-dir", type=output_folder, help="where tables/JSON/plots go (default: <results>/reports/<dataset>)")
    p.add_argument("--pack-trackingnet", metavar="ZIP", type=output_file, help="after running, pack TrackingNet results into ZIP")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-trackers", action="store_true", help="list registered trackers and exit")
    p.add_argument("--list-datasets", action="store_true", help="list dataset names and exit")
    add_debug_argument(p)
    return p


def _dataset_options(args) -> dict:
    opts = {}
    if args.dataset == "trackingnet" and args.split:
        opts["chunks"] = [c.strip() for c in args.split.split(",")]
    elif args.dataset in ("lasot", "got10k") and args.split:
        opts["split"] = args.split
    if args.dataset in ("vot", "folder"):
        opts["rotated_box_mode"] = args.rotated_box_mode
    if args.dataset == "folder" and args.anno:
        opts["anno_path"] = args.anno
    return opts


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_to_stderr()  # invalid ground-truth counts, truncated frames
    if args.list_trackers:
        for name, info in describe_trackers().items():
            print(f"{name:12s} params: {', '.join(info['params']):32s} {info['description']}")
        return 0
    if args.list_datasets:
        print("\n".join(dataset_names()))
        return 0
    if not args.dataset or not args.root:
        parser.error("--dataset and --root are required")
    if args.workers < 1:
        parser.error("--workers must be >= 1")

    sequences = load_dataset(args.dataset, args.root, sequences=_sequence_list(args.sequences),
                             **_dataset_options(args))
    print(f"{args.dataset}: {len(sequences)} sequence(s), {sum(len(s) for s in sequences)} frames")
    specs = args.tracker or ([] if args.result_dir else ["ncc"])
    trackers = [split_tracker_spec(t, args.params) for t in specs]

    # Named result folders: (display name, folder).
    folders = []
    for name, params in trackers:
        if args.mode == "score" and ":" not in name:
            # scoring existing results needs no registered tracker
            params = results_name(params, args.set)
            folder = tracker_results_dir(args.results, name, params, args.run_id)
            folders.append((os.path.relpath(folder, args.results), folder))
            continue
        factory = with_overrides(get_tracker_factory(name, params), args.set)
        out_dir = tracker_results_dir(args.results, factory.name, factory.params, args.run_id)
        folders.append((os.path.relpath(out_dir, args.results), out_dir))
        if args.mode in ("run", "both"):
            print(f"running {factory.name}/{factory.params} -> {out_dir}", flush=True)
            try:
                runs = run_dataset(sequences, factory, out_dir, num_workers=args.workers,
                                   overwrite=args.overwrite, progress=not args.no_progress,
                                   result_format=args.result_format)
            except UserError:
                raise  # every failure was a bad input: one line from run_cli
            except RunError as exc:  # a tracker crashed: its traceback is what the user needs
                print(str(exc), file=sys.stderr)
                return 1
            done = sum(r.status == "done" for r in runs)
            busy = [r.name for r in runs if r.status == "busy"]
            print(f"  {done} run, {sum(r.status == 'skipped' for r in runs)} already finished"
                  + (f", {len(busy)} being run by another process: {', '.join(busy)}" if busy else ""))
            truncated = sum(len(r.truncated_frames) for r in runs)
            if truncated:
                print(f"  {truncated} truncated frame(s) decoded partially (see the warning above)")
    if args.mode == "run" and args.result_dir:
        print("--result-dir is only used for scoring", file=sys.stderr)
    folders += [(os.path.normpath(d), d) for d in args.result_dir]

    if args.pack_trackingnet:
        if len(folders) != 1:
            parser.error("--pack-trackingnet needs exactly one tracker")
        members = pack_trackingnet(sequences, folders[0][1], args.pack_trackingnet)
        print(f"packed {len(members)} sequences into {args.pack_trackingnet}")

    if args.mode == "run":
        return 0
    scorable = [s for s in sequences if s.has_full_ground_truth]
    if len(scorable) < len(sequences):
        print(f"{len(sequences) - len(scorable)} sequence(s) have only the first-frame box and are not scored "
              f"locally (TrackingNet / GOT-10k test: use the evaluation server)")
    if not scorable:
        return 0
    if args.on_missing == "skip" and len(folders) > 1:
        # like pytracking's skip_missing_seq: compare every tracker on the same sequences
        common = [s for s in scorable if all(os.path.isfile(result_path(f, s.name)) for _, f in folders)]
        if len(common) < len(scorable):
            print(f"scoring the {len(common)} sequence(s) every tracker has results for "
                  f"({len(scorable) - len(common)} skipped)")
        scorable = common
        if not scorable:
            raise MissingFileError(f"no sequence has results for every tracker ({', '.join(f for _, f in folders)}); "
                                   "run the missing ones first (--mode run)")
    protocols = list(PROTOCOLS) if not args.protocol or "all" in args.protocol else list(dict.fromkeys(args.protocol))
    report_dir = args.report_dir or os.path.join(args.results, "reports", args.dataset)
    for protocol in protocols:
        results = [evaluate_results(scorable, folder, protocol, on_missing=args.on_missing, name=name,
                                    exclude_invalid_frames=args.exclude_invalid_frames)
                   for name, folder in folders]
        print()
        print(format_table(results, title=f"{args.dataset} ({len(scorable)} sequences)"))
        paths = write_report(results, report_dir, title=f"{args.dataset} ({len(scorable)} sequences)")
        print(f"report: {paths['table']}, {paths['json']}, plots in {report_dir}")
    return 0


def command(argv: Optional[List[str]] = None) -> int:
    """The command line (``ebm-refine eval-tracking``): :func:`main` under the one-line-error convention
    (:func:`ebm_refine.utils.cli.run_cli`); returns the exit status."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(command())
