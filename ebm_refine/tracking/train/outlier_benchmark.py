"""Tracker outlier experiment: does DeepGUM keep the box estimator's accuracy when training boxes are wrong?

For each seed, noise kind and outlier share, the box estimator is trained from one training config with
``data.annotation_noise`` (:class:`ebm_refine.data.annotation_noise.AnnotationNoise`: a share of the frames'
boxes shifted, rescaled or replaced, the same wrong box whenever the frame is drawn) twice: with the plain loss
and with DeepGUM (``robust.enabled``). Each network then drives the tracker (``ebm_atom`` with a given
parameter set, the run's seed as candidate-box seed) on clean annotated sequences (the validation sequences:
never trained on), scored with the OTB protocol. DeepGUM runs also report what the mixture made of the altered
boxes while training: mean r of altered and of correct test boxes and the precision / recall of r < 0.5, over
the log lines of the last 20 % of training (``log.jsonl``, see :func:`.robust.outlier_summary`). Every noisy run,
plain ones included, also gets :func:`final_model_outlier_detection`: EM on its final network's residuals of
held-out draws of the noisy training pairs, for both residual starts (``robust.residual_start``).

The seed varies the noise (which frames, how altered), the training (initialisation, pairs) and the
tracker's candidate boxes together. Runs live in ``<output>/<kind>_<percent>_<method>_s<seed>/`` (a
finished training or tracking run is reused, an interrupted one resumed); results in
``<output>/outlier_tracker_benchmark.json`` and ``.png``, rewritten after every run.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
from typing import Any, Callable, Dict, List, Optional, Sequence as _Seq

from ...utils.fileio import atomic_write_text

__all__ = ["METHODS", "run_name", "run_config", "training_outlier_scores", "final_model_outlier_detection",
           "summarize", "format_summary",
           "run_tracker_outlier_benchmark", "plot_tracker_outlier_benchmark"]

METHODS = ("plain", "deepgum")
_SCORES = ("auc", "precision", "op50", "op75")


def run_name(kind: str, fraction: float, method: str, seed: int) -> str:
    """``<kind>_<percent>_<method>_s<seed>``, e.g. ``shift_scale_40_deepgum_s1`` (``clean_0_...`` at 0 %)."""
    pct = int(round(100 * fraction))
    return f"{'clean' if pct == 0 else kind}_{pct}_{method}_s{seed}"


def run_config(base: Dict[str, Any], kind: str, fraction: float, method: str, seed: int,
               robust: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The training config of one run: ``base`` with the seed, the noise and DeepGUM on or off."""
    if method not in METHODS:
        raise ValueError(f"method {method!r} unknown; use one of {', '.join(METHODS)}")
    cfg = copy.deepcopy(base)
    cfg.setdefault("train", {})["seed"] = int(seed)
    cfg.setdefault("data", {})["annotation_noise"] = {"fraction": float(fraction), "kind": kind, "seed": int(seed)}
    cfg["robust"] = dict(cfg.get("robust") or {}, **(robust or {}), enabled=method == "deepgum")
    return cfg


