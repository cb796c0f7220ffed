"""Framework-agnostic evaluation helpers shared by detection, tracking and regression (numpy + scipy).

significance  paired comparison of two methods' per-sample errors over several runs: median difference with
              a confidence interval, Wilcoxon signed-rank p-value, the winner
per_sample    the per-sample error file that benchmarks write and ``tools/compare_runs.py`` reads

(Detection AP lives in ``ebm_refine.detectron2.evaluation``, tracking metrics in
``ebm_refine.tracking.evaluation``; this package is what they share.)
"""
from .per_sample import FORMAT, ErrorRun, PerSampleErrors, check_distinct_runs, load_per_sample_errors, read_error_column
from .significance import (
    CI_METHODS,
    Comparison,
    PairedSummary,
    compare_methods,
    compare_runs,
    holm_adjust,
    median_ci,
    paired_test,
    summary_rows,
)

__all__ = [k for k in dir() if not k.startswith("_")]
