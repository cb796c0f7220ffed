"""K-fold cross-validation of a tracker over a set of annotated sequences.

A handful of validation sequences cannot separate two tracker settings: one target kept or lost moves a
6-sequence AUC by 5-10 points (docs/tracker_results.md). Cross-validation uses every real training sequence
for validation once: the sequences are split into ``k`` folds, a network is trained on the other ``k - 1`` folds
(plus whatever non-sequence data the training config has) and the tracker is run on the held-out fold with that
network. Every sequence is then scored by a network that never saw it, and the pooled score covers all of them.

Sequences cut from one video (UAV123's ``car16_1`` / ``car16_2``) must stay in one fold, or the network is
validated on frames it was trained on; :func:`video_key` groups them by name.

>>> video_key("group1_3"), video_key("wakeboard4"), video_key("S1301")
('group1', 'wakeboard4', 'S1301')
"""
from __future__ import annotations

import copy
import json
import os
import random
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ...utils import BadValueError, MissingFileError, atomic_write_text
from .protocols import SCORE_KEYS, evaluate_results

_PART_SUFFIX = re.compile(r"^(.*[A-Za-z].*?\d*)_(\d+)$")


def video_key(name: str) -> str:
    """The video a sequence was cut from, by UAV123's naming rule: ``<video>_<part>`` (``car16_2`` -> ``car16``).

    Names without a numeric ``_<part>`` suffix are their own video.
    """
    m = _PART_SUFFIX.match(name)
    return m.group(1) if m else name


def make_folds(names: Sequence[str], k: int, frames: Optional[Mapping[str, int]] = None,
               seed: Optional[int] = None, fixed: Optional[Sequence[str]] = None) -> List[List[str]]:
    """Split sequences into ``k`` folds of about equal frame counts, never splitting a video.

    Args:
        names: sequence names (each once).
        k: number of folds, ``2 <= k <= number of videos``.
        frames: frames per sequence (balances the folds by frames; equal weights without it).
        seed: None (default): videos are dealt largest first, each to the lightest fold (the most even
            split). An int: they are dealt in a random order drawn from it, each to the lightest fold -- another
            split for repeated cross-validation, less even. The split is a pure function of the arguments.
        fixed: sequences that form fold 0 as given (e.g. an existing validation split, so that a network
            trained without them can be reused); the others are dealt over folds 1 .. k-1.

    Returns:
        ``k`` lists of names, each sorted; fold 0 is ``fixed`` when given.

    Raises:
        ValueError: for duplicate names, ``k`` out of range, ``fixed`` names not in ``names`` or a
            ``fixed`` set that splits a video.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError("make_folds: duplicate sequence names")
    weight = {n: (frames[n] if frames is not None else 1) for n in names}
    fixed = list(fixed or [])
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ValueError(f"make_folds: fixed sequences not in the set: {', '.join(unknown)}")
    videos: Dict[str, List[str]] = {}
    for n in sorted(names):
        videos.setdefault(video_key(n), []).append(n)
    fixed_videos = {video_key(n) for n in fixed}
    for v in fixed_videos:
        if not set(videos[v]) <= set(fixed):
            raise ValueError(f"make_folds: fixed fold splits video {v!r} ({', '.join(videos[v])}); "
                             "give all of its sequences or none")
    free = sorted(v for v in videos if v not in fixed_videos)
    first = 1 if fixed else 0
    if not 2 <= k or k - first > len(free):
        raise ValueError(f"make_folds: k={k} folds need 2 <= k and at least {k - first} videos to deal "
                         f"(have {len(free)})")
    random.Random(0 if seed is None else seed).shuffle(free)
    if seed is None:
        # Largest videos first (equal sizes in the fixed shuffled order), each to the lightest fold: about
        # equal frames per fold.
        free.sort(key=lambda v: -sum(weight[n] for n in videos[v]))
    folds: List[List[str]] = [sorted(fixed)] if fixed else []
    dealt: List[List[str]] = [[] for _ in range(k - first)]
    load = [0] * (k - first)
    for v in free:
        i = min(range(len(dealt)), key=lambda j: (load[j], len(dealt[j]), j))
        dealt[i].extend(videos[v])
        load[i] += sum(weight[n] for n in videos[v])
    return folds + [sorted(f) for f in dealt]


def training_sequences(folds: Sequence[Sequence[str]], fold: int) -> List[str]:
    """The sequences a fold's network trains on: every fold but ``fold``, sorted."""
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} out of range 0..{len(folds) - 1}")
    return sorted(n for i, f in enumerate(folds) if i != fold for n in f)


# --------------------------------------------------------------------------------------------------------
# The plan file and the per-fold training config