def training_outlier_scores(log_file: str, last: float = 0.2) -> Dict[str, Optional[float]]:
    """Mean of the outlier fields of ``log.jsonl`` over its records in the last ``last`` share of training
    (None where no record has the field: plain runs, or no fit yet)."""
    if not os.path.isfile(log_file):
        return {}
    with open(log_file, "r", encoding="utf-8") as fh:
        recs = [json.loads(line) for line in fh if line.strip()]
    if not recs:
        return {}
    end = recs[-1]["iteration"]
    tail = [r for r in recs if r["iteration"] > (1 - last) * end]
    out: Dict[str, Optional[float]] = {}
    for key in ("mean_r_outliers", "mean_r_clean", "outlier_precision", "outlier_recall", "rho"):
        vals = [r[key] for r in tail if r.get(key) is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    return out


def final_model_outlier_detection(net_path: str, cfg: Dict[str, Any], num_pairs: int = 400,
                                  robust: Optional[Dict[str, Any]] = None, batch_size: int = 8
                                  ) -> Dict[str, Dict[str, float]]:
    """EM on the trained network's residuals of ``num_pairs`` noisy training pairs, per residual start.

    The pairs are drawn as the training drew them (same sources, noise and processing; indices from 10^8 on,
    after any training stream), the residuals computed by :func:`~.loss.pair_residuals` from the
    annotation and from the best proposal sample, EM fitted from a cold start (:func:`ebm_refine.core.robust.fit_gum`),
    and r < 0.5 compared with the true flags of the test boxes. For a plain run this is what DeepGUM would say
    about that network (it did not influence its training); it is the same measurement for both methods.

    Returns:
        ``{start: {"rho", "mean_r_outliers", "mean_r_clean", "outlier_precision", "outlier_recall"}}`` for
        ``start`` in ``annotation`` and ``best_sample``.
    """
    import torch

    from ...core.robust import fit_gum
    from ...data.annotation_noise import AnnotationNoise
    from ..models import load_net
    from .config import build_sources
    from .data import PairDataset
    from .loss import pair_losses, pair_residuals
    from .robust import DEFAULT_ROBUST, outlier_summary

    rcfg = dict(DEFAULT_ROBUST, **(robust or {}))
    net = load_net(net_path).eval()
    data = cfg.get("data", {})
    dataset = PairDataset(build_sources(data), data.get("processing"), seed=int(cfg["train"]["seed"]),
                          annotation_noise=AnnotationNoise.from_config(data.get("annotation_noise")))
    res: Dict[str, List[torch.Tensor]] = {"annotation": [], "best_sample": []}
    flags: List[torch.Tensor] = []
    gen = torch.Generator().manual_seed(12345)
    for start in range(0, num_pairs, batch_size):
        items = [dataset[10 ** 8 + i] for i in range(start, min(start + batch_size, num_pairs))]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        ref_feats, test_feats = net.extract(batch["ref_image"].float()), net.extract(batch["test_image"].float())
        _, weight, features, best = pair_losses(net.estimator, ref_feats, batch["ref_box"], test_feats,
                                                batch["test_box"], net.config["loss"], gen, return_best=True)
        for name, init in (("annotation", None), ("best_sample", best)):
            res[name].append(pair_residuals(net.estimator, features, batch["test_box"], weight, rcfg, start=init))
        flags.append(batch["test_outlier"])
    flag = torch.cat(flags).bool()
    out: Dict[str, Dict[str, float]] = {}
    for name, parts in res.items():
        e = torch.cat(parts)
        finite = torch.isfinite(e).all(dim=1)
        state, r = fit_gum(e)
        out[name] = {"rho": state.rho, **outlier_summary([(r[finite].float(), flag[finite])])}
    return out


def summarize(runs: _Seq[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean and population std over seeds of every score, per (kind, fraction, method)."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["kind"], r["fraction"], r["method"]), []).append(r)
    out = []
    for (kind, fraction, method), rs in sorted(groups.items()):
        row: Dict[str, Any] = {"kind": kind, "fraction": fraction, "method": method,
                               "seeds": [r["seed"] for r in rs]}
        for key in _SCORES + ("mean_r_outliers", "mean_r_clean", "outlier_precision", "outlier_recall"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                row[key] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals), "n": len(vals)}
        for start in ("annotation", "best_sample"):
            for key in ("outlier_precision", "outlier_recall", "mean_r_outliers", "mean_r_clean"):
                vals = [r["final_model"][start][key] for r in rs
                        if r.get("final_model") and r["final_model"][start].get(key) is not None]
                if vals:
                    row[f"final_{start}_{key}"] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals),
                                                   "n": len(vals)}
        row["per_sequence_auc"] = {
            name: statistics.fmean(r["per_sequence_auc"][name] for r in rs) for name in rs[0]["per_sequence_auc"]}
        out.append(row)
    return out


