#!/usr/bin/env python
"""K-fold cross-validation of the tracker on annotated training sequences.

Every sequence is tracked once with a network that was trained without it (nor any other part of its video),
so all of them validate a setting instead of a handful (ebm_refine/tracking/evaluation/crossval.py says why).
Four steps, each resumable; the work folder holds the plan, the networks and the results:

    W=cv_work; D=../shared/data/tracking_train
    # 1. folds: 4, balanced by frames; an existing validation split can be kept as fold 0 (--fixed), so the
    #    network trained without it (the shipped one) serves that fold
    python tools/cross_validate_tracker.py split --work $W --dataset otb --root $D --folds 4 \\
        --fixed Biker,Woman,S1301,wakeboard4,MotorRolling,group2_2
    # 2. one network per fold (the config's dataset source reading --root is restricted to the other folds)
    python tools/cross_validate_tracker.py train --work $W --config configs/tracking/train_ebm.yaml --fold 1
    # 3. track every fold with its own network; one results folder per candidate-box seed
    python tools/cross_validate_tracker.py track --work $W --tracker ebm_atom/ebm --seed 0 1 2 \\
        --net 0=checkpoints/tracking/ebm_mobilenet_real/net.pth
    python tools/cross_validate_tracker.py track --work $W --tracker ebm_atom/norefine --seed 0 --net 0=...
    # 4. mean +- std over the seeds, per fold and per sequence
    python tools/cross_validate_tracker.py report --work $W --tracker ebm_atom/ebm --tracker ebm_atom/norefine

Results: ``<work>/results/<tracker>/<params>[+<overrides>]/<network>_seed<S>/<seq>.txt`` (``seed<S>`` for a
tracker without a network; pytracking layout over all folds' sequences, so ``tools/tracker_significance.py`` and ``tools/eval_tracking.py --mode score
--result-dir`` read them as they are). Networks: ``<work>/networks/<name>/fold<K>/net.pth``.
Bad input ends with one line naming the file or option and what to do (``--debug``: the traceback).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

from ebm_refine.tracking.datasets import dataset_names, load_dataset  # noqa: E402
from ebm_refine.tracking.evaluation import PROTOCOLS, RunError, get_tracker_factory, run_dataset  # noqa: E402
from ebm_refine.tracking.evaluation.crossval import (fold_training_config, load_plan, make_folds,  # noqa: E402
                                                     make_plan, save_plan, summarize_runs, training_sequences)
from ebm_refine.tracking.evaluation.registry import (results_name, split_tracker_spec,  # noqa: E402
                                                     with_overrides)
from ebm_refine.utils import BadValueError, MissingFileError, UserError, atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, log_to_stderr, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import int_in_range, non_negative_int, output_file, output_folder, positive_int  # noqa: E402


def _names(arg: Optional[str]) -> Optional[List[str]]:
    return [s.strip() for s in arg.split(",") if s.strip()] if arg else None


def _plan_path(work: str) -> str:
    return os.path.join(work, "plan.json")


def _net_path(work: str, network: str, fold: int) -> str:
    return os.path.join(work, "networks", network, f"fold{fold}", "net.pth")


def _load(work: str):
    plan = load_plan(_plan_path(work))
    sequences = load_dataset(plan["dataset"], plan["root"], sequences=[n for f in plan["folds"] for n in f])
    return plan, sequences


def cmd_split(args) -> int:
    sequences = load_dataset(args.dataset, args.root, sequences=_names(args.sequences))
    frames = {s.name: len(s) for s in sequences}
    try:
        folds = make_folds(sorted(frames), args.folds, frames, seed=args.fold_seed, fixed=_names(args.fixed))
    except ValueError as exc:
        raise BadValueError(f"--folds/--fixed: {exc}") from None
    path = _plan_path(args.work)
    if os.path.isfile(path) and not args.overwrite:
        old = load_plan(path)
        if old["folds"] != folds:
            raise BadValueError(f"{path}: a different split exists (its networks and results belong to it); "
                                "use another --work folder or --overwrite")
    os.makedirs(args.work, exist_ok=True)
    save_plan(path, make_plan(args.dataset, args.root, folds, args.fold_seed, _names(args.fixed)))
    for i, fold in enumerate(folds):
        print(f"fold {i}: {len(fold)} sequences, {sum(frames[n] for n in fold)} frames: {', '.join(fold)}")
    print(f"wrote {path}")
    return 0


def cmd_train(args) -> int:
    from ebm_refine.tracking.train import check_train_config, load_train_config, train
    from ebm_refine.utils.config import apply_dotted_overrides

    plan, _ = _load(args.work)
    folds = plan["folds"]
    if not 0 <= args.fold < len(folds):
        raise BadValueError(f"--fold {args.fold}: the plan has folds 0..{len(folds) - 1}")
    cfg = apply_dotted_overrides(load_train_config(args.config), args.set)
    try:
        cfg = check_train_config(fold_training_config(cfg, plan["root"], training_sequences(folds, args.fold)))
    except UserError as exc:
        raise type(exc)(f"{args.config}: {exc}") from None
    out = os.path.dirname(_net_path(args.work, args.network, args.fold))
    print(f"fold {args.fold}: training on {len(training_sequences(folds, args.fold))} sequences -> {out}")
    result = train(cfg, out, device=args.device)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, (int, float, str))}))
    return 0


def _fold_nets(args, num_folds: int) -> Dict[int, str]:
    nets = {k: _net_path(args.work, args.network, k) for k in range(num_folds)}
    for item in args.net:
        key, sep, path = item.partition("=")
        if not sep or not key.isdigit() or not 0 <= int(key) < num_folds:
            raise BadValueError(f"--net {item!r}: expected FOLD=PATH with FOLD in 0..{num_folds - 1}")
        nets[int(key)] = path
    return nets


def cmd_track(args) -> int:
    plan, sequences = _load(args.work)
    folds = plan["folds"]
    name, params = split_tracker_spec(args.tracker)
    base = get_tracker_factory(name, params)
    folder_name = results_name(base.params, args.set)
    by_name = {s.name: s for s in sequences}
    todo = args.fold if args.fold else list(range(len(folds)))
    unknown = [k for k in todo if not 0 <= k < len(folds)]
    if unknown:
        raise BadValueError(f"--fold {unknown[0]}: the plan in {args.work} has folds 0..{len(folds) - 1}")
    nets = _fold_nets(args, len(folds))
    uses_network = base.name == "ebm_atom"
    if not uses_network and (len(args.seed) > 1 or args.net):
        raise BadValueError(f"--tracker {args.tracker}: takes no network or seed; give one --seed and no --net")
    if uses_network:
        missing = [k for k in todo if not os.path.isfile(nets[k])]
        if missing:
            raise MissingFileError(f"{', '.join(nets[k] for k in missing)}: fold network not found; run "
                                   f"'train --fold {missing[0]}' or give --net {missing[0]}=PATH")
    failed = 0
    for seed in args.seed:
        # One folder per run: the network set (when the tracker has one) and the candidate-box seed, so that
        # runs with networks of another training seed (--network) add to the same tracker's spread.
        run = f"{args.network}_seed{seed}" if uses_network else f"seed{seed}"
        out_dir = os.path.join(args.work, "results", base.name, folder_name, run)
        for k in todo:
            extra = [f"checkpoint={nets[k]}", f"seed={seed}"] if uses_network else []
            factory = with_overrides(base, list(args.set) + extra, params=folder_name)
            print(f"fold {k}, seed {seed}: {base.name}/{folder_name} -> {out_dir}")
            try:
                runs = run_dataset([by_name[n] for n in folds[k]], factory, out_dir, num_workers=args.workers,
                                   overwrite=args.overwrite, progress=not args.no_progress)
            except RunError as exc:  # a tracker crashed: its traceback is what the user needs
                print(str(exc), file=sys.stderr)
                failed += 1
                continue
            print(f"  {sum(r.status == 'done' for r in runs)} run, "
                  f"{sum(r.status == 'skipped' for r in runs)} already finished")
    return 1 if failed else 0


def _run_dirs(work: str, spec: str, networks: Optional[List[str]] = None) -> Tuple[str, List[str]]:
    """``(name/params, [run folders])`` of a tracker's results (only the runs of ``networks`` when given)."""
    name, params = split_tracker_spec(spec)
    try:  # a parameter file given by path has its results under the file's name
        params = get_tracker_factory(name, params).params
    except UserError:  # "<params>+<overrides>": a results-folder name, not a parameter set
        pass
    dirs = sorted(glob.glob(os.path.join(work, "results", name, params, "*seed*")))
    if networks:
        dirs = [d for d in dirs if os.path.basename(d).rsplit("_seed", 1)[0] in networks
                or os.path.basename(d).startswith("seed")]
    if not dirs:
        raise MissingFileError(f"{os.path.join(work, 'results', name, params)}: no results of --tracker {spec}; "
                               "run the 'track' step first (with --set, the folder is <params>+<overrides>)")
    return f"{name}/{params}", dirs


