#!/usr/bin/env python
"""The paper's 1-D regression benchmark: EBM (ML-IS, NCE+) vs a Gaussian direct-regression baseline.

Trains every method on both toy problems for several seeds and prints KL(p_true || p_model)
(mean ± sample std over seeds; lower is better). The default run takes a few minutes on 2 CPU cores.

    python tools/toy_benchmark.py                         # full default run, 5 seeds
    python tools/toy_benchmark.py --quick                 # reduced configuration, ~1 min
    python tools/toy_benchmark.py --json out/toy.json --png out/toy.png --seeds 3 --iters 2000
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
from pathlib import Path
from typing import List, Sequence

from ebm_refine.utils.cli import exit_on_interrupt_while_starting  # noqa: E402
exit_on_interrupt_while_starting()  # Ctrl-C while the imports below load: one line, exit 130

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ebm_refine.toy import (  # noqa: E402
    METHODS,
    PROBLEMS,
    BenchmarkConfig,
    evaluation_grid,
    get_problem,
    quick_config,
    run_benchmark,
    with_overrides,
)
from ebm_refine.toy.benchmark import RunResult  # noqa: E402
from ebm_refine.utils import atomic_write_bytes, atomic_write_text  # noqa: E402
from ebm_refine.utils.cli import add_debug_argument, run_cli  # noqa: E402
from ebm_refine.utils.cli_args import output_file, positive_int  # noqa: E402

METHOD_LABELS = {"ml_is": "EBM ML-IS", "nce_plus": "EBM NCE+", "gaussian": "Gaussian"}


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def format_table(table: dict) -> str:
    """Methods as rows, problems as columns: 'mean ± std' of the KL in nats."""
    results = table["results"]
    problems = list(results)
    methods = list(next(iter(results.values())))
    lines = [
        f"KL(p_true || p_model) in nats, mean ± std over {len(table['seeds'])} seed(s) (lower is better)",
        f"{'method':<12}" + "".join(f"{p:>22}" for p in problems),
    ]
    for m in methods:
        cells = "".join(f"{results[p][m]['mean']:>13.4f} ± {results[p][m]['std']:<6.4f}" for p in problems)
        lines.append(f"{METHOD_LABELS.get(m, m):<12}{cells}")
    if "gaussian" in methods:
        for m in methods:
            if m == "gaussian":
                continue
            ratios = "  ".join(
                f"{p}: {results[p]['gaussian']['mean'] / max(results[p][m]['mean'], 1e-12):.1f}x" for p in problems
            )
            lines.append(f"Gaussian KL / {METHOD_LABELS.get(m, m)} KL: {ratios}")
    return "\n".join(lines)


def save_figure(path: Path, runs: List[RunResult], config: BenchmarkConfig, problems: Sequence[str],
                methods: Sequence[str], seed: int) -> None:
    """One row per problem: the true density and each method's learned density p(y | x) as images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gx, gy, _ = evaluation_grid(config)
    extent = (gx[0].item(), gx[-1].item(), gy[0].item(), gy[-1].item())
    cols = 1 + len(methods)
    fig, axes = plt.subplots(len(problems), cols, figsize=(3.2 * cols, 3.0 * len(problems)), squeeze=False)
    for i, pname in enumerate(problems):
        prob = get_problem(pname)
        true = torch.exp(prob.log_density(gx[:, None], gy[None, :])).numpy()
        # Narrow modes reach densities > 50; clip the colour scale so the broad parts stay visible.
        vmax = float(np.quantile(true[true > 0], 0.95))
        panels = [("true p(y|x)", true)]
        for m in methods:
            run = next((r for r in runs if r.problem == prob.name and r.method == m and r.seed == seed), None)
            if run is not None and run.log_density is not None:
                panels.append((f"{METHOD_LABELS.get(m, m)} (KL {run.kl:.3f})", np.exp(run.log_density)))
        for j, ax in enumerate(axes[i]):
            if j >= len(panels):  # a method without a kept density (should not happen)
                ax.axis("off")
                continue
            title, dens = panels[j]
            ax.imshow(dens.T, origin="lower", extent=extent, aspect="auto", vmin=0.0, vmax=vmax, cmap="viridis")
            ax.set_title(f"{prob.name}: {title}", fontsize=8)
            ax.set_xlabel("x", fontsize=8)
            ax.set_ylabel("y", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=output_file, help="write the table (and config, per-seed values, timings) here")
    ap.add_argument("--png", type=output_file, help="write a figure of true vs learned densities here")
    ap.add_argument("--seeds", type=positive_int, default=None, help="number of seeds, 0..N-1 (default 5; 2 with --quick)")
    ap.add_argument("--iters", type=positive_int, default=None, help="training steps per model")
    ap.add_argument("--num-samples", type=positive_int, default=None, help="M proposal samples per target")
    ap.add_argument("--quick", action="store_true", help="reduced configuration (fewer steps and samples)")
    ap.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                    help="parallel processes (each single-threaded); default min(2, #cpus)")
    add_debug_argument(ap)
    args = ap.parse_args(argv)

    base = quick_config() if args.quick else BenchmarkConfig()
    config = with_overrides(base, iters=args.iters, num_samples=args.num_samples)
    n_seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    seeds = list(range(n_seeds))
    plot_seed = seeds[0] if args.png else None
    print(f"toy benchmark: {len(args.problems)} problem(s) x {len(args.methods)} method(s) x {n_seeds} seed(s), "
          f"{config.iters} steps, M={config.num_samples}, {args.workers} worker(s)", flush=True)

    def progress(r: RunResult) -> None:
        print(f"  {r.problem:<9} {r.method:<9} seed {r.seed}: KL {r.kl:.4f}  ({r.train_seconds:.1f} s)", flush=True)

    t0 = time.perf_counter()
    if args.workers > 1:
        # spawn (not fork): forking a process whose torch thread pools are live can deadlock.
        with mp.get_context("spawn").Pool(args.workers, initializer=_init_worker, initargs=(1,)) as pool:
            table, runs = run_benchmark(config, seeds, args.problems, args.methods, plot_seed, progress,
                                        map_fn=pool.imap)
    else:
        torch.set_num_threads(1)
        table, runs = run_benchmark(config, seeds, args.problems, args.methods, plot_seed, progress)
    table["wall_seconds"] = time.perf_counter() - t0
    table["environment"] = {
        "torch": torch.__version__, "python": platform.python_version(), "workers": args.workers,
        "threads_per_worker": 1, "cpu_count": os.cpu_count(), "quick": args.quick,
    }
    print()
    print(format_table(table))
    print(f"wall time {table['wall_seconds']:.0f} s")
    if args.json:
        atomic_write_text(args.json, json.dumps(table, indent=2))
        print(f"wrote {args.json}")
    if args.png:
        save_figure(args.png, runs, config, args.problems, args.methods, seeds[0])
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
