"""Several runs of the synthetic detection benchmark, and their per-box significance tables.

The README's headline claim "refinement improves the boxes" is tested, not read off one run's AP: every run
(training seed ``SEED``) writes per-ground-truth-box errors ``1 - IoU`` of the unrefined, EBM-refined and
IoU-Net-refined boxes (:mod:`.box_change` defines the matching), and :func:`significance_tables` compares
every pair of methods over the R runs with :func:`ebm_refine.evaluation.compare_methods` (per run and pooled
median difference with its 95 % interval, Wilcoxon signed-rank p, Holm over the pairs).

Pooling: a ground-truth box matched in every run is one sample; its pooled error is the mean over the runs
(``compare_runs``' "mean over runs"). Boxes that some run did not detect (no detection with IoU >= 0.5) are
left out of the *pooled* test only, so that all methods and runs are compared on the same boxes; the per-run
rows use all boxes of that run. ``collect_runs`` reports how many were left out.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..evaluation import PerSampleErrors, check_distinct_runs, compare_methods, load_per_sample_errors, summary_rows
from ..utils.errors import UserError
from .box_change import PER_BOX_FILE

__all__ = ["stage_per_box_file", "merge_stage_errors", "collect_runs", "significance_tables", "run_seeds",
           "METHOD_ORDER"]

logger = logging.getLogger(__name__)
METHOD_ORDER = ("EBM", "IoU-Net", "unrefined")  # pairs: EBM vs IoU-Net, EBM vs unrefined, IoU-Net vs unrefined


def stage_per_box_file(cfg) -> str:
    """Where a benchmark stage's evaluator wrote its per-box errors (first test dataset)."""
    return os.path.join(cfg.OUTPUT_DIR, "inference", cfg.DATASETS.TEST[0], PER_BOX_FILE)


def merge_stage_errors(stage_files: Mapping[str, str], run_name: str) -> PerSampleErrors:
    """One run with methods ``unrefined`` and each stage's refined boxes (named by ``stage_files``' keys).

    Every stage refines the same frozen detector's boxes, so their unrefined errors agree box by box (the
    first stage's are kept); only the boxes every stage matched are kept.

    Raises:
        UserError: a stage's unrefined errors differ from the first's (stages of different detectors).
    """
    loaded = {name: load_per_sample_errors(path) for name, path in stage_files.items()}
    per_stage = {}
    for name, data in loaded.items():
        run = data.runs[0]
        per_stage[name] = {i: (u, r) for i, u, r in zip(run.ids, run.errors["unrefined"], run.errors["refined"])}
    first = next(iter(per_stage))
    common = sorted(set.intersection(*(set(d) for d in per_stage.values())))
    for name, d in per_stage.items():
        diff = max((abs(d[i][0] - per_stage[first][i][0]) for i in common), default=0.0)
        if diff > 1e-4:
            raise UserError(f"{stage_files[name]}: its unrefined boxes differ from {stage_files[first]}'s (by "
                            f"{diff:.3g} in 1 - IoU); the stages must refine the same detector's detections")
    errors = {"unrefined": [per_stage[first][i][0] for i in common]}
    for name, d in per_stage.items():
        errors[name] = [d[i][1] for i in common]
    out = PerSampleErrors(metric="1 - IoU", unit="box")
    out.add_run(run_name, errors, common)
    return out