def cmd_report(args) -> int:
    plan, sequences = _load(args.work)
    folds = plan["folds"]
    rows = {}
    for spec in args.tracker:
        label, dirs = _run_dirs(args.work, spec, args.network)
        rows[label] = summarize_runs(sequences, dirs, args.protocol, folds)
    frames = sum(len(s) for s in sequences)
    lines = [f"{plan['dataset']} {plan['root']}: {len(sequences)} sequences ({frames} frames) in {len(folds)} "
             f"folds, {args.protocol} protocol; mean +- std over the runs (one per network set and "
             "candidate-box seed)", "",
             "| tracker | runs | AUC | precision | OP50 | OP75 | " + " | ".join(f"fold {i}" for i in range(len(folds)))
             + " |", "|---" * (5 + len(folds)) + "|---|"]
    for spec, r in rows.items():
        m, s = r["mean"], r["std"]
        cells = [f"{m[k]:.2f} ± {s[k]:.2f}" for k in ("auc", "precision", "op50", "op75")]
        lines.append(f"| {spec} | {len(r['runs'])} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{r['per_fold'][i]:.1f}" for i in range(len(folds))) + " |")
    lines += ["", "AUC per sequence (mean over the runs):", "",
              "| sequence | fold | " + " | ".join(rows) + " |", "|---|---|" + "---|" * len(rows)]
    fold_of = {n: i for i, f in enumerate(folds) for n in f}
    for n in sorted(fold_of, key=lambda n: (fold_of[n], n)):
        lines.append(f"| {n} | {fold_of[n]} | " + " | ".join(f"{r['per_sequence'][n]:.1f}" for r in rows.values())
                     + " |")
    text = "\n".join(lines)
    print(text)
    if args.json:
        atomic_write_text(args.json, json.dumps({"plan": plan, "protocol": args.protocol, "trackers": rows},
                                                indent=1))
        print(f"\nwrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--work", required=True, type=output_folder, help="work folder (plan.json, networks/, results/)")
    add_debug_argument(common)

    s = sub.add_parser("split", parents=[common], help="make the folds (plan.json)")
    s.add_argument("--dataset", required=True, choices=dataset_names())
    s.add_argument("--root", required=True, help="dataset root folder")
    s.add_argument("--sequences", help="comma-separated subset (default: every sequence)")
    s.add_argument("--folds", type=int_in_range(2), default=4, help="number of folds (default 4)")
    s.add_argument("--fold-seed", type=non_negative_int, help="deal the videos in a random order from this seed (another split "
                                                  "for repeated cross-validation); default: largest first, the most "
                                                  "even split")
    s.add_argument("--fixed", help="comma-separated sequences that form fold 0 as given")
    s.add_argument("--overwrite", action="store_true", help="replace a different existing plan")

    s = sub.add_parser("train", parents=[common], help="train one fold's network")
    s.add_argument("--config", required=True, help="training YAML (configs/tracking/train_*.yaml)")
    s.add_argument("--fold", type=non_negative_int, required=True)
    s.add_argument("--network", default="ebm", help="network name: networks/<name>/fold<K> (default ebm)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training config overrides")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"])

    s = sub.add_parser("track", parents=[common], help="run a tracker on every fold with that fold's network")
    s.add_argument("--tracker", required=True, help="NAME[/PARAMS], e.g. ebm_atom/ebm")
    s.add_argument("--seed", type=non_negative_int, nargs="+", default=[0], help="candidate-box seeds, one run each")
    s.add_argument("--fold", type=non_negative_int, nargs="*", help="only these folds (default: all)")
    s.add_argument("--network", default="ebm",
                   help="which trained networks: networks/<name>/fold<K> (default ebm); another training seed "
                        "of the same config is another name, and its runs join the same tracker's spread")
    s.add_argument("--net", action="append", default=[], metavar="FOLD=PATH",
                   help="use this network for a fold instead of the trained one (repeatable)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="tracker parameter overrides; results go to <params>+<overrides>")
    s.add_argument("--workers", type=positive_int, default=1, help="parallel worker processes")
    s.add_argument("--overwrite", action="store_true", help="re-run sequences that already have results")
    s.add_argument("--no-progress", action="store_true")

    s = sub.add_parser("report", parents=[common], help="scores with their spread, per fold and sequence")
    s.add_argument("--tracker", action="append", required=True,
                   help="NAME/PARAMS[+overrides] as in results/, repeatable")
    s.add_argument("--network", action="append",
                   help="only the runs with these network sets (repeatable; default: every run)")
    s.add_argument("--protocol", choices=PROTOCOLS, default="otb")
    s.add_argument("--json", type=output_file, help="also write the numbers here")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stderr()
    return {"split": cmd_split, "train": cmd_train, "track": cmd_track, "report": cmd_report}[args.step](args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
