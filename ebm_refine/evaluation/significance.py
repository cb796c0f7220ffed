"""Is method A better than method B? Paired comparison of per-sample errors over several runs.

The protocol (in the spirit of careful regression tutorials): instead of one run and a mean, take the
per-sample errors of both methods on the same samples (per box: 1 - IoU or L1; per frame for tracking;
per sample for regression; lower is better) from R runs (training seeds, sampling seeds), and report

* per run and pooled over runs: the median of the paired differences ``d = error_a - error_b`` with a
  confidence interval (default 95 %), and the two-sided Wilcoxon signed-rank p-value (scipy);
* the winner: the method with the lower errors when p < alpha, else none.

Conventions
-----------
* ``d < 0`` means A had the lower error on that sample.
* Median interval: ``"order"`` (default) is the distribution-free order-statistic interval
  ``[d_(l), d_(n-l+1)]`` from the binomial(n, 1/2) law of the number of samples below the median; its
  achieved confidence (>= the nominal one, reported as ``ci_level``) is exact for continuous data.
  ``"bootstrap"`` is the percentile bootstrap of the median (seeded, ``n_boot`` resamples).
* Wilcoxon: ``scipy.stats.wilcoxon`` with its defaults (zero differences dropped, ``"wilcox"``; exact
  distribution for small samples without ties, normal approximation otherwise). With no non-zero
  difference the p-value is 1 (the methods agree exactly).
* The direction of a significant result comes from the signed ranks themselves: A wins when the rank sum
  of the samples where A is better (``d < 0``) exceeds the other one. The median interval is reported
  alongside; with skewed differences it can straddle 0 while the signed-rank test is significant.
* Pooling over runs. Runs that evaluate the *same* samples (``ids`` equal as sets in every run) are pooled
  by averaging each sample's difference over the runs, so every sample counts once and the test's
  independence unit stays the sample (``pooling="mean over runs"``). Otherwise the runs' differences are
  concatenated (``"concatenated"``), which treats every (run, sample) as independent: anti-conservative
  when the runs share samples, and said so in the output.
* Samples are assumed independent. Per-frame tracking errors are not (a lost target stays lost); treat
  those p-values as optimistic, or aggregate per sequence first.

``compare_runs`` returns a :class:`Comparison` (``format_table()``, ``to_dict()``);
``compare_methods`` runs every pair of several methods and adds Holm-adjusted pooled p-values.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

__all__ = [
    "CI_METHODS",
    "PairedSummary",
    "Comparison",
    "median_ci",
    "paired_test",
    "compare_runs",
    "compare_methods",
    "holm_adjust",
    "summary_rows",
]

CI_METHODS = ("order", "bootstrap")
NO_WINNER = "none"


def median_ci(
    x: Sequence[float], confidence: float = 0.95, method: str = "order", n_boot: int = 2000, seed: int = 0
) -> Tuple[float, float, float]:
    """Confidence interval of the median of ``x`` (n values): ``(low, high, achieved_level)``.

    ``"order"``: the narrowest symmetric order-statistic interval whose binomial coverage is at least
    ``confidence``; when n is too small for that (n <= 5 at 95 %), the whole range ``[min, max]`` with its
    lower achieved level. ``"bootstrap"``: percentile interval of ``n_boot`` bootstrap medians drawn with
    ``numpy.random.default_rng(seed)``; the achieved level is reported as ``confidence``.
    """
    a = np.sort(np.asarray(x, dtype=np.float64).ravel())
    n = a.size
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return math.nan, math.nan, math.nan
    if method == "order":
        tail = (1.0 - confidence) / 2.0
        # Coverage of [a_(l), a_(n-l+1)] is 1 - 2 P(B <= l - 1), B ~ Bin(n, 1/2): take the largest l with
        # P(B <= l - 1) <= tail (l = 1, the whole range, when even P(B = 0) = 2^-n exceeds the tail).
        cdf = stats.binom.cdf(np.arange(n), n, 0.5)
        ok = np.flatnonzero(cdf <= tail)
        lower_rank = min(int(ok[-1]) + 1 if ok.size else 1, (n + 1) // 2)  # 1-based rank l
        upper_rank = n - lower_rank + 1
        level = 1.0 - 2.0 * float(cdf[lower_rank - 1])
        return float(a[lower_rank - 1]), float(a[upper_rank - 1]), level
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        meds = np.median(a[rng.integers(0, n, size=(n_boot, n))], axis=1)
        lo, hi = np.quantile(meds, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
        return float(lo), float(hi), float(confidence)
    raise ValueError(f"unknown interval method {method!r}; expected one of {CI_METHODS}")


@dataclass(frozen=True)
class PairedSummary:
    """One paired comparison of errors (one run, or the pool of all runs).

    Attributes:
        label: "run <name>" or "pooled".
        n: number of paired samples; ``n_nonzero``: those with a non-zero difference (the Wilcoxon n).
        median_a, median_b: median error of each method.
        median_diff: median of ``error_a - error_b`` (negative: A lower); ``ci_low``/``ci_high`` its
            interval, ``ci_level`` the interval's achieved confidence.
        mean_diff: mean of the differences (for reference; not what is tested).
        frac_a_better: share of samples with ``error_a < error_b``.
        statistic: scipy's Wilcoxon statistic (the smaller signed-rank sum); ``p_value`` two-sided.
        rank_sum_a_better / rank_sum_b_better: signed-rank sums of the samples where A / B is better.
        winner: the better method's name when ``p_value < alpha``, else ``"none"``.
    """

    label: str
    n: int
    n_nonzero: int
    median_a: float
    median_b: float
    median_diff: float
    ci_low: float
    ci_high: float
    ci_level: float
    mean_diff: float
    frac_a_better: float
    statistic: float
    p_value: float
    rank_sum_a_better: float
    rank_sum_b_better: float
    winner: str

    def to_dict(self) -> dict:
        return asdict(self)


def _signed_rank_sums(d: np.ndarray) -> Tuple[float, float]:
    nz = d[d != 0]
    if nz.size == 0:
        return 0.0, 0.0
    ranks = stats.rankdata(np.abs(nz))
    return float(ranks[nz < 0].sum()), float(ranks[nz > 0].sum())


def paired_test(
    errors_a: Sequence[float],
    errors_b: Sequence[float],
    *,
    names: Tuple[str, str] = ("A", "B"),
    label: str = "",
    confidence: float = 0.95,
    alpha: float = 0.05,
    ci_method: str = "order",
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedSummary:
    """Paired comparison of two methods' per-sample errors (same samples, same order; lower is better).

    Args:
        errors_a, errors_b: (n,) errors of methods A and B on the same n samples.
        names: the methods' names (used for ``winner``).
        confidence: level of the median-difference interval; ``alpha``: significance level of the test.
        ci_method, n_boot, seed: see :func:`median_ci`.
    Raises:
        ValueError: different lengths, or non-finite errors.
    """
    a = np.asarray(errors_a, dtype=np.float64).ravel()
    b = np.asarray(errors_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired errors need equal lengths, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("errors must be finite (drop samples without a ground truth before comparing)")
    d = a - b
    n = d.size
    n_nonzero = int(np.count_nonzero(d))
    lo, hi, level = median_ci(d, confidence, ci_method, n_boot, seed)
    r_a, r_b = _signed_rank_sums(d)
    if n_nonzero == 0:
        statistic, p = 0.0, 1.0
    else:
        res = stats.wilcoxon(d)
        statistic, p = float(res.statistic), float(res.pvalue)
    winner = NO_WINNER
    if p < alpha and r_a != r_b:
        winner = names[0] if r_a > r_b else names[1]
    return PairedSummary(
        label=label, n=n, n_nonzero=n_nonzero,
        median_a=float(np.median(a)) if n else math.nan, median_b=float(np.median(b)) if n else math.nan,
        median_diff=float(np.median(d)) if n else math.nan, ci_low=lo, ci_high=hi, ci_level=level,
        mean_diff=float(d.mean()) if n else math.nan, frac_a_better=float((d < 0).mean()) if n else math.nan,
        statistic=statistic, p_value=p, rank_sum_a_better=r_a, rank_sum_b_better=r_b, winner=winner,
    )


@dataclass
class Comparison:
    """Per-run and pooled paired comparisons of two methods (see :func:`compare_runs`)."""

    name_a: str
    name_b: str
    per_run: List[PairedSummary]
    pooled: PairedSummary
    pooling: str
    confidence: float
    alpha: float
    ci_method: str
    metric: str = "error"
    p_holm: Optional[float] = None  # set by compare_methods
    notes: List[str] = field(default_factory=list)

    @property
    def winner(self) -> str:
        """The pooled result's winner ("none" when not significant at ``alpha``)."""
        return self.pooled.winner

    def to_dict(self) -> dict:
        return {
            "a": self.name_a, "b": self.name_b, "metric": self.metric, "difference": "a - b",
            "confidence": self.confidence, "alpha": self.alpha, "ci_method": self.ci_method,
            "pooling": self.pooling, "winner": self.winner, "p_holm": self.p_holm, "notes": list(self.notes),
            "per_run": [s.to_dict() for s in self.per_run], "pooled": self.pooled.to_dict(),
        }

    def format_table(self, digits: int = 4) -> str:
        """A markdown table: one row per run and the pooled row."""
        pct = f"{self.confidence * 100:g} %"
        head = (f"{self.name_a} vs {self.name_b} ({self.metric}, lower is better; difference = "
                f"{self.name_a} - {self.name_b}; pooled: {self.pooling})")
        lines = [head, "",
                 f"| run | n | median {self.name_a} | median {self.name_b} | median diff [{pct} CI] | "
                 f"{self.name_a} better | Wilcoxon p | winner |",
                 "|---|---|---|---|---|---|---|---|"]
        for s in [*self.per_run, self.pooled]:
            lines.append(
                f"| {s.label} | {s.n} | {s.median_a:.{digits}f} | {s.median_b:.{digits}f} | "
                f"{s.median_diff:+.{digits}f} [{s.ci_low:+.{digits}f}, {s.ci_high:+.{digits}f}] | "
                f"{100 * s.frac_a_better:.1f} % | {_format_p(s.p_value)} | {s.winner} |"
            )
        if self.p_holm is not None:
            lines.append(f"\nHolm-adjusted pooled p (over all compared pairs): {_format_p(self.p_holm)}")
        lines.extend(f"\nnote: {n}" for n in self.notes)
        return "\n".join(lines)


