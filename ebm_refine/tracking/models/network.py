"""The trainable tracker network: frozen backbone + box estimator, and its checkpoints.

Its training loss is :mod:`ebm_refine.tracking.train.loss` (next to the rest of training, as in ltr).

A checkpoint is self-contained: it stores the config that builds the network *and* the backbone
weights (so a random-init test backbone, or the local MobileNetV2 file, does not need to be found again
at tracking time).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from ebm_refine.core.objectives import EBM_METHODS

from ...utils.config import merge_params
from ...utils.errors import UserError
from ...utils.fileio import atomic_save_torch
from ...utils.safe_load import read_torch_file
from .backbone import Backbone, build_backbone
from .box_estimator import EnergyBoxEstimator

__all__ = ["TrackerNet", "net_state", "save_net", "load_net",
           "DEFAULT_NET_CONFIG", "LOSS_METHODS", "NET_FORMAT", "non_finite_tensors", "read_torch_file"]

NET_FORMAT = "ebm_refine.tracker_net/1"
# The loss names of ebm_refine.core.losses.LOSS_NAMES and MODEL.EBM.LOSS: the EBM methods and IoU-Net's
# IoU-prediction loss ("iou_confidence"; the tracker reads such a network with box_refinement.mode "iounet").
LOSS_METHODS = EBM_METHODS + ("iou_confidence",)
# Loss-method values renamed in issue 17 (old -> new): an error naming the new value in a training config,
# converted on load in network files written before the rename (see _upgrade_stored_config).
RENAMED_LOSS_METHODS = {"iou": "iou_confidence"}

DEFAULT_NET_CONFIG: Dict[str, Any] = {
    "backbone": {"name": "resnet18", "weights": None, "frozen": True},
    "estimator": {"pred_dims": [256, 256], "inter_dims": [256, 256], "ref_pool": [3, 1], "test_pool": [5, 3]},
    # Training objective of the box estimator: an EBM method ("ml_is", ...) or "iou_confidence" (IoU-Net
    # baseline). nce_beta: NCE+'s beta (as MODEL.EBM.NCE_BETA); needed by nce_plus only. part_weight /
    # part_sigma: share of the samples drawn around the target's parts, halves and inner box (BoxProposal's
    # part components; 0 is the paper's proposal), and those components' std in relative units.
    "loss": {"method": "ml_is", "sigmas": [0.05, 0.5], "num_samples": 128, "label_sigma": 0.05, "nce_beta": None,
             "part_weight": 0.0, "part_sigma": 0.1},
}


class TrackerNet(nn.Module):
    """Backbone + :class:`EnergyBoxEstimator`.

    Args:
        config: dict with ``backbone``, ``estimator`` and ``loss`` sections (see
            :data:`DEFAULT_NET_CONFIG`); missing keys take the defaults.
        backbone: optional pre-built backbone (e.g. restored from a checkpoint).
    """

    def __init__(self, config: Optional[Dict[str, Any]] = None, backbone: Optional[Backbone] = None):
        super().__init__()
        self.config = merge_params(DEFAULT_NET_CONFIG, config, strict=False)
        self.backbone = backbone if backbone is not None else build_backbone(self.config["backbone"])
        ch = self.backbone.out_channels
        est = self.config["estimator"]
        self.estimator = EnergyBoxEstimator(
            in_dims=(ch["layer2"], ch["layer3"]), pred_dims=est["pred_dims"], inter_dims=est["inter_dims"],
            ref_pool=est["ref_pool"], test_pool=est["test_pool"],
            strides=(self.backbone.strides["layer2"], self.backbone.strides["layer3"]))
        method = self.config["loss"]["method"]
        if method in RENAMED_LOSS_METHODS:
            raise UserError(f"net.loss.method {method!r} was renamed {RENAMED_LOSS_METHODS[method]!r}; "
                            f"use the new name")
        if method not in LOSS_METHODS:
            raise ValueError(f"unknown loss method {method!r}; expected one of {LOSS_METHODS}")

    @property
    def method(self) -> str:
        """Training objective of the box estimator ("ml_is", ..., or "iou_confidence")."""
        return self.config["loss"]["method"]

    def extract(self, images: Tensor) -> Dict[str, Tensor]:
        """Backbone features of (B, 3, H, W) RGB [0, 255] crops; no graph when the backbone is frozen."""
        if self.backbone.frozen:
            with torch.no_grad():
                return self.backbone(images)
        return self.backbone(images)


def non_finite_tensors(*state_dicts: Dict[str, Tensor]) -> list:
    """Names of floating-point tensors in ``state_dicts`` that hold NaN or infinity."""
    return [k for sd in state_dicts for k, v in sd.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def net_state(net: TrackerNet) -> Dict[str, Any]:
    """What a network file holds (and a training checkpoint's ``net`` entry): format tag, a copy of the
    config, backbone and estimator state dicts."""
    return {"format": NET_FORMAT, "config": copy.deepcopy(net.config),
            "backbone": net.backbone.state_dict(), "estimator": net.estimator.state_dict()}


def save_net(path: str, net: TrackerNet, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write a self-contained network file (config, backbone and estimator weights), atomically.

    Raises:
        ValueError if a weight is not finite (a diverged network is never written).
    """
    state = net_state(net)
    bad = non_finite_tensors(state["backbone"], state["estimator"])
    if bad:
        raise ValueError(f"refusing to write {path}: {len(bad)} weight tensor(s) are not finite ({bad[0]}, ...)")
    if extra:
        state["extra"] = extra
    atomic_save_torch(state, path)


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
    stored = _upgrade_stored_config(state["config"])
    cfg = copy.deepcopy(stored)
    # The stored backbone weights replace whatever the config pointed at (no file lookup, no download).
    cfg["backbone"] = dict(cfg["backbone"], weights=None)
    try:
        net = TrackerNet(cfg)
        net.backbone.load_state_dict(state["backbone"])
        net.estimator.load_state_dict(state["estimator"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: its weights do not fit the network its config describes "
                        f"({' '.join(str(exc).split())[:160]}); {hint}") from None
    net.config = copy.deepcopy(stored)
    return net.eval()


def _upgrade_stored_config(config: Any) -> Any:
    """A network file's stored config in today's vocabulary.

    Network files keep the config they were trained with, and the shipped ones
    (``checkpoints/tracking/*/net.pth``) and users' own predate the renames of issue 17 (loss ``beta`` ->
    ``nce_beta``, method ``iou`` -> ``iou_confidence``). Old files must keep loading, so the old names are
    converted here, on load only; a training config with an old name is still an error (``RENAMED_KEYS``).
    """
    if not isinstance(config, dict) or not isinstance(config.get("loss"), dict):
        return config
    loss = dict(config["loss"])
    if "beta" in loss:
        beta = loss.pop("beta")
        loss.setdefault("nce_beta", beta)
    loss["method"] = RENAMED_LOSS_METHODS.get(loss.get("method"), loss.get("method"))
    return dict(config, loss=loss)
