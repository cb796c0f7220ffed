"""``EBMCheckpointer``: Detectron2's checkpointer that says what loaded and never leaves a partial file.

* Loading reports the energy head precisely: weights absent from the checkpoint (the normal start of
  frozen-detector training) vs present with other shapes (name and both shapes: another NUM_CLASSES,
  FC_DIM or pooler size). A file that is missing, unreadable, not a checkpoint, or shares no tensor with
  the model is a :class:`CheckpointError` with a one-line message. Frozen-detector checks live in the model
  (:class:`~ebm_refine.detectron2.meta_arch.EBMRCNN`), so they hold with any checkpointer.
* Saving is atomic on local folders: the checkpoint and ``last_checkpoint`` are written to temporary files
  and renamed, so a run killed while saving never leaves a partial ``model_XXXX.pth``, nor a
  ``last_checkpoint`` naming one.
* A checkpoint with an energy head must hold the backbone that head was trained on (the same tensor names as
  the model's backbone): a head trained on other features (e.g. a MobileNetV2 refiner's with a YOLOX config)
  is a :class:`CheckpointError` naming the file. ``MODEL.EBM.HEAD.WEIGHTS`` (a model's ``energy_head_weights``)
  loads a trained energy head after ``MODEL.WEIGHTS`` when that has none, if the file's backbone tensors equal
  the model's. :func:`export_energy_head` writes a head-only file (what the project ships: the detector's own
  weights stay with their owner) that carries a fingerprint of its backbone's tensors instead of the tensors;
  loading it checks the fingerprint.
* A relative ``MODEL.WEIGHTS`` that does not exist is looked up in the weights folder
  (:func:`~ebm_refine.utils.resources.find_weights`: ``$EBM_WEIGHTS_DIR``, ``<repo>/../shared/weights``), so a
  config may name third-party weights by file name (``yolox_nano.onnx``).
* YOLOX-nano: ``MODEL.WEIGHTS`` may name its ONNX export (``.onnx``, converted in memory by
  :mod:`.yolox_onnx`); a missing file says where it was looked for and where to get it.
* DeepGUM (``MODEL.EBM.ROBUST``): the EM state held by the ROI heads (``roi_heads.robust``) is saved as the
  checkpoint's ``ebm_robust`` entry and restored by a resume (``resume_or_load(resume=True)`` or ``load``
  with all checkpointables), so EM continues where it stopped; loading ``MODEL.WEIGHTS`` for a new run
  leaves it fresh. It is training state, like the optimizer's, not part of the model's weights.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from ..utils.errors import UserError
from ..utils.fileio import atomic_save_torch, atomic_write_text
from ..utils.safe_load import load_plain_pickle, read_torch_file
from .meta_arch import ENERGY_HEAD_PREFIX
from ..utils.resources import find_weights
from .yolox_onnx import missing_weights_message, read_yolox_onnx

__all__ = ["EBMCheckpointer", "CheckpointError", "robust_state_holder", "export_energy_head", "backbone_fingerprint"]

logger = logging.getLogger(__name__)
_READ_WHAT = "a readable checkpoint"
_READ_HINT = "is it truncated, or not a Detectron2 / PyTorch checkpoint from a trusted source? (MODEL.WEIGHTS)"


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, unreadable, not a checkpoint, or of another model."""


