#!/usr/bin/env python
"""DeepGUM on the 1-D toy problems: annotation outliers in the training targets, plain vs DeepGUM training.

For each outlier kind and share (0 %, 20 %, 40 % of the training targets replaced by random values over
the targets' range, or shifted by 25-50 % of that range, or rescaled 2-3x about their mean), trains the
EBM (ML-IS) and the Gaussian direct-regression baseline with the plain loss and with DeepGUM, and prints
KL(p_true || p_model) on the clean test grid plus the precision / recall of DeepGUM's outlier flags
(r < 0.5 vs the true flags), mean ± std over seeds. The seed varies everything (clean sample, which
targets are corrupted, initial weights, batch order); plain and DeepGUM runs of a seed are paired.

    python tools/toy_outlier_benchmark.py --json out/outliers.json --png out/outliers.png   # ~10 min, 1 core
    python tools/toy_outlier_benchmark.py --quick                                           # ~1 min
    python tools/toy_outlier_benchmark.py --problems problem1 --kinds random scale --seeds 5
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ebm_refine.toy import PROBLEMS, get_problem  # noqa: E402
from ebm_refine.toy.outliers import (  # noqa: E402
    MODELS,
    OUTLIER_KINDS,
    OutlierConfig,
    OutlierRun,
    quick_outlier_config,
    run_outlier_benchmark,
    with_train_overrides,
)
from ebm_refine.utils import atomic_write_bytes, atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import finite_float, output_file, positive_int  # noqa: E402

LABELS = {"ebm/plain": "EBM", "ebm/deepgum": "EBM + DeepGUM", "gaussian/plain": "Gaussian",
          "gaussian/deepgum": "Gaussian + DeepGUM"}


def _pm(entry: Optional[dict], fmt: str = ".3f") -> str:
    return "-" if entry is None else f"{entry['mean']:{fmt}} ± {entry['std']:{fmt}}"


def format_table(table: dict) -> str:
    """One block per problem: rows (kind, share, method), columns KL, precision, recall, flagged, rho."""
    lines = [f"KL(p_true || p_model) in nats on the clean grid, mean ± std over {len(table['seeds'])} seed(s); "
             "outlier detection r < 0.5 vs true flags"]
    for problem, settings in table["results"].items():
        lines.append(f"\n{problem}")
        lines.append(f"{'outliers':<12}{'method':<20}{'KL':>17}{'precision':>17}{'recall':>17}"
                     f"{'flagged':>17}{'rho':>17}")
        for setting, cell in settings.items():
            for key, entry in cell.items():
                lines.append(f"{setting:<12}{LABELS.get(key, key):<20}{_pm(entry['kl']):>17}"
                             f"{_pm(entry['precision']):>17}{_pm(entry['recall']):>17}"
                             f"{_pm(entry['flagged']):>17}{_pm(entry['rho']):>17}")
    return "\n".join(lines)


def save_figure(path: Path, table: dict, runs: List[OutlierRun]) -> None:
    """KL vs outlier share (one panel per problem and kind; plain vs DeepGUM for both models, error bars:
    std over seeds), and the kept DeepGUM run's responsibilities against the true flags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(p, k) for p, settings in table["results"].items()
              for k in dict.fromkeys(s.split("@")[0] for s in settings if not s.startswith("none"))]
    detail = [r for r in runs if r.detail is not None and r.detail["r"] is not None]
    cols = len(panels) + 2 * len(detail[:1])
    fig, axes = plt.subplots(1, cols, figsize=(3.3 * cols, 3.0), squeeze=False)
    styles = {"ebm/plain": ("C0", "--"), "ebm/deepgum": ("C0", "-"), "gaussian/plain": ("C1", "--"),
              "gaussian/deepgum": ("C1", "-")}
    for ax, (problem, kind) in zip(axes[0], panels):
        settings = table["results"][problem]
        keys = [s for s in settings if s.startswith(kind + "@") or s.startswith("none@")]
        shares = [float(s.split("@")[1]) for s in keys]
        order = np.argsort(shares)
        for method in next(iter(settings.values())):
            mean = np.array([settings[keys[i]][method]["kl"]["mean"] for i in order])
            std = np.array([settings[keys[i]][method]["kl"]["std"] for i in order])
            color, ls = styles.get(method, ("k", "-"))
            ax.errorbar(100 * np.array(shares)[order], mean, yerr=std, color=color, ls=ls, marker="o", ms=3,
                        capsize=2, label=LABELS.get(method, method))
        ax.set_yscale("log")
        ax.set_title(f"{problem}, {kind} outliers", fontsize=8)
        ax.set_xlabel("outlier share of training targets (%)", fontsize=8)
        ax.set_ylabel("KL to the true density (nats)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    if detail:
        run = detail[0]
        d = run.detail
        ax = axes[0][len(panels)]
        ax.scatter(d["x"], d["y"], c=d["r"], s=2, cmap="coolwarm_r", vmin=0, vmax=1)
        ax.set_title(f"{run.model} + DeepGUM, {run.kind} {100 * run.share:g} %: r (blue = inlier)", fontsize=8)
        ax.set_xlabel("x", fontsize=8)
        ax.set_ylabel("training target y", fontsize=8)
        ax.tick_params(labelsize=7)
        ax = axes[0][len(panels) + 1]
        bins = np.linspace(0, 1, 21)
        ax.hist(d["r"][~d["flags"]], bins=bins, alpha=0.6, label="true inliers", color="C2")
        ax.hist(d["r"][d["flags"]], bins=bins, alpha=0.6, label="true outliers", color="C3")
        ax.set_yscale("log")
        ax.set_title(f"r vs true flags (precision {run.precision:.2f}, recall {run.recall:.2f})", fontsize=8)
        ax.set_xlabel("inlier responsibility r", fontsize=8)
        ax.legend(fontsize=6)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=output_file, help="write the table (config, per-seed values, timings) here")
    ap.add_argument("--png", type=output_file, help="write the figure here (KL vs share; responsibilities vs flags)")
    ap.add_argument("--seeds", type=positive_int, default=3, help="number of seeds, 0..N-1 (default 3)")
    ap.add_argument("--iters", type=positive_int, default=None, help="training steps per model")
    ap.add_argument("--quick", action="store_true", help="reduced configuration (fewer samples and steps)")
    ap.add_argument("--problems", nargs="+", default=["problem2"], choices=list(PROBLEMS),
                    help="default problem2 (unimodal noise, DeepGUM's assumption); problem1 is multimodal")
    ap.add_argument("--kinds", nargs="+", default=["random", "shift"], choices=list(OUTLIER_KINDS))
    ap.add_argument("--shares", nargs="+", type=finite_float(0.0, 1.0, open_high=True), default=[0.0, 0.2, 0.4])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--raw-residuals", action="store_true",
                    help="DeepGUM on raw residuals (the paper's choice) instead of residuals divided by the "
                         "model's own spread at x (the default; the toy's noise is heteroscedastic)")
    ap.add_argument("--workers", type=positive_int, default=1, help="parallel processes, each single-threaded")
    add_debug_argument(ap)
    args = ap.parse_args(argv)
    config = with_train_overrides(quick_outlier_config() if args.quick else OutlierConfig(), iters=args.iters)
    if args.raw_residuals:
        config = replace(config, standardize=False)
    seeds = list(range(args.seeds))
    top = max(s for s in args.shares)
    detail = (get_problem(args.problems[0]).name, args.kinds[0], top, 0) if args.png and top > 0 else None
    print(f"toy outlier benchmark: {args.problems} x kinds {args.kinds} x shares {args.shares} x {args.models} "
          f"x plain/DeepGUM x {len(seeds)} seed(s), {config.train.iters} steps, "
          f"{'standardised' if config.standardize else 'raw'} residuals, {args.workers} worker(s)", flush=True)

    def progress(r: OutlierRun) -> None:
        extra = "" if r.recall is None else f"  recall {r.recall:.2f}"
        extra += "" if r.precision is None else f"  precision {r.precision:.2f}"
        print(f"  {r.problem} {r.kind:<7} {100 * r.share:>3.0f}% {r.model:<8} {'deepgum' if r.robust else 'plain':<8}"
              f" seed {r.seed}: KL {r.kl:.4f}{extra}  ({r.train_seconds:.1f} s)", flush=True)

    t0 = time.perf_counter()
    kwargs = dict(config=config, seeds=seeds, problems=args.problems, kinds=args.kinds, shares=args.shares,
                  models=args.models, detail=detail, progress=progress)
    if args.workers > 1:
        # spawn (not fork): forking a process whose torch thread pools are live can deadlock.
        with mp.get_context("spawn").Pool(args.workers, initializer=_init_worker, initargs=(1,)) as pool:
            table, runs = run_outlier_benchmark(**kwargs, map_fn=pool.imap)
    else:
        torch.set_num_threads(1)
        table, runs = run_outlier_benchmark(**kwargs)
    table["wall_seconds"] = time.perf_counter() - t0
    table["environment"] = {"torch": torch.__version__, "python": platform.python_version(),
                            "workers": args.workers, "cpu_count": os.cpu_count(), "quick": args.quick}
    print()
    print(format_table(table))
    print(f"wall time {table['wall_seconds']:.0f} s")
    if args.json:
        atomic_write_text(str(args.json), json.dumps(table, indent=2))
        print(f"wrote {args.json}")
    if args.png:
        save_figure(args.png, table, runs)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
