"""The tracker's training config: defaults, strict checks and the data sources it names.

Config (a dict, usually a YAML file under ``configs/tracking/``)::

    net:   TrackerNet config (backbone, estimator, loss) -- see models.network.DEFAULT_NET_CONFIG
    data:
      processing: overrides of train.data.DEFAULT_PROCESSING
      sources:    list of {type: synthetic | coco | dataset, weight: float, ...}
      annotation_noise: {fraction, kind, seed} -- wrong boxes in a share of the frames, for outlier
                  experiments (ebm_refine.data.annotation_noise.AnnotationNoise; fraction 0 = none)
    train: batch_size, num_iterations, lr, weight_decay, lr_milestones, lr_gamma, grad_clip,
           num_workers, checkpoint_interval, log_interval, seed, num_threads
    robust: DeepGUM outlier-robust training (train.robust.DEFAULT_ROBUST): enabled, period, warmup, num_steps,
           step_size_center, step_size_size, decay

Source types:
  synthetic  num_sequences, first_seed, config (SyntheticConfig fields), background_dir (optional
             folder of real images used as backgrounds)
  coco       ann_file, image_dir (each instance is a one-frame sequence)
  dataset    name, root, plus keyword arguments of ``ebm_refine.tracking.datasets.load_dataset``
             (TrackingNet TRAIN_i, LaSOT, GOT-10k, folder, ...)

Paths may use ``${EBM_SHARED_DATA}`` (default ``<repo>/../shared/data``) and other environment variables.

The config is strict (:func:`check_train_config`): an unknown key anywhere, a value out of range or a
missing data folder is a :class:`~ebm_refine.utils.UserError` naming it, before anything is trained.
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import math
import os
from typing import Any, Dict, List, Tuple

from ...data.synthetic_tracking import SyntheticConfig, SyntheticDataset
from ...utils.config import UnknownKeyError, load_yaml, merge_params
from ...utils.errors import UserError
from ...data.annotation_noise import NOISE_KINDS
from ...utils.resources import shared_data_dir
from ..models.network import DEFAULT_NET_CONFIG, RENAMED_LOSS_METHODS
from .robust import DEFAULT_ROBUST, check_robust_config
from .data import DEFAULT_PROCESSING, FileSequence, coco_sequences

# Outlier experiments: no noise unless a config asks (data.annotation_noise).
DEFAULT_ANNOTATION_NOISE: Dict[str, Any] = {"fraction": 0.0, "kind": "shift_scale", "seed": 0}

__all__ = ["DEFAULT_TRAIN", "DEFAULT_ANNOTATION_NOISE", "RENAMED_KEYS", "load_train_config", "check_train_config", "build_sources"]


# Training-config keys renamed for one vocabulary across the core, the Detectron2 plugin and the tracker
# (issue 17); an old key is an error naming the new one. (A renamed loss-method value: RENAMED_LOSS_METHODS.)
RENAMED_KEYS = {"net.loss.beta": "net.loss.nce_beta"}


DEFAULT_TRAIN: Dict[str, Any] = {
    "batch_size": 8,
    "num_iterations": 1000,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_milestones": [],
    "lr_gamma": 0.2,
    "grad_clip": 10.0,
    "num_workers": 2,
    "checkpoint_interval": 100,
    "log_interval": 10,
    "seed": 0,
    "num_threads": None,
}


def expand_path(path: str) -> str:
    """``~`` and ``$VARS`` expanded (``$EBM_SHARED_DATA`` defaults to the checkout's ``../shared/data``);
    relative paths stay relative to the current directory."""
    shared = shared_data_dir()
    if shared is not None:
        os.environ.setdefault("EBM_SHARED_DATA", str(shared))
    return os.path.expanduser(os.path.expandvars(str(path)))


def load_train_config(path: str) -> Dict[str, Any]:
    """Read a training YAML (``_base_`` chains allowed, as for tracker parameters), checked strictly."""
    try:
        return check_train_config(load_yaml(path))
    except UserError as exc:
        raise type(exc)(f"{path}: {exc}") from None


# Keys each data-source type takes ("dataset" also passes its other keys to the dataset loader).
_SOURCE_KEYS = {
    "synthetic": {"type", "weight", "num_sequences", "first_seed", "config", "background_dir"},
    "coco": {"type", "weight", "ann_file", "image_dir", "min_size"},
    "dataset": {"type", "weight", "name", "root"},
}
_REQUIRED_SOURCE_KEYS = {"synthetic": (), "coco": ("ann_file", "image_dir"), "dataset": ("name", "root")}
_POSITIVE_INTS = ("batch_size", "num_iterations", "checkpoint_interval", "log_interval")


def check_train_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Validate a training config: known keys only, values in range; returns it unchanged.

    Raises:
        UnknownKeyError (a UserError) naming the dotted key, or UserError for a bad value.
    """
    kind = "training config key"
    schema = {"net": copy.deepcopy(DEFAULT_NET_CONFIG),
              "data": {"processing": dict(DEFAULT_PROCESSING), "sources": [],
                       "annotation_noise": dict(DEFAULT_ANNOTATION_NOISE)}, "train": dict(DEFAULT_TRAIN),
              "robust": dict(DEFAULT_ROBUST)}
    merge_params(schema, cfg, kind=kind, renamed=RENAMED_KEYS)
    data = cfg.get("data") or {}
    noise = dict(DEFAULT_ANNOTATION_NOISE, **(data.get("annotation_noise") or {}))
    frac = noise["fraction"]
    if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 <= frac < 1:
        raise UserError(f"data.annotation_noise.fraction: {frac!r} must be a number in [0, 1)")
    if noise["kind"] not in NOISE_KINDS:
        raise UserError(f"data.annotation_noise.kind: {noise['kind']!r} unknown; use one of {', '.join(NOISE_KINDS)}")
    if not isinstance(noise["seed"], int) or isinstance(noise["seed"], bool):
        raise UserError(f"data.annotation_noise.seed: {noise['seed']!r} must be a whole number")
    sources = data.get("sources") or []
    if not isinstance(sources, list):
        raise UserError(f"data.sources: expected a list of sources, got {sources!r}")
    syn_fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    for i, src in enumerate(sources):
        where = f"data.sources[{i}]"
        kind_i = src.get("type") if isinstance(src, dict) else None
        if kind_i not in _SOURCE_KEYS:
            raise UserError(f"{where}.type: {kind_i!r} is not a source type; use synthetic, coco or dataset")
        if kind_i != "dataset":
            unknown = sorted(set(src) - _SOURCE_KEYS[kind_i])
            if unknown:
                raise UnknownKeyError(f"unknown {kind} {where}.{unknown[0]} for a {kind_i} source (known: "
                                      f"{', '.join(sorted(_SOURCE_KEYS[kind_i]))}); check the spelling")
        if kind_i == "synthetic":
            unknown = sorted(set(src.get("config") or {}) - syn_fields)
            if unknown:
                raise UnknownKeyError(f"unknown {kind} {where}.config.{unknown[0]} (SyntheticConfig fields: "
                                      f"{', '.join(sorted(syn_fields))})")
        for key in _REQUIRED_SOURCE_KEYS[kind_i]:
            if not src.get(key):
                raise UserError(f"{where}.{key}: missing; a {kind_i} source needs it")
        weight = src.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise UserError(f"{where}.weight: {weight!r} must be a number >= 0")
    tcfg = dict(DEFAULT_TRAIN, **(cfg.get("train") or {}))
    for key in _POSITIVE_INTS:
        if not isinstance(tcfg[key], int) or isinstance(tcfg[key], bool) or tcfg[key] < 1:
            raise UserError(f"train.{key}: {tcfg[key]!r} must be a whole number >= 1")
    if not isinstance(tcfg["lr"], (int, float)) or not tcfg["lr"] > 0 or not math.isfinite(tcfg["lr"]):
        raise UserError(f"train.lr: {tcfg['lr']!r} must be a finite number > 0")
    check_robust_config(dict(DEFAULT_ROBUST, **(cfg.get("robust") or {})))
    loss = dict(DEFAULT_NET_CONFIG["loss"], **((cfg.get("net") or {}).get("loss") or {}))
    if loss["method"] in RENAMED_LOSS_METHODS:
        raise UserError(f"net.loss.method {loss['method']!r} was renamed {RENAMED_LOSS_METHODS[loss['method']]!r}; "
                        f"use the new name")
    if not isinstance(loss["num_samples"], int) or loss["num_samples"] < 1:
        raise UserError(f"net.loss.num_samples: {loss['num_samples']!r} must be a whole number >= 1")
    sig = loss["sigmas"]
    if not isinstance(sig, (list, tuple)) or not sig or not all(isinstance(v, (int, float)) and v > 0 for v in sig):
        raise UserError(f"net.loss.sigmas: {sig!r} must be a non-empty list of numbers > 0")
    pw, ps = loss["part_weight"], loss["part_sigma"]
    if not isinstance(pw, (int, float)) or isinstance(pw, bool) or not 0 <= pw < 1:
        raise UserError(f"net.loss.part_weight: {pw!r} must be a number in [0, 1)")
    if not isinstance(ps, (int, float)) or isinstance(ps, bool) or not (math.isfinite(ps) and ps > 0):
        raise UserError(f"net.loss.part_sigma: {ps!r} must be a number > 0")
    if pw > 0 and loss["method"] in ("nce_plus", "iou_confidence"):
        raise UserError(f"net.loss.part_weight: part samples are for ml_is / nce / kld_is, not "
                        f"{loss['method']!r}; set it to 0")
    return cfg


def build_sources(data_cfg: Dict[str, Any]) -> List[Tuple[Any, float]]:
    """(indexable of sequences, weight) per configured source."""
    out = []
    hint = "fix the path in the config (or with --set), or set EBM_SHARED_DATA to the data folder"
    for i, src in enumerate(data_cfg.get("sources", [])):
        kind = src.get("type")
        weight = float(src.get("weight", 1.0))
        where = f"data.sources[{i}] ({kind})"
        if kind == "synthetic":
            syn = dict(src.get("config", {}))
            bdir = src.get("background_dir")
            if bdir:
                files = sorted(glob.glob(os.path.join(expand_path(bdir), "*.jpg")) + glob.glob(os.path.join(expand_path(bdir), "*.png")))
                if not files:
                    raise UserError(f"{where}: no .jpg/.png background images in {expand_path(bdir)}; {hint}")
                syn["background_images"] = files
            out.append((SyntheticDataset(int(src.get("num_sequences", 1000)), int(src.get("first_seed", 0)),
                                         SyntheticConfig(**syn)), weight))
        elif kind == "coco":
            ann, images = expand_path(src["ann_file"]), expand_path(src["image_dir"])
            if not os.path.isfile(ann):
                raise UserError(f"{where}: annotation file {ann} not found; {hint}")
            if not os.path.isdir(images):
                raise UserError(f"{where}: image folder {images} not found; {hint}")
            out.append((coco_sequences(ann, images, float(src.get("min_size", 16.0))), weight))
        elif kind == "dataset":
            from ..datasets import load_dataset

            root = expand_path(src["root"])
            if not os.path.isdir(root):
                raise UserError(f"{where}: data root {root} not found; {hint}")
            kwargs = {k: v for k, v in src.items() if k not in ("type", "weight", "name", "root")}
            try:
                seqs = load_dataset(src["name"], root, **kwargs)
            except UserError:
                raise
            except (TypeError, KeyError, ValueError, FileNotFoundError) as exc:
                msg = str(exc.args[0]) if exc.args else type(exc).__name__
                raise UserError(f"{where}: {' '.join(msg.split())}; check the source's name, root and "
                                f"options") from None
            out.append(([FileSequence(s) for s in seqs if s.has_full_ground_truth], weight))
        else:
            raise UserError(f"{where}.type: {kind!r} is not a source type; use synthetic, coco or dataset")
    return out
