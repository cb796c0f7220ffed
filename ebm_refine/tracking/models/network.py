"""The trainable tracker network: frozen backbone + box estimator, its losses and its checkpoints.

A checkpoint is self-contained: it stores the config that builds the network *and* the backbone
weights (so a random-init test backbone, or the local MobileNetV2 file, does not need to be found again
at tracking time).
"""
from __future__ import annotations

import copy
import os
import pickle
import zipfile
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ebm_refine.core.boxes import box_iou_aligned, encode_relative, valid_box_mask
from ebm_refine.core.losses import iou_confidence_loss
from ebm_refine.core.objectives import EBM_METHODS, ebm_loss, sampling_options
from ebm_refine.core.proposal import BoxProposal
from ebm_refine.core.refine import refine_boxes

from ...utils.errors import UserError
from ...utils.fileio import atomic_save_torch
from .backbone import Backbone, build_backbone
from .box_estimator import EnergyBoxEstimator, TestFeatures

__all__ = ["TrackerNet", "build_tracker_net", "box_estimation_loss", "pair_losses", "refinement_residuals",
           "save_net", "load_net",
           "DEFAULT_NET_CONFIG", "LOSS_METHODS", "NET_FORMAT", "non_finite_tensors", "read_torch_file"]

NET_FORMAT = "ebm_refine.tracker_net/1"
# Exceptions torch.load raises for a file that is not a torch checkpoint (empty, truncated, text, ...).
_UNREADABLE = (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, AttributeError,
               ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError)

LOSS_METHODS = EBM_METHODS + ("iou",)

DEFAULT_NET_CONFIG: Dict[str, Any] = {
    "backbone": {"name": "resnet18", "weights": None, "frozen": True},
    "estimator": {"pred_dims": [256, 256], "inter_dims": [256, 256], "ref_pool": [3, 1], "test_pool": [5, 3]},
    # Training objective of the box estimator: an EBM method ("ml_is", ...) or "iou" (IoU-Net baseline).
    "loss": {"method": "ml_is", "sigmas": [0.05, 0.5], "num_samples": 128, "label_sigma": 0.05, "beta": None},
}


def _merge(base: Dict, over: Optional[Dict]) -> Dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


class TrackerNet(nn.Module):
    """Backbone + :class:`EnergyBoxEstimator`.

    Args:
        config: dict with ``backbone``, ``estimator`` and ``loss`` sections (see
            :data:`DEFAULT_NET_CONFIG`); missing keys take the defaults.
        backbone: optional pre-built backbone (e.g. restored from a checkpoint).
    """

    def __init__(self, config: Optional[Dict[str, Any]] = None, backbone: Optional[Backbone] = None):
        super().__init__()
        self.config = _merge(DEFAULT_NET_CONFIG, config)
        self.backbone = backbone if backbone is not None else build_backbone(self.config["backbone"])
        ch = self.backbone.out_channels
        est = self.config["estimator"]
        self.estimator = EnergyBoxEstimator(
            in_dims=(ch["layer2"], ch["layer3"]), pred_dims=est["pred_dims"], inter_dims=est["inter_dims"],
            ref_pool=est["ref_pool"], test_pool=est["test_pool"],
            strides=(self.backbone.strides["layer2"], self.backbone.strides["layer3"]))
        method = self.config["loss"]["method"]
        if method not in LOSS_METHODS:
            raise ValueError(f"unknown loss method {method!r}; expected one of {LOSS_METHODS}")

    @property
    def method(self) -> str:
        """Training objective of the box estimator ("ml_is", ..., or "iou")."""
        return self.config["loss"]["method"]

    def extract(self, images: Tensor) -> Dict[str, Tensor]:
        """Backbone features of (B, 3, H, W) RGB [0, 255] crops; no graph when the backbone is frozen."""
        if self.backbone.frozen:
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)

    def forward(self, ref_images: Tensor, ref_boxes: Tensor, test_images: Tensor, test_boxes: Tensor,
                generator: Optional[torch.Generator] = None, residuals: Optional[Dict[str, Any]] = None):
        """Training loss of a batch of (reference, test) crop pairs.

        Args:
            ref_images, test_images: (B, 3, S, S) RGB crops in [0, 255].
            ref_boxes, test_boxes: (B, 4) target boxes, xyxy crop pixels.
            residuals: DeepGUM's refinement settings (``num_steps``, ``step_size`` [centre, size],
                ``step_decay``); when given, the per-pair losses are returned for weighting.
        Returns:
            scalar loss (see :func:`box_estimation_loss`); with ``residuals``, ``(loss (B,), weight (B,),
            residual (B, 4))``: per-pair losses, their base weights and DeepGUM residuals (see
            :func:`pair_losses`, :func:`refinement_residuals`).
        """
        ref_feats, test_feats = self.extract(ref_images), self.extract(test_images)
        if residuals is None:
            return box_estimation_loss(self.estimator, ref_feats, ref_boxes, test_feats, test_boxes,
                                       self.config["loss"], generator)
        loss, weight, features = pair_losses(self.estimator, ref_feats, ref_boxes, test_feats, test_boxes,
                                             self.config["loss"], generator)
        e = refinement_residuals(self.estimator, features, test_boxes, int(residuals["num_steps"]),
                                 residuals["step_size"], float(residuals["step_decay"]))
        return loss, weight, torch.where((weight > 0)[:, None], e, torch.full_like(e, float("nan")))


