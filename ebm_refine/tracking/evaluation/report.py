"""Reports: a table per protocol (text and JSON) and success / precision plots comparing trackers.

Input is a list of dicts returned by :func:`~ebm_refine.tracking.evaluation.protocols.evaluate_results`,
all computed with the same protocol.
"""
from __future__ import annotations

import io
import json
import os
from typing import Any, Dict, Sequence as _Seq

import numpy as np

from ...utils.fileio import atomic_write_bytes, atomic_write_text

_COLUMNS = (("auc", "AUC"), ("precision", "Prec"), ("norm_precision", "NormPrec"), ("op50", "OP50"),
            ("op75", "OP75"), ("coverage", "Coverage"), ("fps", "FPS"))


def _check_same_protocol(results: _Seq[Dict[str, Any]]) -> str:
    protocols = {r["protocol"] for r in results}
    if len(protocols) != 1:
        raise ValueError(f"a report compares one protocol at a time, got {sorted(protocols)}")
    return protocols.pop()


def format_table(results: _Seq[Dict[str, Any]], title: str = "") -> str:
    """Fixed-width text table, one row per tracker; scores in percent with 2 decimals, FPS with 1."""
    protocol = _check_same_protocol(results)
    cols = [(k, h) for k, h in _COLUMNS if k != "coverage" or protocol == "trackingnet"]
    name_w = max([len("Tracker")] + [len(r["name"]) for r in results]) + 2
    head = f"{'Tracker':<{name_w}}" + "".join(f"{h:>10}" for _, h in cols)
    lines = []
    if title:
        lines.append(title)
    n_seq = sorted({len(r["sequences"]) for r in results})
    lines.append(f"protocol: {protocol}   sequences: {', '.join(map(str, n_seq))}")
    lines += [head, "-" * len(head)]
    for r in results:
        cells = []
        for key, _ in cols:
            v = r.get(key)
            cells.append(f"{'-':>10}" if v is None else (f"{v:>10.1f}" if key == "fps" else f"{v:>10.2f}"))
        lines.append(f"{r['name']:<{name_w}}" + "".join(cells))
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def results_to_json(results: _Seq[Dict[str, Any]]) -> str:
    """JSON text of the evaluation dicts (curves as lists)."""
    return json.dumps({"protocol": _check_same_protocol(results), "trackers": _jsonable(list(results))}, indent=2)


_PLOTS = {
    "success": ("success", "Overlap threshold", "Success rate [%]", "auc", "Success plot"),
    "precision": ("precision", "Location error threshold [pixels]", "Precision [%]", "precision",
                  "Precision plot"),
    "norm_precision": ("norm_precision", "Normalised location error threshold", "Precision [%]",
                       "norm_precision", "Normalised precision plot"),
}


def plot_curves(results: _Seq[Dict[str, Any]], path: str, kind: str = "success") -> str:
    """Save one PNG comparing the trackers' ``kind`` curves (``success``, ``precision`` or
    ``norm_precision``); legend entries carry the protocol's score, best first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocol = _check_same_protocol(results)
    curve_key, xlabel, ylabel, score_key, title = _PLOTS[kind]
    order = sorted(range(len(results)), key=lambda i: -results[i][score_key])
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i in order:
        r = results[i]
        x = np.asarray(r["thresholds"][curve_key], float)
        ax.plot(x, 100.0 * np.asarray(r["curves"][curve_key]), linewidth=2,
                label=f"{r['name']} [{r[score_key]:.1f}]")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title} ({protocol})", ylim=(0, 100),
           xlim=(float(x[0]), float(x[-1])))
    ax.grid(True, linestyle=":")
    ax.legend(loc="lower left" if kind == "success" else "lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report(results: _Seq[Dict[str, Any]], out_dir: str, title: str = "") -> Dict[str, str]:
    """Write ``<protocol>_table.txt``, ``<protocol>_results.json`` and the three plots into ``out_dir``.

    Returns:
        kind -> path (``table``, ``json``, ``success_plot``, ``precision_plot``, ``norm_precision_plot``).
    """
    protocol = _check_same_protocol(results)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"table": os.path.join(out_dir, f"{protocol}_table.txt"),
             "json": os.path.join(out_dir, f"{protocol}_results.json")}
    atomic_write_text(paths["table"], format_table(results, title))
    atomic_write_text(paths["json"], results_to_json(results))
    for kind in _PLOTS:
        paths[f"{kind}_plot"] = plot_curves(results, os.path.join(out_dir, f"{protocol}_{kind}.png"), kind)
    return paths