class EBMCheckpointer(DetectionCheckpointer):
    """Loads Detectron2 checkpoints (model-zoo URLs, local .pth/.pkl) into a model with an EBM head.

    After :meth:`load`, ``energy_head_loaded`` says whether every energy-head tensor came from the file.
    """

    energy_head_loaded: bool = False

    def __init__(self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None, **checkpointables: Any):
        robust = robust_state_holder(model)
        if robust is not None and "ebm_robust" not in checkpointables:
            checkpointables["ebm_robust"] = robust
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)

    # ----------------------------------------------------------------- loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        requested, path = path, find_weights(path)
        self._loading = path  # named in the messages of _load_model, which only sees the weights
        try:
            loaded = super().load(path, checkpointables)
        except BaseException as e:
            self._parsed_url_during_load = None  # Detectron2 resets it only after a successful load
            if isinstance(e, AssertionError) and "not found" in str(e):
                if _has_yolox_trunk(self.model):
                    raise CheckpointError(missing_weights_message(requested)) from None
                raise CheckpointError(f"checkpoint {requested!r} not found: pass an existing file (MODEL.WEIGHTS) "
                                      "or a reachable URL") from None
            if isinstance(e, OSError) and not isinstance(e, CheckpointError):  # offline downloads, permissions
                raise CheckpointError(f"cannot read checkpoint {path!r} ({e}); pass a local file in MODEL.WEIGHTS") from None
            raise
        head_file = getattr(_unwrap(self.model), "energy_head_weights", "")
        if path and head_file and not self.energy_head_loaded:
            self.load_energy_head(head_file)
        return loaded

    def load_energy_head(self, path: str) -> None:
        """Load only the energy head from the checkpoint ``path`` (``MODEL.EBM.HEAD.WEIGHTS``), after checking
        that its backbone tensors equal the model's (the head was trained on these features)."""
        if not os.path.isfile(path):
            raise CheckpointError(f"energy-head checkpoint {path!r} (MODEL.EBM.HEAD.WEIGHTS) not found; train one "
                                  "with tools/train_net.py and a COCO-Refine YOLOX config")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch.load raises many types for a non-checkpoint file
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}); expected a trained "
                                  "energy head (MODEL.EBM.HEAD.WEIGHTS)") from None
        state = data.get("model", data) if isinstance(data, dict) else {}
        head = {k[len(ENERGY_HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(ENERGY_HEAD_PREFIX)}
        if not head:
            raise CheckpointError(f"{path}: no energy head in it (MODEL.EBM.HEAD.WEIGHTS expects a trained refiner's "
                                  "model_final.pth)")
        model = _unwrap(self.model)
        _check_head_features(path, state, model.state_dict(), compare_values=True,
                             fingerprint=data.get(FINGERPRINT_KEY) if isinstance(data, dict) else None)
        try:
            model.roi_heads.energy_head.load_state_dict(head)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: its energy head does not fit this config's ({str(e).splitlines()[1:2]}); "
                                  "another NUM_CLASSES, FC_DIM or pooler size?") from None
        self.energy_head_loaded = True
        logger.info("Energy head loaded from %s (trained on this model's backbone).", path)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".onnx"):
            return {"model": read_yolox_onnx(filename), "__author__": f"converted from {filename}"}
        try:
            data = self._read_file(filename)
        except CheckpointError:
            raise
        except UserError as e:  # the safe loaders' one-line errors (a refused or unreadable file)
            raise CheckpointError(str(e)) from None
        except (AssertionError, ValueError) as e:
            raise CheckpointError(f"{filename}: not a usable checkpoint ({e})") from None
        except Exception as e:  # noqa: BLE001 - torch.load/pickle raise many types for a non-checkpoint file
            raise CheckpointError(
                f"{filename}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                "is it truncated, or not a PyTorch/Detectron2 file?"
            ) from None
        if not isinstance(data.get("model"), dict) or not data["model"]:
            raise CheckpointError(f"{filename}: not a Detectron2 checkpoint (no model weights in it)")
        return data

    def _read_file(self, filename: str) -> Dict[str, Any]:
        """Detectron2's file reading with safe loaders: ``.pkl`` (model zoo, Caffe2) through a plain-data
        unpickler instead of ``pickle.load``, ``.pyth`` (pycls) and ``.pth`` through ``weights_only``."""
        what, hint = _READ_WHAT, _READ_HINT
        if filename.endswith(".pkl"):
            with PathManager.open(filename, "rb") as f:
                data = load_plain_pickle(f, filename, what, hint)
            if not isinstance(data, dict):
                raise CheckpointError(f"{filename}: not a Detectron2 checkpoint (it holds a {type(data).__name__})")
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                return data
            data = data.get("blobs", data)  # Caffe2 detection models keep their weights under "blobs"
            return {"model": {k: v for k, v in data.items() if not str(k).endswith("_momentum")},
                    "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            data = read_torch_file(filename, what, hint)
            if not isinstance(data, dict) or "model_state" not in data:
                raise CheckpointError(f"{filename}: not a pycls checkpoint (no 'model_state'); {hint}")
            return {"model": {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")},
                    "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Any:
        return read_torch_file(f, _READ_WHAT, _READ_HINT)

    def _load_model(self, checkpoint: Dict[str, Any]):
        model_keys = set(self.model.state_dict())
        names = {k[len("module."):] if k.startswith("module.") else k for k in checkpoint["model"]}
        source = getattr(self, "_loading", None) or "the checkpoint"
        no_overlap = CheckpointError(
            f"{source}: shares no tensor with this model (another kind of network, e.g. a tracker checkpoint or "
            f"another detector?): e.g. the model wants {sorted(model_keys)[0]!r}, the file has "
            f"{sorted(names)[0]!r}; pass this model's checkpoint (MODEL.WEIGHTS / --weights)"
        )
        # Name-matching heuristics (Caffe2 / pycls files) rename tensors while loading: judge after it.
        if not checkpoint.get("matching_heuristics") and not (names & model_keys):
            raise no_overlap
        _check_head_features(getattr(self, "_loading", "the checkpoint"), {n: None for n in names},
                             self.model.state_dict())
        try:
            incompatible = super()._load_model(checkpoint)
        except ValueError as e:  # fvcore: non-tensor values in the weights
            raise CheckpointError(f"{source}: the checkpoint's weights are not all tensors ({e})") from None
        skipped = set(incompatible.missing_keys) | {k for k, _, _ in incompatible.incorrect_shapes}
        if not (model_keys - skipped):
            raise no_overlap
        self._report_energy_head(incompatible)
        return incompatible

    def _report_energy_head(self, incompatible) -> None:
        energy = [k for k in self.model.state_dict() if k.startswith(ENERGY_HEAD_PREFIX)]
        if not energy:
            return
        reshaped = [(k, a, b) for k, a, b in incompatible.incorrect_shapes if k.startswith(ENERGY_HEAD_PREFIX)]
        absent = [k for k in incompatible.missing_keys
                  if k.startswith(ENERGY_HEAD_PREFIX) and k not in {r[0] for r in reshaped}]
        self.energy_head_loaded = not reshaped and not absent
        if reshaped:
            k, in_file, in_model = reshaped[0]
            logger.warning(
                "Energy-head weights in the checkpoint have other shapes (%d tensors, e.g. %s: %s in the "
                "checkpoint, %s in the model: another NUM_CLASSES, FC_DIM or pooler size?); the energy head "
                "starts from random initialisation.", len(reshaped), k, tuple(in_file), tuple(in_model))
        elif absent and getattr(_unwrap(self.model), "energy_head_weights", ""):
            logger.info("Checkpoint has no energy-head weights; they load from MODEL.EBM.HEAD.WEIGHTS next.")
        elif absent:
            logger.warning(
                "Checkpoint has no energy-head weights (%d tensors missing, e.g. %s): the energy head starts "
                "from random initialisation. This is expected when starting from a detector checkpoint; "
                "refinement with an untrained head will not improve boxes.", len(absent), absent[0])
        else:
            logger.info("Energy-head weights loaded from the checkpoint.")

    def _log_incompatible_keys(self, incompatible) -> None:
        # The energy head missing from MODEL.WEIGHTS is no news when MODEL.EBM.HEAD.WEIGHTS loads it next.
        if getattr(_unwrap(self.model), "energy_head_weights", ""):
            incompatible = incompatible._replace(missing_keys=[
                k for k in incompatible.missing_keys if not k.startswith(ENERGY_HEAD_PREFIX)])
        super()._log_incompatible_keys(incompatible)

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            try:
                return self.load(last)
            except CheckpointError as e:
                raise CheckpointError(
                    f"cannot resume from {last} ({e}); delete it and {os.path.join(self.save_dir, 'last_checkpoint')} "
                    "to resume from an earlier checkpoint, or run without --resume"
                ) from None
        return self.load(path, checkpointables=[])

    # ----------------------------------------------------------------- saving
    def _local_save_dir(self) -> bool:
        return bool(self.save_dir) and "://" not in self.save_dir

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local_save_dir():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_save_torch(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local_save_dir():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _has_yolox_trunk(model) -> bool:
    from .yolox import YOLOXTrunk

    return isinstance(getattr(_unwrap(model), "backbone", None), YOLOXTrunk)


FINGERPRINT_KEY = "backbone_fingerprint"


def backbone_fingerprint(state: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and float32 values of the ``backbone.*`` tensors of a state dict (memory layout
    and device do not matter): which features an energy head was trained on, without the tensors."""
    digest = hashlib.sha256()
    for name in sorted(k for k in state if k.startswith("backbone.")):
        digest.update(name.encode())
        digest.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def export_energy_head(src: str, dst: str) -> int:
    """Write the energy head of the trained model ``src`` (a ``model_final.pth``) alone to ``dst``, with the
    fingerprint of the backbone it was trained on; returns the number of head tensors. ``MODEL.EBM.HEAD.WEIGHTS``
    loads the file onto a model whose backbone has that fingerprint."""
    data = read_torch_file(src, "a trained refiner (model_final.pth)", "pass the model_final.pth that tools/train_net.py wrote")
    state = data.get("model", data) if isinstance(data, dict) else {}
    head = {k: v for k, v in state.items() if k.startswith(ENERGY_HEAD_PREFIX)}
    if not head or not any(k.startswith("backbone.") for k in state):
        raise CheckpointError(f"{src}: not a trained refiner (it needs energy-head and backbone tensors)")
    atomic_save_torch({"model": head, FINGERPRINT_KEY: backbone_fingerprint(state)}, dst)
    return len(head)


def _check_head_features(path: str, file_state: Dict[str, Any], model_state: Dict[str, torch.Tensor],
                         compare_values: bool = False, fingerprint: Optional[str] = None) -> None:
    """A file with an energy head must carry the backbone it was trained on: the model's backbone tensor names
    (and with ``compare_values`` equal tensors), or a head-only file its backbone's ``fingerprint``; else
    :class:`CheckpointError` naming ``path``."""
    names = {k[len("module."):] if k.startswith("module.") else k: v for k, v in file_state.items()}
    if not any(k.startswith(ENERGY_HEAD_PREFIX) for k in names):
        return
    if fingerprint is not None and not any(k.startswith("backbone.") for k in names):
        if fingerprint != backbone_fingerprint(model_state):
            raise CheckpointError(f"{path}: its energy head was trained on other backbone weights (its backbone "
                                  "fingerprint differs from MODEL.WEIGHTS'); use a head trained on these weights")
        return
    mine = {k for k in model_state if k.startswith("backbone.")}
    theirs = {k for k in names if k.startswith("backbone.")}
    if mine != theirs:
        example = sorted(theirs - mine) or sorted(theirs) or ["(no backbone tensors)"]
        raise CheckpointError(
            f"{path}: its energy head was trained on other features: the file's backbone has e.g. {example[0]!r}, "
            f"this model's backbone expects {sorted(mine - theirs)[0] if mine - theirs else sorted(mine)[0]!r}; use a "
            "head trained with this config's backbone")
    if compare_values:
        differ = [k for k in sorted(mine) if not torch.equal(names[k].to(model_state[k].dtype), model_state[k].cpu())]
        if differ:
            raise CheckpointError(f"{path}: its energy head was trained on other backbone weights ({len(differ)} of "
                                  f"{len(mine)} backbone tensors differ from MODEL.WEIGHTS', e.g. {differ[0]!r}); use "
                                  "a head trained on these weights")


def robust_state_holder(model):
    """The :class:`~ebm_refine.core.robust.DeepGUM` of ``model``'s ROI heads (DDP-unwrapped), or None."""
    target = model.module if hasattr(model, "module") else model
    return getattr(getattr(target, "roi_heads", None), "robust", None)