def _sample_and_score(estimator: EnergyBoxEstimator, ref_feats: Dict[str, Tensor], ref_boxes: Tensor,
                      test_feats: Dict[str, Tensor], test_boxes: Tensor, loss_cfg: Dict[str, Any],
                      generator: Optional[torch.Generator]):
    """Draw the proposals of ``loss_cfg`` around each test box and score them: (samples, (B, M) scores,
    (B, M) sample-valid mask, the modulated test features)."""
    method = loss_cfg["method"]
    proposal = BoxProposal(loss_cfg["sigmas"])
    if method == "iou":
        samples = proposal.sample(test_boxes, int(loss_cfg["num_samples"]), include_reference=True,
                                  generator=generator)
    else:
        opts = sampling_options(method, loss_cfg.get("beta"))
        samples = proposal.sample(test_boxes, int(loss_cfg["num_samples"]), include_reference=opts.include_center,
                                  beta=opts.beta, generator=generator)
    # Ground truths that are degenerate (a target cropped to nothing) carry no signal.
    row_valid = valid_box_mask(test_boxes, min_size=1.0) & valid_box_mask(ref_boxes, min_size=1.0)
    safe = torch.where(row_valid[:, None, None], samples.boxes,
                       samples.boxes.new_tensor([0.0, 0.0, 16.0, 16.0]).expand_as(samples.boxes))
    safe_ref = torch.where(row_valid[:, None], ref_boxes, ref_boxes.new_tensor([0.0, 0.0, 16.0, 16.0]))
    # estimator(...) written out, to keep the modulated test maps for DeepGUM's residuals.
    features = estimator.test_features(test_feats, estimator.reference(ref_feats, safe_ref))
    scores = estimator.score(features, safe)
    sample_valid = valid_box_mask(samples.boxes) & row_valid[:, None]
    return samples, scores, sample_valid, features


def box_estimation_loss(estimator: EnergyBoxEstimator, ref_feats: Dict[str, Tensor], ref_boxes: Tensor,
                        test_feats: Dict[str, Tensor], test_boxes: Tensor, loss_cfg: Dict[str, Any],
                        generator: Optional[torch.Generator] = None) -> Tensor:
    """Proposals around each test ground truth, scored by the estimator, fed to the configured loss.

    EBM methods draw M samples from the K-component mixture in relative box coordinates (the paper's
    tracking setting: sigmas 0.05 and 0.5, M = 128, plus the ground truth as sample 0 for ML-IS) and use
    :func:`ebm_refine.core.objectives.ebm_loss`. ``"iou"`` regresses 2 IoU - 1 of the same samples
    (IoU-Net baseline, :func:`ebm_refine.core.losses.iou_confidence_loss`).
    """
    samples, scores, sample_valid, _ = _sample_and_score(estimator, ref_feats, ref_boxes, test_feats, test_boxes,
                                                         loss_cfg, generator)
    if loss_cfg["method"] == "iou":
        iou = box_iou_aligned(samples.boxes, test_boxes[:, None, :])
        return iou_confidence_loss(scores, iou, valid=sample_valid)
    return ebm_loss(loss_cfg["method"], scores, samples.log_q, offsets=samples.rel,
                    label_sigma=loss_cfg.get("label_sigma"), valid=sample_valid)


def pair_losses(estimator: EnergyBoxEstimator, ref_feats: Dict[str, Tensor], ref_boxes: Tensor,
                test_feats: Dict[str, Tensor], test_boxes: Tensor, loss_cfg: Dict[str, Any],
                generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor, TestFeatures]:
    """:func:`box_estimation_loss` per training pair, for DeepGUM's weighting.

    Returns:
        ``(loss, weight, features)``: (B,) loss of each pair (0 where it has no signal), (B,) base weights
        such that ``core.robust.weighted_mean(loss, weight)`` is :func:`box_estimation_loss` (1 per pair
        with signal, 0 without; for ``"iou"``, whose loss is a mean over samples, the pair's number of
        valid samples), and the modulated test features (with their graph).
    """
    samples, scores, sample_valid, features = _sample_and_score(estimator, ref_feats, ref_boxes, test_feats,
                                                                test_boxes, loss_cfg, generator)
    method = loss_cfg["method"]
    if method == "iou":
        iou = box_iou_aligned(samples.boxes, test_boxes[:, None, :])
        loss = iou_confidence_loss(scores, iou, valid=sample_valid, reduction="none")
        return loss, sample_valid.sum(dim=1).to(loss.dtype), features
    loss = ebm_loss(method, scores, samples.log_q, offsets=samples.rel, label_sigma=loss_cfg.get("label_sigma"),
                    valid=sample_valid, reduction="none")
    # ebm_loss's rows with signal: ML-IS / NCE ignore column 0 (the positive) of the mask.
    rows = (sample_valid[:, 1:] if method != "kld_is" else sample_valid).any(dim=1)
    return loss, rows.to(loss.dtype), features