def _format_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _pool(
    runs_a: List[np.ndarray], runs_b: List[np.ndarray], ids: Optional[Sequence[Sequence]]
) -> Tuple[np.ndarray, np.ndarray, str, List[str]]:
    """Pooled (a, b) errors and how they were pooled (see module docstring)."""
    notes: List[str] = []
    if ids is not None:
        id_sets = [list(map(str, i)) for i in ids]
        if all(len(set(s)) == len(s) for s in id_sets) and all(set(s) == set(id_sets[0]) for s in id_sets):
            order = sorted(id_sets[0])
            pos = [{k: j for j, k in enumerate(s)} for s in id_sets]
            a = np.mean([ra[[p[k] for k in order]] for ra, p in zip(runs_a, pos)], axis=0)
            b = np.mean([rb[[p[k] for k in order]] for rb, p in zip(runs_b, pos)], axis=0)
            return a, b, "mean over runs", notes
        notes.append("the runs do not share one set of sample ids: pooled by concatenation, which treats "
                     "(run, sample) pairs as independent")
    elif len(runs_a) > 1:
        notes.append("no sample ids: pooled by concatenation, which treats (run, sample) pairs as independent")
    return np.concatenate(runs_a), np.concatenate(runs_b), "concatenated", notes


def compare_runs(
    runs_a: Sequence[Sequence[float]],
    runs_b: Sequence[Sequence[float]],
    *,
    ids: Optional[Sequence[Sequence]] = None,
    names: Tuple[str, str] = ("A", "B"),
    run_names: Optional[Sequence[str]] = None,
    metric: str = "error",
    confidence: float = 0.95,
    alpha: float = 0.05,
    ci_method: str = "order",
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Per-run and pooled paired comparison of two methods over R runs.

    Args:
        runs_a, runs_b: R sequences of per-sample errors; run r of A and run r of B are paired sample by
            sample (equal lengths within a run; lengths may differ between runs).
        ids: optional R sequences of sample ids (run r's ids label both methods' errors of run r); when
            every run has the same id set, the pooled test averages each sample over the runs.
        names: method names; ``run_names``: labels of the runs (default 0..R-1); ``metric``: what the
            errors are (for the table).
        confidence, alpha, ci_method, n_boot, seed: see :func:`paired_test`.
    """
    if len(runs_a) != len(runs_b) or len(runs_a) == 0:
        raise ValueError(f"need the same number (>= 1) of runs for both methods, got {len(runs_a)} and {len(runs_b)}")
    if ids is not None and len(ids) != len(runs_a):
        raise ValueError(f"ids: need one id list per run ({len(runs_a)}), got {len(ids)}")
    ra = [np.asarray(r, dtype=np.float64).ravel() for r in runs_a]
    rb = [np.asarray(r, dtype=np.float64).ravel() for r in runs_b]
    for r, (x, y) in enumerate(zip(ra, rb)):
        if x.size != y.size or (ids is not None and len(ids[r]) != x.size):
            raise ValueError(f"run {r}: {x.size} errors for {names[0]}, {y.size} for {names[1]}"
                             + (f", {len(ids[r])} ids" if ids is not None else ""))
    run_names = [str(r) for r in (run_names if run_names is not None else range(len(ra)))]
    kw = dict(names=names, confidence=confidence, alpha=alpha, ci_method=ci_method, n_boot=n_boot, seed=seed)
    per_run = [paired_test(x, y, label=f"run {name}", **kw) for name, x, y in zip(run_names, ra, rb)]
    pa, pb, pooling, notes = _pool(ra, rb, ids)
    pooled = paired_test(pa, pb, label=f"pooled ({len(ra)} runs)", **kw)
    return Comparison(names[0], names[1], per_run, pooled, pooling, confidence, alpha, ci_method, metric,
                      notes=notes)


def holm_adjust(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (family-wise error control over several comparisons)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    order = np.argsort(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def compare_methods(
    errors: Mapping[str, Sequence[Sequence[float]]],
    *,
    ids: Optional[Sequence[Sequence]] = None,
    **kwargs,
) -> List[Comparison]:
    """Every pair (in the given order) of several methods; adds Holm-adjusted pooled p-values.

    Args:
        errors: method name -> R runs of per-sample errors (all methods share the runs and their samples).
        ids, kwargs: as in :func:`compare_runs` (``names`` is set per pair).
    """
    methods = list(errors)
    if len(methods) < 2:
        raise ValueError(f"need at least two methods to compare, got {methods}")
    out = [compare_runs(errors[a], errors[b], ids=ids, names=(a, b), **kwargs)
           for a, b in itertools.combinations(methods, 2)]
    for c, p in zip(out, holm_adjust([c.pooled.p_value for c in out])):
        c.p_holm = p
    return out


def summary_rows(comparisons: Sequence[Comparison]) -> Dict[str, dict]:
    """``{"a vs b": comparison.to_dict()}`` for a JSON report."""
    return {f"{c.name_a} vs {c.name_b}": c.to_dict() for c in comparisons}
