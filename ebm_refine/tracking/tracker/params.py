"""Tracker parameters: plain YAML files under ``configs/tracking/`` merged over in-code defaults.

A parameter file may name a base file with ``_base_: other.yaml`` (resolved next to it); its keys
override the base's recursively. Unknown keys are an error, so a typo does not silently fall back to a
default.

Paths: a relative ``checkpoint`` written in a parameter file names a shipped file (``checkpoints/...``,
found through :func:`ebm_refine.utils.resource_path`, so it works from an installed package) or, if no
shipped file has that name, a file next to the parameter file. Paths given as overrides (``--set``, the
``overrides`` argument) are the user's and stay as given (relative to the current directory).

>>> p = load_tracker_params("ebm")                       # configs/tracking/ebm.yaml   # doctest: +SKIP
>>> p = load_tracker_params("my.yaml", {"box_refinement": {"num_steps": 5}})          # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import copy
import os
from typing import Any, Callable, Dict, Optional, Tuple

from ...utils.cli_args import finite_float, int_in_range
from ...utils.config import UnknownKeyError, load_yaml, merge_params
from ...utils.errors import BadValueError, UserError
from ...utils.resources import data_root, resource_path

__all__ = ["DEFAULT_TRACKER_PARAMS", "CONFIG_DIR", "RENAMED_KEYS", "load_tracker_params", "check_tracker_params"]


CONFIG_DIR = str(resource_path("configs/tracking"))
# Parameter keys that hold file paths (resolved as the module docstring says).
PATH_KEYS = ("checkpoint",)

# Tracker parameters renamed for one vocabulary across the core, the Detectron2 plugin and the tracker
# (issue 17). An old key is an error naming the new one, not a silent alias (two
# spellings of one setting would drift apart between files).
RENAMED_KEYS: Dict[str, str] = {
    "search_area_scale": "search_area_factor",
    "box_refinement.step_size": "box_refinement.step_size_center and box_refinement.step_size_size",
    "box_refinement.step_decay": "box_refinement.decay",
}

DEFAULT_TRACKER_PARAMS: Dict[str, Any] = {
    "name": "ebm_atom",
    # Network file from tools/train_tracker.py (see the module docstring for how relative paths resolve).
    "checkpoint": None,
    "device": "cpu",
    "seed": 0,
    # Search region: a square of sqrt(w h) * search_area_factor image pixels, resampled to image_sample_size
    # (the same factor as the training crops' data.processing.search_area_factor).
    # Faster computations that give the same numbers up to float rounding (tracker boxes within 1e-3 px of
    # the plain ones over 20 frames of real video, tests/tracking/tracker/test_fast_kernels.py): the frozen
    # backbone in channels-last memory and the classifier's structured Gram update. false: the plain ones.
    "fast_kernels": True,
    # Who runs the frozen backbone: "torch", or "onnxruntime" (CPU only; exported when the tracker is built,
    # the same numbers up to float rounding; needs pip install 'ebm_refine[onnx]'; docs/tracker_results.md
    # "Speed" for what it gains).
    "backbone_runtime": "torch",
    "search_area_factor": 5.0,
    "image_sample_size": 288,
    "classifier": {
        "compressed_dim": 64,
        "filter_size": 5,
        "filter_reg": 0.05,
        "output_sigma_factor": 0.25,  # label sigma = factor * sqrt(target area in cells)
        "learning_rate": 0.01,
        "hard_negative_learning_rate": 0.02,
        "cg_iterations_init": 50,
        "cg_iterations_update": 5,
        "train_skipping": 5,  # CG on the memory every n-th frame (hard negatives: immediately)
        "target_not_found_threshold": 0.25,
        "distractor_threshold": 0.8,
        "hard_negative_threshold": 0.5,
        "target_neighborhood_scale": 2.2,
        # First-frame augmentations (each one more backbone pass at initialisation).
        "augmentation": {
            "flip": True,
            "shifts": [[0.1, 0.1], [-0.1, 0.1], [0.1, -0.1], [-0.1, -0.1]],  # fraction of the crop side
            "rotations": [10, -10],  # degrees
            "blur": [2.0],  # Gaussian sigma, crop pixels
        },
    },
    "box_refinement": {
        # "ebm": energy of an ML-IS-trained estimator; "iounet": IoU prediction of an IoU-trained one;
        # "none": classifier centre + previous size (no box estimation at all).
        "mode": "ebm",
        "num_init_boxes": 10,  # the classifier's estimate plus num_init_boxes - 1 random perturbations
        "box_jitter_pos": 0.1,  # uniform centre jitter range, fraction of sqrt(w h)
        "box_jitter_size": 0.5,  # uniform log-size jitter range
        "num_steps": 10,
        # Step sizes per unit gradient in the relative space of each initial box (centre offsets, log-sizes),
        # named as in ebm_refine.core.refine_boxes and MODEL.EBM.REFINE.
        "step_size_center": 2.0e-4,
        "step_size_size": 1.0e-3,
        "decay": 0.5,
        # true: a step that does not increase f is rejected and that box's step size shrinks by decay;
        # false: pytracking's refinement (the paper's tracker, atom_prob_ml: decay 1), every step taken.
        "backtracking": True,
        # Keep the previous size unless the averaged refined boxes' f exceeds the f of the classifier's box
        # (new centre, previous size) by this much; null: always take the refined size.
        "min_energy_gain": None,
        # Rank the refined boxes by f + a Gaussian log-prior on the log-size change from the previous frame
        # with this std (box_estimation.scale_log_prior); null: by f alone (the paper).
        "scale_prior_sigma": None,
        # First-frame adaptation of the modulation vectors (tracker/adaptation.py): a few steps of the
        # network's own loss on views of the first frame, whose box is known. steps 0: off (the paper's
        # tracker, ebm_paper.yaml). ebm.yaml sets 30: +3.7 AUC over the paper's tracker in 4-fold
        # cross-validation on the 29 real training sequences, 2 training seeds (docs/tracker_results.md).
        "adaptation": {
            "steps": 0,
            "lr": 0.02,
            "anchor": 0.1,
            "num_samples": 128,
            "zooms": [0.8, 1.0, 1.25],
            "offsets": [[0.0, 0.0], [0.3, 0.2], [-0.3, -0.2]],
        },
        "top_k": 3,
        "max_aspect_ratio": 6.0,
        # The estimator's test maps are computed only around the initial boxes: their hull grown by this
        # fraction of the largest box's width/height on each side (exact there; null: whole search region).
        "feature_window": 0.5,
    },
    "scale": {
        "min_scale_factor": 0.2,  # size bounds relative to the first-frame size
        "max_scale_factor": 5.0,
        "max_change_per_frame": 1.5,  # largest size ratio between consecutive frames
        "min_size": 4.0,  # pixels
        "inside_ratio": 0.25,  # at least this fraction of the box's width/height stays inside the image
        # Width / height at most this times the image's: a box may overhang the border (a target partly out
        # of view) but not grow without bound when the estimate drifts on a flat background.
        "max_image_ratio": 1.5,
    },
}


# Range of every numeric parameter, checked on the merged parameters (file + overrides), so a parameter
# file, ``--set``, the demo and the tools share one check; the checkers are the command-line argument types
# (one range rule and one message for both). A key whose default is None, or one in NULLABLE_PARAMS, may
# also be None.
PARAM_RANGES: Dict[str, Callable[[str], Any]] = {
    "seed": int_in_range(0),
    "search_area_factor": finite_float(0.0, open_low=True),
    "image_sample_size": int_in_range(16),
    "classifier.compressed_dim": int_in_range(1),
    "classifier.filter_size": int_in_range(1),
    "classifier.filter_reg": finite_float(0.0),
    "classifier.output_sigma_factor": finite_float(0.0, open_low=True),
    "classifier.learning_rate": finite_float(0.0, 1.0),
    "classifier.hard_negative_learning_rate": finite_float(0.0, 1.0),
    "classifier.cg_iterations_init": int_in_range(0),
    "classifier.cg_iterations_update": int_in_range(0),
    "classifier.train_skipping": int_in_range(1),
    "classifier.target_not_found_threshold": finite_float(),
    "classifier.distractor_threshold": finite_float(),
    "classifier.hard_negative_threshold": finite_float(),
    "classifier.target_neighborhood_scale": finite_float(0.0, open_low=True),
    "box_refinement.num_init_boxes": int_in_range(1),
    "box_refinement.box_jitter_pos": finite_float(0.0),
    "box_refinement.box_jitter_size": finite_float(0.0),
    "box_refinement.num_steps": int_in_range(0),
    "box_refinement.step_size_center": finite_float(0.0),
    "box_refinement.step_size_size": finite_float(0.0),
    "box_refinement.decay": finite_float(0.0, 1.0, open_low=True),
    "box_refinement.min_energy_gain": finite_float(),
    "box_refinement.scale_prior_sigma": finite_float(0.0, open_low=True),
    "box_refinement.adaptation.steps": int_in_range(0),
    "box_refinement.adaptation.lr": finite_float(0.0),
    "box_refinement.adaptation.anchor": finite_float(0.0),
    "box_refinement.adaptation.num_samples": int_in_range(1),
    "box_refinement.top_k": int_in_range(1),
    "box_refinement.max_aspect_ratio": finite_float(1.0),
    "box_refinement.feature_window": finite_float(0.0),
    "scale.min_scale_factor": finite_float(0.0, open_low=True),
    "scale.max_scale_factor": finite_float(0.0, open_low=True),
    "scale.max_change_per_frame": finite_float(1.0),
    "scale.min_size": finite_float(0.0, open_low=True),
    "scale.inside_ratio": finite_float(0.0, 1.0),
    "scale.max_image_ratio": finite_float(0.0, open_low=True),
}
NULLABLE_PARAMS = ("box_refinement.feature_window",)  # null: the whole search region
_ABSENT = object()


def _dotted(params: Dict[str, Any], key: str) -> Any:
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def _range_problem(value: Any, check: Callable[[str], Any]) -> Optional[str]:
    """Why ``value`` (a YAML value) fails the parameter's ``check`` (text: "must be ..."), or None."""
    integer = getattr(check, "__name__", "").startswith("integer")
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int) or not integer)
    try:
        check(str(value) if number else "not a number")
    except argparse.ArgumentTypeError as e:
        return str(e).split(", got ")[0]
    return None