def refinement_residuals(estimator: EnergyBoxEstimator, features: TestFeatures, boxes: Tensor, num_steps: int,
                         step_size, step_decay: float = 0.5) -> Tensor:
    """DeepGUM's residual of each training pair: (B, 4) in relative box coordinates.

    The annotated test box of pair i is refined by ``num_steps`` gradient-ascent steps of the estimator's
    f on that pair's test features (the tracker's refiner; step sizes [centre, log-size] in the box's
    relative space), and the refined box is encoded relative to the annotation. The annotation, rather
    than a jittered proposal, is the starting point because the residual should measure the annotation:
    at a correct box f peaks and the box stays; at a shifted, rescaled or wrong box the f learnt from the
    other pairs moves it. Nothing reaches the network's parameters (the features are detached).

    Args:
        features: the pairs' modulated test maps (``EnergyBoxEstimator.test_features``).
        boxes: (B, 4) annotated test boxes, xyxy crop pixels.
    """
    f = TestFeatures(features.level3.detach(), features.level4.detach(), features.offset)
    res = refine_boxes(lambda b: estimator.score(f, b[:, None, :])[:, 0], boxes.detach(), num_steps=num_steps,
                       step_size_center=float(step_size[0]), step_size_size=float(step_size[1]), decay=step_decay)
    return encode_relative(res.boxes, boxes.detach())


def build_tracker_net(config: Optional[Dict[str, Any]] = None) -> TrackerNet:
    """:class:`TrackerNet` from a (partial) config."""
    return TrackerNet(config)


def non_finite_tensors(*state_dicts: Dict[str, Tensor]) -> list:
    """Names of floating-point tensors in ``state_dicts`` that hold NaN or infinity."""
    return [k for sd in state_dicts for k, v in sd.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_net(path: str, net: TrackerNet, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write a self-contained network file (config, backbone and estimator weights), atomically.

    Raises:
        ValueError if a weight is not finite (a diverged network is never written).
    """
    state = {"format": NET_FORMAT, "config": net.config,
             "backbone": net.backbone.state_dict(), "estimator": net.estimator.state_dict()}
    bad = non_finite_tensors(state["backbone"], state["estimator"])
    if bad:
        raise ValueError(f"refusing to write {path}: {len(bad)} weight tensor(s) are not finite ({bad[0]}, ...)")
    if extra:
        state["extra"] = extra
    atomic_save_torch(state, path)


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named that does not exist (a ``FileNotFoundError`` too)."""


def read_torch_file(path: str, what: str, hint: str, map_location: Any = "cpu") -> Any:
    """``torch.load`` of a file the user pointed at; an unreadable one is a :class:`UserError` naming it.

    Args:
        what: what the file should be ("a tracker network", ...); hint: what to do about it.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"{path}: no such file; {hint}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file, not {what}; {hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except _UNREADABLE as exc:
        raise UserError(f"{path}: not {what} (torch.load: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:120]}); {hint}") from None


def load_net(path: str, map_location: str = "cpu") -> TrackerNet:
    """Inverse of :func:`save_net`; also accepts a training checkpoint (it holds a ``net`` entry).

    Raises:
        UserError naming ``path`` for a missing, unreadable or foreign file, a network whose stored
        config does not build, and weights that are not finite.
    """
    hint = ("point the tracker's 'checkpoint' at a net.pth written by tools/train_tracker.py "
            "(or train one)")
    state = read_torch_file(path, "a tracker network file", hint, map_location)
    if isinstance(state, dict) and "net" in state and "format" not in state:
        state = state["net"]
    if not isinstance(state, dict) or not all(k in state for k in ("config", "backbone", "estimator")):
        keys = ", ".join(sorted(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path}: not a tracker network file (it holds {keys}); {hint}")
    bad = non_finite_tensors(state["backbone"], state["estimator"])
    if bad:
        raise UserError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinity (e.g. {bad[0]}), the result of "
                        f"a diverged training; retrain it or use another network file")
    cfg = copy.deepcopy(state["config"])
    # The stored backbone weights replace whatever the config pointed at (no file lookup, no download).
    cfg["backbone"] = dict(cfg["backbone"], weights=None)
    try:
        net = TrackerNet(cfg)
        net.backbone.load_state_dict(state["backbone"])
        net.estimator.load_state_dict(state["estimator"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: its weights do not fit the network its config describes "
                        f"({' '.join(str(exc).split())[:160]}); {hint}") from None
    net.config = copy.deepcopy(state["config"])
    return net.eval()