def collect_runs(files: Sequence[str]) -> Tuple[PerSampleErrors, PerSampleErrors, Dict[str, int]]:
    """Merge one-run per-box files (``per_box_errors.json`` of each benchmark run) into R runs.

    Returns:
        (all boxes of every run, the boxes every run has (for the pooled test), counts: ``runs``,
        ``common`` boxes and ``dropped`` (run, box) pairs).
    """
    if not files:
        raise UserError("no per-box error files to collect; run the benchmark first")
    sourced = [(f, r) for f in files for r in load_per_sample_errors(f).runs]  # (file, run): errors name the file
    runs = [r for _, r in sourced]
    first: Dict[str, str] = {}
    for f, r in sourced:
        if r.name in first:
            raise UserError(f"{f}: run {r.name!r} is also in {first[r.name]}; each run needs its own SEED (the same "
                            "run given twice would be counted as two independent runs)")
        first[r.name] = f
    methods = [m for m in runs[0].errors if all(m in r.errors for r in runs)]
    if len(methods) < 2:
        # Name the file that lacks a method the others have (not simply the first file).
        every = set().union(*(r.errors for r in runs))
        f, r = next(((f, r) for f, r in sourced if set(r.errors) != every), sourced[0])
        raise UserError(f"{f}: run {r.name!r} has the methods {sorted(r.errors)}, the other runs "
                        f"{sorted(every)}; fewer than two methods are in every run; re-run that seed")
    full, common = PerSampleErrors("1 - IoU", "box"), PerSampleErrors("1 - IoU", "box")
    if any(r.ids is None for r in runs):
        raise UserError("every run needs sample ids (ground-truth box ids) to be paired across runs; "
                        "write the files with BoxChangeEvaluator(per_box_file=...)")
    shared = sorted(set.intersection(*(set(r.ids) for r in runs)))
    if not shared:
        raise UserError(f"no ground-truth box is matched in every run of {', '.join(files)}; "
                        "are they runs on the same dataset?")
    for r in runs:
        full.add_run(r.name, {m: r.errors[m] for m in methods}, r.ids)
        pos = {i: k for k, i in enumerate(r.ids)}
        idx = np.array([pos[i] for i in shared], dtype=np.int64)
        common.add_run(r.name, {m: r.errors[m][idx] for m in methods}, shared)
    check_distinct_runs(full, ", ".join(files))
    dropped = sum(len(r.ids) for r in runs) - len(runs) * len(shared)
    return full, common, {"runs": len(runs), "common": len(shared), "dropped": dropped}


def significance_tables(full: PerSampleErrors, common: PerSampleErrors, methods: Optional[Sequence[str]] = None,
                        **kwargs) -> Tuple[str, dict]:
    """Every pair of ``methods`` (default: :data:`METHOD_ORDER` present): per-run rows on each run's boxes,
    the pooled row on the boxes of every run; Holm over the pairs. Returns (markdown text, JSON dict)."""
    methods = [m for m in (methods or METHOD_ORDER) if m in full.methods] or full.methods
    per_run = compare_methods({m: full.method_runs(m) for m in methods}, run_names=[r.name for r in full.runs],
                              metric="1 - IoU", **kwargs)
    pooled = compare_methods({m: common.method_runs(m) for m in methods}, ids=common.ids(),
                             run_names=[r.name for r in common.runs], metric="1 - IoU", **kwargs)
    for c_run, c_pool in zip(per_run, pooled):
        # Per-run rows on all of a run's boxes; the pooled row (and Holm) on the boxes of every run.
        c_run.pooled, c_run.pooling, c_run.p_holm, c_run.notes = c_pool.pooled, c_pool.pooling, c_pool.p_holm, \
            c_pool.notes + [f"pooled over the {c_pool.pooled.n} boxes matched in every run"]
    return "\n\n".join(c.format_table() for c in per_run), summary_rows(per_run)


def run_seeds(output: os.PathLike, seeds: Sequence[int], *, quick: bool = False, iters: Optional[int] = None,
              baseline_iters: Optional[int] = None, opts: Sequence[str] = (), overwrite: bool = False) -> List[str]:
    """Run the synthetic benchmark once per seed (``SEED`` = s, into ``<output>/seed<s>``); runs that already
    finished are kept unless ``overwrite``. Returns the runs' per-box error files."""
    from .benchmark import run_synthetic_benchmark

    files = []
    for s in seeds:
        run_dir = Path(output) / f"seed{s}"
        f = run_dir / PER_BOX_FILE
        if overwrite or not (run_dir / "synthetic_benchmark.json").is_file() or not f.is_file():
            logger.info("synthetic benchmark, SEED %d -> %s", s, run_dir)
            run_synthetic_benchmark(run_dir, iters, baseline_iters, quick, [*opts, "SEED", str(s)])
        else:
            logger.info("SEED %d: kept the finished run in %s", s, run_dir)
        if not f.is_file():
            raise UserError(f"{f}: not written -- SEED {s}'s detector matched no ground-truth box (IoU >= 0.5) in "
                            "some stage; train longer (--iters)")
        files.append(str(f))
    return files