def format_summary(summary: _Seq[Dict[str, Any]]) -> str:
    """A Markdown table of :func:`summarize`'s rows."""
    def cell(row, key):
        v = row.get(key)
        return f"{v['mean']:.2f} ± {v['std']:.2f}" if v else "-"

    lines = ["| noise | share | method | AUC | precision | OP50 | OP75 | mean r altered / correct | "
             "outlier precision / recall |", "|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        r = row.get("mean_r_outliers"), row.get("mean_r_clean")
        pr = row.get("outlier_precision"), row.get("outlier_recall")
        rr = f"{r[0]['mean']:.2f} / {r[1]['mean']:.2f}" if r[0] and r[1] else "-"
        ppr = f"{pr[0]['mean']:.2f} / {pr[1]['mean']:.2f}" if pr[0] and pr[1] else "-"
        lines.append(f"| {row['kind'] if row['fraction'] else 'none'} | {100 * row['fraction']:.0f} % | "
                     f"{row['method']} | {cell(row, 'auc')} | {cell(row, 'precision')} | {cell(row, 'op50')} | "
                     f"{cell(row, 'op75')} | {rr} | {ppr} |")
    return "\n".join(lines)


def plot_tracker_outlier_benchmark(summary: _Seq[Dict[str, Any]], path: str) -> Optional[str]:
    """AUC (mean ± std over seeds) against the outlier share, one line per (kind, method); None without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    kinds = sorted({r["kind"] for r in summary if r["fraction"] > 0}) or ["none"]
    for kind in kinds:
        for method in METHODS:
            rows = sorted((r for r in summary if r["method"] == method and "auc" in r
                           and (r["fraction"] == 0 or r["kind"] == kind)), key=lambda r: r["fraction"])
            if rows:
                ax.errorbar([100 * r["fraction"] for r in rows], [r["auc"]["mean"] for r in rows],
                            yerr=[r["auc"]["std"] for r in rows], marker="o", capsize=3,
                            linestyle="-" if method == "deepgum" else "--", label=f"{method}, {kind}")
    ax.set_xlabel("altered training boxes (%)")
    ax.set_ylabel("tracking AUC (%), clean sequences")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_tracker_outlier_benchmark(output: str, base_config: Dict[str, Any], sequences: _Seq[Any], *,
                                  fractions: _Seq[float], kinds: _Seq[str], methods: _Seq[str] = METHODS,
                                  seeds: _Seq[int] = (0, 1, 2), robust: Optional[Dict[str, Any]] = None,
                                  params: str = "ebm_paper", tracker_overrides: Optional[Dict[str, Any]] = None,
                                  tag: str = "", diagnostic_pairs: int = 200,
                                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train and evaluate every run of the grid (module docstring); returns and writes the results.

    Args:
        output: folder for the runs and results.
        base_config: a checked tracker training config (``configs/tracking/train_ebm.yaml``).
        sequences: clean evaluation sequences (:class:`~ebm_refine.tracking.datasets.Sequence`).
        fractions, kinds, methods, seeds: the grid; a 0 share is run once per method and seed.
        robust: DeepGUM settings for the ``deepgum`` runs (``robust`` section keys).
        params: ``ebm_atom`` parameter set that evaluates each network.
        tracker_overrides: further nested tracker-parameter overrides.
        tag: suffix of the results files (``outlier_tracker_benchmark<tag>.json``), for processes that share
            ``output`` with different grids.
        diagnostic_pairs: noisy training pairs of :func:`final_model_outlier_detection` per noisy run (0: none).
    Returns:
        ``{"runs": [...], "summary": summarize(runs), "sequences": [...], ...}``.
    """
    from ..evaluation import evaluate_results, get_tracker_factory, run_dataset
    from .trainer import train

    os.makedirs(output, exist_ok=True)
    grid = [(kind if f > 0 else "none", f, m, s) for s in seeds for f in fractions
            for kind in (kinds if f > 0 else ["none"]) for m in methods]
    runs: List[Dict[str, Any]] = []
    result: Dict[str, Any] = {}
    for kind, fraction, method, seed in grid:
        name = run_name(kind, fraction, method, seed)
        run_dir = os.path.join(output, name)
        log(f"[outliers] {name}: training")
        cfg = run_config(base_config, kinds[0] if kind == "none" else kind, fraction, method, seed, robust)
        trained = train(cfg, run_dir, log=log)
        log(f"[outliers] {name}: tracking {len(sequences)} sequences")
        overrides = dict(copy.deepcopy(tracker_overrides or {}), checkpoint=trained["net_path"], seed=int(seed))
        factory = get_tracker_factory("ebm_atom", params, overrides=overrides)
        results_dir = os.path.join(run_dir, "tracking", params)
        run_dataset(sequences, factory, results_dir, num_workers=1, progress=False)
        scores = evaluate_results(sequences, results_dir, "otb")
        run = {"name": name, "kind": kind, "fraction": fraction, "method": method, "seed": seed,
               "train_seconds": trained["seconds"], **{k: scores[k] for k in _SCORES},
               "per_sequence_auc": {n: s["auc"] for n, s in scores["per_sequence"].items()},
               **training_outlier_scores(os.path.join(run_dir, "log.jsonl"))}
        if fraction > 0 and diagnostic_pairs > 0:
            run["final_model"] = final_model_outlier_detection(trained["net_path"], cfg, diagnostic_pairs, robust)
        runs.append(run)
        log(f"[outliers] {name}: AUC {run['auc']:.2f}")
        result = {"protocol": "otb", "params": params, "tracker_overrides": tracker_overrides or {},
                  "robust": robust or {}, "sequences": [s.name for s in sequences], "runs": runs,
                  "summary": summarize(runs)}
        stem = os.path.join(output, f"outlier_tracker_benchmark{tag}")
        atomic_write_text(stem + ".json", json.dumps(result, indent=1))
        plot_tracker_outlier_benchmark(result["summary"], stem + ".png")
    return result
