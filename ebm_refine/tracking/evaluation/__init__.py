"""Tracking evaluation: run trackers over datasets, score results in three protocols, report, pack.

>>> from ebm_refine.tracking.datasets import load_dataset
>>> from ebm_refine.tracking.evaluation import get_tracker_factory, run_dataset, evaluate_results
>>> seqs = load_dataset("otb", "/data/OTB100")                                        # doctest: +SKIP
>>> run_dataset(seqs, get_tracker_factory("ncc"), "results/ncc/default", num_workers=2)  # doctest: +SKIP
>>> evaluate_results(seqs, "results/ncc/default", "otb")["auc"]                        # doctest: +SKIP

Importing this package is cheap: OpenCV, tqdm and matplotlib are imported where they are used.
"""
from .packer import SubmissionError, pack_trackingnet
from .protocols import (PROTOCOLS, evaluate_results, pytracking_dataset_rule, score_sequence,
                        score_sequence_otb, score_sequence_pytracking, score_sequence_trackingnet,
                        summarize_curves)
from .registry import (TrackerFactory, describe_trackers, get_tracker_factory, register_tracker,
                       tracker_names)
from .report import format_table, plot_curves, results_to_json, write_report
from .results import read_result, read_times, tracker_results_dir, write_boxes
from .runner import RunError, RunInputError, SequenceRun, run_dataset, run_sequence, track_sequence

__all__ = [
    "PROTOCOLS", "RunError", "RunInputError", "SequenceRun", "SubmissionError", "TrackerFactory", "describe_trackers",
    "evaluate_results", "format_table", "get_tracker_factory", "pack_trackingnet", "plot_curves",
    "pytracking_dataset_rule", "read_result", "read_times", "register_tracker", "results_to_json",
    "run_dataset", "run_sequence", "score_sequence", "score_sequence_otb", "score_sequence_pytracking",
    "score_sequence_trackingnet", "summarize_curves", "track_sequence", "tracker_names",
    "tracker_results_dir", "write_boxes", "write_report",
]