def check_tracker_params(params: Dict[str, Any], source: str = "tracker parameters") -> Dict[str, Any]:
    """Check the range of every numeric parameter (:data:`PARAM_RANGES`) that ``params`` holds.

    Raises:
        BadValueError naming ``source`` (the parameter file, or the overrides) and the dotted key.
    Returns ``params``.
    """
    for key, check in PARAM_RANGES.items():
        value = _dotted(params, key)
        if value is _ABSENT or (value is None and (key in NULLABLE_PARAMS or _dotted(DEFAULT_TRACKER_PARAMS, key) is None)):
            continue
        problem = _range_problem(value, check)
        if problem:
            raise BadValueError(f"{source}: tracker parameter {key} = {value!r}: {problem}; fix it in the "
                                "parameter file or the override (--set)")
    return params


def _resolve_file_paths(data: Dict[str, Any], yaml_path: str) -> None:
    """Make the relative ``PATH_KEYS`` values of one parameter file absolute (shipped file, else next to it)."""
    for key in PATH_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not value or os.path.isabs(os.path.expanduser(value)):
            continue
        shipped = data_root() / value
        local = os.path.join(os.path.dirname(os.path.abspath(yaml_path)), value)
        data[key] = str(shipped) if shipped.exists() or not os.path.exists(local) else local