PLAN_FORMAT = "ebm_refine.tracker_crossval/1"


def make_plan(dataset: str, root: str, folds: Sequence[Sequence[str]], fold_seed: Optional[int],
              fixed: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """The cross-validation plan as a JSON-able dict (what ``tools/cross_validate_tracker.py split`` writes)."""
    return {"format": PLAN_FORMAT, "dataset": dataset, "root": os.path.abspath(root), "fold_seed": fold_seed,
            "fixed": sorted(fixed or []), "folds": [sorted(f) for f in folds]}


def save_plan(path: str, plan: Mapping[str, object]) -> None:
    atomic_write_text(path, json.dumps(plan, indent=1) + "\n")


def load_plan(path: str) -> Dict[str, object]:
    """Read and check a plan file.

    Raises:
        MissingFileError when the file is missing; BadValueError naming the file for anything else wrong.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: cross-validation plan not found; run the 'split' step first")
    try:
        with open(path) as fh:
            plan = json.load(fh)
    except (OSError, ValueError) as exc:
        raise BadValueError(f"{path}: not a cross-validation plan ({exc}); run the 'split' step again") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise BadValueError(f"{path}: not a cross-validation plan (format {PLAN_FORMAT!r} expected); "
                            "run the 'split' step again")
    folds = plan.get("folds")
    if not (isinstance(folds, list) and len(folds) >= 2 and all(isinstance(f, list) and f for f in folds)):
        raise BadValueError(f"{path}: 'folds' must be a list of at least 2 non-empty lists of sequence names")
    return plan


def fold_training_config(cfg: Mapping[str, object], root: str, train_sequences: Sequence[str]) -> Dict[str, object]:
    """A training config whose real-sequence source reads only ``train_sequences``.

    The source changed is the one ``data.sources`` entry of type ``dataset`` whose ``root`` is ``root``
    (expanded as training expands it: ``$VARS``, ``~``, ``$EBM_SHARED_DATA`` defaulting to the checkout's
    ``../shared/data``); every other source (COCO, synthetic) is kept.

    Raises:
        BadValueError when no source or several sources read ``root``.
    """
    cfg = copy.deepcopy(dict(cfg))
    from ..train.config import expand_path  # the training config's own reading of a root ($VARS, ~)

    want = os.path.realpath(root)
    sources = cfg.get("data", {}).get("sources", [])
    hits = [i for i, s in enumerate(sources)
            if s.get("type") == "dataset" and os.path.realpath(expand_path(str(s.get("root", "")))) == want]
    if len(hits) != 1:
        roots = ", ".join(str(s.get("root")) for s in sources if s.get("type") == "dataset") or "none"
        raise BadValueError(f"the training config needs exactly one 'dataset' source reading {root} "
                            f"(found {len(hits)}; dataset roots: {roots}); add one or fix its root")
    sources[hits[0]]["sequences"] = list(train_sequences)
    return cfg


def summarize_runs(sequences: Sequence[Any], run_dirs: Sequence[str], protocol: str,
                   folds: Sequence[Sequence[str]]) -> Dict[str, Any]:
    """Scores of one tracker's runs over all sequences, with the spread over the runs.

    Args:
        sequences: every sequence of the plan (ground truth loaded).
        run_dirs: one results folder per run, each with ``<seq>.txt`` for every sequence.
        protocol: a scoring protocol (:data:`PROTOCOLS`).
        folds: the plan's folds (for the per-fold scores).

    Returns:
        dict with ``runs`` (per-run overall scores), ``mean`` / ``std`` (over the runs; population std,
        0 for one run) of each score key, ``per_fold`` (fold index -> mean AUC over the runs) and
        ``per_sequence`` (name -> mean AUC over the runs). Percent.
    """
    if not run_dirs:
        raise BadValueError("summarize_runs: no runs")
    by_name = {s.name: s for s in sequences}
    runs = [evaluate_results(sequences, d, protocol) for d in run_dirs]
    out: Dict[str, Any] = {"runs": [{k: r[k] for k in SCORE_KEYS} for r in runs]}
    out["mean"] = {k: float(np.mean([r[k] for r in runs])) for k in SCORE_KEYS}
    out["std"] = {k: float(np.std([r[k] for r in runs])) for k in SCORE_KEYS}
    out["per_sequence"] = {n: float(np.mean([r["per_sequence"][n]["auc"] for r in runs])) for n in by_name}
    # A set's AUC is the mean of its sequences' curves, so a fold's is the mean of its sequences' AUCs.
    out["per_fold"] = {i: float(np.mean([out["per_sequence"][n] for n in fold])) for i, fold in enumerate(folds)}
    return out
