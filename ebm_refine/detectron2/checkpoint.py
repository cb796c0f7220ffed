"""A DetectionCheckpointer that says clearly whether the energy head came from the checkpoint."""
from __future__ import annotations

import logging

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["EBMCheckpointer"]

logger = logging.getLogger(__name__)
ENERGY_HEAD_PREFIX = "roi_heads.energy_head."


class EBMCheckpointer(DetectionCheckpointer):
    """Loads Detectron2 checkpoints (model-zoo URLs, local .pth/.pkl) into a model with an EBM head.

    A detector checkpoint without energy-head weights is the normal starting point of frozen-detector
    training; it loads and a single clear log line says the energy head is freshly initialised.
    """

    energy_head_loaded: bool = False

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        missing = [k for k in incompatible.missing_keys if ENERGY_HEAD_PREFIX in k]
        self.energy_head_loaded = not missing
        if missing:
            logger.warning(
                "Checkpoint has no energy-head weights (%d tensors missing, e.g. %s): the energy head "
                "starts from random initialisation. This is expected when starting from a detector "
                "checkpoint; refinement with an untrained head will not improve boxes.",
                len(missing), missing[0],
            )
        else:
            logger.info("Energy-head weights loaded from the checkpoint.")
        return incompatible
