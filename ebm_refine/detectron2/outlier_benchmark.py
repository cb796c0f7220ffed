"""Synthetic-detection outlier experiment: does DeepGUM keep AP when training annotations are wrong?

For each seed, noise kind and outlier share (:mod:`.annotation_noise`), the synthetic benchmark's joint
detector + EBM training (:func:`~.benchmark.run_synthetic_benchmark`, IoU-Net stage skipped) runs twice on the
same noisy training set: with the plain loss and with DeepGUM (``MODEL.EBM.ROBUST`` with ``BOX_REG``). Both
are evaluated on the clean validation split (COCO AP / AP75 of unrefined and refined boxes). After training,
every training annotation gets a responsibility r (outlier when r < 0.5), compared with the true flags.
``outlier_detection`` uses, for both methods alike, EM refitted on the final model's residuals over the whole
training set (warm-started from the training's mixture for DeepGUM runs): for plain runs it is what DeepGUM
would say about that model (it did not influence its training). DeepGUM runs also report
``outlier_detection_training_state``: the E-step of the mixture the training ended with (saved in the
checkpoint), fitted on the residuals of the last ``PERIOD`` iterations (training-time augmentation, a model
that was still changing).

The seed varies the noise (which boxes, how altered) and Detectron2's ``SEED`` (initialisation, data order)
together; the 0 % runs are shared by all kinds. Results: ``outlier_benchmark.json`` and
``outlier_benchmark.png`` under the output folder.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as d2_utils
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances

from ..core.robust import fit_gum, gum_responsibilities
from ..utils.fileio import atomic_write_bytes, atomic_write_text
from .annotation_noise import register_noisy_dataset
from .benchmark import run_synthetic_benchmark, stage_cfg
from .checkpoint import EBMCheckpointer

__all__ = ["run_outlier_benchmark", "annotation_responsibilities", "outlier_detection_scores", "robust_opts",
           "summarize", "merge_results", "plot_outlier_benchmark"]

logger = logging.getLogger(__name__)
METHODS = ("plain", "deepgum")


def robust_opts(iters: int) -> List[str]:
    """DeepGUM settings scaled to a training of ``iters`` iterations: first EM fit after 30 % of training
    (the detector and energy must fit the data before residuals say anything), then every 10 %
    (500 iterations x 4 images: every 200 images, a third of the 600-image synthetic training set)."""
    return ["MODEL.EBM.ROBUST.ENABLED", "True", "MODEL.EBM.ROBUST.BOX_REG", "True",
            "MODEL.EBM.ROBUST.WARMUP", str(max(1, int(0.3 * iters))),
            "MODEL.EBM.ROBUST.PERIOD", str(max(1, int(0.1 * iters)))]


@torch.no_grad()
def annotation_responsibilities(cfg, weights: Path, records: List[dict], batch_size: int = 8) -> dict:
    """Residuals and responsibilities of every annotation of ``records`` under a trained model.

    Args:
        cfg: the config of the training (builds the model; test-time input size).
        weights: its ``model_final.pth`` (with ``ebm_robust`` when trained with DeepGUM).
        records: the training set's dataset dicts, in order.
    The residuals are of ``MODEL.EBM.ROBUST.RESIDUAL``'s kind (the annotation refined by the energy, or the
    detector's regression of every proposal matched to it).

    Returns:
        ``{"refit": {"r": (A,), "rho"}, "training": {"r": (A,), "rho"} or None}``, r in the order of the
        annotations of ``records``: EM refitted on these residuals, and the E-step of the training's mixture.
    """
    model = build_model(cfg)
    EBMCheckpointer(model).load(str(weights))  # all checkpointables: the EM state too
    model.eval()
    heads = model.roi_heads
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    residuals = []
    for start in range(0, len(records), batch_size):
        inputs, targets = [], []
        for r in records[start:start + batch_size]:
            image = d2_utils.read_image(r["file_name"], format=cfg.INPUT.FORMAT)
            tf = resize.get_transform(image)
            image = tf.apply_image(image)
            anns = r.get("annotations", [])
            boxes = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
            inst = Instances(image.shape[:2])
            inst.gt_boxes = Boxes(torch.as_tensor(tf.apply_box(boxes) if boxes else torch.zeros(0, 4),
                                                  dtype=torch.float32).reshape(-1, 4))
            inst.gt_classes = torch.as_tensor([a["category_id"] for a in anns], dtype=torch.long)
            inputs.append({"image": torch.as_tensor(image.transpose(2, 0, 1).copy())})
            targets.append(inst)
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        if cfg.MODEL.EBM.ROBUST.RESIDUAL == "detector":
            proposals, _ = model.proposal_generator(images, features, None)
            residuals += heads.detector_residuals_of(features, proposals, targets)[0]
        else:
            residuals += heads.robust_residuals(heads.energy_features(features), targets)
    e = torch.cat(residuals)
    trained = heads.robust.state if heads.robust is not None else None
    state, r = fit_gum(e, trained)
    return {"refit": {"r": r, "rho": state.rho},
            "training": None if trained is None else {"r": gum_responsibilities(e, trained), "rho": trained.rho}}


def outlier_detection_scores(r: torch.Tensor, is_outlier: torch.Tensor, threshold: float = 0.5) -> dict:
    """Precision / recall of "r < threshold" as a detector of the true outliers (None where undefined)."""
    flagged = r < threshold
    tp = int((flagged & is_outlier).sum())
    n_flag, n_out = int(flagged.sum()), int(is_outlier.sum())
    return {"precision": tp / n_flag if n_flag else None, "recall": tp / n_out if n_out else None,
            "flagged": n_flag, "outliers": n_out, "annotations": int(r.numel()),
            "mean_r_outliers": float(r[is_outlier].mean()) if n_out else None,
            "mean_r_inliers": float(r[~is_outlier].mean()) if n_out < r.numel() else None}


def _one_run(out: Path, train_name: str, method: str, seed: int, iters: int, quick: bool, opts: Sequence[str]) -> dict:
    extra = ["DATASETS.TRAIN", f"('{train_name}',)", "SEED", str(seed), *list(opts)]
    if method == "deepgum":
        extra += robust_opts(iters)
    t0 = time.perf_counter()
    result = run_synthetic_benchmark(out, iters=iters, baseline_iters=0, quick=quick, opts=extra)
    records = DatasetCatalog.get(train_name)
    flags = torch.tensor([bool(a["ebm_outlier"]) for rec in records for a in rec.get("annotations", [])])
    resp = annotation_responsibilities(stage_cfg(out / "ebm", extra), out / "ebm" / "model_final.pth", records)
    run = {"box_ap": {"unrefined": result["box_ap"]["unrefined"], "refined": result["box_ap"]["EBM (ML-IS) refined"]},
           "outlier_detection": {**outlier_detection_scores(resp["refit"]["r"], flags), "rho": resp["refit"]["rho"]},
           "seconds": round(time.perf_counter() - t0, 1)}
    if resp["training"] is not None:
        run["outlier_detection_training_state"] = {**outlier_detection_scores(resp["training"]["r"], flags),
                                                   "rho": resp["training"]["rho"]}
    return run


def run_outlier_benchmark(output, fractions: Sequence[float] = (0.0, 0.2, 0.4),
                          kinds: Sequence[str] = ("random", "shift_scale"), seeds: Sequence[int] = (0, 1, 2),
                          iters: Optional[int] = None, quick: bool = False, base_dataset: str = "ebm_synthetic_train",
                          opts: Sequence[str] = (), methods: Sequence[str] = METHODS) -> dict:
    """Run the grid (module docstring); writes ``outlier_benchmark.json`` (+ ``.png``) and returns the JSON.

    Args:
        output: folder; each run's Detectron2 files go to ``<kind>_<percent>/s<seed>/<method>/``.
        fractions, kinds, seeds: the grid (0 % is run once per seed, for every kind).
        iters: training iterations per run (default 500, 30 with ``quick``).
        base_dataset: the clean training set the noise is injected into.
        opts: extra config options for every run (e.g. a smaller input size for tests, or
            ``MODEL.EBM.ROBUST.RESIDUAL detector``; the residual kind applies to the post-hoc scoring of
            both methods' annotations too).
        methods: a subset of ("plain", "deepgum").
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {list(methods)}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    iters = iters or (30 if quick else 500)
    runs = []
    cells = [(k, f) for f in fractions for k in (kinds if f > 0 else ("none",))]
    for seed in seeds:
        for kind, fraction in cells:
            name = register_noisy_dataset(base_dataset, kind if fraction > 0 else kinds[0], fraction, seed,
                                          name=f"{base_dataset}_noisy_{kind}_{int(round(100 * fraction))}_s{seed}")
            for method in methods:
                run_dir = out / f"{kind}_{int(round(100 * fraction))}" / f"s{seed}" / method
                logger.info("outlier benchmark: %s %.0f %% seed %d %s", kind, 100 * fraction, seed, method)
                run = _one_run(run_dir, name, method, seed, iters, quick, opts)
                runs.append({"kind": kind, "fraction": fraction, "seed": seed, "method": method, **run})
                _write(out, runs, iters, fractions, kinds, seeds, opts)  # partial results survive an interruption
    result = _write(out, runs, iters, fractions, kinds, seeds, opts)
    plot_outlier_benchmark(result, out / "outlier_benchmark.png")
    return result


def _write(out: Path, runs: List[dict], iters: int, fractions, kinds, seeds, opts) -> dict:
    result = {"iterations": iters, "fractions": list(fractions), "kinds": list(kinds), "seeds": list(seeds),
              "opts": list(opts),
              "seed_varies": "annotation noise and Detectron2 SEED", "runs": runs, "summary": summarize(runs)}
    atomic_write_text(out / "outlier_benchmark.json", json.dumps(result, indent=2))
    return result


def _is_number(value, finite: bool = True) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (not finite or math.isfinite(value))


def _field(data, path: Sequence[str]):
    """``data[path[0]][path[1]]...``, or the string "missing" when a level is absent or not an object."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return "missing"
        data = data[key]
    return data


def check_result(result, source: str) -> dict:
    """Check that ``result`` (a loaded ``outlier_benchmark.json``) has the shape :func:`run_outlier_benchmark`
    writes: every field :func:`merge_results` and :func:`summarize` read, with finite numbers.

    Raises:
        ValueError naming ``source`` and the first bad field.
    """
    def bad(what: str) -> ValueError:
        return ValueError(f"{source}: not an outlier_benchmark.json written by this tool ({what}); pass the "
                          "outlier_benchmark.json of an earlier run, unedited")

    if not isinstance(result, dict):
        raise bad(f"it holds a {type(result).__name__}, not an object")
    iters = result.get("iterations")
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise bad(f"'iterations' is {iters!r}, not a non-negative integer")
    for key, ok in (("fractions", _is_number), ("kinds", lambda v: isinstance(v, str)),
                    ("seeds", lambda v: isinstance(v, int) and not isinstance(v, bool)),
                    ("opts", lambda v: isinstance(v, (str, int, float)))):
        values = result.get(key, [] if key == "opts" else None)
        if not isinstance(values, list) or not all(ok(v) for v in values):
            raise bad(f"'{key}' is {values!r}")
    runs = result.get("runs")
    if not isinstance(runs, list):
        raise bad(f"'runs' is {runs!r}, not a list")
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, dict):
            raise bad(f"{where} is not an object")
        for key, ok in (("kind", lambda v: isinstance(v, str)), ("method", lambda v: isinstance(v, str)),
                        ("fraction", lambda v: _is_number(v) and 0.0 <= v <= 1.0),
                        ("seed", lambda v: isinstance(v, int) and not isinstance(v, bool))):
            if key not in run or not ok(run[key]):
                raise bad(f"{where}.{key} is {run.get(key, 'missing')!r}")
        fields = [("box_ap", boxes, metric) for boxes in ("unrefined", "refined") for metric in ("AP", "AP75")]
        for field in fields + [("outlier_detection", "precision"), ("outlier_detection", "recall")]:
            value = _field(run, field)
            if value is not None and not _is_number(value):
                raise bad(f"{where}.{'.'.join(field)} is {value!r}, not a finite number or null")
    return result


def merge_results(results: Sequence[dict], sources: Optional[Sequence[str]] = None) -> dict:
    """Several ``outlier_benchmark.json`` results (e.g. one process per seed, or one per setting) as one.

    Runs of a result written with extra config options keep them in their method's name
    (``"deepgum (MODEL.EBM.ROBUST.RESIDUAL_START best_sample)"``), so that settings are not averaged together.

    Raises:
        ValueError (naming ``sources[i]``) when a result is malformed (:func:`check_result`), the results used
        different iteration counts, or two of them hold the same (kind, share, seed, method) run.
    """
    sources = list(sources) if sources is not None else [f"result {i}" for i in range(len(results))]
    if not results:
        raise ValueError("nothing to merge")
    for src, res in zip(sources, results):
        check_result(res, src)
    iters = {r["iterations"] for r in results}
    if len(iters) > 1:
        raise ValueError(f"{', '.join(sources)}: trained for different iteration counts {sorted(iters)}; "
                         "merge only results of the same length")
    runs, seen = [], {}
    for src, res in zip(sources, results):
        suffix = " ".join(str(o) for o in res.get("opts", []))
        for run in res["runs"]:
            run = {**run, "method": run["method"] + (f" ({suffix})" if suffix else "")}
            key = (run["kind"], run["fraction"], run["seed"], run["method"])
            if key in seen:
                raise ValueError(f"{src}: run {key} is also in {seen[key]}; merge results of different runs")
            seen[key] = src
            runs.append(run)
    kinds = [k for r in results for k in r["kinds"]]
    return {"iterations": iters.pop(), "fractions": sorted({f for r in results for f in r["fractions"]}),
            "kinds": list(dict.fromkeys(kinds)), "seeds": sorted({s for r in results for s in r["seeds"]}),
            "opts": [], "seed_varies": results[0].get("seed_varies"), "merged_from": sources, "runs": runs,
            "summary": summarize(runs)}


def _mean_std(values: List[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarize(runs: List[dict]) -> List[dict]:
    """Mean ± std over seeds of AP / AP75 (unrefined, refined) and outlier precision / recall per grid cell."""
    cells: Dict[tuple, List[dict]] = {}
    for r in runs:
        cells.setdefault((r["kind"], r["fraction"], r["method"]), []).append(r)
    rows = []
    for (kind, fraction, method), group in cells.items():
        row = {"kind": kind, "fraction": fraction, "method": method, "seeds": [g["seed"] for g in group]}
        for boxes in ("unrefined", "refined"):
            for metric in ("AP", "AP75"):
                row[f"{metric}_{boxes}"] = _mean_std([g["box_ap"][boxes][metric] for g in group])
        for metric in ("precision", "recall"):
            row[f"outlier_{metric}"] = _mean_std([g["outlier_detection"][metric] for g in group])
        rows.append(row)
    return rows


def format_summary(result: dict) -> str:
    """Markdown table of :func:`summarize`'s rows (mean ± std over seeds)."""
    def cell(d):
        return "–" if d["mean"] is None else f"{d['mean']:.1f} ± {d['std']:.1f}" if d["mean"] > 1.5 \
            else f"{d['mean']:.2f} ± {d['std']:.2f}"

    lines = ["| noise | share | method | AP refined | AP75 refined | AP unrefined | outlier precision | outlier recall |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["summary"]:
        lines.append(f"| {row['kind']} | {100 * row['fraction']:.0f} % | {row['method']} | {cell(row['AP_refined'])} | "
                     f"{cell(row['AP75_refined'])} | {cell(row['AP_unrefined'])} | {cell(row['outlier_precision'])} | "
                     f"{cell(row['outlier_recall'])} |")
    return "\n".join(lines)


def plot_outlier_benchmark(result: dict, path: Path) -> Path:
    """AP of refined boxes vs outlier share per noise kind (plain vs DeepGUM, ± std over seeds), and DeepGUM's
    outlier precision / recall; one PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    kinds = result["kinds"]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 3.6), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    styles = ("o--", "s-", "^-.", "d:")
    for ax, kind in zip(axes[0], kinds):
        for i, method in enumerate(methods):
            style = styles[i % len(styles)]
            pts = sorted((r["fraction"], r["AP_refined"]) for r in rows
                         if r["method"] == method and r["kind"] in (kind, "none") and r["AP_refined"]["mean"] is not None)
            if pts:
                ax.errorbar([100 * f for f, _ in pts], [d["mean"] for _, d in pts], yerr=[d["std"] for _, d in pts],
                            fmt=style, capsize=3, label=method.replace(" (", "\n("))  # merged options on a line
        ax.set(title=f"noise: {kind}", xlabel="outlier share [%]", ylabel="AP of refined boxes")
        ax.grid(True, linestyle=":")
        ax.legend(fontsize=7)
    ax = axes[0][-1]
    robust = [m for m in methods if m.startswith("deepgum")]
    for metric, style in (("outlier_precision", "o-"), ("outlier_recall", "s-")):
        for kind in kinds:
            for method in robust:
                pts = sorted((r["fraction"], r[metric]) for r in rows
                             if r["method"] == method and r["kind"] == kind and r[metric]["mean"] is not None)
                if pts:
                    label = f"{metric.split('_')[1]} ({kind}{'' if len(robust) == 1 else ', ' + method})"
                    label = label.replace(" (MODEL", "\n(MODEL")
                    ax.errorbar([100 * f for f, _ in pts], [d["mean"] for _, d in pts],
                                yerr=[d["std"] for _, d in pts], fmt=style, capsize=3, label=label)
    ax.set(title="DeepGUM: r < 0.5 vs true outliers", xlabel="outlier share [%]", ylim=(0, 1.05))
    ax.grid(True, linestyle=":")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
