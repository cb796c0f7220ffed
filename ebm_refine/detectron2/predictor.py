"""``EBMPredictor``: Detectron2's ``DefaultPredictor`` for models with the EBM head, loading with
:class:`~ebm_refine.detectron2.EBMCheckpointer` (one-line errors for weights of the wrong kind)."""
from __future__ import annotations

import pickle

import numpy as np
from detectron2.engine import DefaultPredictor

from ..utils.errors import BadValueError, UserError
from .checkpoint import EBMCheckpointer
from .data import LetterboxResize

__all__ = ["EBMPredictor"]

# What loading a file of the wrong kind may raise past EBMCheckpointer's own checks (a state dict whose
# values do not fit the model). Anything else is a bug and keeps its traceback.
_WRONG_FILE_ERRORS = (RuntimeError, KeyError, ValueError, TypeError, AttributeError, EOFError, pickle.UnpicklingError)


class EBMPredictor(DefaultPredictor):
    """Single-image inference: ``DefaultPredictor`` (model building, test-time resize, BGR/RGB input) with
    ``cfg.MODEL.WEIGHTS`` loaded by :class:`EBMCheckpointer`, returning ``Instances`` on the CPU.

    ``predictor(image_bgr)`` takes a BGR uint8 (H, W, 3) image and returns the ``Instances`` in pixels of
    that image; for ``EBMRCNN``: ``pred_boxes`` (refined, x0, y0, x1, y1), ``pred_boxes_unrefined`` (the
    detector's), ``scores``, ``pred_classes`` and ``pred_energies`` (the energy f of each refined box).

    Raises:
        CheckpointError (a :class:`~ebm_refine.utils.UserError`) naming ``MODEL.WEIGHTS`` when it is missing,
        not a checkpoint, or of another network; BadValueError when it is empty.
    """

    def __init__(self, cfg):
        if not str(cfg.MODEL.WEIGHTS).strip():  # Detectron2 would start from random weights, without a word
            raise BadValueError("MODEL.WEIGHTS is empty: a predictor needs trained weights; pass the model_final.pth "
                                "written by tools/train_net.py with this config (MODEL.WEIGHTS / --weights)")
        # DefaultPredictor would load MODEL.WEIGHTS with a plain DetectionCheckpointer, which accepts a file
        # of another network with warnings only: build it without weights, then load with EBMCheckpointer.
        no_weights = cfg.clone()
        no_weights.defrost()
        no_weights.MODEL.WEIGHTS = ""
        super().__init__(no_weights)
        self.cfg = cfg.clone()
        if cfg.INPUT.LETTERBOX_SIZE > 0:  # YOLOX's preprocessing instead of DefaultPredictor's shortest-edge resize
            self.aug = LetterboxResize(cfg.INPUT.LETTERBOX_SIZE)
        try:
            EBMCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        except UserError:
            raise
        except _WRONG_FILE_ERRORS as e:
            raise BadValueError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} cannot be loaded into this model "
                                f"({type(e).__name__}: {e}); pass a model_final.pth written by tools/train_net.py "
                                "with this config") from e

    def __call__(self, image_bgr: np.ndarray):
        return super().__call__(image_bgr)["instances"].to("cpu")