class MissingParamsError(UserError, FileNotFoundError):
    """A parameter-file name or path that does not exist."""


def resolve_params_file(name_or_path: str) -> str:
    """Path of a parameter file given as a path or as a name in ``configs/tracking/`` (``.yaml`` optional)."""
    return _resolve(name_or_path)


def _resolve(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    for cand in (os.path.join(CONFIG_DIR, name_or_path), os.path.join(CONFIG_DIR, name_or_path + ".yaml")):
        if os.path.isfile(cand):
            return cand
    raise MissingParamsError(f"tracker parameters {name_or_path!r} not found: neither a file nor a name in "
                             f"{CONFIG_DIR}; pass a YAML path or one of the shipped names")


def tracker_param_set(spec: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """The evaluation registry's view of a parameter file: ``spec`` (a YAML path, or a name in
    ``configs/tracking/``) -> (results name = the file's stem, ``{"params": absolute path}``); None if
    there is no such file."""
    try:
        path = _resolve(spec)
    except MissingParamsError:
        return None
    return os.path.splitext(os.path.basename(path))[0], {"params": os.path.abspath(path)}


def load_tracker_params(name_or_path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None
                        ) -> Dict[str, Any]:
    """Defaults <- YAML file (a path, or a name in ``configs/tracking/``) <- ``overrides``.

    A relative ``checkpoint`` from a file is resolved as the module docstring says; one from
    ``overrides`` stays as given.
    """
    params = copy.deepcopy(DEFAULT_TRACKER_PARAMS)
    source = "tracker parameters"
    if name_or_path is not None:
        path = _resolve(name_or_path)
        source = path + (" with its overrides" if overrides else "")
        try:
            params = merge_params(params, load_yaml(path, _resolve_file_paths), renamed=RENAMED_KEYS)
        except UnknownKeyError as exc:
            raise UnknownKeyError(f"{path}: {exc}") from None
    return check_tracker_params(merge_params(params, overrides, renamed=RENAMED_KEYS), source)
